//! Server-side verification of AWS Signature Version 4 (`AWS4-HMAC-SHA256`).
//!
//! Two steps, so that the caller can look the secret up between them:
//!
//! 1. [`parse`] reads the `Authorization` header (header form) or the `X-Amz-*` query parameters
//!    (presigned form) and checks everything that needs no secret: algorithm, credential scope
//!    syntax, scope date = `X-Amz-Date` date, `host` (and, in the header form, `x-amz-date`)
//!    among the signed headers, `X-Amz-Expires` range, `x-amz-content-sha256` syntax.
//! 2. [`verify`] checks the clock (±15 minutes, or the presigned expiry), the body hash when a hex
//!    `x-amz-content-sha256` is sent, then re-signs the request with `aws-sigv4` and compares the
//!    signatures in constant time.
//!
//! There is no official "verify" API in `aws-sigv4`; this re-signs with the settings that AWS uses
//! for non-S3 services (double percent-encoding of the path, path normalization), signing exactly
//! the headers listed in `SignedHeaders` (see `/work/shared/notes/crates.md`).
//!
//! Limitation: requests dated only by the HTTP `Date` header (no `X-Amz-Date`) are refused as
//! malformed, because `aws-sigv4` always signs an `x-amz-date` header. No AWS SDK or the AWS CLI
//! sends such requests.
//!
//! Error codes ([`AuthError::aws_code`]) follow the "Common client error codes" of the Amazon EC2
//! API Reference (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>):
//!
//! | variant | code | HTTP |
//! |---|---|---|
//! | [`AuthError::Missing`] | `MissingAuthenticationToken` | 401 |
//! | [`AuthError::Malformed`] | `IncompleteSignature` | 400 |
//! | [`AuthError::ScopeDateMismatch`], [`AuthError::SignatureMismatch`], [`AuthError::ContentHashMismatch`], [`AuthError::UnknownAccessKeyId`] | `AuthFailure` | 401 |
//! | [`AuthError::Expired`], [`AuthError::NotYetValid`] | `RequestExpired` | 400 |
//!
//! EC2 has no `SignatureDoesNotMatch` (that is S3/STS): EC2 answers a bad signature or an unknown
//! access key with `AuthFailure` ("AWS was not able to validate the provided access credentials").

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration as StdDuration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{AUTHORIZATION, DATE, HOST};
use http::{HeaderMap, Method, StatusCode, Uri};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, macros::format_description};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Allowed distance between `X-Amz-Date` and the server clock (header form; future side of the
/// presigned form).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(15);
/// Largest `X-Amz-Expires` AWS accepts (7 days).
pub const MAX_PRESIGNED_EXPIRES_SECS: u64 = 604_800;

const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const STREAMING_UNSIGNED_PAYLOAD_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";

const Q_ALGORITHM: &str = "X-Amz-Algorithm";
const Q_CREDENTIAL: &str = "X-Amz-Credential";
const Q_DATE: &str = "X-Amz-Date";
const Q_EXPIRES: &str = "X-Amz-Expires";
const Q_SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
const Q_SIGNATURE: &str = "X-Amz-Signature";
const Q_SECURITY_TOKEN: &str = "X-Amz-Security-Token";
/// Query parameters added by a presigner; removed before re-signing (aws-sigv4 adds them back).
const PRESIGN_PARAMS: [&str; 7] =
    [Q_ALGORITHM, Q_CREDENTIAL, Q_DATE, Q_EXPIRES, Q_SIGNED_HEADERS, Q_SIGNATURE, Q_SECURITY_TOKEN];

/// Where the signature was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthForm {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    Header,
    /// Presigned URL (`X-Amz-Signature` in the query), valid for `expires_secs` after `X-Amz-Date`.
    Presigned {
        /// Value of `X-Amz-Expires`.
        expires_secs: u64,
    },
}

/// What the signer declared as the payload hash (header form, `x-amz-content-sha256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadHash {
    /// No `x-amz-content-sha256`: the signature covers the SHA-256 of the body.
    Body,
    /// `UNSIGNED-PAYLOAD` (or `STREAMING-UNSIGNED-PAYLOAD-TRAILER`): the body is not signed.
    Unsigned {
        /// `true` for `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked body with trailers).
        streaming_trailer: bool,
    },
    /// A lowercase hex SHA-256 that must equal the body's hash.
    Sha256(String),
    /// Presigned URL: the signer used `UNSIGNED-PAYLOAD` (S3 style) or the hash of the (empty)
    /// body (botocore's `SigV4QueryAuth`, e.g. EC2 `CopySnapshot` `PresignedUrl`); both are tried.
    Presigned,
}

/// The authentication information of a request, read without any secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParsedAuth {
    /// Header or presigned form.
    pub form: AuthForm,
    /// Access key id from the credential scope: the key to look the secret up by.
    pub access_key_id: String,
    /// Credential scope date, `yyyymmdd` (equal to the date of `X-Amz-Date`).
    pub date: String,
    /// Credential scope region (the region of the request).
    pub region: String,
    /// Credential scope service (`ec2`, `lightsail`, `ebs`, …).
    pub service: String,
    /// `SignedHeaders`, lowercase, in the order sent.
    pub signed_headers: Vec<String>,
    /// The signature sent (64 lowercase hex digits).
    pub signature: String,
    /// `X-Amz-Date` as sent (`yyyymmddThhmmssZ`).
    pub amz_date: String,
    /// `X-Amz-Date` parsed (UTC).
    pub request_time: OffsetDateTime,
    /// `x-amz-security-token` header or `X-Amz-Security-Token` query parameter, if any.
    pub security_token: Option<String>,
    /// Payload hash mode.
    pub payload: PayloadHash,
}

impl std::fmt::Debug for ParsedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedAuth")
            .field("form", &self.form)
            .field("access_key_id", &self.access_key_id)
            .field("date", &self.date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .field("signature", &self.signature)
            .field("amz_date", &self.amz_date)
            .field("security_token", &self.security_token.as_ref().map(|_| "** redacted **"))
            .field("payload", &self.payload)
            .finish()
    }
}

impl ParsedAuth {
    /// Does a verified signature of this request also authenticate `body`?
    ///
    /// Yes when the signer hashed the body (no `x-amz-content-sha256`, or a hex hash that
    /// [`verify`] checks against the body). No for `UNSIGNED-PAYLOAD` and its streaming variant.
    /// A presigned URL covers an empty body only: the presigner may have signed `UNSIGNED-PAYLOAD`,
    /// so whatever body is sent with it is the sender's, not the signer's.
    ///
    /// Protocols whose body carries the operation and its parameters (EC2 Query, JSON 1.1) must
    /// refuse a request for which this is false; REST operations that authenticate their body
    /// otherwise (a signed checksum header) may accept it.
    pub fn covers_body(&self, body: &[u8]) -> bool {
        match self.payload {
            PayloadHash::Body | PayloadHash::Sha256(_) => true,
            PayloadHash::Unsigned { .. } => false,
            PayloadHash::Presigned => body.is_empty(),
        }
    }

    /// Is the header `name` (lowercase) among the signed headers?
    pub fn signs_header(&self, name: &str) -> bool {
        self.signed_headers.iter().any(|h| h == name)
    }
}

/// Why a request is not authenticated. See the crate docs for the AWS error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Neither an `Authorization` header nor presigned query parameters.
    #[error("Request must contain either a valid (registered) AWS access key ID or X.509 certificate.")]
    Missing,
    /// The signature information is syntactically wrong or uses something unsupported.
    #[error("{0}")]
    Malformed(String),
    /// The credential scope date is not the date of `X-Amz-Date`.
    #[error("Date in Credential scope ({scope}) does not match the date of X-Amz-Date ({request}).")]
    ScopeDateMismatch {
        /// Date in the credential scope.
        scope: String,
        /// Date part of `X-Amz-Date`.
        request: String,
    },
    /// Hex `x-amz-content-sha256` differs from the SHA-256 of the body.
    #[error("The provided x-amz-content-sha256 header does not match what was computed.")]
    ContentHashMismatch,
    /// The access key id is not known (for callers; never returned by this crate).
    #[error("AWS was not able to validate the provided access credentials")]
    UnknownAccessKeyId,
    /// The re-computed signature differs.
    #[error("AWS was not able to validate the provided access credentials")]
    SignatureMismatch,
    /// `X-Amz-Date` is more than 15 minutes old, or the presigned URL's `X-Amz-Expires` passed.
    #[error("Request has expired (signed {request_time}, valid until {valid_until}, now {now}).")]
    Expired {
        /// `X-Amz-Date`.
        request_time: OffsetDateTime,
        /// Last instant at which the request was acceptable.
        valid_until: OffsetDateTime,
        /// Server time used.
        now: OffsetDateTime,
    },
    /// `X-Amz-Date` is more than 15 minutes in the future.
    #[error("Request is not yet valid (signed {request_time}, now {now}).")]
    NotYetValid {
        /// `X-Amz-Date`.
        request_time: OffsetDateTime,
        /// Server time used.
        now: OffsetDateTime,
    },
}

impl AuthError {
    /// The EC2 Query API error code for this failure.
    pub fn aws_code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationToken",
            AuthError::Malformed(_) => "IncompleteSignature",
            AuthError::ScopeDateMismatch { .. }
            | AuthError::ContentHashMismatch
            | AuthError::UnknownAccessKeyId
            | AuthError::SignatureMismatch => "AuthFailure",
            AuthError::Expired { .. } | AuthError::NotYetValid { .. } => "RequestExpired",
        }
    }

    /// HTTP status EC2 uses with [`Self::aws_code`].
    pub fn http_status(&self) -> StatusCode {
        match self.aws_code() {
            "IncompleteSignature" | "RequestExpired" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

fn malformed(msg: impl Into<String>) -> AuthError {
    AuthError::Malformed(msg.into())
}

/// Reads the SigV4 authentication of a request (no secret needed).
///
/// Returns [`AuthError::Missing`] when the request carries no authentication at all.
pub fn parse(_method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<ParsedAuth, AuthError> {
    let mut auth_headers = headers.get_all(AUTHORIZATION).iter();
    let auth_header = auth_headers.next();
    if auth_headers.next().is_some() {
        return Err(malformed("More than one Authorization header."));
    }
    let query: Vec<(Cow<'_, str>, Cow<'_, str>)> = match uri.query() {
        Some(q) => form_urlencoded::parse(q.as_bytes()).collect(),
        None => Vec::new(),
    };
    let presigned =
        query.iter().any(|(k, _)| matches!(k.as_ref(), Q_ALGORITHM | Q_CREDENTIAL | Q_SIGNATURE | Q_SIGNED_HEADERS));
    match (auth_header, presigned) {
        (Some(_), true) => Err(malformed(
            "Only one authentication mechanism allowed: Authorization header or X-Amz-Signature query parameters.",
        )),
        (None, false) => Err(AuthError::Missing),
        (Some(value), false) => {
            let value = value.to_str().map_err(|_| malformed("Authorization header is not visible ASCII."))?;
            parse_header_form(value, headers)
        }
        (None, true) => parse_query_form(&query, headers),
    }
}

fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(format!("More than one {name} header.")));
    }
    first.to_str().map(Some).map_err(|_| malformed(format!("{name} header is not visible ASCII.")))
}

fn parse_header_form(value: &str, headers: &HeaderMap) -> Result<ParsedAuth, AuthError> {
    let value = value.trim();
    let (algorithm, rest) = value
        .split_once(' ')
        .ok_or_else(|| malformed("Authorization header requires Credential, SignedHeaders and Signature."))?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!(
            "Unsupported authorization algorithm {algorithm:?}; only {ALGORITHM} is accepted."
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| malformed(format!("Authorization header element {part:?} is not key=value.")))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(format!("Unknown element {key:?} in the Authorization header.")));
            }
        };
        if slot.replace(val).is_some() {
            return Err(malformed(format!("Duplicate {key} in the Authorization header.")));
        }
    }
    let credential = credential.ok_or_else(|| malformed("Authorization header requires 'Credential' parameter."))?;
    let signed_headers =
        signed_headers.ok_or_else(|| malformed("Authorization header requires 'SignedHeaders' parameter."))?;
    let signature = signature.ok_or_else(|| malformed("Authorization header requires 'Signature' parameter."))?;

    let amz_date = match single_header(headers, X_AMZ_DATE)? {
        Some(d) => d,
        None if headers.contains_key(DATE) => {
            return Err(malformed("Requests dated by the Date header are not supported: sign with X-Amz-Date."));
        }
        None => return Err(malformed("Authorization header requires existence of an X-Amz-Date header.")),
    };
    let security_token = single_header(headers, X_AMZ_SECURITY_TOKEN)?.map(str::to_owned);
    let payload = match single_header(headers, X_AMZ_CONTENT_SHA256)? {
        None => PayloadHash::Body,
        Some(UNSIGNED_PAYLOAD) => PayloadHash::Unsigned { streaming_trailer: false },
        Some(STREAMING_UNSIGNED_PAYLOAD_TRAILER) => PayloadHash::Unsigned { streaming_trailer: true },
        Some(h) if is_lower_hex(h, 64) => PayloadHash::Sha256(h.to_owned()),
        Some(h) => {
            return Err(malformed(format!(
                "Unsupported x-amz-content-sha256 value {h:?}: expected a lowercase hex SHA-256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER."
            )));
        }
    };
    let parsed = finish(AuthForm::Header, credential, signed_headers, signature, amz_date, security_token, payload)?;
    if !parsed.signed_headers.iter().any(|h| h == X_AMZ_DATE) {
        return Err(malformed("x-amz-date must be among the SignedHeaders."));
    }
    Ok(parsed)
}

fn parse_query_form(query: &[(Cow<'_, str>, Cow<'_, str>)], headers: &HeaderMap) -> Result<ParsedAuth, AuthError> {
    let get = |name: &str| -> Result<Option<&str>, AuthError> {
        let mut it = query.iter().filter(|(k, _)| k == name);
        let first = it.next().map(|(_, v)| v.as_ref());
        if it.next().is_some() {
            return Err(malformed(format!("Duplicate query parameter {name}.")));
        }
        Ok(first)
    };
    let require = |name: &str| -> Result<&str, AuthError> {
        get(name)?.ok_or_else(|| malformed(format!("Presigned URL requires the {name} query parameter.")))
    };
    let algorithm = require(Q_ALGORITHM)?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!("Unsupported X-Amz-Algorithm {algorithm:?}; only {ALGORITHM} is accepted.")));
    }
    let credential = require(Q_CREDENTIAL)?;
    let amz_date = require(Q_DATE)?;
    let expires = require(Q_EXPIRES)?;
    let signed_headers = require(Q_SIGNED_HEADERS)?;
    let signature = require(Q_SIGNATURE)?;
    let security_token = get(Q_SECURITY_TOKEN)?.map(str::to_owned);
    let expires_secs = if !expires.is_empty() && expires.bytes().all(|b| b.is_ascii_digit()) {
        expires.parse::<u64>().ok()
    } else {
        None
    }
    .filter(|s| (1..=MAX_PRESIGNED_EXPIRES_SECS).contains(s))
    .ok_or_else(|| {
        malformed(format!("X-Amz-Expires must be an integer between 1 and {MAX_PRESIGNED_EXPIRES_SECS} seconds."))
    })?;
    // A presigned URL can't be combined with a signed header-form token; an extra header token
    // would be ambiguous.
    if security_token.is_some() && headers.contains_key(X_AMZ_SECURITY_TOKEN) {
        return Err(malformed("Security token given both as X-Amz-Security-Token parameter and header."));
    }
    finish(
        AuthForm::Presigned { expires_secs },
        credential,
        signed_headers,
        signature,
        amz_date,
        security_token,
        PayloadHash::Presigned,
    )
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    let shape_ok =
        b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape_ok {
        return None;
    }
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(s, fmt).ok().map(PrimitiveDateTime::assume_utc)
}

fn finish(
    form: AuthForm,
    credential: &str,
    signed_headers: &str,
    signature: &str,
    amz_date: &str,
    security_token: Option<String>,
    payload: PayloadHash,
) -> Result<ParsedAuth, AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = parts.as_slice() else {
        return Err(malformed(format!(
            "Credential {credential:?} must have the form <key>/<yyyymmdd>/<region>/<service>/aws4_request."
        )));
    };
    if *terminator != "aws4_request" {
        return Err(malformed("Credential scope must end with aws4_request."));
    }
    if akid.is_empty() || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(malformed("Credential access key id is malformed."));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("Credential scope date {date:?} is not yyyymmdd.")));
    }
    if !is_scope_token(region) || !is_scope_token(service) {
        return Err(malformed("Credential scope region or service is malformed."));
    }
    let request_time = parse_amz_date(amz_date)
        .ok_or_else(|| malformed(format!("X-Amz-Date {amz_date:?} is not in the form yyyymmddThhmmssZ.")))?;
    let request_date = amz_date.get(..8).unwrap_or_default();
    if *date != request_date {
        return Err(AuthError::ScopeDateMismatch { scope: (*date).to_owned(), request: request_date.to_owned() });
    }
    let signed: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    for h in &signed {
        let valid = !h.is_empty()
            && h.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(
                        b,
                        b'-' | b'_'
                            | b'.'
                            | b'!'
                            | b'#'
                            | b'$'
                            | b'%'
                            | b'&'
                            | b'\''
                            | b'*'
                            | b'+'
                            | b'^'
                            | b'`'
                            | b'|'
                            | b'~'
                    )
            });
        if !valid {
            return Err(malformed(format!("SignedHeaders element {h:?} is not a lowercase header name.")));
        }
    }
    if !signed.iter().any(|h| h == "host") {
        return Err(malformed("host must be among the SignedHeaders."));
    }
    if !is_lower_hex(signature, 64) {
        return Err(malformed("Signature must be 64 lowercase hex digits."));
    }
    Ok(ParsedAuth {
        form,
        access_key_id: (*akid).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers: signed,
        signature: signature.to_owned(),
        amz_date: amz_date.to_owned(),
        request_time,
        security_token,
        payload,
    })
}

/// Checks the clock, the body hash and the signature of a request parsed by [`parse`].
///
/// `method`, `uri`, `headers` and `body` must be those of the request `parsed` came from; `uri` is
/// the request target as received (origin form `/path?query`, still percent-encoded).
pub fn verify(
    parsed: &ParsedAuth,
    secret_access_key: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), AuthError> {
    check_time(parsed, now)?;

    if let PayloadHash::Sha256(expected) = &parsed.payload {
        let actual = hex::encode(Sha256::digest(body));
        if actual != *expected {
            return Err(AuthError::ContentHashMismatch);
        }
    }

    let url = signable_url(parsed, uri);
    let signable_headers = signable_headers(parsed, uri, headers)?;
    let token_signed = match parsed.form {
        AuthForm::Header => parsed.signed_headers.iter().any(|h| h == X_AMZ_SECURITY_TOKEN),
        AuthForm::Presigned { .. } => parsed.security_token.is_some(),
    };
    let token = if token_signed {
        Some(parsed.security_token.clone().ok_or_else(|| malformed("Signed header x-amz-security-token is missing."))?)
    } else {
        None
    };
    let identity: Identity =
        Credentials::new(parsed.access_key_id.clone(), secret_access_key.to_owned(), token, None, "blocksnap-sigv4")
            .into();

    let bodies: &[SignableBody<'_>] = match &parsed.payload {
        PayloadHash::Body => &[SignableBody::Bytes(body)],
        PayloadHash::Unsigned { streaming_trailer: false } => &[SignableBody::UnsignedPayload],
        PayloadHash::Unsigned { streaming_trailer: true } => &[SignableBody::StreamingUnsignedPayloadTrailer],
        PayloadHash::Sha256(h) => &[SignableBody::Precomputed(h.clone())],
        PayloadHash::Presigned => &[SignableBody::UnsignedPayload, SignableBody::Bytes(body)],
    };
    let mut matched = subtle::Choice::from(0u8);
    for signable_body in bodies {
        let computed = compute_signature(parsed, &identity, method, &url, &signable_headers, signable_body.clone())?;
        matched |= computed.as_bytes().ct_eq(parsed.signature.as_bytes());
    }
    if bool::from(matched) {
        Ok(())
    } else {
        tracing::debug!(
            access_key_id = %parsed.access_key_id,
            form = ?parsed.form,
            "SigV4 signature mismatch"
        );
        Err(AuthError::SignatureMismatch)
    }
}

fn check_time(parsed: &ParsedAuth, now: OffsetDateTime) -> Result<(), AuthError> {
    let request_time = parsed.request_time;
    let age = now - request_time;
    if age < -MAX_CLOCK_SKEW {
        return Err(AuthError::NotYetValid { request_time, now });
    }
    let valid_for = match parsed.form {
        AuthForm::Header => MAX_CLOCK_SKEW,
        // Bounded by MAX_PRESIGNED_EXPIRES_SECS in parse; saturate anyway.
        AuthForm::Presigned { expires_secs } => Duration::seconds(i64::try_from(expires_secs).unwrap_or(i64::MAX)),
    };
    if age > valid_for {
        return Err(AuthError::Expired { request_time, valid_until: request_time.saturating_add(valid_for), now });
    }
    Ok(())
}

/// Path and query as sent; for the presigned form without the `X-Amz-*` signing parameters
/// (aws-sigv4 adds them back while signing).
fn signable_url(parsed: &ParsedAuth, uri: &Uri) -> String {
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    let query = match (uri.query(), parsed.form) {
        (None, _) => None,
        (Some(q), AuthForm::Header) => Some(q.to_owned()),
        (Some(q), AuthForm::Presigned { .. }) => {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|piece| {
                    let key = form_urlencoded::parse(piece.as_bytes()).next().map(|(k, _)| k);
                    !matches!(key, Some(k) if PRESIGN_PARAMS.contains(&k.as_ref()))
                })
                .collect();
            Some(kept.join("&"))
        }
    };
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// The signed headers with their values, minus those aws-sigv4 inserts itself in the header form
/// (`x-amz-date` from the signing time, `x-amz-security-token` from the credentials).
fn signable_headers(parsed: &ParsedAuth, uri: &Uri, headers: &HeaderMap) -> Result<Vec<(String, String)>, AuthError> {
    let mut out = Vec::with_capacity(parsed.signed_headers.len());
    for name in &parsed.signed_headers {
        if parsed.form == AuthForm::Header && (name == X_AMZ_DATE || name == X_AMZ_SECURITY_TOKEN) {
            continue;
        }
        let mut found = false;
        for value in headers.get_all(name.as_str()) {
            let value = value.to_str().map_err(|_| malformed(format!("Signed header {name} is not visible ASCII.")))?;
            out.push((name.clone(), value.to_owned()));
            found = true;
        }
        if !found && name == HOST.as_str() {
            // HTTP/2 carries the host in :authority, which ends up in the URI.
            if let Some(authority) = uri.authority() {
                out.push((name.clone(), authority.as_str().to_owned()));
                found = true;
            }
        }
        if !found {
            return Err(malformed(format!("Signed header {name} is not present in the request.")));
        }
    }
    Ok(out)
}

fn compute_signature(
    parsed: &ParsedAuth,
    identity: &Identity,
    method: &Method,
    url: &str,
    headers: &[(String, String)],
    body: SignableBody<'_>,
) -> Result<String, AuthError> {
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    settings.session_token_mode = SessionTokenMode::Include;
    match parsed.form {
        AuthForm::Header => settings.signature_location = SignatureLocation::Headers,
        AuthForm::Presigned { expires_secs } => {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(StdDuration::from_secs(expires_secs));
        }
    }
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(&parsed.region)
        .name(&parsed.service)
        .time(SystemTime::from(parsed.request_time))
        .settings(settings)
        .build()
        .map_err(|e| malformed(format!("Cannot build signing parameters: {e}")))?
        .into();
    let request =
        SignableRequest::new(method.as_str(), url, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), body)
            .map_err(|e| malformed(format!("Cannot canonicalize the request: {e}")))?;
    // aws-sigv4 has a few `expect`s on inputs we pre-validate (host present, valid URI); never let
    // a request take the server down if one is reached anyway.
    let signed = catch_unwind(AssertUnwindSafe(|| sign(request, &params)))
        .map_err(|_| malformed("Cannot canonicalize the request."))?
        .map_err(|e| malformed(format!("Cannot canonicalize the request: {e}")))?;
    Ok(signed.signature().to_owned())
}
