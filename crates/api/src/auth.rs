//! SigV4 on every request: who is calling (account) and where (the credential scope's region).

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError};
use blocksnap_sigv4::{AuthError, ParsedAuth};
use http::{HeaderMap, Method, Uri};

/// An authenticated caller and the service its signature names.
pub struct Caller {
    pub ctx: Ctx,
    pub service: String,
}

fn auth_error(e: AuthError) -> EngineError {
    let code: &'static str = e.aws_code();
    EngineError::client(code, e.to_string())
}

pub fn authenticate(
    engine: &Engine,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, EngineError> {
    let parsed: ParsedAuth = blocksnap_sigv4::parse(method, uri, headers).map_err(auth_error)?;
    let key = engine.access_key(&parsed.access_key_id)?.ok_or_else(|| {
        EngineError::client("AuthFailure", "AWS was not able to validate the provided access credentials")
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
    engine.check_region(&parsed.region)?;
    Ok(Caller { ctx: Ctx { account: key.account, region: parsed.region }, service: parsed.service })
}
