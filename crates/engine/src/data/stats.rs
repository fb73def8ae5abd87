//! Store statistics, as `GetStoreStats` and the metrics report them: read from the region's
//! running totals (`totals.rs`), never from a listing per call.

use crate::engine::Engine;
use crate::error::Result;
use crate::model::Millis;

/// Store statistics of one region.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    pub manifests: u64,
    /// Bytes the snapshots describe (written blocks × block size, summed over manifests).
    pub logical_bytes: u64,
    /// Bytes the chunk objects take.
    pub stored_bytes: u64,
    pub chunks: u64,
    /// When the chunks were last counted from a listing of the store (at start or by the last GC
    /// sweep); the figures follow this server's own writes and removals since.
    pub counted_at: Millis,
}

impl Engine {
    /// The region's statistics now (its store opened, and counted first if it never was);
    /// `None` while that first count is still running.
    pub async fn store_stats(&self, region: &str) -> Result<Option<StoreStats>> {
        Ok(self.region_figures(region).await?.map(|(f, at)| StoreStats {
            manifests: f.manifests,
            logical_bytes: f.logical_bytes,
            stored_bytes: f.stored_bytes,
            chunks: f.chunks,
            counted_at: at,
        }))
    }
}
