//! The archive tier restarts consistent: a process killed at each step of an archival or a restore
//! (archive written but row not committed; row committed but manifest not dropped; blocks restored but
//! row not committed; permanent restore committed but archive not removed) restarts, resumes or
//! cleans up, and ends with the snapshot where its row says, nothing orphaned, `verify` clean.
//!
//! Each case runs in a child process (this test binary re-executed with `CHILD_ENV`) whose failpoint
//! exits the process on the spot; the parent reopens the data dir as `blocksnap serve` starts.
//!
//! Run: `cargo test -p blocksnap-engine --features failpoints --test archive_crash`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blocksnap_engine::archive::TieringStatus;
use blocksnap_engine::model::{Snapshot, SnapshotState};
use blocksnap_engine::{CreateSnapshot, DescribeSnapshots, EngineConfig, ListQuery, RunInstances};

mod common;

const CHILD_ENV: &str = "BLOCKSNAP_ARCHIVE_CRASH_CHILD";
const CRASH_CODE: i32 = 17;
const REGION: &str = "us-east-1";
const IMAGE: &str = "ami-0b5e4c3d2a1f00001";

use common::Node;

fn open(dir: &Path) -> Node {
    common::open_node(dir, "volumes", EngineConfig::default(), "AKIDARCHIVE", REGION)
}

fn row(n: &Node, id: &str) -> Snapshot {
    let q = DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
    n.engine.describe_snapshots(&n.ctx, &q).unwrap().items.into_iter().find(|s| s.id == id).unwrap()
}

fn wait_for(n: &Node, id: &str, what: &str, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = row(n, id);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{id}: not {what} after 60 s: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(s: &Snapshot) -> Option<TieringStatus> {
    s.tiering.as_ref().map(|t| t.status)
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..1_048_576u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8).collect()
}

/// A completed snapshot of a volume holding `pattern(seed)` at offset 0.
fn snapshot_with_data(n: &Node, seed: u8) -> String {
    let req =
        RunInstances { image_id: Some(IMAGE.into()), min_count: Some(1), max_count: Some(1), ..Default::default() };
    let r = n.engine.run_instances(&n.ctx, req).unwrap();
    n.engine.sync_pending().unwrap();
    let vol = r.instances[0].block_devices[0].1.clone();
    let v = n.engine.attached_volume(&vol).unwrap();
    v.write_at(0, &pattern(seed), true).unwrap();
    v.flush().unwrap();
    let id = n.engine.create_snapshot(&n.ctx, CreateSnapshot { volume_id: vol, ..Default::default() }).unwrap().id;
    n.engine.sync_pending().unwrap();
    wait_for(n, &id, "completed", |s| s.state == SnapshotState::Completed);
    id
}

fn archive(n: &Node, id: &str) {
    n.engine.modify_snapshot_tier(&n.ctx, id, Some("archive"), false).unwrap();
    wait_for(n, id, "archived", |s| status(s) == Some(TieringStatus::ArchivalCompleted));
}

fn manifest(dir: &Path, id: &str) -> PathBuf {
    dir.join("snapshots").join(REGION).join("snaps").join(format!("{id}.manifest"))
}

fn archive_index(dir: &Path, id: &str) -> PathBuf {
    dir.join("archive").join(REGION).join(id).join("index")
}

fn chunks(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
            .unwrap_or(0)
    }
    walk(&dir.join("snapshots").join(REGION).join("chunks"))
}

/// GC (no grace), then every snapshot and archive verified.
fn gc_and_verify(n: &Node) {
    n.runtime.block_on(n.engine.gc_region(REGION, Duration::ZERO)).unwrap();
    let reports = n.runtime.block_on(n.engine.verify_snapshots(REGION)).unwrap();
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(r.is_ok(), "{r:?}");
    }
}

/// The snapshot's bytes, through a volume made from it.
fn read_snapshot(n: &Node, id: &str) -> Vec<u8> {
    let reader = n.engine.snapshot_reader(id).expect("the snapshot is readable");
    let mut buf = vec![0u8; 1_048_576];
    reader.read_at(0, &mut buf).unwrap();
    buf
}

fn crash_child(case: &str, dir: &Path, arg: &str) -> i32 {
    common::run_child(CHILD_ENV, CRASH_CODE, format!("{case}|{}|{arg}", dir.display()))
}

/// The child: arm the failpoint to exit the process, start the step, wait for the crash.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.splitn(3, '|');
    let (case, dir, id) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let n = open(Path::new(dir));
    let exit = || std::process::exit(CRASH_CODE);
    fail::cfg_callback(case, exit).unwrap();
    match case {
        "archive.before_commit" | "archive.before_drop_manifest" => {
            n.engine.modify_snapshot_tier(&n.ctx, id, Some("archive"), false).unwrap();
        }
        "archive.restore_before_commit" => {
            n.engine.restore_snapshot_tier(&n.ctx, id, Some(2), None, false).unwrap();
        }
        "archive.before_remove" => {
            n.engine.restore_snapshot_tier(&n.ctx, id, None, Some(true), false).unwrap();
        }
        other => panic!("unknown case {other}"),
    }
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn killed_before_the_archival_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = snapshot_with_data(&open(dir), 1);
    assert_eq!(crash_child("archive.before_commit", dir, &id), CRASH_CODE);
    assert!(archive_index(dir, &id).exists() && manifest(dir, &id).exists());
    let n = open(dir);
    // The job resumes from the row, reuses the committed archive and finishes.
    let s = wait_for(&n, &id, "archived", |s| status(s) == Some(TieringStatus::ArchivalCompleted));
    assert_eq!(blocksnap_engine::archive::storage_tier(&s), "archive");
    gc_and_verify(&n);
    assert!(!manifest(dir, &id).exists(), "the standard copy is gone");
    assert_eq!(chunks(dir), 0, "GC freed every chunk");
}

#[test]
fn killed_after_the_archival_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = snapshot_with_data(&open(dir), 2);
    assert_eq!(crash_child("archive.before_drop_manifest", dir, &id), CRASH_CODE);
    assert!(manifest(dir, &id).exists(), "the crash came before the manifest was dropped");
    let n = open(dir);
    assert_eq!(status(&row(&n, &id)), Some(TieringStatus::ArchivalCompleted));
    assert!(n.engine.snapshot_reader(&id).is_none(), "an archived snapshot is not readable");
    // GC drops the manifest of a row whose standard copy is gone, then sweeps its chunks.
    gc_and_verify(&n);
    assert!(!manifest(dir, &id).exists());
    assert_eq!(chunks(dir), 0);
    // And it still restores to the same bytes.
    n.engine.restore_snapshot_tier(&n.ctx, &id, Some(1), None, false).unwrap();
    wait_for(&n, &id, "restored", |s| status(s) == Some(TieringStatus::TemporaryRestoreCompleted));
    assert_eq!(read_snapshot(&n, &id), pattern(2));
}

#[test]
fn killed_before_a_restore_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = {
        let n = open(dir);
        let id = snapshot_with_data(&n, 3);
        archive(&n, &id);
        id
    };
    assert_eq!(crash_child("archive.restore_before_commit", dir, &id), CRASH_CODE);
    assert!(manifest(dir, &id).exists(), "the restore wrote the manifest before the crash");
    let n = open(dir);
    let s = wait_for(&n, &id, "restored", |s| status(s) == Some(TieringStatus::TemporaryRestoreCompleted));
    assert_eq!(blocksnap_engine::archive::storage_tier(&s), "standard");
    assert!(blocksnap_engine::archive::restore_expiry_time(&s).is_some());
    gc_and_verify(&n);
    assert_eq!(read_snapshot(&n, &id), pattern(3));
    assert!(archive_index(dir, &id).exists(), "a temporary restore keeps the archive");
}

#[test]
fn killed_before_a_permanent_restore_removes_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = {
        let n = open(dir);
        let id = snapshot_with_data(&n, 4);
        archive(&n, &id);
        id
    };
    assert_eq!(crash_child("archive.before_remove", dir, &id), CRASH_CODE);
    assert!(archive_index(dir, &id).exists(), "the crash came before the archive was removed");
    let n = open(dir);
    assert_eq!(status(&row(&n, &id)), Some(TieringStatus::PermanentRestoreCompleted));
    // The archive store's cleanup (on each GC tick) removes the archive no row wants.
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.runtime.block_on(n.engine.gc_archives(REGION)).unwrap() == 0 && archive_index(dir, &id).exists() {
        assert!(Instant::now() < deadline, "the orphan archive was never removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.join("archive").join(REGION).join(&id).exists());
    gc_and_verify(&n);
    assert_eq!(read_snapshot(&n, &id), pattern(4));
}
