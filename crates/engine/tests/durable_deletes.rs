//! Deletes are durable first: a process killed between a delete's row change and the removal of
//! the bytes it orphans restarts with the object gone (never back reading zeros, never `completed`
//! without a manifest) and everything else intact.
//!
//! Each case runs the delete in a child process (this test binary re-executed with `CHILD_ENV`)
//! whose failpoint between the two steps exits the process on the spot (no destructors, no
//! flush). The parent then reopens the data dir the way `blocksnap serve` starts. Debug builds also
//! assert, at the failpoint's site, that the row change was synced before any byte goes.
//!
//! Run: `cargo test -p blocksnap-engine --features failpoints --test durable_deletes`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blocksnap_engine::model::SnapshotState;
use blocksnap_engine::{CreateSnapshot, CreateVolume, DescribeSnapshots, EngineConfig, ListQuery, RunInstances};

mod common;

const CHILD_ENV: &str = "BLOCKSNAP_DURABLE_DELETES_CHILD";
const CRASH_CODE: i32 = 17;
const REGION: &str = "us-east-1";
const IMAGE: &str = "ami-0b5e4c3d2a1f00001";

use common::Node;

fn open(dir: &Path) -> Node {
    open_with(dir, EngineConfig::default())
}

fn open_with(dir: &Path, config: EngineConfig) -> Node {
    common::open_node(dir, "volumes", config, "AKIDURABLE", REGION)
}

fn wait_completed(n: &Node, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = snapshot(n, id).unwrap_or_else(|| panic!("{id} vanished"));
        match s {
            SnapshotState::Completed => return,
            SnapshotState::Error => panic!("{id} ended in error"),
            SnapshotState::Pending if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            SnapshotState::Pending => panic!("{id} still pending after 60 s"),
        }
    }
}

fn snapshot(n: &Node, id: &str) -> Option<SnapshotState> {
    let q = DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
    n.engine.describe_snapshots(&n.ctx, &q).unwrap().items.into_iter().find(|s| s.id == id).map(|s| s.state)
}

fn volume_ids(n: &Node) -> Vec<String> {
    n.engine.describe_volumes(&n.ctx, &ListQuery::default()).unwrap().items.into_iter().map(|v| v.id).collect()
}

fn new_volume(n: &Node) -> String {
    let req = CreateVolume { availability_zone: Some(format!("{REGION}a")), size: Some(1), ..Default::default() };
    n.engine.create_volume(&n.ctx, req).unwrap().id
}

fn snap(n: &Node, volume_id: &str) -> String {
    let req = CreateSnapshot { volume_id: volume_id.into(), ..Default::default() };
    let id = n.engine.create_snapshot(&n.ctx, req).unwrap().id;
    n.engine.sync_pending().unwrap();
    wait_completed(n, &id);
    id
}

fn manifest(dir: &Path, id: &str) -> PathBuf {
    dir.join("snapshots").join(REGION).join("snaps").join(format!("{id}.manifest"))
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..65536u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// An instance whose root volume (DeleteOnTermination) holds `pattern(seed)` at offset 0.
fn instance_with_data(n: &Node, seed: u8) -> (String, String) {
    let req =
        RunInstances { image_id: Some(IMAGE.into()), min_count: Some(1), max_count: Some(1), ..Default::default() };
    let r = n.engine.run_instances(&n.ctx, req).unwrap();
    n.engine.sync_pending().unwrap();
    let view = &r.instances[0];
    let vol = view.block_devices[0].1.clone();
    let v = n.engine.attached_volume(&vol).unwrap();
    v.write_at(0, &pattern(seed), true).unwrap();
    v.flush().unwrap();
    (view.instance.id.clone(), vol)
}

fn read_back(n: &Node, vol: &str) -> Vec<u8> {
    let v = n.engine.attached_volume(vol).unwrap();
    let mut buf = vec![0u8; 65536];
    v.read_at(0, &mut buf).unwrap();
    buf
}

/// Re-run this test binary as the child for `case`, in `dir`; returns its exit code.
fn crash_child(case: &str, dir: &Path, arg: &str) -> i32 {
    common::run_child(CHILD_ENV, CRASH_CODE, format!("{case}|{}|{arg}", dir.display()))
}

/// The child: arm the failpoint to exit the process, then delete. Returning normally means the
/// failpoint was never reached (the parent then fails).
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.splitn(3, '|');
    let (case, dir, arg) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let n = open_with(Path::new(dir), EngineConfig { test_clock: case == "purge-bin", ..Default::default() });
    let exit = || std::process::exit(CRASH_CODE);
    match case {
        "delete-volume" => {
            fail::cfg_callback("volume.before_free_bytes", exit).unwrap();
            n.engine.delete_volume(&n.ctx, arg, false).unwrap();
        }
        "terminate" => {
            fail::cfg_callback("volume.before_free_bytes", exit).unwrap();
            n.engine.terminate_instances(&n.ctx, &[arg.to_string()], false).unwrap();
        }
        "delete-snapshot" => {
            fail::cfg_callback("snapshot.before_delete_manifest", exit).unwrap();
            n.engine.delete_snapshot(&n.ctx, arg, false).unwrap();
        }
        "delete-instance-snapshot" => {
            fail::cfg_callback("snapshot.before_delete_manifest", exit).unwrap();
            n.engine.lightsail().delete_instance_snapshot(&n.ctx, arg).unwrap();
        }
        "purge-bin" => {
            // The binned snapshot's retention (one day) ends; the purge commits, then crashes
            // before the manifest goes.
            n.engine.advance_test_clock(&n.ctx, 2 * 24 * 3600).unwrap();
            fail::cfg_callback("snapshot.before_delete_manifest", exit).unwrap();
            n.engine.purge_recycle_bin().unwrap();
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn delete_volume_crash_before_bytes_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (doomed, kept_vol, kept_data) = {
        let n = open(dir);
        let doomed = new_volume(&n);
        snap(&n, &doomed); // allocates the volume's bytes
        let (_, kept_vol) = instance_with_data(&n, 7);
        (doomed, kept_vol.clone(), read_back(&n, &kept_vol))
    };
    assert!(dir.join("volumes").join(&doomed).exists(), "the doomed volume has bytes before the delete");
    assert_eq!(crash_child("delete-volume", dir, &doomed), CRASH_CODE, "the child crashes at the failpoint");
    assert!(dir.join("volumes").join(&doomed).exists(), "the crash came before the bytes were removed");
    let n = open(dir);
    let vols = volume_ids(&n);
    assert!(!vols.contains(&doomed), "the deleted volume stays deleted: {vols:?}");
    assert!(!dir.join("volumes").join(&doomed).exists(), "its orphan bytes are removed at start");
    assert!(vols.contains(&kept_vol));
    assert_eq!(read_back(&n, &kept_vol), kept_data, "other volumes keep their bytes");
    assert_eq!(kept_data, pattern(7));
}

#[test]
fn terminate_crash_before_bytes_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (doomed_inst, doomed_vol, kept_vol) = {
        let n = open(dir);
        let (i, v) = instance_with_data(&n, 1);
        let (_, k) = instance_with_data(&n, 2);
        (i, v, k)
    };
    assert_eq!(crash_child("terminate", dir, &doomed_inst), CRASH_CODE, "the child crashes at the failpoint");
    assert!(dir.join("volumes").join(&doomed_vol).exists(), "the crash came before the bytes were removed");
    let n = open(dir);
    let vols = volume_ids(&n);
    assert!(!vols.contains(&doomed_vol), "the DeleteOnTermination volume stays deleted: {vols:?}");
    assert!(!dir.join("volumes").join(&doomed_vol).exists(), "its orphan bytes are removed at start");
    assert_eq!(read_back(&n, &kept_vol), pattern(2), "other volumes keep their bytes");
}

#[test]
fn delete_snapshot_crash_before_manifest_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (doomed, kept) = {
        let n = open(dir);
        let (_, vol) = instance_with_data(&n, 3);
        let doomed = snap(&n, &vol);
        let v = n.engine.attached_volume(&vol).unwrap();
        v.write_at(65536, &pattern(4), true).unwrap();
        let kept = snap(&n, &vol);
        (doomed, kept)
    };
    assert!(manifest(dir, &doomed).exists());
    assert_eq!(crash_child("delete-snapshot", dir, &doomed), CRASH_CODE, "the child crashes at the failpoint");
    assert!(manifest(dir, &doomed).exists(), "the crash came before the manifest was removed");
    let n = open(dir);
    assert_eq!(snapshot(&n, &doomed), None, "the deleted snapshot stays deleted");
    assert_eq!(snapshot(&n, &kept), Some(SnapshotState::Completed));
    // GC drops manifests without rows, then sweeps their blocks; the kept snapshot still verifies.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(n.engine.gc_region(REGION, Duration::ZERO)).unwrap();
    assert!(!manifest(dir, &doomed).exists(), "GC removes the orphan manifest");
    assert!(manifest(dir, &kept).exists());
    let reports = rt.block_on(n.engine.verify_snapshots(REGION)).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_ok(), "{:?}", reports[0]);
    let reader = n.engine.snapshot_reader(&kept).unwrap();
    let mut buf = vec![0u8; 131072];
    reader.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..65536], &pattern(3)[..]);
    assert_eq!(&buf[65536..], &pattern(4)[..]);
}

#[test]
fn lightsail_delete_instance_snapshot_crash_before_manifests_go() {
    use blocksnap_engine::lightsail::{CreateDisk, CreateInstanceSnapshot, CreateInstances, InstanceSnapshotState};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (snap_ids, kept) = {
        let n = open(dir);
        let ls = n.engine.lightsail();
        for name in ["web", "db"] {
            let req = CreateInstances {
                instance_names: vec![name.into()],
                availability_zone: format!("{REGION}a"),
                blueprint_id: "amazon_linux_2023".into(),
                bundle_id: "nano_3_0".into(),
                ..Default::default()
            };
            ls.create_instances(&n.ctx, req).unwrap();
            if name == "web" {
                // Two disks: the deletion must not be able to stop half way.
                let req = CreateDisk {
                    disk_name: "web-data".into(),
                    availability_zone: format!("{REGION}a"),
                    size_in_gb: 8,
                    tags: vec![],
                    add_ons: false,
                };
                ls.create_disk(&n.ctx, req).unwrap();
                ls.attach_disk(&n.ctx, "web-data", "web", "/dev/xvdf").unwrap();
            }
            let req = CreateInstanceSnapshot {
                instance_name: name.into(),
                instance_snapshot_name: format!("{name}-snap"),
                tags: vec![],
            };
            ls.create_instance_snapshot(&n.ctx, req).unwrap();
        }
        n.engine.sync_pending().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ["web-snap", "db-snap"]
            .iter()
            .any(|s| ls.get_instance_snapshot(&n.ctx, s).unwrap().state != InstanceSnapshotState::Available)
        {
            assert!(Instant::now() < deadline, "instance snapshots not available after 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The Lightsail objects' EC2 rows belong to a hidden owner: find them through the store.
        let snaps = dir.join("snapshots").join(REGION).join("snaps");
        let ids: Vec<String> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".manifest").to_string())
            .collect();
        assert_eq!(ids.len(), 3, "web: system and data disk, db: system disk: {ids:?}");
        (ids, "db-snap")
    };
    assert_eq!(crash_child("delete-instance-snapshot", dir, "web-snap"), CRASH_CODE, "the child crashes");
    let n = open(dir);
    let ls = n.engine.lightsail();
    let err = ls.get_instance_snapshot(&n.ctx, "web-snap").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "the deleted instance snapshot stays deleted: {err}");
    assert_eq!(
        ls.get_instance_snapshot(&n.ctx, kept).unwrap().state,
        InstanceSnapshotState::Available,
        "the other one is intact"
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(n.engine.gc_region(REGION, Duration::ZERO)).unwrap();
    let left: Vec<&String> = snap_ids.iter().filter(|id| manifest(dir, id).exists()).collect();
    assert_eq!(left.len(), 1, "GC removed the deleted snapshots' manifests, kept the other: {left:?}");
    let reports = rt.block_on(n.engine.verify_snapshots(REGION)).unwrap();
    assert!(reports.len() == 1 && reports[0].is_ok(), "{reports:?}");
}

#[test]
fn recycle_bin_purge_crash_before_manifest_goes() {
    use blocksnap_engine::recycle_bin::{CreateRule, RetentionPeriod};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (binned, kept) = {
        let n = open(dir);
        let rule = CreateRule {
            resource_type: Some("EBS_SNAPSHOT".into()),
            retention_period: Some(RetentionPeriod { value: Some(1), unit: Some("DAYS".into()) }),
            ..Default::default()
        };
        n.engine.rbin_create_rule(&n.ctx, rule).unwrap();
        let (_, vol) = instance_with_data(&n, 5);
        let binned = snap(&n, &vol);
        let v = n.engine.attached_volume(&vol).unwrap();
        v.write_at(65536, &pattern(6), true).unwrap();
        let kept = snap(&n, &vol);
        n.engine.delete_snapshot(&n.ctx, &binned, false).unwrap();
        assert_eq!(snapshot(&n, &binned), None, "a binned snapshot leaves DescribeSnapshots");
        let listed = n.engine.list_snapshots_in_recycle_bin(&n.ctx, &ListQuery::default(), false).unwrap();
        assert_eq!(listed.items.iter().map(|b| b.snapshot.id.clone()).collect::<Vec<_>>(), vec![binned.clone()]);
        // GC keeps a binned snapshot's manifest.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(n.engine.gc_region(REGION, Duration::ZERO)).unwrap();
        assert!(manifest(dir, &binned).exists(), "GC keeps the manifest of a snapshot in the bin");
        (binned, kept)
    };
    assert_eq!(crash_child("purge-bin", dir, ""), CRASH_CODE, "the child crashes at the failpoint");
    assert!(manifest(dir, &binned).exists(), "the crash came before the manifest was removed");
    let n = open(dir);
    let listed = n.engine.list_snapshots_in_recycle_bin(&n.ctx, &ListQuery::default(), false).unwrap();
    assert!(listed.items.is_empty(), "the purge's commit was durable: the bin is empty");
    assert!(n.engine.restore_snapshot_from_recycle_bin(&n.ctx, &binned, false).is_err());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(n.engine.gc_region(REGION, Duration::ZERO)).unwrap();
    assert!(!manifest(dir, &binned).exists(), "GC removes the orphan manifest");
    let reports = rt.block_on(n.engine.verify_snapshots(REGION)).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_ok(), "{:?}", reports[0]);
    let reader = n.engine.snapshot_reader(&kept).unwrap();
    let mut buf = vec![0u8; 131072];
    reader.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..65536], &pattern(5)[..]);
    assert_eq!(&buf[65536..], &pattern(6)[..]);
}
