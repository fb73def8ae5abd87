//! Recycle Bin (`rbin`, REST-JSON, SigV4 service `rbin`): retention rules for deleted EBS
//! snapshots. Routed here by the credential scope's service (see `crate::RestService`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, Method, Uri};

/// The SigV4 service name of the Recycle Bin.
pub const SERVICE: &str = "rbin";

/// The operations served (the CLI sweep reads this list).
pub const OPERATIONS: &[&str] = &[];

pub fn error(e: &EngineError, request_id: &str) -> Response {
    crate::rest_json::error(e, crate::rest_json::common_status(e), request_id)
}

/// Serve one authenticated Recycle Bin request.
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
        format!("{method} {} is not an operation of the Recycle Bin served here.", uri.path()),
    );
    error(&e, request_id)
}
