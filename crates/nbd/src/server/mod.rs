//! The NBD server: handshake, option haggling, and the transmission phase with
//! many requests in flight per connection.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::device::{BlockDevice, Client, Export, ExportResolver, errno_of};
use crate::metrics::{ConnMetrics, Op};
use crate::proto::*;
use crate::tls::TlsConfig;

mod handshake;
mod transmission;

use transmission::InlineWrites;

/// Tunables of an [`NbdServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A client must finish option haggling within this time.
    pub handshake_timeout: Duration,
    /// Request payload bytes (read + write) in flight per connection.
    pub max_inflight_bytes: usize,
    /// Serve small cached reads and small plain writes right on the
    /// connection's task (through the device's `try_*` fast paths) instead of
    /// a blocking thread: saves two thread hand-offs per request.
    pub inline_io: bool,
    /// With TLS set, every TCP client must `NBD_OPT_STARTTLS` and
    /// authenticate before anything else (other options are answered
    /// `NBD_REP_ERR_TLS_REQD`); without, connections are plaintext and carry
    /// no identity.
    pub tls: Option<Arc<TlsConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: Duration::from_secs(30),
            max_inflight_bytes: 256 << 20,
            inline_io: true,
            tls: None,
        }
    }
}

type TlsStream<S> = tokio_openssl::SslStream<tokio::io::BufStream<S>>;

/// Read and write buffers under TLS.
const TLS_IO_BUFFER: usize = 256 << 10;

/// Options a client may send before `NBD_OPT_STARTTLS` on a TLS-only server.
const MAX_OPTIONS_BEFORE_TLS: usize = 16;

/// Options longer than this are answered `NBD_REP_ERR_TOO_BIG`; longer than
/// [`MAX_OPTION_DISCARD`] the client is dropped.
const MAX_OPTION_LEN: u32 = 64 << 10;
const MAX_OPTION_DISCARD: u32 = 1 << 20;
/// In-flight accounting unit.
const BUDGET_UNIT: usize = 64 << 10;
/// Largest request tried on the connection's task.
const INLINE_MAX: u32 = 128 << 10;
/// An inline write slower than this (page-cache throttling, a busy disk)
/// sends writes to blocking threads for [`INLINE_BACKOFF`].
const INLINE_STALL: Duration = Duration::from_millis(2);
const INLINE_BACKOFF: Duration = Duration::from_secs(1);
/// Time the last replies get to reach a closing client.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A connection's stop signal: keep serving; stop reading requests and answer
/// those in flight (shutdown); or cut it: access was revoked, so in-flight
/// requests finish on the device but nothing more reaches the client.
const RUN: u8 = 0;
const DRAIN: u8 = 1;
const CUT: u8 = 2;

struct ConnEntry {
    id: u64,
    export: String,
    client: Client,
    stop: watch::Sender<u8>,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, ConnEntry>,
    /// Bumped by `close_export`: a connection whose lookup raced with a close
    /// is refused rather than left open.
    generations: HashMap<String, u64>,
    /// Bumped by every revocation that is not by export name (credentials,
    /// access changes): a lookup that raced with one is redone.
    revocations: u64,
    shutting_down: bool,
}

/// An NBD server over an [`ExportResolver`].
pub struct NbdServer {
    resolver: Arc<dyn ExportResolver>,
    config: ServerConfig,
    registry: Mutex<Registry>,
    shutdown: watch::Sender<bool>,
    /// Slots for inline writes (see [`InlineWrites`]).
    inline_writes: OnceLock<Arc<InlineWrites>>,
}

/// A connection's place in the registry; dropping it marks the connection
/// done and removes it.
struct Registration {
    server: Arc<NbdServer>,
    id: u64,
    stop: watch::Receiver<u8>,
    done: watch::Sender<bool>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.server.registry().conns.remove(&self.id);
        let _ = self.done.send(true);
    }
}

/// What option haggling agreed on: the export and how to serve it.
struct Negotiated {
    name: String,
    export: Export,
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
    reg: Registration,
}

impl NbdServer {
    pub fn new(resolver: Arc<dyn ExportResolver>) -> NbdServer {
        Self::with_config(resolver, ServerConfig::default())
    }

    pub fn with_config(resolver: Arc<dyn ExportResolver>, config: ServerConfig) -> NbdServer {
        NbdServer {
            resolver,
            config,
            registry: Mutex::new(Registry::default()),
            shutdown: watch::channel(false).0,
            inline_writes: OnceLock::new(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts connections until [`NbdServer::shutdown`] is called.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let mut stop = self.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_tcp(stream, peer.to_string()).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "nbd accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, stream: TcpStream, peer: String) {
        let _ = stream.set_nodelay(true);
        if self.config.tls.is_none() {
            let (rd, wr) = stream.into_split();
            self.serve_connection(rd, wr, peer).await;
            return;
        }
        self.serve_stream(stream, peer).await;
    }

    /// Serves one client over any byte stream the way a TCP client is served: with TLS
    /// configured, `NBD_OPT_STARTTLS` and the TLS handshake come first (used for TCP, and by
    /// tests and fuzzers for the pre-TLS option haggling and the handshake).
    pub async fn serve_stream<S>(self: Arc<Self>, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(tls) = self.config.tls.clone() else {
            let (rd, wr) = tokio::io::split(stream);
            self.serve_connection(rd, wr, peer).await;
            return;
        };
        let hs = tokio::time::timeout(self.config.handshake_timeout, self.handshake_tls(&tls, stream)).await;
        match hs {
            Ok(Ok(Some((rd, wr, neg)))) => {
                tracing::debug!(%peer, export = %neg.name, "nbd tls client connected");
                self.transmission(rd, wr, neg).await;
                tracing::debug!(%peer, "nbd client disconnected");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "nbd tls handshake ended"),
            Err(_) => tracing::debug!(%peer, "nbd handshake timed out"),
        }
    }

    /// Serves one plaintext client over any byte stream (used for TCP without
    /// TLS, and by tests). The client has no identity.
    pub async fn serve_connection<R, W>(self: Arc<Self>, mut rd: R, mut wr: W, peer: String)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let hs = tokio::time::timeout(self.config.handshake_timeout, self.handshake(&mut rd, &mut wr)).await;
        let neg = match hs {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => {
                let _ = wr.shutdown().await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "nbd handshake ended");
                let _ = wr.shutdown().await;
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "nbd handshake timed out");
                return;
            }
        };
        tracing::debug!(%peer, export = %neg.name, structured = neg.structured, "nbd client connected");
        self.transmission(rd, wr, neg).await;
        tracing::debug!(%peer, "nbd client disconnected");
    }

    /// Cuts every live connection of `name` once its in-flight requests have
    /// finished on the device (unanswered), and returns once they are gone. A
    /// connection still in its handshake that resolved `name` before this call
    /// is refused.
    pub async fn close_export(&self, name: &str) {
        self.stop_connections(CUT, |r| {
            *r.generations.entry(name.to_string()).or_insert(0) += 1;
            |c: &ConnEntry| c.export == name
        })
        .await;
    }

    /// Closes every live connection authenticated with one of `identities`
    /// (revoked credentials) and returns once they are gone. A handshake that
    /// authenticated before this call and opens an export after it is refused.
    pub async fn close_identities(&self, identities: &[String]) {
        self.stop_connections(CUT, |r| {
            r.revocations += 1;
            |c: &ConnEntry| c.client.identity.as_ref().is_some_and(|i| identities.contains(i))
        })
        .await;
    }

    /// Who may open `name` changed (e.g. a snapshot's share was removed):
    /// asks the resolver again for every live connection of `name` and closes
    /// those no longer allowed; returns once they are gone.
    pub async fn revalidate(&self, name: &str) {
        let clients: Vec<(u64, Client)> = {
            let mut r = self.registry();
            r.revocations += 1;
            r.conns.iter().filter(|(_, c)| c.export == name).map(|(id, c)| (*id, c.client.clone())).collect()
        };
        // Asked outside the registry lock: the resolver takes its own locks.
        let denied: Vec<u64> =
            clients.into_iter().filter(|(_, c)| !self.resolver.allowed(c, name)).map(|(id, _)| id).collect();
        if denied.is_empty() {
            return;
        }
        self.stop_connections(CUT, |_| |c: &ConnEntry| c.export == name && denied.contains(&c.id)).await;
    }

    /// Stops accepting, closes every connection cleanly, and returns once
    /// they are gone.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.stop_connections(DRAIN, |r| {
            r.shutting_down = true;
            |_: &ConnEntry| true
        })
        .await;
    }

    /// Under the registry lock, run `prepare` (which says which connections to stop) and signal
    /// them (`how`: [`DRAIN`] or [`CUT`]); then wait until each has finished its in-flight
    /// requests and closed.
    async fn stop_connections<F: Fn(&ConnEntry) -> bool>(&self, how: u8, prepare: impl FnOnce(&mut Registry) -> F) {
        let waits: Vec<watch::Receiver<bool>> = {
            let mut r = self.registry();
            let selected = prepare(&mut r);
            r.conns
                .values()
                .filter(|c| selected(c))
                .map(|c| {
                    c.stop.send_modify(|s| *s = (*s).max(how));
                    c.done.clone()
                })
                .collect()
        };
        for mut w in waits {
            let _ = w.wait_for(|d| *d).await;
        }
    }

    /// Live connections in transmission, to one export or in all.
    pub fn connection_count(&self, export: Option<&str>) -> usize {
        self.registry().conns.values().filter(|c| export.is_none_or(|e| e == c.export)).count()
    }

    /// Looks an export up for `client` and registers the connection, unless
    /// a `close_export` of that name raced with the lookup; a lookup that raced
    /// with another revocation is redone (the revocation may have been ours).
    fn register(self: &Arc<Self>, client: &Client, name: &str) -> Option<(Export, Registration)> {
        for _ in 0..8 {
            let (gen0, rev0) = {
                let r = self.registry();
                if r.shutting_down {
                    return None;
                }
                (r.generations.get(name).copied().unwrap_or(0), r.revocations)
            };
            let export = self.resolver.lookup(client, name)?;
            let mut r = self.registry();
            if r.shutting_down || r.generations.get(name).copied().unwrap_or(0) != gen0 {
                return None;
            }
            if r.revocations != rev0 {
                continue;
            }
            let id = r.next_id;
            r.next_id += 1;
            let (stop_tx, stop_rx) = watch::channel(RUN);
            let (done_tx, done_rx) = watch::channel(false);
            r.conns.insert(
                id,
                ConnEntry { id, export: name.to_string(), client: client.clone(), stop: stop_tx, done: done_rx },
            );
            return Some((export, Registration { server: self.clone(), id, stop: stop_rx, done: done_tx }));
        }
        None
    }
}
