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

/// Each manifest's logical size, by `region/snapshot`: a manifest never changes once written, so
/// each is read once, not on every statistics call (10,000 snapshots: one directory listing and
/// no reads instead of 10,000 reads).
#[derive(Default)]
pub(crate) struct LogicalSizes(std::sync::Mutex<std::collections::HashMap<String, u64>>);

impl LogicalSizes {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }

    fn put(&self, key: String, bytes: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key, bytes);
    }

    /// Forget the manifests of `region` that are gone.
    fn retain(&self, region: &str, live: &std::collections::HashSet<&str>) {
        let prefix = format!("{region}/");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.strip_prefix(&prefix).is_none_or(|id| live.contains(id)));
    }
}

impl Engine {
    /// Logical size from the store's manifests (each read once, then remembered), physical size
    /// and chunk count from one listing of the store's chunks (a local directory or a bucket).
    pub async fn store_stats(&self, region: &str) -> Result<StoreStats> {
        let store = self.store(region).await?;
        let ids = store.list_manifests().await.map_err(|e| internal("listing manifests", e))?;
        let sizes = &self.jobs.logical_sizes;
        let mut logical = 0u64;
        for id in &ids {
            let key = format!("{region}/{id}");
            if let Some(b) = sizes.get(&key) {
                logical += b;
                continue;
            }
            if let Ok(m) = store.read_manifest(id).await {
                let b = m.blocks.iter().filter(|b| !b.is_reserved()).count() as u64 * BLOCK_SIZE;
                sizes.put(key, b);
                logical += b;
            }
        }
        sizes.retain(region, &ids.iter().map(String::as_str).collect());
        let (stored, chunks) = store.chunk_usage().await.map_err(|e| internal("listing chunks", e))?;
        Ok(StoreStats { manifests: ids.len() as u64, logical_bytes: logical, stored_bytes: stored, chunks })
    }
}
