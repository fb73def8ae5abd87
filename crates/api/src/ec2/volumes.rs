//! CreateVolume, DescribeVolumes, DeleteVolume, ModifyVolume, AttachVolume, DetachVolume.

use blocksnap_engine::model::{Ctx, Volume};
use blocksnap_engine::{
    AttachmentInfo, CreateVolume, DetachVolume, Engine, ModifyVolume, Result, format_time, regions,
};

use super::params::Params;
use super::xml::Xml;

pub fn render_volume(x: &mut Xml, v: &Volume) {
    x.leaf("volumeId", &v.id)
        .leaf("size", v.size_gib)
        .leaf("snapshotId", v.snapshot_id.as_deref().unwrap_or(""))
        .leaf("availabilityZone", &v.availability_zone)
        .leaf("availabilityZoneId", regions::zone_id(&v.availability_zone))
        .leaf("status", v.state.as_str())
        .leaf("createTime", format_time(v.create_time));
    x.set("attachmentSet", &v.attachments, |x, a| {
        x.leaf("volumeId", &v.id)
            .leaf("instanceId", &a.instance_id)
            .leaf("device", &a.device)
            .leaf("status", a.state.as_str())
            .leaf("attachTime", format_time(a.attach_time))
            .leaf("deleteOnTermination", a.delete_on_termination);
    });
    x.leaf("volumeType", &v.volume_type)
        .opt("iops", v.iops)
        .opt("throughput", v.throughput)
        .leaf("encrypted", v.encrypted)
        .opt("kmsKeyId", v.kms_key_id.as_deref())
        .leaf("multiAttachEnabled", v.multi_attach_enabled)
        .leaf("fastRestored", false);
    x.tag_set(&v.tags);
}

fn render_attachment(x: &mut Xml, a: &AttachmentInfo) {
    x.leaf("volumeId", &a.volume_id)
        .leaf("instanceId", &a.attachment.instance_id)
        .leaf("device", &a.attachment.device)
        .leaf("status", a.attachment.state.as_str())
        .leaf("attachTime", format_time(a.attachment.attach_time))
        .leaf("deleteOnTermination", a.attachment.delete_on_termination);
}

pub fn create_volume(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let req = CreateVolume {
        availability_zone: p.str("AvailabilityZone"),
        size: p.int("Size")?,
        snapshot_id: p.str("SnapshotId").filter(|s| !s.is_empty()),
        volume_type: p.str("VolumeType"),
        iops: p.int("Iops")?,
        throughput: p.int("Throughput")?,
        encrypted: p.bool("Encrypted")?,
        kms_key_id: p.str("KmsKeyId"),
        multi_attach_enabled: p.bool("MultiAttachEnabled")?,
        tag_specifications: p.tag_specifications()?,
        client_token: p.str("ClientToken"),
        dry_run: p.dry_run()?,
    };
    if p.str("OutpostArn").is_some() {
        return Err(blocksnap_engine::EngineError::client(
            "InvalidParameterValue",
            "Outposts are not available in blocksnap: OutpostArn cannot be used.",
        ));
    }
    let v = e.create_volume(ctx, req)?;
    render_volume(x, &v);
    Ok(())
}

pub fn describe_volumes(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("VolumeId")?;
    if p.dry_run()? {
        return Err(blocksnap_engine::EngineError::DryRun);
    }
    let page = e.describe_volumes(ctx, &q)?;
    x.set("volumeSet", &page.items, render_volume);
    x.opt("nextToken", page.next_token);
    Ok(())
}

pub fn delete_volume(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    e.delete_volume(ctx, &p.required("VolumeId")?, p.dry_run()?)?;
    x.leaf("return", true);
    Ok(())
}

pub fn modify_volume(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let m = e.modify_volume(
        ctx,
        ModifyVolume {
            volume_id: p.required("VolumeId")?,
            size: p.int("Size")?,
            volume_type: p.str("VolumeType"),
            iops: p.int("Iops")?,
            throughput: p.int("Throughput")?,
            multi_attach_enabled: p.bool("MultiAttachEnabled")?,
            dry_run: p.dry_run()?,
        },
    )?;
    x.open("volumeModification");
    render_modification(x, &m);
    x.close("volumeModification");
    Ok(())
}

pub fn attach_volume(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let a = e.attach_volume(
        ctx,
        &p.required("VolumeId")?,
        &p.required("InstanceId")?,
        &p.required("Device")?,
        p.dry_run()?,
    )?;
    render_attachment(x, &a);
    Ok(())
}

pub fn detach_volume(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let a = e.detach_volume(
        ctx,
        DetachVolume {
            volume_id: p.required("VolumeId")?,
            instance_id: p.str("InstanceId").filter(|s| !s.is_empty()),
            device: p.str("Device").filter(|s| !s.is_empty()),
            force: p.bool("Force")?.unwrap_or(false),
            dry_run: p.dry_run()?,
        },
    )?;
    render_attachment(x, &a);
    Ok(())
}

fn render_modification(x: &mut Xml, m: &blocksnap_engine::VolumeModification) {
    x.leaf("volumeId", &m.volume_id)
        .leaf("modificationState", &m.state)
        .leaf("targetSize", m.target_size)
        .opt("targetIops", m.target_iops)
        .leaf("targetVolumeType", &m.target_volume_type)
        .opt("targetThroughput", m.target_throughput)
        .leaf("targetMultiAttachEnabled", m.target_multi_attach_enabled)
        .leaf("originalSize", m.original_size)
        .opt("originalIops", m.original_iops)
        .leaf("originalVolumeType", &m.original_volume_type)
        .opt("originalThroughput", m.original_throughput)
        .leaf("originalMultiAttachEnabled", m.original_multi_attach_enabled)
        .leaf("progress", m.progress)
        .leaf("startTime", format_time(m.start_time))
        .opt("endTime", m.end_time.map(format_time));
}

pub fn describe_volumes_modifications(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("VolumeId")?;
    if p.dry_run()? {
        return Err(blocksnap_engine::EngineError::DryRun);
    }
    let page = e.describe_volume_modifications(ctx, &q)?;
    x.set("volumeModificationSet", &page.items, render_modification);
    x.opt("nextToken", page.next_token);
    Ok(())
}

pub fn describe_volume_status(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("VolumeId")?;
    if p.dry_run()? {
        return Err(blocksnap_engine::EngineError::DryRun);
    }
    let page = e.describe_volume_status(ctx, &q)?;
    x.set("volumeStatusSet", &page.items, |x, v| {
        x.leaf("volumeId", &v.volume_id)
            .leaf("availabilityZone", &v.availability_zone)
            .leaf("availabilityZoneId", regions::zone_id(&v.availability_zone));
        x.open("volumeStatus").leaf("status", v.status);
        x.set("details", &v.details, |x, (n, s)| {
            x.leaf("name", n).leaf("status", s);
        });
        x.close("volumeStatus");
        if let Some(p) = v.initialization_progress {
            x.open("initializationStatusDetails")
                .leaf("initializationType", "default")
                .leaf("progress", p)
                .close("initializationStatusDetails");
        }
        x.open("actionsSet").close("actionsSet");
        x.open("eventsSet").close("eventsSet");
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}
