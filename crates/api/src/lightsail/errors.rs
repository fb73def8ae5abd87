//! Lightsail's errors on the wire: its exception names, which engine outcome is which, HTTP
//! statuses, and the error document `{"__type", "message", "code", "docs", "tip"}`
//! (InvalidInput/NotFound/OperationFailure 400, AccessDenied/Unauthenticated 403,
//! AccountSetupInProgress 428, Service 500).

use axum::response::Response;
use blocksnap_engine::{EngineError, ErrorClass, Result};
use http::StatusCode;
use serde_json::{Value, json};

pub const INVALID_INPUT: &str = "InvalidInputException";
pub const NOT_FOUND: &str = "NotFoundException";
pub const OPERATION_FAILURE: &str = "OperationFailureException";
pub const ACCESS_DENIED: &str = "AccessDeniedException";
pub const UNAUTHENTICATED: &str = "UnauthenticatedException";
pub const SERVICE: &str = "ServiceException";

/// The exception an EC2 error code of an engine call becomes (the message is kept).
fn from_ec2_code(code: &'static str) -> &'static str {
    if code.ends_with("Exception") {
        code
    } else if code.ends_with(".NotFound") {
        NOT_FOUND
    } else if matches!(
        code,
        "IncorrectState"
            | "IncorrectInstanceState"
            | "VolumeInUse"
            | "SnapshotLimitExceeded"
            | "ConcurrentSnapshotLimitExceeded"
            | "InvalidSnapshot.InUse"
            | "AttachmentLimitExceeded"
            | "InstanceLimitExceeded"
            | "KMSKeyNotAccessible"
    ) {
        OPERATION_FAILURE
    } else if matches!(code, "AuthFailure" | "UnauthorizedOperation") {
        ACCESS_DENIED
    } else {
        INVALID_INPUT
    }
}

/// Lightsail's exception name for an error.
pub fn exception(e: &EngineError) -> &'static str {
    match e {
        EngineError::Internal(_) => SERVICE,
        EngineError::DryRun => INVALID_INPUT,
        EngineError::Classed { class, .. } => match class {
            ErrorClass::InvalidInput => INVALID_INPUT,
            ErrorClass::NotFound => NOT_FOUND,
            ErrorClass::OperationFailure => OPERATION_FAILURE,
            ErrorClass::Busy => SERVICE,
        },
        EngineError::Client { code, .. } | EngineError::Reasoned { code, .. } => from_ec2_code(code),
    }
}

fn status(code: &str) -> StatusCode {
    match code {
        ACCESS_DENIED | UNAUTHENTICATED => StatusCode::FORBIDDEN,
        "AccountSetupInProgressException" => StatusCode::PRECONDITION_REQUIRED,
        SERVICE => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn tip(code: &str) -> &'static str {
    match code {
        NOT_FOUND => "Check the name: Get* calls list the resources of this account and region.",
        INVALID_INPUT => "Check the request's parameters against the Lightsail API reference.",
        OPERATION_FAILURE => "The resource is not in a state that allows this operation; retry once it is.",
        SERVICE => "An internal error occurred in blocksnap; see the server log.",
        _ => "",
    }
}

/// The Lightsail error document: `{"__type", "message", "code", "docs", "tip"}`.
pub fn error(e: &EngineError, request_id: &str) -> Response {
    let code = exception(e);
    let body = json!({
        "__type": code,
        "message": e.message(),
        "code": code.trim_end_matches("Exception"),
        "docs": "https://docs.aws.amazon.com/lightsail/2016-11-28/api-reference/",
        "tip": tip(code),
    });
    crate::json::error_response(e, status(code), code, &body, request_id)
}

/// The HTTP response of a dispatched call (run on the blocking pool).
pub fn respond(result: Result<Value>, request_id: &str) -> Response {
    match result {
        Ok(v) => crate::json::ok(v, request_id),
        Err(e) => error(&e, request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_lightsail() {
        let m = |c: &'static str| exception(&EngineError::client(c, "x"));
        assert_eq!(m("InvalidVolume.NotFound"), NOT_FOUND);
        assert_eq!(m("IncorrectState"), OPERATION_FAILURE);
        assert_eq!(m("InvalidParameterValue"), INVALID_INPUT);
        assert_eq!(m("NotFoundException"), NOT_FOUND);
        assert_eq!(m("AuthFailure"), ACCESS_DENIED);
        assert_eq!(exception(&EngineError::classed(ErrorClass::Busy, "x")), SERVICE);
        assert_eq!(exception(&EngineError::Internal("x".into())), SERVICE);
    }
}
