//! The metrics and health listener (`--metrics-listen`): Prometheus text on `/metrics`, `ok` on
//! `/health`. Unauthenticated, so it is its own listener (loopback by default) and its series carry
//! no resource ids: labels are operations, regions and export kinds only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Where the metrics listener goes (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics listener.
    Off,
    /// Bind this address; failing to is fatal.
    Addr(SocketAddr),
    /// The default loopback address; if it is taken (a second server on the host), run without a
    /// metrics listener and say so.
    Default,
}

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:4567";

impl std::str::FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" | "none" | "disabled" => Ok(MetricsListen::Off),
            _ => s
                .parse::<SocketAddr>()
                .map(MetricsListen::Addr)
                .map_err(|e| format!("'{s}' is neither an address (ip:port) nor 'off': {e}")),
        }
    }
}

/// Binds the metrics listener (before the data dir is touched, like the other listeners).
pub fn bind(listen: MetricsListen) -> anyhow::Result<Option<std::net::TcpListener>> {
    let addr = match listen {
        MetricsListen::Off => return Ok(None),
        MetricsListen::Addr(a) => a,
        MetricsListen::Default => {
            let a: SocketAddr = DEFAULT_METRICS_ADDR.parse()?;
            match std::net::TcpListener::bind(a) {
                Ok(l) => {
                    l.set_nonblocking(true)?;
                    return Ok(Some(l));
                }
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "the default metrics address is unavailable: serving without metrics (set --metrics-listen to an address, or off)");
                    return Ok(None);
                }
            }
        }
    };
    let l = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("binding metrics {addr}: {e}"))?;
    l.set_nonblocking(true)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the metrics listener is not on loopback: anyone who reaches it reads the service's counters (no ids or secrets)");
    }
    Ok(Some(l))
}

pub fn router(render: Arc<dyn Fn() -> String + Send + Sync>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response() }
            }),
        )
        .route("/health", get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use super::MetricsListen;

    #[test]
    fn parses_addresses_and_off() {
        assert_eq!("off".parse::<MetricsListen>(), Ok(MetricsListen::Off));
        assert_eq!(
            "127.0.0.1:9000".parse::<MetricsListen>(),
            Ok(MetricsListen::Addr("127.0.0.1:9000".parse().unwrap()))
        );
        assert!("localhost".parse::<MetricsListen>().is_err());
    }
}
