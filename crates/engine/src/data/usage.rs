//! What the store holds and saves, per region (`GetStoreStats`), and how its garbage collection
//! went. Store-wide figures (logical and stored bytes, chunks, GC) describe every account's data,
//! so only the root account sees them; any other account sees its own share: how many snapshots
//! it has and the bytes they added to the store.
//!
//! The store figures come from the region's running totals (`totals.rs`): no listing per call, so
//! the answer costs the same at 10 or 10,000 snapshots. The GC status and the history of the
//! figures are kept in memory by the process (a restart forgets them; the metrics keep theirs).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::credentials::owns;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Millis, now_millis};

use super::StoreStats;

/// The last garbage collection of a region's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcStatus {
    /// When it started.
    pub last_run: Millis,
    pub duration_ms: u64,
    /// `None` when it completed; the error otherwise (the next run retries).
    pub error: Option<String>,
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Unreferenced objects kept because they were younger than the grace window.
    pub kept_young: u64,
}

/// The last GC of each region, by region.
#[derive(Default)]
pub(crate) struct GcStatuses(Mutex<HashMap<String, GcStatus>>);

impl GcStatuses {
    pub(crate) fn record(&self, region: &str, status: GcStatus) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(region.to_string(), status);
    }

    fn get(&self, region: &str) -> Option<GcStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(region).cloned()
    }
}

/// How many snapshots each account has in each region and the bytes they added, kept with the
/// engine's snapshot rows (every row change goes through `Engine::apply`, which updates it), so
/// GetStoreStats reads a few entries instead of walking every snapshot.
#[derive(Default, Debug)]
pub(crate) struct SnapshotTally(HashMap<(String, String), (u64, u64)>);

impl SnapshotTally {
    pub(crate) fn add(&mut self, s: &crate::model::Snapshot) {
        let e = self.0.entry((s.account.clone(), s.region.clone())).or_default();
        e.0 += 1;
        e.1 += s.stored_bytes;
    }

    pub(crate) fn remove(&mut self, s: &crate::model::Snapshot) {
        let key = (s.account.clone(), s.region.clone());
        if let Some(e) = self.0.get_mut(&key) {
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(s.stored_bytes);
            if e.0 == 0 {
                self.0.remove(&key);
            }
        }
    }

    /// (snapshots, bytes added) in `region` of the accounts `whose` accepts.
    fn of(&self, region: &str, whose: impl Fn(&str) -> bool) -> (u64, u64) {
        self.0
            .iter()
            .filter(|((a, r), _)| r == region && whose(a))
            .fold((0, 0), |(n, b), (_, (n2, b2))| (n + n2, b + b2))
    }

    /// The regions holding any snapshot.
    pub(crate) fn regions(&self) -> HashSet<String> {
        self.0.keys().map(|(_, r)| r.clone()).collect()
    }
}

/// Whose figures a [`StoreUsage`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageScope {
    /// The whole store (the root account).
    Store,
    /// The caller's share only.
    Account,
}

/// One region's figures.
#[derive(Debug, Clone)]
pub struct RegionUsage {
    pub region: String,
    /// The caller's snapshots in the region (with `Store` scope: everyone's).
    pub snapshots: u64,
    /// Bytes those snapshots added to the store when they were made (sum of each one's own).
    pub snapshot_bytes_added: u64,
    /// Store-wide statistics (`Store` scope only; `None` while the region's first count runs,
    /// see `counting`).
    pub store: Option<StoreStats>,
    /// The region's first count after start is still running (`Store` scope only).
    pub counting: bool,
    /// The store-wide figures over time, oldest first (`Store` scope only; since the server started,
    /// at most [`super::HISTORY_LEN`] samples).
    pub history: Vec<super::Sample>,
    /// The last garbage collection (`Store` scope only; `None` before the first).
    pub gc: Option<GcStatus>,
}

impl RegionUsage {
    /// Logical bytes over stored bytes: what deduplication and compression save together (1.0
    /// for an empty store).
    pub fn reduction_ratio(&self) -> Option<f64> {
        let s = self.store.as_ref()?;
        Some(if s.stored_bytes == 0 { 1.0 } else { s.logical_bytes as f64 / s.stored_bytes as f64 })
    }
}

/// A `GetStoreStats` answer.
#[derive(Debug, Clone)]
pub struct StoreUsage {
    pub scope: UsageScope,
    /// When these figures were computed.
    pub computed_at: Millis,
    pub regions: Vec<RegionUsage>,
}

impl Engine {
    /// Store usage per region (`regions`, or every served region; see the module docs). Regions
    /// whose store was never used answer zeros without creating one.
    pub async fn store_usage(&self, ctx: &Ctx, regions: &[String]) -> Result<StoreUsage> {
        for r in regions {
            if !self.config.regions.iter().any(|x| x == r) {
                return Err(EngineError::client(
                    "ValidationException",
                    format!("The region '{r}' is not served by this endpoint."),
                ));
            }
        }
        let regions: Vec<String> = if regions.is_empty() { self.config.regions.clone() } else { regions.to_vec() };
        let root = self.root_account().as_deref() == Some(ctx.account.as_str());
        let scope = if root { UsageScope::Store } else { UsageScope::Account };
        // Counts from the snapshot tally (memory, a few entries per region, no walk over the
        // snapshots, no I/O); the store figures from the running totals.
        let (counted, with_snapshots): (Vec<(u64, u64)>, HashSet<String>) = {
            let st = self.lock();
            let whose = |a: &str| root || owns(&ctx.account, a);
            (regions.iter().map(|r| st.snapshot_tally.of(r, whose)).collect(), st.snapshot_tally.regions())
        };
        let used = if root { self.used_regions_of(&with_snapshots).await } else { Vec::new() };
        let mut out = Vec::with_capacity(regions.len());
        for (region, (snapshots, added)) in regions.into_iter().zip(counted) {
            let mut r = RegionUsage {
                snapshots,
                snapshot_bytes_added: added,
                store: None,
                counting: false,
                history: Vec::new(),
                gc: None,
                region,
            };
            if root {
                // Regions never used answer zeros without creating a store.
                if used.contains(&r.region) {
                    r.store = self.store_stats(&r.region).await?;
                    r.counting = r.store.is_none();
                    r.history = self.jobs.totals.region(&r.region).history();
                } else {
                    r.store = Some(StoreStats { counted_at: now_millis(), ..StoreStats::default() });
                }
                r.gc = self.jobs.gc_statuses.get(&r.region);
            }
            out.push(r);
        }
        Ok(StoreUsage { scope, computed_at: now_millis(), regions: out })
    }

    pub(crate) fn local_store_exists(&self, region: &str) -> bool {
        self.storage.as_ref().is_some_and(|s| s.snapshot_root.join(region).is_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;

    fn snap(id: &str, account: &str, region: &str, bytes: u64) -> Snapshot {
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "id": id, "account": account, "region": region, "volume_id": "vol-1", "volume_size_gib": 1,
            "state": "completed", "progress": 100, "start_time": 0, "description": "",
            "encrypted": false, "kms_key_id": null,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        s.stored_bytes = bytes;
        s
    }

    #[test]
    fn the_tally_follows_inserts_replacements_and_removals() {
        let mut t = SnapshotTally::default();
        let a = snap("snap-a", "111111111111", "us-east-1", 10);
        let b = snap("snap-b", "111111111111:lightsail", "us-east-1", 5);
        let c = snap("snap-c", "222222222222", "eu-west-1", 7);
        for s in [&a, &b, &c] {
            t.add(s);
        }
        let mine = |x: &str| owns("111111111111", x);
        assert_eq!(t.of("us-east-1", mine), (2, 15), "its Lightsail principal's count too");
        assert_eq!(t.of("eu-west-1", mine), (0, 0));
        assert_eq!(t.of("eu-west-1", |_| true), (1, 7));
        // A row rewritten (its bytes known at completion): remove the old, add the new.
        let mut a2 = a.clone();
        a2.stored_bytes = 30;
        t.add(&a2);
        t.remove(&a);
        assert_eq!(t.of("us-east-1", |_| true), (2, 35));
        t.remove(&c);
        assert_eq!(t.regions(), HashSet::from(["us-east-1".to_string()]));
    }
}
