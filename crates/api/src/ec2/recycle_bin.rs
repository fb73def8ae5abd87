//! The EC2 side of the Recycle Bin: ListSnapshotsInRecycleBin and RestoreSnapshotFromRecycleBin.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, ListQuery, Result, format_time};

use super::params::Params;
use super::xml::Xml;

pub fn list_snapshots_in_recycle_bin(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = ListQuery {
        ids: p.list("SnapshotId")?,
        filters: Vec::new(),
        max_results: p.int("MaxResults")?,
        next_token: p.str("NextToken").filter(|t| !t.is_empty()),
    };
    let page = e.list_snapshots_in_recycle_bin(ctx, &q, p.dry_run()?)?;
    x.set("snapshotSet", &page.items, |x, b| {
        x.leaf("snapshotId", &b.snapshot.id)
            .leaf("recycleBinEnterTime", format_time(b.entered))
            .leaf("recycleBinExitTime", format_time(b.exit))
            .leaf("description", &b.snapshot.description)
            .leaf("volumeId", &b.snapshot.volume_id);
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}

pub fn restore_snapshot_from_recycle_bin(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let s = e.restore_snapshot_from_recycle_bin(ctx, &p.required("SnapshotId")?, p.dry_run()?)?;
    x.leaf("snapshotId", &s.id)
        .leaf("description", &s.description)
        .leaf("encrypted", s.encrypted)
        .leaf("ownerId", &s.account)
        .leaf("progress", "100%")
        .leaf("startTime", format_time(s.start_time))
        .leaf("status", s.state.as_str())
        .leaf("volumeId", &s.volume_id)
        .leaf("volumeSize", s.volume_size_gib);
    if s.encrypted {
        x.leaf("sseType", "sse-ebs");
    }
    Ok(())
}
