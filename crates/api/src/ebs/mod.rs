//! The EBS direct APIs (service `ebs`, API version 2019-11-02, REST-JSON): one typed
//! [`Endpoint`] per request, parsed from the method, path, query string and headers; the engine
//! (`blocksnap_engine::ebs`) does the work; answers and errors are rendered here in the
//! protocol's own shapes (JSON bodies, `x-amz-*` headers, `x-amzn-ErrorType` + `Reason`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blocksnap_engine::ebs::{self, BlockPage, ChangedPage};
use blocksnap_engine::model::{Ctx, Snapshot, SnapshotState, Tag};
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};

/// The SigV4 service name the EBS direct APIs are signed for.
pub const SERVICE: &str = "ebs";

/// One request of the EBS direct APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    StartSnapshot,
    PutSnapshotBlock { snapshot_id: String, block_index: String },
    CompleteSnapshot { snapshot_id: String },
    ListSnapshotBlocks { snapshot_id: String },
    ListChangedBlocks { second_snapshot_id: String },
    GetSnapshotBlock { snapshot_id: String, block_index: String },
}

/// Every operation, for the routing tests and the CLI sweep.
pub const OPERATIONS: &[&str] = &[
    "StartSnapshot",
    "PutSnapshotBlock",
    "CompleteSnapshot",
    "ListSnapshotBlocks",
    "ListChangedBlocks",
    "GetSnapshotBlock",
];

/// Is this path one of the EBS direct APIs' (`/snapshots…`)? Decides the protocol before the
/// signature is checked.
pub fn is_ebs_path(uri: &Uri) -> bool {
    let p = uri.path();
    p == "/snapshots" || p.starts_with("/snapshots/")
}

fn validation(reason: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::reasoned("ValidationException", reason, message)
}

impl Endpoint {
    pub fn parse(method: &Method, uri: &Uri) -> Result<Endpoint, EngineError> {
        let path = uri.path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let own = |s: &str| s.to_string();
        let ep = match (method.as_str(), parts.as_slice()) {
            ("POST", ["snapshots"]) => Some(Endpoint::StartSnapshot),
            ("POST", ["snapshots", "completion", id]) => Some(Endpoint::CompleteSnapshot { snapshot_id: own(id) }),
            ("PUT", ["snapshots", id, "blocks", index]) => {
                Some(Endpoint::PutSnapshotBlock { snapshot_id: own(id), block_index: own(index) })
            }
            ("GET", ["snapshots", id, "blocks", index]) => {
                Some(Endpoint::GetSnapshotBlock { snapshot_id: own(id), block_index: own(index) })
            }
            ("GET", ["snapshots", id, "blocks"]) => Some(Endpoint::ListSnapshotBlocks { snapshot_id: own(id) }),
            ("GET", ["snapshots", id, "changedblocks"]) => {
                Some(Endpoint::ListChangedBlocks { second_snapshot_id: own(id) })
            }
            _ => None,
        };
        ep.ok_or_else(|| {
            EngineError::client(
                "UnknownOperationException",
                format!("{method} {} is not an operation of the EBS direct APIs.", uri.path()),
            )
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::StartSnapshot => "StartSnapshot",
            Endpoint::PutSnapshotBlock { .. } => "PutSnapshotBlock",
            Endpoint::CompleteSnapshot { .. } => "CompleteSnapshot",
            Endpoint::ListSnapshotBlocks { .. } => "ListSnapshotBlocks",
            Endpoint::ListChangedBlocks { .. } => "ListChangedBlocks",
            Endpoint::GetSnapshotBlock { .. } => "GetSnapshotBlock",
        }
    }

    /// Only PutSnapshotBlock's body (the block) may be unsigned.
    pub fn unsigned_block_body(method: &Method, uri: &Uri) -> bool {
        matches!(Endpoint::parse(method, uri), Ok(Endpoint::PutSnapshotBlock { .. }))
    }
}

// ---- reading the request -----------------------------------------------------------------------

fn query(uri: &Uri) -> Result<HashMap<String, String>, EngineError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("The query parameter {k} is given more than once."),
            ));
        }
    }
    Ok(out)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, EngineError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| validation("INVALID_PARAMETER_VALUE", format!("The header {name} is not valid text."))),
    }
}

fn int(name: &str, v: &str) -> Result<i64, EngineError> {
    v.parse::<i64>()
        .map_err(|_| validation("INVALID_PARAMETER_VALUE", format!("{name} must be an integer, not '{v}'.")))
}

fn opt_int(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, EngineError> {
    q.get(name).map(|v| int(name, v)).transpose()
}

fn block_index(v: &str) -> Result<i64, EngineError> {
    v.parse::<i64>().ok().filter(|i| *i >= 0).ok_or_else(|| {
        validation("INVALID_BLOCK", format!("The block index must be a non-negative integer, not '{v}'."))
    })
}

fn checksum(v: &str, what: &str) -> Result<[u8; 32], EngineError> {
    STANDARD
        .decode(v)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| validation("INVALID_CHECKSUM", format!("{what} must be a base64 SHA-256 (32 bytes).")))
}

fn require_sha256(h: &HeaderMap) -> Result<(), EngineError> {
    match header_str(h, "x-amz-checksum-algorithm")? {
        Some("SHA256") => Ok(()),
        Some(other) => Err(validation(
            "INVALID_PARAMETER_VALUE",
            format!("x-amz-Checksum-Algorithm must be SHA256, not '{other}'."),
        )),
        None => Err(validation(
            "INVALID_PARAMETER_VALUE",
            "x-amz-Checksum-Algorithm (SHA256) is required with x-amz-Checksum.",
        )),
    }
}

fn body_json(body: &[u8]) -> Result<Map<String, Value>, EngineError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(validation("INVALID_PARAMETER_VALUE", "The request body must be a JSON object.")),
        Err(e) => Err(validation("INVALID_PARAMETER_VALUE", format!("The request body is not valid JSON: {e}"))),
    }
}

fn field_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>, EngineError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(validation("INVALID_PARAMETER_VALUE", format!("{k} must be a string."))),
    }
}

fn field_int(m: &Map<String, Value>, k: &str) -> Result<Option<i64>, EngineError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| validation("INVALID_PARAMETER_VALUE", format!("{k} must be an integer."))),
        Some(_) => Err(validation("INVALID_PARAMETER_VALUE", format!("{k} must be a number."))),
    }
}

fn start_request(body: &[u8]) -> Result<ebs::StartSnapshot, EngineError> {
    let m = body_json(body)?;
    let volume_size_gib =
        field_int(&m, "VolumeSize")?.ok_or_else(|| validation("INVALID_PARAMETER_VALUE", "VolumeSize is required."))?;
    let encrypted = match m.get("Encrypted") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(validation("INVALID_PARAMETER_VALUE", "Encrypted must be a boolean.")),
    };
    let tags = match m.get("Tags") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                let key = t.get("Key").and_then(Value::as_str);
                let value = t.get("Value").and_then(Value::as_str).unwrap_or_default();
                key.map(|k| Tag { key: k.to_string(), value: value.to_string() })
                    .ok_or_else(|| validation("INVALID_TAG", "Each tag needs a string Key."))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(validation("INVALID_TAG", "Tags must be a list of {Key, Value}.")),
    };
    Ok(ebs::StartSnapshot {
        volume_size_gib,
        parent_snapshot_id: field_str(&m, "ParentSnapshotId")?,
        tags,
        description: field_str(&m, "Description")?,
        client_token: field_str(&m, "ClientToken")?,
        encrypted,
        kms_key_arn: field_str(&m, "KmsKeyArn")?,
        timeout_minutes: field_int(&m, "Timeout")?,
    })
}

fn put_request(snapshot_id: &str, index: &str, h: &HeaderMap, body: Bytes) -> Result<ebs::PutBlock, EngineError> {
    let length = header_str(h, "x-amz-data-length")?
        .ok_or_else(|| validation("INVALID_PARAMETER_VALUE", "x-amz-Data-Length is required."))?;
    let length = int("x-amz-Data-Length", length)?;
    if length != i64::from(ebs::EBS_BLOCK_SIZE) {
        return Err(validation(
            "INVALID_PARAMETER_VALUE",
            format!("x-amz-Data-Length must be {} (one block), not {length}.", ebs::EBS_BLOCK_SIZE),
        ));
    }
    if body.len() as i64 != length {
        return Err(validation(
            "INVALID_BLOCK",
            format!("The body is {} bytes but x-amz-Data-Length says {length}.", body.len()),
        ));
    }
    let sum = header_str(h, "x-amz-checksum")?
        .ok_or_else(|| validation("INVALID_CHECKSUM", "x-amz-Checksum (base64 SHA-256 of the block) is required."))?;
    let sum = checksum(sum, "x-amz-Checksum")?;
    require_sha256(h)?;
    let progress = header_str(h, "x-amz-progress")?.map(|v| int("x-amz-Progress", v)).transpose()?;
    if let Some(p) = progress
        && !(0..=100).contains(&p)
    {
        return Err(validation("INVALID_PARAMETER_VALUE", format!("x-amz-Progress must be 0 to 100, not {p}.")));
    }
    Ok(ebs::PutBlock {
        snapshot_id: snapshot_id.to_string(),
        block_index: block_index(index)?,
        data: body,
        checksum: sum,
        progress,
    })
}

fn complete_request(snapshot_id: &str, h: &HeaderMap) -> Result<ebs::CompleteSnapshot, EngineError> {
    let count = header_str(h, "x-amz-changedblockscount")?
        .ok_or_else(|| validation("INVALID_PARAMETER_VALUE", "x-amz-ChangedBlocksCount is required."))?;
    let count = int("x-amz-ChangedBlocksCount", count)?;
    let linear_checksum = match header_str(h, "x-amz-checksum")? {
        None => None,
        Some(v) => {
            let sum = checksum(v, "x-amz-Checksum")?;
            require_sha256(h)?;
            match header_str(h, "x-amz-checksum-aggregation-method")? {
                Some("LINEAR") => {}
                Some(other) => {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        format!("x-amz-Checksum-Aggregation-Method must be LINEAR, not '{other}'."),
                    ));
                }
                None => {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        "x-amz-Checksum-Aggregation-Method (LINEAR) is required with x-amz-Checksum.",
                    ));
                }
            }
            Some(sum)
        }
    };
    Ok(ebs::CompleteSnapshot { snapshot_id: snapshot_id.to_string(), changed_blocks_count: count, linear_checksum })
}

/// Every parse a request goes through before the engine, for the fuzzers.
pub(crate) fn parse_only(method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<(), EngineError> {
    match Endpoint::parse(method, uri)? {
        Endpoint::StartSnapshot => start_request(&body).map(drop),
        Endpoint::PutSnapshotBlock { snapshot_id, block_index } => {
            put_request(&snapshot_id, &block_index, headers, body).map(drop)
        }
        Endpoint::CompleteSnapshot { snapshot_id } => complete_request(&snapshot_id, headers).map(drop),
        Endpoint::ListSnapshotBlocks { .. } | Endpoint::ListChangedBlocks { .. } => {
            let q = query(uri)?;
            for k in ["startingBlockIndex", "maxResults"] {
                opt_int(&q, k)?;
            }
            Ok(())
        }
        Endpoint::GetSnapshotBlock { block_index: i, .. } => {
            query(uri)?;
            block_index(&i).map(drop)
        }
    }
}

// ---- rendering ----------------------------------------------------------------------------------

fn epoch_secs(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn snapshot_json(s: &Snapshot) -> Value {
    let mut m = Map::new();
    m.insert("SnapshotId".into(), json!(s.id));
    m.insert("OwnerId".into(), json!(s.account));
    m.insert("Status".into(), json!(s.state.as_str()));
    m.insert("StartTime".into(), epoch_secs(s.start_time));
    m.insert("VolumeSize".into(), json!(s.volume_size_gib));
    m.insert("BlockSize".into(), json!(ebs::EBS_BLOCK_SIZE));
    m.insert("Description".into(), json!(s.description));
    m.insert("Tags".into(), Value::Array(s.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect()));
    if let Some(p) = &s.parent {
        m.insert("ParentSnapshotId".into(), json!(p));
    }
    if let Some(k) = &s.kms_key_id {
        m.insert("KmsKeyArn".into(), json!(k));
    }
    m.insert("SseType".into(), json!(if s.encrypted { "sse-kms" } else { "none" }));
    Value::Object(m)
}

/// The listings are written straight into their JSON text: a page holds up to 10,000 entries and
/// block tokens are base64 (nothing to escape), so no intermediate tree is built.
fn page_tail(out: &mut String, expiry: i64, volume_size_gib: u64, next_token: &Option<String>) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "],\"ExpiryTime\":{},\"VolumeSize\":{volume_size_gib},\"BlockSize\":{}",
        epoch_secs(expiry),
        ebs::EBS_BLOCK_SIZE
    );
    if let Some(t) = next_token {
        let _ = write!(out, ",\"NextToken\":{}", json!(t));
    }
    out.push('}');
}

fn blocks_json(p: &BlockPage) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + p.blocks.len() * 112);
    out.push_str("{\"Blocks\":[");
    for (n, (i, t)) in p.blocks.iter().enumerate() {
        let sep = if n == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{{\"BlockIndex\":{i},\"BlockToken\":\"{t}\"}}");
    }
    page_tail(&mut out, p.expiry, p.volume_size_gib, &p.next_token);
    out
}

fn changed_json(p: &ChangedPage) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + p.blocks.len() * 200);
    out.push_str("{\"ChangedBlocks\":[");
    for (n, b) in p.blocks.iter().enumerate() {
        let sep = if n == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{{\"BlockIndex\":{}", b.index);
        if let Some(t) = &b.first_token {
            let _ = write!(out, ",\"FirstBlockToken\":\"{t}\"");
        }
        if let Some(t) = &b.second_token {
            let _ = write!(out, ",\"SecondBlockToken\":\"{t}\"");
        }
        out.push('}');
    }
    page_tail(&mut out, p.expiry, p.volume_size_gib, &p.next_token);
    out
}

fn with_request_id(mut r: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

fn json_response(status: StatusCode, v: Value, request_id: &str) -> Response {
    text_response(status, v.to_string(), request_id)
}

fn text_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_request_id(r, request_id)
}

/// The HTTP status of each error the EBS direct APIs define (and of the authentication errors).
fn status_of(e: &EngineError) -> StatusCode {
    match e.code() {
        "AccessDeniedException" | "InvalidSignatureException" => StatusCode::FORBIDDEN,
        "ResourceNotFoundException" => StatusCode::NOT_FOUND,
        "ConflictException" => StatusCode::CONFLICT,
        "RequestThrottledException" | "ConcurrentLimitExceededException" => StatusCode::BAD_REQUEST,
        "ServiceQuotaExceededException" => StatusCode::PAYMENT_REQUIRED,
        "InternalServerException" | "InternalError" => StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "UnknownOperationException" => StatusCode::NOT_FOUND,
        _ => match e.http_status() {
            401 => StatusCode::FORBIDDEN,
            s => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
        },
    }
}

/// `x-amzn-ErrorType: <code>` and `{"message", "Reason"}` (the REST-JSON error shape) with the
/// EBS direct APIs' statuses.
pub fn error(e: &EngineError, request_id: &str) -> Response {
    crate::rest_json::error(e, status_of(e), request_id)
}

/// Runs an engine future to its end on its own task (a dropped client never leaves a block
/// half recorded) and answers within `timeout`.
async fn bounded<T: Send + 'static>(
    timeout: std::time::Duration,
    f: impl std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::time::timeout(timeout, tokio::spawn(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(EngineError::Internal(format!("request task failed: {e}"))),
        Err(_) => Err(EngineError::client(
            "ServiceUnavailable",
            "The request did not finish in time and may still take effect; retry it.",
        )),
    }
}

/// Serve one authenticated EBS direct API request.
pub async fn handle(
    engine: Arc<Engine>,
    ctx: Ctx,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    request_id: &str,
) -> Response {
    match run(engine, ctx, ep, uri, headers, body, request_id).await {
        Ok(r) => r,
        Err(e) => error(&e, request_id),
    }
}

async fn run(
    engine: Arc<Engine>,
    ctx: Ctx,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    request_id: &str,
) -> Result<Response, EngineError> {
    let limit = super::CALL_TIMEOUT;
    match ep {
        Endpoint::StartSnapshot => {
            let req = start_request(&body)?;
            let snap = super::run_blocking(move || {
                let r = engine.ebs_start_snapshot(&ctx, req);
                engine.sync_pending().and(r)
            })
            .await?;
            Ok(json_response(StatusCode::CREATED, snapshot_json(&snap), request_id))
        }
        Endpoint::PutSnapshotBlock { snapshot_id, block_index } => {
            let req = put_request(&snapshot_id, &block_index, headers, body)?;
            let sum = bounded(limit, async move { engine.ebs_put_block(&ctx, req).await }).await?;
            let mut r = with_request_id(StatusCode::CREATED.into_response(), request_id);
            if let Ok(v) = HeaderValue::from_str(&STANDARD.encode(sum)) {
                r.headers_mut().insert("x-amz-Checksum", v);
            }
            r.headers_mut().insert("x-amz-Checksum-Algorithm", HeaderValue::from_static("SHA256"));
            Ok(r)
        }
        Endpoint::CompleteSnapshot { snapshot_id } => {
            let req = complete_request(&snapshot_id, headers)?;
            let state = bounded(limit, async move { engine.ebs_complete_snapshot(&ctx, req).await }).await?;
            let status = match state {
                SnapshotState::Pending => "pending",
                SnapshotState::Completed => "completed",
                SnapshotState::Error => "error",
            };
            Ok(json_response(StatusCode::ACCEPTED, json!({ "Status": status }), request_id))
        }
        Endpoint::ListSnapshotBlocks { snapshot_id } => {
            let q = query(uri)?;
            let req = ebs::ListBlocks {
                snapshot_id,
                starting_block_index: opt_int(&q, "startingBlockIndex")?,
                next_token: q.get("pageToken").cloned(),
                max_results: opt_int(&q, "maxResults")?,
            };
            let page = bounded(limit, async move { engine.ebs_list_blocks(&ctx, req).await }).await?;
            Ok(text_response(StatusCode::OK, blocks_json(&page), request_id))
        }
        Endpoint::ListChangedBlocks { second_snapshot_id } => {
            let q = query(uri)?;
            let req = ebs::ListChangedBlocks {
                first_snapshot_id: q.get("firstSnapshotId").cloned(),
                second_snapshot_id,
                starting_block_index: opt_int(&q, "startingBlockIndex")?,
                next_token: q.get("pageToken").cloned(),
                max_results: opt_int(&q, "maxResults")?,
            };
            let page = bounded(limit, async move { engine.ebs_list_changed_blocks(&ctx, req).await }).await?;
            Ok(text_response(StatusCode::OK, changed_json(&page), request_id))
        }
        Endpoint::GetSnapshotBlock { snapshot_id, block_index: index } => {
            let q = query(uri)?;
            let req = ebs::GetBlock {
                snapshot_id,
                block_index: block_index(&index)?,
                block_token: q
                    .get("blockToken")
                    .cloned()
                    .ok_or_else(|| validation("INVALID_BLOCK_TOKEN", "The blockToken query parameter is required."))?,
            };
            let block = bounded(limit, async move { engine.ebs_get_block(&ctx, req).await }).await?;
            let len = block.data.len();
            let mut r = with_request_id(Response::new(Body::from(block.data)), request_id);
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert("x-amz-Data-Length", HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&STANDARD.encode(block.checksum)) {
                h.insert("x-amz-Checksum", v);
            }
            h.insert("x-amz-Checksum-Algorithm", HeaderValue::from_static("SHA256"));
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(m: Method, p: &str) -> Result<Endpoint, EngineError> {
        Endpoint::parse(&m, &p.parse::<Uri>().map_err(|e| EngineError::Internal(e.to_string()))?)
    }

    #[test]
    fn routes() -> Result<(), EngineError> {
        assert_eq!(ep(Method::POST, "/snapshots")?, Endpoint::StartSnapshot);
        assert_eq!(
            ep(Method::PUT, "/snapshots/snap-1/blocks/7")?,
            Endpoint::PutSnapshotBlock { snapshot_id: "snap-1".into(), block_index: "7".into() }
        );
        assert_eq!(
            ep(Method::GET, "/snapshots/snap-1/blocks/7?blockToken=x")?,
            Endpoint::GetSnapshotBlock { snapshot_id: "snap-1".into(), block_index: "7".into() }
        );
        assert_eq!(
            ep(Method::GET, "/snapshots/snap-1/blocks")?,
            Endpoint::ListSnapshotBlocks { snapshot_id: "snap-1".into() }
        );
        assert_eq!(
            ep(Method::GET, "/snapshots/snap-2/changedblocks?firstSnapshotId=snap-1")?,
            Endpoint::ListChangedBlocks { second_snapshot_id: "snap-2".into() }
        );
        assert_eq!(
            ep(Method::POST, "/snapshots/completion/snap-1")?,
            Endpoint::CompleteSnapshot { snapshot_id: "snap-1".into() }
        );
        assert!(ep(Method::DELETE, "/snapshots/snap-1").is_err());
        assert!(ep(Method::GET, "/snapshots/snap-1/blocks/1/2").is_err());
        Ok(())
    }

    #[test]
    fn listings_are_valid_json() -> Result<(), serde_json::Error> {
        let page = BlockPage {
            blocks: vec![(0, "AA+/=".into()), (7, "BB==".into())],
            expiry: 1_700_000_000_500,
            volume_size_gib: 8,
            next_token: Some("bsnt1abc".into()),
        };
        let v: Value = serde_json::from_str(&blocks_json(&page))?;
        assert_eq!(v["Blocks"][1]["BlockIndex"], 7);
        assert_eq!(v["Blocks"][0]["BlockToken"], "AA+/=");
        assert_eq!(v["NextToken"], "bsnt1abc");
        assert_eq!(v["ExpiryTime"], 1_700_000_000.5);
        let changed = ChangedPage {
            blocks: vec![
                ebs::ChangedBlock { index: 1, first_token: Some("F".into()), second_token: None },
                ebs::ChangedBlock { index: 2, first_token: None, second_token: Some("S".into()) },
            ],
            expiry: 0,
            volume_size_gib: 1,
            next_token: None,
        };
        let v: Value = serde_json::from_str(&changed_json(&changed))?;
        assert_eq!(v["ChangedBlocks"][0]["FirstBlockToken"], "F");
        assert!(v["ChangedBlocks"][0].get("SecondBlockToken").is_none());
        assert_eq!(v["ChangedBlocks"][1]["SecondBlockToken"], "S");
        assert!(v.get("NextToken").is_none());
        Ok(())
    }

    #[test]
    fn errors_carry_code_reason_and_status() {
        let r = error(&validation("INVALID_BLOCK_TOKEN", "expired"), "rid");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers().get("x-amzn-ErrorType").and_then(|v| v.to_str().ok()), Some("ValidationException"));
        let r = error(&EngineError::reasoned("AccessDeniedException", "UNAUTHORIZED_ACCOUNT", "no"), "rid");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
