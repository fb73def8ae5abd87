//! RunInstances, DescribeInstances, Start/Stop/TerminateInstances, DescribeImages.

use blocksnap_engine::model::{Ctx, InstanceState};
use blocksnap_engine::{
    BlockDeviceMappingSpec, EbsSpec, Engine, EngineError, Filter, InstanceView, Result, RunInstances, StateChange,
    format_time, glob, regions,
};

use super::params::Params;
use super::xml::Xml;

/// The owner id of built-in images (they are public, like Amazon's own).
const BUILTIN_OWNER: &str = "137112412989";

fn render_state(x: &mut Xml, tag: &str, s: InstanceState) {
    x.open(tag).leaf("code", s.code()).leaf("name", s.as_str()).close(tag);
}

pub fn render_instance(x: &mut Xml, v: &InstanceView) {
    let i = &v.instance;
    let image = regions::image(&i.image_id);
    let dns = format!("ip-{}.{}.compute.internal", i.private_ip.replace('.', "-"), i.region);
    x.leaf("instanceId", &i.id).leaf("imageId", &i.image_id);
    render_state(x, "instanceState", i.state);
    x.leaf("privateDnsName", &dns)
        .leaf("dnsName", "")
        .leaf("reason", i.state_reason.as_deref().unwrap_or(""))
        .opt("keyName", i.key_name.as_deref())
        .leaf("amiLaunchIndex", i.ami_launch_index);
    x.open("productCodes").close("productCodes");
    x.leaf("instanceType", &i.instance_type).leaf("launchTime", format_time(i.launch_time));
    x.open("placement")
        .leaf("availabilityZoneId", regions::zone_id(&i.availability_zone))
        .leaf("availabilityZone", &i.availability_zone)
        .leaf("groupName", "")
        .leaf("tenancy", "default")
        .close("placement");
    x.open("monitoring").leaf("state", "disabled").close("monitoring");
    x.leaf("privateIpAddress", &i.private_ip);
    x.set("groupSet", [()], |x, _| {
        x.leaf("groupId", "sg-0b5e4c3d2a1f00001").leaf("groupName", "default");
    });
    x.leaf("architecture", image.map(|m| m.architecture).unwrap_or("x86_64"))
        .leaf("rootDeviceType", "ebs")
        .leaf("rootDeviceName", &i.root_device_name);
    x.set("blockDeviceMapping", &v.block_devices, |x, (dev, vol, state, t, dot)| {
        x.leaf("deviceName", dev)
            .open("ebs")
            .leaf("volumeId", vol)
            .leaf("status", state.as_str())
            .leaf("attachTime", format_time(*t))
            .leaf("deleteOnTermination", dot)
            .close("ebs");
    });
    x.leaf("virtualizationType", "hvm").leaf("clientToken", i.client_token.as_deref().unwrap_or(""));
    x.tag_set(&i.tags);
    x.leaf("hypervisor", "xen")
        .leaf("ebsOptimized", false)
        .leaf("enaSupport", true)
        .leaf("sourceDestCheck", true)
        .leaf("platformDetails", image.map(|m| m.platform_details).unwrap_or("Linux/UNIX"))
        .leaf("usageOperation", "RunInstances")
        .leaf("bootMode", "uefi-preferred")
        .leaf("currentInstanceBootMode", "legacy-bios");
    match i.state {
        InstanceState::Stopped | InstanceState::Stopping => {
            x.open("stateReason")
                .leaf("code", "Client.UserInitiatedShutdown")
                .leaf("message", "Client.UserInitiatedShutdown: User initiated shutdown")
                .close("stateReason");
        }
        InstanceState::Terminated | InstanceState::ShuttingDown => {
            x.open("stateReason")
                .leaf("code", "Client.UserInitiatedShutdown")
                .leaf("message", "Client.UserInitiatedShutdown: User initiated shutdown")
                .close("stateReason");
        }
        _ => {}
    }
}

fn ebs_spec(p: &Params) -> Result<EbsSpec> {
    Ok(EbsSpec {
        volume_size: p.int("VolumeSize")?,
        volume_type: p.str("VolumeType"),
        iops: p.int("Iops")?,
        throughput: p.int("Throughput")?,
        encrypted: p.bool("Encrypted")?,
        kms_key_id: p.str("KmsKeyId"),
        delete_on_termination: p.bool("DeleteOnTermination")?,
        snapshot_id: p.str("SnapshotId"),
    })
}

pub fn run_instances(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let mut mappings = Vec::new();
    for m in p.structs("BlockDeviceMapping")? {
        mappings.push(BlockDeviceMappingSpec {
            device_name: m.str("DeviceName"),
            ebs: m.sub("Ebs").map(|s| ebs_spec(&s)).transpose()?,
            no_device: m.str("NoDevice").is_some(),
        });
    }
    let req = RunInstances {
        image_id: p.str("ImageId"),
        min_count: p.int("MinCount")?,
        max_count: p.int("MaxCount")?,
        instance_type: p.str("InstanceType"),
        availability_zone: p.sub("Placement").and_then(|s| s.str("AvailabilityZone")),
        key_name: p.str("KeyName"),
        block_device_mappings: mappings,
        tag_specifications: p.tag_specifications()?,
        client_token: p.str("ClientToken"),
        dry_run: p.dry_run()?,
    };
    let r = e.run_instances(ctx, req)?;
    x.leaf("reservationId", &r.reservation_id).leaf("ownerId", &r.owner_id);
    x.open("groupSet").close("groupSet");
    x.set("instancesSet", &r.instances, render_instance);
    Ok(())
}

pub fn describe_instances(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let q = p.list_query("InstanceId")?;
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let page = e.describe_instances(ctx, &q)?;
    // Group into reservations, keeping first-seen order.
    let mut groups: Vec<(String, Vec<&InstanceView>)> = Vec::new();
    for v in &page.items {
        match groups.iter_mut().find(|(r, _)| *r == v.instance.reservation_id) {
            Some((_, g)) => g.push(v),
            None => groups.push((v.instance.reservation_id.clone(), vec![v])),
        }
    }
    x.set("reservationSet", &groups, |x, (rid, insts)| {
        x.leaf("reservationId", rid).leaf("ownerId", &ctx.account);
        x.open("groupSet").close("groupSet");
        x.set("instancesSet", insts, |x, i| render_instance(x, i));
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}

fn render_changes(x: &mut Xml, changes: &[StateChange]) {
    x.set("instancesSet", changes, |x, c| {
        x.leaf("instanceId", &c.instance_id);
        render_state(x, "currentState", c.current);
        render_state(x, "previousState", c.previous);
    });
}

pub fn stop_instances(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    render_changes(x, &e.stop_instances(ctx, &p.list("InstanceId")?, p.dry_run()?)?);
    Ok(())
}

pub fn start_instances(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    render_changes(x, &e.start_instances(ctx, &p.list("InstanceId")?, p.dry_run()?)?);
    Ok(())
}

pub fn terminate_instances(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    render_changes(x, &e.terminate_instances(ctx, &p.list("InstanceId")?, p.dry_run()?)?);
    Ok(())
}

/// Built-in images are public, owned by "blocksnap"; filters on a few image fields.
pub fn describe_images(_e: &Engine, _ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let ids = p.list("ImageId")?;
    let owners = p.list("Owner")?;
    let filters: Vec<Filter> = p.filters()?;
    for id in &ids {
        if regions::image(id).is_none() {
            return Err(EngineError::client("InvalidAMIID.NotFound", format!("The image id '[{id}]' does not exist")));
        }
    }
    let field = |img: &blocksnap_engine::model::Image, name: &str| -> Option<Vec<String>> {
        Some(match name {
            "image-id" => vec![img.id.into()],
            "name" => vec![img.name.into()],
            "architecture" => vec![img.architecture.into()],
            "root-device-name" => vec![img.root_device_name.into()],
            "root-device-type" => vec!["ebs".into()],
            "state" => vec!["available".into()],
            "is-public" => vec!["true".into()],
            "owner-alias" => vec!["amazon".into()],
            "image-type" => vec!["machine".into()],
            "virtualization-type" => vec!["hvm".into()],
            "platform-details" => vec![img.platform_details.into()],
            _ => return None,
        })
    };
    for f in &filters {
        if field(&regions::IMAGES[0], &f.name).is_none() {
            return Err(EngineError::invalid_value(format!("The filter '{}' is invalid", f.name)));
        }
    }
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let mut images: Vec<_> = regions::IMAGES
        .iter()
        .filter(|i| ids.is_empty() || ids.iter().any(|id| id == i.id))
        .filter(|_| owners.is_empty() || owners.iter().any(|o| o == "amazon" || o == BUILTIN_OWNER))
        .filter(|i| {
            filters
                .iter()
                .all(|f| field(i, &f.name).unwrap_or_default().iter().any(|v| f.values.iter().any(|pat| glob(pat, v))))
        })
        .collect();
    images.sort_by_key(|i| i.id);
    let query = blocksnap_engine::ListQuery {
        ids,
        filters: vec![],
        max_results: p.int("MaxResults")?,
        next_token: p.str("NextToken").filter(|t| !t.is_empty()),
    };
    let page = blocksnap_engine::page_of(&query, blocksnap_engine::DESCRIBE_IMAGES_LIMITS, images, |i| i.id)?;
    x.set("imagesSet", page.items, |x, i| {
        x.leaf("imageId", i.id)
            .leaf("imageLocation", format!("blocksnap/{}", i.name))
            .leaf("imageState", "available")
            .leaf("imageOwnerId", BUILTIN_OWNER)
            .leaf("creationDate", "2026-01-01T00:00:00.000Z")
            .leaf("isPublic", true)
            .leaf("architecture", i.architecture)
            .leaf("imageType", "machine")
            .leaf("imageOwnerAlias", "amazon")
            .leaf("name", i.name)
            .leaf("description", i.description)
            .leaf("rootDeviceType", "ebs")
            .leaf("rootDeviceName", i.root_device_name);
        x.set("blockDeviceMapping", [()], |x, _| {
            x.leaf("deviceName", i.root_device_name)
                .open("ebs")
                .leaf("deleteOnTermination", true)
                .leaf("volumeSize", i.root_size_gib)
                .leaf("volumeType", "gp2")
                .leaf("encrypted", false)
                .close("ebs");
        });
        x.leaf("virtualizationType", "hvm")
            .leaf("hypervisor", "xen")
            .leaf("enaSupport", true)
            .leaf("platformDetails", i.platform_details)
            .leaf("usageOperation", "RunInstances");
    });
    x.opt("nextToken", page.next_token);
    Ok(())
}
