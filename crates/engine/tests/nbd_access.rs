//! Who may open which NBD export, NBD credentials (limit, rotation, deletion, durability) and the
//! revocations the engine reports to the NBD front end through `ExportHooks`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blocksnap_catalog::SqliteCatalog;
use blocksnap_engine::model::{Ctx, SnapshotState};
use blocksnap_engine::{
    CreateSnapshot, DescribeSnapshots, Engine, EngineConfig, ExportHooks, ListQuery, MAX_NBD_CREDENTIALS,
    PermissionChange, RunInstances, Storage,
};

const REGION: &str = "us-east-1";

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl ExportHooks for Recorder {
    fn close_export(&self, name: &str) {
        self.0.lock().unwrap().push(format!("close {name}"));
    }
    fn access_changed(&self, name: &str) {
        self.0.lock().unwrap().push(format!("access {name}"));
    }
    fn credentials_revoked(&self, identities: &[String]) {
        self.0.lock().unwrap().push(format!("revoked {}", identities.join(",")));
    }
}

struct Node {
    engine: Arc<Engine>,
    hooks: Arc<Recorder>,
    _runtime: tokio::runtime::Runtime,
}

fn open(dir: &std::path::Path) -> Node {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let volumes = blocksnap_volume::VolumeStore::open(dir.join("volumes")).unwrap();
    let storage =
        Storage { volumes: Arc::new(volumes), snapshot_root: dir.join("snapshots"), runtime: runtime.handle().clone() };
    let catalog = SqliteCatalog::open(&dir.join("catalog.db")).unwrap();
    let engine = Arc::new(Engine::open(Arc::new(catalog), EngineConfig::default(), Some(storage)).unwrap());
    engine.start().unwrap();
    engine.ensure_root(Some(("AKIANBDTEST".into(), "secret".into()))).unwrap();
    let hooks = Arc::new(Recorder::default());
    engine.set_export_hooks(hooks.clone());
    Node { engine, hooks, _runtime: runtime }
}

fn ctx(account: &str) -> Ctx {
    Ctx { account: account.into(), region: REGION.into() }
}

fn completed(engine: &Engine, c: &Ctx, volume_id: &str) -> String {
    let id =
        engine.create_snapshot(c, CreateSnapshot { volume_id: volume_id.into(), ..Default::default() }).unwrap().id;
    engine.sync_pending().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q =
            DescribeSnapshots { query: ListQuery::default(), owner_ids: vec!["self".into()], restorable_by: vec![] };
        let s = engine.describe_snapshots(c, &q).unwrap().items.into_iter().find(|s| s.id == id).unwrap();
        if s.state == SnapshotState::Completed {
            return id;
        }
        assert!(Instant::now() < deadline, "{id} still {:?}", s.state);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn access_rules_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let n = open(dir.path());
    let e = &n.engine;
    let owner = ctx(&e.root_account().unwrap());
    let (other, _) = e.create_account("other").unwrap();
    let third = e.create_account("third").unwrap().0.id;
    let req = RunInstances {
        image_id: Some("ami-0b5e4c3d2a1f00001".into()),
        min_count: Some(1),
        max_count: Some(1),
        ..Default::default()
    };
    let r = e.run_instances(&owner, req).unwrap();
    e.sync_pending().unwrap();
    let vol = r.instances[0].block_devices[0].1.clone();
    // An attached volume: its owner only; listed for its owner only.
    assert!(e.nbd_may_open(&owner.account, &vol));
    assert!(!e.nbd_may_open(&other.id, &vol));
    assert!(e.nbd_exports(&owner.account).contains(&vol));
    assert!(e.nbd_exports(&other.id).is_empty());
    assert!(!e.nbd_may_open(&owner.account, "vol-00000000000000000"));
    assert!(!e.nbd_may_open(&owner.account, "nope"));
    // A completed snapshot: owner; then shared; then public.
    let snap = completed(e, &owner, &vol);
    assert!(e.nbd_may_open(&owner.account, &snap));
    assert!(!e.nbd_may_open(&other.id, &snap));
    let share = |add: Vec<String>, remove: Vec<String>| {
        e.modify_snapshot_permissions(&owner, &snap, PermissionChange { add, remove }, false).unwrap()
    };
    share(vec![other.id.clone()], vec![]);
    assert!(e.nbd_may_open(&other.id, &snap) && !e.nbd_may_open(&third, &snap));
    share(vec!["all".into()], vec![]);
    assert!(e.nbd_may_open(&third, &snap));
    n.hooks.0.lock().unwrap().clear();
    // Removing shares tells NBD to re-check the export's connections; adding does not.
    share(vec![], vec![other.id.clone(), "all".into()]);
    assert!(!e.nbd_may_open(&other.id, &snap) && !e.nbd_may_open(&third, &snap));
    assert_eq!(*n.hooks.0.lock().unwrap(), vec![format!("access {snap}")]);
    // Deleting the snapshot closes its export.
    n.hooks.0.lock().unwrap().clear();
    e.delete_snapshot(&owner, &snap, false).unwrap();
    assert_eq!(*n.hooks.0.lock().unwrap(), vec![format!("close {snap}")]);
    assert!(!e.nbd_may_open(&owner.account, &snap));
}

#[test]
fn credentials_limit_rotate_delete_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (account, kept) = {
        let n = open(dir.path());
        let e = &n.engine;
        let c = ctx(&e.create_account("a").unwrap().0.id);
        let first = e.create_nbd_credential(&c).unwrap();
        assert_eq!(e.nbd_account(&first.identity).as_deref(), Some(c.account.as_str()));
        assert_eq!(e.nbd_psk(&first.identity).map(|k| k.len()), Some(32));
        assert!(!format!("{first:?}").contains(&first.key), "Debug must not print the key");
        for _ in 1..MAX_NBD_CREDENTIALS {
            e.create_nbd_credential(&c).unwrap();
        }
        let err = e.create_nbd_credential(&c).unwrap_err();
        assert_eq!(err.code(), "LimitExceeded");
        // Another account can neither see nor delete them.
        let stranger = ctx(&e.create_account("b").unwrap().0.id);
        assert!(e.list_nbd_credentials(&stranger).is_empty());
        assert_eq!(
            e.delete_nbd_credential(&stranger, &first.identity).unwrap_err().code(),
            "ResourceNotFoundException"
        );
        // Rotation: one new credential, every old one revoked (and reported to NBD).
        let mut old: Vec<String> = e.list_nbd_credentials(&c).into_iter().map(|i| i.identity).collect();
        old.sort();
        let new = e.rotate_nbd_credentials(&c).unwrap();
        e.sync_pending().unwrap();
        assert_eq!(
            e.list_nbd_credentials(&c).into_iter().map(|i| i.identity).collect::<Vec<_>>(),
            vec![new.identity.clone()]
        );
        assert!(old.iter().all(|i| e.nbd_psk(i).is_none()));
        assert_eq!(*n.hooks.0.lock().unwrap(), vec![format!("revoked {}", old.join(","))]);
        let extra = e.create_nbd_credential(&c).unwrap();
        e.delete_nbd_credential(&c, &extra.identity).unwrap();
        e.sync_pending().unwrap();
        assert!(e.nbd_psk(&extra.identity).is_none());
        (c.account, new)
    };
    // Durable: the catalog brings it back after a restart, with the same key.
    let n = open(dir.path());
    assert_eq!(n.engine.nbd_account(&kept.identity), Some(account));
    assert_eq!(n.engine.nbd_psk(&kept.identity).map(hex_of), Some(kept.key));
}

fn hex_of(b: Vec<u8>) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
