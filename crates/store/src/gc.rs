//! Garbage collection: mark everything reachable from manifests, sweep the rest past a grace
//! window. No refcounts: the manifests are the only truth.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use tracing::{info, warn};

use crate::error::Result;
use crate::id::{BlockId, SegmentId};
use crate::store::{BlockStore, IO_CONCURRENCY, ObjKey, now_unix_ms};

/// Objects per delete request (S3 DeleteObjects takes up to 1,000).
const DELETE_BATCH: usize = 1000;

/// What a GC run found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: u64,
    pub live_segments: u64,
    pub live_chunks: u64,
    /// Chunk objects the sweep listed (live, young and garbage) and their bytes: with the
    /// removed ones taken off, what the store holds after the run.
    pub chunks_listed: u64,
    pub chunk_bytes_listed: u64,
    pub chunks_removed: u64,
    pub chunk_bytes_removed: u64,
    pub segments_removed: u64,
    pub segment_bytes_removed: u64,
    /// Unreferenced objects kept because they are younger than the grace window (or were
    /// reused by a writer within it): in-flight uploads.
    pub kept_young: u64,
    /// Objects whose delete failed (retried by the next run).
    pub delete_errors: u64,
    /// Staging files of local stores left by a crash mid-write, older than the grace window.
    pub staging_removed: u64,
    pub duration: Duration,
}

struct Candidate {
    key: ObjKey,
    raw: [u8; 32],
    path: Path,
    size: u64,
}

impl BlockStore {
    /// Mark and sweep with `grace` (use an hour or more in production: anything a writer
    /// stored or reused within `grace` survives even if no manifest references it yet).
    pub async fn gc(&self, grace: Duration) -> Result<GcReport> {
        self.gc_with_roots(grace, &HashSet::new()).await
    }

    /// GC with extra live block ids: parents of pending uploads whose manifests may be
    /// deleted, source snapshots of volumes still hydrating, journals of in-flight work.
    /// Aborts without deleting anything if any manifest or segment cannot be read.
    pub async fn gc_with_roots(&self, grace: Duration, extra_roots: &HashSet<BlockId>) -> Result<GcReport> {
        let _one_at_a_time = self.inner.gc_lock.lock().await;
        let started = Instant::now();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let cutoff_ms = now_unix_ms().saturating_sub(grace_ms);
        let mut report = GcReport::default();

        // Mark: manifests -> unique segments -> block ids.
        let snaps = self.list_manifests().await?;
        report.manifests = snaps.len() as u64;
        // Owned items (see `read_manifest`): keeps the future `Send` so callers can spawn GC.
        let headers: Vec<_> = stream::iter(snaps.clone())
            .map(|s| async move { self.read_manifest_header(&s).await })
            .buffer_unordered(IO_CONCURRENCY)
            .try_collect()
            .await?;
        let live_segments: HashSet<SegmentId> =
            headers.iter().flat_map(|h| h.segments.iter().copied()).filter(|s| !s.is_reserved()).collect();
        let mut live_chunks: HashSet<BlockId> = extra_roots.clone();
        let mut segs = stream::iter(live_segments.iter().copied())
            .map(|id| self.read_segment_any(id))
            .buffer_unordered(IO_CONCURRENCY);
        while let Some(ids) = segs.next().await {
            live_chunks.extend(ids?.into_iter().filter(|i| !i.is_reserved()));
        }
        drop(segs);
        report.live_segments = live_segments.len() as u64;
        report.live_chunks = live_chunks.len() as u64;

        // Sweep: list, keep live and young, delete the rest under the shard locks.
        let mut chunks_listed = (0, 0);
        let chunk_cands = self
            .candidates(
                "chunks",
                cutoff_ms,
                |raw| live_chunks.contains(&BlockId(raw)),
                ObjKey::Chunk,
                &mut report,
                &mut chunks_listed,
            )
            .await?;
        (report.chunks_listed, report.chunk_bytes_listed) = chunks_listed;
        let seg_cands = self
            .candidates(
                "segs",
                cutoff_ms,
                |raw| live_segments.contains(&SegmentId(raw)),
                ObjKey::Segment,
                &mut report,
                &mut (0, 0),
            )
            .await?;
        let (n, b) = self.delete(chunk_cands, grace, &mut report).await?;
        report.chunks_removed = n;
        report.chunk_bytes_removed = b;
        let (n, b) = self.delete(seg_cands, grace, &mut report).await?;
        report.segments_removed = n;
        report.segment_bytes_removed = b;

        if let Some(root) = self.local_root() {
            let before = std::time::SystemTime::now().checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
            match tokio::task::spawn_blocking(move || crate::direct::remove_stale_staging(&root, before)).await? {
                Ok(n) => report.staging_removed = n,
                Err(e) => warn!(error = %e, "gc: removing stale staging files"),
            }
        }

        // Forget reuse records older than the grace window: their objects are either
        // referenced by a manifest by now or are garbage.
        self.inner.recent_hits.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, t| t.elapsed() < grace);
        report.duration = started.elapsed();
        info!(?report, "gc finished");
        Ok(report)
    }

    async fn candidates(
        &self,
        dir: &str,
        cutoff_ms: i64,
        is_live: impl Fn([u8; 32]) -> bool,
        key: fn([u8; 32]) -> ObjKey,
        report: &mut GcReport,
        listed: &mut (u64, u64),
    ) -> Result<Vec<Candidate>> {
        let prefix = self.dir(dir);
        let mut listing = self.inner.os.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            listed.0 += 1;
            listed.1 += meta.size;
            let Some(raw) = meta.location.filename().and_then(|f| f.parse::<BlockId>().ok()).map(|i| i.0) else {
                warn!(object = %meta.location, "gc: ignoring unexpected object");
                continue;
            };
            if is_live(raw) {
                continue;
            }
            if meta.last_modified.timestamp_millis() >= cutoff_ms {
                report.kept_young += 1;
                continue;
            }
            out.push(Candidate { key: key(raw), raw, path: meta.location, size: meta.size });
        }
        Ok(out)
    }

    /// Delete candidates shard by shard, holding the shard exclusively so no writer can take a
    /// dedup hit on an object while it is being removed. Returns (objects, bytes) removed.
    async fn delete(&self, cands: Vec<Candidate>, grace: Duration, report: &mut GcReport) -> Result<(u64, u64)> {
        let mut by_shard: Vec<Vec<Candidate>> = Vec::new();
        for c in cands {
            let i = BlockStore::shard_index(&c.raw);
            if by_shard.len() <= i {
                by_shard.resize_with(i + 1, Vec::new);
            }
            by_shard[i].push(c);
        }
        let (mut removed, mut bytes) = (0u64, 0u64);
        for (i, shard_cands) in by_shard.into_iter().enumerate() {
            for batch in shard_cands.chunks(DELETE_BATCH) {
                let _exclusive = self.shard_at(i).write().await;
                // Re-check under the lock: a writer may have reused the object since listing.
                let doomed: Vec<&Candidate> = {
                    let hits = self.inner.recent_hits.lock().unwrap_or_else(PoisonError::into_inner);
                    batch.iter().filter(|c| hits.get(&c.key).is_none_or(|t| t.elapsed() >= grace)).collect()
                };
                report.kept_young += (batch.len() - doomed.len()) as u64;
                if doomed.is_empty() {
                    continue;
                }
                let sizes: std::collections::HashMap<Path, u64> =
                    doomed.iter().map(|c| (c.path.clone(), c.size)).collect();
                let paths: Vec<object_store::Result<Path>> = doomed.iter().map(|c| Ok(c.path.clone())).collect();
                let mut results = self.inner.os.delete_stream(stream::iter(paths).boxed());
                while let Some(r) = results.next().await {
                    match r {
                        Ok(p) => {
                            removed += 1;
                            bytes += sizes.get(&p).copied().unwrap_or(0);
                        }
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => {
                            warn!(error = %e, "gc: delete failed");
                            report.delete_errors += 1;
                        }
                    }
                }
            }
        }
        Ok((removed, bytes))
    }
}
