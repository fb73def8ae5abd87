//! Disk snapshots (one disk, or an instance's system disk) and instance snapshots (the
//! multi-volume cut of all of an instance's disks).

use std::collections::HashMap;

use crate::engine::Rec;
use crate::error::Result;
use crate::model::{Ctx, SnapshotState, Tag, VolumeState};
use crate::snapshots::{CreateSnapshot, CreateSnapshots};

use super::operations::{Operation, OperationType, Ops, ResourceType, Track};
use super::records::{
    DiskDoc, DiskSnapshotDoc, InstanceSnapshotDoc, KIND_DISK, KIND_DISK_SNAPSHOT, KIND_INSTANCE_SNAPSHOT, SnapDisk,
    arn, parse, put, row_id, rows,
};
use super::tags::check_tags;
use super::validate::check_name;
use super::views::{DiskSnapshot, DiskState, InstanceSnapshot, LsPage};
use super::{ALL_ZONES, Lightsail, failure, invalid, lightsail_principal, not_found};

#[derive(Debug, Clone, Default)]
pub struct CreateDiskSnapshot {
    pub disk_snapshot_name: String,
    pub disk_name: Option<String>,
    pub instance_name: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateInstanceSnapshot {
    pub instance_name: String,
    pub instance_snapshot_name: String,
    pub tags: Vec<Tag>,
}

impl Lightsail<'_> {
    pub fn create_disk_snapshot(&self, ctx: &Ctx, req: CreateDiskSnapshot) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        check_name("diskSnapshotName", &req.disk_snapshot_name)?;
        match (&req.disk_name, &req.instance_name) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "diskName and instanceName are mutually exclusive: give diskName to snapshot a block storage disk, or instanceName to snapshot an instance's system disk, not both.",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "One of diskName or instanceName is required: diskName snapshots a block storage disk, instanceName an instance's system disk.",
                ));
            }
            (Some(n), None) => check_name("diskName", n)?,
            (None, Some(n)) => check_name("instanceName", n)?,
        }
        let tags = check_tags(&req.tags)?;
        let name = req.disk_snapshot_name.clone();
        let _g = self.serialise(ctx)?;
        // (volume, source name, source type, source zone, from disk (name, arn), from instance (name, arn))
        let (volume_id, source, rtype, zone, from_disk, from_instance) = {
            let st = self.engine.lock();
            if self.disk_snapshot_doc(&st, ctx, &name)?.is_some() {
                return Err(invalid(format!("Some names are already in use: {name}")));
            }
            let (vid, source, rtype, zone, from_disk, from_instance) = match (&req.disk_name, &req.instance_name) {
                (Some(dn), _) => {
                    let d = self.need_disk(&st, ctx, dn)?;
                    let a = arn(ctx, "Disk", &d.uuid);
                    (d.volume_id, dn.clone(), ResourceType::Disk, d.zone, Some((dn.clone(), a)), None)
                }
                (None, Some(iname)) => {
                    let i = self.need_instance(&st, ctx, iname)?;
                    let inst = st
                        .instances
                        .get(&i.instance_id)
                        .ok_or_else(|| not_found(format!("The Instance does not exist: {iname}")))?;
                    let sys = self.system_volume(&st, inst).ok_or_else(|| {
                        failure(format!("The instance {iname} has no system disk attached to snapshot."))
                    })?;
                    let a = arn(ctx, "Instance", &i.uuid);
                    (sys.id.clone(), iname.clone(), ResourceType::Instance, i.zone, None, Some((iname.clone(), a)))
                }
                (None, None) => return Err(invalid("One of diskName or instanceName is required.")),
            };
            if let Some(v) = st.volumes.get(&vid)
                && !matches!(v.state, VolumeState::Available | VolumeState::InUse)
            {
                return Err(failure(format!(
                    "The {} {source} is {}: it can be snapshotted once it is available.",
                    if rtype == ResourceType::Disk { "disk" } else { "system disk of instance" },
                    DiskState::of(v)
                )));
            }
            (vid, source, rtype, zone, from_disk, from_instance)
        };
        let sh = lightsail_principal(ctx);
        let snap = self.engine.create_snapshot(
            &sh,
            CreateSnapshot {
                volume_id: volume_id.clone(),
                description: Some(format!("Lightsail disk snapshot {name}")),
                ..Default::default()
            },
        )?;
        let mut ops = Ops::new(ctx);
        let doc = DiskSnapshotDoc {
            name: name.clone(),
            uuid: crate::ids::new_uuid(),
            snapshot_id: snap.id.clone(),
            created_at: ops.now,
            size_gb: snap.volume_size_gib,
            tags,
            from_disk_name: from_disk.as_ref().map(|d| d.0.clone()),
            from_disk_arn: from_disk.map(|d| d.1),
            from_instance_name: from_instance.as_ref().map(|d| d.0.clone()),
            from_instance_arn: from_instance.map(|d| d.1),
        };
        let track = || Track::Snapshots(vec![snap.id.clone()]);
        ops.add(
            &name,
            ResourceType::DiskSnapshot,
            ALL_ZONES,
            OperationType::CreateDiskSnapshot,
            Some(&source),
            track(),
        );
        ops.add(&source, rtype, &zone, OperationType::CreateDiskSnapshot, Some(&name), track());
        self.commit_ops(vec![put(KIND_DISK_SNAPSHOT, row_id(ctx, &name), ctx, &doc)?], &ops, || {
            tracing::warn!(snapshot_id = snap.id, "a Lightsail disk snapshot's record could not be written");
        })?;
        Ok(ops.list)
    }

    pub fn get_disk_snapshot(&self, ctx: &Ctx, name: &str) -> Result<DiskSnapshot> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_disk_snapshot(&st, ctx, name)?;
        self.disk_snapshot_view(&st, ctx, &d)
            .ok_or_else(|| not_found(format!("The DiskSnapshot does not exist: {name}")))
    }

    pub fn get_disk_snapshots(&self, ctx: &Ctx, after: Option<&str>) -> Result<LsPage<DiskSnapshot>> {
        self.list_page(ctx, KIND_DISK_SNAPSHOT, after, |st, d| self.disk_snapshot_view(st, ctx, d))
    }

    pub fn delete_disk_snapshot(&self, ctx: &Ctx, name: &str) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let d = {
            let mut st = self.engine.lock();
            self.settle(&mut st, ctx);
            let d = self.need_disk_snapshot(&st, ctx, name)?;
            if st.snapshots.get(&d.snapshot_id).is_some_and(|s| s.state == SnapshotState::Pending) {
                return Err(failure(format!(
                    "The disk snapshot {name} is still pending: it can be deleted once it is completed."
                )));
            }
            d
        };
        let sh = lightsail_principal(ctx);
        let mut ops = Ops::new(ctx);
        ops.add(name, ResourceType::DiskSnapshot, ALL_ZONES, OperationType::DeleteDiskSnapshot, None, Track::Done);
        let mut recs = vec![Rec::DeleteDoc(KIND_DISK_SNAPSHOT, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        // The snapshot row and its name go in one transaction.
        self.engine.delete_snapshots_with(&sh, std::slice::from_ref(&d.snapshot_id), recs, false)?;
        Ok(ops.list)
    }

    // ---- instance snapshots ------------------------------------------------------------------

    pub fn create_instance_snapshot(&self, ctx: &Ctx, req: CreateInstanceSnapshot) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        check_name("instanceSnapshotName", &req.instance_snapshot_name)?;
        check_name("instanceName", &req.instance_name)?;
        let tags = check_tags(&req.tags)?;
        let name = req.instance_snapshot_name.clone();
        let iname = req.instance_name.clone();
        let _g = self.serialise(ctx)?;
        let (i, disks_by_volume) = {
            let st = self.engine.lock();
            if self.instance_snapshot_doc(&st, ctx, &name)?.is_some() {
                return Err(invalid(format!("Some names are already in use: {name}")));
            }
            let i = self.need_instance(&st, ctx, &iname)?;
            let by_volume: HashMap<String, (String, String)> = rows(&st, KIND_DISK, ctx, None)
                .into_iter()
                .filter_map(|r| parse::<DiskDoc>(r).ok())
                .map(|dd| (dd.volume_id.clone(), (dd.name.clone(), arn(ctx, "Disk", &dd.uuid))))
                .collect();
            (i, by_volume)
        };
        let sh = lightsail_principal(ctx);
        let snaps = self.engine.create_snapshots(
            &sh,
            CreateSnapshots {
                instance_id: i.instance_id.clone(),
                description: Some(format!("Lightsail instance snapshot {name}")),
                ..Default::default()
            },
        )?;
        let disks: Vec<SnapDisk> = {
            let st = self.engine.lock();
            let root = st.instances.get(&i.instance_id).map(|x| x.root_device_name.clone()).unwrap_or_default();
            snaps
                .iter()
                .map(|s| {
                    let v = st.volumes.get(&s.volume_id);
                    let path = v
                        .and_then(|v| v.attachments.iter().find(|a| a.instance_id == i.instance_id))
                        .map(|a| a.device.clone())
                        .unwrap_or_default();
                    let named = disks_by_volume.get(&s.volume_id);
                    SnapDisk {
                        snapshot_id: s.id.clone(),
                        volume_id: s.volume_id.clone(),
                        disk_name: named.map(|n| n.0.clone()),
                        disk_arn: named.map(|n| n.1.clone()),
                        is_system: path == root,
                        path,
                        size_gb: s.volume_size_gib,
                        iops: v.and_then(|v| v.iops),
                    }
                })
                .collect()
        };
        let mut ops = Ops::new(ctx);
        let doc = InstanceSnapshotDoc {
            name: name.clone(),
            uuid: crate::ids::new_uuid(),
            created_at: ops.now,
            tags,
            from_instance_name: iname.clone(),
            from_instance_arn: arn(ctx, "Instance", &i.uuid),
            from_blueprint_id: i.blueprint_id.clone(),
            from_bundle_id: i.bundle_id.clone(),
            zone: i.zone.clone(),
            disks,
        };
        let ids: Vec<String> = snaps.iter().map(|s| s.id.clone()).collect();
        ops.add(
            &name,
            ResourceType::InstanceSnapshot,
            ALL_ZONES,
            OperationType::CreateInstanceSnapshot,
            Some(&iname),
            Track::Snapshots(ids.clone()),
        );
        ops.add(
            &iname,
            ResourceType::Instance,
            &i.zone,
            OperationType::CreateInstanceSnapshot,
            Some(&name),
            Track::Snapshots(ids),
        );
        self.commit_ops(vec![put(KIND_INSTANCE_SNAPSHOT, row_id(ctx, &name), ctx, &doc)?], &ops, || {
            tracing::warn!(name, "a Lightsail instance snapshot's record could not be written");
        })?;
        Ok(ops.list)
    }

    pub fn get_instance_snapshot(&self, ctx: &Ctx, name: &str) -> Result<InstanceSnapshot> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_instance_snapshot(&st, ctx, name)?;
        self.instance_snapshot_view(&st, ctx, &d)
            .ok_or_else(|| not_found(format!("The InstanceSnapshot does not exist: {name}")))
    }

    pub fn get_instance_snapshots(&self, ctx: &Ctx, after: Option<&str>) -> Result<LsPage<InstanceSnapshot>> {
        self.list_page(ctx, KIND_INSTANCE_SNAPSHOT, after, |st, d| self.instance_snapshot_view(st, ctx, d))
    }

    pub fn delete_instance_snapshot(&self, ctx: &Ctx, name: &str) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let d = {
            let mut st = self.engine.lock();
            self.settle(&mut st, ctx);
            let d = self.need_instance_snapshot(&st, ctx, name)?;
            if d.disks
                .iter()
                .any(|x| st.snapshots.get(&x.snapshot_id).is_some_and(|s| s.state == SnapshotState::Pending))
            {
                return Err(failure(format!(
                    "The instance snapshot {name} is still pending: it can be deleted once it is available."
                )));
            }
            d
        };
        let sh = lightsail_principal(ctx);
        let ids: Vec<String> = {
            let st = self.engine.lock();
            d.disks
                .iter()
                .filter(|x| st.snapshots.contains_key(&x.snapshot_id))
                .map(|x| x.snapshot_id.clone())
                .collect()
        };
        let mut ops = Ops::new(ctx);
        ops.add(
            name,
            ResourceType::InstanceSnapshot,
            ALL_ZONES,
            OperationType::DeleteInstanceSnapshot,
            None,
            Track::Done,
        );
        let mut recs = vec![Rec::DeleteDoc(KIND_INSTANCE_SNAPSHOT, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        // Every disk's snapshot and the name go in one transaction: a crash never leaves half of it.
        self.engine.delete_snapshots_with(&sh, &ids, recs, false)?;
        Ok(ops.list)
    }
}
