//! The engine's data path: the point-in-time cut of volumes (write gates, epoch swap, capture,
//! pending rows), and the background jobs that move blocks: snapshot upload and volume restore.
//!
//! One file per job: `cut.rs` (the cut), `upload.rs` (snapshot upload and its end states),
//! `restore.rs` (lazy restore and hydration), `reader.rs` (the read-only snapshot reader behind
//! `snap-…` NBD exports), `gc.rs` (manifest removal and mark-and-sweep), `totals.rs` (per-region
//! running totals of the stores and their history), `stats.rs` (store statistics from them),
//! `verify.rs` (scrub), `usage.rs` (per-region usage and the GC status). This file: the job
//! registry, the per-region stores, lineage codecs and start-up.

mod cut;
mod gc;
mod reader;
mod restore;
mod stats;
mod totals;
mod upload;
mod usage;
mod verify;

pub use reader::SnapshotReader;
pub use stats::StoreStats;
pub use totals::{Figures, HISTORY_LEN, Sample};
pub(crate) use usage::SnapshotTally;
pub use usage::{GcStatus, RegionUsage, StoreUsage, UsageScope};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use blocksnap_store::{BlockStore, Codec, DataKey};

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::model::KmsKey;
use crate::model::{Snapshot, SnapshotState, Volume, VolumeState};
use crate::volumes::GIB;

/// Blocks read and uploaded at once per snapshot.
pub(crate) const UPLOAD_CONCURRENCY: usize = 8;
pub const BLOCK_SIZE: u64 = blocksnap_volume::BLOCK_SIZE;

/// Background jobs in flight, and the per-region snapshot stores.
#[derive(Default)]
pub(crate) struct Jobs {
    me: std::sync::OnceLock<Weak<Engine>>,
    /// Set by [`Engine::begin_stop`]: a job failing from now on failed because the process stops
    /// (its runtime cancels the tasks it waits on), not because of its snapshot.
    stopping: std::sync::atomic::AtomicBool,
    stores: tokio::sync::Mutex<HashMap<String, Arc<BlockStore>>>,
    /// Snapshots a running job reads (restores, copies): they cannot be deleted meanwhile.
    readers: Mutex<HashMap<String, usize>>,
    /// Snapshots whose upload task is running in this process.
    uploading: Mutex<HashSet<String>>,
    /// Volumes whose write gates a cut or a resize is about to take (one such operation per
    /// volume), and accounts whose Lightsail names are being checked and taken.
    pub(crate) claims: blocksnap_volume::Claims,
    /// Jobs that write blocks a manifest does not reference yet (uploads, copies) hold it shared
    /// from their first block to their manifest; a GC sweep holds it exclusively. So the sweep
    /// never removes a block that a job has just written or found already stored (dedup) and is
    /// about to reference, whatever the grace window. Taken only after a job's waits (its parent,
    /// its source), so it never waits on a job queued behind the sweep.
    pub(crate) gc_gate: tokio::sync::RwLock<()>,
    /// The last garbage collection of each region (`usage.rs`).
    pub(crate) gc_statuses: usage::GcStatuses,
    /// Per-region running totals of the stores and their history (`totals.rs`).
    pub(crate) totals: totals::Totals,
    /// Snapshots being written block by block (EBS direct APIs), token key, listing caches.
    pub(crate) direct: crate::ebs::Direct,
    /// Lightsail operations not terminal yet (the ones settling reads).
    pub(crate) lightsail_operations: crate::lightsail::PendingOperations,
    /// Archive and restore jobs of the archive tier, and the archive stores.
    pub(crate) tiering: crate::archive::TierJobs,
}

fn internal(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

/// Decrement a reader count when a job ends.
pub(crate) struct ReaderGuard {
    engine: Arc<Engine>,
    snapshot: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut r = self.engine.jobs.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = r.get_mut(&self.snapshot) {
            *n -= 1;
            if *n == 0 {
                r.remove(&self.snapshot);
            }
        }
    }
}

impl Engine {
    /// The process is stopping: background jobs stop where they are and resume from their durable
    /// state at the next start. A job that fails after this (a task it awaited was cancelled by the
    /// runtime's shutdown) leaves its snapshot pending instead of ending it in `error`.
    pub fn begin_stop(&self) {
        self.jobs.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A job's failure, unless the process is stopping ([`Engine::begin_stop`]): ends the
    /// snapshot in `error` with `message`.
    pub(crate) fn job_failed(&self, snapshot_id: &str, what: &str, message: String) {
        if self.jobs.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(snapshot_id, what, "interrupted by the stop: resumes at the next start");
            return;
        }
        tracing::warn!(snapshot_id, error = %message, "{what} failed");
        self.fail_snapshot(snapshot_id, message);
    }
}

impl Engine {
    /// Start background work: call once with the engine's `Arc` after opening. Resumes pending
    /// uploads and restores left by a previous run.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let _ = self.jobs.me.set(Arc::downgrade(self));
        self.reconcile_frozen_epochs();
        let (pending, restoring): (Vec<Snapshot>, Vec<Volume>) = {
            let st = self.lock();
            (
                // Only this node's volumes: another node's capture logs and files are on its disk,
                // and its uploads and restores resume when it leads (volumes/placement.rs).
                st.snapshots
                    .values()
                    .filter(|s| s.state == SnapshotState::Pending && s.source_snapshot.is_none() && s.direct.is_none())
                    .filter(|s| match st.volumes.get(&s.volume_id) {
                        Some(v) => self.volume_here(v),
                        // The volume was deleted meanwhile: its capture is wherever its directory is.
                        None => {
                            self.config.node_id.is_none()
                                || self.storage.as_ref().is_some_and(|x| x.volumes.exists(&s.volume_id))
                        }
                    })
                    .cloned()
                    .collect(),
                st.volumes
                    .values()
                    .filter(|v| v.state == VolumeState::Creating && v.snapshot_id.is_some() && self.volume_here(v))
                    .cloned()
                    .collect(),
            )
        };
        let copies: Vec<String> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.state == SnapshotState::Pending && s.source_snapshot.is_some())
            .map(|s| s.id.clone())
            .collect();
        for id in copies {
            self.spawn_copy(id);
        }
        for s in pending {
            match self.resume_capture(&s) {
                Ok(()) => self.spawn_upload(s.id.clone()),
                Err(e) => {
                    self.fail_snapshot(&s.id, format!("the upload could not resume after a restart: {e}"));
                }
            }
        }
        self.ebs_resume();
        self.resume_tiering();
        for v in restoring {
            if let Some(sid) = v.snapshot_id.clone() {
                let snap = self.lock().snapshots.get(&sid).cloned();
                match snap {
                    Some(snap) => self.start_restore(&v, &snap),
                    None => self.fail_volume(&v.id, "its source snapshot no longer exists"),
                }
            }
        }
        Ok(())
    }

    /// A crash between a cut and its catalog commit leaves a frozen epoch (and maybe a capture log)
    /// that no snapshot owns: its blocks go back into the volume's changed set, so the next snapshot
    /// reads them. Never under-report. Lazy: done when this process first opens the volume (every
    /// use of a volume opens it first), so start-up does not touch every volume directory. Epochs
    /// owned at start are those of pending snapshots; cuts made later by this process happen on
    /// volumes already opened (and so already reconciled).
    fn reconcile_frozen_epochs(&self) {
        let Some(storage) = &self.storage else { return };
        let mut owned: HashMap<String, HashSet<u64>> = HashMap::new();
        for s in self.lock().snapshots.values().filter(|s| s.state == SnapshotState::Pending) {
            if let Some(e) = s.epoch {
                owned.entry(s.volume_id.clone()).or_default().insert(e);
            }
        }
        storage.volumes.set_on_first_open(Box::new(move |v: &blocksnap_volume::Volume| {
            let vid = v.id();
            for (epoch, _) in v.frozen_epochs()? {
                if owned.get(vid).is_some_and(|o| o.contains(&epoch)) {
                    continue;
                }
                tracing::info!(volume_id = vid, epoch, "returning an orphaned frozen epoch to the changed set");
                let _ = v.end_capture(epoch);
                v.restore_epoch(epoch)?;
            }
            Ok(())
        }));
    }

    pub(crate) fn me(&self) -> Option<Arc<Engine>> {
        self.jobs.me.get().and_then(Weak::upgrade)
    }

    fn resume_capture(&self, s: &Snapshot) -> Result<()> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("resume", "no storage"))?;
        let epoch = s.epoch.ok_or_else(|| internal("resume", "the snapshot has no frozen epoch"))?;
        let vol = storage.volumes.open_volume(&s.volume_id).map_err(|e| internal("opening the volume", e))?;
        let set = vol
            .frozen_epochs()
            .map_err(|e| internal("reading frozen epochs", e))?
            .into_iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, set)| set)
            .ok_or_else(|| internal("resume", format!("epoch {epoch} is no longer frozen")))?;
        vol.resume_capture(epoch, s.volume_size_gib as u64 * GIB, &set).map_err(|e| internal("resuming the capture", e))
    }

    /// The snapshot store of a region, opened on first use.
    pub(crate) async fn store(&self, region: &str) -> Result<Arc<BlockStore>> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("snapshot store", "no storage configured"))?;
        let mut stores = self.jobs.stores.lock().await;
        if let Some(s) = stores.get(region) {
            return Ok(s.clone());
        }
        let s = match self.config.s3_stores.get(region) {
            Some(cfg) => BlockStore::open_s3(cfg.clone()).await,
            None => BlockStore::open_local(&storage.snapshot_root.join(region)).await,
        };
        let s = Arc::new(s.map_err(|e| internal(&format!("opening the snapshot store of {region}"), e))?);
        stores.insert(region.to_string(), s.clone());
        Ok(s)
    }

    /// The codec of a lineage: plain, or encrypted with the data key unwrapped by its KMS key.
    pub(crate) fn codec(&self, kms_arn: Option<&str>, wrapped: Option<&str>) -> Result<Codec> {
        let (Some(arn), Some(wrapped)) = (kms_arn, wrapped) else {
            return Ok(Codec::plain());
        };
        let st = self.lock();
        let key =
            st.kms_keys.values().find(|k| k.arn == arn).ok_or_else(|| {
                EngineError::client("KMSKeyNotAccessible", format!("The KMS key {arn} does not exist"))
            })?;
        if !key.enabled {
            return Err(EngineError::client("KMSKeyNotAccessible", format!("The KMS key {arn} is disabled")));
        }
        let master = crate::kms::material(key)?;
        let wrapped = hex::decode(wrapped).map_err(|e| internal("wrapped data key", e))?;
        let dk = blocksnap_store::unwrap_key(&master, &wrapped, key.key_id.as_bytes()).map_err(|e| {
            EngineError::client("KMSKeyNotAccessible", format!("The data key cannot be unwrapped with {arn}: {e}"))
        })?;
        Codec::encrypted(&dk).map_err(|e| internal("deriving the lineage keys", e))
    }

    /// A fresh data key for a new encrypted lineage, wrapped under the KMS key (hex, key id).
    pub(crate) fn new_data_key(key: &KmsKey) -> Result<(String, String)> {
        let master = crate::kms::material(key)?;
        let dk = DataKey::generate();
        let wrapped =
            blocksnap_store::wrap_key(&master, &dk, key.key_id.as_bytes()).map_err(|e| internal("wrapping", e))?;
        Ok((hex::encode(wrapped), format!("dek-{}", &crate::ids::new_id("x")[2..])))
    }

    /// Count a job reading `snapshot_id` until the guard drops (deletes are refused meanwhile).
    pub(crate) fn read_guard(&self, snapshot_id: &str) -> Option<ReaderGuard> {
        let me = self.me()?;
        *self.jobs.readers.lock().unwrap_or_else(|p| p.into_inner()).entry(snapshot_id.to_string()).or_default() += 1;
        Some(ReaderGuard { engine: me, snapshot: snapshot_id.to_string() })
    }

    /// Is a background job reading this snapshot (restore, copy)?
    pub(crate) fn snapshot_busy(&self, id: &str) -> bool {
        self.snapshot_busy_reading(id) || self.tiering_busy(id)
    }

    /// Is a background job reading this snapshot's standard copy (restore, copy)?
    pub(crate) fn snapshot_busy_reading(&self, id: &str) -> bool {
        self.jobs.readers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }
}
