//! The lineage of a caller's snapshots (`DescribeLineage`, which AWS has no call for): every
//! snapshot with the one it is incremental against (`parent`), the bytes it added to the store and,
//! for a copy, the snapshot (region/id) it was copied from. Across the regions this process serves,
//! so a copy into another region sits under its source. Only the caller's own snapshots (EC2 and
//! its Lightsail ones), never another account's, shared or not.
//!
//! Listed in (start time, id) order, so a parent comes before its children and pages are stable;
//! the page token is the one codec's (`bsnt1`) over the last entry's sort key.

use crate::credentials::owns;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Millis, Snapshot, SnapshotState};
use crate::page_token;

/// Entries per page at most (and by default).
pub const MAX_LINEAGE_RESULTS: usize = 1000;

/// A `DescribeLineage` request.
#[derive(Debug, Clone, Default)]
pub struct DescribeLineage {
    /// Only this volume's snapshots, and the copies made from them (transitively).
    pub volume_id: Option<String>,
    /// 1..=[`MAX_LINEAGE_RESULTS`]; default the maximum.
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// Where a copy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySourceRef {
    pub region: String,
    pub snapshot_id: String,
}

/// One snapshot in a lineage.
#[derive(Debug, Clone)]
pub struct LineageEntry {
    pub snapshot_id: String,
    /// The snapshot this one is incremental against, if any (same region).
    pub parent_id: Option<String>,
    pub volume_id: String,
    pub region: String,
    pub state: SnapshotState,
    pub state_message: Option<String>,
    /// 0..=100.
    pub progress: u8,
    pub start_time: Millis,
    pub completion_time: Option<Millis>,
    pub volume_size_gib: u32,
    /// Bytes this snapshot added to the store (what it costs beyond its parent).
    pub stored_bytes: u64,
    pub copy_source: Option<CopySourceRef>,
    pub description: String,
    pub encrypted: bool,
    /// A Lightsail disk or instance snapshot (the same object seen through Lightsail).
    pub lightsail: bool,
}

/// A page of a lineage.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    pub snapshots: Vec<LineageEntry>,
    pub next_token: Option<String>,
}

fn sort_key(s: &Snapshot) -> String {
    // Start times are non-negative epoch milliseconds: zero-padded, they sort as numbers.
    format!("{:020}/{}", s.start_time.max(0), s.id)
}

fn entry(s: &Snapshot) -> LineageEntry {
    LineageEntry {
        snapshot_id: s.id.clone(),
        parent_id: s.parent.clone(),
        volume_id: s.volume_id.clone(),
        region: s.region.clone(),
        state: s.state,
        state_message: s.state_message.clone(),
        progress: s.percent_done(),
        start_time: s.start_time,
        completion_time: s.completion_time,
        volume_size_gib: s.volume_size_gib,
        stored_bytes: s.stored_bytes,
        copy_source: s.source_snapshot.as_deref().and_then(|src| {
            let (region, id) = src.split_once('/')?;
            Some(CopySourceRef { region: region.to_string(), snapshot_id: id.to_string() })
        }),
        description: s.description.clone(),
        encrypted: s.encrypted,
        lightsail: s.account != s.account.trim_end_matches(":lightsail"),
    }
}

impl Engine {
    /// A page of the caller's snapshot lineage (see the module docs).
    pub fn describe_lineage(&self, ctx: &Ctx, req: &DescribeLineage) -> Result<Lineage> {
        let limit = match req.max_results {
            None => MAX_LINEAGE_RESULTS,
            Some(n) if (1..=MAX_LINEAGE_RESULTS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(EngineError::client(
                    "ValidationException",
                    format!("MaxResults {n} is out of range: give 1 to {MAX_LINEAGE_RESULTS}."),
                ));
            }
        };
        let after = match &req.next_token {
            None => None,
            Some(t) => Some(page_token::decode(page_token::EC2, t).ok_or_else(|| {
                EngineError::client("ValidationException", "NextToken is not a token this call returned.")
            })?),
        };
        let st = self.lock();
        let mut mine: Vec<&Snapshot> = st.snapshots.values().filter(|s| owns(&ctx.account, &s.account)).collect();
        if let Some(vol) = &req.volume_id {
            // The volume's own snapshots, then every copy whose source is already in (a copy of a
            // copy too): a fixed point, bounded by the number of the caller's snapshots.
            let mut ids: std::collections::HashSet<&str> =
                mine.iter().filter(|s| &s.volume_id == vol).map(|s| s.id.as_str()).collect();
            loop {
                let before = ids.len();
                for s in &mine {
                    if let Some(src) = s.source_snapshot.as_deref().and_then(|x| x.split_once('/'))
                        && ids.contains(src.1)
                    {
                        ids.insert(s.id.as_str());
                    }
                }
                if ids.len() == before {
                    break;
                }
            }
            mine.retain(|s| ids.contains(s.id.as_str()));
        }
        let mut keyed: Vec<(String, &Snapshot)> = mine.into_iter().map(|s| (sort_key(s), s)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut page: Vec<&(String, &Snapshot)> =
            keyed.iter().filter(|(k, _)| after.as_ref().is_none_or(|a| k > a)).take(limit + 1).collect();
        let next_token = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|(k, _)| page_token::encode(page_token::EC2, k))
        } else {
            None
        };
        Ok(Lineage { snapshots: page.into_iter().map(|(_, s)| entry(s)).collect(), next_token })
    }
}
