//! The HTTP API listener: hyper's HTTP/1.1 connection builder over TCP or TLS, with every wait on a
//! client bounded (a slow or silent client, or many of them, cannot hold the listener):
//!
//! - at most [`Limits::max_connections`] connections at once (TLS handshakes included); further
//!   ones wait in the kernel's backlog until one ends;
//! - a TLS handshake finishes within [`HANDSHAKE_TIMEOUT`];
//! - a request's headers arrive within [`Limits::header_timeout`] (hyper's `header_read_timeout`);
//! - a request's body arrives within [`Limits::body_timeout`], before the router sees it.
//!
//! At stop, no new connection is accepted; each open one finishes the request it serves and closes
//! (hyper's graceful shutdown); the caller bounds the whole by its grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read (axum's default limit for its body extractors, kept as it was).
const BODY_LIMIT: usize = 2 << 20;

/// The listener's bounds on clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From a connection's first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The defaults, each settable by an environment variable (tests shorten the timeouts):
    /// BLOCKSNAP_HTTP_HEADER_TIMEOUT_MS (30 s), BLOCKSNAP_HTTP_BODY_TIMEOUT_MS (60 s),
    /// BLOCKSNAP_HTTP_MAX_CONNECTIONS (512).
    pub fn from_env() -> Limits {
        let num = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0).unwrap_or(default)
        };
        Limits {
            header_timeout: Duration::from_millis(num("BLOCKSNAP_HTTP_HEADER_TIMEOUT_MS", 30_000)),
            body_timeout: Duration::from_millis(num("BLOCKSNAP_HTTP_BODY_TIMEOUT_MS", 60_000)),
            max_connections: usize::try_from(num("BLOCKSNAP_HTTP_MAX_CONNECTIONS", 512)).unwrap_or(512),
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stopping` turns true, then lets the
/// connections finish the requests they serve.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: axum::Router,
    mut stopping: watch::Receiver<bool>,
    limits: Limits,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits.body_timeout, read_body_within));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stopping) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener, &slots) => a,
        };
        let Some((tcp, peer, permit)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let (http1, app, acceptor, stopping) = (http1.clone(), app.clone(), acceptor.clone(), stopping.clone());
        conns.spawn(async move {
            let _slot: OwnedSemaphorePermit = permit;
            match acceptor {
                None => connection(&http1, tcp, app, peer, stopping).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => connection(&http1, tls, app, peer, stopping).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "https handshake failed"),
                    Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                },
            }
        });
    }
    // No new connections from here; the open ones finish their requests (bounded by the caller).
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// The next connection, once a slot is free; None when accepting failed (out of file descriptors
/// and the like: the error is logged after a short back-off, and serving goes on).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let permit = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => Some((tcp, peer, permit)),
        Err(e) => {
            tracing::warn!(error = %e, "http accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Serves one connection until the client closes it, a bound expires or the service stops.
async fn connection<I>(
    http1: &hyper::server::conn::http1::Builder,
    io: I,
    app: axum::Router,
    peer: SocketAddr,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stopping) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// Returns once the service stops (or its stop signal is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Reads the whole request body within `bound` (408 otherwise) before the router sees it, so no
/// handler waits on a client that trickles its body.
async fn read_body_within(State(bound): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(bound, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response();
        }
        Ok(Err(_)) => return (StatusCode::BAD_REQUEST, "request body cut short").into_response(),
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, "request body not received in time").into_response(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}
