//! Several nodes: a leader that lost the leadership removes nothing that only the catalog's owner
//! may judge orphaned. Its memory lacks the rows the new leader made, so a manifest of the new
//! leader's snapshot looks like a deleted snapshot's to it; it must prove it still leads first.
//!
//! Against a real PostgreSQL server: `BLOCKSNAP_TEST_PG` (tests/run starts a throwaway one). Without
//! it this test fails: it never skips.

use std::sync::Arc;

use blocksnap_catalog::{OWNER_LOCK_KEY, PgCatalog};
use blocksnap_engine::{Engine, EngineConfig, Storage};
use tokio_postgres::NoTls;

const REGION: &str = "us-east-1";

fn admin_url() -> String {
    std::env::var("BLOCKSNAP_TEST_PG")
        .unwrap_or_else(|_| panic!("BLOCKSNAP_TEST_PG is not set: run tests/run, or `. tests/pg.sh && pg_start`"))
}

/// Run `q` on `url`; the first column of its rows, as text.
fn sql(url: &str, q: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (client, conn) = url.parse::<tokio_postgres::Config>().unwrap().connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        let answers = client.simple_query(q).await.unwrap();
        answers
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect()
    })
}

/// The server processes holding the owner lock of `url`'s database.
const OWNER_LOCK_HOLDERS: &str = "FROM pg_locks WHERE locktype = 'advisory' AND granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// A new empty database on the test server; its URL.
fn fresh_db() -> String {
    let name = format!("gc_{:016x}", std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 1));
    sql(&admin_url(), &format!("CREATE DATABASE {name}"));
    let base = admin_url();
    let (head, query) = base.split_once('?').map_or((base.as_str(), String::new()), |(h, q)| (h, format!("?{q}")));
    let cut = head.rfind('/').expect("a URL with a database path");
    format!("{}/{name}{query}", &head[..cut])
}

#[test]
fn a_deposed_leader_removes_no_manifest() {
    let url = fresh_db();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let volumes = blocksnap_volume::VolumeStore::open(dir.path().join("volumes")).unwrap();
    let storage = Storage {
        volumes: Arc::new(volumes),
        snapshot_root: dir.path().join("snapshots"),
        runtime: runtime.handle().clone(),
    };
    let pg = Arc::new(PgCatalog::open_candidate(&url).unwrap().expect("the only candidate leads"));
    let config = EngineConfig { node_id: Some("1".into()), ..EngineConfig::default() };
    let engine = Arc::new(Engine::open(pg.clone(), config, Some(storage)).unwrap());
    let grace = std::time::Duration::from_secs(3600);
    // Leading: a sweep runs (and opens the region's store).
    runtime.block_on(engine.gc_region(REGION, grace)).unwrap();

    // Another node leads now (this one's session ended) and made a snapshot this memory lacks.
    let manifest = dir.path().join("snapshots").join(REGION).join("snaps/snap-0a1b2c3d4e5f60718.manifest");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, b"the new leader's snapshot").unwrap();
    let holder = format!("{OWNER_LOCK_HOLDERS} AND objid = ({OWNER_LOCK_KEY}::bigint & 4294967295)::oid");
    assert_eq!(sql(&url, &format!("SELECT pg_terminate_backend(pid) {holder}")), ["t"]);
    // The lock is free once that server process has exited (another node could take it now).
    let started = std::time::Instant::now();
    while !sql(&url, &format!("SELECT pid {holder}")).is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the session never ended");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = runtime.block_on(engine.gc_region(REGION, grace)).expect_err("a deposed leader swept the store");
    assert!(e.to_string().contains("may no longer own the catalog"), "{e}");
    assert!(manifest.exists(), "a deposed leader removed a manifest it did not know");
}
