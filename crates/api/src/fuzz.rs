//! Entry points for the fuzzers (`fuzz/`, replayed by `crates/fuzzing`): the front end's request
//! parsers driven with arbitrary bytes against a real engine, past authentication. Not an API.

use std::borrow::Cow;

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, Result};
use http::{Method, Uri};

use crate::ec2::params::Params;

/// An EC2 Query form body as a POST carries it: parameter parsing (one place, each name once),
/// routing, then the action's typed parse and validation. Mutating actions run with `DryRun=true`,
/// so a fuzzing run does not grow the engine's state.
pub fn ec2_query(engine: &Engine, ctx: &Ctx, body: &[u8]) -> Result<String> {
    let mut params = crate::query_params(&Method::POST, &Uri::from_static("/"), body)?;
    let call = crate::ec2::route(&params)?;
    if call.mutating {
        params.extend(Params::from_pairs([(Cow::Borrowed("DryRun"), Cow::Borrowed("true"))].into_iter()));
    }
    crate::ec2::run(&call, engine, ctx, &params, "fuzz")
}

/// Operations [`json`] runs: those that read state or only compute (no state grows).
fn read_only(op: &str) -> bool {
    ["Get", "List", "Describe"].iter().any(|p| op.starts_with(p))
        || matches!(
            op,
            "Encrypt"
                | "Decrypt"
                | "ReEncrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "GenerateRandom"
        )
}

/// The JSON 1.1 targets [`json`] runs: every read-only operation the Lightsail and KMS front ends
/// route.
pub fn json_targets() -> Vec<String> {
    let lightsail = crate::lightsail::OPERATIONS.iter().map(|o| ("Lightsail_20161128", *o));
    let kms = crate::kms::OPERATIONS.iter().map(|o| ("TrentService", *o));
    lightsail.chain(kms).filter(|(_, op)| read_only(op)).map(|(svc, op)| format!("{svc}.{op}")).collect()
}

/// A JSON 1.1 body for `target` (`TrentService.<Op>` or `Lightsail_20161128.<Op>`): the JSON
/// reader, then the operation's typed parse and run (read-only operations only).
pub fn json(engine: &Engine, ctx: &Ctx, target: &str, body: &[u8]) -> Result<serde_json::Value> {
    let parsed = crate::json::Body::parse(body)?;
    let (service, op) = target.split_once('.').unwrap_or((target, ""));
    if !read_only(op) {
        return Ok(serde_json::Value::Null);
    }
    match service {
        "TrentService" => crate::kms::dispatch(engine, ctx, op, &parsed),
        "Lightsail_20161128" => crate::lightsail::dispatch(engine, ctx, op, &parsed),
        _ => Ok(serde_json::Value::Null),
    }
}

/// An EBS direct APIs request past authentication: routing by method and path, then the
/// endpoint's parse of its headers, query string and body into the engine's typed request (the
/// engine is not called: its direct-write path needs a block store).
pub fn ebs_request(method: &Method, uri: &Uri, headers: &http::HeaderMap, body: bytes::Bytes) -> Result<()> {
    crate::ebs::parse_only(method, uri, headers, body)
}

/// A Data Lifecycle Manager request past authentication: routing, the body's parse into the typed
/// policy request and the engine's validation of it (nothing is created), read-only calls run.
pub fn dlm_request(engine: &Engine, ctx: &Ctx, method: &Method, uri: &Uri, body: &[u8]) -> Result<()> {
    crate::dlm::fuzz_request(engine, ctx, method, uri, body).map_err(|e| match e {
        blocksnap_engine::dlm::DlmError::Engine(e) => e,
        other => blocksnap_engine::EngineError::client(other.code(), other.to_string()),
    })
}

/// A Recycle Bin request past authentication: routing, the body's parse into the typed request,
/// CreateRule's validation (nothing is created) and the read-only calls.
pub fn rbin_request(engine: &Engine, ctx: &Ctx, method: &Method, uri: &Uri, body: &[u8]) -> Result<()> {
    crate::rbin::fuzz_request(engine, ctx, method, uri, body)
}
