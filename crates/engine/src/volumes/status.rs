//! DescribeVolumeStatus: what each volume's state says about its health.
//!
//! - `error` (a restore that failed), or placed on a cluster node that does not serve it now, or lost
//!   (`placement.rs`): `impaired`, `io-enabled` `failed`.
//! - `creating`: `insufficient-data` (no I/O yet).
//! - otherwise `ok`, `io-enabled` `passed`, `io-performance` `not-applicable` (no provisioned
//!   performance to fall short of).
//!
//! A volume made from a snapshot also reports its initialization (AWS's "volume initialization":
//! here the lazy hydration): `initialization-state` `initializing` with the share of blocks
//! hydrated so far while blocks are still fetched from the snapshot, then `completed` (100).

use crate::describe::{self, ListQuery, Page};
use crate::engine::Engine;
use crate::error::Result;
use crate::filter::Filterable;
use crate::model::*;

/// One volume's status, as DescribeVolumeStatus answers it.
#[derive(Debug, Clone)]
pub struct VolumeStatus {
    pub volume_id: String,
    pub availability_zone: String,
    /// `ok`, `impaired`, `insufficient-data`.
    pub status: &'static str,
    /// `(name, status)`: `io-enabled`, `io-performance`, `initialization-state`.
    pub details: Vec<(&'static str, &'static str)>,
    /// Volumes from snapshots: the initialization's progress (0–100).
    pub initialization_progress: Option<u8>,
    tags: Tags,
}

impl VolumeStatus {
    fn of(v: &Volume, here: bool) -> VolumeStatus {
        let (status, mut details): (&'static str, Vec<(&'static str, &'static str)>) = match v.state {
            VolumeState::Error => ("impaired", vec![("io-enabled", "failed"), ("io-performance", "not-applicable")]),
            // On a node that does not serve it now (volumes/placement.rs): no I/O, as an EBS
            // volume on an impaired server.
            _ if !here => ("impaired", vec![("io-enabled", "failed"), ("io-performance", "not-applicable")]),
            VolumeState::Creating => {
                ("insufficient-data", vec![("io-enabled", "insufficient-data"), ("io-performance", "not-applicable")])
            }
            _ => ("ok", vec![("io-enabled", "passed"), ("io-performance", "not-applicable")]),
        };
        let initialization_progress = v.snapshot_id.as_ref().map(|_| match (&v.restore, v.state) {
            (Some(r), _) if r.total > 0 => (r.done.min(r.total) * 100 / r.total).min(99) as u8,
            (Some(_), _) | (None, VolumeState::Creating) => 0,
            (None, _) => 100,
        });
        if let Some(p) = initialization_progress
            && v.state != VolumeState::Error
        {
            details.push(("initialization-state", if p < 100 { "initializing" } else { "completed" }));
        }
        VolumeStatus {
            volume_id: v.id.clone(),
            availability_zone: v.availability_zone.clone(),
            status,
            details,
            initialization_progress: if v.state == VolumeState::Error { None } else { initialization_progress },
            tags: v.tags.clone(),
        }
    }
}

impl Filterable for VolumeStatus {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "availability-zone" => vec![self.availability_zone.clone()],
            "volume-status.status" => vec![self.status.to_string()],
            "volume-status.details-name" => self.details.iter().map(|d| d.0.to_string()).collect(),
            "volume-status.details-status" => self.details.iter().map(|d| d.1.to_string()).collect(),
            // No events and no actions are ever scheduled.
            n if n.starts_with("event.") || n.starts_with("action.") => vec![],
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

const STATUS_FILTERS: &[&str] = &[
    "availability-zone",
    "volume-status.status",
    "volume-status.details-name",
    "volume-status.details-status",
    "event.description",
    "event.event-id",
    "event.event-type",
    "event.not-after",
    "event.not-before",
    "action.code",
    "action.description",
    "action.event-id",
];

impl Engine {
    /// DescribeVolumeStatus over the caller's volumes (ids must all exist).
    pub fn describe_volume_status(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<VolumeStatus>> {
        let st = self.lock();
        describe::require_all(
            &q.ids,
            |id| st.volumes.get(id).is_some_and(|v| v.account == ctx.account && v.region == ctx.region),
            "vol",
            "InvalidVolume.NotFound",
            "InvalidVolumeID.Malformed",
            "volume",
        )?;
        let items: Vec<VolumeStatus> = st
            .volumes
            .values()
            .filter(|v| v.account == ctx.account && v.region == ctx.region)
            .map(|v| VolumeStatus::of(v, self.volume_here(v)))
            .collect();
        drop(st);
        describe::run(q, STATUS_FILTERS, describe::VOLUME_STATUS, items.iter(), |s| &s.volume_id)
    }
}
