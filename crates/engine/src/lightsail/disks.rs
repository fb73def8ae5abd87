//! Block storage disks: CreateDisk, CreateDiskFromSnapshot, GetDisk(s), DeleteDisk, AttachDisk,
//! DetachDisk. A disk is a volume of the account's Lightsail principal.

use crate::engine::Rec;
use crate::error::Result;
use crate::model::{Ctx, SnapshotState, Tag, VolumeState};
use crate::volumes::{CreateVolume, DetachVolume};

use super::operations::{Operation, OperationType, Ops, ResourceType, Track};
use super::records::{DiskDoc, KIND_DISK, put, row_id};
use super::tags::check_tags;
use super::validate::{check_name, check_size, check_zone};
use super::views::{Disk, DiskState, LsPage};
use super::{Lightsail, failure, invalid, lightsail_principal, not_found};

#[derive(Debug, Clone, Default)]
pub struct CreateDisk {
    pub disk_name: String,
    pub availability_zone: String,
    pub size_in_gb: i64,
    pub tags: Vec<Tag>,
    pub add_ons: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CreateDiskFromSnapshot {
    pub disk_name: String,
    pub disk_snapshot_name: Option<String>,
    pub availability_zone: String,
    pub size_in_gb: i64,
    pub tags: Vec<Tag>,
    pub source_disk_name: Option<String>,
    pub restore_date: Option<String>,
    pub use_latest_restorable_auto_snapshot: Option<bool>,
    pub add_ons: bool,
}

impl Lightsail<'_> {
    pub fn create_disk(&self, ctx: &Ctx, req: CreateDisk) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        check_name("diskName", &req.disk_name)?;
        check_zone(ctx, &req.availability_zone)?;
        check_size(req.size_in_gb)?;
        let tags = check_tags(&req.tags)?;
        if req.add_ons {
            return Err(invalid("Add-ons (automatic snapshots) are not supported by blocksnap."));
        }
        let _g = self.serialise(ctx)?;
        if self.disk_doc(&self.engine.lock(), ctx, &req.disk_name)?.is_some() {
            return Err(invalid(format!("Some names are already in use: {}", req.disk_name)));
        }
        let sh = lightsail_principal(ctx);
        let v = self.engine.create_volume(
            &sh,
            CreateVolume {
                availability_zone: Some(req.availability_zone.clone()),
                size: Some(req.size_in_gb),
                volume_type: Some("gp2".into()),
                ..Default::default()
            },
        )?;
        let mut ops = Ops::new(ctx);
        let doc = DiskDoc {
            name: req.disk_name.clone(),
            uuid: crate::ids::new_uuid(),
            volume_id: v.id.clone(),
            zone: req.availability_zone.clone(),
            created_at: ops.now,
            tags,
            from_snapshot: None,
        };
        ops.add(&doc.name, ResourceType::Disk, &doc.zone, OperationType::CreateDisk, None, Track::Done);
        self.commit_ops(vec![put(KIND_DISK, row_id(ctx, &doc.name), ctx, &doc)?], &ops, || {
            let _ = self.engine.delete_volume(&sh, &v.id, false);
        })?;
        Ok(ops.list)
    }

    pub fn create_disk_from_snapshot(&self, ctx: &Ctx, req: CreateDiskFromSnapshot) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        check_name("diskName", &req.disk_name)?;
        if req.source_disk_name.is_some()
            || req.restore_date.is_some()
            || req.use_latest_restorable_auto_snapshot == Some(true)
        {
            return Err(invalid(
                "Automatic snapshots (sourceDiskName, restoreDate, useLatestRestorableAutoSnapshot) are not supported by blocksnap: name a manual disk snapshot with diskSnapshotName.",
            ));
        }
        let snap_name = req
            .disk_snapshot_name
            .clone()
            .ok_or_else(|| invalid("diskSnapshotName is required: name the disk snapshot to create the disk from."))?;
        check_name("diskSnapshotName", &snap_name)?;
        check_zone(ctx, &req.availability_zone)?;
        check_size(req.size_in_gb)?;
        let tags = check_tags(&req.tags)?;
        if req.add_ons {
            return Err(invalid("Add-ons (automatic snapshots) are not supported by blocksnap."));
        }
        let _g = self.serialise(ctx)?;
        let snap = {
            let st = self.engine.lock();
            if self.disk_doc(&st, ctx, &req.disk_name)?.is_some() {
                return Err(invalid(format!("Some names are already in use: {}", req.disk_name)));
            }
            let d = self.need_disk_snapshot(&st, ctx, &snap_name)?;
            let Some(s) = st.snapshots.get(&d.snapshot_id) else {
                return Err(not_found(format!("The DiskSnapshot does not exist: {snap_name}")));
            };
            if s.state != SnapshotState::Completed {
                return Err(failure(format!(
                    "The disk snapshot {snap_name} is {}: a disk can be created from it once it is completed.",
                    s.state.as_str()
                )));
            }
            if req.size_in_gb < d.size_gb as i64 {
                return Err(invalid(format!(
                    "sizeInGb {} is smaller than the disk snapshot {snap_name} ({} GB): the new disk must be at least as large.",
                    req.size_in_gb, d.size_gb
                )));
            }
            s.id.clone()
        };
        let sh = lightsail_principal(ctx);
        let v = self.engine.create_volume(
            &sh,
            CreateVolume {
                availability_zone: Some(req.availability_zone.clone()),
                size: Some(req.size_in_gb),
                snapshot_id: Some(snap),
                volume_type: Some("gp2".into()),
                ..Default::default()
            },
        )?;
        let mut ops = Ops::new(ctx);
        let doc = DiskDoc {
            name: req.disk_name.clone(),
            uuid: crate::ids::new_uuid(),
            volume_id: v.id.clone(),
            zone: req.availability_zone.clone(),
            created_at: ops.now,
            tags,
            from_snapshot: Some(snap_name),
        };
        ops.add(
            &doc.name,
            ResourceType::Disk,
            &doc.zone,
            OperationType::CreateDiskFromSnapshot,
            None,
            Track::Volume(v.id.clone()),
        );
        self.commit_ops(vec![put(KIND_DISK, row_id(ctx, &doc.name), ctx, &doc)?], &ops, || {
            let _ = self.engine.delete_volume(&sh, &v.id, false);
        })?;
        Ok(ops.list)
    }

    pub fn get_disk(&self, ctx: &Ctx, name: &str) -> Result<Disk> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_disk(&st, ctx, name)?;
        let names = self.instance_names(&st, ctx);
        self.disk_view(&st, ctx, &d, &names).ok_or_else(|| not_found(format!("The Disk does not exist: {name}")))
    }

    pub fn get_disks(&self, ctx: &Ctx, after: Option<&str>) -> Result<LsPage<Disk>> {
        let names = std::cell::OnceCell::new();
        self.list_page(ctx, KIND_DISK, after, |st, d: &DiskDoc| {
            self.disk_view(st, ctx, d, names.get_or_init(|| self.instance_names(st, ctx)))
        })
    }

    pub fn delete_disk(&self, ctx: &Ctx, name: &str) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let d = {
            let mut st = self.engine.lock();
            self.settle(&mut st, ctx);
            let d = self.need_disk(&st, ctx, name)?;
            if let Some(a) = st.volumes.get(&d.volume_id).and_then(|v| v.attachments.first()) {
                let inst = self.instance_names(&st, ctx).get(&a.instance_id).cloned().unwrap_or_default();
                return Err(failure(format!(
                    "The disk {name} is attached to instance {inst} at {}: detach it before deleting it.",
                    a.device
                )));
            }
            d
        };
        let sh = lightsail_principal(ctx);
        self.engine.delete_volume(&sh, &d.volume_id, false)?;
        let mut ops = Ops::new(ctx);
        ops.add(name, ResourceType::Disk, &d.zone, OperationType::DeleteDisk, None, Track::Done);
        self.commit_ops(vec![Rec::DeleteDoc(KIND_DISK, row_id(ctx, name))], &ops, || {})?;
        Ok(ops.list)
    }

    pub fn attach_disk(
        &self,
        ctx: &Ctx,
        disk_name: &str,
        instance_name: &str,
        disk_path: &str,
    ) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let (d, i) = {
            let st = self.engine.lock();
            let d = self.need_disk(&st, ctx, disk_name)?;
            let i = self.need_instance(&st, ctx, instance_name)?;
            let v = st
                .volumes
                .get(&d.volume_id)
                .ok_or_else(|| not_found(format!("The Disk does not exist: {disk_name}")))?;
            if let Some(a) = v.attachments.first() {
                let to = self.instance_names(&st, ctx).get(&a.instance_id).cloned().unwrap_or_default();
                return Err(failure(format!(
                    "The disk {disk_name} is already attached to instance {to} at {}.",
                    a.device
                )));
            }
            if v.state != VolumeState::Available {
                return Err(failure(format!(
                    "The disk {disk_name} is {}: it can be attached once it is available.",
                    DiskState::of(v)
                )));
            }
            if d.zone != i.zone {
                return Err(invalid(format!(
                    "The disk {disk_name} is in {} and the instance {instance_name} in {}: a disk attaches to instances of its own Availability Zone.",
                    d.zone, i.zone
                )));
            }
            if !crate::volumes::valid_device(disk_path) {
                return Err(invalid(format!(
                    "The disk path '{disk_path}' is not valid: use a device path such as /dev/xvdf (/dev/xvd[b-z] or /dev/sd[b-z])."
                )));
            }
            if let Some(inst) = st.instances.get(&i.instance_id) {
                let used = inst.root_device_name == disk_path
                    || st
                        .volumes
                        .values()
                        .any(|o| o.attachments.iter().any(|a| a.instance_id == inst.id && a.device == disk_path));
                if used {
                    return Err(invalid(format!(
                        "The disk path {disk_path} is already in use on instance {instance_name}: choose another path."
                    )));
                }
            }
            (d, i)
        };
        let sh = lightsail_principal(ctx);
        self.engine.attach_volume(&sh, &d.volume_id, &i.instance_id, disk_path, false)?;
        let mut ops = Ops::new(ctx);
        ops.add(disk_name, ResourceType::Disk, &d.zone, OperationType::AttachDisk, Some(instance_name), Track::Done);
        ops.add(
            instance_name,
            ResourceType::Instance,
            &i.zone,
            OperationType::AttachDisk,
            Some(disk_name),
            Track::Done,
        );
        self.commit_ops(vec![], &ops, || {})?;
        Ok(ops.list)
    }

    pub fn detach_disk(&self, ctx: &Ctx, disk_name: &str) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let (d, inst_name, inst_zone) = {
            let st = self.engine.lock();
            let d = self.need_disk(&st, ctx, disk_name)?;
            let Some(a) = st.volumes.get(&d.volume_id).and_then(|v| v.attachments.first()) else {
                return Err(failure(format!("The disk {disk_name} is not attached to an instance.")));
            };
            let names = self.instance_names(&st, ctx);
            let inst_name = names.get(&a.instance_id).cloned().unwrap_or_default();
            let zone = st.instances.get(&a.instance_id).map(|i| i.availability_zone.clone()).unwrap_or_default();
            (d, inst_name, zone)
        };
        let sh = lightsail_principal(ctx);
        self.engine.detach_volume(&sh, DetachVolume { volume_id: d.volume_id.clone(), ..Default::default() })?;
        let mut ops = Ops::new(ctx);
        ops.add(disk_name, ResourceType::Disk, &d.zone, OperationType::DetachDisk, Some(&inst_name), Track::Done);
        ops.add(
            &inst_name,
            ResourceType::Instance,
            &inst_zone,
            OperationType::DetachDisk,
            Some(disk_name),
            Track::Done,
        );
        self.commit_ops(vec![], &ops, || {})?;
        Ok(ops.list)
    }
}
