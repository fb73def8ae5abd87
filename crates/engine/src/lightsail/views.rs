//! What the Get* calls return: typed views built from the records and the engine objects behind
//! them. States are typed; how they are spelled on the wire is the front end's.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::engine::State;
use crate::error::Result;
use crate::model::VolumeState;
use crate::model::{Ctx, Instance as Ec2Instance, InstanceState, Millis, Snapshot, SnapshotState, Tags, Volume};

use super::catalogue::{Blueprint, Bundle, blueprint, bundle};
use super::records::{DiskDoc, DiskSnapshotDoc, InstanceDoc, InstanceSnapshotDoc, KIND_DISK, arn, parse, rows};
use super::{ALL_ZONES, Lightsail, PAGE_SIZE};

#[derive(Debug, Clone)]
pub struct Location {
    pub availability_zone: String,
    pub region_name: String,
}

/// A disk's state, from its volume's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Being created (or filled from a snapshot).
    Pending,
    Available,
    InUse,
    Error,
    /// Being deleted.
    Unknown,
}

impl DiskState {
    pub fn of(v: &Volume) -> DiskState {
        match v.state {
            VolumeState::Creating => DiskState::Pending,
            VolumeState::Available => DiskState::Available,
            VolumeState::InUse => DiskState::InUse,
            VolumeState::Error => DiskState::Error,
            VolumeState::Deleting | VolumeState::Deleted => DiskState::Unknown,
        }
    }
}

/// For error messages (the words Lightsail's documentation uses).
impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskState::Pending => "pending",
            DiskState::Available => "available",
            DiskState::InUse => "in-use",
            DiskState::Error => "error",
            DiskState::Unknown => "unknown",
        })
    }
}

/// An instance snapshot's state, from its disks' snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceSnapshotState {
    Pending,
    Available,
    /// A disk's snapshot failed or is gone.
    Error,
}

/// A disk as GetDisk returns it (also the system disk and attached disks of an instance).
#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub arn: String,
    pub support_code: String,
    pub created_at: Millis,
    pub location: Location,
    pub tags: Tags,
    pub size_in_gb: u32,
    pub is_system_disk: bool,
    pub iops: Option<u32>,
    pub path: Option<String>,
    pub state: DiskState,
    pub attached_to: Option<String>,
    pub is_attached: bool,
    /// The volume behind the disk: its NBD export while attached.
    pub volume_id: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub arn: String,
    pub support_code: String,
    pub created_at: Millis,
    pub location: Location,
    pub tags: Tags,
    pub blueprint: &'static Blueprint,
    pub bundle: &'static Bundle,
    pub private_ip: String,
    pub state: InstanceState,
    /// The system disk first, then attached disks by path.
    pub disks: Vec<Disk>,
    pub instance_id: String,
}

#[derive(Debug, Clone)]
pub struct DiskSnapshot {
    pub name: String,
    pub arn: String,
    pub support_code: String,
    pub created_at: Millis,
    pub location: Location,
    pub tags: Tags,
    pub size_in_gb: u32,
    pub state: SnapshotState,
    /// Percent done (100 once completed).
    pub progress: u8,
    pub from_disk_name: Option<String>,
    pub from_disk_arn: Option<String>,
    pub from_instance_name: Option<String>,
    pub from_instance_arn: Option<String>,
    pub snapshot_id: String,
}

#[derive(Debug, Clone)]
pub struct InstanceSnapshot {
    pub name: String,
    pub arn: String,
    pub support_code: String,
    pub created_at: Millis,
    pub location: Location,
    pub tags: Tags,
    pub state: InstanceSnapshotState,
    /// Percent done: the least of its disks' snapshots.
    pub progress: u8,
    /// The attached (non-system) disks, each with its snapshot's `<account>/<snap-…>` as supportCode.
    pub from_attached_disks: Vec<Disk>,
    pub from_instance_name: String,
    pub from_instance_arn: String,
    pub from_blueprint_id: String,
    pub from_bundle_id: String,
    pub size_in_gb: u32,
    /// Snapshot ids by disk: (disk name or "" for the system disk, snapshot id).
    pub snapshot_ids: Vec<(String, String)>,
}

/// One page of a Get* listing: the items, and the key the next page starts after (the front end
/// makes it a page token).
#[derive(Debug, Clone)]
pub struct LsPage<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

/// A Lightsail resource as listed: pages are keyed by name.
pub(super) trait Named {
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($t:ty),*) => {$(impl Named for $t {
        fn name(&self) -> &str {
            &self.name
        }
    })*};
}
named!(Disk, Instance, DiskSnapshot, InstanceSnapshot);

/// Keep `size` of `items` (which holds at most one more); name the last kept when there are more.
pub(super) fn page<T>(mut items: Vec<T>, size: usize, key: impl Fn(&T) -> String) -> LsPage<T> {
    let next_after = if items.len() > size {
        items.truncate(size);
        items.last().map(&key)
    } else {
        None
    };
    LsPage { items, next_after }
}

impl Lightsail<'_> {
    /// One page of a kind's records of the caller, in name order after `after`, each shown through
    /// `view` (`None` hides it); the Get*s calls.
    pub(super) fn list_page<D: DeserializeOwned, V: Named>(
        &self,
        ctx: &Ctx,
        kind: &str,
        after: Option<&str>,
        view: impl Fn(&State, &D) -> Option<V>,
    ) -> Result<LsPage<V>> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let items: Vec<V> = rows(&st, kind, ctx, after)
            .into_iter()
            .filter_map(|r| parse::<D>(r).ok())
            .filter_map(|d| view(&st, &d))
            .take(PAGE_SIZE + 1)
            .collect();
        Ok(page(items, PAGE_SIZE, |v| v.name().to_string()))
    }

    pub(super) fn disk_view(
        &self,
        st: &State,
        ctx: &Ctx,
        d: &DiskDoc,
        names: &HashMap<String, String>,
    ) -> Option<Disk> {
        let v = st.volumes.get(&d.volume_id)?;
        let att = v.attachments.first();
        Some(Disk {
            name: d.name.clone(),
            arn: arn(ctx, "Disk", &d.uuid),
            support_code: format!("{}/{}", ctx.account, v.id),
            created_at: d.created_at,
            location: Location { availability_zone: d.zone.clone(), region_name: ctx.region.clone() },
            tags: d.tags.clone(),
            size_in_gb: v.size_gib,
            is_system_disk: false,
            iops: v.iops,
            path: att.map(|a| a.device.clone()),
            state: DiskState::of(v),
            attached_to: att.and_then(|a| names.get(&a.instance_id).cloned()),
            is_attached: att.is_some(),
            volume_id: v.id.clone(),
        })
    }

    /// The instance's system disk volume.
    pub(super) fn system_volume<'s>(&self, st: &'s State, inst: &Ec2Instance) -> Option<&'s Volume> {
        st.volumes
            .values()
            .find(|v| v.attachments.iter().any(|a| a.instance_id == inst.id && a.device == inst.root_device_name))
    }

    pub(super) fn instance_view(&self, st: &State, ctx: &Ctx, d: &InstanceDoc) -> Option<Instance> {
        let inst = st.instances.get(&d.instance_id)?;
        let bp = blueprint(&d.blueprint_id)?;
        let bundle = bundle(&d.bundle_id)?;
        let location = Location { availability_zone: d.zone.clone(), region_name: ctx.region.clone() };
        let mut disks = Vec::new();
        if let Some(v) = self.system_volume(st, inst) {
            disks.push(Disk {
                name: format!("{}-system-disk", d.name),
                arn: String::new(),
                support_code: format!("{}/{}", ctx.account, v.id),
                created_at: d.created_at,
                location: location.clone(),
                tags: Tags::new(),
                size_in_gb: v.size_gib,
                is_system_disk: true,
                iops: v.iops,
                path: Some(inst.root_device_name.clone()),
                state: DiskState::of(v),
                attached_to: Some(d.name.clone()),
                is_attached: true,
                volume_id: v.id.clone(),
            });
        }
        let names: HashMap<String, String> = [(inst.id.clone(), d.name.clone())].into_iter().collect();
        let mut attached: Vec<Disk> = rows(st, KIND_DISK, ctx, None)
            .into_iter()
            .filter_map(|r| parse::<DiskDoc>(r).ok())
            .filter(|dd| {
                st.volumes.get(&dd.volume_id).is_some_and(|v| v.attachments.iter().any(|a| a.instance_id == inst.id))
            })
            .filter_map(|dd| self.disk_view(st, ctx, &dd, &names))
            .collect();
        attached.sort_by(|a, b| a.path.cmp(&b.path));
        disks.extend(attached);
        Some(Instance {
            name: d.name.clone(),
            arn: arn(ctx, "Instance", &d.uuid),
            support_code: format!("{}/{}", ctx.account, inst.id),
            created_at: d.created_at,
            location,
            tags: d.tags.clone(),
            blueprint: bp,
            bundle,
            private_ip: inst.private_ip.clone(),
            state: inst.state,
            disks,
            instance_id: inst.id.clone(),
        })
    }

    pub(super) fn disk_snapshot_view(&self, st: &State, ctx: &Ctx, d: &DiskSnapshotDoc) -> Option<DiskSnapshot> {
        let s = st.snapshots.get(&d.snapshot_id)?;
        Some(DiskSnapshot {
            name: d.name.clone(),
            arn: arn(ctx, "DiskSnapshot", &d.uuid),
            support_code: format!("{}/{}", ctx.account, s.id),
            created_at: d.created_at,
            location: Location { availability_zone: ALL_ZONES.into(), region_name: ctx.region.clone() },
            tags: d.tags.clone(),
            size_in_gb: d.size_gb,
            state: s.state,
            progress: s.percent_done(),
            from_disk_name: d.from_disk_name.clone(),
            from_disk_arn: d.from_disk_arn.clone(),
            from_instance_name: d.from_instance_name.clone(),
            from_instance_arn: d.from_instance_arn.clone(),
            snapshot_id: s.id.clone(),
        })
    }

    pub(super) fn instance_snapshot_view(
        &self,
        st: &State,
        ctx: &Ctx,
        d: &InstanceSnapshotDoc,
    ) -> Option<InstanceSnapshot> {
        let snaps: Vec<Option<&Snapshot>> = d.disks.iter().map(|x| st.snapshots.get(&x.snapshot_id)).collect();
        if snaps.iter().all(Option::is_none) {
            return None;
        }
        let state = if snaps.iter().any(|s| s.is_none_or(|s| s.state == SnapshotState::Error)) {
            InstanceSnapshotState::Error
        } else if snaps.iter().flatten().any(|s| s.state == SnapshotState::Pending) {
            InstanceSnapshotState::Pending
        } else {
            InstanceSnapshotState::Available
        };
        let progress = snaps.iter().flatten().map(|s| s.percent_done()).min().unwrap_or(0);
        let system = d.disks.iter().find(|x| x.is_system);
        let location = Location { availability_zone: ALL_ZONES.into(), region_name: ctx.region.clone() };
        let from_attached_disks = d
            .disks
            .iter()
            .filter(|x| !x.is_system)
            .map(|x| Disk {
                name: x.disk_name.clone().unwrap_or_default(),
                arn: x.disk_arn.clone().unwrap_or_default(),
                support_code: format!("{}/{}", ctx.account, x.snapshot_id),
                created_at: d.created_at,
                location: Location { availability_zone: d.zone.clone(), region_name: ctx.region.clone() },
                tags: Tags::new(),
                size_in_gb: x.size_gb,
                is_system_disk: false,
                iops: x.iops,
                path: Some(x.path.clone()),
                state: DiskState::InUse,
                attached_to: Some(d.from_instance_name.clone()),
                is_attached: true,
                volume_id: x.volume_id.clone(),
            })
            .collect();
        Some(InstanceSnapshot {
            name: d.name.clone(),
            arn: arn(ctx, "InstanceSnapshot", &d.uuid),
            support_code: format!(
                "{}/{}",
                ctx.account,
                system.or(d.disks.first()).map(|x| x.snapshot_id.as_str()).unwrap_or_default()
            ),
            created_at: d.created_at,
            location,
            tags: d.tags.clone(),
            state,
            progress,
            from_attached_disks,
            from_instance_name: d.from_instance_name.clone(),
            from_instance_arn: d.from_instance_arn.clone(),
            from_blueprint_id: d.from_blueprint_id.clone(),
            from_bundle_id: d.from_bundle_id.clone(),
            size_in_gb: system.map(|x| x.size_gb).unwrap_or(0),
            snapshot_ids: d
                .disks
                .iter()
                .map(|x| (x.disk_name.clone().unwrap_or_default(), x.snapshot_id.clone()))
                .collect(),
        })
    }
}
