//! The lifecycle-policy scheduler across crashes: a process killed after a slot's claim, after its
//! snapshots but before their record, or after a copy but before its record, restarts without
//! taking the slot again and without copying twice.
//!
//! Each case runs one scheduler tick in a child process (this test binary re-executed with
//! `CHILD_ENV`) whose failpoint exits the process on the spot. The parent reopens the data dir the
//! way `blocksnap serve` starts and ticks the scheduler itself. The test clock is process-wide and
//! not persisted: the parent tells the child the time to move its clock to, and the cases run one
//! at a time (they share the parent's clock).
//!
//! Run: `cargo test -p blocksnap-engine --features failpoints --test dlm_crash`

use std::path::Path;
use std::time::{Duration, Instant};

use blocksnap_engine::dlm::{
    CreatePolicy, CreateRule, KeyValue, PolicyDetails, RetainRule, ScheduleSpec, TAG_POLICY_ID,
};
use blocksnap_engine::model::{Ctx, Snapshot, SnapshotState, Tag};
use blocksnap_engine::{CreateVolume, DescribeSnapshots, EngineConfig, ListQuery, TagSpec};

mod common;

const CHILD_ENV: &str = "BLOCKSNAP_DLM_CRASH_CHILD";
const CRASH_CODE: i32 = 19;
const REGION: &str = "us-east-1";
const COPY_REGION: &str = "eu-west-1";
const HOUR: u64 = 3600;

use common::Node;

fn open(dir: &Path) -> Node {
    common::open_node(dir, "volumes", EngineConfig { test_clock: true, ..Default::default() }, "AKIDLMCRASH", REGION)
}

/// Moves the clock forward by `secs`; answers the new time (ms).
fn advance(n: &Node, secs: u64) -> i64 {
    n.engine.advance_test_clock(&n.ctx, secs).unwrap()
}

/// The cases share the process's clock: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tagged volume and an hourly policy on it (copying to COPY_REGION when `copy`).
fn setup(dir: &Path, copy: bool) -> String {
    let n = open(dir);
    let tags = vec![Tag { key: "backup".into(), value: "yes".into() }];
    let req = CreateVolume {
        availability_zone: Some(format!("{REGION}a")),
        size: Some(1),
        tag_specifications: vec![TagSpec { resource_type: Some("volume".into()), tags }],
        ..Default::default()
    };
    n.engine.create_volume(&n.ctx, req).unwrap();
    let copies = if copy {
        vec![blocksnap_engine::dlm::CopyRule {
            target: Some(COPY_REGION.into()),
            encrypted: Some(false),
            ..Default::default()
        }]
    } else {
        vec![]
    };
    let details = PolicyDetails {
        resource_types: vec!["VOLUME".into()],
        target_tags: vec![KeyValue { key: "backup".into(), value: "yes".into() }],
        schedules: vec![ScheduleSpec {
            name: Some("hourly".into()),
            create_rule: Some(CreateRule {
                interval: Some(1),
                interval_unit: Some("HOURS".into()),
                ..Default::default()
            }),
            retain_rule: Some(RetainRule { count: Some(10), ..Default::default() }),
            cross_region_copy_rules: copies,
            ..Default::default()
        }],
        ..Default::default()
    };
    let req = CreatePolicy {
        execution_role_arn: Some("arn:aws:iam::123456789012:role/dlm".into()),
        description: Some("crash".into()),
        state: Some("ENABLED".into()),
        details: Some(details),
        ..Default::default()
    };
    let id = n.engine.dlm_create_policy(&n.ctx, req).unwrap();
    n.engine.sync_pending().unwrap();
    id
}

fn policy_snapshots(n: &Node, region: &str, policy: &str) -> Vec<Snapshot> {
    let ctx = Ctx { account: n.ctx.account.clone(), region: region.into() };
    let q = DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
    n.engine
        .describe_snapshots(&ctx, &q)
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.tags.get(TAG_POLICY_ID).map(String::as_str) == Some(policy))
        .collect()
}

/// Ticks until `pred` holds (60 s at most).
fn tick_until(n: &Node, what: &str, pred: impl Fn(&Node) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred(n) {
        assert!(Instant::now() < deadline, "{what}: not after 60 s");
        n.engine.dlm_tick();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the child for `case`, its clock moved to the parent's time plus an hour.
fn crash_child(case: &str, dir: &Path) -> i32 {
    let target = {
        let n = open(dir);
        advance(&n, 0) + (HOUR as i64) * 1000
    };
    common::run_child(CHILD_ENV, CRASH_CODE, format!("{case}|{}|{target}", dir.display()))
}

/// The child: move the clock, arm the failpoint to exit the process, tick until it is reached.
/// Returning normally means the failpoint was never reached (the parent then fails).
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.splitn(3, '|');
    let (case, dir, target) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let n = open(Path::new(dir));
    let now = advance(&n, 0);
    advance(&n, (target.parse::<i64>().unwrap() - now).max(0) as u64 / 1000 + 1);
    fail::cfg_callback(case, || std::process::exit(CRASH_CODE)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        n.engine.dlm_tick();
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crash_after_the_claim_does_not_take_the_slot_again() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let policy = setup(dir, false);
    assert_eq!(crash_child("dlm.after_claim", dir), CRASH_CODE);
    let n = open(dir);
    advance(&n, HOUR);
    for _ in 0..5 {
        n.engine.dlm_tick();
    }
    assert!(policy_snapshots(&n, REGION, &policy).is_empty(), "the claimed slot was taken after the restart");
    assert!(n.engine.dlm_get_policy(&n.ctx, &policy).unwrap().in_progress.is_empty(), "the claim is settled");
    // The next slot runs, once.
    advance(&n, HOUR);
    assert_eq!(n.engine.dlm_tick().snapshots, 1);
    assert_eq!(n.engine.dlm_tick().runs, 0);
    assert_eq!(policy_snapshots(&n, REGION, &policy).len(), 1);
}

#[test]
fn crash_before_the_record_keeps_the_snapshots_and_copies_them_once() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let policy = setup(dir, true);
    assert_eq!(crash_child("dlm.before_record", dir), CRASH_CODE);
    let n = open(dir);
    advance(&n, HOUR);
    let taken = policy_snapshots(&n, REGION, &policy);
    assert_eq!(taken.len(), 1, "the snapshot taken before the crash survives it");
    // The settled claim queues its copy; the upload resumed at start.
    tick_until(&n, "the copy", |n| {
        policy_snapshots(n, COPY_REGION, &policy).iter().any(|s| s.state == SnapshotState::Completed)
    });
    for _ in 0..5 {
        n.engine.dlm_tick();
    }
    assert_eq!(policy_snapshots(&n, REGION, &policy).len(), 1, "no second run of the slot");
    let copies = policy_snapshots(&n, COPY_REGION, &policy);
    assert_eq!(copies.len(), 1, "one copy");
    assert_eq!(copies[0].source_snapshot.as_deref(), Some(format!("{REGION}/{}", taken[0].id).as_str()));
}

#[test]
fn crash_after_a_copy_does_not_copy_again() {
    let _one_at_a_time = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let policy = setup(dir, true);
    assert_eq!(crash_child("dlm.after_copy", dir), CRASH_CODE);
    let n = open(dir);
    advance(&n, HOUR);
    assert_eq!(policy_snapshots(&n, COPY_REGION, &policy).len(), 1, "the copy started before the crash");
    tick_until(&n, "the pending copy settled", |n| {
        n.engine.dlm_get_policy(&n.ctx, &policy).unwrap().pending_copies.is_empty()
    });
    for _ in 0..5 {
        n.engine.dlm_tick();
    }
    assert_eq!(policy_snapshots(&n, COPY_REGION, &policy).len(), 1, "copied once");
    assert_eq!(policy_snapshots(&n, REGION, &policy).len(), 1);
}
