//! Lazy restore: a volume made from a snapshot is usable at once, its blocks fetched on first
//! touch and by background hydrators.

use std::sync::Arc;

use blocksnap_store::{BlockId, BlockStore, Codec};
use roaring::RoaringBitmap;

use crate::engine::{Engine, Rec};
use crate::error::Result;
use crate::model::{Snapshot, Volume, VolumeState};

use super::{BLOCK_SIZE, internal};

/// Background hydration threads per restored volume.
const HYDRATORS: usize = 4;

impl Engine {
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

    pub(super) fn fail_volume(&self, volume_id: &str, message: &str) {
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
}

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
