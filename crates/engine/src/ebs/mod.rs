//! Snapshots written and read block by block: the domain of the EBS direct APIs (StartSnapshot,
//! PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks, ListChangedBlocks, GetSnapshotBlock).
//!
//! A snapshot started here is an ordinary snapshot row (`pending`, volume `vol-ffffffff`) with a
//! [`DirectWrite`] record. Each written block is stored in the region's block store first, then
//! recorded in the snapshot's block log (`store::BlockLog`, `DATA/direct-writes/<id>.blocks`,
//! appended and synced before the write is acknowledged). Completion checks the count and the
//! aggregated checksum, records `completing` durably, then writes the manifest (the parent's block
//! ids with the written ones over them) and marks the row `completed`, exactly as an upload does;
//! a restart finishes it. A snapshot not completed within its timeout ends in `error`.
//!
//! Reading goes through the manifests only (`list.rs`): block tokens name a block id bound to one
//! snapshot and index (`token.rs`), and changed blocks are found segment by segment, so
//! unchanged 512 MiB stretches of two snapshots cost nothing.

mod list;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use blocksnap_store::{BlockId, BlockLog, Codec, LogRecord, Manifest};
use bytes::Bytes;

pub use list::{BlockPage, ChangedBlock, ChangedPage, ListBlocks, ListChangedBlocks};

use crate::data::BLOCK_SIZE;
use crate::engine::{Engine, Rec, State, settings_key};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::{Ctx, DirectWrite, KmsKey, Millis, Snapshot, SnapshotState, Tag, Tags, now_millis};
use crate::volumes::GIB;

/// Catalog kind of the block-token key row.
pub(crate) const KIND_EBS_KEY: &str = "ebs_token_key";
/// The EBS direct APIs' block size (the store's block size).
pub const EBS_BLOCK_SIZE: u32 = BLOCK_SIZE as u32;
/// Largest volume StartSnapshot accepts, GiB (64 TiB).
pub const MAX_VOLUME_SIZE_GIB: i64 = 65_536;
/// Snapshots one account may have pending through StartSnapshot in a region at once.
pub const MAX_PENDING_DIRECT: usize = 100;
const DEFAULT_TIMEOUT_MINUTES: i64 = 60;
/// How long CompleteSnapshot waits for the manifest before answering `pending`.
const COMPLETE_WAIT: Duration = Duration::from_secs(10);
/// How long completion or expiry waits for block writes in flight.
const GATE_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn validation(reason: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::reasoned("ValidationException", reason, message)
}

pub(crate) fn not_found(id: &str) -> EngineError {
    EngineError::reasoned(
        "ResourceNotFoundException",
        "SNAPSHOT_NOT_FOUND",
        format!("The snapshot '{id}' does not exist."),
    )
}

pub(crate) fn denied(reason: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::reasoned("AccessDeniedException", reason, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

/// StartSnapshot, as parsed by the front end (ranges are checked here).
#[derive(Debug, Clone, Default)]
pub struct StartSnapshot {
    pub volume_size_gib: i64,
    pub parent_snapshot_id: Option<String>,
    pub tags: Vec<Tag>,
    pub description: Option<String>,
    pub client_token: Option<String>,
    pub encrypted: Option<bool>,
    pub kms_key_arn: Option<String>,
    pub timeout_minutes: Option<i64>,
}

/// PutSnapshotBlock: one 512 KiB block and the SHA-256 the client computed over it.
#[derive(Debug, Clone)]
pub struct PutBlock {
    pub snapshot_id: String,
    pub block_index: i64,
    pub data: Bytes,
    pub checksum: [u8; 32],
    pub progress: Option<i64>,
}

/// CompleteSnapshot: the number of blocks written and, optionally, the SHA-256 over the
/// concatenated per-block SHA-256s in block order (`LINEAR` aggregation).
#[derive(Debug, Clone)]
pub struct CompleteSnapshot {
    pub snapshot_id: String,
    pub changed_blocks_count: i64,
    pub linear_checksum: Option<[u8; 32]>,
}

/// GetSnapshotBlock.
#[derive(Debug, Clone)]
pub struct GetBlock {
    pub snapshot_id: String,
    pub block_index: i64,
    pub block_token: String,
}

/// A block read back: plaintext and its SHA-256.
#[derive(Debug, Clone)]
pub struct BlockData {
    pub data: Bytes,
    pub checksum: [u8; 32],
}

/// Engine-wide state of the direct APIs: the snapshots being written, the token key, and the
/// caches of manifest headers and segments the listings read.
#[derive(Default)]
pub(crate) struct Direct {
    open: Mutex<HashMap<String, Arc<Pending>>>,
    token_key: OnceLock<[u8; 32]>,
    pub(crate) cache: list::Cache,
    /// Block reads and writes in flight per account (RequestThrottledException past the limit).
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// A snapshot being written.
pub(crate) struct Pending {
    log: BlockLog,
    codec: Codec,
    /// `true` once completion or expiry has taken the snapshot: block writes hold it shared
    /// (and check it is still open), completion and expiry exclusively, so no block lands after
    /// the count is checked.
    gate: tokio::sync::RwLock<bool>,
    blocks: Mutex<BTreeMap<u32, (BlockId, [u8; 32])>>,
    stored_bytes: AtomicU64,
}

impl Pending {
    fn written(&self) -> BTreeMap<u32, (BlockId, [u8; 32])> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
    out
}

fn linear_checksum(blocks: &BTreeMap<u32, (BlockId, [u8; 32])>) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (_, sum) in blocks.values() {
        ctx.update(sum);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn block_count(s: &Snapshot) -> u64 {
    (s.volume_size_gib as u64 * GIB).div_ceil(BLOCK_SIZE)
}

fn valid_snapshot_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .strip_prefix("snap-")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

impl Engine {
    /// A slot for one block request of the account, or RequestThrottledException: one account
    /// cannot take every worker of the service.
    fn ebs_slot(&self, ctx: &Ctx) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let limit = self.config.ebs_max_inflight.max(1);
        let sem = self
            .jobs
            .direct
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ctx.account.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit)))
            .clone();
        sem.try_acquire_owned().map_err(|_| {
            EngineError::reasoned(
                "RequestThrottledException",
                "ACCOUNT_THROTTLED",
                format!("The account has {limit} block requests in flight, the most it may: retry with backoff."),
            )
        })
    }

    fn direct_log_path(&self, snapshot_id: &str) -> Result<PathBuf> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("direct writes", "no storage"))?;
        let root = storage.snapshot_root.parent().map(|p| p.join("direct-writes"));
        root.map(|r| r.join(format!("{snapshot_id}.blocks"))).ok_or_else(|| internal("direct writes", "no data dir"))
    }

    fn pending_direct(&self, id: &str) -> Option<Arc<Pending>> {
        self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn forget_direct(&self, id: &str) {
        self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        match self.direct_log_path(id) {
            Ok(path) => {
                if let Err(e) = BlockLog::remove(&path) {
                    tracing::warn!(snapshot_id = id, error = %e, "removing a block log");
                }
            }
            Err(e) => tracing::warn!(error = %e, "block log path"),
        }
    }

    /// Every block written into the region's snapshots still being built (GC roots).
    pub(crate) fn ebs_live_blocks(&self, region: &str) -> std::collections::HashSet<BlockId> {
        let ids: Vec<String> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.region == region && s.state == SnapshotState::Pending && s.direct.is_some())
            .map(|s| s.id.clone())
            .collect();
        let mut out = std::collections::HashSet::new();
        for id in ids {
            if let Some(p) = self.pending_direct(&id) {
                out.extend(p.blocks.lock().unwrap_or_else(|p| p.into_inner()).values().map(|(b, _)| *b));
            }
        }
        out
    }

    /// The key block tokens are signed with: made once, kept in the catalog. Blocking (a commit).
    pub(crate) fn ebs_token_key(&self) -> Result<[u8; 32]> {
        if let Some(k) = self.jobs.direct.token_key.get() {
            return Ok(*k);
        }
        let key = {
            let mut st = self.lock();
            let existing = st.docs.get(KIND_EBS_KEY).and_then(|m| m.get("v1")).map(|r| r.doc.clone());
            match existing.and_then(|d| serde_json::from_str::<String>(&d).ok()).and_then(|h| hex::decode(h).ok()) {
                Some(b) if b.len() == 32 => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&b);
                    k
                }
                _ => {
                    use rand::Rng;
                    let k: [u8; 32] = rand::rng().random();
                    let row = blocksnap_catalog::Row {
                        kind: KIND_EBS_KEY.into(),
                        id: "v1".into(),
                        account: String::new(),
                        region: String::new(),
                        doc: serde_json::to_string(&hex::encode(k))?,
                    };
                    self.commit(&mut st, vec![Rec::Doc(KIND_EBS_KEY, row)])?;
                    k
                }
            }
        };
        self.sync_pending()?;
        Ok(*self.jobs.direct.token_key.get_or_init(|| key))
    }

    async fn ebs_token_key_async(&self) -> Result<[u8; 32]> {
        if let Some(k) = self.jobs.direct.token_key.get() {
            return Ok(*k);
        }
        let me = self.me().ok_or_else(|| internal("token key", "engine not started"))?;
        tokio::task::spawn_blocking(move || me.ebs_token_key()).await.map_err(|e| internal("token key", e))?
    }

    /// The KMS key of an encrypted snapshot, if the caller may use it (keys are usable by their
    /// own account only: there are no key policies or grants).
    fn usable_key<'a>(st: &'a State, ctx: &Ctx, s: &Snapshot) -> Result<Option<&'a KmsKey>> {
        let Some(arn) = s.kms_key_id.as_deref().filter(|_| s.encrypted) else { return Ok(None) };
        match st.kms_keys.values().find(|k| k.arn == arn) {
            Some(k) if k.account == ctx.account && k.enabled => Ok(Some(k)),
            Some(k) if k.account == ctx.account => {
                Err(denied("DEPENDENCY_ACCESS_DENIED", format!("The KMS key {arn} of snapshot {} is disabled.", s.id)))
            }
            _ => Err(denied(
                "DEPENDENCY_ACCESS_DENIED",
                format!("You are not allowed to use the KMS key that encrypts snapshot {}.", s.id),
            )),
        }
    }

    /// A snapshot the caller may read through the direct APIs: its own, or shared with its
    /// account by id (public snapshots are not served, as on AWS); encrypted ones also need the key.
    pub(crate) fn ebs_readable(&self, st: &State, ctx: &Ctx, id: &str) -> Result<Snapshot> {
        if !valid_snapshot_id(id) {
            return Err(validation("INVALID_SNAPSHOT_ID", format!("'{id}' is not a snapshot id (snap-…).")));
        }
        let s = st.snapshots.get(id).filter(|s| s.region == ctx.region).ok_or_else(|| not_found(id))?;
        if s.account != ctx.account && !s.create_volume_permissions.iter().any(|p| p == &ctx.account) {
            return Err(denied("UNAUTHORIZED_ACCOUNT", format!("You are not authorized to access snapshot {id}.")));
        }
        Self::usable_key(st, ctx, s)?;
        if !crate::archive::in_standard_tier(s) {
            return Err(validation(
                "INVALID_SNAPSHOT_ID",
                format!("Snapshot {id} is in the archive tier; restore it with RestoreSnapshotTier first."),
            ));
        }
        Ok(s.clone())
    }

    /// The caller's own snapshot started with StartSnapshot.
    fn ebs_own_direct(&self, st: &State, ctx: &Ctx, id: &str) -> Result<Snapshot> {
        if !valid_snapshot_id(id) {
            return Err(validation("INVALID_SNAPSHOT_ID", format!("'{id}' is not a snapshot id (snap-…).")));
        }
        let s = st.snapshots.get(id).filter(|s| s.region == ctx.region).ok_or_else(|| not_found(id))?;
        if s.account != ctx.account {
            return Err(denied("UNAUTHORIZED_ACCOUNT", format!("You are not authorized to write to snapshot {id}.")));
        }
        if s.direct.is_none() {
            return Err(validation(
                "INVALID_SNAPSHOT_ID",
                format!("Snapshot {id} was not started with StartSnapshot: blocks can only be written into those."),
            ));
        }
        Ok(s.clone())
    }

    /// StartSnapshot. Blocking (creates the block log, commits the row); the caller syncs.
    pub fn ebs_start_snapshot(&self, ctx: &Ctx, req: StartSnapshot) -> Result<Snapshot> {
        if !(1..=MAX_VOLUME_SIZE_GIB).contains(&req.volume_size_gib) {
            return Err(validation(
                "INVALID_VOLUME_SIZE",
                format!("VolumeSize must be 1 to {MAX_VOLUME_SIZE_GIB} GiB, not {}.", req.volume_size_gib),
            ));
        }
        let timeout = req.timeout_minutes.unwrap_or(DEFAULT_TIMEOUT_MINUTES);
        if !(10..=4320).contains(&timeout) {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("Timeout must be 10 to 4320 minutes, not {timeout}."),
            ));
        }
        if req.description.as_ref().is_some_and(|d| d.chars().count() > 255) {
            return Err(validation("INVALID_PARAMETER_VALUE", "Description must be at most 255 characters."));
        }
        if let Some(t) = &req.client_token
            && (t.is_empty() || t.len() > 255 || t.chars().any(char::is_whitespace))
        {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                "ClientToken must be 1 to 255 characters without white space.",
            ));
        }
        let mut tags = Tags::new();
        for t in &req.tags {
            crate::tags::check_tag(t).map_err(|e| validation("INVALID_TAG", e.message()))?;
            tags.insert(t.key.clone(), t.value.clone());
        }
        if req.parent_snapshot_id.is_some() && req.encrypted.is_some() {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                "ParentSnapshotId and Encrypted cannot be given together: a snapshot with a parent takes the parent's encryption (or KmsKeyArn's key).",
            ));
        }
        let fingerprint = format!("{:?}", StartSnapshot { client_token: None, ..req.clone() });
        // Plan under the lock (no I/O), create the log without it, then plan again and commit.
        let id = {
            let st = self.lock();
            if let Some(found) = self.ebs_idempotent(&st, ctx, &req, &fingerprint)? {
                return Ok(found);
            }
            let mut id = ids::new_id("snap");
            while st.snapshots.contains_key(&id) {
                id = ids::new_id("snap");
            }
            self.ebs_plan(&st, ctx, &req, &id, &tags, &fingerprint, timeout)?;
            id
        };
        let path = self.direct_log_path(&id)?;
        let log = BlockLog::create(&path).map_err(|e| internal("creating the block log", e))?;
        let committed = {
            let mut st = self.lock();
            match self.ebs_idempotent(&st, ctx, &req, &fingerprint) {
                Ok(Some(found)) => Err(Ok(found)),
                Err(e) => Err(Err(e)),
                Ok(None) => match self.ebs_plan(&st, ctx, &req, &id, &tags, &fingerprint, timeout) {
                    Ok((snap, recs)) => self.commit(&mut st, recs).map(|()| snap).map_err(Err),
                    Err(e) => Err(Err(e)),
                },
            }
        };
        let snap = match committed {
            Ok(s) => s,
            Err(answer) => {
                drop(log);
                let _ = BlockLog::remove(&path);
                return answer;
            }
        };
        let codec = self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?;
        self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            snap.id.clone(),
            Arc::new(Pending {
                log,
                codec,
                gate: tokio::sync::RwLock::new(false),
                blocks: Mutex::new(BTreeMap::new()),
                stored_bytes: AtomicU64::new(0),
            }),
        );
        tracing::info!(snapshot_id = snap.id, size_gib = snap.volume_size_gib, "direct snapshot started");
        Ok(snap)
    }

    /// The snapshot an earlier StartSnapshot with this ClientToken made, if any.
    fn ebs_idempotent(
        &self,
        st: &State,
        ctx: &Ctx,
        req: &StartSnapshot,
        fingerprint: &str,
    ) -> Result<Option<Snapshot>> {
        let Some(token) = &req.client_token else { return Ok(None) };
        let found = st.snapshots.values().find(|s| {
            s.account == ctx.account
                && s.region == ctx.region
                && s.direct.as_ref().is_some_and(|d| d.client_token.as_deref() == Some(token))
        });
        match found {
            None => Ok(None),
            Some(s) if s.direct.as_ref().is_some_and(|d| d.fingerprint == fingerprint) => Ok(Some(s.clone())),
            Some(s) => Err(EngineError::client(
                "ConflictException",
                format!("The client token was already used for snapshot {} with other parameters.", s.id),
            )),
        }
    }

    /// What StartSnapshot commits: the row (and a default KMS key made on first use).
    #[allow(clippy::too_many_arguments)]
    fn ebs_plan(
        &self,
        st: &State,
        ctx: &Ctx,
        req: &StartSnapshot,
        id: &str,
        tags: &Tags,
        fingerprint: &str,
        timeout: i64,
    ) -> Result<(Snapshot, Vec<Rec>)> {
        let pending = st
            .snapshots
            .values()
            .filter(|s| {
                s.account == ctx.account
                    && s.region == ctx.region
                    && s.state == SnapshotState::Pending
                    && s.direct.is_some()
            })
            .count();
        if pending >= MAX_PENDING_DIRECT {
            return Err(EngineError::client(
                "ConcurrentLimitExceededException",
                format!(
                    "You have {pending} snapshots pending from StartSnapshot; the limit is {MAX_PENDING_DIRECT}. Complete one or let it time out."
                ),
            ));
        }
        let total = st.snapshots.values().filter(|s| s.account == ctx.account && s.region == ctx.region).count();
        if total >= crate::snapshots::MAX_SNAPSHOTS_PER_REGION {
            return Err(EngineError::reasoned(
                "ServiceQuotaExceededException",
                "DEPENDENCY_SERVICE_QUOTA_EXCEEDED",
                format!(
                    "The maximum number of snapshots per region ({}) has been reached.",
                    crate::snapshots::MAX_SNAPSHOTS_PER_REGION
                ),
            ));
        }
        let parent = match &req.parent_snapshot_id {
            None => None,
            Some(pid) => {
                let p = self.ebs_readable(st, ctx, pid)?;
                if p.state != SnapshotState::Completed {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        format!("The parent snapshot {pid} is {}; it must be completed.", p.state.as_str()),
                    ));
                }
                if i64::from(p.volume_size_gib) > req.volume_size_gib {
                    return Err(validation(
                        "INVALID_VOLUME_SIZE",
                        format!(
                            "VolumeSize {} GiB is smaller than the parent snapshot's {} GiB.",
                            req.volume_size_gib, p.volume_size_gib
                        ),
                    ));
                }
                Some(p)
            }
        };
        let settings = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        let mut recs = Vec::new();
        let key_err = |e: EngineError| validation("INVALID_CUSTOMER_KEY", e.message());
        let resolve = |recs: &mut Vec<Rec>, arn: &str| -> Result<KmsKey> {
            let k = self.resolve_kms_key(st, ctx, recs, arn).map_err(key_err)?;
            if !k.enabled {
                return Err(validation("INVALID_CUSTOMER_KEY", format!("The KMS key {arn} is disabled.")));
            }
            Ok(k)
        };
        // (KMS key, whether the parent's blocks can be referenced as they are)
        let (key, same_lineage): (Option<KmsKey>, bool) = match &parent {
            Some(p) if p.encrypted => {
                let pkey = Self::usable_key(st, ctx, p)?.cloned();
                match (&req.kms_key_arn, pkey) {
                    (Some(arn), pk) => {
                        let k = resolve(&mut recs, arn)?;
                        let same = pk.is_some_and(|pk| pk.arn == k.arn);
                        (Some(k), same)
                    }
                    (None, pk) => (pk, true),
                }
            }
            Some(_) => match &req.kms_key_arn {
                Some(arn) => (Some(resolve(&mut recs, arn)?), false),
                None if settings.ebs_encryption_by_default => {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        "Encryption by default is enabled: an unencrypted parent snapshot cannot be used. Copy it to an encrypted snapshot first, or give KmsKeyArn.",
                    ));
                }
                None => (None, true),
            },
            None => {
                if req.encrypted == Some(false) && settings.ebs_encryption_by_default {
                    return Err(validation(
                        "INVALID_PARAMETER_VALUE",
                        "Encryption by default is enabled for this account: Encrypted cannot be false.",
                    ));
                }
                if req.kms_key_arn.is_some() && req.encrypted != Some(true) {
                    return Err(validation("INVALID_PARAMETER_VALUE", "KmsKeyArn requires Encrypted to be true."));
                }
                if req.encrypted == Some(true) || settings.ebs_encryption_by_default {
                    let k = match (&req.kms_key_arn, &settings.default_kms_key) {
                        (Some(arn), _) | (None, Some(arn)) => resolve(&mut recs, arn)?,
                        (None, None) => self.default_ebs_key(st, ctx, &mut recs),
                    };
                    (Some(k), true)
                } else {
                    (None, true)
                }
            }
        };
        let (wrapped, dek_id) = match (&key, &parent) {
            (Some(_), Some(p)) if same_lineage && p.encrypted => {
                (p.wrapped_data_key.clone(), p.data_encryption_key_id.clone())
            }
            (Some(k), _) => {
                let (w, i) = Self::new_data_key(k)?;
                (Some(w), Some(i))
            }
            (None, _) => (None, None),
        };
        let now = now_millis();
        let minute = self.config.direct_minute.as_millis() as Millis;
        let snap = Snapshot {
            id: id.to_string(),
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            volume_id: crate::copy::COPY_VOLUME_ID.to_string(),
            volume_size_gib: req.volume_size_gib as u32,
            state: SnapshotState::Pending,
            state_message: None,
            progress: 0,
            start_time: now,
            completion_time: None,
            description: req.description.clone().unwrap_or_default(),
            encrypted: key.is_some(),
            kms_key_id: key.as_ref().map(|k| k.arn.clone()),
            tags: tags.clone(),
            parent: parent.as_ref().map(|p| p.id.clone()),
            epoch: None,
            create_volume_permissions: vec![],
            wrapped_data_key: wrapped,
            data_encryption_key_id: dek_id,
            stored_bytes: 0,
            blocks_total: 0,
            instance_set: None,
            tiering: None,
            source_snapshot: None,
            direct: Some(DirectWrite {
                deadline: now + timeout * minute,
                timeout_minutes: timeout as u32,
                client_token: req.client_token.clone(),
                fingerprint: fingerprint.to_string(),
                completing: false,
                reencode_parent: parent.is_some() && !same_lineage,
            }),
        };
        recs.push(Rec::Snapshot(snap.clone()));
        Ok((snap, recs))
    }

    /// PutSnapshotBlock: verify the checksum, store the block, record it durably. Answers the
    /// checksum. Nothing is recorded when the checksum does not match.
    pub async fn ebs_put_block(&self, ctx: &Ctx, req: PutBlock) -> Result<[u8; 32]> {
        let _slot = self.ebs_slot(ctx)?;
        let snap = {
            let st = self.lock();
            self.ebs_own_direct(&st, ctx, &req.snapshot_id)?
        };
        let direct = snap.direct.clone().unwrap_or_else(|| unreachable_direct(&snap));
        if snap.state != SnapshotState::Pending || direct.completing {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "Snapshot {} is {}: it no longer accepts blocks.",
                    snap.id,
                    if direct.completing { "completing" } else { snap.state.as_str() }
                ),
            ));
        }
        let nblocks = block_count(&snap);
        let index = u32::try_from(req.block_index).ok().filter(|i| u64::from(*i) < nblocks).ok_or_else(|| {
            validation(
                "INVALID_BLOCK",
                format!(
                    "Block index {} is outside the volume: {} blocks of 512 KiB (0 to {}).",
                    req.block_index,
                    nblocks,
                    nblocks - 1
                ),
            )
        })?;
        if req.data.len() != BLOCK_SIZE as usize {
            return Err(validation(
                "INVALID_BLOCK",
                format!("A block must be {BLOCK_SIZE} bytes; this one is {}.", req.data.len()),
            ));
        }
        let pending = self.pending_direct(&snap.id).ok_or_else(|| {
            validation("INVALID_PARAMETER_VALUE", format!("Snapshot {} no longer accepts blocks.", snap.id))
        })?;
        let open = pending.gate.read().await;
        if *open {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!("Snapshot {} is being completed: it no longer accepts blocks.", snap.id),
            ));
        }
        let (p2, data) = (pending.clone(), req.data.clone());
        let (sum, id) = tokio::task::spawn_blocking(move || {
            let sum = sha256(&data);
            let id = if p2.codec.is_encrypted() { p2.codec.block_id(&data) } else { plain_id(&sum, &data) };
            (sum, id)
        })
        .await
        .map_err(|e| internal("hashing a block", e))?;
        if sum != req.checksum {
            return Err(validation(
                "INVALID_CHECKSUM",
                "The block's SHA-256 does not match x-amz-Checksum: nothing was stored.",
            ));
        }
        let store = self.store(&snap.region).await?;
        let out = {
            let _blocks_in_flight = self.jobs.gc_gate.read().await;
            let out = store
                .put_block_with_id(&pending.codec, id, req.data)
                .await
                .map_err(|e| internal("storing a block", e))?;
            let p2 = pending.clone();
            tokio::task::spawn_blocking(move || p2.log.append(&LogRecord { index, id, sha256: sum }))
                .await
                .map_err(|e| internal("block log", e))?
                .map_err(|e| internal("recording a block", e))?;
            pending.blocks.lock().unwrap_or_else(|p| p.into_inner()).insert(index, (id, sum));
            out
        };
        pending.stored_bytes.fetch_add(out.stored_bytes, Ordering::Relaxed);
        drop(open);
        if let Some(p) = req.progress {
            self.set_progress(&snap.id, p.clamp(0, 99) as u8);
        }
        Ok(sum)
    }

    /// CompleteSnapshot: `Completed` when the manifest is written within a few seconds, `Pending`
    /// while it is still being written (a restart finishes it), `Error` when the aggregated
    /// checksum does not match (the snapshot is then in `error`).
    pub async fn ebs_complete_snapshot(&self, ctx: &Ctx, req: CompleteSnapshot) -> Result<SnapshotState> {
        let snap = {
            let st = self.lock();
            self.ebs_own_direct(&st, ctx, &req.snapshot_id)?
        };
        if snap.state != SnapshotState::Pending {
            return Ok(snap.state);
        }
        if snap.direct.as_ref().is_some_and(|d| d.completing) {
            return Ok(SnapshotState::Pending);
        }
        if req.changed_blocks_count < 0 {
            return Err(validation("INVALID_PARAMETER_VALUE", "ChangedBlocksCount must not be negative."));
        }
        let pending = self.pending_direct(&snap.id).ok_or_else(|| {
            validation("INVALID_PARAMETER_VALUE", format!("Snapshot {} is no longer being written.", snap.id))
        })?;
        let mut closed = tokio::time::timeout(GATE_WAIT, pending.gate.write()).await.map_err(|_| {
            EngineError::client("InternalServerException", "Block writes in flight did not finish in time; retry.")
        })?;
        if *closed {
            return Ok(SnapshotState::Pending);
        }
        let written = pending.written();
        if written.len() as i64 != req.changed_blocks_count {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "ChangedBlocksCount is {} but {} blocks were written to snapshot {}; the snapshot stays pending.",
                    req.changed_blocks_count,
                    written.len(),
                    snap.id
                ),
            ));
        }
        let me = self.me().ok_or_else(|| internal("complete", "engine not started"))?;
        if let Some(want) = req.linear_checksum
            && linear_checksum(&written) != want
        {
            *closed = true;
            drop(closed);
            let (m, id) = (me.clone(), snap.id.clone());
            let _ = tokio::task::spawn_blocking(move || {
                m.fail_snapshot(
                    &id,
                    "The aggregated checksum given to CompleteSnapshot does not match the blocks written.".into(),
                );
                m.forget_direct(&id);
            })
            .await;
            return Ok(SnapshotState::Error);
        }
        // Durably `completing` before answering: a restart writes the manifest.
        let (m, id) = (me.clone(), snap.id.clone());
        let marked = tokio::task::spawn_blocking(move || -> Result<bool> {
            {
                let mut st = m.lock();
                let Some(mut s) = st.snapshots.get(&id).cloned() else { return Ok(false) };
                if s.state != SnapshotState::Pending {
                    return Ok(false);
                }
                if let Some(d) = s.direct.as_mut() {
                    d.completing = true;
                }
                m.commit(&mut st, vec![Rec::Snapshot(s)])?;
            }
            m.sync_pending()?;
            Ok(true)
        })
        .await
        .map_err(|e| internal("complete", e))??;
        if !marked {
            return Err(not_found(&snap.id));
        }
        *closed = true;
        drop(closed);
        let job = self.spawn_direct_finalize(snap.id.clone());
        match tokio::time::timeout(COMPLETE_WAIT, job).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(internal("completing the snapshot", e)),
            Err(_) => Ok(SnapshotState::Pending),
        }
    }

    /// Write the manifest of a snapshot whose completion was accepted, then mark it completed
    /// (or failed). Runs to its end whoever waits for it.
    fn spawn_direct_finalize(&self, id: String) -> tokio::task::JoinHandle<SnapshotState> {
        let me = self.me();
        let rt = self.storage.as_ref().map(|s| s.runtime.clone()).unwrap_or_else(tokio::runtime::Handle::current);
        rt.spawn(async move {
            let Some(me) = me else { return SnapshotState::Error };
            let result = me.direct_manifest(&id).await;
            let m = me.clone();
            let idc = id.clone();
            let state = tokio::task::spawn_blocking(move || match result {
                Ok(stored) => match m.complete_snapshot(&idc, stored) {
                    Ok(_) => {
                        tracing::info!(snapshot_id = idc, stored_bytes = stored, "direct snapshot completed");
                        SnapshotState::Completed
                    }
                    Err(e) => {
                        tracing::error!(snapshot_id = idc, error = %e, "recording a completed snapshot");
                        SnapshotState::Pending
                    }
                },
                Err(e) => {
                    tracing::warn!(snapshot_id = idc, error = %e, "completing a direct snapshot failed");
                    m.fail_snapshot(&idc, format!("The snapshot could not be completed: {}", e.message()));
                    SnapshotState::Error
                }
            })
            .await
            .unwrap_or(SnapshotState::Pending);
            if state != SnapshotState::Pending {
                // The row is durable (completed or error): the log is no longer needed.
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.forget_direct(&id)).await;
            }
            state
        })
    }

    /// The manifest: the parent's blocks (referenced, or re-encoded into this lineage) with the
    /// written ones over them. Returns the bytes this snapshot added to the store.
    async fn direct_manifest(&self, id: &str) -> Result<u64> {
        let snap = self.lock().snapshots.get(id).cloned().ok_or_else(|| not_found(id))?;
        let direct = snap.direct.clone().unwrap_or_else(|| unreachable_direct(&snap));
        let pending = self.pending_direct(id).ok_or_else(|| internal("complete", "the block log is not loaded"))?;
        let store = self.store(&snap.region).await?;
        let nblocks = block_count(&snap) as usize;
        let written = pending.written();
        let mut stored = pending.stored_bytes.load(Ordering::Relaxed);
        let _blocks_in_flight = self.jobs.gc_gate.read().await;
        let mut blocks = vec![BlockId::UNWRITTEN; nblocks];
        let mut parent_used = None;
        if let Some(pid) = &snap.parent {
            let psnap = self
                .lock()
                .snapshots
                .get(pid)
                .cloned()
                .ok_or_else(|| internal("complete", format!("the parent snapshot {pid} was deleted")))?;
            let pm = store.read_manifest(pid).await.map_err(|e| internal("reading the parent manifest", e))?;
            if !direct.reencode_parent {
                for (i, b) in pm.blocks.iter().enumerate().take(nblocks) {
                    blocks[i] = *b;
                }
                parent_used = Some(pid.clone());
            } else {
                let pcodec = self.codec(psnap.kms_key_id.as_deref(), psnap.wrapped_data_key.as_deref())?;
                let todo: Vec<(usize, BlockId)> = pm
                    .blocks
                    .iter()
                    .enumerate()
                    .take(nblocks)
                    .filter(|(i, b)| !b.is_reserved() && !written.contains_key(&(*i as u32)))
                    .map(|(i, b)| (i, *b))
                    .collect();
                use futures::StreamExt;
                let mut moved = futures::stream::iter(todo)
                    .map(|(i, b)| {
                        let (store, pcodec, codec) = (store.clone(), pcodec.clone(), pending.codec.clone());
                        async move {
                            let data = store.get_block(&pcodec, &b).await?;
                            let out = store.put_block(&codec, data).await?;
                            Ok::<_, blocksnap_store::StoreError>((i, out))
                        }
                    })
                    .buffer_unordered(crate::data::UPLOAD_CONCURRENCY);
                while let Some(r) = moved.next().await {
                    let (i, out) = r.map_err(|e| internal("re-encoding a parent block", e))?;
                    blocks[i] = out.id;
                    stored += out.stored_bytes;
                }
                for (i, b) in pm.blocks.iter().enumerate().take(nblocks) {
                    if b.is_reserved() {
                        blocks[i] = *b;
                    }
                }
            }
        }
        for (i, (b, _)) in &written {
            if let Some(slot) = blocks.get_mut(*i as usize) {
                *slot = *b;
            }
        }
        let manifest = Manifest {
            snapshot_id: snap.id.clone(),
            volume_id: snap.volume_id.clone(),
            volume_size: snap.volume_size_gib as u64 * GIB,
            blocks,
            encryption: Self::manifest_encryption(&snap),
            parent: parent_used,
            created_unix_ms: snap.start_time,
            description: snap.description.clone(),
        };
        store.write_manifest(&manifest).await.map_err(|e| internal("writing the manifest", e))?;
        Ok(stored)
    }

    /// At start: reload the block logs of pending direct snapshots, finish the completions a stop
    /// interrupted, remove logs no row needs, and start the expiry of abandoned snapshots.
    pub(crate) fn ebs_resume(&self) {
        let Some(storage) = &self.storage else { return };
        let rows: Vec<Snapshot> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.state == SnapshotState::Pending && s.direct.is_some())
            .cloned()
            .collect();
        for s in &rows {
            let loaded = self.direct_log_path(&s.id).and_then(|path| {
                let (log, records) = BlockLog::open(&path).map_err(|e| internal("opening the block log", e))?;
                let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
                let blocks: BTreeMap<u32, (BlockId, [u8; 32])> =
                    records.into_iter().map(|r| (r.index, (r.id, r.sha256))).collect();
                Ok(Pending {
                    log,
                    codec,
                    gate: tokio::sync::RwLock::new(false),
                    blocks: Mutex::new(blocks),
                    stored_bytes: AtomicU64::new(0),
                })
            });
            match loaded {
                Ok(p) => {
                    self.jobs.direct.open.lock().unwrap_or_else(|p| p.into_inner()).insert(s.id.clone(), Arc::new(p));
                    if s.direct.as_ref().is_some_and(|d| d.completing) {
                        drop(self.spawn_direct_finalize(s.id.clone()));
                    }
                }
                Err(e) => {
                    self.fail_snapshot(
                        &s.id,
                        format!("The snapshot's written blocks could not be reloaded: {}", e.message()),
                    );
                    self.forget_direct(&s.id);
                }
            }
        }
        // Logs without a pending row: a crash after the row changed, before the log went.
        if let Ok(path) = self.direct_log_path("x")
            && let Some(dir) = path.parent()
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(id) = name.strip_suffix(".blocks") else { continue };
                if !rows.iter().any(|s| s.id == id) {
                    let _ = BlockLog::remove(&e.path());
                }
            }
        }
        let Some(me) = self.me() else { return };
        let weak = Arc::downgrade(&me);
        drop(me);
        let interval = (self.config.direct_minute / 6).clamp(Duration::from_millis(200), Duration::from_secs(30));
        storage.runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(engine) = weak.upgrade() else { return };
                engine.expire_direct().await;
            }
        });
    }

    /// Move pending direct snapshots past their deadline to `error`.
    async fn expire_direct(self: &Arc<Self>) {
        let now = now_millis();
        let expired: Vec<(String, u32)> = self
            .lock()
            .snapshots
            .values()
            .filter_map(|s| {
                let d = s.direct.as_ref()?;
                (s.state == SnapshotState::Pending && !d.completing && d.deadline <= now)
                    .then(|| (s.id.clone(), d.timeout_minutes))
            })
            .collect();
        for (id, minutes) in expired {
            if let Some(p) = self.pending_direct(&id) {
                let Ok(mut closed) = tokio::time::timeout(GATE_WAIT, p.gate.write()).await else { continue };
                if *closed {
                    continue;
                }
                *closed = true;
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                // Completion may have won the race for the gate: only a still-open snapshot expires.
                let still_open = me.lock().snapshots.get(&id).is_some_and(|s| {
                    s.state == SnapshotState::Pending && s.direct.as_ref().is_some_and(|d| !d.completing)
                });
                if still_open {
                    tracing::info!(snapshot_id = id, minutes, "direct snapshot timed out");
                    me.fail_snapshot(
                        &id,
                        format!("The snapshot was not completed within its timeout of {minutes} minutes."),
                    );
                    me.forget_direct(&id);
                }
            })
            .await;
        }
    }

    /// GetSnapshotBlock.
    pub async fn ebs_get_block(&self, ctx: &Ctx, req: GetBlock) -> Result<BlockData> {
        let _slot = self.ebs_slot(ctx)?;
        let snap = {
            let st = self.lock();
            self.ebs_readable(&st, ctx, &req.snapshot_id)?
        };
        if snap.state != SnapshotState::Completed {
            return Err(validation(
                "INVALID_PARAMETER_VALUE",
                format!(
                    "Snapshot {} is {}: its blocks can be read once it is completed.",
                    snap.id,
                    snap.state.as_str()
                ),
            ));
        }
        let index =
            u32::try_from(req.block_index).ok().filter(|i| u64::from(*i) < block_count(&snap)).ok_or_else(|| {
                validation("INVALID_BLOCK", format!("Block index {} is outside the snapshot.", req.block_index))
            })?;
        let key = self.ebs_token_key_async().await?;
        let now = now_millis().max(0) as u64 / 1000;
        let id = token::verify(&token::TokenKey::new(&key), &req.block_token, &snap.id, index, now).map_err(|e| {
            validation(
                "INVALID_BLOCK_TOKEN",
                match e {
                    token::TokenError::Expired => {
                        "The block token has expired: list the blocks again for fresh tokens."
                    }
                    token::TokenError::Foreign => "The block token was not issued for this snapshot and block index.",
                    token::TokenError::Malformed => "The block token is malformed.",
                },
            )
        })?;
        let codec = self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref()).map_err(|e| {
            denied("DEPENDENCY_ACCESS_DENIED", format!("The snapshot's KMS key cannot be used: {}", e.message()))
        })?;
        let store = self.store(&snap.region).await?;
        let data = store.get_block(&codec, &id).await.map_err(|e| internal("reading a block", e))?;
        let checksum = if codec.is_encrypted() || id.is_reserved() {
            let d = data.clone();
            tokio::task::spawn_blocking(move || sha256(&d)).await.map_err(|e| internal("hashing a block", e))?
        } else {
            // Unencrypted ids are the SHA-256 of the block, verified by the read.
            *id.as_bytes()
        };
        Ok(BlockData { data, checksum })
    }
}

/// The store id of an unencrypted block given its SHA-256 (all-zero blocks are never stored).
fn plain_id(sum: &[u8; 32], data: &[u8]) -> BlockId {
    if data.iter().all(|b| *b == 0) { BlockId::ZERO } else { BlockId(*sum) }
}

/// Only called on rows checked to have a `direct` record.
fn unreachable_direct(s: &Snapshot) -> DirectWrite {
    tracing::error!(snapshot_id = s.id, "a direct snapshot without its direct record");
    DirectWrite {
        deadline: 0,
        timeout_minutes: 0,
        client_token: None,
        fingerprint: String::new(),
        completing: false,
        reencode_parent: false,
    }
}
