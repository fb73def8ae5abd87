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

mod complete;
mod list;
mod read;
mod token;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use blocksnap_store::{BlockId, BlockLog, Codec};
use bytes::Bytes;

pub use list::{BlockPage, ChangedBlock, ChangedPage, ListBlocks, ListChangedBlocks};

use crate::data::BLOCK_SIZE;
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, DirectWrite, KmsKey, Snapshot, SnapshotState, Tag};
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
