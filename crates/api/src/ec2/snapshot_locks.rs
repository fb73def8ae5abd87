//! LockSnapshot, UnlockSnapshot and DescribeLockedSnapshots.

use blocksnap_engine::model::{Ctx, Millis};
use blocksnap_engine::{Engine, EngineError, LockSnapshot, LockedSnapshotInfo, Result, format_time};

use super::params::Params;
use super::xml::Xml;

/// An EC2 `MillisecondDateTime` parameter (ISO 8601, as the SDKs and the CLI send it).
pub fn timestamp(p: &Params, key: &str) -> Result<Option<Millis>> {
    let Some(v) = p.str(key) else { return Ok(None) };
    let t = time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339).map_err(|_| {
        EngineError::invalid_value(format!(
            "Value ({v}) for parameter {key} is invalid: expected YYYY-MM-DDThh:mm:ss.sssZ"
        ))
    })?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as Millis))
}

fn render_lock(x: &mut Xml, l: &LockedSnapshotInfo) {
    x.leaf("snapshotId", &l.snapshot_id)
        .leaf("lockState", l.lock_state)
        .opt("lockDuration", l.lock_duration_days)
        .opt("coolOffPeriod", l.cool_off_hours)
        .opt("coolOffPeriodExpiresOn", l.cool_off_expires_on.map(format_time))
        .leaf("lockCreatedOn", format_time(l.lock_created_on))
        .opt("lockDurationStartTime", l.lock_duration_start_time.map(format_time))
        .opt("lockExpiresOn", l.lock_expires_on.map(format_time));
}

pub fn lock_snapshot(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let l = e.lock_snapshot(
        ctx,
        LockSnapshot {
            snapshot_id: p.required("SnapshotId")?,
            mode: p.required("LockMode")?,
            cool_off_hours: p.int("CoolOffPeriod")?,
            lock_duration_days: p.int("LockDuration")?,
            expiration_date: timestamp(p, "ExpirationDate")?,
            dry_run: p.dry_run()?,
        },
    )?;
    render_lock(x, &l);
    Ok(())
}

pub fn unlock_snapshot(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let id = p.required("SnapshotId")?;
    e.unlock_snapshot(ctx, &id, p.dry_run()?)?;
    x.leaf("snapshotId", id);
    Ok(())
}

pub fn describe_locked_snapshots(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("SnapshotId")?;
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let page = e.describe_locked_snapshots(ctx, &q)?;
    x.set("snapshotSet", &page.items, |x, l| {
        x.leaf("ownerId", &l.owner_id);
        render_lock(x, l);
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}
