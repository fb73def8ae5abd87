//! A small client of the EBS direct APIs (REST-JSON, SigV4 service `ebs`): StartSnapshot,
//! PutSnapshotBlock (body unsigned, authenticated by the signed `x-amz-Checksum` SHA-256, as the AWS
//! SDKs send it), CompleteSnapshot, ListSnapshotBlocks, ListChangedBlocks, GetSnapshotBlock (its
//! checksum checked against the bytes).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::api_client::{Answer, ClientError, Conn, is_credentials_code};

/// The EBS direct APIs' block size.
pub const BLOCK: u64 = 512 * 1024;
/// The largest page the listings give.
const PAGE: u32 = 10_000;

const SERVICE: &str = "ebs";

/// RFC 3986's unreserved characters stay as they are (as SigV4 canonicalises them).
const ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ENCODE).to_string()
}

pub fn sha256_b64(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

fn check(op: &str, a: Answer) -> Result<Answer, ClientError> {
    if a.status.is_success() {
        return Ok(a);
    }
    let code = a
        .headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_string())
        .unwrap_or_else(|| format!("HTTP {}", a.status));
    let doc: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    let message = doc["message"].as_str().or(doc["Message"].as_str()).unwrap_or("");
    let reason = doc["Reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
    let text = format!("{op} refused: {code}{reason}: {message}");
    Err(if is_credentials_code(&code) { ClientError::Credentials(text) } else { ClientError::Refused(text) })
}

fn json_of(op: &str, a: &Answer) -> Result<Value, ClientError> {
    serde_json::from_slice(&a.body).map_err(|e| ClientError::Refused(format!("the {op} answer is not JSON: {e}")))
}

/// `StartSnapshot`: a new snapshot of `size_gib` to write block by block; its id.
pub async fn start_snapshot(conn: &Conn, size_gib: u64, description: &str) -> Result<String, ClientError> {
    let body = json!({ "VolumeSize": size_gib, "Description": description, "Timeout": 60 });
    let headers = [("content-type", "application/json".to_string())];
    let a =
        conn.send(SERVICE, http::Method::POST, "/snapshots", &headers, body.to_string().into_bytes(), false).await?;
    let v = json_of("StartSnapshot", &check("StartSnapshot", a)?)?;
    v["SnapshotId"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Refused("the StartSnapshot answer has no SnapshotId".into()))
}

/// `PutSnapshotBlock` of one full block.
pub async fn put_block(conn: &Conn, snapshot_id: &str, index: u64, data: Vec<u8>) -> Result<(), ClientError> {
    let headers = [
        ("content-type", "application/octet-stream".to_string()),
        ("x-amz-data-length", data.len().to_string()),
        ("x-amz-checksum", sha256_b64(&data)),
        ("x-amz-checksum-algorithm", "SHA256".to_string()),
    ];
    let path = format!("/snapshots/{}/blocks/{index}", enc(snapshot_id));
    let a = conn.send(SERVICE, http::Method::PUT, &path, &headers, data, true).await?;
    check("PutSnapshotBlock", a).map(|_| ())
}

/// `CompleteSnapshot`: its status (`pending` or `completed`).
pub async fn complete_snapshot(conn: &Conn, snapshot_id: &str, changed_blocks: u64) -> Result<String, ClientError> {
    let headers = [("x-amz-changedblockscount", changed_blocks.to_string())];
    let path = format!("/snapshots/completion/{}", enc(snapshot_id));
    let a = conn.send(SERVICE, http::Method::POST, &path, &headers, Vec::new(), false).await?;
    let v = json_of("CompleteSnapshot", &check("CompleteSnapshot", a)?)?;
    Ok(v["Status"].as_str().unwrap_or("pending").to_string())
}

/// A listed block: its index and the token(s) to read it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub index: u64,
    pub token: Option<String>,
    /// ListChangedBlocks only: the block's token in the first snapshot.
    pub first_token: Option<String>,
}

/// Every page of ListSnapshotBlocks (`first == None`) or ListChangedBlocks; and the volume size
/// (GiB) the answer states.
pub async fn list_all(conn: &Conn, second: &str, first: Option<&str>) -> Result<(Vec<Listed>, u64), ClientError> {
    let (op, key) =
        if first.is_some() { ("ListChangedBlocks", "ChangedBlocks") } else { ("ListSnapshotBlocks", "Blocks") };
    let mut out = Vec::new();
    let mut size = 0;
    let mut token: Option<String> = None;
    loop {
        let mut q = format!("maxResults={PAGE}");
        if let Some(f) = first {
            q.push_str(&format!("&firstSnapshotId={}", enc(f)));
        }
        if let Some(t) = &token {
            q.push_str(&format!("&pageToken={}", enc(t)));
        }
        let what = if first.is_some() { "changedblocks" } else { "blocks" };
        let path = format!("/snapshots/{}/{what}?{q}", enc(second));
        let a = conn.send(SERVICE, http::Method::GET, &path, &[], Vec::new(), false).await?;
        let v = json_of(op, &check(op, a)?)?;
        size = v["VolumeSize"].as_u64().unwrap_or(size);
        for b in v[key].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(index) = b["BlockIndex"].as_u64() else { continue };
            let s = |k: &str| b[k].as_str().map(str::to_string);
            out.push(Listed {
                index,
                token: s("BlockToken").or_else(|| s("SecondBlockToken")),
                first_token: s("FirstBlockToken"),
            });
        }
        match v["NextToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok((out, size))
}

/// `GetSnapshotBlock`: the block's bytes, checked against the checksum the answer carries.
pub async fn get_block(conn: &Conn, snapshot_id: &str, index: u64, token: &str) -> Result<bytes::Bytes, ClientError> {
    let path = format!("/snapshots/{}/blocks/{index}?blockToken={}", enc(snapshot_id), enc(token));
    let a = check("GetSnapshotBlock", conn.send(SERVICE, http::Method::GET, &path, &[], Vec::new(), false).await?)?;
    if let Some(sum) = a.headers.get("x-amz-checksum").and_then(|v| v.to_str().ok())
        && sum != sha256_b64(&a.body)
    {
        return Err(ClientError::Refused(format!(
            "block {index} of {snapshot_id} arrived damaged (its SHA-256 does not match x-amz-Checksum); run the \
             export again"
        )));
    }
    Ok(a.body)
}
