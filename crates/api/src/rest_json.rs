//! What the REST-JSON protocols (EBS direct, Recycle Bin, Data Lifecycle Manager) share: the
//! response and error documents. Each service decides the HTTP status of its own error codes; the
//! shape is common: `x-amzn-ErrorType: <code>` and `{"message": …}` (plus `Reason` where the
//! service defines one), as the SDKs' REST-JSON parsers read it.

use axum::response::{IntoResponse, Response};
use blocksnap_engine::EngineError;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// A JSON document answer with the request id.
pub fn ok(status: StatusCode, body: &Value, request_id: &str) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

/// The error document of `e` with the given status. An internal error is logged here and answered
/// as `InternalServerException` without its details.
pub fn error(e: &EngineError, status: StatusCode, request_id: &str) -> Response {
    let (code, message) = match e {
        EngineError::Internal(_) => {
            tracing::error!(error = %e, request_id, "internal error");
            ("InternalServerException", "The service could not complete the request; it is safe to retry.".to_string())
        }
        _ => (e.code(), e.message()),
    };
    let mut body = json!({ "message": message });
    if let Some(reason) = e.reason() {
        body["Reason"] = json!(reason);
    }
    let mut r = ok(status, &body, request_id);
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

/// The status most REST-JSON services give the codes they share (each service may map its own).
pub fn common_status(e: &EngineError) -> StatusCode {
    match e.code() {
        "AccessDeniedException" | "InvalidSignatureException" => StatusCode::FORBIDDEN,
        "ResourceNotFoundException" | "UnknownOperationException" => StatusCode::NOT_FOUND,
        "ConflictException" => StatusCode::CONFLICT,
        "ServiceQuotaExceededException" => StatusCode::PAYMENT_REQUIRED,
        "InternalServerException" | "InternalError" => StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => match e.http_status() {
            401 => StatusCode::FORBIDDEN,
            s => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
        },
    }
}

/// A REST-JSON request body's top-level object.
pub type Obj = serde_json::Map<String, Value>;

// Typed readers of a body's members, shared by the REST-JSON services. Each service refuses a
// malformed member in its own words: `invalid` makes its error from the message.

/// The body as an object (an empty body is an empty object).
pub fn body_object<E>(body: &[u8], invalid: impl Fn(String) -> E) -> Result<Obj, E> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Obj::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("The request body must be a JSON object.".to_string())),
        Err(e) => Err(invalid(format!("The request body is not valid JSON: {e}"))),
    }
}

pub fn string<E>(m: &Obj, k: &str, invalid: impl Fn(String) -> E) -> Result<Option<String>, E> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{k} must be a string."))),
    }
}

pub fn int<E>(m: &Obj, k: &str, invalid: impl Fn(String) -> E) -> Result<Option<i64>, E> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(_) => Err(invalid(format!("{k} must be an integer."))),
    }
}

pub fn list<'a, E>(m: &'a Obj, k: &str, invalid: impl Fn(String) -> E) -> Result<Option<&'a [Value]>, E> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(invalid(format!("{k} must be a list."))),
    }
}

pub fn child<'a, E>(m: &'a Obj, k: &str, invalid: impl Fn(String) -> E) -> Result<Option<&'a Obj>, E> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid(format!("{k} must be an object."))),
    }
}
