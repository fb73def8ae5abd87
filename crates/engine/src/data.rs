//! The engine's data path: the point-in-time cut of volumes (write gates, epoch swap, capture,
//! pending rows), and the background jobs that move blocks: snapshot upload and volume restore.
//!
//! Upload: a snapshot's blocks are its parent's blocks with the frozen changed set replaced. Blocks
//! are read through the volume's capture (copy-before-write), so the snapshot holds exactly the bytes
//! of the cut while writes go on. The manifest is written last; then the row becomes `completed`.
//! Any failure ends in `error` with a message and puts the frozen bits back into the volume's current
//! epoch, so the next snapshot reads those blocks again: never a wrong snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use blocksnap_store::{BlockId, BlockStore, Codec, DataKey, EncryptionInfo, Manifest};
use roaring::RoaringBitmap;

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::KmsKey;
use crate::model::{Snapshot, SnapshotState, Volume, VolumeState, now_millis};
use crate::volumes::GIB;

/// Blocks read and uploaded at once per snapshot.
pub(crate) const UPLOAD_CONCURRENCY: usize = 8;
/// Background hydration threads per restored volume.
const HYDRATORS: usize = 4;
pub const BLOCK_SIZE: u64 = blocksnap_volume::BLOCK_SIZE;

/// Background jobs in flight, and the per-region snapshot stores.
#[derive(Default)]
pub(crate) struct Jobs {
    me: std::sync::OnceLock<Weak<Engine>>,
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
    /// Snapshots being written block by block (EBS direct APIs), token key, listing caches.
    pub(crate) direct: crate::ebs::Direct,
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
    /// Start background work: call once with the engine's `Arc` after opening. Resumes pending
    /// uploads and restores left by a previous run.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let _ = self.jobs.me.set(Arc::downgrade(self));
        self.reconcile_frozen_epochs();
        let (pending, restoring): (Vec<Snapshot>, Vec<Volume>) = {
            let st = self.lock();
            (
                st.snapshots
                    .values()
                    .filter(|s| s.state == SnapshotState::Pending && s.source_snapshot.is_none() && s.direct.is_none())
                    .cloned()
                    .collect(),
                st.volumes
                    .values()
                    .filter(|v| v.state == VolumeState::Creating && v.snapshot_id.is_some())
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
                Err(e) => self.fail_snapshot(&s.id, format!("the upload could not resume after a restart: {e}")),
            }
        }
        self.ebs_resume();
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

    /// Take every volume's write gate (in the given order), freeze each volume's changed blocks and
    /// start capturing them, release the gates, commit all pending rows in one catalog transaction,
    /// start the uploads. No write on any of the volumes is acknowledged during the cut.
    ///
    /// `plan` validates the request against the current state and builds the snapshot rows; it
    /// runs under the engine lock, once to learn the volumes and once more after they are claimed.
    /// Nothing slow happens under the engine lock: opening files, preparing the cut, draining the
    /// gates (bounded by [`blocksnap_volume::DRAIN_TIMEOUT`]) and undoing a failed cut all run
    /// without it, so a stuck volume stalls only its own callers.
    pub(crate) fn cut_and_commit(&self, plan: impl Fn(&State) -> Result<Vec<Snapshot>>) -> Result<Vec<Snapshot>> {
        if self.storage.is_none() {
            let mut st = self.lock();
            let snaps = plan(&st)?;
            let recs = snaps.iter().cloned().map(Rec::Snapshot).collect();
            self.commit(&mut st, recs)?;
            return Ok(snaps);
        }
        let volume_ids = |snaps: &[Snapshot]| snaps.iter().map(|s| s.volume_id.clone()).collect::<Vec<_>>();
        let ids = volume_ids(&plan(&self.lock())?);
        let deadline = std::time::Instant::now() + blocksnap_volume::DRAIN_TIMEOUT;
        let _claim = self.jobs.claims.claim(&ids, deadline).ok_or_else(|| {
            EngineError::client(
                "SnapshotCreationPerVolumeRateExceeded",
                format!("Another snapshot of {} is still being taken; wait a few seconds and retry.", ids.join(", ")),
            )
        })?;
        let mut snaps = plan(&self.lock())?;
        if volume_ids(&snaps) != ids {
            return Err(EngineError::client(
                "IncorrectState",
                "The set of volumes changed while the snapshot was being started; retry.",
            ));
        }
        let vols =
            snaps.iter().map(|s| self.live_volume(&s.volume_id, s.volume_size_gib)).collect::<Result<Vec<_>>>()?;
        // Everything slow (files, fsyncs) happens before the gates, so the pause is a few renames.
        let prepare_started = std::time::Instant::now();
        let mut prepared = Vec::with_capacity(vols.len());
        for v in &vols {
            match v.prepare_cut() {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    for (v, p) in vols.iter().zip(prepared) {
                        let _ = v.abandon_cut(p);
                    }
                    return Err(internal("preparing the cut", e));
                }
            }
        }
        let started = std::time::Instant::now();
        let prepare = started - prepare_started;
        let refs: Vec<&blocksnap_volume::Volume> = vols.iter().map(|v| v.as_ref()).collect();
        let gates = match blocksnap_volume::Volume::gate_all(&refs, deadline) {
            Ok(g) => g,
            Err(e) => {
                // Kept for the next cut: no file I/O here, the disk may be what hangs.
                for (v, p) in vols.iter().zip(prepared) {
                    let _ = v.return_cut(p);
                }
                tracing::warn!(error = %e, "snapshot cut abandoned: writes did not drain in time");
                return Err(EngineError::client(
                    "ServiceUnavailable",
                    format!(
                        "The snapshot was not created: {e} (within {} s; a client that stopped reading its \
                         replies or a slow disk). Retry later.",
                        blocksnap_volume::DRAIN_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let mut frozen: Vec<u64> = Vec::new();
        let undo = |frozen: &[u64]| {
            for (v, e) in vols.iter().zip(frozen) {
                let _ = v.end_capture(*e);
                if let Err(err) = v.restore_epoch(*e) {
                    tracing::error!(volume = v.id(), epoch = e, error = %err, "could not restore a frozen epoch");
                }
            }
        };
        let mut prepared = prepared.into_iter();
        for (i, v) in vols.iter().enumerate() {
            let Some(p) = prepared.next() else { break };
            match v.commit_cut(&gates[i], p) {
                Ok((epoch, set)) => {
                    frozen.push(epoch);
                    snaps[i].epoch = Some(epoch);
                    snaps[i].blocks_total = set.len();
                }
                Err(e) => {
                    undo(&frozen);
                    for (v, p) in vols.iter().skip(i + 1).zip(prepared) {
                        let _ = v.abandon_cut(p);
                    }
                    return Err(internal("freezing changed blocks", e));
                }
            }
        }
        // Every volume is frozen at the same instant: writes may go on. The rows are committed after
        // the gates open and only if the volumes are still what the plan saw; if anything fails the
        // frozen sets go back into the volumes and no snapshot exists.
        drop(gates);
        let pause = started.elapsed();
        // No directory fsync for the renames: a rename lost in a crash is recovered when the volume
        // is opened (the frozen link is already durable), so the cut costs one fsync per volume.
        let recs = snaps.iter().cloned().map(Rec::Snapshot).collect();
        let commit_started = std::time::Instant::now();
        let committed = {
            let mut st = self.lock();
            match snaps.iter().find(|s| {
                !st.volumes.get(&s.volume_id).is_some_and(|v| {
                    v.size_gib == s.volume_size_gib && matches!(v.state, VolumeState::Available | VolumeState::InUse)
                })
            }) {
                Some(s) => Err(EngineError::client(
                    "IncorrectState",
                    format!("Volume '{}' was changed or deleted while it was being snapshotted.", s.volume_id),
                )),
                None => self.commit(&mut st, recs),
            }
        };
        if let Err(e) = committed {
            undo(&frozen);
            return Err(e);
        }
        metrics::histogram!("blocksnap_snapshot_cut_seconds").record(pause.as_secs_f64());
        tracing::info!(
            volumes = vols.len(),
            pause_us = pause.as_micros() as u64,
            prepare_us = prepare.as_micros() as u64,
            commit_us = commit_started.elapsed().as_micros() as u64,
            "snapshot cut"
        );
        for s in &snaps {
            self.spawn_upload(s.id.clone());
        }
        Ok(snaps)
    }

    fn spawn_upload(&self, snapshot_id: String) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        if !self.jobs.uploading.lock().unwrap_or_else(|p| p.into_inner()).insert(snapshot_id.clone()) {
            return;
        }
        storage.runtime.spawn(async move {
            let result = me.upload(&snapshot_id).await;
            me.jobs.uploading.lock().unwrap_or_else(|p| p.into_inner()).remove(&snapshot_id);
            if let Err(e) = result {
                tracing::warn!(snapshot_id, error = %e, "snapshot upload failed");
                me.fail_snapshot(&snapshot_id, e.message());
            }
        });
    }

    /// Wait until a parent snapshot is no longer pending; its manifest, or none.
    async fn parent_manifest(&self, snap: &Snapshot, store: &BlockStore) -> Result<Option<Manifest>> {
        let Some(parent) = snap.parent.clone() else { return Ok(None) };
        loop {
            let p = self.lock().snapshots.get(&parent).cloned();
            match p {
                Some(p) if p.state == SnapshotState::Pending => tokio::time::sleep(Duration::from_millis(50)).await,
                Some(p) if p.state == SnapshotState::Completed => {
                    // Incremental only within one key lineage.
                    if p.wrapped_data_key != snap.wrapped_data_key {
                        return Ok(None);
                    }
                    return store
                        .read_manifest(&parent)
                        .await
                        .map(Some)
                        .map_err(|e| internal("reading the parent manifest", e));
                }
                // The parent failed or is gone: this snapshot's changed set is not enough.
                _ => {
                    return Err(EngineError::Internal(format!(
                        "the previous snapshot {parent} of the volume did not complete"
                    )));
                }
            }
        }
    }

    async fn upload(self: &Arc<Self>, snapshot_id: &str) -> Result<()> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("upload", "no storage"))?;
        let snap = self.lock().snapshots.get(snapshot_id).cloned().ok_or_else(|| internal("upload", "row vanished"))?;
        let epoch = snap.epoch.ok_or_else(|| internal("upload", "no frozen epoch"))?;
        let store = self.store(&snap.region).await?;
        let codec = Arc::new(self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?);
        let vol = storage.volumes.open_volume(&snap.volume_id).map_err(|e| internal("opening the volume", e))?;
        let set = vol
            .frozen_epochs()
            .map_err(|e| internal("frozen epochs", e))?
            .into_iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, s)| s)
            .ok_or_else(|| internal("upload", format!("epoch {epoch} is not frozen")))?;
        let parent = self.parent_manifest(&snap, &store).await?;
        let _blocks_in_flight = self.jobs.gc_gate.read().await;
        let size = snap.volume_size_gib as u64 * GIB;
        let nblocks = size.div_ceil(BLOCK_SIZE) as usize;
        let mut blocks: Vec<BlockId> = vec![BlockId::UNWRITTEN; nblocks];
        let mut todo: RoaringBitmap = set.clone();
        // Without a usable parent every block written since the volume was created is in the set
        // (the first epoch starts at creation); volumes restored from another lineage leave their
        // restored blocks marked changed for this reason.
        if let Some(p) = &parent {
            for (i, id) in p.blocks.iter().enumerate().take(nblocks) {
                blocks[i] = *id;
            }
        }
        todo.remove_range(nblocks as u32..);
        let total = todo.len().max(1);
        let mut done = 0u64;
        let mut stored = 0u64;
        let mut queue = todo.iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < UPLOAD_CONCURRENCY {
                let Some(b) = queue.next() else { break };
                let (vol, store, codec) = (vol.clone(), store.clone(), codec.clone());
                running.spawn(async move {
                    // Read and hash on the same blocking thread (the block is hot in its cache).
                    let (s2, c2) = (store.clone(), codec.clone());
                    let data = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; BLOCK_SIZE as usize];
                        vol.read_frozen_block_sparse(epoch, b, &mut buf)
                            .map(|data| data.then(|| (s2.block_id(&c2, &buf), buf)))
                    })
                    .await
                    .map_err(|e| internal("read task", e))?
                    .map_err(|e| internal("reading a frozen block", e))?;
                    let out = match data {
                        Some((id, d)) => store
                            .put_block_with_id(&codec, id, bytes::Bytes::from(d))
                            .await
                            .map_err(|e| internal("storing a block", e))?,
                        // A hole at the cut: zeros, nothing to hash or store.
                        None => {
                            blocksnap_store::PutOutcome { id: BlockId::ZERO, stored_bytes: 0, already_present: true }
                        }
                    };
                    Ok::<_, EngineError>((b, out))
                });
            }
            let Some(joined) = running.join_next().await else { break };
            let (b, out) = joined.map_err(|e| internal("upload task", e))??;
            blocks[b as usize] = out.id;
            stored += out.stored_bytes;
            done += 1;
            if done.is_multiple_of(16) || done == total {
                self.set_progress(snapshot_id, ((done * 99) / total) as u8);
            }
        }
        let manifest = Manifest {
            snapshot_id: snap.id.clone(),
            volume_id: snap.volume_id.clone(),
            volume_size: size,
            blocks,
            encryption: Self::manifest_encryption(&snap),
            parent: parent.as_ref().map(|p| p.snapshot_id.clone()),
            created_unix_ms: snap.start_time,
            description: snap.description.clone(),
        };
        store.write_manifest(&manifest).await.map_err(|e| internal("writing the manifest", e))?;
        if !self.complete_snapshot(snapshot_id, stored)? {
            return Ok(());
        }
        // The snapshot is durable: the frozen set and the captured bytes are no longer needed.
        let v2 = vol.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = v2.end_capture(epoch) {
                tracing::warn!(error = %e, "removing a capture log");
            }
            if let Err(e) = v2.release_epoch(epoch) {
                tracing::warn!(error = %e, "releasing a frozen epoch");
            }
            // Prepare the volume's next cut now, so the next CreateSnapshot has no fsync of its own.
            if let Err(e) = v2.stage_cut() {
                tracing::debug!(error = %e, "staging the next cut");
            }
        })
        .await;
        tracing::info!(snapshot_id, blocks = done, stored_bytes = stored, "snapshot completed");
        self.release_if_deleted(&snap.volume_id);
        Ok(())
    }

    /// Mark a snapshot (or copy) `completed`, durably. `false` when its row is gone.
    pub(crate) fn complete_snapshot(&self, snapshot_id: &str, stored_bytes: u64) -> Result<bool> {
        {
            let mut st = self.lock();
            let Some(mut s) = st.snapshots.get(snapshot_id).cloned() else { return Ok(false) };
            s.state = SnapshotState::Completed;
            s.progress = 100;
            s.completion_time = Some(now_millis());
            s.stored_bytes = stored_bytes;
            s.epoch = None;
            self.commit(&mut st, vec![Rec::Snapshot(s)])?;
        }
        self.sync_pending()?;
        Ok(true)
    }

    /// The manifest's encryption record of a snapshot (what a catalog rebuild needs).
    pub(crate) fn manifest_encryption(s: &Snapshot) -> Option<EncryptionInfo> {
        s.kms_key_id.as_ref().map(|arn| EncryptionInfo {
            kms_key_arn: arn.clone(),
            wrapped_key: s.wrapped_data_key.as_deref().and_then(|h| hex::decode(h).ok()).unwrap_or_default(),
        })
    }

    /// Progress is informational: kept in memory while the upload runs, persisted at completion.
    pub(crate) fn set_progress(&self, snapshot_id: &str, pct: u8) {
        if let Some(s) = self.lock().snapshots.get_mut(snapshot_id) {
            s.progress = pct.min(99);
        }
    }

    /// End a pending snapshot in `error`, and give its frozen blocks back to the volume.
    pub(crate) fn fail_snapshot(&self, snapshot_id: &str, message: String) {
        let epoch_and_volume = {
            let mut st = self.lock();
            let Some(mut s) = st.snapshots.get(snapshot_id).cloned() else { return };
            let ev = s.epoch.map(|e| (e, s.volume_id.clone()));
            s.state = SnapshotState::Error;
            s.state_message = Some(message);
            s.epoch = None;
            if let Err(e) = self.commit(&mut st, vec![Rec::Snapshot(s)]) {
                tracing::error!(snapshot_id, error = %e, "could not record a failed snapshot");
                return;
            }
            ev
        };
        if let Err(e) = self.sync_pending() {
            tracing::error!(snapshot_id, error = %e, "could not sync a failed snapshot's row");
        }
        if let (Some((epoch, vid)), Some(storage)) = (epoch_and_volume, &self.storage)
            && let Ok(v) = storage.volumes.open_volume(&vid)
        {
            let _ = v.end_capture(epoch);
            if let Err(e) = v.restore_epoch(epoch) {
                tracing::error!(volume_id = vid, error = %e, "could not restore a frozen epoch");
            }
            self.release_if_deleted(&vid);
        }
    }

    /// Does a pending snapshot still need this volume's bytes?
    pub(crate) fn volume_has_pending_snapshot(st: &State, volume_id: &str) -> bool {
        st.snapshots
            .values()
            .any(|s| s.volume_id == volume_id && s.state == SnapshotState::Pending && s.epoch.is_some())
    }

    /// A volume deleted while snapshots of it were pending keeps its bytes until the last one ends.
    fn release_if_deleted(&self, volume_id: &str) {
        let gone = {
            let st = self.lock();
            !st.volumes.contains_key(volume_id) && !Self::volume_has_pending_snapshot(&st, volume_id)
        };
        if gone {
            self.release_volume_bytes(volume_id);
        }
    }

    /// Count a job reading `snapshot_id` until the guard drops (deletes are refused meanwhile).
    pub(crate) fn read_guard(&self, snapshot_id: &str) -> Option<ReaderGuard> {
        let me = self.me()?;
        *self.jobs.readers.lock().unwrap_or_else(|p| p.into_inner()).entry(snapshot_id.to_string()).or_default() += 1;
        Some(ReaderGuard { engine: me, snapshot: snapshot_id.to_string() })
    }

    /// Fill a new volume with a snapshot's blocks in the background; the volume is `creating` until
    /// every block is in place, then `available`.
    pub(crate) fn start_restore(&self, volume: &Volume, snap: &Snapshot) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        let guard = self.read_guard(&snap.id);
        let (volume, snap) = (volume.clone(), snap.clone());
        storage.runtime.spawn(async move {
            let _guard = guard;
            if let Err(e) = me.restore(&volume, &snap).await {
                tracing::warn!(volume_id = volume.id, error = %e, "restore failed");
                me.fail_volume(&volume.id, &e.message());
            }
        });
    }

    /// A restored volume is usable at once: its blocks come from the snapshot on first touch
    /// (single-flight) and from this background hydrator, which then marks the volume fully local.
    async fn restore(self: &Arc<Self>, volume: &Volume, snap: &Snapshot) -> Result<()> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("restore", "no storage"))?;
        let store = self.store(&snap.region).await?;
        let manifest = store.read_manifest(&snap.id).await.map_err(|e| internal("reading the manifest", e))?;
        let codec = self.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?;
        let vol = self.live_volume(&volume.id, volume.size_gib)?;
        let size = vol.size();
        let source = Box::new(StoreSource {
            store,
            codec,
            blocks: Arc::new(manifest.blocks.clone()),
            runtime: storage.runtime.clone(),
        });
        let mut pending = RoaringBitmap::new();
        for (i, id) in manifest.blocks.iter().enumerate() {
            if !id.is_reserved() && (i as u64) * BLOCK_SIZE < size {
                pending.insert(i as u32);
            }
        }
        let total = pending.len();
        // Within one key lineage the restored blocks are the source's: the first snapshot is
        // incremental against it. Across lineages they must be read (and re-encrypted) again.
        let same_lineage = volume.wrapped_data_key == snap.wrapped_data_key;
        let v2 = vol.clone();
        let resumed = tokio::task::spawn_blocking(move || -> std::result::Result<bool, blocksnap_volume::Error> {
            if v2.resume_hydration(source.clone_box())? {
                return Ok(true);
            }
            if !same_lineage {
                v2.mark_changed(&pending)?;
            }
            v2.start_hydration(source, pending)?;
            Ok(false)
        })
        .await
        .map_err(|e| internal("hydration task", e))?
        .map_err(|e| internal("starting the hydration", e))?;
        {
            let mut st = self.lock();
            let Some(mut v) = st.volumes.get(&volume.id).cloned() else { return Ok(()) };
            if v.state == VolumeState::Creating {
                v.state = VolumeState::Available;
            }
            v.restore = Some(crate::model::RestoreProgress { done: 0, total });
            self.commit(&mut st, vec![Rec::Volume(v)])?;
        }
        self.sync_pending()?;
        tracing::info!(
            volume_id = volume.id,
            snapshot_id = snap.id,
            blocks = total,
            resumed,
            "volume available, hydrating"
        );
        // Several hydrators, so fetching (store read, decrypt, hash check) overlaps the writes.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..HYDRATORS {
            let (v3, me, vid) = (vol.clone(), self.clone(), volume.id.clone());
            workers.spawn_blocking(move || -> std::result::Result<(), blocksnap_volume::Error> {
                let mut n = 0u64;
                while v3.hydrate_next()? {
                    n += 1;
                    if n.is_multiple_of(64)
                        && let Some(v) = me.lock().volumes.get_mut(&vid)
                    {
                        v.restore =
                            Some(crate::model::RestoreProgress { done: total - v3.hydration_remaining(), total });
                    }
                }
                Ok(())
            });
        }
        let mut failed = None;
        while let Some(r) = workers.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = failed.or(Some(internal("hydrating", e))),
                Err(e) => failed = failed.or(Some(internal("hydration task", e))),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let mut st = self.lock();
        let Some(mut v) = st.volumes.get(&volume.id).cloned() else { return Ok(()) };
        v.restore = None;
        self.commit(&mut st, vec![Rec::Volume(v)])?;
        drop(st);
        self.sync_pending()?;
        tracing::info!(volume_id = volume.id, snapshot_id = snap.id, "volume fully hydrated");
        Ok(())
    }

    fn fail_volume(&self, volume_id: &str, message: &str) {
        let mut st = self.lock();
        let Some(mut v) = st.volumes.get(volume_id).cloned() else { return };
        tracing::warn!(volume_id, message, "volume ends in error");
        v.state = VolumeState::Error;
        v.restore = None;
        if let Err(e) = self.commit(&mut st, vec![Rec::Volume(v)]) {
            tracing::error!(volume_id, error = %e, "could not record a failed volume");
        }
        drop(st);
        let _ = self.sync_pending();
    }

    /// Is a background job reading this snapshot (restore, copy)?
    pub(crate) fn snapshot_busy(&self, id: &str) -> bool {
        self.jobs.readers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// The snapshot's row is gone: drop its manifest (its blocks go at the next GC).
    pub(crate) fn forget_snapshot_data(&self, s: &Snapshot) {
        if !self.row_changes_durable("deleting a manifest") {
            return;
        }
        fail::fail_point!("snapshot.before_delete_manifest");
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        let (region, id) = (s.region.clone(), s.id.clone());
        storage.runtime.spawn(async move {
            match me.store(&region).await {
                Ok(store) => {
                    if let Err(e) = store.delete_manifest(&id).await {
                        tracing::warn!(snapshot_id = id, error = %e, "deleting a manifest");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "opening a store"),
            }
        });
    }

    /// Reads a snapshot's bytes (for the read-only NBD export `snap-…`). Cheap: the manifest is
    /// loaded on the first read, on the caller's blocking thread.
    pub fn snapshot_reader(&self, snapshot_id: &str) -> Option<SnapshotReader> {
        let snap = self.lock().snapshots.get(snapshot_id).cloned()?;
        if snap.state != SnapshotState::Completed {
            return None;
        }
        Some(SnapshotReader {
            engine: self.me()?,
            runtime: self.storage.as_ref()?.runtime.clone(),
            size: snap.volume_size_gib as u64 * GIB,
            snap,
            loaded: std::sync::OnceLock::new(),
        })
    }
}

type Loaded = (Arc<Manifest>, Arc<BlockStore>, Arc<Codec>);

/// Fetches a restored volume's pending blocks from its snapshot (called on blocking threads).
struct StoreSource {
    store: Arc<BlockStore>,
    codec: Codec,
    blocks: Arc<Vec<BlockId>>,
    runtime: tokio::runtime::Handle,
}

impl StoreSource {
    fn clone_box(&self) -> Box<StoreSource> {
        Box::new(StoreSource {
            store: self.store.clone(),
            codec: self.codec.clone(),
            blocks: self.blocks.clone(),
            runtime: self.runtime.clone(),
        })
    }
}

impl blocksnap_volume::BlockSource for StoreSource {
    fn fetch(&self, block: u32) -> std::io::Result<Option<Vec<u8>>> {
        let Some(id) = self.blocks.get(block as usize).copied().filter(|id| !id.is_reserved()) else {
            return Ok(None);
        };
        let data = self
            .runtime
            .block_on(self.store.get_block(&self.codec, &id))
            .map_err(|e| std::io::Error::other(format!("fetching block {block} from the snapshot: {e}")))?;
        Ok(Some(data.to_vec()))
    }
}

/// Random access to a completed snapshot's bytes. Synchronous: call from blocking threads.
pub struct SnapshotReader {
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    snap: Snapshot,
    size: u64,
    loaded: std::sync::OnceLock<Loaded>,
}

impl SnapshotReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    fn loaded(&self) -> std::io::Result<&Loaded> {
        if let Some(l) = self.loaded.get() {
            return Ok(l);
        }
        let e = &self.engine;
        let snap = &self.snap;
        let l = self.runtime.block_on(async {
            let store = e.store(&snap.region).await?;
            let m = store.read_manifest(&snap.id).await.map_err(|err| internal("reading the manifest", err))?;
            let codec = e.codec(snap.kms_key_id.as_deref(), snap.wrapped_data_key.as_deref())?;
            Ok::<_, EngineError>((Arc::new(m), store, Arc::new(codec)))
        });
        let l = l.map_err(|err| std::io::Error::other(err.message()))?;
        Ok(self.loaded.get_or_init(|| l))
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "read past the end of the snapshot")
        })?;
        let mut pos = offset;
        while pos < end {
            let b = (pos / BLOCK_SIZE) as usize;
            let within = (pos % BLOCK_SIZE) as usize;
            let n = ((BLOCK_SIZE as usize - within) as u64).min(end - pos) as usize;
            let out = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            let (manifest, store, codec) = self.loaded()?;
            let id = manifest.blocks.get(b).copied().unwrap_or(BlockId::UNWRITTEN);
            if id == BlockId::UNWRITTEN || id == BlockId::ZERO {
                out.fill(0);
            } else {
                let data = self
                    .runtime
                    .block_on(store.get_block(codec, &id))
                    .map_err(|e| std::io::Error::other(format!("snapshot block {b}: {e}")))?;
                let avail = data.len().saturating_sub(within).min(n);
                out[..avail].copy_from_slice(&data[within..within + avail]);
                out[avail..].fill(0);
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Which ranges hold data: never-written and zero blocks read as holes.
    pub fn allocated(&self, offset: u64, len: u64) -> std::io::Result<Vec<(u64, bool)>> {
        let (manifest, _, _) = self.loaded()?;
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = (pos / BLOCK_SIZE) as usize;
            let next = ((b as u64 + 1) * BLOCK_SIZE).min(end);
            let id = manifest.blocks.get(b).copied().unwrap_or(BlockId::UNWRITTEN);
            let data = id != BlockId::UNWRITTEN && id != BlockId::ZERO;
            match out.last_mut() {
                Some(last) if last.1 == data => last.0 += next - pos,
                _ => out.push((next - pos, data)),
            }
            pos = next;
        }
        Ok(out)
    }
}

/// Store statistics, as the metrics report them.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    pub manifests: u64,
    /// Bytes the snapshots describe (written blocks × block size, summed over snapshots).
    pub logical_bytes: u64,
    /// Bytes the chunk objects take.
    pub stored_bytes: u64,
    pub chunks: u64,
}

impl Engine {
    /// Garbage-collect every region store opened so far, forever, every `interval`; objects younger
    /// than `grace` are kept (uploads in flight). Also refreshes the store metrics.
    pub fn start_gc(self: &Arc<Self>, interval: Duration, grace: Duration) {
        let Some(storage) = &self.storage else { return };
        let me = Arc::downgrade(self);
        storage.runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(engine) = me.upgrade() else { return };
                let regions: Vec<String> = engine.jobs.stores.lock().await.keys().cloned().collect();
                for region in regions {
                    if let Err(e) = engine.gc_region(&region, grace).await {
                        tracing::warn!(region, error = %e, "garbage collection failed");
                    }
                }
            }
        });
    }

    /// One mark-and-sweep of a region's store, then its statistics.
    pub async fn gc_region(&self, region: &str, grace: Duration) -> Result<StoreStats> {
        let store = self.store(region).await?;
        let report = {
            let _sweep = self.jobs.gc_gate.write().await;
            self.drop_orphan_manifests(region, &store).await?;
            // Blocks written into snapshots still being built block by block are live too; with
            // the gate held, no block write is between its store put and its log record.
            let roots = self.ebs_live_blocks(region);
            store.gc_with_roots(grace, &roots).await.map_err(|e| internal("garbage collection", e))?
        };
        if report.chunks_removed + report.segments_removed > 0 {
            tracing::info!(
                region,
                chunks_removed = report.chunks_removed,
                bytes_removed = report.chunk_bytes_removed + report.segment_bytes_removed,
                kept_young = report.kept_young,
                "garbage collected"
            );
        }
        metrics::counter!("blocksnap_store_gc_bytes_removed_total", "region" => region.to_string())
            .increment(report.chunk_bytes_removed + report.segment_bytes_removed);
        let stats = self.store_stats(region).await?;
        let labels = [("region", region.to_string())];
        metrics::gauge!("blocksnap_store_stored_bytes", &labels).set(stats.stored_bytes as f64);
        metrics::gauge!("blocksnap_store_logical_bytes", &labels).set(stats.logical_bytes as f64);
        metrics::gauge!("blocksnap_store_chunks", &labels).set(stats.chunks as f64);
        metrics::gauge!("blocksnap_store_manifests", &labels).set(stats.manifests as f64);
        let ratio = if stats.stored_bytes == 0 { 1.0 } else { stats.logical_bytes as f64 / stats.stored_bytes as f64 };
        metrics::gauge!("blocksnap_store_dedup_ratio", &labels).set(ratio);
        Ok(stats)
    }

    /// Manifests whose snapshot row is gone (a crash between a durable DeleteSnapshot and the
    /// manifest's removal): removed, so the sweep can free their blocks. A manifest is only ever
    /// written for a row that exists (pending) and rows never come back, so listing first and
    /// checking the rows after cannot drop a live manifest. The store belongs to this catalog.
    async fn drop_orphan_manifests(&self, region: &str, store: &BlockStore) -> Result<usize> {
        let listed = store.list_manifests().await.map_err(|e| internal("listing manifests", e))?;
        let orphans: Vec<String> = {
            let st = self.lock();
            listed.into_iter().filter(|id| !st.snapshots.contains_key(id)).collect()
        };
        for id in &orphans {
            tracing::info!(region, snapshot_id = %id, "removing the manifest of a deleted snapshot");
            store.delete_manifest(id).await.map_err(|e| internal("removing an orphan manifest", e))?;
        }
        Ok(orphans.len())
    }

    /// Logical size from the catalog's completed snapshots, physical size from the store's chunks.
    pub async fn store_stats(&self, region: &str) -> Result<StoreStats> {
        let store = self.store(region).await?;
        let ids = store.list_manifests().await.map_err(|e| internal("listing manifests", e))?;
        let mut logical = 0u64;
        for id in &ids {
            if let Ok(m) = store.read_manifest(id).await {
                logical += m.blocks.iter().filter(|b| !b.is_reserved()).count() as u64 * BLOCK_SIZE;
            }
        }
        let (mut stored, mut chunks) = (0u64, 0u64);
        if let Some(storage) = &self.storage {
            let dir = storage.snapshot_root.join(region).join("chunks");
            let walk = tokio::task::spawn_blocking(move || {
                let mut stack = vec![dir];
                let (mut bytes, mut n) = (0u64, 0u64);
                while let Some(d) = stack.pop() {
                    let Ok(rd) = std::fs::read_dir(&d) else { continue };
                    for e in rd.flatten() {
                        match e.metadata() {
                            Ok(m) if m.is_dir() => stack.push(e.path()),
                            Ok(m) => {
                                bytes += m.len();
                                n += 1;
                            }
                            Err(_) => {}
                        }
                    }
                }
                (bytes, n)
            })
            .await
            .map_err(|e| internal("walking the store", e))?;
            (stored, chunks) = walk;
        }
        Ok(StoreStats { manifests: ids.len() as u64, logical_bytes: logical, stored_bytes: stored, chunks })
    }
}

impl Engine {
    /// Scrub: read every chunk of every completed snapshot of a region back, decrypt and re-derive
    /// its id (CRC, GCM tag and content id must all match).
    pub async fn verify_snapshots(&self, region: &str) -> Result<Vec<blocksnap_store::VerifyReport>> {
        let snaps: Vec<Snapshot> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.region == region && s.state == SnapshotState::Completed)
            .cloned()
            .collect();
        let store = self.store(region).await?;
        let mut out = Vec::new();
        for s in snaps {
            let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
            let report = store
                .verify(&s.id, blocksnap_store::VerifyMode::Full(codec))
                .await
                .map_err(|e| internal(&format!("verifying {}", s.id), e))?;
            out.push(report);
        }
        Ok(out)
    }

    /// Regions that have completed snapshots.
    pub fn snapshot_regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.state == SnapshotState::Completed)
            .map(|s| s.region.clone())
            .collect();
        r.sort();
        r.dedup();
        r
    }
}
