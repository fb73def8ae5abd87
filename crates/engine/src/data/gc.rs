//! Garbage collection: manifests of deleted snapshots, then mark-and-sweep of a region's store.

use std::sync::Arc;
use std::time::Duration;

use blocksnap_store::BlockStore;

use crate::engine::Engine;
use crate::error::Result;
use crate::model::Snapshot;

use super::{StoreStats, internal};

impl Engine {
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
                    if let Err(e) = me.remove_manifest(&region, &store, &id).await {
                        tracing::warn!(snapshot_id = id, error = %e, "deleting a manifest");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "opening a store"),
            }
        });
        self.forget_archive(s);
    }

    /// Before removing what no row of this memory wants: prove this process still owns the
    /// catalog ([`blocksnap_catalog::Catalog::still_owner`]; a cluster's leader that lost the
    /// leadership stops here instead of removing the new leader's objects).
    pub(crate) async fn prove_ownership(&self, what: &str) -> Result<()> {
        let catalog = self.catalog.clone();
        let proof = tokio::task::spawn_blocking(move || catalog.still_owner())
            .await
            .map_err(|e| internal("proving the catalog's ownership", e))?;
        proof.map_err(|e| {
            crate::error::EngineError::Internal(format!(
                "{what}: not done, this process may no longer own the catalog ({e}); another node may lead now"
            ))
        })
    }

    /// Garbage-collect every region store opened so far, forever, every `interval`; objects younger
    /// than `grace` are kept (uploads in flight). Also refreshes the store metrics.
    pub fn start_gc(self: &Arc<Self>, interval: Duration, grace: Duration) {
        let Some(storage) = &self.storage else { return };
        let me = Arc::downgrade(self);
        storage.runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(engine) = me.upgrade() else { return };
                // Temporary restores that ended leave the standard tier before the sweep.
                engine.expire_restores().await;
                engine.gc_archive_stores().await;
                let regions: Vec<String> = engine.jobs.stores.lock().await.keys().cloned().collect();
                for region in regions {
                    if let Err(e) = engine.gc_region(&region, grace).await {
                        tracing::warn!(region, error = %e, "garbage collection failed");
                    }
                }
            }
        });
    }

    /// One mark-and-sweep of a region's store, then its statistics (the usage totals' new base,
    /// `totals.rs`); how it went is recorded for `GetStoreStats` (`usage.rs`).
    pub async fn gc_region(&self, region: &str, grace: Duration) -> Result<StoreStats> {
        let started_at = crate::model::now_millis();
        let started = std::time::Instant::now();
        let r = self.gc_region_once(region, grace).await;
        let (report, error) = match &r {
            Ok((report, _)) => (report.clone(), None),
            Err(e) => (Default::default(), Some(e.to_string())),
        };
        self.jobs.gc_statuses.record(
            region,
            super::GcStatus {
                last_run: started_at,
                duration_ms: started.elapsed().as_millis() as u64,
                error,
                chunks_removed: report.chunks_removed,
                bytes_removed: report.chunk_bytes_removed + report.segment_bytes_removed,
                kept_young: report.kept_young,
            },
        );
        r.map(|(_, stats)| stats)
    }

    async fn gc_region_once(&self, region: &str, grace: Duration) -> Result<(blocksnap_store::GcReport, StoreStats)> {
        let store = self.store(region).await?;
        let (report, unknown) = {
            let _sweep = self.jobs.gc_gate.write().await;
            let manifests = self.drop_orphan_manifests(region, &store).await?;
            // Blocks written into snapshots still being built block by block are live too; with
            // the gate held, no block write is between its store put and its log record.
            let roots = self.ebs_live_blocks(region);
            self.prove_ownership("sweeping the store").await?;
            let report = store.gc_with_roots(grace, &roots).await.map_err(|e| internal("garbage collection", e))?;
            // The sweep listed every chunk with no block writer running: the usage totals' new base.
            let unknown = self.sweep_counted(region, &store, &report, &manifests);
            (report, unknown)
        };
        self.sweep_finished(region, &store, unknown).await;
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
        let stats = self.store_stats(region).await?.unwrap_or_default();
        let labels = [("region", region.to_string())];
        metrics::gauge!("blocksnap_store_stored_bytes", &labels).set(stats.stored_bytes as f64);
        metrics::gauge!("blocksnap_store_logical_bytes", &labels).set(stats.logical_bytes as f64);
        metrics::gauge!("blocksnap_store_chunks", &labels).set(stats.chunks as f64);
        metrics::gauge!("blocksnap_store_manifests", &labels).set(stats.manifests as f64);
        let ratio = if stats.stored_bytes == 0 { 1.0 } else { stats.logical_bytes as f64 / stats.stored_bytes as f64 };
        metrics::gauge!("blocksnap_store_dedup_ratio", &labels).set(ratio);
        Ok((report, stats))
    }

    /// Manifests whose snapshot row is gone (a crash between a durable DeleteSnapshot and the
    /// manifest's removal), or whose row's standard copy is gone (archived: a crash between the
    /// archival's commit and the manifest's removal, or a temporary restore that ended): removed, so
    /// the sweep can free their blocks. A manifest is only ever written for a row that exists
    /// (pending, or being restored from the archive) and rows only come back from the Recycle Bin,
    /// whose snapshots count as live here (the move between row and bin is one commit under the
    /// state lock), so listing first and checking the rows after cannot drop a live manifest. The
    /// store belongs to this catalog.
    /// Returns the manifests left.
    async fn drop_orphan_manifests(&self, region: &str, store: &BlockStore) -> Result<Vec<String>> {
        let listed = store.list_manifests().await.map_err(|e| internal("listing manifests", e))?;
        let (orphans, kept): (Vec<String>, Vec<String>) = {
            let st = self.lock();
            // Snapshots in the Recycle Bin keep their manifests (and so their blocks) until purged.
            listed.into_iter().partition(|id| {
                !crate::recycle_bin::in_bin(&st, id)
                    && st.snapshots.get(id).is_none_or(crate::archive::standard_copy_dropped)
            })
        };
        for id in &orphans {
            // Its row may be another node's, made after this node stopped leading.
            self.prove_ownership("removing the manifest of a deleted snapshot").await?;
            tracing::info!(region, snapshot_id = %id, "removing the manifest of a deleted snapshot");
            self.remove_manifest(region, store, id).await?;
        }
        Ok(kept)
    }
}
