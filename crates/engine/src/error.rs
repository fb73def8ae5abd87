//! The engine's one error type. Each variant is one AWS error code, or a class of failure
//! ([`ErrorClass`]) for protocols whose codes are classes; front ends render it their own way (EC2
//! XML, Lightsail JSON: its front end names codes and classes) but never invent codes of their own
//! for engine outcomes.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `(code, message)` for the AWS client errors whose code is data: `InvalidVolume.NotFound`,
    /// `IncorrectState`, `VolumeInUse`, ... Kept as one variant so the mapping stays a table, not a match.
    #[error("{code}: {message}")]
    Client { code: &'static str, message: String },
    /// A client error whose protocol also names a machine-readable reason (the EBS direct APIs'
    /// `ValidationException` with `Reason: INVALID_BLOCK_TOKEN`, ...).
    #[error("{code} ({reason}): {message}")]
    Reasoned { code: &'static str, reason: &'static str, message: String },
    /// A failure named by its class, for protocols whose error codes are classes rather than
    /// cases (Lightsail: its front end names each class, e.g. `InvalidInputException`).
    #[error("{class:?}: {message}")]
    Classed { class: ErrorClass, message: String },
    /// The request would have succeeded; nothing was changed (EC2 `DryRun=true`).
    #[error("Request would have succeeded, but DryRun flag is set.")]
    DryRun,
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an [`EngineError::Classed`] is; each front end names it in its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong (a name, a size, a combination of members).
    InvalidInput,
    /// A named resource does not exist (for the caller).
    NotFound,
    /// The resource is not in a state that allows the operation.
    OperationFailure,
    /// The service cannot take the request now (a bounded wait ran out); retrying may succeed.
    Busy,
}

impl EngineError {
    pub fn classed(class: ErrorClass, message: impl Into<String>) -> Self {
        EngineError::Classed { class, message: message.into() }
    }
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::Client { code, message: message.into() }
    }
    pub fn reasoned(code: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        EngineError::Reasoned { code, reason, message: message.into() }
    }
    /// The machine-readable reason, for protocols that carry one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            EngineError::Reasoned { reason, .. } => Some(reason),
            _ => None,
        }
    }
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterValue", message)
    }
    pub fn combination(message: impl Into<String>) -> Self {
        Self::client("InvalidParameterCombination", message)
    }
    pub fn missing(message: impl Into<String>) -> Self {
        Self::client("MissingParameter", message)
    }

    /// The AWS error code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Client { code, .. } | EngineError::Reasoned { code, .. } => code,
            // The EC2 codes of the same meaning (Lightsail renders the class itself).
            EngineError::Classed { class, .. } => match class {
                ErrorClass::InvalidInput => "InvalidParameterValue",
                ErrorClass::NotFound => "InvalidResource.NotFound",
                ErrorClass::OperationFailure => "IncorrectState",
                ErrorClass::Busy => "ServiceUnavailable",
            },
            EngineError::DryRun => "DryRunOperation",
            EngineError::Internal(_) => "InternalError",
        }
    }

    pub fn message(&self) -> String {
        match self {
            EngineError::Client { message, .. }
            | EngineError::Reasoned { message, .. }
            | EngineError::Classed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// HTTP status the AWS APIs use for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::DryRun => 412,
            EngineError::Internal(_) => 500,
            EngineError::Classed { class: ErrorClass::Busy, .. } => 503,
            EngineError::Classed { .. } => 400,
            EngineError::Client { code, .. } | EngineError::Reasoned { code, .. } => match *code {
                "AuthFailure"
                | "UnauthorizedOperation"
                | "SignatureDoesNotMatch"
                | "InvalidClientTokenId"
                | "MissingAuthenticationToken"
                | "IncompleteSignature"
                | "RequestExpired" => 401,
                "ServiceUnavailable" | "RequestLimitExceeded" => 503,
                _ => 400,
            },
        }
    }
}

impl From<blocksnap_catalog::CatalogError> for EngineError {
    fn from(e: blocksnap_catalog::CatalogError) -> Self {
        tracing::error!(error = %e, "catalog failure");
        EngineError::Internal(format!("catalog: {e}"))
    }
}

impl From<serde_json::Error> for EngineError {
    fn from(e: serde_json::Error) -> Self {
        EngineError::Internal(format!("catalog document: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
