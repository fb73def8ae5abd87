//! The archive tier: ModifySnapshotTier, RestoreSnapshotTier, DescribeSnapshotTierStatus.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, ListQuery, Result, format_time};

use super::params::Params;
use super::xml::Xml;

pub fn modify_snapshot_tier(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let id = p.required("SnapshotId")?;
    let started = e.modify_snapshot_tier(ctx, &id, p.str("StorageTier").as_deref(), p.dry_run()?)?;
    x.leaf("snapshotId", &id).leaf("tieringStartTime", format_time(started));
    Ok(())
}

pub fn restore_snapshot_tier(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let id = p.required("SnapshotId")?;
    let r =
        e.restore_snapshot_tier(ctx, &id, p.int("TemporaryRestoreDays")?, p.bool("PermanentRestore")?, p.dry_run()?)?;
    x.leaf("snapshotId", &r.snapshot_id)
        .leaf("restoreStartTime", format_time(r.restore_start_time))
        .opt("restoreDuration", r.restore_duration)
        .leaf("isPermanentRestore", r.is_permanent_restore);
    Ok(())
}

pub fn describe_snapshot_tier_status(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let query = ListQuery {
        ids: Vec::new(),
        filters: p.filters()?,
        max_results: p.int("MaxResults")?,
        next_token: p.str("NextToken").filter(|t| !t.is_empty()),
    };
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let page = e.describe_snapshot_tier_status(ctx, &query)?;
    x.set("snapshotTierStatusSet", &page.items, |x, s| {
        x.leaf("snapshotId", &s.snapshot_id)
            .leaf("volumeId", &s.volume_id)
            .leaf("status", s.state.as_str())
            .leaf("ownerId", &s.owner_id);
        x.tag_set(&s.tags);
        x.leaf("storageTier", s.storage_tier);
        if let Some(t) = &s.tiering {
            x.leaf("lastTieringStartTime", format_time(t.start_time))
                .leaf("lastTieringProgress", t.progress)
                .leaf("lastTieringOperationStatus", t.status.as_str())
                .opt("lastTieringOperationStatusDetail", t.detail.as_deref())
                .opt("archivalCompleteTime", t.archival_complete_time.map(format_time));
        }
        x.opt("restoreExpiryTime", s.restore_expiry_time.map(format_time));
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}
