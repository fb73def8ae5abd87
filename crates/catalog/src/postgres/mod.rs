//! The PostgreSQL catalog: the same rows as the SQLite one, in a PostgreSQL database.
//!
//! **Threads.** The [`Catalog`] trait is synchronous and the engine calls it from blocking threads
//! (and, for a few quick reads and job steps, from executor threads). The catalog owns a small tokio
//! runtime that drives its connections; a call hands its work to that runtime and waits for the
//! answer with a bound ([`CALL_TIMEOUT`]). On a worker of the caller's multi-thread runtime the wait
//! is wrapped in `block_in_place`, so the caller's other tasks move to another worker meanwhile.
//!
//! **Durability (group commit).** Every commit runs on one *writer* connection, one transaction per
//! batch, with `synchronous_commit = off`: the transaction is atomic and visible when `commit`
//! returns, but its WAL may not be flushed yet, so the engine's lock is never held across an fsync.
//! [`Catalog::sync`] then makes it durable: one leader at a time (the [`GroupCommit`] shared with
//! SQLite) runs a small `synchronous_commit = on` transaction on another connection. Its commit
//! record comes after every commit made before it in the server's WAL, so its flush covers all of
//! them at once: concurrent calls share one WAL flush. The same transaction checks that the writer's
//! server process is still alive (`pg_stat_activity`: pid and start time). A server crash between an
//! asynchronous commit and the flush loses that commit and ends every server process, so a live writer
//! proves the commits survived. If the writer is gone while some commit is not yet known durable, the
//! catalog is *poisoned*: the engine applied state the server may have lost, so every later call
//! fails until blocksnap restarts and reloads (as PostgreSQL itself stops on a failed fsync). The same
//! holds for a commit whose outcome is unknown (the connection broke during it, or it timed out).
//!
//! **Ownership.** The owner (the `serve` process, or an `admin` command when nobody serves) holds a
//! session advisory lock ([`OWNER_LOCK_KEY`]) on the writer connection for its life: a second owner of
//! the same database is refused. Losing the writer connection releases the lock; the next commit
//! reconnects and takes it again, or poisons the catalog if someone else took it.
//!
//! **Schema.** `blocksnap_schema` holds the version (one row) and the catalog's id (a random UUID made
//! when the catalog is created; the data dir records it, so a data dir is never started on another
//! catalog). Migrations are append-only SQL, applied by the owner, all pending ones and the new
//! version in one transaction.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Statement};

use crate::group_commit::GroupCommit;
use crate::{Catalog, CatalogError, Change, OpenMode, Result, Row};

mod cluster;
mod schema;

pub use cluster::{Leader, Membership, NodeRecord, NodeTaken};

use schema::{MIGRATIONS, check_version, migrate};

/// The session advisory lock the owner holds on its writer connection ("blksnap" in ASCII).
pub const OWNER_LOCK_KEY: i64 = 0x0062_6c6b_736e_6170;
/// Serialises schema creation and migration (transaction-scoped).
const MIGRATE_LOCK_KEY: i64 = OWNER_LOCK_KEY + 1;
/// The bound on any one catalog call (connect, statement, commit, flush).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_SIZE: usize = 8;
/// The bound on [`Catalog::still_owner`]'s proof for a cluster's leader.
const OWNERSHIP_PROOF: Duration = Duration::from_secs(5);
/// How long a new owner waits for the owner lock before refusing.
const OWNER_WAIT: Duration = Duration::from_secs(3);

/// What losing the writer's session means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fencing {
    /// One server per database: reconnect and take the owner lock again (poisoned only if commits
    /// may be lost or someone else holds it).
    Single,
    /// A cluster: the owner lock is the leadership. Once its session ends another node may have
    /// led and committed, so this process's memory is stale: poisoned at once, never reconnected.
    Cluster,
}

/// The writer connection and who it is on the server.
struct Writer {
    client: Option<WriterConn>,
    /// Sequence number of the newest commit made on any writer connection.
    last_commit: u64,
}

struct WriterConn {
    client: Client,
    /// Upsert and delete, prepared on first use (the table may not exist before migration).
    stmts: Option<(Statement, Statement)>,
    /// `pg_backend_pid()` and the backend's start time: unique for the server's life.
    ident: (i32, String),
}

struct Inner {
    config: tokio_postgres::Config,
    tls: MakeTlsConnector,
    mode: OpenMode,
    fencing: Fencing,
    /// Reads and flushes.
    pool: Pool,
    writer: tokio::sync::Mutex<Writer>,
    group: GroupCommit,
    /// Set once the server may have lost a commit this process already acted on.
    poisoned: Mutex<Option<String>>,
    /// A cluster leader's writer session (pid, start time): set once, never replaced (a cluster's
    /// writer never reconnects).
    session: std::sync::OnceLock<(i32, String)>,
    /// The fence's own connection (a cluster's leader only): its proofs never wait behind a commit
    /// on the writer or for a pooled connection.
    fence: tokio::sync::Mutex<Option<Client>>,
}

/// A catalog in a PostgreSQL database (`postgres://user:password@host:port/dbname`, or `host=/dir`
/// for a unix socket). See the module docs for the durability and ownership rules.
pub struct PgCatalog {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    id: String,
    target: String,
}

impl PgCatalog {
    /// Open as the catalog's owner: creates or migrates the schema and holds the owner lock.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_mode(url, OpenMode::Owner)
    }

    pub fn open_mode(url: &str, mode: OpenMode) -> Result<Self> {
        Self::open_with(url, mode, Fencing::Single)
    }

    /// Open as the owner of a cluster's catalog, if nobody owns it now: `None` when another process
    /// holds the owner lock (no wait). The session that holds the lock is the one every commit runs
    /// on, so losing it is final: the catalog poisons itself and never takes the lock again (the
    /// process must stop acting as owner; another node may have taken over).
    pub fn open_candidate(url: &str) -> Result<Option<Self>> {
        match Self::open_with(url, OpenMode::Owner, Fencing::Cluster) {
            Ok(c) => Ok(Some(c)),
            Err(CatalogError::OwnerHeld(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_with(url: &str, mode: OpenMode, fencing: Fencing) -> Result<Self> {
        let (config, tls) = client_config(url, mode)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("catalog-pg")
            .enable_all()
            .build()?;
        let pool = {
            let _rt = runtime.enter();
            let mgr = Manager::from_config(
                config.clone(),
                tls.clone(),
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(mgr)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(CALL_TIMEOUT))
                .create_timeout(Some(CALL_TIMEOUT))
                .recycle_timeout(Some(CALL_TIMEOUT))
                .build()
                .map_err(|e| CatalogError::Config(e.to_string()))?
        };
        let inner = Arc::new(Inner {
            config,
            tls,
            mode,
            fencing,
            pool,
            writer: tokio::sync::Mutex::new(Writer { client: None, last_commit: 0 }),
            group: GroupCommit::new(),
            poisoned: Mutex::new(None),
            session: std::sync::OnceLock::new(),
            fence: tokio::sync::Mutex::new(None),
        });
        let mut cat = PgCatalog { inner, runtime: Some(runtime), id: String::new(), target: redact(url) };
        let inner = cat.inner.clone();
        cat.id = cat.run(async move {
            let id = match mode {
                OpenMode::Owner => {
                    // The owner lock first: a second owner is refused before anything is written.
                    let mut w = inner.writer.lock().await;
                    inner.connect_writer(&mut w).await?;
                    let mut client = inner.connect().await?;
                    migrate(&mut client, MIGRATIONS).await?
                }
                OpenMode::Shared | OpenMode::ReadOnly => {
                    let client = inner.pool.get().await.map_err(pool_error)?;
                    check_version(&**client).await?
                }
            };
            Ok(id)
        })?;
        Ok(cat)
    }

    /// The schema version this binary writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The catalog's id (made when it was created; the data dir records it).
    pub fn catalog_id(&self) -> &str {
        &self.id
    }

    /// True when the catalog holds no rows yet (a data dir may be bound to it).
    pub fn is_empty(&self) -> Result<bool> {
        let inner = self.inner.clone();
        self.run(async move {
            let client = inner.pool.get().await.map_err(pool_error)?;
            Ok(client.query_one("SELECT NOT EXISTS (SELECT 1 FROM rows)", &[]).await?.get(0))
        })
    }

    /// Where it is, without the password (for logs and messages).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Run `fut` on the catalog's runtime and wait for it, bounded by [`CALL_TIMEOUT`].
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let Some(rt) = &self.runtime else {
            return Err(CatalogError::Closed);
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = tokio::time::timeout(CALL_TIMEOUT, fut).await.unwrap_or(Err(CatalogError::Timeout(CALL_TIMEOUT)));
            let _ = tx.send(r);
        });
        // The task answers within CALL_TIMEOUT; the margin covers scheduling.
        blocking(|| rx.recv_timeout(CALL_TIMEOUT + Duration::from_secs(5)))
            .unwrap_or(Err(CatalogError::Timeout(CALL_TIMEOUT)))
    }

    fn check_poison(&self) -> Result<()> {
        self.inner.check_poison()
    }

    /// Record `node_id` as the cluster's leader, bound to the writer's session (the one holding the
    /// owner lock): the record names a live leader only while that session holds the lock, so a
    /// stale record is never followed ([`Membership::leader`]).
    pub fn claim_leadership(&self, node_id: &str) -> Result<()> {
        let inner = self.inner.clone();
        let node_id = node_id.to_string();
        self.run(async move {
            let w = inner.writer.lock().await;
            inner.check_poison()?;
            let Some(conn) = w.client.as_ref() else { return Err(CatalogError::Closed) };
            conn.client
                .execute(
                    "INSERT INTO cluster_leader (one, node_id, pid, backend_start, since)
                     VALUES (true, $1, $2, $3, now())
                     ON CONFLICT (one) DO UPDATE SET node_id = $1, pid = $2, backend_start = $3, since = now()",
                    &[&node_id, &conn.ident.0, &conn.ident.1],
                )
                .await?;
            Ok(())
        })
    }

    /// The fence of a cluster's leader: fails (and poisons the catalog) unless the server proves,
    /// within `bound`, that the writer's session still holds the owner lock (`pg_locks`, asked on
    /// the fence's own connection). While it does, no other node can lead; without that proof
    /// another node may lead, and the caller stops serving as leader at once. The proof never
    /// waits for the writer: a commit stuck on a cut connection holds the writer for up to
    /// [`CALL_TIMEOUT`], longer than the server takes to drop a silent session and free the lock.
    pub fn check_fence(&self, bound: Duration) -> Result<()> {
        self.check_poison()?;
        let inner = self.inner.clone();
        self.run(async move {
            if let Ok(w) = inner.writer.try_lock()
                && w.client.as_ref().is_none_or(|c| c.client.is_closed())
            {
                return Err(inner.poison("the session holding the cluster's leadership ended".into()));
            }
            let Some((pid, start)) = inner.session.get().cloned() else {
                return Err(inner.poison("this catalog never held the cluster's leadership".into()));
            };
            match tokio::time::timeout(bound, inner.holds_owner_lock(pid, &start)).await {
                Ok(Ok(true)) => Ok(()),
                Ok(Ok(false)) => Err(inner.poison(format!(
                    "the session holding the cluster's leadership (server process {pid}) ended; another node may lead now"
                ))),
                Ok(Err(e)) => {
                    *inner.fence.lock().await = None;
                    Err(inner.poison(format!("the cluster's leadership could not be proven: {e}")))
                }
                Err(_) => Err(inner.poison(format!(
                    "the server did not confirm the cluster's leadership within {bound:?}"
                ))),
            }
        })
    }
}

/// The connection settings of `url` and the TLS connector (see [`needs_tls`]).
fn client_config(url: &str, mode: OpenMode) -> Result<(tokio_postgres::Config, MakeTlsConnector)> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| CatalogError::Config(format!("{}: {e}", redact(url))))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("blocksnap");
    }
    if mode == OpenMode::ReadOnly {
        config.options("-c default_transaction_read_only=on");
    }
    if needs_tls(url, &config) {
        config.ssl_mode(SslMode::Require);
    }
    let tls = {
        let builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
            .map_err(|e| CatalogError::Config(format!("TLS: {e}")))?;
        MakeTlsConnector::new(builder.build())
    };
    Ok((config, tls))
}

/// Secure by default: a catalog reached over TCP beyond loopback needs TLS (the server's certificate
/// checked against the system's CA store and the host name) unless the URL says otherwise with
/// `sslmode=` (`disable`, `prefer`). Unix sockets and loopback keep libpq's `prefer`.
fn needs_tls(url: &str, config: &tokio_postgres::Config) -> bool {
    if url.contains("sslmode=") {
        return false;
    }
    config.get_hosts().iter().any(|h| match h {
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            !(name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
        }
        #[allow(unreachable_patterns)]
        _ => false,
    })
}

/// Wait on this thread; on a worker of a multi-thread tokio runtime, hand its other tasks to
/// another worker first.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for PgCatalog {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is not allowed inside an async context
        // (the engine may be dropped there); the connections close with their tasks either way.
        if let Some(rt) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                // Outside: wait (briefly) for the connections to close, so the owner lock is
                // released when this returns.
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

impl Inner {
    fn check_poison(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(CatalogError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&self, why: String) -> CatalogError {
        tracing::error!(reason = %why, "the PostgreSQL catalog may have lost acknowledged-to-memory commits: every later call fails; restart blocksnap to reload the catalog");
        let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(why.clone());
        }
        CatalogError::Poisoned(why)
    }

    /// Whether the session `pid` started at `start` holds the owner lock now (the fence's proof).
    async fn holds_owner_lock(&self, pid: i32, start: &str) -> Result<bool> {
        let mut slot = self.fence.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect().await?);
        }
        let Some(client) = slot.as_ref() else { return Err(CatalogError::Closed) };
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                            WHERE {} AND l.pid = $2 AND a.backend_start::text = $3)",
            cluster::OWNER_LOCK_ROW
        );
        Ok(client.query_one(&sql, &[&OWNER_LOCK_KEY, &pid, &start]).await?.get(0))
    }

    /// A new connection driven by the catalog's runtime.
    async fn connect(&self) -> Result<Client> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "catalog connection ended");
            }
        });
        Ok(client)
    }

    /// (Re)connect the writer: asynchronous commits, the owner lock for the owner.
    async fn connect_writer(&self, w: &mut Writer) -> Result<()> {
        if w.client.as_ref().is_some_and(|c| !c.client.is_closed()) {
            return Ok(());
        }
        if w.client.take().is_some() {
            if self.fencing == Fencing::Cluster {
                return Err(
                    self.poison("the session holding the cluster's leadership ended; another node may lead now".into())
                );
            }
            // The old writer is gone: a commit made on it and not yet flushed may be lost.
            if w.last_commit > self.group.durable() {
                return Err(
                    self.poison("the connection to PostgreSQL broke before commits made on it were flushed".into())
                );
            }
            tracing::warn!("the catalog's writer connection broke; reconnecting");
        }
        let client = self.connect().await?;
        client.batch_execute("SET synchronous_commit = off").await?;
        if self.fencing == Fencing::Cluster {
            // A leader cut off from the server must lose its session (hence the lock) in seconds, not
            // after the kernel's two-hour keepalive default, so a follower can take over. Only
            // meaningful over TCP; the server ignores them on a unix socket.
            client
                .batch_execute(
                    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3",
                )
                .await?;
        }
        if self.mode == OpenMode::Owner {
            // A previous owner that just exited holds the lock until its server process sees the
            // closed socket: wait a moment (bounded) before calling the holder another owner.
            // A cluster's candidate does not wait: it polls on its own schedule.
            let wait = if self.fencing == Fencing::Cluster { Duration::ZERO } else { OWNER_WAIT };
            let deadline = tokio::time::Instant::now() + wait;
            let got = loop {
                let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK_KEY]).await?.get(0);
                if got || tokio::time::Instant::now() >= deadline {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if !got {
                let holder = client
                    .query_opt(
                        "SELECT a.pid, coalesce(host(a.client_addr), 'local'), a.application_name, a.backend_start::text
                         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.objid = ($1::bigint & 4294967295)::oid AND l.classid = ($1::bigint >> 32)::oid",
                        &[&OWNER_LOCK_KEY],
                    )
                    .await
                    .ok()
                    .flatten()
                    .map(|r| {
                        format!(
                            "server process {} for {} ({}), since {}",
                            r.get::<_, i32>(0),
                            r.get::<_, String>(1),
                            r.get::<_, String>(2),
                            r.get::<_, String>(3)
                        )
                    })
                    .unwrap_or_else(|| "holder not visible".into());
                if w.last_commit > 0 {
                    return Err(self.poison(format!("another blocksnap took over the catalog ({holder})")));
                }
                return Err(CatalogError::OwnerHeld(holder));
            }
        }
        let r = client
            .query_one("SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()", &[])
            .await?;
        let ident = (r.get::<_, i32>(0), r.get::<_, String>(1));
        if self.fencing == Fencing::Cluster {
            let _ = self.session.set(ident.clone());
        }
        w.client = Some(WriterConn { client, stmts: None, ident });
        Ok(())
    }

    async fn commit(&self, changes: Vec<Change>) -> Result<u64> {
        let mut w = self.writer.lock().await;
        self.check_poison()?;
        self.connect_writer(&mut w).await?;
        let Some(conn) = w.client.as_mut() else {
            return Err(CatalogError::Closed);
        };
        let (put, del) = match &conn.stmts {
            Some(s) => s.clone(),
            None => {
                let put = conn
                    .client
                    .prepare(
                        "INSERT INTO rows (kind, id, account, region, doc) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (kind, id) DO UPDATE SET account = $3, region = $4, doc = $5",
                    )
                    .await?;
                let del = conn.client.prepare("DELETE FROM rows WHERE kind = $1 AND id = $2").await?;
                conn.stmts = Some((put.clone(), del.clone()));
                (put, del)
            }
        };
        // One round trip: BEGIN, every change and COMMIT are pipelined (sent in this order before any
        // answer is read). A statement the server refuses aborts the transaction (its COMMIT then
        // rolls back): a definite failure. Without any refusal, a broken connection leaves the
        // outcome unknown while the engine treats the batch as not done: poisoned.
        let client = &conn.client;
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(changes.len() + 2);
        steps.push(Box::pin(async move { client.batch_execute("BEGIN").await.map(|()| 0) }));
        for c in &changes {
            let (put, del) = (&put, &del);
            steps.push(match c {
                Change::Put(r) => {
                    Box::pin(async move { client.execute(put, &[&r.kind, &r.id, &r.account, &r.region, &r.doc]).await })
                }
                Change::Delete { kind, id } => Box::pin(async move { client.execute(del, &[kind, id]).await }),
            });
        }
        steps.push(Box::pin(async move { client.batch_execute("COMMIT").await.map(|()| 0) }));
        let results = in_order(steps).await;
        if let Some(e) = results.iter().find_map(|r| r.as_ref().err().filter(|e| e.as_db_error().is_some())) {
            let e = e.to_string();
            // The transaction is over (rolled back by the COMMIT); nothing else to clean.
            return Err(CatalogError::Refused(e));
        }
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(self.poison(format!("a commit's outcome is unknown: {e}")));
        }
        // Numbered under the writer lock: sequence order is commit order.
        let seq = self.group.committed();
        w.last_commit = seq;
        Ok(seq)
    }

    /// Force a WAL flush covering every commit made so far on the writer, and prove the writer's server
    /// process (hence those commits) survived until then.
    async fn flush(&self) -> Result<()> {
        let ident = match self.writer.lock().await.client.as_ref() {
            Some(c) => c.ident.clone(),
            // Commits are only made on a writer; a broken one poisons at reconnect.
            None => return Ok(()),
        };
        let client = self.pool.get().await.map_err(pool_error)?;
        // One round trip (simple protocol, several statements). The ident is this server's own
        // output (an integer and a timestamp), quoted all the same.
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit = on;
             UPDATE blocksnap_flush SET n = n + 1 RETURNING EXISTS (
                 SELECT 1 FROM pg_stat_activity WHERE pid = {} AND backend_start::text = '{}');
             COMMIT;",
            ident.0,
            ident.1.replace('\'', "''")
        );
        let answers = client.simple_query(&sql).await?;
        let alive = answers.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        });
        match alive {
            Some(true) => Ok(()),
            Some(false) => Err(self.poison(format!(
                "the writer's server process {} ended before its commits were flushed (server restart or broken connection)",
                ident.0
            ))),
            None => Err(CatalogError::Config("the flush transaction returned no row".into())),
        }
    }
}

/// One pipelined statement of a commit.
type Step<'a> = std::pin::Pin<Box<dyn Future<Output = std::result::Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Drive `steps` together, each first polled in order (tokio-postgres sends a request when its future
/// is first polled, so the server receives them in this order), and return every result.
async fn in_order(mut steps: Vec<Step<'_>>) -> Vec<std::result::Result<u64, tokio_postgres::Error>> {
    let mut out: Vec<Option<std::result::Result<u64, tokio_postgres::Error>>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (step, slot) in steps.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match step.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *slot = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn pool_error(e: deadpool_postgres::PoolError) -> CatalogError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => CatalogError::Postgres(e),
        e => CatalogError::Config(format!("connection pool: {e}")),
    }
}

/// The URL without its password.
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{}{}:***{}", &url[..scheme_end + 3], &rest[..colon], &rest[at..]);
        }
        return url.to_string();
    }
    // key=value form
    url.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

fn row_from(r: &tokio_postgres::Row) -> Row {
    Row { kind: r.get(0), id: r.get(1), account: r.get(2), region: r.get(3), doc: r.get(4) }
}

impl Catalog for PgCatalog {
    fn load_kind(&self, kind: &str) -> Result<Vec<Row>> {
        let inner = self.inner.clone();
        let kind = kind.to_string();
        self.run(async move {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT kind, id, account, region, doc FROM rows WHERE kind = $1 ORDER BY id")
                .await?;
            Ok(client.query(&stmt, &[&kind]).await?.iter().map(row_from).collect())
        })
    }

    fn get(&self, kind: &str, id: &str) -> Result<Option<Row>> {
        let inner = self.inner.clone();
        let (kind, id) = (kind.to_string(), id.to_string());
        self.run(async move {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT kind, id, account, region, doc FROM rows WHERE kind = $1 AND id = $2")
                .await?;
            Ok(client.query_opt(&stmt, &[&kind, &id]).await?.as_ref().map(row_from))
        })
    }

    fn commit(&self, changes: &[Change]) -> Result<u64> {
        self.check_poison()?;
        if changes.is_empty() {
            return Ok(self.inner.group.last());
        }
        if self.inner.mode == OpenMode::ReadOnly {
            return Err(CatalogError::ReadOnly);
        }
        let inner = self.inner.clone();
        let changes = changes.to_vec();
        let r = self.run(async move { inner.commit(changes).await });
        if let Err(CatalogError::Timeout(_)) = &r {
            // The transaction may still commit after the engine gave up on it.
            return Err(self.inner.poison("a commit did not answer in time; its outcome is unknown".into()));
        }
        r
    }

    fn still_owner(&self) -> Result<()> {
        match self.inner.fencing {
            Fencing::Cluster => self.check_fence(OWNERSHIP_PROOF),
            Fencing::Single => self.check_poison(),
        }
    }

    fn sync(&self, upto: u64) -> Result<()> {
        self.check_poison()?;
        blocking(|| {
            let mut err = None;
            let r = self.inner.group.sync(upto, || {
                let inner = self.inner.clone();
                self.run(async move { inner.flush().await }).map_err(|e| {
                    let io = std::io::Error::other(e.to_string());
                    err = Some(e);
                    io
                })
            });
            match (r, err) {
                (Ok(()), _) => Ok(()),
                (Err(_), Some(e)) => Err(e),
                (Err(e), None) => Err(CatalogError::Io(e)),
            }
        })?;
        // A flush led by another caller may have found the writer gone.
        self.check_poison()
    }
}

#[cfg(test)]
mod tests;
