//! Per-region running totals of what the snapshot store holds, so `GetStoreStats` and the store
//! metrics cost the same at 10 snapshots as at 10,000 (no listing per call).
//!
//! - **Chunks** (count and bytes): counted from a listing of the store, at start (in the
//!   background, or by the first caller who needs them) and again by every GC sweep, which lists
//!   every chunk anyway. Between two listings they follow the store's own tally of the chunks it
//!   created ([`BlockStore::chunks_created`]): figures = last listing + created since. Chunks only
//!   go away in a sweep (or a quarantine by `verify`, which the next sweep's listing catches). The
//!   listing and the reading of the tally happen with the GC gate held exclusively, when no job
//!   that writes blocks is running (every one holds the gate shared from its first block to its
//!   manifest), so a chunk is never in both.
//! - **Manifests** (count and logical bytes): the logical size of each manifest by snapshot id,
//!   read once (at the first count, or when this process writes it) and dropped when this
//!   process removes the manifest; every GC sweep reconciles the map with its listing. Keyed by
//!   id, so a manifest found both by a listing and by its writer counts once.
//!
//! What the figures miss: objects written to the store by another process (nothing does; one
//! server owns a store) until the next sweep, and a chunk quarantined by `verify` until then.
//! Nothing here holds a lock across store I/O: the maps are updated after the I/O, under a
//! short mutex.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blocksnap_store::{BlockStore, ChunkTally, Manifest};

use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Millis, now_millis};

use super::{BLOCK_SIZE, internal};

/// Samples kept per region for the console's chart: at one per 5 minutes, a day.
pub const HISTORY_LEN: usize = 288;

/// How long a `GetStoreStats` caller waits for a region's first count (start-up counts it in
/// the background; a store of many snapshots takes one read per manifest the first time).
const FIRST_COUNT_WAIT: Duration = Duration::from_secs(10);

/// A region's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub manifests: u64,
    /// Bytes the manifests describe (written blocks × block size, summed over manifests).
    pub logical_bytes: u64,
    /// Bytes the chunk objects take.
    pub stored_bytes: u64,
    pub chunks: u64,
}

/// One point of a region's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Millis,
    pub figures: Figures,
}

/// The chunks of the last listing, and the store's tally of created chunks at that moment.
#[derive(Debug, Clone, Copy)]
struct ChunkBase {
    listed: ChunkTally,
    created_then: ChunkTally,
}

#[derive(Default)]
struct Inner {
    /// Logical bytes of each manifest, by snapshot id, and their sum.
    manifests: HashMap<String, u64>,
    logical: u64,
    /// The manifests were listed and read once.
    manifests_counted: bool,
    chunks: Option<ChunkBase>,
    /// When the last listing was taken.
    counted_at: Option<Millis>,
    history: VecDeque<Sample>,
}

impl Inner {
    fn put(&mut self, id: &str, bytes: u64) {
        if let Some(old) = self.manifests.insert(id.to_string(), bytes) {
            self.logical -= old;
        }
        self.logical += bytes;
    }
}

/// One region's running totals.
#[derive(Default)]
pub(crate) struct RegionTotals {
    inner: Mutex<Inner>,
    /// One full count at a time (start-up's, or a caller's that found none).
    counting: tokio::sync::Mutex<()>,
}

impl RegionTotals {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the map and its sum consistent before it can panic: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process wrote (or rewrote, identically) a manifest.
    pub(crate) fn manifest_written(&self, id: &str, logical_bytes: u64) {
        self.inner().put(id, logical_bytes);
    }

    /// This process removed a manifest (or found it gone).
    pub(crate) fn manifest_removed(&self, id: &str) {
        let mut i = self.inner();
        if let Some(old) = i.manifests.remove(id) {
            i.logical -= old;
        }
    }

    /// A manifest found by a listing and read: counted unless its writer counted it already.
    fn manifest_read(&self, id: &str, logical_bytes: u64) {
        let mut i = self.inner();
        if !i.manifests.contains_key(id) {
            i.put(id, logical_bytes);
        }
    }

    /// Take a listing of the store's manifests into account: the ids not known yet are returned
    /// (to read). With `exact` (the listing was taken while no manifest could be written, under
    /// the GC gate), ids the listing lacks are dropped too.
    fn manifests_listed(&self, listed: &[String], exact: bool) -> Vec<String> {
        let mut i = self.inner();
        if exact {
            let keep: HashSet<&str> = listed.iter().map(String::as_str).collect();
            let gone: Vec<String> = i.manifests.keys().filter(|k| !keep.contains(k.as_str())).cloned().collect();
            for id in gone {
                if let Some(old) = i.manifests.remove(&id) {
                    i.logical -= old;
                }
            }
        }
        listed.iter().filter(|id| !i.manifests.contains_key(id.as_str())).cloned().collect()
    }

    fn manifests_counted(&self) {
        self.inner().manifests_counted = true;
    }

    /// A listing of the chunks (`listed`), taken when the store's tally was `created_then`.
    fn chunks_listed(&self, listed: ChunkTally, created_then: ChunkTally, at: Millis) {
        let mut i = self.inner();
        i.chunks = Some(ChunkBase { listed, created_then });
        i.counted_at = Some(at);
    }

    /// The figures now (`created_now`: the store's tally now), once both halves were counted.
    pub(crate) fn figures(&self, created_now: ChunkTally) -> Option<(Figures, Millis)> {
        let i = self.inner();
        let (base, at) = (i.chunks?, i.counted_at?);
        if !i.manifests_counted {
            return None;
        }
        Some((
            Figures {
                manifests: i.manifests.len() as u64,
                logical_bytes: i.logical,
                stored_bytes: base.listed.bytes + created_now.bytes.saturating_sub(base.created_then.bytes),
                chunks: base.listed.chunks + created_now.chunks.saturating_sub(base.created_then.chunks),
            },
            at,
        ))
    }

    /// Add a point to the history (the oldest goes beyond [`HISTORY_LEN`]).
    fn sample(&self, at: Millis, figures: Figures) {
        let mut i = self.inner();
        if i.history.len() == HISTORY_LEN {
            i.history.pop_front();
        }
        i.history.push_back(Sample { at, figures });
    }

    pub(crate) fn history(&self) -> Vec<Sample> {
        self.inner().history.iter().copied().collect()
    }
}

/// The running totals of every region (created on first use).
#[derive(Default)]
pub(crate) struct Totals(Mutex<HashMap<String, Arc<RegionTotals>>>);

impl Totals {
    pub(crate) fn region(&self, region: &str) -> Arc<RegionTotals> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(region.to_string()).or_default().clone()
    }
}

/// What a manifest describes: its written blocks × the block size.
pub(crate) fn logical_bytes(m: &Manifest) -> u64 {
    m.blocks.iter().filter(|b| !b.is_reserved()).count() as u64 * BLOCK_SIZE
}

impl Engine {
    /// Commit a snapshot's manifest to its region's store, and count it.
    pub(crate) async fn put_manifest(&self, region: &str, store: &BlockStore, m: &Manifest) -> Result<()> {
        store.write_manifest(m).await.map_err(|e| internal("writing the manifest", e))?;
        self.jobs.totals.region(region).manifest_written(&m.snapshot_id, logical_bytes(m));
        Ok(())
    }

    /// Remove a snapshot's manifest from its region's store (idempotent), and stop counting it.
    pub(crate) async fn remove_manifest(&self, region: &str, store: &BlockStore, id: &str) -> Result<()> {
        store.delete_manifest(id).await.map_err(|e| internal("removing a manifest", e))?;
        self.jobs.totals.region(region).manifest_removed(id);
        Ok(())
    }

    /// The region's figures now and when its chunks were last listed; counts the region first if
    /// it never was (waiting up to [`FIRST_COUNT_WAIT`]; `None` if the count is still running).
    pub(crate) async fn region_figures(&self, region: &str) -> Result<Option<(Figures, Millis)>> {
        let store = self.store(region).await?;
        let totals = self.jobs.totals.region(region);
        if let Some(f) = totals.figures(store.chunks_created()) {
            return Ok(Some(f));
        }
        let Some(me) = self.me() else {
            // No background runtime (an engine without `start`): count here.
            self.count_region(region).await?;
            return Ok(totals.figures(store.chunks_created()));
        };
        let r = region.to_string();
        let Some(storage) = &self.storage else { return Ok(None) };
        // Spawned, so a caller that stops waiting does not cancel the count.
        let count = storage.runtime.spawn(async move { me.count_region(&r).await });
        match tokio::time::timeout(FIRST_COUNT_WAIT, count).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(internal("counting the store", e)),
            Err(_) => return Ok(None),
        }
        Ok(totals.figures(store.chunks_created()))
    }

    /// Count a region's store from listings (once: a region already counted is left alone).
    /// The manifests are listed and each unknown one read without any lock; the chunks are
    /// listed with the GC gate held exclusively (see the module docs).
    pub(crate) async fn count_region(&self, region: &str) -> Result<()> {
        let totals = self.jobs.totals.region(region);
        let _one = totals.counting.lock().await;
        let store = self.store(region).await?;
        if totals.figures(store.chunks_created()).is_some() {
            return Ok(());
        }
        let listed = store.list_manifests().await.map_err(|e| internal("listing manifests", e))?;
        self.read_manifest_sizes(&totals, &store, &listed, false).await;
        totals.manifests_counted();
        {
            let _no_block_writers = self.jobs.gc_gate.write().await;
            let created_then = store.chunks_created();
            let (bytes, chunks) = store.chunk_usage().await.map_err(|e| internal("listing chunks", e))?;
            totals.chunks_listed(ChunkTally { chunks, bytes }, created_then, now_millis());
        }
        self.sample_region(region, &store);
        tracing::info!(region, manifests = listed.len(), "store usage counted");
        Ok(())
    }

    /// Read the logical size of each listed manifest not counted yet (`exact`: see
    /// [`RegionTotals::manifests_listed`]). A manifest that cannot be read (removed since the
    /// listing) is skipped; the next sweep recounts.
    async fn read_manifest_sizes(&self, totals: &RegionTotals, store: &BlockStore, listed: &[String], exact: bool) {
        for id in totals.manifests_listed(listed, exact) {
            match store.read_manifest(&id).await {
                Ok(m) => totals.manifest_read(&id, logical_bytes(&m)),
                Err(e) => tracing::debug!(snapshot_id = id, error = %e, "manifest gone since the listing"),
            }
        }
    }

    /// After a sweep (gate held exclusively by the caller): the chunks it listed less those it
    /// removed, and its manifest listing, are the new base.
    pub(crate) fn sweep_counted(
        &self,
        region: &str,
        store: &BlockStore,
        report: &blocksnap_store::GcReport,
        manifests: &[String],
    ) -> Vec<String> {
        let totals = self.jobs.totals.region(region);
        let listed = ChunkTally {
            chunks: report.chunks_listed.saturating_sub(report.chunks_removed),
            bytes: report.chunk_bytes_listed.saturating_sub(report.chunk_bytes_removed),
        };
        totals.chunks_listed(listed, store.chunks_created(), now_millis());
        totals.manifests_listed(manifests, true)
    }

    /// Read the manifests a sweep found unknown (outside the gate), then record a sample.
    pub(crate) async fn sweep_finished(&self, region: &str, store: &BlockStore, unknown: Vec<String>) {
        let totals = self.jobs.totals.region(region);
        self.read_manifest_sizes(&totals, store, &unknown, false).await;
        totals.manifests_counted();
        self.sample_region(region, store);
    }

    /// Record the region's figures in its history (nothing before its first count).
    fn sample_region(&self, region: &str, store: &BlockStore) {
        let totals = self.jobs.totals.region(region);
        if let Some((f, _)) = totals.figures(store.chunks_created()) {
            totals.sample(now_millis(), f);
        }
    }

    /// Regions whose store this process has opened or whose local store exists, or that hold
    /// snapshots: those `GetStoreStats` reports on and start-up counts.
    pub(crate) async fn used_regions(&self) -> Vec<String> {
        let with_snapshots = self.lock().snapshot_tally.regions();
        self.used_regions_of(&with_snapshots).await
    }

    /// [`Engine::used_regions`] given the regions that hold snapshots.
    pub(crate) async fn used_regions_of(&self, with_snapshots: &HashSet<String>) -> Vec<String> {
        let opened: Vec<String> = self.jobs.stores.lock().await.keys().cloned().collect();
        self.config
            .regions
            .iter()
            .filter(|r| opened.contains(r) || with_snapshots.contains(*r) || self.local_store_exists(r))
            .cloned()
            .collect()
    }

    /// Start-up: count the used regions in the background, then sample every region counted
    /// every `every` (the console's chart; a sweep adds a sample too).
    pub fn start_usage(self: &Arc<Self>, every: Duration) {
        let Some(storage) = &self.storage else { return };
        let me = Arc::downgrade(self);
        storage.runtime.spawn(async move {
            let Some(engine) = me.upgrade() else { return };
            for region in engine.used_regions().await {
                if let Err(e) = engine.count_region(&region).await {
                    tracing::warn!(region, error = %e, "counting the store's usage (retried when asked)");
                }
            }
            drop(engine);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(engine) = me.upgrade() else { return };
                let opened: Vec<(String, Arc<BlockStore>)> =
                    engine.jobs.stores.lock().await.iter().map(|(r, s)| (r.clone(), s.clone())).collect();
                for (region, store) in opened {
                    engine.sample_region(&region, &store);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(chunks: u64, bytes: u64) -> ChunkTally {
        ChunkTally { chunks, bytes }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_before_both_halves_are_counted() {
        let t = RegionTotals::default();
        assert_eq!(t.figures(tally(0, 0)), None);
        t.chunks_listed(tally(3, 300), tally(0, 0), 7);
        assert_eq!(t.figures(tally(0, 0)), None, "manifests not counted yet");
        t.manifests_counted();
        let (f, at) = t.figures(tally(0, 0)).unwrap();
        assert_eq!((f.chunks, f.stored_bytes, f.manifests, at), (3, 300, 0, 7));
    }

    #[test]
    fn chunks_follow_the_tally_since_the_listing() {
        let t = RegionTotals::default();
        t.manifests_counted();
        // Listed 10 chunks when the handle had created 4 (those 4 are in the listing).
        t.chunks_listed(tally(10, 1000), tally(4, 400), 1);
        assert_eq!(t.figures(tally(4, 400)).unwrap().0.chunks, 10);
        let (f, _) = t.figures(tally(6, 650)).unwrap();
        assert_eq!((f.chunks, f.stored_bytes), (12, 1250));
        // A sweep: listed 12, removed 5; the tally is unchanged by it.
        t.chunks_listed(tally(7, 700), tally(6, 650), 2);
        let (f, at) = t.figures(tally(7, 760)).unwrap();
        assert_eq!((f.chunks, f.stored_bytes, at), (8, 810, 2));
    }

    #[test]
    fn manifests_count_once_whoever_finds_them() {
        let t = RegionTotals::default();
        t.chunks_listed(tally(0, 0), tally(0, 0), 1);
        t.manifest_written("snap-a", 100);
        // A listing that raced the writer finds snap-a too: only snap-b is to read.
        assert_eq!(t.manifests_listed(&ids(&["snap-a", "snap-b"]), false), ids(&["snap-b"]));
        t.manifest_read("snap-b", 50);
        t.manifest_read("snap-a", 999);
        t.manifests_counted();
        let (f, _) = t.figures(tally(0, 0)).unwrap();
        assert_eq!((f.manifests, f.logical_bytes), (2, 150));
        // An identical rewrite changes nothing; a removal takes its bytes off, twice is once.
        t.manifest_written("snap-a", 100);
        t.manifest_removed("snap-b");
        t.manifest_removed("snap-b");
        let (f, _) = t.figures(tally(0, 0)).unwrap();
        assert_eq!((f.manifests, f.logical_bytes), (1, 100));
    }

    #[test]
    fn an_exact_listing_drops_what_it_lacks_an_inexact_one_does_not() {
        let t = RegionTotals::default();
        t.chunks_listed(tally(0, 0), tally(0, 0), 1);
        t.manifests_counted();
        t.manifest_written("snap-a", 100);
        t.manifest_written("snap-b", 10);
        assert!(t.manifests_listed(&ids(&["snap-a"]), false).is_empty());
        assert_eq!(t.figures(tally(0, 0)).unwrap().0.logical_bytes, 110);
        assert_eq!(t.manifests_listed(&ids(&["snap-a", "snap-c"]), true), ids(&["snap-c"]));
        let (f, _) = t.figures(tally(0, 0)).unwrap();
        assert_eq!((f.manifests, f.logical_bytes), (1, 100));
    }

    #[test]
    fn history_is_bounded_oldest_out() {
        let t = RegionTotals::default();
        for n in 0..(HISTORY_LEN as i64 + 5) {
            t.sample(n, Figures { chunks: n as u64, ..Figures::default() });
        }
        let h = t.history();
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h[0].at, 5);
        assert_eq!(h.last().map(|s| s.figures.chunks), Some(HISTORY_LEN as u64 + 4));
    }

    #[test]
    fn logical_bytes_count_written_blocks_only() {
        use blocksnap_store::BlockId;
        let m = Manifest {
            snapshot_id: "snap-0123456789abcdef0".into(),
            volume_id: "vol-0123456789abcdef0".into(),
            volume_size: 4 * BLOCK_SIZE,
            blocks: vec![BlockId([7; 32]), BlockId::ZERO, BlockId::UNWRITTEN, BlockId([8; 32])],
            encryption: None,
            parent: None,
            created_unix_ms: 0,
            description: String::new(),
        };
        assert_eq!(logical_bytes(&m), 2 * BLOCK_SIZE);
    }
}
