//! A node's HTTP listener: the web console's static files locally, every AWS API call to the
//! leader. The leader's own router takes over on this node once it leads.
//!
//! A forwarded call is the client's request unchanged (method, path and query, every header but
//! the hop-by-hop ones, including `Host` and `Authorization`, and the body), so its SigV4 signature
//! is verified by the leader exactly as if the client had called it: a follower authenticates
//! nothing itself and opens no node-only door. The answer streams back as the leader sends it.
//! With no leader, or the leader unreachable, a call waits (bounded) for the next leader, then is
//! answered `ServiceUnavailable` in its protocol's shape. A call already sent to a leader that dies
//! before answering is not sent again (it may have been done): 503 too, and the client retries
//! (with its ClientToken where the API has one).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use blocksnap_catalog::Leader;
use http::{HeaderMap, HeaderName, header};
use tokio::sync::watch;
use tower::ServiceExt;

/// Marks a call a follower forwarded: a follower never forwards such a call again (no loop).
const FORWARDED_BY: HeaderName = HeaderName::from_static("x-blocksnap-forwarded");
/// The largest request body forwarded (the leader has its own, smaller limits).
const MAX_BODY: usize = 16 << 20;
/// How long a call waits for a leader (election, takeover) before answering 503.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// How long a follower waits for a call's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A leader that takes longer than this to connect is treated as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on a forwarded call (the leader bounds its own calls at 60 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Dispatch {
    node_id: String,
    leader: watch::Receiver<Option<Leader>>,
    /// The engine's router, once this node leads.
    local: OnceLock<Router>,
    client: reqwest::Client,
    wait: Duration,
    /// Bound on reading a call's body from its client (a client that stalls holds no task longer).
    body_timeout: Duration,
}

impl Dispatch {
    pub fn new(node_id: &str, leader: watch::Receiver<Option<Leader>>, wait: Duration) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()?;
        Ok(Arc::new(Dispatch {
            node_id: node_id.to_string(),
            leader,
            local: OnceLock::new(),
            client,
            wait,
            body_timeout: BODY_TIMEOUT,
        }))
    }

    /// This node leads now: serve every call with its engine.
    pub fn lead(&self, app: Router) {
        let _ = self.local.set(app);
    }

    /// The listener's router: console files here, the rest forwarded (or served, once leading).
    pub fn router(self: &Arc<Self>) -> Router {
        blocksnap_api::console_routes().fallback(dispatch).with_state(self.clone())
    }
}

async fn dispatch(State(d): State<Arc<Dispatch>>, req: Request) -> Response {
    if let Some(app) = d.local.get() {
        return app.clone().oneshot(req).await.into_response();
    }
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(d.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return blocksnap_api::unavailable(
                &parts.method,
                &parts.uri,
                &parts.headers,
                &format!("the request body did not arrive within {} s", d.body_timeout.as_secs()),
            );
        }
        Ok(Err(_)) => {
            return blocksnap_api::unavailable(
                &parts.method,
                &parts.uri,
                &parts.headers,
                "the request body could not be read (or exceeds 16 MiB)",
            );
        }
    };
    let deadline = tokio::time::Instant::now() + d.wait;
    let mut leader = d.leader.clone();
    let mut last_error = String::from("no node leads the cluster now");
    // Another follower sent it here as to the leader: never forward it again (two nodes given the
    // same advertise_api would pass it round until every connection is taken). It is served if
    // this node leads within the wait (a takeover), else 503.
    let forwarded = parts.headers.contains_key(FORWARDED_BY);
    if forwarded {
        last_error = String::from("the call was forwarded to a node that does not lead the cluster");
        tracing::warn!(
            "a forwarded call reached a follower: if this persists, the leader's advertise_api leads to another node; give every node its own advertise_api"
        );
    }
    loop {
        if let Some(app) = d.local.get() {
            // Became the leader while waiting.
            let req = Request::from_parts(parts, Body::from(body));
            return app.clone().oneshot(req).await.into_response();
        }
        let target = leader.borrow_and_update().clone().filter(|l| l.node_id != d.node_id && !forwarded);
        if let Some(l) = target {
            match send(&d.client, &l, &parts, body.clone()).await {
                Ok(resp) => return relay(resp),
                // Nothing reached the leader: safe to send again to the next one.
                Err(e) if e.is_connect() => {
                    // No node id or address: this answer goes to a caller nobody authenticated.
                    last_error = String::from("the cluster's leader is unreachable");
                    tracing::debug!(leader = %l.node_id, error = %e, "forwarding: leader unreachable");
                }
                Err(e) => {
                    tracing::warn!(leader = %l.node_id, error = ?e, "forwarding: the leader did not answer");
                    return blocksnap_api::unavailable(
                        &parts.method,
                        &parts.uri,
                        &parts.headers,
                        "the cluster's leader did not answer; the call may or may not have been done",
                    );
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return blocksnap_api::unavailable(
                &parts.method,
                &parts.uri,
                &parts.headers,
                &format!("{last_error}; retry shortly"),
            );
        }
        let nap = (deadline - now).min(Duration::from_millis(100));
        tokio::select! {
            r = leader.changed() => if r.is_err() { tokio::time::sleep(nap).await },
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the call's. `Expect:
/// 100-continue` was answered here (the body is already read); SigV4 clients never sign it.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "expect"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    // Headers the Connection header names are this hop's too (RFC 9110 7.6.1).
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if !hop_by_hop(k) && k != header::CONTENT_LENGTH && !named.iter().any(|n| n == k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

async fn send(
    client: &reqwest::Client,
    leader: &Leader,
    parts: &http::request::Parts,
    body: axum::body::Bytes,
) -> reqwest::Result<reqwest::Response> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.advertise_api.trim_end_matches('/'));
    // `Host` stays the client's (it is signed); the HTTP client keeps a Host header it is given.
    let mut headers = end_to_end(&parts.headers);
    // Not signed by the client (SigV4 signs only the headers it lists): the leader ignores it.
    headers.insert(FORWARDED_BY, http::HeaderValue::from_static("1"));
    client.request(parts.method.clone(), url).headers(headers).body(body).send().await
}

fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = end_to_end(resp.headers());
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 503 answers go to callers nobody authenticated: they name no node and no address
    /// (the log does).
    #[test]
    fn unavailable_answers_name_no_node() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            // A leader that refuses connections, then one that accepts and hangs up without answering.
            let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let refused_addr = refused.local_addr().unwrap();
            drop(refused);
            let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let rude_addr = rude.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((s, _)) = rude.accept().await {
                    drop(s);
                }
            });
            for (addr, said) in [(refused_addr, "unreachable"), (rude_addr, "did not answer")] {
                let leader = Leader { node_id: "rack7-secret-node".into(), advertise_api: format!("http://{addr}") };
                let (_tx, rx) = watch::channel(Some(leader));
                let d = Dispatch::new("me", rx, Duration::from_millis(300)).unwrap();
                let req = Request::post("/").body(Body::from("Action=DescribeVolumes")).unwrap();
                let resp = d.router().oneshot(req).await.unwrap();
                assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                let body = String::from_utf8_lossy(&body);
                assert!(body.contains(said), "{body}");
                assert!(!body.contains("rack7") && !body.contains(&addr.to_string()), "{body}");
            }
        });
    }

    /// A leader's advertised address that leads back to a follower: the call is not forwarded
    /// again, 503 after the wait (it would otherwise go round until every connection is taken).
    #[test]
    fn a_forwarding_loop_is_cut() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // This node (2) believes node 1 leads at an address that is really its own.
            let leader = Leader { node_id: "1".into(), advertise_api: format!("http://{addr}") };
            let (_tx, rx) = watch::channel(Some(leader));
            let d = Dispatch::new("2", rx, Duration::from_millis(300)).unwrap();
            tokio::spawn(async move { axum::serve(listener, d.router()).await });
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/"))
                .body("Action=DescribeVolumes")
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            let body = resp.text().await.unwrap();
            assert!(body.contains("does not lead"), "{body}");
        });
    }

    /// A client that stops sending its body mid-way is answered (503), not waited for forever.
    #[test]
    fn a_stalled_body_is_bounded() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let (_tx, rx) = watch::channel(None);
            let mut d = Dispatch::new("2", rx, Duration::from_millis(100)).unwrap();
            Arc::get_mut(&mut d).unwrap().body_timeout = Duration::from_millis(200);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, d.router()).await });
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // 100 bytes announced, 7 sent, then nothing (the connection stays open).
            let head = "POST / HTTP/1.1\r\nHost: node\r\nContent-Length: 100\r\n\r\nAction=";
            tokio::io::AsyncWriteExt::write_all(&mut c, head.as_bytes()).await.unwrap();
            let mut answer = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(60), tokio::io::AsyncReadExt::read(&mut c, &mut answer))
                .await
                .expect("a stalled body was waited for without bound")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        });
    }

    #[test]
    fn only_end_to_end_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "node1:4566"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIA/20261130/us-east-1/ec2/aws4_request"),
            ("x-amz-date", "20261130T000000Z"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("connection", "keep-alive, X-Hop-Only"),
            ("x-hop-only", "this connection's"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
        ] {
            h.insert(HeaderName::from_static(k), http::HeaderValue::from_static(v));
        }
        let out = end_to_end(&h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort();
        // Host and the signature stay exactly as the client sent them; the body's length is the
        // HTTP client's to set.
        assert_eq!(names, ["authorization", "content-type", "host", "x-amz-date"]);
        assert_eq!(out["host"], "node1:4566");
    }
}
