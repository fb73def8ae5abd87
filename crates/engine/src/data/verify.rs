//! Scrub: every completed snapshot read back in full.

use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Snapshot, SnapshotState};

use super::internal;

impl Engine {
    /// Scrub: read every chunk of every completed snapshot of a region back, decrypt and re-derive
    /// its id (CRC, GCM tag and content id must all match).
    pub async fn verify_snapshots(&self, region: &str) -> Result<Vec<blocksnap_store::VerifyReport>> {
        // Archived snapshots have no standard copy: their archives are verified instead.
        let snaps: Vec<Snapshot> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.region == region && s.state == SnapshotState::Completed)
            .filter(|s| crate::archive::in_standard_tier(s))
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
        out.extend(self.verify_archives(region).await?);
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
