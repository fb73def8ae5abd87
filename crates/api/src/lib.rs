//! The HTTP front end: one port for every AWS protocol blocksnap speaks. Requests are authenticated
//! (SigV4), routed by protocol (EC2 Query today), parsed into typed engine requests, and the typed
//! results rendered back in the protocol's own format.

#![forbid(unsafe_code)]

mod admin;
mod auth;
mod console;
mod console_api;
pub mod dlm;
pub mod ebs;
pub mod ec2;
#[doc(hidden)]
pub mod fuzz;
mod json;
mod kms;
mod lightsail;
mod nbd;
pub mod rbin;
mod rest_json;
mod test_clock;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};

pub struct AppState {
    pub engine: Arc<Engine>,
}

/// Every path but the web console's static files (`/console…`, no data: `console/`) is an AWS API
/// call and needs SigV4: metrics and health are served on their own listener by the binary, never here.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().merge(console::routes()).fallback(handle).with_state(state)
}

/// The web console's static files alone (no data, no state): a cluster's follower serves them
/// itself and forwards everything else to the leader.
pub fn console_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    console::routes()
}

/// The answer of a node that cannot reach its cluster's leader: 503 `ServiceUnavailable` in the
/// request's own protocol (EC2 Query XML, JSON 1.1, the REST-JSON services). Nothing is
/// authenticated here (the leader checks the signature of what is forwarded), so nothing about the
/// caller's resources is said.
pub fn unavailable(method: &Method, uri: &Uri, headers: &HeaderMap, message: &str) -> Response {
    let e = EngineError::classed(blocksnap_engine::ErrorClass::Busy, message);
    let request_id = new_request_id();
    if headers.contains_key("x-amz-target") {
        return json::error(&e, &request_id);
    }
    match RestService::of(method, uri, headers) {
        Some(RestService::Ebs) => ebs::error(&e, &request_id),
        Some(RestService::Rbin) => rbin::error(&e, &request_id),
        Some(RestService::Dlm) => dlm::error(&e, &request_id),
        None => ec2_error(&e, &request_id),
    }
}

fn new_request_id() -> String {
    blocksnap_engine::ids::new_uuid()
}

fn ec2_error(e: &EngineError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    if matches!(e, EngineError::Internal(_)) {
        tracing::error!(error = %e, request_id, "internal error");
    }
    xml_response(status, ec2::xml::error(e.code(), &e.message(), request_id), request_id)
}

fn xml_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml;charset=UTF-8"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

async fn handle(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = new_request_id();
    let started = std::time::Instant::now();
    // JSON 1.1 protocols name their operation in X-Amz-Target; EC2 Query has none.
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_string);
    let rest = if target.is_none() { RestService::of(&method, &uri, &headers) } else { None };
    let protocol = match (&target, rest) {
        (Some(_), _) => auth::Protocol::Json,
        (None, Some(RestService::Ebs)) => {
            auth::Protocol::Rest { unsigned_block_body: ebs::Endpoint::unsigned_block_body(&method, &uri) }
        }
        (None, Some(_)) => auth::Protocol::Rest { unsigned_block_body: false },
        (None, None) => auth::Protocol::Query,
    };
    // The key lookup reads the catalog, which can block as long as its disk does (a frozen data
    // dir): on a blocking thread, within the call bound, never on the async executor.
    let authenticated = {
        let (engine, method, uri, headers, body) =
            (st.engine.clone(), method.clone(), uri.clone(), headers.clone(), body.clone());
        match run_blocking(move || Ok(auth::authenticate(&engine, &method, &uri, &headers, &body, protocol))).await {
            Ok(r) => r,
            Err(e) => Err(auth::Rejected::from(e)),
        }
    };
    let caller = match authenticated {
        Ok(c) => c,
        // JSON 1.1 services answer in their own words (not EC2's AuthFailure).
        Err(r) if target.is_some() => return json::auth_error(&r, &request_id),
        Err(auth::Rejected { error: e, .. }) => match rest {
            Some(RestService::Ebs) => return ebs::error(&e, &request_id),
            Some(RestService::Rbin) => return rbin::error(&e, &request_id),
            Some(RestService::Dlm) => return dlm::error(&e, &request_id),
            None => return ec2_error(&e, &request_id),
        },
    };
    match rest {
        Some(RestService::Ebs) => {
            return handle_ebs(&st, caller, &method, &uri, &headers, body, &request_id, started).await;
        }
        Some(RestService::Rbin) => {
            return rbin::handle(st.engine.clone(), caller.ctx, &method, &uri, &headers, body, &request_id).await;
        }
        Some(RestService::Dlm) => {
            return dlm::handle(st.engine.clone(), caller.ctx, &method, &uri, &headers, body, &request_id).await;
        }
        None => {}
    }
    if let Some(target) = target {
        // The host the caller reached us at (signed with the request): where the NBD endpoint API
        // points when the NBD listener is on every address and nothing is advertised.
        let reached_at = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(uri.authority().map(|a| a.as_str()))
            .and_then(nbd::host_of);
        return handle_json(&st, caller, &target, body, request_id, reached_at).await;
    }
    if caller.service != "ec2" {
        let e = EngineError::client(
            "InvalidAction",
            format!("The service '{}' is not served by this endpoint yet.", caller.service),
        );
        return ec2_error(&e, &request_id);
    }
    let params = match query_params(&method, &uri, &body) {
        Ok(p) => p,
        Err(e) => return ec2_error(&e, &request_id),
    };
    let call = match ec2::route(&params) {
        Ok(c) => c,
        Err(e) => return ec2_error(&e, &request_id),
    };
    let action = call.action;
    let result = if call.mutating {
        let engine = st.engine.clone();
        let ctx = caller.ctx.clone();
        let rid = request_id.clone();
        run_blocking(move || {
            let r = ec2::run(&call, &engine, &ctx, &params, &rid);
            // Nothing is answered before its catalog commit is durable.
            engine.sync_pending().and(r)
        })
        .await
    } else {
        ec2::run(&call, &st.engine, &caller.ctx, &params, &request_id)
    };
    // Server-side time of an authenticated, routed EC2 call (what a client adds is its own).
    let elapsed = started.elapsed();
    // Bounded labels: a known action name and a served region (both checked above).
    ::metrics::histogram!("blocksnap_api_request_duration_seconds", "action" => action, "region" => caller.ctx.region.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(action, request_id, elapsed_us = elapsed.as_micros() as u64, ok = result.is_ok(), "ec2 call");
    match result {
        Ok(body) => xml_response(StatusCode::OK, body, &request_id),
        Err(e) => ec2_error(&e, &request_id),
    }
}

/// The REST-JSON services. Their operation is in the method and path; which service a path belongs
/// to is decided before the signature is checked (it decides what the signature must cover): the
/// EBS direct APIs by their `/snapshots…` paths, the others by the service their credential scope
/// names (verified afterwards: a request scoped to `rbin` is served by the Recycle Bin or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestService {
    Ebs,
    Rbin,
    Dlm,
}

impl RestService {
    fn of(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<RestService> {
        if ebs::is_ebs_path(uri) {
            return Some(RestService::Ebs);
        }
        // An unparsable signature routes nowhere special: authentication refuses it anyway.
        let scope = blocksnap_sigv4::parse(method, uri, headers).ok()?.service;
        match scope.as_str() {
            rbin::SERVICE => Some(RestService::Rbin),
            dlm::SERVICE => Some(RestService::Dlm),
            _ => None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle_ebs(
    st: &Arc<AppState>,
    caller: auth::Caller,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    request_id: &str,
    started: std::time::Instant,
) -> Response {
    if caller.service != ebs::SERVICE {
        let e = EngineError::client(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{}'.", ebs::SERVICE),
        );
        return ebs::error(&e, request_id);
    }
    let ep = match ebs::Endpoint::parse(method, uri) {
        Ok(ep) => ep,
        Err(e) => return ebs::error(&e, request_id),
    };
    let action = ep.name();
    let region = caller.ctx.region.clone();
    let r = ebs::handle(st.engine.clone(), caller.ctx, ep, uri, headers, body, request_id).await;
    ::metrics::histogram!("blocksnap_api_request_duration_seconds", "action" => action, "region" => region)
        .record(started.elapsed().as_secs_f64());
    r
}

/// The parameters of an EC2 Query request: from the query string or from a POST's form body, never
/// both (which one would win is exactly what a replayed request could exploit), each name once.
fn query_params(method: &Method, uri: &Uri, body: &[u8]) -> Result<ec2::params::Params, EngineError> {
    let in_query: Vec<_> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).collect();
    let in_body: Vec<_> = if *method == Method::POST { form_urlencoded::parse(body).collect() } else { Vec::new() };
    if !in_query.is_empty() && !in_body.is_empty() {
        return Err(EngineError::client(
            "InvalidQueryParameter",
            "The request has parameters both in the query string and in the body: send them in one place.",
        ));
    }
    let pairs = if in_body.is_empty() { in_query } else { in_body };
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    for (k, _) in &pairs {
        if !seen.insert(k.as_ref()) {
            return Err(EngineError::client(
                "InvalidQueryParameter",
                format!("The parameter {k} is given more than once."),
            ));
        }
    }
    Ok(ec2::params::Params::from_pairs(pairs.into_iter()))
}

/// The credential scope's service each JSON 1.1 target prefix must be signed for.
fn json_service(target_prefix: &str) -> Option<&'static str> {
    match target_prefix {
        "TrentService" => Some("kms"),
        "Lightsail_20161128" => Some("lightsail"),
        nbd::TARGET => Some(nbd::SERVICE),
        test_clock::TARGET => Some(test_clock::SERVICE),
        admin::TARGET => Some(admin::SERVICE),
        console_api::TARGET => Some(console_api::SERVICE),
        _ => None,
    }
}

async fn handle_json(
    st: &Arc<AppState>,
    caller: auth::Caller,
    target: &str,
    body: Bytes,
    request_id: String,
    reached_at: Option<String>,
) -> Response {
    let parsed = match json::Body::parse(&body) {
        Ok(b) => b,
        Err(e) => return json::error(&e, &request_id),
    };
    let (service, op) = target.split_once('.').unwrap_or((target, ""));
    if let Some(scope) = json_service(service)
        && caller.service != scope
    {
        let e = EngineError::client(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{scope}'."),
        );
        return json::error(&e, &request_id);
    }
    let engine = st.engine.clone();
    let op = op.to_string();
    let result = match service {
        "TrentService" => {
            run_blocking(move || {
                let r = kms::dispatch(&engine, &caller.ctx, &op, &parsed);
                engine.sync_pending().and(r)
            })
            .await
        }
        nbd::TARGET => {
            run_blocking(move || {
                let r = nbd::dispatch(&engine, &caller.ctx, &op, &parsed, reached_at.as_deref());
                engine.sync_pending().and(r)
            })
            .await
        }
        test_clock::TARGET => run_blocking(move || test_clock::dispatch(&engine, &caller.ctx, &op, &parsed)).await,
        admin::TARGET => {
            run_blocking(move || {
                let r = admin::dispatch(&engine, &caller.ctx, &op, &parsed);
                engine.sync_pending().and(r)
            })
            .await
        }
        // Reads only: nothing to sync.
        console_api::TARGET => run_blocking(move || console_api::dispatch(&engine, &caller.ctx, &op, &parsed)).await,
        "Lightsail_20161128" => {
            let r = run_blocking(move || {
                let r = lightsail::dispatch(&engine, &caller.ctx, &op, &parsed);
                engine.sync_pending().and(r)
            })
            .await;
            return lightsail::respond(r, &request_id);
        }
        other => {
            let e = EngineError::client(
                "UnknownOperationException",
                format!("The target service '{other}' is not served by this endpoint."),
            );
            return json::error(&e, &request_id);
        }
    };
    match result {
        Ok(v) => json::ok(v, &request_id),
        Err(e) => json::error(&e, &request_id),
    }
}

/// The longest an engine call may take before its caller is answered. Every wait inside the engine
/// has a bound of its own (write drains, claims, NBD closes); this one also covers what has none (a
/// hung disk under an fsync), so no API call can hang its client for ever.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs an engine call on a blocking thread and answers within [`CALL_TIMEOUT`]. A call still
/// running then goes on (and may yet take effect): the answer says so.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::time::timeout(CALL_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(EngineError::Internal(format!("request task failed: {e}"))),
        Err(_) => {
            tracing::warn!(timeout_s = CALL_TIMEOUT.as_secs(), "an API call did not finish in time");
            Err(EngineError::client(
                "ServiceUnavailable",
                format!(
                    "The request did not finish within {} s and may still take effect; check the outcome with \
                     a Describe call before retrying.",
                    CALL_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(method: Method, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        let r = unavailable(&method, &uri, &h, "no node leads the cluster now; retry shortly");
        let status = r.status();
        let headers = r.headers().clone();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A follower without a leader answers 503 in each protocol's own error shape.
    #[tokio::test]
    async fn unavailable_speaks_each_protocol() {
        let (status, _, body) = answer(Method::POST, "/", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("<Code>ServiceUnavailable</Code>") && body.contains("no node leads"), "{body}");

        let (status, _, body) = answer(Method::POST, "/", &[("x-amz-target", "Lightsail_20161128.GetDisks")]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["__type"], "ServiceUnavailable", "{body}");

        let (status, headers, body) = answer(Method::POST, "/snapshots", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(headers.get("x-amzn-errortype").is_some(), "{headers:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["message"].as_str().is_some_and(|m| m.contains("no node leads")), "{body}");
    }
}
