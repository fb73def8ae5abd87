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

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("tls: {0}")]
    Tls(String),
}

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

/// Inline writes run on executor threads, and a buffered write blocks for as long as the
/// filesystem does (frozen, a hung disk). Two bounds keep such a write from stopping the server:
/// - at most half of the executor's threads may be inside one at a time (none on a
///   single-threaded executor); a write that finds no free slot goes to a blocking thread;
/// - while a slot is taken, a keeper thread wakes the executor every [`KEEPER_INTERVAL`]: the
///   blocked thread may have been the one polling the I/O driver while the others slept, and a
///   sleeping thread only takes the driver over (and the blocked thread's queued tasks) once woken.
///
/// So a filesystem that stops answering blocks at most half of the threads, and the others keep
/// serving every other connection (and, in `blocksnap serve`, the API). Inline writes take
/// microseconds: one connection, or a few, rarely miss a slot.
struct InlineWrites {
    slots: Semaphore,
    total: usize,
}

/// How often the keeper looks for a running inline write.
const KEEPER_INTERVAL: Duration = Duration::from_millis(25);

impl InlineWrites {
    fn start() -> Arc<InlineWrites> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Arc::new(InlineWrites { slots: Semaphore::new(0), total: 0 });
        };
        let total = rt.metrics().num_workers() / 2;
        let w = Arc::new(InlineWrites { slots: Semaphore::new(total), total });
        if total == 0 {
            return w;
        }
        let weak = Arc::downgrade(&w);
        let keeper = std::thread::Builder::new().name("nbd-inline-keeper".into()).spawn(move || {
            // Ends once the server is gone.
            while let Some(w) = weak.upgrade() {
                if w.slots.available_permits() < w.total {
                    // From outside the executor: wakes a sleeping worker if there is one.
                    drop(rt.spawn(async {}));
                }
                drop(w);
                std::thread::sleep(KEEPER_INTERVAL);
            }
        });
        match keeper {
            Ok(_) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no keeper thread; NBD writes all go to blocking threads");
                Arc::new(InlineWrites { slots: Semaphore::new(0), total: 0 })
            }
        }
    }
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

struct Negotiated {
    name: String,
    export: Export,
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
    reg: Registration,
}

fn transmission_flags(read_only: bool) -> u16 {
    let mut f = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_DF
        | TF_CAN_MULTI_CONN
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;
    if read_only {
        f |= TF_READ_ONLY;
    }
    f
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

    /// The inline write slots, made on the first connection for the executor it runs on.
    fn inline_write_slots(&self) -> &Semaphore {
        &self.inline_writes.get_or_init(InlineWrites::start).slots
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

    /// The handshake of a TLS-only server: hello, options until
    /// `NBD_OPT_STARTTLS`, the TLS handshake (PSK: it authenticates the client),
    /// then the usual option haggling inside TLS.
    #[allow(clippy::type_complexity)]
    async fn handshake_tls<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        tls: &TlsConfig,
        mut stream: S,
    ) -> Result<
        Option<(tokio::io::ReadHalf<TlsStream<S>>, tokio::io::WriteHalf<TlsStream<S>>, Negotiated)>,
        HandshakeError,
    > {
        let no_zeroes = hello(&mut stream).await?;
        if !await_starttls(&mut stream).await? {
            let _ = stream.shutdown().await;
            return Ok(None);
        }
        let ssl = tls.new_session().map_err(|e| HandshakeError::Tls(e.to_string()))?;
        // Buffered below TLS: OpenSSL writes each 16 KiB record and reads each record header and
        // body separately; the buffers turn that into one syscall per batch (flushed when we flush).
        let buffered = tokio::io::BufStream::with_capacity(TLS_IO_BUFFER, TLS_IO_BUFFER, stream);
        let mut s = tokio_openssl::SslStream::new(ssl, buffered).map_err(|e| HandshakeError::Tls(e.to_string()))?;
        std::pin::Pin::new(&mut s).accept().await.map_err(|e| HandshakeError::Tls(e.to_string()))?;
        let Some(identity) = crate::tls::authenticated_identity(s.ssl()) else {
            return Err(HandshakeError::Tls("no authenticated identity".into()));
        };
        tracing::debug!(
            version = s.ssl().version_str(),
            cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"),
            "nbd tls established"
        );
        let client = Client { identity: Some(identity) };
        let (mut rd, mut wr) = tokio::io::split(s);
        match self.options(&mut rd, &mut wr, no_zeroes, &client, true).await? {
            Some(neg) => Ok(Some((rd, wr, neg))),
            None => {
                let _ = wr.shutdown().await;
                Ok(None)
            }
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

    /// The plaintext handshake: hello, then option haggling with no identity.
    async fn handshake<R, W>(self: &Arc<Self>, rd: &mut R, wr: &mut W) -> Result<Option<Negotiated>, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let no_zeroes = hello_split(rd, wr).await?;
        self.options(rd, wr, no_zeroes, &Client::default(), false).await
    }

    /// Option haggling until an export is chosen (`Some`) or the client aborts.
    async fn options<R, W>(
        self: &Arc<Self>,
        rd: &mut R,
        wr: &mut W,
        no_zeroes: bool,
        client: &Client,
        tls_active: bool,
    ) -> Result<Option<Negotiated>, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut structured = false;
        // Export the base:allocation context was selected for.
        let mut meta_for: Option<String> = None;

        loop {
            let mut h = [0u8; 16];
            rd.read_exact(&mut h).await?;
            let (opt, len) = parse_option_header(&h).ok_or(HandshakeError::Protocol("bad option magic"))?;
            if len > MAX_OPTION_DISCARD {
                return Err(HandshakeError::Protocol("option too long"));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            if len > MAX_OPTION_LEN {
                reply(wr, opt, REP_ERR_TOO_BIG, b"option too long").await?;
                continue;
            }
            match opt {
                OPT_EXPORT_NAME => {
                    let name =
                        String::from_utf8(data).map_err(|_| HandshakeError::Protocol("export name is not UTF-8"))?;
                    // This option has no way to report an error: just close.
                    let Some((export, reg)) = self.register(client, &name) else {
                        return Err(HandshakeError::Protocol("unknown export (EXPORT_NAME)"));
                    };
                    let n = self.negotiated(name, export, reg, structured, &meta_for);
                    let mut v = Vec::with_capacity(10 + 124);
                    v.extend_from_slice(&n.size.to_be_bytes());
                    v.extend_from_slice(&transmission_flags(n.read_only).to_be_bytes());
                    if !no_zeroes {
                        v.extend_from_slice(&[0u8; 124]);
                    }
                    wr.write_all(&v).await?;
                    wr.flush().await?;
                    return Ok(Some(n));
                }
                OPT_ABORT => {
                    // Best effort: the client may already be gone.
                    let _ = reply(wr, opt, REP_ACK, &[]).await;
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        reply(wr, opt, REP_ERR_INVALID, b"LIST takes no data").await?;
                        continue;
                    }
                    for name in self.resolver.list(client) {
                        let mut d = (name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        wr.write_all(&option_reply(opt, REP_SERVER, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_INFO | OPT_GO => {
                    let Some(req) = parse_info_request(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed request").await?;
                        continue;
                    };
                    let found = if opt == OPT_GO {
                        self.register(client, &req.name).map(|(e, r)| (e, Some(r)))
                    } else {
                        self.resolver.lookup(client, &req.name).map(|e| (e, None))
                    };
                    let Some((export, reg)) = found else {
                        reply(wr, opt, REP_ERR_UNKNOWN, b"unknown export").await?;
                        continue;
                    };
                    let read_only = export.read_only || export.device.read_only();
                    let size = export.device.size();
                    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&size.to_be_bytes());
                    d.extend_from_slice(&transmission_flags(read_only).to_be_bytes());
                    wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    if req.infos.contains(&INFO_NAME) {
                        let mut d = INFO_NAME.to_be_bytes().to_vec();
                        d.extend_from_slice(req.name.as_bytes());
                        wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    }
                    if let Some(desc) = export.description.as_ref().filter(|_| req.infos.contains(&INFO_DESCRIPTION)) {
                        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                        d.extend_from_slice(&desc.as_bytes()[..desc.len().min(MAX_STRING)]);
                        wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                    if let Some(reg) = reg {
                        return Ok(Some(self.negotiated(req.name, export, reg, structured, &meta_for)));
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        reply(wr, opt, REP_ERR_INVALID, b"takes no data").await?;
                        continue;
                    }
                    structured = true;
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    if !structured {
                        reply(wr, opt, REP_ERR_INVALID, b"needs structured replies").await?;
                        continue;
                    }
                    let Some(req) = parse_meta_request(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed request").await?;
                        continue;
                    };
                    if self.resolver.lookup(client, &req.name).is_none() {
                        reply(wr, opt, REP_ERR_UNKNOWN, b"unknown export").await?;
                        continue;
                    }
                    let listing = opt == OPT_LIST_META_CONTEXT;
                    let selected = if listing && req.queries.is_empty() {
                        true
                    } else {
                        req.queries.iter().any(|q| meta_matches(q, listing))
                    };
                    if !listing {
                        meta_for = selected.then(|| req.name.clone());
                    }
                    if selected {
                        let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        wr.write_all(&option_reply(opt, REP_META_CONTEXT, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_STARTTLS if tls_active => {
                    reply(wr, opt, REP_ERR_INVALID, b"TLS is already active").await?;
                }
                OPT_STARTTLS => {
                    reply(wr, opt, REP_ERR_POLICY, b"TLS is not offered").await?;
                }
                _ => {
                    reply(wr, opt, REP_ERR_UNSUP, b"unsupported option").await?;
                }
            }
        }
    }

    fn negotiated(
        &self,
        name: String,
        export: Export,
        reg: Registration,
        structured: bool,
        meta_for: &Option<String>,
    ) -> Negotiated {
        let base_allocation = structured && meta_for.as_deref() == Some(name.as_str());
        Negotiated {
            size: export.device.size(),
            read_only: export.read_only || export.device.read_only(),
            name,
            export,
            structured,
            base_allocation,
            reg,
        }
    }

    async fn transmission<R, W>(self: Arc<Self>, rd: R, wr: W, n: Negotiated)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = Arc::new(ConnMetrics::new(&n.name));
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(write_loop(wr, rx));
        let budget_units = (self.config.max_inflight_bytes / BUDGET_UNIT).max(1024) as u32;
        let sem = Arc::new(Semaphore::new(budget_units as usize));
        let ctx = CmdContext {
            size: n.size,
            read_only: n.read_only,
            structured: n.structured,
            base_allocation: n.base_allocation,
        };
        let mut stop = n.reg.stop.clone();
        let device = n.export.device.clone();
        let inline_writes = self.inline_write_slots();
        // Inline writes are paused until then after one stalled.
        let mut inline_writes_after: Option<Instant> = None;

        loop {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            let r = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s != RUN) => break,
                r = rd.read_exact(&mut hdr) => r,
            };
            if r.is_err() {
                // Client closed or vanished: finish what is in flight.
                break;
            }
            let Some(h) = parse_request_header(&hdr) else {
                tracing::debug!(export = %n.name, "bad request magic; disconnecting");
                break;
            };
            let started = Instant::now();
            let cmd = match validate(&h, &ctx) {
                Ok(c) => c,
                Err(refusal) => {
                    metrics.error(op_of_type(h.typ));
                    let payload = payload_len(&h);
                    if !refusal.disconnect && payload > 0 {
                        let discarded =
                            tokio::io::copy(&mut (&mut rd).take(u64::from(payload)), &mut tokio::io::sink()).await;
                        if !matches!(discarded, Ok(x) if x == u64::from(payload)) {
                            break;
                        }
                    }
                    let structured_err = ctx.structured && matches!(h.typ, CMD_READ | CMD_BLOCK_STATUS);
                    let msg = if structured_err {
                        error_chunk(refusal.errno, h.cookie, "request refused")
                    } else {
                        simple_reply(refusal.errno, h.cookie)
                    };
                    let _ = tx.send(msg);
                    if refusal.disconnect {
                        break;
                    }
                    continue;
                }
            };
            let mut payload = Vec::new();
            let units = match cmd {
                Command::Disc => break,
                Command::Write { len, .. } => {
                    payload = vec![0u8; len as usize];
                    let r = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s != RUN) => break,
                        r = rd.read_exact(&mut payload) => r,
                    };
                    if r.is_err() {
                        // Vanished mid-payload: the partial write is never applied.
                        break;
                    }
                    1 + len as usize / BUDGET_UNIT
                }
                Command::Read { len, .. } => 1 + len as usize / BUDGET_UNIT,
                _ => 1,
            };
            if self.config.inline_io
                && let Some((msg, res)) = try_inline(
                    &*device,
                    cmd,
                    h.cookie,
                    &payload,
                    ctx.structured,
                    inline_writes,
                    &mut inline_writes_after,
                )
            {
                let _ = tx.send(msg);
                metrics.record(cmd, res, started.elapsed());
                continue;
            }
            let units = (units as u32).min(budget_units);
            let Ok(permit) = sem.clone().acquire_many_owned(units).await else {
                break;
            };
            let (device, tx, metrics) = (device.clone(), tx.clone(), metrics.clone());
            let structured = ctx.structured;
            let cookie = h.cookie;
            tokio::task::spawn_blocking(move || {
                let (msg, res) = execute(&*device, cmd, cookie, payload, structured);
                let _ = tx.send(msg);
                metrics.record(cmd, res, started.elapsed());
                drop(permit);
            });
        }
        let abort = writer.abort_handle();
        let cut = *stop.borrow() == CUT;
        if cut {
            // Access was revoked: nothing more reaches the client.
            abort.abort();
        }
        // Drain: every in-flight request finishes on the device (and, unless
        // cut, is answered) before the connection counts as gone.
        let _ = sem.acquire_many(budget_units).await;
        drop(tx);
        // A client that stopped reading must not hold a close forever.
        if !cut && tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
            tracing::debug!(export = %n.name, "client not reading replies; dropping it");
            abort.abort();
        }
        drop(n.reg);
    }
}

/// Sends the server hello and reads the client's flags; returns whether the
/// client asked for no zeroes after `NBD_OPT_EXPORT_NAME`.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, HandshakeError> {
    let mut h = Vec::with_capacity(18);
    h.extend_from_slice(&NBDMAGIC.to_be_bytes());
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&h).await?;
    s.flush().await?;
    client_flags(s.read_u32().await?)
}

async fn hello_split<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
) -> Result<bool, HandshakeError> {
    let mut h = Vec::with_capacity(18);
    h.extend_from_slice(&NBDMAGIC.to_be_bytes());
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    wr.write_all(&h).await?;
    wr.flush().await?;
    client_flags(rd.read_u32().await?)
}

fn client_flags(flags: u32) -> Result<bool, HandshakeError> {
    if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::Protocol("unknown client flags"));
    }
    if flags & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::Protocol("client is not fixed-newstyle"));
    }
    Ok(flags & CLIENT_NO_ZEROES != 0)
}

/// Option haggling before TLS on a TLS-only server: only `STARTTLS` (true)
/// and `ABORT` (false) are served; anything else is `NBD_REP_ERR_TLS_REQD`,
/// and `EXPORT_NAME` (which cannot be refused) ends the connection.
async fn await_starttls<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, HandshakeError> {
    for _ in 0..MAX_OPTIONS_BEFORE_TLS {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await?;
        let (opt, len) = parse_option_header(&h).ok_or(HandshakeError::Protocol("bad option magic"))?;
        if len > MAX_OPTION_DISCARD {
            return Err(HandshakeError::Protocol("option too long"));
        }
        let skipped = tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink()).await?;
        if skipped != u64::from(len) {
            return Err(HandshakeError::Protocol("short option"));
        }
        match opt {
            OPT_STARTTLS if len == 0 => {
                reply(s, opt, REP_ACK, &[]).await?;
                return Ok(true);
            }
            OPT_STARTTLS => reply(s, opt, REP_ERR_INVALID, b"STARTTLS takes no data").await?,
            OPT_ABORT => {
                let _ = reply(s, opt, REP_ACK, &[]).await;
                return Ok(false);
            }
            OPT_EXPORT_NAME => return Err(HandshakeError::Protocol("EXPORT_NAME before STARTTLS")),
            _ => {
                reply(s, opt, REP_ERR_TLS_REQD, b"this server requires TLS (NBD_OPT_STARTTLS) with a PSK credential")
                    .await?
            }
        }
    }
    Err(HandshakeError::Protocol("too many options before STARTTLS"))
}

async fn reply<W: AsyncWrite + Unpin>(wr: &mut W, opt: u32, typ: u32, data: &[u8]) -> io::Result<()> {
    wr.write_all(&option_reply(opt, typ, data)).await?;
    wr.flush().await
}

async fn write_loop<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(256 << 10, wr);
    while let Some(buf) = rx.recv().await {
        if w.write_all(&buf).await.is_err() {
            return;
        }
        // Batch whatever else is ready into one flush.
        while let Ok(buf) = rx.try_recv() {
            if w.write_all(&buf).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

fn op_of_type(typ: u16) -> Op {
    match typ {
        CMD_READ => Op::Read,
        CMD_WRITE => Op::Write,
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim,
        CMD_WRITE_ZEROES => Op::WriteZeroes,
        CMD_BLOCK_STATUS => Op::BlockStatus,
        CMD_CACHE => Op::Cache,
        _ => Op::Other,
    }
}

fn read_header_len(structured: bool) -> usize {
    if structured { CHUNK_HEADER_LEN + 8 } else { SIMPLE_HEADER_LEN }
}

/// Fills in the header of a read reply whose data is in place.
fn read_done(mut buf: Vec<u8>, structured: bool, cookie: u64, offset: u64, len: u32) -> (Vec<u8>, Result<u64, u32>) {
    if structured {
        put_chunk_header(&mut buf, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + len);
        buf[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 8].copy_from_slice(&offset.to_be_bytes());
    } else {
        put_simple_header(&mut buf, 0, cookie);
    }
    (buf, Ok(u64::from(len)))
}

fn read_failed(e: &io::Error, structured: bool, cookie: u64) -> (Vec<u8>, Result<u64, u32>) {
    let errno = errno_of(e);
    tracing::debug!(error = %e, errno, "nbd read failed");
    let msg = if structured { error_chunk(errno, cookie, "read failed") } else { simple_reply(errno, cookie) };
    (msg, Err(errno))
}

/// Serves a small read or write on the calling (async) task when the device
/// can do it without waiting; `None` sends it to a blocking thread. A read
/// never blocks (`RWF_NOWAIT`); a write holds one of `write_slots` while it
/// runs, so a hung filesystem blocks only as many executor threads as there
/// are slots.
fn try_inline(
    dev: &dyn BlockDevice,
    cmd: Command,
    cookie: u64,
    payload: &[u8],
    structured: bool,
    write_slots: &Semaphore,
    writes_after: &mut Option<Instant>,
) -> Option<(Vec<u8>, Result<u64, u32>)> {
    match cmd {
        Command::Read { offset, len } if len <= INLINE_MAX => {
            let hdr = read_header_len(structured);
            let mut buf = vec![0u8; hdr + len as usize];
            match dev.try_read_at(offset, &mut buf[hdr..]) {
                Ok(true) => Some(read_done(buf, structured, cookie, offset, len)),
                Ok(false) => None,
                Err(e) => Some(read_failed(&e, structured, cookie)),
            }
        }
        Command::Write { offset, len, fua: false }
            if len <= INLINE_MAX && writes_after.is_none_or(|t| Instant::now() >= t) =>
        {
            let _slot = write_slots.try_acquire().ok()?;
            let t = Instant::now();
            match dev.try_write_at(offset, payload) {
                Ok(true) => {
                    if t.elapsed() > INLINE_STALL {
                        tracing::debug!(took = ?t.elapsed(), "inline write stalled; offloading writes for a while");
                        *writes_after = Some(Instant::now() + INLINE_BACKOFF);
                    }
                    Some((simple_reply(0, cookie), Ok(u64::from(len))))
                }
                Ok(false) => None,
                Err(e) => {
                    let errno = errno_of(&e);
                    Some((simple_reply(errno, cookie), Err(errno)))
                }
            }
        }
        _ => None,
    }
}

/// Runs one command on the device (blocking) and builds its reply. Returns
/// the reply and `Ok(bytes moved)` or `Err(errno)`.
fn execute(
    dev: &dyn BlockDevice,
    cmd: Command,
    cookie: u64,
    payload: Vec<u8>,
    structured: bool,
) -> (Vec<u8>, Result<u64, u32>) {
    let simple = |r: io::Result<()>, bytes: u64| match r {
        Ok(()) => (simple_reply(0, cookie), Ok(bytes)),
        Err(e) => {
            let errno = errno_of(&e);
            tracing::debug!(?cmd, error = %e, errno, "nbd request failed");
            (simple_reply(errno, cookie), Err(errno))
        }
    };
    let then_flush = |r: io::Result<()>, fua: bool| r.and_then(|()| if fua { dev.flush() } else { Ok(()) });
    match cmd {
        Command::Read { offset, len } => {
            let hdr = if structured { CHUNK_HEADER_LEN + 8 } else { SIMPLE_HEADER_LEN };
            let mut buf = vec![0u8; hdr + len as usize];
            match dev.read_at(offset, &mut buf[hdr..]) {
                Ok(()) => {
                    if structured {
                        put_chunk_header(&mut buf, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + len);
                        buf[CHUNK_HEADER_LEN..hdr].copy_from_slice(&offset.to_be_bytes());
                    } else {
                        put_simple_header(&mut buf, 0, cookie);
                    }
                    (buf, Ok(u64::from(len)))
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    tracing::debug!(offset, len, error = %e, "nbd read failed");
                    let msg = if structured {
                        error_chunk(errno, cookie, "read failed")
                    } else {
                        simple_reply(errno, cookie)
                    };
                    (msg, Err(errno))
                }
            }
        }
        Command::Write { offset, len, fua } => simple(dev.write_at(offset, &payload, fua), u64::from(len)),
        Command::Flush => simple(dev.flush(), 0),
        Command::Trim { offset, len, fua } => simple(then_flush(dev.trim(offset, u64::from(len)), fua), u64::from(len)),
        Command::WriteZeroes { offset, len, fua, no_hole, fast } => {
            simple(then_flush(dev.write_zeroes(offset, u64::from(len), !no_hole, fast), fua), u64::from(len))
        }
        Command::Cache { offset, len } => simple(dev.cache(offset, u64::from(len)), u64::from(len)),
        Command::BlockStatus { offset, len, req_one } => {
            match dev.block_status(offset, u64::from(len)) {
                Ok(extents) => {
                    let mut out: Vec<(u32, u32)> = Vec::new();
                    let mut left = u64::from(len);
                    for e in extents {
                        if left == 0 || out.len() >= 1 << 20 {
                            break;
                        }
                        let l = e.len.min(left);
                        if l == 0 {
                            continue;
                        }
                        let flags = (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 });
                        match out.last_mut() {
                            Some(last) if last.1 == flags => last.0 += l as u32,
                            _ => out.push((l as u32, flags)),
                        }
                        left -= l;
                    }
                    if out.is_empty() {
                        // The device said nothing: claim data, which is always safe.
                        out.push((len, 0));
                    }
                    if req_one {
                        out.truncate(1);
                    }
                    (block_status_chunk(cookie, &out), Ok(0))
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    (error_chunk(errno, cookie, "block status failed"), Err(errno))
                }
            }
        }
        // Handled by the reader.
        Command::Disc => (Vec::new(), Ok(0)),
    }
}
