//! The engine's state and its one mutation path.
//!
//! State lives in memory (for fast Describe calls) and in the catalog (for durability). Every change
//! is computed against the current state as a list of [`Rec`]ords, committed to the catalog in one
//! transaction, and only then applied in memory, all under one lock: memory never runs ahead of disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use blocksnap_catalog::{Catalog, Change, Row};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::*;

pub(crate) const KIND_ACCOUNT: &str = "account";
pub(crate) const KIND_ACCESS_KEY: &str = "access_key";
pub(crate) const KIND_VOLUME: &str = "volume";
pub(crate) const KIND_INSTANCE: &str = "instance";
pub(crate) const KIND_SNAPSHOT: &str = "snapshot";
pub(crate) const KIND_KMS_KEY: &str = "kms_key";
pub(crate) const KIND_SETTINGS: &str = "settings";
pub(crate) const KIND_META: &str = "meta";

/// What the engine tells the NBD front end about revocations, so live connections end with the
/// access that allowed them. A hook, so the engine does not depend on NBD. Each call returns once
/// the affected connections have answered their in-flight requests and closed (bounded); the
/// engine calls them with no lock held, after the change is committed.
pub trait ExportHooks: Send + Sync + 'static {
    /// The export is gone for everyone (volume detached or deleted, snapshot deleted).
    fn close_export(&self, name: &str);
    /// Who may open the export changed (a share removed): close the connections whose client may
    /// no longer open it.
    fn access_changed(&self, name: &str);
    /// These NBD credentials were revoked (deleted, rotated): close the connections that
    /// authenticated with them.
    fn credentials_revoked(&self, identities: &[String]);
}

/// The storage the engine drives: the live volume store, the snapshot stores (one per region, under
/// `snapshot_root`), and the runtime its background jobs run on.
pub struct Storage {
    pub volumes: Arc<blocksnap_volume::VolumeStore>,
    pub snapshot_root: std::path::PathBuf,
    pub runtime: tokio::runtime::Handle,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Regions this process serves.
    pub regions: Vec<String>,
    /// Regions whose snapshot store is an S3-compatible bucket (others live under the data dir).
    pub s3_stores: HashMap<String, blocksnap_store::S3Config>,
    /// How long block tokens (EBS direct APIs) stay valid.
    pub block_token_ttl: std::time::Duration,
    /// The length of one of StartSnapshot's `Timeout` minutes (a minute; tests shorten it).
    pub direct_minute: std::time::Duration,
    /// Block reads and writes (EBS direct APIs) one account may have in flight.
    pub ebs_max_inflight: usize,
    /// Serve AdvanceClock (tests only; see [`crate::clock`]).
    pub test_clock: bool,
    /// Where each region's archive tier lives (default: `DATA/archive/<region>`).
    pub archive_stores: HashMap<String, blocksnap_store::ArchiveLocation>,
    /// This process's node id in a cluster (`None`: a single node). New volumes are placed on it;
    /// volumes placed on another node are unavailable here (`volumes/placement.rs`).
    pub node_id: Option<String>,
    /// Where this node's NBD listener is reached (`--nbd-advertise`, else `--nbd-listen`).
    pub nbd: crate::credentials::NbdAdvertise,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            regions: crate::regions::COMMERCIAL_REGIONS.iter().map(|s| s.to_string()).collect(),
            s3_stores: HashMap::new(),
            block_token_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            direct_minute: std::time::Duration::from_secs(60),
            ebs_max_inflight: 512,
            test_clock: false,
            archive_stores: HashMap::new(),
            node_id: None,
            nbd: Default::default(),
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub accounts: HashMap<String, Account>,
    pub keys: HashMap<String, AccessKey>,
    pub volumes: BTreeMap<String, Volume>,
    pub instances: BTreeMap<String, Instance>,
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Snapshots and their bytes added per account and region, kept with `snapshots` (GetStoreStats).
    pub snapshot_tally: crate::data::SnapshotTally,
    pub kms_keys: BTreeMap<String, KmsKey>,
    /// Keyed by `account/region`.
    pub settings: HashMap<String, RegionSettings>,
    pub root_account: Option<String>,
    /// Records of front-end-specific engine modules (e.g. Lightsail names and operations), keyed
    /// by kind then id. Each module owns its kinds' document format.
    pub docs: HashMap<&'static str, BTreeMap<String, Row>>,
}

/// One durable change.
#[derive(Debug, Clone)]
pub(crate) enum Rec {
    Account(Account),
    AccessKey(AccessKey),
    DeleteAccessKey(String),
    Volume(Volume),
    DeleteVolume(String),
    Instance(Instance),
    Snapshot(Snapshot),
    DeleteSnapshot(String),
    KmsKey(KmsKey),
    Settings {
        account: String,
        region: String,
        settings: RegionSettings,
    },
    RootAccount(String),
    /// A generic document row of a module-owned kind (see `State::docs`).
    #[allow(dead_code)] // written by the Lightsail module
    Doc(&'static str, Row),
    #[allow(dead_code)] // written by the Lightsail module
    DeleteDoc(&'static str, String),
}

/// Catalog kinds owned by modules through `Rec::Doc`: loaded at start into `State::docs`.
pub(crate) const DOC_KINDS: &[&str] = &[
    "ls_disk",
    "ls_instance",
    "ls_disk_snapshot",
    "ls_instance_snapshot",
    "ls_operation",
    crate::credentials::KIND_NBD_CREDENTIAL,
    crate::ebs::KIND_EBS_KEY,
    crate::dlm::KIND_DLM_POLICY,
    crate::snapshot_locks::KIND_SNAPSHOT_LOCK,
    crate::recycle_bin::KIND_RBIN_RULE,
    crate::recycle_bin::KIND_RBIN_SNAPSHOT,
];

pub struct Engine {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) config: EngineConfig,
    /// The engine lock: one for every call of every account. It guards the in-memory records
    /// ([`State`]: accounts, keys, volumes, instances, snapshots, KMS keys, settings, module
    /// documents) and makes "validate against the current state, commit, apply" one step, so two
    /// calls never both pass a check that only one may pass (a name, a limit, a state).
    ///
    /// While it is held: validation, building records, one catalog commit, applying to memory.
    /// Nothing that waits: no fsync (durability is [`Engine::sync_pending`], after the lock is
    /// released), no volume file, object-store call, NBD close or claim, no sleeping or polling.
    /// Work that needs any of these plans under the lock, does it without, then re-checks and
    /// commits under it (the cut, ModifyVolume's resize). Bytes of a failed create are freed after
    /// the lock is dropped.
    ///
    /// The commit itself is the one I/O under the lock. SQLite: a WAL append into the page cache
    /// (no fsync; the automatic checkpoint, which fsyncs, is off and runs from `sync` instead), but
    /// `BEGIN IMMEDIATE` waits up to SQLite's busy timeout (10 s) while a `blocksnap admin`
    /// process beside the server holds the write lock, and a write to a frozen or failing disk
    /// blocks until the kernel answers. PostgreSQL: one pipelined round trip to the server (no WAL
    /// flush), bounded at 30 s. So a stalled catalog stalls every mutation, and the API's 60 s
    /// call bound is what answers their clients; reads and NBD I/O go on.
    pub(crate) state: Mutex<State>,
    pub(crate) storage: Option<Storage>,
    pub(crate) exports: std::sync::OnceLock<Arc<dyn ExportHooks>>,
    #[allow(dead_code)] // read by the snapshot jobs
    pub(crate) jobs: crate::data::Jobs,
}

fn row<T: Serialize>(kind: &str, id: &str, account: &str, region: &str, doc: &T) -> Result<Change> {
    Ok(Change::Put(Row {
        kind: kind.into(),
        id: id.into(),
        account: account.into(),
        region: region.into(),
        doc: serde_json::to_string(doc)?,
    }))
}

fn load<T: DeserializeOwned + Send>(catalog: &dyn Catalog, kind: &str) -> Result<Vec<(Row, T)>> {
    let rows = catalog.load_kind(kind)?;
    let parse = |r: &Row| -> Result<T> {
        serde_json::from_str(&r.doc)
            .map_err(|e| EngineError::Internal(format!("catalog row {kind}/{} is unreadable: {e}", r.id)))
    };
    // Start-up time is mostly parsing documents (100,000 snapshots): spread it over the cores.
    const PARALLEL_FROM: usize = 4096;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let docs: Vec<T> = if rows.len() < PARALLEL_FROM || threads < 2 {
        rows.iter().map(parse).collect::<Result<_>>()?
    } else {
        let per = rows.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> =
                rows.chunks(per).map(|c| s.spawn(move || c.iter().map(parse).collect::<Result<Vec<T>>>())).collect();
            let mut out = Vec::with_capacity(rows.len());
            for p in parts {
                out.extend(p.join().map_err(|_| EngineError::Internal("loading the catalog panicked".into()))??);
            }
            Ok::<_, EngineError>(out)
        })?
    };
    Ok(rows.into_iter().zip(docs).collect())
}

thread_local! {
    /// The newest catalog commit this thread made and has not synced yet.
    static PENDING_SYNC: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub(crate) fn settings_key(account: &str, region: &str) -> String {
    format!("{account}/{region}")
}

impl Engine {
    /// Load every record from the catalog.
    /// `storage` is `None` only for tools that touch the catalog alone (`blocksnap admin`).
    pub fn open(catalog: Arc<dyn Catalog>, config: EngineConfig, storage: Option<Storage>) -> Result<Self> {
        let started = std::time::Instant::now();
        let mut st = State::default();
        for (_, a) in load::<Account>(&*catalog, KIND_ACCOUNT)? {
            st.accounts.insert(a.id.clone(), a);
        }
        for (_, k) in load::<AccessKey>(&*catalog, KIND_ACCESS_KEY)? {
            st.keys.insert(k.access_key_id.clone(), k);
        }
        for (_, v) in load::<Volume>(&*catalog, KIND_VOLUME)? {
            st.volumes.insert(v.id.clone(), v);
        }
        for (_, i) in load::<Instance>(&*catalog, KIND_INSTANCE)? {
            st.instances.insert(i.id.clone(), i);
        }
        for (_, s) in load::<Snapshot>(&*catalog, KIND_SNAPSHOT)? {
            st.snapshot_tally.add(&s);
            if let Some(old) = st.snapshots.insert(s.id.clone(), s) {
                st.snapshot_tally.remove(&old);
            }
        }
        for (_, k) in load::<KmsKey>(&*catalog, KIND_KMS_KEY)? {
            st.kms_keys.insert(k.key_id.clone(), k);
        }
        for (r, s) in load::<RegionSettings>(&*catalog, KIND_SETTINGS)? {
            st.settings.insert(settings_key(&r.account, &r.region), s);
        }
        for kind in DOC_KINDS {
            let rows = catalog.load_kind(kind)?;
            st.docs.insert(kind, rows.into_iter().map(|r| (r.id.clone(), r)).collect());
        }
        if let Some(r) = catalog.get(KIND_META, "root_account")? {
            st.root_account = Some(r.account);
        }
        tracing::info!(
            accounts = st.accounts.len(),
            volumes = st.volumes.len(),
            instances = st.instances.len(),
            snapshots = st.snapshots.len(),
            ms = started.elapsed().as_millis() as u64,
            "catalog loaded"
        );
        Ok(Engine {
            catalog,
            config,
            state: Mutex::new(st),
            storage,
            exports: std::sync::OnceLock::new(),
            jobs: Default::default(),
        })
    }

    /// Connect the NBD front end (once, at start).
    pub fn set_export_hooks(&self, hooks: Arc<dyn ExportHooks>) {
        let _ = self.exports.set(hooks);
    }

    pub(crate) fn close_export(&self, name: &str) {
        if let Some(h) = self.exports.get() {
            h.close_export(name);
        }
    }

    pub(crate) fn export_access_changed(&self, name: &str) {
        if let Some(h) = self.exports.get() {
            h.access_changed(name);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // State is only mutated after a successful commit, by code that does not panic between the
        // commit and the in-memory apply; a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make every commit this thread made durable (group commit: concurrent callers share one
    /// fsync). Front ends call it before answering; jobs before an irreversible step.
    pub fn sync_pending(&self) -> Result<()> {
        // A catalog that cannot make commits durable (tests/failed_sync.rs).
        fail::fail_point!("engine.sync_pending", |_| Err(EngineError::Internal("injected: sync failed".into())));
        let seq = PENDING_SYNC.with(|p| p.replace(0));
        if seq > 0 {
            self.catalog.sync(seq)?;
        }
        Ok(())
    }

    /// Bytes (volume files, manifests) may only be removed once the row change that orphans them is
    /// durable: a crash (or power loss) after the removal must not bring back a row without its bytes.
    /// Returns `false` (and logs) when this thread still holds an unsynced commit; debug builds panic.
    pub(crate) fn row_changes_durable(&self, what: &str) -> bool {
        let pending = PENDING_SYNC.with(|p| p.get());
        debug_assert_eq!(pending, 0, "{what}: bytes removed before the row change is durable");
        if pending != 0 {
            tracing::error!(what, "bytes would be removed before the row change is durable; leaving them to cleanup");
        }
        pending == 0
    }

    /// Commit records (atomically, crash-safe for the process), then apply them to memory. The
    /// caller's thread must call [`Engine::sync_pending`] before acknowledging anything.
    pub(crate) fn commit(&self, st: &mut State, recs: Vec<Rec>) -> Result<()> {
        let mut changes = Vec::with_capacity(recs.len());
        for r in &recs {
            changes.push(match r {
                Rec::Account(a) => row(KIND_ACCOUNT, &a.id, &a.id, "", a)?,
                Rec::AccessKey(k) => row(KIND_ACCESS_KEY, &k.access_key_id, &k.account, "", k)?,
                Rec::DeleteAccessKey(id) => Change::Delete { kind: KIND_ACCESS_KEY.into(), id: id.clone() },
                Rec::Volume(v) => row(KIND_VOLUME, &v.id, &v.account, &v.region, v)?,
                Rec::DeleteVolume(id) => Change::Delete { kind: KIND_VOLUME.into(), id: id.clone() },
                Rec::Instance(i) => row(KIND_INSTANCE, &i.id, &i.account, &i.region, i)?,
                Rec::Snapshot(s) => row(KIND_SNAPSHOT, &s.id, &s.account, &s.region, s)?,
                Rec::DeleteSnapshot(id) => Change::Delete { kind: KIND_SNAPSHOT.into(), id: id.clone() },
                Rec::KmsKey(k) => row(KIND_KMS_KEY, &k.key_id, &k.account, &k.region, k)?,
                Rec::Settings { account, region, settings } => {
                    row(KIND_SETTINGS, &settings_key(account, region), account, region, settings)?
                }
                Rec::RootAccount(a) => row(KIND_META, "root_account", a, "", &serde_json::Value::Null)?,
                Rec::Doc(_, r) => Change::Put(r.clone()),
                Rec::DeleteDoc(kind, id) => Change::Delete { kind: kind.to_string(), id: id.clone() },
            });
        }
        let seq = self.catalog.commit(&changes)?;
        PENDING_SYNC.with(|p| p.set(p.get().max(seq)));
        for r in recs {
            match r {
                Rec::Account(a) => {
                    st.accounts.insert(a.id.clone(), a);
                }
                Rec::AccessKey(k) => {
                    st.keys.insert(k.access_key_id.clone(), k);
                }
                Rec::DeleteAccessKey(id) => {
                    st.keys.remove(&id);
                }
                Rec::Volume(v) => {
                    st.volumes.insert(v.id.clone(), v);
                }
                Rec::DeleteVolume(id) => {
                    st.volumes.remove(&id);
                }
                Rec::Instance(i) => {
                    st.instances.insert(i.id.clone(), i);
                }
                Rec::Snapshot(s) => {
                    st.snapshot_tally.add(&s);
                    if let Some(old) = st.snapshots.insert(s.id.clone(), s) {
                        st.snapshot_tally.remove(&old);
                    }
                }
                Rec::DeleteSnapshot(id) => {
                    if let Some(old) = st.snapshots.remove(&id) {
                        st.snapshot_tally.remove(&old);
                    }
                }
                Rec::KmsKey(k) => {
                    st.kms_keys.insert(k.key_id.clone(), k);
                }
                Rec::Settings { account, region, settings } => {
                    st.settings.insert(settings_key(&account, &region), settings);
                }
                Rec::RootAccount(a) => st.root_account = Some(a),
                Rec::Doc(kind, r) => {
                    st.docs.entry(kind).or_default().insert(r.id.clone(), r);
                }
                Rec::DeleteDoc(kind, id) => {
                    if let Some(m) = st.docs.get_mut(kind) {
                        m.remove(&id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Is this region served?
    pub fn check_region(&self, region: &str) -> Result<()> {
        if self.config.regions.iter().any(|r| r == region) {
            Ok(())
        } else {
            Err(EngineError::client(
                "AuthFailure",
                format!(
                    "The region '{region}' is not served by this blocksnap endpoint (configured: {}).",
                    self.config.regions.join(", ")
                ),
            ))
        }
    }

    pub fn regions(&self) -> &[String] {
        &self.config.regions
    }

    // ---- accounts and credentials ----

    /// Make sure the root account exists. With `key` set (from the environment) that key is the root
    /// key; otherwise a key is generated the first time. Returns newly generated credentials.
    pub fn ensure_root(&self, key: Option<(String, String)>) -> Result<Option<(String, AccessKey)>> {
        let mut st = self.lock();
        let mut recs = Vec::new();
        let account = match &st.root_account {
            Some(a) => a.clone(),
            None => {
                let a = Account { id: ids::new_account_id(), name: "root".into(), created: now_millis(), closed: None };
                recs.push(Rec::Account(a.clone()));
                recs.push(Rec::RootAccount(a.id.clone()));
                a.id
            }
        };
        let mut generated = None;
        match key {
            Some((akid, secret)) => {
                let current = st.keys.get(&akid);
                if let Some(k) = current.filter(|k| k.account != account) {
                    return Err(EngineError::client(
                        "InvalidParameterValue",
                        format!("The root access key id {akid} is already a key of account {}.", k.account),
                    ));
                }
                // The environment's key is the root account's only key: one set before (or generated
                // at the first start, or added with `blocksnap admin`) stops working now.
                for old in st.keys.values().filter(|k| k.account == account && k.access_key_id != akid) {
                    tracing::warn!(access_key_id = %old.access_key_id, "revoking the previous root access key");
                    recs.push(Rec::DeleteAccessKey(old.access_key_id.clone()));
                }
                if current.is_none_or(|k| k.secret_access_key != secret) {
                    recs.push(Rec::AccessKey(AccessKey {
                        access_key_id: akid,
                        secret_access_key: secret,
                        account: account.clone(),
                    }));
                }
            }
            None => {
                if !st.keys.values().any(|k| k.account == account) {
                    let k = AccessKey {
                        access_key_id: ids::new_access_key_id(),
                        secret_access_key: ids::new_secret(),
                        account: account.clone(),
                    };
                    generated = Some((account.clone(), k.clone()));
                    recs.push(Rec::AccessKey(k));
                }
            }
        }
        self.commit(&mut st, recs)?;
        drop(st);
        self.sync_pending()?;
        Ok(generated)
    }

    pub fn root_account(&self) -> Option<String> {
        self.lock().root_account.clone()
    }

    /// Moves the engine's time forward by `seconds` (see [`crate::clock`]) and answers the new time.
    /// Only with the test clock enabled, and only for the root account.
    pub fn advance_test_clock(&self, ctx: &Ctx, seconds: u64) -> Result<crate::model::Millis> {
        if !self.config.test_clock {
            return Err(EngineError::client(
                "UnknownOperationException",
                "AdvanceClock is served only by a server started with BLOCKSNAP_TEST_CLOCK=1 (tests).",
            ));
        }
        if self.root_account().as_deref() != Some(ctx.account.as_str()) {
            return Err(EngineError::client("AccessDeniedException", "Only the root account may move the test clock."));
        }
        if seconds > crate::clock::MAX_ADVANCE_SECS {
            return Err(EngineError::client(
                "ValidationException",
                format!("Seconds must be at most {}.", crate::clock::MAX_ADVANCE_SECS),
            ));
        }
        let now = crate::clock::advance(seconds);
        tracing::warn!(seconds, now, "the test clock moved forward");
        Ok(now)
    }

    /// A new isolated account with its own key.
    pub fn create_account(&self, name: &str) -> Result<(Account, AccessKey)> {
        let mut st = self.lock();
        let mut id = ids::new_account_id();
        while st.accounts.contains_key(&id) {
            id = ids::new_account_id();
        }
        let account = Account { id: id.clone(), name: name.into(), created: now_millis(), closed: None };
        let key =
            AccessKey { access_key_id: ids::new_access_key_id(), secret_access_key: ids::new_secret(), account: id };
        self.commit(&mut st, vec![Rec::Account(account.clone()), Rec::AccessKey(key.clone())])?;
        drop(st);
        self.sync_pending()?;
        Ok((account, key))
    }

    /// The account and secret of an access key, read from the catalog on every call: `blocksnap
    /// admin` creates, rotates and deletes keys from another process while the server runs, and a
    /// deleted key must stop working at once. (One indexed SQLite read, outside the state lock.)
    pub fn access_key(&self, access_key_id: &str) -> Result<Option<AccessKey>> {
        let Some(r) = self.catalog.get(KIND_ACCESS_KEY, access_key_id)? else {
            self.lock().keys.remove(access_key_id);
            return Ok(None);
        };
        let key: AccessKey = serde_json::from_str(&r.doc)?;
        let known = self.lock().accounts.contains_key(&key.account);
        let account = if known { None } else { self.catalog.get(KIND_ACCOUNT, &key.account)? };
        let mut st = self.lock();
        if let Some(a) = account {
            let a: Account = serde_json::from_str(&a.doc)?;
            st.accounts.insert(a.id.clone(), a);
        }
        // A key of a deleted account (one made beside the server as it was being deleted) is no key.
        if st.accounts.get(&key.account).is_some_and(|a| a.closed.is_some()) {
            return Ok(None);
        }
        st.keys.insert(key.access_key_id.clone(), key.clone());
        Ok(Some(key))
    }
}
