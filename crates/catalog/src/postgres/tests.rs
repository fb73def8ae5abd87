//! Against a real PostgreSQL server: `BLOCKSNAP_TEST_PG` names a database whose user may create
//! databases and, for the crash test, run programs (`tests/run` starts a throwaway cluster as its
//! superuser through `tests/pg.sh`). Without it these tests fail: they never skip.

use super::*;
use tokio_postgres::NoTls;

#[test]
fn remote_catalogs_need_tls_unless_the_url_says_otherwise() {
    let needs = |url: &str| needs_tls(url, &url.parse().unwrap());
    assert!(needs("postgres://u:p@db.example:5432/blocksnap"));
    assert!(needs("postgres://u@10.0.0.7/blocksnap"));
    assert!(!needs("postgres://u@db.example/blocksnap?sslmode=disable"));
    assert!(!needs("postgres://u@db.example/blocksnap?sslmode=prefer"));
    assert!(!needs("postgres://u@localhost/blocksnap"));
    assert!(!needs("postgres://u@127.0.0.1:5432/blocksnap"));
    assert!(!needs("postgres://u@[::1]:5432/blocksnap"));
    assert!(!needs("postgresql:///blocksnap?host=/var/run/postgresql"));
    // Required TLS is really asked for: a server without it is refused.
    let (url, _shared) = fresh_db_locked();
    let sep = if url.contains('?') { '&' } else { '?' };
    match PgCatalog::open(&format!("{url}{sep}sslmode=require")) {
        Err(CatalogError::Postgres(e)) => assert!(e.to_string().contains("TLS"), "{e}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("sslmode=require connected without TLS"),
    }
}

fn admin_url() -> String {
    std::env::var("BLOCKSNAP_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "BLOCKSNAP_TEST_PG is not set: run tests/run, or start a throwaway cluster with \
             `. tests/pg.sh && pg_start` and rerun with the BLOCKSNAP_TEST_PG it exports"
        )
    })
}

/// The URL of `admin_url` with another database name.
fn url_for(db: &str) -> String {
    let base = admin_url();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let cut = head.rfind('/').expect("a URL with a database path");
    format!("{}/{db}{query}", &head[..cut])
}

fn admin<T>(f: impl AsyncFnOnce(&Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg: tokio_postgres::Config = admin_url().parse().unwrap();
        let (client, conn) = cfg.connect(NoTls).await.expect("connecting to BLOCKSNAP_TEST_PG");
        tokio::spawn(conn);
        f(&client).await
    })
}

/// The crash test restarts every session of the server: it runs alone.
static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A new empty database; returns its URL. Tests hold `_shared` while they use the server.
fn fresh_db_locked() -> (String, std::sync::RwLockReadGuard<'static, ()>) {
    let guard = SERVER.read().unwrap_or_else(|p| p.into_inner());
    (fresh_db(), guard)
}

fn fresh_db() -> String {
    let name = format!(
        "cat_{:016x}",
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), std::time::SystemTime::now())
    );
    admin(async |c| c.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap());
    url_for(&name)
}

fn db_sql<T>(url: &str, f: impl AsyncFnOnce(&Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let (client, conn) = cfg.connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        f(&client).await
    })
}

fn row(id: &str, doc: &str) -> Row {
    Row { kind: "volume".into(), id: id.into(), account: "1".into(), region: "r".into(), doc: doc.into() }
}

fn flushes(url: &str) -> i64 {
    db_sql(url, async |c| c.query_one("SELECT n FROM blocksnap_flush", &[]).await.unwrap().get(0))
}

#[test]
fn batch_is_atomic_and_persistent() {
    let (url, _shared) = fresh_db_locked();
    {
        let c = PgCatalog::open(&url).unwrap();
        c.commit(&[Change::Put(row("b", "2")), Change::Put(row("a", "1"))]).unwrap();
        let s =
            c.commit(&[Change::Put(row("a", "3")), Change::Delete { kind: "volume".into(), id: "b".into() }]).unwrap();
        c.sync(s).unwrap();
        // A batch that fails halfway leaves nothing (a NUL byte is not valid text in PostgreSQL).
        let r = c.commit(&[Change::Put(row("c", "4")), Change::Put(row("d", "\0"))]);
        assert!(matches!(r, Err(CatalogError::Refused(_))), "{r:?}");
        assert_eq!(c.get("volume", "c").unwrap(), None);
        // A refusal is definite: the writer goes on.
        let s = c.commit(&[Change::Put(row("e", "5"))]).unwrap();
        c.sync(s).unwrap();
        c.commit(&[Change::Delete { kind: "volume".into(), id: "e".into() }]).unwrap();
    }
    let c = reopen_owner(&url);
    assert_eq!(c.load_kind("volume").unwrap(), vec![row("a", "3")]);
    assert_eq!(c.get("volume", "b").unwrap(), None);
    assert_eq!(c.get("volume", "a").unwrap(), Some(row("a", "3")));
}

#[test]
fn ids_sort_by_bytes() {
    let (url, _shared) = fresh_db_locked();
    let c = PgCatalog::open(&url).unwrap();
    let ids = ["b", "B", "a-1", "a_1", "a", "vol-0f", "vol-0F"];
    let s = c.commit(&ids.iter().map(|i| Change::Put(row(i, "{}"))).collect::<Vec<_>>()).unwrap();
    c.sync(s).unwrap();
    let mut want: Vec<&str> = ids.to_vec();
    want.sort();
    let got: Vec<String> = c.load_kind("volume").unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(got, want);
}

#[test]
fn migrations_create_upgrade_and_refuse_newer() {
    let (url, _shared) = fresh_db_locked();
    // Non-owners never create.
    assert!(matches!(PgCatalog::open_mode(&url, OpenMode::Shared), Err(CatalogError::NeedsUpgrade { found: 0, .. })));
    assert!(matches!(PgCatalog::open_mode(&url, OpenMode::ReadOnly), Err(CatalogError::NeedsUpgrade { found: 0, .. })));
    let id = {
        let c = PgCatalog::open(&url).unwrap();
        let s = c.commit(&[Change::Put(row("a", "1"))]).unwrap();
        c.sync(s).unwrap();
        c.catalog_id().to_string()
    };
    assert_eq!(id.len(), 36, "a UUID");
    // A later migration that fails halfway: nothing of it stays, the version is unchanged.
    let version = |url: &str| -> i32 {
        db_sql(url, async |c| c.query_one("SELECT version FROM blocksnap_schema", &[]).await.unwrap().get(0))
    };
    let current = MIGRATIONS.len() as i32;
    assert_eq!(version(&url), current);
    let broken = [MIGRATIONS, &["CREATE TABLE extra (x text); INSERT INTO nowhere VALUES (1);"]].concat();
    let good = [MIGRATIONS, &["ALTER TABLE rows ADD COLUMN note text NOT NULL DEFAULT '';"]].concat();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        let (mut client, conn) = cfg.connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        assert!(migrate(&mut client, &broken).await.is_err());
        let extra: bool = client.query_one("SELECT to_regclass('extra') IS NOT NULL", &[]).await.unwrap().get(0);
        assert!(!extra, "a failed upgrade left part of itself");
        let v: i32 = client.query_one("SELECT version FROM blocksnap_schema", &[]).await.unwrap().get(0);
        assert_eq!(v, current);
        // A good one: applied once, rows and id kept.
        assert_eq!(migrate(&mut client, &good).await.unwrap(), id);
        assert_eq!(migrate(&mut client, &good).await.unwrap(), id);
    });
    drop(rt);
    assert_eq!(version(&url), current + 1);
    // This binary now refuses it in every mode, and writes nothing.
    for mode in [OpenMode::Owner, OpenMode::Shared, OpenMode::ReadOnly] {
        let r = PgCatalog::open_mode(&url, mode);
        let newer = i64::from(current + 1);
        assert!(
            matches!(r, Err(CatalogError::TooNew { found, supported }) if found == newer && supported == newer - 1),
            "{mode:?}: {:?}",
            r.err()
        );
    }
    assert_eq!(version(&url), current + 1);
    let doc: String =
        db_sql(&url, async |c| c.query_one("SELECT doc FROM rows WHERE id = 'a'", &[]).await.unwrap().get(0));
    assert_eq!(doc, "1");
}

#[test]
fn one_owner_per_database() {
    let (url, _shared) = fresh_db_locked();
    let owner = PgCatalog::open(&url).unwrap();
    match PgCatalog::open(&url) {
        Err(CatalogError::OwnerHeld(holder)) => assert!(holder.contains("blocksnap"), "{holder}"),
        Err(e) => panic!("second owner: unexpected error {e}"),
        Ok(_) => panic!("a second owner of one database was accepted"),
    }
    // Writers beside the owner (admin commands) and readers are fine.
    let shared = PgCatalog::open_mode(&url, OpenMode::Shared).unwrap();
    let s = shared.commit(&[Change::Put(row("x", "1"))]).unwrap();
    shared.sync(s).unwrap();
    assert_eq!(owner.get("volume", "x").unwrap(), Some(row("x", "1")));
    let ro = PgCatalog::open_mode(&url, OpenMode::ReadOnly).unwrap();
    assert!(matches!(ro.commit(&[Change::Put(row("y", "1"))]), Err(CatalogError::ReadOnly)));
    assert_eq!(ro.load_kind("volume").unwrap().len(), 1);
    // The owner gone (its session ends with it), the next one gets in.
    drop(owner);
    reopen_owner(&url);
}

/// Open as owner once the previous owner's session (closed in the background) is gone.
fn reopen_owner(url: &str) -> PgCatalog {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match PgCatalog::open(url) {
            Ok(c) => return c,
            Err(CatalogError::OwnerHeld(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("owner after the previous one ended: {e}"),
        }
    }
}

#[test]
fn one_flush_covers_every_commit_before_it() {
    let (url, _shared) = fresh_db_locked();
    let c = PgCatalog::open(&url).unwrap();
    let before = flushes(&url);
    let seqs: Vec<u64> = (0..3).map(|i| c.commit(&[Change::Put(row(&i.to_string(), "{}"))]).unwrap()).collect();
    c.sync(seqs[2]).unwrap();
    assert_eq!(flushes(&url), before + 1);
    // Already durable: no more flushes.
    c.sync(seqs[0]).unwrap();
    c.sync(seqs[1]).unwrap();
    assert_eq!(flushes(&url), before + 1);
}

#[test]
fn concurrent_committers_share_flushes() {
    let (url, _shared) = fresh_db_locked();
    let c = Arc::new(PgCatalog::open(&url).unwrap());
    let before = flushes(&url);
    let (threads, each) = (8, 25);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..each {
                    let s = c.commit(&[Change::Put(row(&format!("{t}-{i}"), "{}"))]).unwrap();
                    c.sync(s).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let used = flushes(&url) - before;
    assert!(used >= 1 && used <= (threads * each) as i64, "{used} flushes");
    drop(c);
    let c = reopen_owner(&url);
    assert_eq!(c.load_kind("volume").unwrap().len(), threads * each);
}

/// Called from inside async tasks of a multi-thread runtime (the engine does so for key reads and
/// job steps): no panic, no deadlock; dropped inside one too.
#[test]
fn usable_and_droppable_inside_a_runtime() {
    let (url, _shared) = fresh_db_locked();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let c = Arc::new(PgCatalog::open(&url).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let s = c.commit(&[Change::Put(row(&i.to_string(), "{}"))]).unwrap();
                    c.sync(s).unwrap();
                    c.get("volume", &i.to_string()).unwrap().unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(c.load_kind("volume").unwrap().len(), 4);
        drop(c);
    });
}

/// A server crash (a backend killed with SIGKILL: the server ends every session and replays its
/// WAL) after durable commits keeps them; commits not yet flushed poison the catalog (their fate
/// is unknown), and a catalog that saw no unflushed commit reconnects.
#[test]
fn durable_across_a_server_crash_and_poisoned_on_unflushed_loss() {
    let _alone = SERVER.write().unwrap_or_else(|p| p.into_inner());
    let url = fresh_db();
    let crash = |url: &str, pid: i32| {
        db_sql(url, async |c| {
            // A checkpoint first keeps the replay short (the server may hold many test databases).
            // Then SIGKILL from the server's OS user: the server restarts every session.
            c.batch_execute("CHECKPOINT").await.unwrap();
            let _ = c.batch_execute(&format!("COPY (SELECT 1) TO PROGRAM 'kill -9 {pid}'")).await;
        });
        // Wait for the crash recovery to finish: the server answers and the victim's entry is gone
        // (right after the kill the server may still answer as if nothing happened).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let up = rt.block_on(async {
                let cfg: tokio_postgres::Config = url.parse().unwrap();
                match cfg.connect(NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        c.query_one("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", &[&pid])
                            .await
                            .is_ok_and(|r| r.get::<_, bool>(0))
                    }
                    Err(_) => false,
                }
            });
            if up {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let writer_pid = |c: &PgCatalog| -> i32 {
        let inner = c.inner.clone();
        c.run(async move { Ok(inner.writer.lock().await.client.as_ref().map(|w| w.ident.0).unwrap_or(0)) }).unwrap()
    };
    // 1. Durable commits survive; the catalog had nothing unflushed, so it carries on.
    let c = PgCatalog::open(&url).unwrap();
    let s = c.commit(&[Change::Put(row("kept", "1"))]).unwrap();
    c.sync(s).unwrap();
    crash(&url, writer_pid(&c));
    let mut ok = false;
    for _ in 0..20 {
        // The first call may meet a connection the crash broke.
        if let Ok(s) = c.commit(&[Change::Put(row("after", "1"))]) {
            c.sync(s).unwrap();
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the catalog did not reconnect after a crash with nothing unflushed");
    drop(c);
    let c = reopen_owner(&url);
    assert_eq!(c.get("volume", "kept").unwrap(), Some(row("kept", "1")));
    assert_eq!(c.get("volume", "after").unwrap(), Some(row("after", "1")));
    // 2. A commit not yet flushed when the server crashes: never reported durable.
    let s = c.commit(&[Change::Put(row("maybe", "1"))]).unwrap();
    crash(&url, writer_pid(&c));
    let mut last = None;
    for _ in 0..3 {
        match c.sync(s) {
            Ok(()) => panic!("a commit made before the crash was reported durable"),
            Err(e) => last = Some(e),
        }
    }
    assert!(matches!(last, Some(CatalogError::Poisoned(_))), "{last:?}");
    assert!(matches!(c.commit(&[Change::Put(row("no", "1"))]), Err(CatalogError::Poisoned(_))));
    drop(c);
    // A restart reloads whatever the server kept.
    let c = reopen_owner(&url);
    assert_eq!(c.get("volume", "kept").unwrap(), Some(row("kept", "1")));
    assert_eq!(c.get("volume", "no").unwrap(), None);
}

/// Several nodes: one candidate wins the owner lock, the others get `None` without waiting; the
/// leader record is believed only while its session holds the lock; a leader whose session ends is
/// fenced (poisoned, no reconnect, no commit) and a candidate takes over.
#[test]
fn cluster_election_claim_and_fence() {
    let (url, _shared) = fresh_db_locked();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let members = rt.block_on(async { Membership::new(&url).unwrap() });
    let node = |id: &str| NodeRecord {
        id: id.into(),
        advertise_api: format!("http://{id}:4566"),
        nbd: format!("{id}:10809"),
        zones: vec!["us-east-1a".into()],
        free_bytes: 1 << 30,
        dir_id: format!("dir-of-{id}"),
    };
    let first = PgCatalog::open_candidate(&url).unwrap().expect("the first candidate leads");
    let started = std::time::Instant::now();
    assert!(PgCatalog::open_candidate(&url).unwrap().is_none());
    assert!(started.elapsed() < OWNER_WAIT, "a candidate does not wait for the lock");
    rt.block_on(async {
        for n in ["n1", "n2"] {
            members.heartbeat(&node(n), std::time::SystemTime::now(), None).await.unwrap().unwrap();
        }
        assert!(members.owner_lock_held().await.unwrap());
        // Holding the lock is not yet leading: nobody has claimed it.
        assert_eq!(members.leader().await.unwrap(), None);
    });
    first.claim_leadership("n1").unwrap();
    first.check_fence(Duration::from_secs(2)).unwrap();
    let leader = rt.block_on(members.leader()).unwrap();
    assert_eq!(leader, Some(Leader { node_id: "n1".into(), advertise_api: "http://n1:4566".into() }));
    let nodes = rt.block_on(members.nodes()).unwrap();
    assert_eq!(nodes.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), vec![node("n1"), node("n2")]);
    let s = first.commit(&[Change::Put(row("a", "1"))]).unwrap();
    first.sync(s).unwrap();

    // The leader's session ends (a network cut, an administrator): its record names nobody, a
    // candidate takes the lock, and the old leader is fenced for good.
    let pid = first.inner.writer.try_lock().unwrap().client.as_ref().unwrap().ident.0;
    admin(async |c| c.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap());
    let second = loop {
        if let Some(c) = PgCatalog::open_candidate(&url).unwrap() {
            break c;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the lock was never released");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(rt.block_on(members.leader()).unwrap(), None, "a dead session's record is not believed");
    second.claim_leadership("n2").unwrap();
    assert_eq!(rt.block_on(members.leader()).unwrap().map(|l| l.node_id), Some("n2".into()));
    assert!(matches!(first.check_fence(Duration::from_secs(2)), Err(CatalogError::Poisoned(_))));
    assert!(matches!(first.commit(&[Change::Put(row("b", "2"))]), Err(CatalogError::Poisoned(_))));
    let s = second.commit(&[Change::Put(row("c", "3"))]).unwrap();
    second.sync(s).unwrap();
    assert_eq!(second.get("volume", "b").unwrap(), None);
    assert_eq!(second.load_kind("volume").unwrap().len(), 2);
}

/// One node id, two data dirs: the second process's heartbeat writes nothing and names the row's
/// data dir while that heartbeat is fresh, even with a replace; once it is stale, only an explicit
/// replace takes the row over.
#[test]
fn node_row_belongs_to_one_data_dir() {
    let (url, _shared) = fresh_db_locked();
    let owner = PgCatalog::open_candidate(&url).unwrap().expect("migrates the schema");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let members = rt.block_on(async { Membership::new(&url).unwrap() });
    let record = |dir: &str| NodeRecord {
        id: "7".into(),
        advertise_api: "http://a:4566".into(),
        nbd: "a:10809".into(),
        zones: vec![],
        free_bytes: 0,
        dir_id: dir.into(),
    };
    let now = std::time::SystemTime::now;
    let hour = Some(Duration::from_secs(3600));
    rt.block_on(async {
        members.heartbeat(&record("A"), now(), None).await.unwrap().unwrap();
        members.heartbeat(&record("A"), now(), None).await.unwrap().unwrap();
        // Fresh (well under an hour): refused, replace or not.
        for replace in [None, hour] {
            let taken = members.heartbeat(&record("B"), now(), replace).await.unwrap().unwrap_err();
            assert_eq!(taken.dir_id, "A");
        }
        let nodes = members.nodes().await.unwrap();
        assert_eq!(nodes[0].0.dir_id, "A", "the refused heartbeat wrote");
        // Stale (older than the bound): refused without a replace, taken over with one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = members.heartbeat(&record("B"), now(), None).await.unwrap().unwrap_err();
        assert_eq!(taken.dir_id, "A");
        members.heartbeat(&record("B"), now(), Some(Duration::from_millis(10))).await.unwrap().unwrap();
        assert_eq!(members.nodes().await.unwrap()[0].0.dir_id, "B");
        // The old dir is refused now.
        assert_eq!(members.heartbeat(&record("A"), now(), None).await.unwrap().unwrap_err().dir_id, "B");
    });
    drop(owner);
}

/// A TCP proxy to the test server that can be frozen: while frozen it reads but forwards nothing
/// (a network cut that leaves both sockets open).
struct Cut {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl Cut {
    fn start() -> Cut {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let cfg: tokio_postgres::Config = admin_url().parse().unwrap();
        let (host, port) = (cfg.get_hosts()[0].clone(), cfg.get_ports().first().copied().unwrap_or(5432));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let cut = Cut { port: listener.local_addr().unwrap().port(), frozen: frozen.clone() };
        type Stream = Box<dyn FnMut(&mut [u8]) -> std::io::Result<usize> + Send>;
        type Sink = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send>;
        let pump = move |mut from: Stream, mut to: Sink, frozen: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = from(&mut buf) {
                    while frozen.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if to(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let client = client.unwrap();
                let (c1, mut c2) = (client.try_clone().unwrap(), client);
                let (from_server, to_server): (Stream, Sink) = match &host {
                    Host::Unix(dir) => {
                        let s = std::os::unix::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).unwrap();
                        let (mut r, mut w) = (s.try_clone().unwrap(), s);
                        (Box::new(move |b| r.read(b)), Box::new(move |b| w.write_all(b)))
                    }
                    Host::Tcp(h) => {
                        let s = std::net::TcpStream::connect((h.as_str(), port)).unwrap();
                        let (mut r, mut w) = (s.try_clone().unwrap(), s);
                        (Box::new(move |b| r.read(b)), Box::new(move |b| w.write_all(b)))
                    }
                };
                let mut c1 = c1;
                pump(Box::new(move |b| c1.read(b)), to_server, frozen.clone());
                pump(from_server, Box::new(move |b| c2.write_all(b)), frozen.clone());
            }
        });
        cut
    }

    /// `url` (a database of the test server) through this proxy.
    fn url(&self, url: &str) -> String {
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        format!(
            "postgresql://{}@127.0.0.1:{}/{}?sslmode=disable",
            cfg.get_user().unwrap_or("postgres"),
            self.port,
            cfg.get_dbname().unwrap()
        )
    }
}

/// A leader cut off from the server while a commit is in flight: the commit holds the writer for
/// up to CALL_TIMEOUT, longer than the server takes to drop the silent session and let another
/// node lead. The fence must still stop this leader within its bound: it asks the server for proof
/// of the leadership, and a server that does not answer is no proof.
#[test]
fn cluster_fence_is_bounded_while_a_commit_hangs() {
    let (url, _shared) = fresh_db_locked();
    let cut = Cut::start();
    let leader = Arc::new(PgCatalog::open_candidate(&cut.url(&url)).unwrap().expect("the only candidate leads"));
    leader.claim_leadership("n1").unwrap();
    leader.check_fence(Duration::from_secs(2)).unwrap();
    cut.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let committer = {
        let leader = leader.clone();
        std::thread::spawn(move || leader.commit(&[Change::Put(row("a", "1"))]))
    };
    // The commit now holds the writer, waiting for an answer that does not come.
    let started = std::time::Instant::now();
    while leader.inner.writer.try_lock().is_ok() {
        assert!(started.elapsed() < Duration::from_secs(10), "the commit never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let fenced = leader.check_fence(Duration::from_secs(1));
    assert!(matches!(fenced, Err(CatalogError::Poisoned(_))), "an unproven leader was not fenced: {fenced:?}");
    cut.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = committer.join().unwrap();
    assert!(matches!(leader.commit(&[Change::Put(row("b", "2"))]), Err(CatalogError::Poisoned(_))));
}
