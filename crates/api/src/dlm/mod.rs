//! Data Lifecycle Manager (`dlm`, REST-JSON, SigV4 service `dlm`): scheduled snapshot
//! policies. Routed here by the credential scope's service (see `crate::RestService`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, Method, Uri};

/// The SigV4 service name of Data Lifecycle Manager.
pub const SERVICE: &str = "dlm";

/// The operations served (the CLI sweep reads this list).
pub const OPERATIONS: &[&str] = &[];

pub fn error(e: &EngineError, request_id: &str) -> Response {
    crate::rest_json::error(e, crate::rest_json::common_status(e), request_id)
}

/// Serve one authenticated Data Lifecycle Manager request.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    _engine: Arc<Engine>,
    _ctx: Ctx,
    method: &Method,
    uri: &Uri,
    _headers: &HeaderMap,
    _body: Bytes,
    request_id: &str,
) -> Response {
    let e = EngineError::client(
        "UnknownOperationException",
        format!("{method} {} is not an operation of Data Lifecycle Manager served here.", uri.path()),
    );
    error(&e, request_id)
}
