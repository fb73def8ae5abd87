//! Load generator for the EBS direct APIs (used by `bench/ebs/run.py`): many concurrent clients
//! over HTTP/1.1 keep-alive, requests signed with SigV4 as the AWS SDKs sign them (block bodies
//! `UNSIGNED-PAYLOAD` with a signed `x-amz-checksum`). Prints one JSON line of results.
//!
//! ```text
//! ebs_load put  --endpoint URL --blocks N --clients C          (StartSnapshot, N puts, Complete)
//!               [--volume-gib G --stride K --offset O --parent ID --compressible]
//!               (blocks O, O+K, O+2K, … of a G GiB volume, incremental on a parent; compressible
//!               blocks cost the store almost nothing, for diff benchmarks on large volumes)
//! ebs_load get  --endpoint URL --snapshot ID --clients C       (list all blocks, get each once)
//! ebs_load diff --endpoint URL --snapshot ID --first ID --reps R (first page of ListChangedBlocks)
//! ```
//! Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; region AWS_DEFAULT_REGION (us-east-1).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const BLOCK: usize = 524_288;

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    creds: aws_credential_types::Credentials,
    region: String,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        unsigned: bool,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, bytes::Bytes)> {
        let url = format!("{}{}", self.endpoint, path_and_query);
        let mut hs: Vec<(String, String)> = vec![("host".into(), self.host.clone())];
        hs.extend(headers.iter().map(|(k, v)| (k.to_string(), v.clone())));
        if unsigned {
            hs.push(("x-amz-content-sha256".into(), "UNSIGNED-PAYLOAD".into()));
        }
        let identity = self.creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ebs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let signable_body = if unsigned { SignableBody::UnsignedPayload } else { SignableBody::Bytes(&body) };
        let signable =
            SignableRequest::new(method, url.clone(), hs.iter().map(|(k, v)| (k.as_str(), v.as_str())), signable_body)?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut rb = self.http.request(method.parse()?, &url).body(body);
        for (k, v) in &hs {
            if k != "host" {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        for (k, v) in instructions.headers() {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        Ok((status, headers, bytes))
    }

    async fn json(
        &self,
        method: &str,
        pq: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, _, bytes) = self.call(method, pq, headers, body, false).await?;
        if status >= 300 {
            bail!("{method} {pq}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref());
    out
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(op: &str, clients: usize, bytes: u64, elapsed: Duration, mut lat: Vec<f64>, extra: serde_json::Value) {
    lat.sort_by(|a, b| a.total_cmp(b));
    let mut v = serde_json::json!({
        "op": op,
        "clients": clients,
        "requests": lat.len(),
        "seconds": elapsed.as_secs_f64(),
        "mib_per_s": bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile(&lat, 0.5) * 1e3,
        "p99_ms": percentile(&lat, 0.99) * 1e3,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    println!("{v}");
}

async fn list_all(c: &Client, snapshot: &str) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut pq = format!("/snapshots/{snapshot}/blocks?maxResults=10000");
        if let Some(t) = &token {
            pq.push_str(&format!("&pageToken={}", urlencode(t)));
        }
        let v = c.json("GET", &pq, &[], vec![]).await?;
        for b in v["Blocks"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push((b["BlockIndex"].as_u64().unwrap_or(0), b["BlockToken"].as_str().unwrap_or("").to_string()));
        }
        token = v["NextToken"].as_str().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().context("mode: put | get | diff")?;
    let endpoint =
        arg(&args, "--endpoint").unwrap_or_else(|| "http://127.0.0.1:4566".into()).trim_end_matches('/').to_string();
    let clients: usize = arg(&args, "--clients").map(|v| v.parse()).transpose()?.unwrap_or(8);
    let host = endpoint.split("://").nth(1).unwrap_or(&endpoint).to_string();
    let creds = aws_credential_types::Credentials::new(
        std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?,
        std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?,
        None,
        None,
        "env",
    );
    let region = std::env::var("AWS_DEFAULT_REGION").unwrap_or_else(|_| "us-east-1".into());
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients * 2).build()?;
    let c = Client { http, endpoint, host, creds, region };
    match mode.as_str() {
        "put" => {
            let stride: u64 = arg(&args, "--stride").map(|v| v.parse()).transpose()?.unwrap_or(1).max(1);
            let offset: u64 = arg(&args, "--offset").map(|v| v.parse()).transpose()?.unwrap_or(0);
            let compressible = args.iter().any(|a| a == "--compressible");
            let gib: u64 = match arg(&args, "--volume-gib") {
                Some(g) => g.parse()?,
                None => {
                    let blocks: u64 = arg(&args, "--blocks").map(|v| v.parse()).transpose()?.unwrap_or(2048);
                    (blocks * BLOCK as u64).div_ceil(1 << 30).max(1)
                }
            };
            let nblocks = gib * (1 << 30) / BLOCK as u64;
            let blocks: u64 = match arg(&args, "--blocks") {
                Some(b) => b.parse::<u64>()?.min(nblocks.saturating_sub(offset).div_ceil(stride)),
                None => nblocks.saturating_sub(offset).div_ceil(stride),
            };
            let mut start = serde_json::json!({"VolumeSize": gib, "Timeout": 60});
            if let Some(p) = arg(&args, "--parent") {
                start["ParentSnapshotId"] = serde_json::json!(p);
            }
            let v = c
                .json(
                    "POST",
                    "/snapshots",
                    &[("content-type", "application/json".into())],
                    start.to_string().into_bytes(),
                )
                .await?;
            let sid = v["SnapshotId"].as_str().context("no SnapshotId")?.to_string();
            // Distinct blocks (no dedup): a base pattern with the index written over its start.
            let base: Arc<Vec<u8>> = Arc::new(if compressible {
                vec![0x5a; BLOCK]
            } else {
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                (0..BLOCK)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            });
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..clients {
                let (c, sid, base) = (c.clone(), sid.clone(), base.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut k = t as u64;
                    while k < blocks {
                        let i = offset + k * stride;
                        let mut data = base.to_vec();
                        data[..8].copy_from_slice(&i.to_le_bytes());
                        data[8..16]
                            .copy_from_slice(&(sid.len() as u64 ^ started.elapsed().as_nanos() as u64).to_le_bytes());
                        let sum = STANDARD.encode(sha256(&data));
                        let t0 = Instant::now();
                        let (status, _, body) = c
                            .call(
                                "PUT",
                                &format!("/snapshots/{sid}/blocks/{i}"),
                                &[
                                    ("x-amz-data-length", BLOCK.to_string()),
                                    ("x-amz-checksum", sum),
                                    ("x-amz-checksum-algorithm", "SHA256".into()),
                                    ("content-type", "application/octet-stream".into()),
                                ],
                                data,
                                true,
                            )
                            .await?;
                        if status != 201 {
                            bail!("put {i}: {status} {}", String::from_utf8_lossy(&body));
                        }
                        lat.push(t0.elapsed().as_secs_f64());
                        k += clients as u64;
                    }
                    Ok::<_, anyhow::Error>(lat)
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await??);
            }
            let elapsed = started.elapsed();
            let t0 = Instant::now();
            let done = c
                .json(
                    "POST",
                    &format!("/snapshots/completion/{sid}"),
                    &[("x-amz-changedblockscount", blocks.to_string())],
                    vec![],
                )
                .await?;
            report(
                "PutSnapshotBlock",
                clients,
                blocks * BLOCK as u64,
                elapsed,
                lat,
                serde_json::json!({
                    "snapshot": sid, "complete_ms": t0.elapsed().as_secs_f64() * 1e3, "status": done["Status"],
                }),
            );
        }
        "get" => {
            let sid = arg(&args, "--snapshot").context("--snapshot")?;
            let t0 = Instant::now();
            let all = Arc::new(list_all(&c, &sid).await?);
            let list_ms = t0.elapsed().as_secs_f64() * 1e3;
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (c, sid, all, next) = (c.clone(), sid.clone(), all.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut lat, mut bytes) = (Vec::new(), 0u64);
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((i, tok)) = all.get(k) else { break };
                        let t0 = Instant::now();
                        let (status, _, body) = c
                            .call(
                                "GET",
                                &format!("/snapshots/{sid}/blocks/{i}?blockToken={}", urlencode(tok)),
                                &[],
                                vec![],
                                false,
                            )
                            .await?;
                        if status != 200 || body.len() != BLOCK {
                            bail!("get {i}: {status}");
                        }
                        bytes += body.len() as u64;
                        lat.push(t0.elapsed().as_secs_f64());
                    }
                    Ok::<_, anyhow::Error>((lat, bytes))
                }));
            }
            let (mut lat, mut bytes) = (Vec::new(), 0);
            for t in tasks {
                let (l, b) = t.await??;
                lat.extend(l);
                bytes += b;
            }
            report(
                "GetSnapshotBlock",
                clients,
                bytes,
                started.elapsed(),
                lat,
                serde_json::json!({"list_all_ms": list_ms, "blocks": all.len()}),
            );
        }
        "diff" => {
            let second = arg(&args, "--snapshot").context("--snapshot")?;
            let first = arg(&args, "--first").context("--first")?;
            let reps: usize = arg(&args, "--reps").map(|v| v.parse()).transpose()?.unwrap_or(20);
            let max = arg(&args, "--max-results").unwrap_or_else(|| "10000".into());
            let mut lat = Vec::new();
            let mut first_page = 0usize;
            let started = Instant::now();
            for _ in 0..reps {
                let t0 = Instant::now();
                let v = c
                    .json(
                        "GET",
                        &format!("/snapshots/{second}/changedblocks?firstSnapshotId={first}&maxResults={max}"),
                        &[],
                        vec![],
                    )
                    .await?;
                lat.push(t0.elapsed().as_secs_f64());
                first_page = v["ChangedBlocks"].as_array().map_or(0, Vec::len);
            }
            let cold_ms = lat.first().copied().unwrap_or(0.0) * 1e3;
            report(
                "ListChangedBlocks(first page)",
                1,
                0,
                started.elapsed(),
                lat,
                serde_json::json!({"first_call_ms": cold_ms, "blocks_in_page": first_page}),
            );
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}
