//! SigV4 on every request: who is calling (account) and where (the credential scope's region).
//!
//! The EC2 Query and JSON 1.1 protocols carry the operation and all its parameters in the body (or,
//! for Query, in the query string): a signature that does not cover the body authenticates nothing
//! of what the request does. So for them the body must be signed (`UNSIGNED-PAYLOAD` is refused, a
//! presigned URL carries no body) and a JSON request's `X-Amz-Target` must be a signed header.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError};
use blocksnap_sigv4::{AuthError, ParsedAuth, PayloadHash};
use http::{HeaderMap, Method, Uri};

/// An authenticated caller and the service its signature names.
pub struct Caller {
    pub ctx: Ctx,
    pub service: String,
}

/// How a protocol carries its operation: what the signature must cover besides method, path and
/// query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// EC2 Query: `Action` and parameters in the form body or the query string.
    Query,
    /// JSON 1.1 (Lightsail, KMS): the operation in `X-Amz-Target`, parameters in the JSON body.
    Json,
    /// REST-JSON (the EBS direct APIs): the operation in the method and path, parameters in the
    /// path, query and headers. A body carrying block data (`PutSnapshotBlock`) may be unsigned
    /// (clients send `UNSIGNED-PAYLOAD`): then the signed `x-amz-checksum` header, which the
    /// engine checks against the body, is what authenticates it.
    Rest { unsigned_block_body: bool },
}

/// Why a request is not authenticated: each protocol names it in its own words (EC2 Query and the
/// REST services by [`Rejected::error`]'s EC2 code, JSON 1.1 as its services do: `api/json.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No signature at all.
    Missing,
    /// A signature that cannot be read, or one that leaves part of what the request does unsigned.
    Malformed,
    /// An access key this server does not know (or no longer knows: rotated, deleted).
    UnknownKey,
    /// The signature does not match: a wrong secret, a changed request, a wrong scope date.
    BadSignature,
    /// Signed too long ago, or in the future.
    Expired,
    /// Scoped to a region this endpoint does not serve.
    Region,
}

/// A request refused before it reached its front end.
#[derive(Debug)]
pub struct Rejected {
    /// `None`: not an authentication failure (the key lookup failed, the call timed out).
    pub failure: Option<AuthFailure>,
    /// The error as EC2 (and the REST services) answer it.
    pub error: EngineError,
}

impl From<EngineError> for Rejected {
    fn from(error: EngineError) -> Self {
        Rejected { failure: None, error }
    }
}

fn rejected(failure: AuthFailure, error: EngineError) -> Rejected {
    Rejected { failure: Some(failure), error }
}

fn auth_error(e: AuthError) -> Rejected {
    let failure = match e {
        AuthError::Missing => AuthFailure::Missing,
        AuthError::Malformed(_) => AuthFailure::Malformed,
        AuthError::UnknownAccessKeyId => AuthFailure::UnknownKey,
        AuthError::ScopeDateMismatch { .. } | AuthError::ContentHashMismatch | AuthError::SignatureMismatch => {
            AuthFailure::BadSignature
        }
        AuthError::Expired { .. } | AuthError::NotYetValid { .. } => AuthFailure::Expired,
        // A kind of refusal this code does not know yet: the signature is not accepted.
        _ => AuthFailure::BadSignature,
    };
    let code: &'static str = e.aws_code();
    rejected(failure, EngineError::client(code, e.to_string()))
}

fn incomplete(msg: &str) -> Rejected {
    rejected(AuthFailure::Malformed, EngineError::client("IncompleteSignature", msg))
}

/// Refuses a signature that leaves what the request does unauthenticated (see the module docs).
fn check_coverage(parsed: &ParsedAuth, body: &[u8], protocol: Protocol) -> Result<(), Rejected> {
    if let Protocol::Rest { unsigned_block_body: true } = protocol
        && parsed.payload == (PayloadHash::Unsigned { streaming_trailer: false })
    {
        if !parsed.signs_header("x-amz-checksum") {
            return Err(incomplete(
                "With UNSIGNED-PAYLOAD, x-amz-checksum must be among the SignedHeaders: it authenticates the block.",
            ));
        }
        return Ok(());
    }
    if !parsed.covers_body(body) {
        let msg = match parsed.payload {
            PayloadHash::Presigned => {
                "A presigned URL cannot carry a request body (its signature does not cover one): send every parameter in the signed query string."
            }
            _ => {
                "The request body must be signed: x-amz-content-sha256 UNSIGNED-PAYLOAD is not accepted for this protocol; sign the SHA-256 of the body."
            }
        };
        return Err(incomplete(msg));
    }
    if protocol == Protocol::Json && !parsed.signs_header("x-amz-target") {
        return Err(incomplete("x-amz-target must be among the SignedHeaders: it names the operation."));
    }
    Ok(())
}

pub fn authenticate(
    engine: &Engine,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    protocol: Protocol,
) -> Result<Caller, Rejected> {
    let parsed: ParsedAuth = blocksnap_sigv4::parse(method, uri, headers).map_err(auth_error)?;
    check_coverage(&parsed, body, protocol)?;
    let key = engine.access_key(&parsed.access_key_id)?.ok_or_else(|| {
        rejected(
            AuthFailure::UnknownKey,
            EngineError::client("AuthFailure", "AWS was not able to validate the provided access credentials"),
        )
    })?;
    blocksnap_sigv4::verify(
        &parsed,
        &key.secret_access_key,
        method,
        uri,
        headers,
        body,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(auth_error)?;
    engine.check_region(&parsed.region).map_err(|e| rejected(AuthFailure::Region, e))?;
    Ok(Caller { ctx: Ctx { account: key.account, region: parsed.region }, service: parsed.service })
}
