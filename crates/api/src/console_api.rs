//! What AWS has no call for, over JSON 1.1 (`X-Amz-Target: BlocksnapStore_20261130.<Operation>`,
//! SigV4 scoped to the service `blocksnap`), for the operator CLI and the web console:
//!
//! - `DescribeLineage` `{VolumeId?, MaxResults?, NextToken?}`: the caller's snapshots with the one
//!   each is incremental against, the bytes it added and where a copy came from.
//! - `GetStoreStats` `{Regions?}`: per region, what the store holds and saves and how its GC went
//!   (the root account); the caller's own share (any other account). Answer:
//!   `{Scope: "store"|"account", ComputedAt, Regions: [{Region, Snapshots, SnapshotBytesAdded,`
//!   root only: `Manifests, LogicalBytes, StoredBytes, Chunks, AsOf, ReductionRatio, Counting?,`
//!   `History: [{Time, Manifests, LogicalBytes, StoredBytes, Chunks}], Gc?: {…}}]}`.
//!   The store figures are the engine's running totals (no listing per call): counted from a
//!   listing at `AsOf` (start-up, or the last GC sweep) and kept current since by this server's
//!   own writes and removals. `Counting: true` (and no figures) while a region's first count
//!   after start runs. `History`: samples of those figures, oldest first, one per
//!   `BLOCKSNAP_USAGE_SAMPLE_SECS` (default 300) and one per GC sweep, at most 288, in memory:
//!   since the server started. Times are epoch seconds.

use blocksnap_engine::lineage::{DescribeLineage, LineageEntry};
use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, GcStatus, RegionUsage, Result, Sample, StoreUsage, UsageScope};
use serde_json::{Map, Value, json};

use crate::json::{Body, epoch};

/// The `X-Amz-Target` prefix and the SigV4 service its calls must be scoped to.
pub const TARGET: &str = "BlocksnapStore_20261130";
pub const SERVICE: &str = "blocksnap";

/// Runs on a blocking thread (`run_blocking`): both calls take the engine lock, and the store walk
/// reads the disk; the walk's async parts run on the current runtime from there.
pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    match op {
        "DescribeLineage" => {
            let req = DescribeLineage {
                volume_id: body.str("VolumeId")?.filter(|s| !s.is_empty()),
                max_results: body.int("MaxResults")?,
                next_token: body.str("NextToken")?.filter(|s| !s.is_empty()),
            };
            let page = engine.describe_lineage(ctx, &req)?;
            let mut out = Map::new();
            out.insert("Snapshots".into(), Value::Array(page.snapshots.iter().map(lineage_entry).collect()));
            if let Some(t) = page.next_token {
                out.insert("NextToken".into(), Value::String(t));
            }
            Ok(Value::Object(out))
        }
        "GetStoreStats" => {
            let regions = body.str_list("Regions")?;
            let usage = tokio::runtime::Handle::current().block_on(engine.store_usage(ctx, &regions))?;
            Ok(store_usage(&usage))
        }
        other => Err(EngineError::client(
            "UnknownOperationException",
            format!("The operation '{other}' is not an operation of {TARGET}."),
        )),
    }
}

fn lineage_entry(e: &LineageEntry) -> Value {
    let mut o = Map::new();
    o.insert("SnapshotId".into(), json!(e.snapshot_id));
    if let Some(p) = &e.parent_id {
        o.insert("ParentSnapshotId".into(), json!(p));
    }
    o.insert("VolumeId".into(), json!(e.volume_id));
    o.insert("Region".into(), json!(e.region));
    o.insert("State".into(), json!(e.state.as_str()));
    if let Some(m) = &e.state_message {
        o.insert("StateMessage".into(), json!(m));
    }
    o.insert("Progress".into(), json!(e.progress));
    o.insert("StartTime".into(), epoch(e.start_time));
    if let Some(t) = e.completion_time {
        o.insert("CompletionTime".into(), epoch(t));
    }
    o.insert("VolumeSize".into(), json!(e.volume_size_gib));
    o.insert("StoredBytesAdded".into(), json!(e.stored_bytes));
    if let Some(c) = &e.copy_source {
        o.insert("CopySource".into(), json!({ "Region": c.region, "SnapshotId": c.snapshot_id }));
    }
    o.insert("Description".into(), json!(e.description));
    o.insert("Encrypted".into(), json!(e.encrypted));
    o.insert("Lightsail".into(), json!(e.lightsail));
    Value::Object(o)
}

fn gc_status(g: &GcStatus) -> Value {
    let mut o = Map::new();
    o.insert("LastRun".into(), epoch(g.last_run));
    o.insert("DurationMs".into(), json!(g.duration_ms));
    o.insert("Status".into(), json!(if g.error.is_none() { "completed" } else { "failed" }));
    if let Some(e) = &g.error {
        o.insert("Error".into(), json!(e));
    }
    o.insert("ChunksRemoved".into(), json!(g.chunks_removed));
    o.insert("BytesRemoved".into(), json!(g.bytes_removed));
    o.insert("KeptYoung".into(), json!(g.kept_young));
    Value::Object(o)
}

fn sample(s: &Sample) -> Value {
    json!({
        "Time": epoch(s.at),
        "Manifests": s.figures.manifests,
        "LogicalBytes": s.figures.logical_bytes,
        "StoredBytes": s.figures.stored_bytes,
        "Chunks": s.figures.chunks,
    })
}

fn region_usage(r: &RegionUsage) -> Value {
    let mut o = Map::new();
    o.insert("Region".into(), json!(r.region));
    o.insert("Snapshots".into(), json!(r.snapshots));
    o.insert("SnapshotBytesAdded".into(), json!(r.snapshot_bytes_added));
    if let Some(s) = &r.store {
        o.insert("Manifests".into(), json!(s.manifests));
        o.insert("LogicalBytes".into(), json!(s.logical_bytes));
        o.insert("StoredBytes".into(), json!(s.stored_bytes));
        o.insert("Chunks".into(), json!(s.chunks));
        o.insert("AsOf".into(), epoch(s.counted_at));
    }
    if r.counting {
        o.insert("Counting".into(), json!(true));
    }
    if r.store.is_some() || r.counting {
        o.insert("History".into(), Value::Array(r.history.iter().map(sample).collect()));
    }
    if let Some(ratio) = r.reduction_ratio() {
        o.insert("ReductionRatio".into(), json!(ratio));
    }
    if let Some(g) = &r.gc {
        o.insert("Gc".into(), gc_status(g));
    }
    Value::Object(o)
}

fn store_usage(u: &StoreUsage) -> Value {
    json!({
        "Scope": match u.scope { UsageScope::Store => "store", UsageScope::Account => "account" },
        "ComputedAt": epoch(u.computed_at),
        "Regions": u.regions.iter().map(region_usage).collect::<Vec<_>>(),
    })
}
