//! The archive tier: ModifySnapshotTier, RestoreSnapshotTier and DescribeSnapshotTierStatus, and the
//! jobs behind them.
//!
//! State machine of a snapshot's tiering (`Snapshot::tiering`; `None` = never archived, standard):
//!
//! ```text
//!  standard ──ModifySnapshotTier──▶ archival-in-progress ──job──▶ archival-completed (archive tier)
//!                                      │ (still usable)  └─fails─▶ archival-failed (standard)
//!  archive ──RestoreSnapshotTier(days)──▶ temporary-restore-in-progress ──job──▶ temporary-restore-completed
//!          ──RestoreSnapshotTier(permanent)──▶ permanent-restore-in-progress ──job──▶ permanent-restore-completed
//!  temporary-restore-completed ──expiry (engine clock)──▶ archive tier again (standard copy dropped)
//!                              ──RestoreSnapshotTier(days)──▶ new expiry, from now
//!                              ──RestoreSnapshotTier(permanent)──▶ permanent-restore-completed
//! ```
//!
//! The archive job writes the snapshot as a full, self-contained archive (`blocksnap_store::archive`)
//! into the region's archive store, durably; then, once nothing uses the snapshot (a volume restore
//! hydrating from it, a copy, a pending snapshot whose parent it is), commits the row as archived and
//! syncs it; only then is the standard store's manifest removed, and the next GC sweeps every chunk no
//! other manifest references. GC also removes the manifest of any row whose standard copy is gone
//! (a crash between the commit and the removal), and the archive of any row that has none (a crash
//! between a row's deletion, failure or permanent restore and the archive's removal). A restarted
//! process resumes the jobs in progress from their rows: an unfinished archive is written again, a
//! committed one is reused.
//!
//! A snapshot whose parent left the standard tier is still incremental: its upload takes the
//! parent's block list from the archive and puts the blocks it keeps back into the standard store,
//! so no standard snapshot depends on an archived one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blocksnap_store::{ArchiveIndex, ArchiveLocation, ArchiveStore, BlockId, BlockStore, Codec, StoreError};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::describe::{self, Limits, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::model::{Ctx, Millis, Snapshot, SnapshotState, Tags, VolumeState};

/// Temporary restores: "1 to 180 days".
pub const MAX_TEMPORARY_RESTORE_DAYS: i64 = 180;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// DescribeSnapshotTierStatus: the reference gives no range; pages of up to 1,000 as DescribeSnapshots.
pub(crate) const TIER_STATUS: Limits = Limits { min: 1, max: 1000, clamp_above: true, ids_exclude_max: false };
const TIER_FILTERS: &[&str] = &["snapshot-id", "volume-id", "last-tiering-operation"];

/// The last archive or restore operation, as `LastTieringOperationStatus` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TieringStatus {
    ArchivalInProgress,
    ArchivalCompleted,
    ArchivalFailed,
    TemporaryRestoreInProgress,
    TemporaryRestoreCompleted,
    TemporaryRestoreFailed,
    PermanentRestoreInProgress,
    PermanentRestoreCompleted,
    PermanentRestoreFailed,
}

impl TieringStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TieringStatus::ArchivalInProgress => "archival-in-progress",
            TieringStatus::ArchivalCompleted => "archival-completed",
            TieringStatus::ArchivalFailed => "archival-failed",
            TieringStatus::TemporaryRestoreInProgress => "temporary-restore-in-progress",
            TieringStatus::TemporaryRestoreCompleted => "temporary-restore-completed",
            TieringStatus::TemporaryRestoreFailed => "temporary-restore-failed",
            TieringStatus::PermanentRestoreInProgress => "permanent-restore-in-progress",
            TieringStatus::PermanentRestoreCompleted => "permanent-restore-completed",
            TieringStatus::PermanentRestoreFailed => "permanent-restore-failed",
        }
    }

    fn restoring(self) -> bool {
        matches!(self, TieringStatus::TemporaryRestoreInProgress | TieringStatus::PermanentRestoreInProgress)
    }
}

/// A snapshot's tiering record (catalog document field; every field added later needs a default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiering {
    pub status: TieringStatus,
    /// When the last archive or restore started (engine clock).
    pub start_time: Millis,
    #[serde(default)]
    pub progress: u8,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub archival_complete_time: Option<Millis>,
    /// A temporary restore's end: the standard copy goes then.
    #[serde(default)]
    pub restore_expiry_time: Option<Millis>,
    /// A temporary restore's length in days.
    #[serde(default)]
    pub restore_days: Option<u32>,
    /// A committed archive of the snapshot exists in the region's archive store.
    #[serde(default)]
    pub archived: bool,
    /// The snapshot's blocks are in the standard store (it can be used).
    #[serde(default)]
    pub in_standard: bool,
}

/// Can the snapshot be used (volumes, copies, reads)? Also `true` while its archival runs.
pub fn in_standard_tier(s: &Snapshot) -> bool {
    s.tiering.as_ref().is_none_or(|t| t.in_standard)
}

/// `storageTier` as DescribeSnapshots reports it.
pub fn storage_tier(s: &Snapshot) -> &'static str {
    if in_standard_tier(s) { "standard" } else { "archive" }
}

/// `restoreExpiryTime`: only for archived snapshots that are temporarily restored.
pub fn restore_expiry_time(s: &Snapshot) -> Option<Millis> {
    s.tiering.as_ref().filter(|t| t.archived && t.in_standard).and_then(|t| t.restore_expiry_time)
}

/// The standard store's copy of this row is gone for good (archived, not being restored): its
/// manifest, if one is still there, is removed by GC.
pub(crate) fn standard_copy_dropped(s: &Snapshot) -> bool {
    s.tiering.as_ref().is_some_and(|t| !t.in_standard && !t.status.restoring())
}

/// The archive store of this row may hold objects (a committed archive, or one being written).
fn may_have_archive(s: &Snapshot) -> bool {
    s.tiering.as_ref().is_some_and(|t| t.archived || t.status == TieringStatus::ArchivalInProgress)
}

/// Refuse a use of a snapshot that is not in the standard tier (CreateVolume, CopySnapshot, ...).
pub(crate) fn check_usable(s: &Snapshot) -> Result<()> {
    if in_standard_tier(s) {
        return Ok(());
    }
    let restoring = s.tiering.as_ref().is_some_and(|t| t.status.restoring());
    Err(EngineError::client(
        "IncorrectState",
        if restoring {
            format!(
                "The snapshot '{}' is being restored from the archive tier; it can be used once the restore completes.",
                s.id
            )
        } else {
            format!(
                "The snapshot '{}' is in the archive tier; restore it with RestoreSnapshotTier before using it.",
                s.id
            )
        },
    ))
}

/// One row of DescribeSnapshotTierStatus.
#[derive(Debug, Clone)]
pub struct TierStatus {
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: SnapshotState,
    pub owner_id: String,
    pub tags: Tags,
    pub storage_tier: &'static str,
    pub tiering: Option<Tiering>,
    pub restore_expiry_time: Option<Millis>,
}

impl Filterable for TierStatus {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "snapshot-id" => vec![self.snapshot_id.clone()],
            "volume-id" => vec![self.volume_id.clone()],
            "last-tiering-operation" => self.tiering.iter().map(|t| t.status.as_str().to_string()).collect(),
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

/// RestoreSnapshotTier's answer.
#[derive(Debug, Clone)]
pub struct TierRestore {
    pub snapshot_id: String,
    pub restore_start_time: Millis,
    pub restore_duration: Option<u32>,
    pub is_permanent_restore: bool,
}

/// Tiering jobs running in this process, and the per-region archive stores.
#[derive(Default)]
pub(crate) struct TierJobs {
    /// Snapshot id → another run was asked for while this one runs. Never taken before the engine
    /// lock (`snapshot_busy` takes it under the engine lock).
    running: Mutex<HashMap<String, bool>>,
    archives: tokio::sync::Mutex<HashMap<String, Arc<ArchiveStore>>>,
    /// Which archive stores the GC tick lists ([`Engine::gc_archive_stores`]).
    sweeps: Mutex<ArchiveSweeps>,
}

/// An archive store can hold an orphan (an archive no row wants) only after a crash, or after
/// something in its region had a tiering record: an archival, a restore, a deletion of an archived
/// snapshot whose removal failed. So every opened store is listed at the first tick and then every
/// [`FULL_ARCHIVE_SWEEP_EVERY`] (crash leftovers, and any path not foreseen here); in between only
/// the regions that have, or had at the previous tick, a snapshot with a tiering record or a snapshot
/// in the Recycle Bin. A server with many regions and few archives thus lists a few stores per tick,
/// not one per region (each a LIST request on S3).
#[derive(Default)]
struct ArchiveSweeps {
    last_full: Option<std::time::Instant>,
    active_before: HashSet<String>,
}

/// How often every opened archive store is listed, whatever its region holds.
const FULL_ARCHIVE_SWEEP_EVERY: Duration = Duration::from_secs(3600);

impl ArchiveSweeps {
    /// The regions to list now, given the opened stores and the regions active now; remembers both.
    fn plan(&mut self, opened: Vec<String>, active: HashSet<String>, now: std::time::Instant) -> Vec<String> {
        let full = self.last_full.is_none_or(|t| now.duration_since(t) >= FULL_ARCHIVE_SWEEP_EVERY);
        if full {
            self.last_full = Some(now);
        }
        let plan =
            opened.into_iter().filter(|r| full || active.contains(r) || self.active_before.contains(r)).collect();
        self.active_before = active;
        plan
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{what}: {e}"))
}

impl Engine {
    /// Does anything still read this snapshot's standard copy, or may start to (a volume restore
    /// not yet hydrated, a copy, a pending snapshot whose parent it is, a job's read guard)?
    fn snapshot_in_use(&self, st: &State, s: &Snapshot) -> bool {
        let qualified = format!("{}/{}", s.region, s.id);
        self.snapshot_busy_reading(&s.id)
            || st.snapshots.values().any(|c| {
                c.state == SnapshotState::Pending
                    && (c.parent.as_deref() == Some(s.id.as_str())
                        || c.source_snapshot.as_deref().is_some_and(|src| src == qualified || src == s.id))
            })
            || st.volumes.values().any(|v| {
                v.snapshot_id.as_deref() == Some(s.id.as_str())
                    && (v.state == VolumeState::Creating || v.restore.is_some())
            })
    }

    /// Is a tiering job of this snapshot running in this process?
    pub(crate) fn tiering_busy(&self, id: &str) -> bool {
        self.jobs.tiering.running.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// The archive store of a region, opened on first use.
    pub(crate) async fn archive_store(&self, region: &str) -> Result<Arc<ArchiveStore>> {
        let storage = self.storage.as_ref().ok_or_else(|| internal("archive store", "no storage configured"))?;
        let mut stores = self.jobs.tiering.archives.lock().await;
        if let Some(s) = stores.get(region) {
            return Ok(s.clone());
        }
        let loc = match self.config.archive_stores.get(region) {
            Some(loc) => loc.clone(),
            None => ArchiveLocation::Local(Self::default_archive_dir(&storage.snapshot_root, region)),
        };
        let s = Arc::new(
            ArchiveStore::open_at(&loc)
                .await
                .map_err(|e| internal(&format!("opening the archive store of {region}"), e))?,
        );
        stores.insert(region.to_string(), s.clone());
        Ok(s)
    }

    /// `DATA/archive/<region>` beside `DATA/snapshots`.
    fn default_archive_dir(snapshot_root: &std::path::Path, region: &str) -> std::path::PathBuf {
        snapshot_root.parent().unwrap_or(snapshot_root).join("archive").join(region)
    }

    // ---- the calls ----------------------------------------------------------------------

    /// ModifySnapshotTier: start archiving a completed standard snapshot. Answers TieringStartTime.
    pub fn modify_snapshot_tier(&self, ctx: &Ctx, id: &str, tier: Option<&str>, dry_run: bool) -> Result<Millis> {
        match tier {
            Some("archive") => {}
            None => return Err(EngineError::missing("The request must contain the parameter StorageTier (archive).")),
            Some(other) => {
                return Err(EngineError::invalid_value(format!(
                    "Value ({other}) for parameter StorageTier is invalid. Valid values: archive"
                )));
            }
        }
        let now = clock::now_millis();
        {
            let mut st = self.lock();
            let mut s = self.own_snapshot(&st, ctx, id)?.clone();
            if s.state != SnapshotState::Completed {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!(
                        "The snapshot '{id}' is in the '{}' state; only completed snapshots can be archived.",
                        s.state.as_str()
                    ),
                ));
            }
            if let Some(t) = &s.tiering {
                let why = match t.status {
                    TieringStatus::ArchivalInProgress => Some("is already being archived"),
                    st if st.restoring() => Some("is being restored from the archive tier"),
                    _ if !t.in_standard => Some("is already in the archive tier"),
                    _ if t.archived => Some(
                        "is temporarily restored: it returns to the archive tier when its restore period ends \
                         (change the period with RestoreSnapshotTier)",
                    ),
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(EngineError::client("IncorrectState", format!("The snapshot '{id}' {why}.")));
                }
            }
            if dry_run {
                return Err(EngineError::DryRun);
            }
            s.tiering = Some(Tiering {
                status: TieringStatus::ArchivalInProgress,
                start_time: now,
                progress: 0,
                detail: None,
                archival_complete_time: None,
                restore_expiry_time: None,
                restore_days: None,
                archived: false,
                in_standard: true,
            });
            self.commit(&mut st, vec![Rec::Snapshot(s)])?;
        }
        self.sync_pending()?;
        self.spawn_tier_job(id.to_string());
        Ok(now)
    }

    /// RestoreSnapshotTier: bring an archived snapshot back (for `days`, or for good), or change a
    /// temporary restore's period or make it permanent.
    pub fn restore_snapshot_tier(
        &self,
        ctx: &Ctx,
        id: &str,
        days: Option<i64>,
        permanent: Option<bool>,
        dry_run: bool,
    ) -> Result<TierRestore> {
        let permanent = permanent.unwrap_or(false);
        let days = match (days, permanent) {
            (Some(_), true) => {
                return Err(EngineError::combination(
                    "TemporaryRestoreDays cannot be used with PermanentRestore: a permanent restore has no period.",
                ));
            }
            (None, false) => {
                return Err(EngineError::missing(
                    "The request must contain the parameter TemporaryRestoreDays (a temporary restore) or \
                     PermanentRestore=true.",
                ));
            }
            (Some(d), false) if !(1..=MAX_TEMPORARY_RESTORE_DAYS).contains(&d) => {
                return Err(EngineError::invalid_value(format!(
                    "Value ({d}) for parameter TemporaryRestoreDays is invalid. It must be between 1 and \
                     {MAX_TEMPORARY_RESTORE_DAYS} days."
                )));
            }
            (Some(d), false) => Some(d as u32),
            (None, true) => None,
        };
        let now = clock::now_millis();
        let mut drop_archive = false;
        let mut start_job = false;
        let answer = {
            let mut st = self.lock();
            let mut s = self.own_snapshot(&st, ctx, id)?.clone();
            let Some(mut t) = s.tiering.clone().filter(|t| t.archived) else {
                let why = if s.tiering.as_ref().is_some_and(|t| t.status == TieringStatus::ArchivalInProgress) {
                    "is still being archived"
                } else {
                    "is not archived"
                };
                return Err(EngineError::client("IncorrectState", format!("The snapshot '{id}' {why}.")));
            };
            if t.status.restoring() {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!("The snapshot '{id}' is already being restored from the archive tier."),
                ));
            }
            if dry_run {
                return Err(EngineError::DryRun);
            }
            if t.in_standard {
                // Temporarily restored: a new period from now, or for good.
                match days {
                    Some(d) => {
                        t.status = TieringStatus::TemporaryRestoreCompleted;
                        t.restore_days = Some(d);
                        t.restore_expiry_time = Some(now + i64::from(d) * DAY_MS);
                    }
                    None => {
                        t.status = TieringStatus::PermanentRestoreCompleted;
                        t.restore_days = None;
                        t.restore_expiry_time = None;
                        t.archived = false;
                        drop_archive = true;
                    }
                }
                t.start_time = now;
                t.progress = 100;
                t.detail = None;
            } else {
                t.status = if days.is_some() {
                    TieringStatus::TemporaryRestoreInProgress
                } else {
                    TieringStatus::PermanentRestoreInProgress
                };
                t.start_time = now;
                t.progress = 0;
                t.detail = None;
                t.restore_days = days;
                t.restore_expiry_time = None;
                start_job = true;
            }
            s.tiering = Some(t);
            let region = s.region.clone();
            self.commit(&mut st, vec![Rec::Snapshot(s)])?;
            drop(st);
            self.sync_pending()?;
            if drop_archive {
                self.spawn_archive_removal(region, id.to_string());
            }
            TierRestore {
                snapshot_id: id.to_string(),
                restore_start_time: now,
                restore_duration: days,
                is_permanent_restore: days.is_none(),
            }
        };
        if start_job {
            self.spawn_tier_job(id.to_string());
        }
        Ok(answer)
    }

    /// DescribeSnapshotTierStatus: the caller's snapshots in the region with their tiering.
    pub fn describe_snapshot_tier_status(&self, ctx: &Ctx, query: &ListQuery) -> Result<Page<TierStatus>> {
        let items: Vec<TierStatus> = {
            let st = self.lock();
            st.snapshots
                .values()
                .filter(|s| s.account == ctx.account && s.region == ctx.region)
                .map(|s| TierStatus {
                    snapshot_id: s.id.clone(),
                    volume_id: s.volume_id.clone(),
                    state: s.state,
                    owner_id: s.account.clone(),
                    tags: s.tags.clone(),
                    storage_tier: storage_tier(s),
                    tiering: s.tiering.clone(),
                    restore_expiry_time: restore_expiry_time(s),
                })
                .collect()
        };
        describe::run(query, TIER_FILTERS, TIER_STATUS, items.iter(), |t| &t.snapshot_id)
    }

    // ---- jobs ---------------------------------------------------------------------------

    /// Resume the tiering jobs a previous run left in progress; open the archive stores that exist.
    pub(crate) fn resume_tiering(&self) {
        let Some(storage) = &self.storage else { return };
        let (jobs, regions): (Vec<String>, HashSet<String>) = {
            let st = self.lock();
            let jobs = st
                .snapshots
                .values()
                .filter(|s| {
                    s.tiering
                        .as_ref()
                        .is_some_and(|t| t.status == TieringStatus::ArchivalInProgress || t.status.restoring())
                })
                .map(|s| s.id.clone())
                .collect();
            let regions = st.snapshots.values().filter(|s| s.tiering.is_some()).map(|s| s.region.clone()).collect();
            (jobs, regions)
        };
        // Open every archive store that may hold something, so GC can remove what a crash left.
        let mut regions = regions;
        regions.extend(self.config.archive_stores.keys().cloned());
        for r in &self.config.regions {
            if Self::default_archive_dir(&storage.snapshot_root, r).exists() {
                regions.insert(r.clone());
            }
        }
        if let Some(me) = self.me() {
            storage.runtime.spawn(async move {
                for r in regions {
                    if let Err(e) = me.archive_store(&r).await {
                        tracing::warn!(region = r, error = %e, "opening an archive store");
                    }
                }
            });
        }
        for id in jobs {
            self.spawn_tier_job(id);
        }
    }

    fn spawn_tier_job(&self, id: String) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        {
            let mut running = self.jobs.tiering.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = running.get_mut(&id) {
                *again = true;
                return;
            }
            running.insert(id.clone(), false);
        }
        storage.runtime.spawn(async move {
            // One job per snapshot at a time: a call that needs another job while one runs (a restore
            // asked for as the archival finishes) marks it, and the job runs again when this one ends.
            loop {
                if let Err(e) = me.run_tier_job(&id).await {
                    tracing::warn!(snapshot_id = id, error = %e, "tiering job failed");
                    me.fail_tiering(&id, e.message()).await;
                }
                let mut running = me.jobs.tiering.running.lock().unwrap_or_else(|p| p.into_inner());
                if running.get(&id) == Some(&true) {
                    running.insert(id.clone(), false);
                    continue;
                }
                running.remove(&id);
                return;
            }
        });
    }

    async fn run_tier_job(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(s) = self.lock().snapshots.get(id).cloned() else { return Ok(()) };
        match s.tiering.as_ref().map(|t| t.status) {
            Some(TieringStatus::ArchivalInProgress) => self.archive_job(s).await,
            Some(st) if st.restoring() => self.restore_job(s).await,
            _ => Ok(()),
        }
    }

    fn set_tier_progress(&self, id: &str, done: u64, total: u64) {
        if let Some(t) = self.lock().snapshots.get_mut(id).and_then(|s| s.tiering.as_mut()) {
            t.progress = ((done * 99) / total.max(1)).min(99) as u8;
        }
    }

    async fn archive_job(self: &Arc<Self>, s: Snapshot) -> Result<()> {
        let store = self.store(&s.region).await?;
        let archive = self.archive_store(&s.region).await?;
        let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
        let manifest = store.read_manifest(&s.id).await.map_err(|e| internal("reading the manifest", e))?;
        let me = self.clone();
        let id = s.id.clone();
        let progress = move |done: u64, total: u64| me.set_tier_progress(&id, done, total);
        let ix = archive
            .archive_from(&store, &manifest, &codec, &progress)
            .await
            .map_err(|e| internal("writing the archive", e))?;
        fail::fail_point!("archive.before_commit");
        // The archive is durable. Commit once nothing reads the standard copy any more.
        let committed = loop {
            {
                let mut st = self.lock();
                let Some(mut row) = st.snapshots.get(&s.id).cloned() else { break None };
                if row.tiering.as_ref().is_none_or(|t| t.status != TieringStatus::ArchivalInProgress) {
                    break None;
                }
                if !self.snapshot_in_use(&st, &row) {
                    if let Some(t) = row.tiering.as_mut() {
                        t.status = TieringStatus::ArchivalCompleted;
                        t.progress = 100;
                        t.archived = true;
                        t.in_standard = false;
                        t.archival_complete_time = Some(clock::now_millis());
                    }
                    // "Snapshot sharing is automatically disabled after the snapshot is archived."
                    row.create_volume_permissions.clear();
                    self.commit(&mut st, vec![Rec::Snapshot(row.clone())])?;
                    break Some(row);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let Some(row) = committed else {
            // Deleted (or changed) meanwhile: the archive is not wanted.
            let gone = !self.lock().snapshots.get(&s.id).is_some_and(may_have_archive);
            if gone && let Err(e) = archive.delete(&s.id).await {
                tracing::warn!(snapshot_id = s.id, error = %e, "removing an unwanted archive");
            }
            return Ok(());
        };
        self.sync_pending()?;
        fail::fail_point!("archive.before_drop_manifest");
        // Readers of the export end before the standard copy goes.
        self.close_export_blocking(&row.id).await;
        self.drop_standard_copy(&row, &store).await;
        tracing::info!(
            snapshot_id = row.id,
            archive_bytes = ix.pack_bytes(),
            blocks = ix.entries.len(),
            "snapshot archived"
        );
        Ok(())
    }

    /// [`Engine::close_export`] (which waits for the export's connections) off the async executor.
    async fn close_export_blocking(&self, id: &str) {
        let Some(me) = self.me() else { return };
        let id = id.to_string();
        if let Err(e) = tokio::task::spawn_blocking(move || me.close_export(&id)).await {
            tracing::warn!(error = %e, "closing a snapshot export");
        }
    }

    /// The row says the standard copy is gone, durably: remove the manifest (GC frees the blocks).
    async fn drop_standard_copy(&self, s: &Snapshot, store: &BlockStore) {
        if !self.row_changes_durable("dropping an archived snapshot's manifest") {
            return;
        }
        if let Err(e) = self.remove_manifest(&s.region, store, &s.id).await {
            tracing::warn!(snapshot_id = s.id, error = %e, "dropping a manifest (GC retries)");
        }
    }

    async fn restore_job(self: &Arc<Self>, s: Snapshot) -> Result<()> {
        let store = self.store(&s.region).await?;
        let archive = self.archive_store(&s.region).await?;
        let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
        let ix = archive.read_index(&s.id).await.map_err(|e| internal("reading the archive", e))?;
        {
            let me = self.clone();
            let id = s.id.clone();
            let progress = move |done: u64, total: u64| me.set_tier_progress(&id, done, total);
            // Blocks stored but not yet referenced by a manifest: no sweep in between.
            let _blocks_in_flight = self.jobs.gc_gate.read().await;
            archive
                .restore_into(&ix, &store, &codec, None, &progress)
                .await
                .map_err(|e| internal("restoring the archived blocks", e))?;
            self.put_manifest(&s.region, &store, &ix.manifest()).await?;
        }
        fail::fail_point!("archive.restore_before_commit");
        let permanent = {
            let mut st = self.lock();
            let Some(mut row) = st.snapshots.get(&s.id).cloned() else { return Ok(()) };
            let Some(t) = row.tiering.as_mut().filter(|t| t.status.restoring()) else { return Ok(()) };
            let now = clock::now_millis();
            let permanent = t.status == TieringStatus::PermanentRestoreInProgress;
            if permanent {
                t.status = TieringStatus::PermanentRestoreCompleted;
                t.archived = false;
                t.restore_expiry_time = None;
            } else {
                t.status = TieringStatus::TemporaryRestoreCompleted;
                t.restore_expiry_time = Some(now + i64::from(t.restore_days.unwrap_or(1)) * DAY_MS);
            }
            t.in_standard = true;
            t.progress = 100;
            self.commit(&mut st, vec![Rec::Snapshot(row)])?;
            permanent
        };
        self.sync_pending()?;
        if permanent {
            fail::fail_point!("archive.before_remove");
        }
        if permanent && let Err(e) = archive.delete(&s.id).await {
            tracing::warn!(snapshot_id = s.id, error = %e, "removing a permanently restored archive (GC retries)");
        }
        tracing::info!(snapshot_id = s.id, permanent, "snapshot restored from the archive tier");
        Ok(())
    }

    /// A tiering job failed: `*-failed` with the reason; an archival's partial archive goes.
    async fn fail_tiering(&self, id: &str, message: String) {
        let archival = {
            let mut st = self.lock();
            let Some(mut row) = st.snapshots.get(id).cloned() else { return };
            let Some(t) = row.tiering.as_mut() else { return };
            let archival = t.status == TieringStatus::ArchivalInProgress;
            t.status = match t.status {
                TieringStatus::ArchivalInProgress => TieringStatus::ArchivalFailed,
                TieringStatus::TemporaryRestoreInProgress => TieringStatus::TemporaryRestoreFailed,
                TieringStatus::PermanentRestoreInProgress => TieringStatus::PermanentRestoreFailed,
                other => other,
            };
            t.detail = Some(message);
            let region = row.region.clone();
            if let Err(e) = self.commit(&mut st, vec![Rec::Snapshot(row)]) {
                tracing::error!(snapshot_id = id, error = %e, "could not record a failed tiering job");
                return;
            }
            archival.then_some(region)
        };
        if let Err(e) = self.sync_pending() {
            tracing::error!(snapshot_id = id, error = %e, "could not sync a failed tiering job's row");
            return;
        }
        if let Some(region) = archival
            && let Ok(archive) = self.archive_store(&region).await
            && let Err(e) = archive.delete(id).await
        {
            tracing::warn!(snapshot_id = id, error = %e, "removing a failed archive (GC retries)");
        }
    }

    fn spawn_archive_removal(&self, region: String, id: String) {
        let (Some(me), Some(storage)) = (self.me(), &self.storage) else { return };
        if !self.row_changes_durable("removing an archive") {
            return;
        }
        storage.runtime.spawn(async move {
            match me.archive_store(&region).await {
                Ok(a) => {
                    if let Err(e) = a.delete(&id).await {
                        tracing::warn!(snapshot_id = id, error = %e, "removing an archive (GC retries)");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "opening an archive store"),
            }
        });
    }

    /// The snapshot's row is gone (DeleteSnapshot, durably): its archive goes too.
    pub(crate) fn forget_archive(&self, s: &Snapshot) {
        if may_have_archive(s) {
            self.spawn_archive_removal(s.region.clone(), s.id.clone());
        }
    }

    /// Temporary restores whose period ended (engine clock) go back to the archive tier: the row
    /// first (durably), then the standard manifest; GC frees the blocks. A restore still read by a
    /// volume restore, a copy or a pending child waits for the next round.
    pub(crate) async fn expire_restores(&self) {
        let now = clock::now_millis();
        let due: Vec<String> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| restore_expiry_time(s).is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            let expired = {
                let mut st = self.lock();
                let Some(mut row) = st.snapshots.get(&id).cloned() else { continue };
                if restore_expiry_time(&row).is_none_or(|t| t > now) || self.snapshot_in_use(&st, &row) {
                    continue;
                }
                if let Some(t) = row.tiering.as_mut() {
                    t.in_standard = false;
                    t.restore_expiry_time = None;
                    t.restore_days = None;
                }
                if let Err(e) = self.commit(&mut st, vec![Rec::Snapshot(row.clone())]) {
                    tracing::warn!(snapshot_id = id, error = %e, "expiring a temporary restore");
                    continue;
                }
                row
            };
            if let Err(e) = self.sync_pending() {
                tracing::warn!(snapshot_id = id, error = %e, "syncing an expired temporary restore");
                continue;
            }
            self.close_export_blocking(&id).await;
            if let Ok(store) = self.store(&expired.region).await {
                self.drop_standard_copy(&expired, &store).await;
            }
            tracing::info!(snapshot_id = id, "temporary restore ended: back in the archive tier");
        }
    }

    /// [`Engine::gc_archives`] for the archive stores that may hold an orphan ([`ArchiveSweeps`]).
    pub(crate) async fn gc_archive_stores(&self) {
        let opened: Vec<String> = self.jobs.tiering.archives.lock().await.keys().cloned().collect();
        let active: HashSet<String> = {
            let st = self.lock();
            let binned = st.docs.get(crate::recycle_bin::KIND_RBIN_SNAPSHOT).into_iter().flat_map(|m| m.values());
            st.snapshots
                .values()
                .filter(|s| s.tiering.is_some())
                .map(|s| s.region.clone())
                .chain(binned.map(|row| row.region.clone()))
                .collect()
        };
        let regions = self.jobs.tiering.sweeps.lock().unwrap_or_else(|p| p.into_inner()).plan(
            opened,
            active,
            std::time::Instant::now(),
        );
        for region in regions {
            if let Err(e) = self.gc_archives(&region).await {
                tracing::warn!(region, error = %e, "archive store cleanup failed");
            }
        }
    }

    /// GC of a region's archive store: remove the archives no row wants (a crash between a row's
    /// deletion, failed archival or permanent restore and the removal). Listing first and checking
    /// the rows after is safe: an archive a job is writing belongs to an `archival-in-progress` row.
    pub async fn gc_archives(&self, region: &str) -> Result<usize> {
        let Some(archive) = self.jobs.tiering.archives.lock().await.get(region).cloned() else { return Ok(0) };
        let listed = archive.list().await.map_err(|e| internal("listing archives", e))?;
        let orphans: Vec<String> = {
            let st = self.lock();
            // A snapshot in the Recycle Bin keeps its archive until it is purged.
            listed
                .into_iter()
                .filter(|id| {
                    let binned = crate::recycle_bin::binned_snapshot(&st, id);
                    !st.snapshots.get(id).or(binned.as_ref()).is_some_and(may_have_archive)
                })
                .collect()
        };
        for id in &orphans {
            self.prove_ownership("removing an archive no snapshot owns").await?;
            tracing::info!(region, snapshot_id = %id, "removing an archive no snapshot owns");
            archive.delete(id).await.map_err(|e| internal("removing an orphan archive", e))?;
        }
        Ok(orphans.len())
    }

    /// The block list of a parent snapshot that left the standard tier, from its archive; the blocks
    /// of `keep` (by index) are put back into the standard store so the child references only blocks
    /// that are there. Call with the GC gate held shared.
    pub(crate) async fn parent_from_archive(
        &self,
        parent: &Snapshot,
        store: &BlockStore,
        codec: &Codec,
        keep: impl Fn(usize) -> bool,
    ) -> Result<Vec<BlockId>> {
        let archive = self.archive_store(&parent.region).await?;
        let ix: ArchiveIndex = archive.read_index(&parent.id).await.map_err(|e| match e {
            StoreError::ArchiveNotFound(_) => EngineError::Internal(format!(
                "the previous snapshot {} has no standard copy and no archive",
                parent.id
            )),
            e => internal("reading the parent's archive", e),
        })?;
        let blocks = ix.blocks();
        let wanted: HashSet<BlockId> =
            blocks.iter().enumerate().filter(|(i, b)| !b.is_reserved() && keep(*i)).map(|(_, b)| *b).collect();
        archive
            .restore_into(&ix, store, codec, Some(&wanted), &|_, _| {})
            .await
            .map_err(|e| internal("restoring the parent's blocks from its archive", e))?;
        Ok(blocks)
    }

    /// Scrub of the archives of a region's snapshots (full decode and id check).
    pub(crate) async fn verify_archives(&self, region: &str) -> Result<Vec<blocksnap_store::VerifyReport>> {
        let snaps: Vec<Snapshot> = self
            .lock()
            .snapshots
            .values()
            .filter(|s| s.region == region && s.tiering.as_ref().is_some_and(|t| t.archived))
            .cloned()
            .collect();
        if snaps.is_empty() {
            return Ok(Vec::new());
        }
        let archive = self.archive_store(region).await?;
        let mut out = Vec::new();
        for s in snaps {
            let codec = self.codec(s.kms_key_id.as_deref(), s.wrapped_data_key.as_deref())?;
            let report = match archive.verify(&s.id, blocksnap_store::VerifyMode::Full(codec)).await {
                Ok(r) => r,
                Err(StoreError::ArchiveNotFound(_)) => blocksnap_store::VerifyReport {
                    snapshot_id: s.id.clone(),
                    corrupt: vec![(BlockId::UNWRITTEN, "the archive's index is missing".into())],
                    ..Default::default()
                },
                Err(e) => return Err(internal(&format!("verifying the archive of {}", s.id), e)),
            };
            out.push(report);
        }
        Ok(out)
    }

    /// Bytes the archive of a snapshot takes in its archive store (measurements, tests).
    pub async fn archive_stored_bytes(&self, region: &str, snapshot_id: &str) -> Result<u64> {
        let archive = self.archive_store(region).await?;
        archive.stored_bytes(snapshot_id).await.map_err(|e| internal("measuring an archive", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn set(r: &[&str]) -> HashSet<String> {
        r.iter().map(|s| s.to_string()).collect()
    }
    fn opened() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn archive_sweeps_list_every_store_first_then_only_active_regions_until_the_next_full_sweep() {
        let mut sw = ArchiveSweeps::default();
        let t0 = Instant::now();
        // The first tick lists everything opened (what a crash may have left).
        assert_eq!(sw.plan(opened(), set(&[]), t0), opened());
        // Nothing active: nothing listed.
        assert!(sw.plan(opened(), set(&[]), t0 + Duration::from_secs(1)).is_empty());
        // A region with a tiering record is listed, and once more after its last record went
        // (a removal that failed right before the record's deletion is still caught).
        assert_eq!(sw.plan(opened(), set(&["b"]), t0 + Duration::from_secs(2)), vec!["b".to_string()]);
        assert_eq!(sw.plan(opened(), set(&[]), t0 + Duration::from_secs(3)), vec!["b".to_string()]);
        assert!(sw.plan(opened(), set(&[]), t0 + Duration::from_secs(4)).is_empty());
        // A region active but not opened is not listed (nothing to list).
        assert!(sw.plan(opened(), set(&["z"]), t0 + Duration::from_secs(5)).is_empty());
        // The full sweep comes back after its period.
        assert_eq!(sw.plan(opened(), set(&[]), t0 + FULL_ARCHIVE_SWEEP_EVERY), opened());
        assert!(sw.plan(opened(), set(&[]), t0 + FULL_ARCHIVE_SWEEP_EVERY + Duration::from_secs(1)).is_empty());
    }
}
