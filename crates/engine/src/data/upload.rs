//! Snapshot upload: a snapshot's blocks are its parent's blocks with the frozen changed set replaced. Blocks
//! are read through the volume's capture (copy-before-write), so the snapshot holds exactly the bytes
//! of the cut while writes go on. The manifest is written last; then the row becomes `completed`.
//! Any failure ends in `error` with a message and puts the frozen bits back into the volume's current
//! epoch, so the next snapshot reads those blocks again: never a wrong snapshot.

use std::sync::Arc;
use std::time::Duration;

use blocksnap_store::{BlockId, BlockStore, EncryptionInfo, Manifest};
use roaring::RoaringBitmap;

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Snapshot, SnapshotState, now_millis};
use crate::volumes::GIB;

use super::{BLOCK_SIZE, UPLOAD_CONCURRENCY, internal};

impl Engine {
    pub(super) fn spawn_upload(&self, snapshot_id: String) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        if !self.jobs.uploading.lock().unwrap_or_else(|p| p.into_inner()).insert(snapshot_id.clone()) {
            return;
        }
        storage.runtime.spawn(async move {
            let result = me.upload(&snapshot_id).await;
            me.jobs.uploading.lock().unwrap_or_else(|p| p.into_inner()).remove(&snapshot_id);
            if let Err(e) = result {
                me.job_failed(&snapshot_id, "snapshot upload", e.message());
            }
        });
    }

    /// Wait until a parent snapshot is no longer pending; its manifest, or none. A parent that left
    /// the standard tier (archived) is answered as `Err(parent)`: its blocks come from its archive.
    async fn parent_manifest(
        &self,
        snap: &Snapshot,
        store: &BlockStore,
    ) -> Result<Option<std::result::Result<Manifest, Snapshot>>> {
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
                    // A parent cannot leave the standard tier while this snapshot is pending (the
                    // archival and the restore's expiry wait for its children), so what is read here
                    // stays valid.
                    if !crate::archive::in_standard_tier(&p) {
                        return Ok(Some(Err(p)));
                    }
                    return store
                        .read_manifest(&parent)
                        .await
                        .map(|m| Some(Ok(m)))
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
        // An archived parent: its block list from the archive, and the blocks this snapshot keeps
        // from it put back into the standard store (under the GC gate), so it depends on nothing
        // archived.
        let parent = match parent {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(p)) => {
                let keep = |i: usize| i < nblocks && !set.contains(i as u32);
                let blocks = self.parent_from_archive(&p, &store, &codec, keep).await?;
                Some(Manifest {
                    snapshot_id: p.id.clone(),
                    volume_id: p.volume_id.clone(),
                    volume_size: p.volume_size_gib as u64 * GIB,
                    blocks,
                    encryption: None,
                    parent: None,
                    created_unix_ms: p.start_time,
                    description: String::new(),
                })
            }
        };
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
        self.put_manifest(&snap.region, &store, &manifest).await?;
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

    /// End a pending snapshot in `error`, and give its frozen blocks back to the volume. Answers
    /// whether the `error` row is durable: only then is what the snapshot held (its capture, frozen
    /// epoch, a direct snapshot's block log) released. When the commit or its sync fails everything
    /// stays as it was, so a restart that finds the row still pending resumes it or ends it itself.
    pub(crate) fn fail_snapshot(&self, snapshot_id: &str, message: String) -> bool {
        let epoch_and_volume = {
            let mut st = self.lock();
            let Some(mut s) = st.snapshots.get(snapshot_id).cloned() else { return false };
            let ev = s.epoch.map(|e| (e, s.volume_id.clone()));
            s.state = SnapshotState::Error;
            s.state_message = Some(message);
            s.epoch = None;
            if let Err(e) = self.commit(&mut st, vec![Rec::Snapshot(s)]) {
                tracing::error!(snapshot_id, error = %e, "could not record a failed snapshot");
                return false;
            }
            ev
        };
        if let Err(e) = self.sync_pending() {
            tracing::error!(snapshot_id, error = %e, "could not sync a failed snapshot's row: its capture and log stay until a restart settles it");
            return false;
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
        true
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
}
