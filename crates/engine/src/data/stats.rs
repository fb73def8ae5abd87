//! Store statistics, as the metrics report them.

use crate::engine::Engine;
use crate::error::Result;

use super::{BLOCK_SIZE, internal};

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
