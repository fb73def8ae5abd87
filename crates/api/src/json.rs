//! What the AWS JSON 1.1 protocols (KMS, Lightsail) share: the error document and helpers to read
//! typed fields from a request body with clear validation errors.

use axum::response::{IntoResponse, Response};
use blocksnap_engine::EngineError;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

pub fn ok(body: Value, request_id: &str) -> Response {
    respond(StatusCode::OK, body.to_string(), request_id)
}

fn respond(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

/// `{"__type": code, "message": …}` as botocore's JSON parser reads it.
pub fn error(e: &EngineError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({ "__type": e.code(), "message": e.message() });
    error_response(e, status, e.code(), &body, request_id)
}

/// The one JSON 1.1 error response, whatever the service: `status`, the error document `body`
/// (`__type` and `message` at least; a service may add members), the request id and
/// `x-amzn-ErrorType: <code>`. An internal error is logged here, once.
pub fn error_response(e: &EngineError, status: StatusCode, code: &str, body: &Value, request_id: &str) -> Response {
    if matches!(e, EngineError::Internal(_)) {
        tracing::error!(error = %e, request_id, "internal error");
    }
    let mut r = respond(status, body.to_string(), request_id);
    if let Ok(v) = HeaderValue::from_str(code) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

/// A JSON 1.1 request refused by authentication, as the JSON services (KMS, Lightsail, ...) answer
/// it: `UnrecognizedClientException` for an unknown key, `InvalidSignatureException` for a
/// signature that does not match (or has expired, or names a region not served),
/// `IncompleteSignatureException`, `MissingAuthenticationTokenException`; never EC2's `AuthFailure`.
pub fn auth_error(r: &crate::auth::Rejected, request_id: &str) -> Response {
    use crate::auth::AuthFailure;
    let Some(failure) = r.failure else { return error(&r.error, request_id) };
    let (code, status) = match failure {
        AuthFailure::Missing => ("MissingAuthenticationTokenException", StatusCode::FORBIDDEN),
        AuthFailure::Malformed => ("IncompleteSignatureException", StatusCode::BAD_REQUEST),
        AuthFailure::UnknownKey => ("UnrecognizedClientException", StatusCode::BAD_REQUEST),
        AuthFailure::BadSignature | AuthFailure::Expired | AuthFailure::Region => {
            ("InvalidSignatureException", StatusCode::BAD_REQUEST)
        }
    };
    let message = match failure {
        AuthFailure::UnknownKey => "The security token included in the request is invalid.".to_string(),
        AuthFailure::BadSignature => "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
            .to_string(),
        _ => r.error.message(),
    };
    let body = serde_json::json!({ "__type": code, "message": message });
    error_response(&r.error, status, code, &body, request_id)
}

/// A request body's top-level object.
pub struct Body(pub Map<String, Value>);

// `bool` and `str_list` serve the Lightsail front end.
#[allow(dead_code)]
impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body, EngineError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(EngineError::client("SerializationException", "The request body must be a JSON object")),
            Err(e) => {
                Err(EngineError::client("SerializationException", format!("The request body is not valid JSON: {e}")))
            }
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<String>, EngineError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(EngineError::client("SerializationException", format!("{key} must be a string"))),
        }
    }

    pub fn required(&self, key: &str, code: &'static str) -> Result<String, EngineError> {
        self.str(key)?.filter(|s| !s.is_empty()).ok_or_else(|| {
            EngineError::client(code, format!("1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null", lower_first(key)))
        })
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, EngineError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| EngineError::client("SerializationException", format!("{key} must be an integer"))),
            Some(_) => Err(EngineError::client("SerializationException", format!("{key} must be a number"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, EngineError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(EngineError::client("SerializationException", format!("{key} must be a boolean"))),
        }
    }

    /// A list of `{Key|TagKey, Value|TagValue}` objects.
    pub fn tags(&self, key: &str, k: &str, v: &str) -> Result<Vec<blocksnap_engine::model::Tag>, EngineError> {
        let Some(list) = self.0.get(key) else { return Ok(vec![]) };
        let Value::Array(items) = list else {
            return Err(EngineError::client("SerializationException", format!("{key} must be a list")));
        };
        items
            .iter()
            .map(|it| {
                let key = it.get(k).and_then(Value::as_str).ok_or_else(|| {
                    EngineError::client("ValidationException", format!("Each of {key} needs a string {k}"))
                })?;
                let value = it.get(v).and_then(Value::as_str).unwrap_or_default();
                Ok(blocksnap_engine::model::Tag { key: key.to_string(), value: value.to_string() })
            })
            .collect()
    }

    pub fn str_list(&self, key: &str) -> Result<Vec<String>, EngineError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        EngineError::client("SerializationException", format!("{key} must be a list of strings"))
                    })
                })
                .collect(),
            Some(_) => Err(EngineError::client("SerializationException", format!("{key} must be a list"))),
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Epoch seconds with milliseconds, as JSON-protocol timestamps are sent.
pub fn epoch(ms: i64) -> Value {
    serde_json::json!(ms as f64 / 1000.0)
}
