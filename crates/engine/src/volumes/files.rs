//! A volume's bytes on local disk: created on first use, freed once the row change is durable,
//! orphans removed at start.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::model::*;

use super::GIB;

impl Engine {
    /// The catalog no longer knows the volume: its bytes go. A failure here leaves an orphan that the
    /// next start removes; it never resurrects the volume.
    pub(crate) fn free_volume_bytes(&self, volume_id: &str) {
        self.close_export(volume_id);
        self.release_volume_bytes(volume_id);
    }

    pub(crate) fn release_volume_bytes(&self, volume_id: &str) {
        if self.row_changes_durable("freeing volume bytes") {
            fail::fail_point!("volume.before_free_bytes");
            self.drop_volume_bytes(volume_id);
        }
    }

    /// Remove a volume's files. Callers: a durable deletion (above), or a volume whose row was never
    /// committed (a failed create).
    pub(crate) fn drop_volume_bytes(&self, volume_id: &str) {
        if let Some(s) = &self.storage {
            match s.volumes.delete(volume_id) {
                Ok(()) | Err(blocksnap_volume::Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(volume_id, error = %e, "could not free volume bytes"),
            }
        }
    }

    /// The live volume's bytes, created on first use: a volume nobody has attached or snapshotted
    /// reads as zeros and needs no file, so CreateVolume costs one catalog commit.
    pub(crate) fn live_volume(&self, volume_id: &str, size_gib: u32) -> Result<Arc<blocksnap_volume::Volume>> {
        let s = self.storage.as_ref().ok_or_else(|| EngineError::Internal("no volume store".into()))?;
        // Never allocate here the bytes of a volume that lives on another node.
        if let Some(v) = self.lock().volumes.get(volume_id) {
            self.check_volume_here(v)?;
        }
        match s.volumes.open_volume(volume_id) {
            Ok(v) => Ok(v),
            Err(blocksnap_volume::Error::NotFound(_)) => {
                match s.volumes.create(volume_id, size_gib as u64 * GIB) {
                    Ok(()) | Err(blocksnap_volume::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(EngineError::Internal(format!("allocating volume {volume_id}: {e}"))),
                }
                s.volumes
                    .open_volume(volume_id)
                    .map_err(|e| EngineError::Internal(format!("opening volume {volume_id}: {e}")))
            }
            Err(e) => Err(EngineError::Internal(format!("opening volume {volume_id}: {e}"))),
        }
    }

    /// Remove volume directories the catalog does not know (left by a crash between allocating a
    /// volume and committing its row, or between deleting the row and freeing the bytes).
    pub fn remove_orphan_volumes(&self) -> Result<usize> {
        let Some(s) = &self.storage else { return Ok(0) };
        let known: std::collections::HashSet<String> = {
            let st = self.lock();
            st.volumes
                .keys()
                .cloned()
                .chain(st.snapshots.values().filter(|s| s.state == SnapshotState::Pending).map(|s| s.volume_id.clone()))
                .collect()
        };
        let mut removed = 0;
        for id in s.volumes.list().map_err(|e| EngineError::Internal(format!("listing volumes: {e}")))? {
            if !known.contains(&id) {
                tracing::info!(volume_id = %id, "removing orphan volume data");
                s.volumes.delete(&id).map_err(|e| EngineError::Internal(format!("removing orphan {id}: {e}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
