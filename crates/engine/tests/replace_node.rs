//! `--replace-node`: a node started again on a new data dir (its old one lost) marks the volumes
//! placed on it whose bytes are not in the new dir `lost`, durably, before it serves. A lost volume
//! is impaired, never attached, exported or snapshotted (no empty file stands in for its bytes),
//! deletable, and its snapshots restore as before.
//!
//! Run: `cargo test -p blocksnap-engine --test replace_node`

use std::path::Path;
use std::time::{Duration, Instant};

use blocksnap_catalog::{Catalog, Change, SqliteCatalog};
use blocksnap_engine::model::SnapshotState;
use blocksnap_engine::{CreateSnapshot, CreateVolume, DescribeSnapshots, EngineConfig, ListQuery, RunInstances};

const REGION: &str = "us-east-1";
const IMAGE: &str = "ami-0b5e4c3d2a1f00001";

mod common;
use common::Node;

/// Node 1 over the shared catalog and snapshot store, with its volumes in `volumes`; `replace`:
/// what `blocksnap serve --replace-node` does before serving.
fn open(dir: &Path, volumes: &str, replace: bool) -> (Node, Vec<String>) {
    let config = EngineConfig { node_id: Some("1".into()), ..EngineConfig::default() };
    let mut lost = Vec::new();
    let node = common::open_node_with(dir, volumes, config, "AKIDREPLACE", REGION, |engine| {
        if replace {
            lost = engine.mark_lost_volumes().unwrap();
        }
    });
    (node, lost)
}

fn new_volume(n: &Node, snapshot: Option<&str>) -> String {
    let req = CreateVolume {
        availability_zone: Some(format!("{REGION}a")),
        size: Some(1),
        snapshot_id: snapshot.map(str::to_string),
        ..Default::default()
    };
    n.engine.create_volume(&n.ctx, req).unwrap().id
}

fn snapshot_state(n: &Node, id: &str) -> SnapshotState {
    let q = DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
    n.engine.describe_snapshots(&n.ctx, &q).unwrap().items.into_iter().find(|s| s.id == id).unwrap().state
}

/// `(status, io-enabled)` of one volume.
fn status(n: &Node, id: &str) -> (&'static str, &'static str) {
    let q = ListQuery { ids: vec![id.to_string()], ..Default::default() };
    let s = n.engine.describe_volume_status(&n.ctx, &q).unwrap().items.remove(0);
    (s.status, s.details.iter().find(|d| d.0 == "io-enabled").unwrap().1)
}

fn assert_lost_refusal(r: blocksnap_engine::Result<impl std::fmt::Debug>, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), "IncorrectState", "{what}: {e}");
    assert!(e.to_string().contains("is lost"), "{what}: {e}");
}

#[test]
fn replaced_node_marks_its_volumes_lost() {
    let dir = tempfile::tempdir().unwrap();
    // Node 1 on its first data dir: a volume with data and a completed snapshot of it.
    let (n, lost) = open(dir.path(), "old", false);
    assert!(lost.is_empty());
    let vol = new_volume(&n, None);
    let n_vol = n.engine.run_instances(
        &n.ctx,
        RunInstances { image_id: Some(IMAGE.into()), min_count: Some(1), max_count: Some(1), ..Default::default() },
    );
    let inst = n_vol.unwrap().instances[0].instance.id.clone();
    let snap = n.engine.create_snapshot(&n.ctx, CreateSnapshot { volume_id: vol.clone(), ..Default::default() });
    let snap = snap.unwrap().id;
    n.engine.sync_pending().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_state(&n, &snap) != SnapshotState::Completed {
        assert!(Instant::now() < deadline, "{snap} never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&n, &vol), ("ok", "passed"));
    drop(n);
    // The node also died in the middle of an upload: a snapshot of the volume is still pending
    // (its frozen epoch and capture were in the dir now lost).
    let pending = "snap-0000000000000dead";
    {
        let catalog = SqliteCatalog::open(&dir.path().join("catalog.db")).unwrap();
        let mut row = catalog.get("snapshot", &snap).unwrap().unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&row.doc).unwrap();
        doc["id"] = pending.into();
        doc["state"] = "pending".into();
        doc["epoch"] = 7.into();
        (row.id, row.doc) = (pending.to_string(), doc.to_string());
        let seq = catalog.commit(&[Change::Put(row)]).unwrap();
        catalog.sync(seq).unwrap();
    }

    // That data dir is lost; node 1 starts on a new one with --replace-node.
    let (n, lost) = open(dir.path(), "new", true);
    assert!(lost.contains(&vol), "{lost:?}");
    // Its pending snapshot ended in error in the same commit: no node can ever finish it.
    assert_eq!(snapshot_state(&n, pending), SnapshotState::Error);
    assert_eq!(status(&n, &vol), ("impaired", "failed"));
    let attach = n.engine.attach_volume(&n.ctx, &vol, &inst, "/dev/sdf", false);
    assert_lost_refusal(attach, "attaching a lost volume");
    let cut = n.engine.create_snapshot(&n.ctx, CreateSnapshot { volume_id: vol.clone(), ..Default::default() });
    assert_lost_refusal(cut, "snapshotting a lost volume");
    // No empty file is made for it (an export or an attachment would open it this way).
    assert!(!dir.path().join("new").join("vols").join(vol.as_str()).exists());
    // A new volume on the new dir is fine, and the lost one's snapshot restores.
    let fresh = new_volume(&n, None);
    assert_eq!(status(&n, &fresh), ("ok", "passed"));
    let restored = new_volume(&n, Some(&snap));
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&n, &restored).0 != "ok" {
        assert!(Instant::now() < deadline, "{restored} never became available");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(n);

    // Durable: a restart (not the first on this dir, so `serve` marks nothing) still knows.
    let (n, _) = open(dir.path(), "new", false);
    assert_eq!(status(&n, &vol), ("impaired", "failed"));
    assert_eq!(status(&n, &fresh), ("ok", "passed"));
    n.engine.delete_volume(&n.ctx, &vol, false).unwrap();
    let left: Vec<String> =
        n.engine.describe_volumes(&n.ctx, &ListQuery::default()).unwrap().items.into_iter().map(|v| v.id).collect();
    assert!(!left.contains(&vol), "{left:?}");
}
