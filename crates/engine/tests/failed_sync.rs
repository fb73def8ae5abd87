//! A snapshot that fails while the catalog cannot make commits durable keeps what it holds: an EBS
//! direct snapshot that times out keeps its block log until its `error` row is durable (here: until
//! a restart settles it), so no crash can bring back a pending row whose written blocks are gone.
//!
//! Run: `cargo test -p blocksnap-engine --features failpoints --test failed_sync`

use std::path::Path;
use std::time::{Duration, Instant};

use blocksnap_engine::ebs::StartSnapshot;
use blocksnap_engine::model::SnapshotState;
use blocksnap_engine::{DescribeSnapshots, EngineConfig, ListQuery};

const REGION: &str = "us-east-1";

mod common;
use common::Node;

fn open(dir: &Path) -> Node {
    // A "minute" of 30 ms: the shortest timeout (10 minutes) passes in 0.3 s.
    let config = EngineConfig { direct_minute: Duration::from_millis(30), ..EngineConfig::default() };
    common::open_node(dir, "volumes", config, "AKIDFAILEDSYNC", REGION)
}

fn state(n: &Node, id: &str) -> Option<SnapshotState> {
    let q = DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
    n.engine.describe_snapshots(&n.ctx, &q).unwrap().items.into_iter().find(|s| s.id == id).map(|s| s.state)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_timed_out_direct_snapshot_keeps_its_block_log_until_its_error_row_is_durable() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let log_of = |id: &str| dir.path().join("direct-writes").join(format!("{id}.blocks"));
    let n = open(dir.path());
    let req = StartSnapshot { volume_size_gib: 1, timeout_minutes: Some(10), ..Default::default() };
    let id = n.engine.ebs_start_snapshot(&n.ctx, req).unwrap().id;
    n.engine.sync_pending().unwrap();
    assert!(log_of(&id).exists(), "StartSnapshot creates the block log");

    // From now on no commit becomes durable: the timeout's `error` row is committed, not synced.
    fail::cfg("engine.sync_pending", "return").unwrap();
    wait_for("the timeout's error row", || state(&n, &id) == Some(SnapshotState::Error));
    // Several expiry ticks later the log is still there (the row is not durable).
    std::thread::sleep(Duration::from_millis(500));
    assert!(log_of(&id).exists(), "the block log went before the error row was durable");
    fail::remove("engine.sync_pending");
    drop(n);

    // A restart reads the row the catalog has (`error`: committed to the WAL) and removes the log no
    // pending row owns.
    let n = open(dir.path());
    assert_eq!(state(&n, &id), Some(SnapshotState::Error));
    wait_for("the orphaned block log's removal", || !log_of(&id).exists());
    drop(n);
    scenario.teardown();
}
