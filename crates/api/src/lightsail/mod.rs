//! The Lightsail JSON 1.1 front end (`X-Amz-Target: Lightsail_20161128.<Operation>`): disks,
//! instances and disk snapshots by name, as faces of the engine's volumes, instances and snapshots.
//! This module only parses request bodies into typed requests (required members, types) and renders
//! the engine's typed results; every rule lives in `blocksnap_engine::lightsail`, every wire name
//! here: `errors.rs` (exception names, the EC2-code mapping, the error document), `render.rs`
//! (JSON shapes, state strings, progress text, the answered status of operations, page tokens).

mod errors;
mod render;

pub use errors::respond;

use blocksnap_engine::lightsail::{
    self as ls, CreateDisk, CreateDiskFromSnapshot, CreateDiskSnapshot, CreateInstanceSnapshot, CreateInstances,
};
use blocksnap_engine::model::{Ctx, Tag};
use blocksnap_engine::{Engine, EngineError, ErrorClass, Result};
use serde_json::{Value, json};

use crate::json::Body;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::classed(ErrorClass::InvalidInput, msg)
}

/// A required string member: present and non-empty.
fn required(body: &Body, key: &str) -> Result<String> {
    match body.str(key).map_err(as_input)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid(format!("{key} must not be empty."))),
        None => Err(invalid(format!("{key} is required."))),
    }
}

fn optional(body: &Body, key: &str) -> Result<Option<String>> {
    body.str(key).map_err(as_input)
}

fn int(body: &Body, key: &str) -> Result<Option<i64>> {
    body.int(key).map_err(as_input)
}

fn bool_member(body: &Body, key: &str) -> Result<Option<bool>> {
    body.bool(key).map_err(as_input)
}

fn strings(body: &Body, key: &str) -> Result<Vec<String>> {
    body.str_list(key).map_err(as_input)
}

/// Type errors of the JSON body are Lightsail input errors.
fn as_input(e: EngineError) -> EngineError {
    match e {
        EngineError::Client { message, .. } => invalid(message),
        other => other,
    }
}

/// `tags: [{key, value?}]`.
fn tags(body: &Body) -> Result<Vec<Tag>> {
    let Some(list) = body.0.get("tags") else { return Ok(vec![]) };
    let Value::Array(items) = list else {
        return Err(invalid("tags must be a list of {key, value} objects."));
    };
    items
        .iter()
        .map(|it| {
            let key = it.get("key").and_then(Value::as_str).ok_or_else(|| invalid("Each tag needs a string key."))?;
            let value = match it.get("value") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(invalid(format!("The value of tag '{key}' must be a string."))),
            };
            Ok(Tag { key: key.to_string(), value: value.to_string() })
        })
        .collect()
}

fn has_add_ons(body: &Body) -> bool {
    body.0.get("addOns").is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
}

/// Every operation this front end serves: the one list (the CLI sweep in tests/e2e reads it, so a
/// newly served operation is swept). An operation missing here is refused before dispatch.
pub const OPERATIONS: &[&str] = &[
    "CreateDisk",
    "CreateDiskFromSnapshot",
    "GetDisk",
    "GetDisks",
    "DeleteDisk",
    "AttachDisk",
    "DetachDisk",
    "CreateInstances",
    "GetInstance",
    "GetInstances",
    "DeleteInstance",
    "CreateDiskSnapshot",
    "GetDiskSnapshot",
    "GetDiskSnapshots",
    "DeleteDiskSnapshot",
    "CreateInstanceSnapshot",
    "GetInstanceSnapshot",
    "GetInstanceSnapshots",
    "DeleteInstanceSnapshot",
    "GetOperation",
    "GetOperations",
    "GetOperationsForResource",
    "TagResource",
    "UntagResource",
    "GetRegions",
    "GetBlueprints",
    "GetBundles",
];

pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    if !OPERATIONS.contains(&op) {
        return Err(invalid(format!(
            "The Lightsail operation {op} is not supported by blocksnap (disks, instances, disk and instance snapshots, operations, tags and regions are)."
        )));
    }
    let l = engine.lightsail();
    let token = || optional(body, "pageToken");
    // The key the page starts after, from the previous page's token.
    let after = || token()?.map(|t| render::page_token_key(&t)).transpose();
    Ok(match op {
        "CreateDisk" => render::started(&l.create_disk(
            ctx,
            CreateDisk {
                disk_name: required(body, "diskName")?,
                availability_zone: required(body, "availabilityZone")?,
                size_in_gb: int(body, "sizeInGb")?.ok_or_else(|| invalid("sizeInGb is required."))?,
                tags: tags(body)?,
                add_ons: has_add_ons(body),
            },
        )?),
        "CreateDiskFromSnapshot" => render::started(&l.create_disk_from_snapshot(
            ctx,
            CreateDiskFromSnapshot {
                disk_name: required(body, "diskName")?,
                disk_snapshot_name: optional(body, "diskSnapshotName")?,
                availability_zone: required(body, "availabilityZone")?,
                size_in_gb: int(body, "sizeInGb")?.ok_or_else(|| invalid("sizeInGb is required."))?,
                tags: tags(body)?,
                source_disk_name: optional(body, "sourceDiskName")?,
                restore_date: optional(body, "restoreDate")?,
                use_latest_restorable_auto_snapshot: bool_member(body, "useLatestRestorableAutoSnapshot")?,
                add_ons: has_add_ons(body),
            },
        )?),
        "GetDisk" => json!({ "disk": render::disk(&l.get_disk(ctx, &required(body, "diskName")?)?) }),
        "GetDisks" => render::page("disks", &l.get_disks(ctx, after()?.as_deref())?, render::disk),
        "DeleteDisk" => {
            bool_member(body, "forceDeleteAddOns")?;
            render::operations(&l.delete_disk(ctx, &required(body, "diskName")?)?)
        }
        "AttachDisk" => {
            bool_member(body, "autoMounting")?;
            render::started(&l.attach_disk(
                ctx,
                &required(body, "diskName")?,
                &required(body, "instanceName")?,
                &required(body, "diskPath")?,
            )?)
        }
        "DetachDisk" => render::started(&l.detach_disk(ctx, &required(body, "diskName")?)?),
        "CreateInstances" => {
            let names = strings(body, "instanceNames")?;
            if names.is_empty() {
                return Err(invalid("instanceNames is required."));
            }
            render::started(&l.create_instances(
                ctx,
                CreateInstances {
                    instance_names: names,
                    availability_zone: required(body, "availabilityZone")?,
                    blueprint_id: required(body, "blueprintId")?,
                    bundle_id: required(body, "bundleId")?,
                    tags: tags(body)?,
                    custom_image_name: optional(body, "customImageName")?,
                    key_pair_name: optional(body, "keyPairName")?,
                    ip_address_type: optional(body, "ipAddressType")?,
                    add_ons: has_add_ons(body),
                },
            )?)
        }
        "GetInstance" => {
            json!({ "instance": render::instance(&l.get_instance(ctx, &required(body, "instanceName")?)?) })
        }
        "GetInstances" => render::page("instances", &l.get_instances(ctx, after()?.as_deref())?, render::instance),
        "DeleteInstance" => {
            bool_member(body, "forceDeleteAddOns")?;
            render::instance_deleted(&l.delete_instance(ctx, &required(body, "instanceName")?)?)
        }
        "CreateDiskSnapshot" => render::started(&l.create_disk_snapshot(
            ctx,
            CreateDiskSnapshot {
                disk_snapshot_name: required(body, "diskSnapshotName")?,
                disk_name: optional(body, "diskName")?,
                instance_name: optional(body, "instanceName")?,
                tags: tags(body)?,
            },
        )?),
        "GetDiskSnapshot" => {
            json!({ "diskSnapshot": render::disk_snapshot(&l.get_disk_snapshot(ctx, &required(body, "diskSnapshotName")?)?) })
        }
        "GetDiskSnapshots" => {
            render::page("diskSnapshots", &l.get_disk_snapshots(ctx, after()?.as_deref())?, render::disk_snapshot)
        }
        "DeleteDiskSnapshot" => render::operations(&l.delete_disk_snapshot(ctx, &required(body, "diskSnapshotName")?)?),
        "CreateInstanceSnapshot" => render::started(&l.create_instance_snapshot(
            ctx,
            CreateInstanceSnapshot {
                instance_name: required(body, "instanceName")?,
                instance_snapshot_name: required(body, "instanceSnapshotName")?,
                tags: tags(body)?,
            },
        )?),
        "GetInstanceSnapshot" => json!({
            "instanceSnapshot": render::instance_snapshot(&l.get_instance_snapshot(ctx, &required(body, "instanceSnapshotName")?)?)
        }),
        "GetInstanceSnapshots" => render::page(
            "instanceSnapshots",
            &l.get_instance_snapshots(ctx, after()?.as_deref())?,
            render::instance_snapshot,
        ),
        "DeleteInstanceSnapshot" => {
            render::operations(&l.delete_instance_snapshot(ctx, &required(body, "instanceSnapshotName")?)?)
        }
        "GetOperation" => {
            json!({ "operation": render::operation(&l.get_operation(ctx, &required(body, "operationId")?)?) })
        }
        "GetOperations" => {
            render::page("operations", &l.get_operations(ctx, None, after()?.as_deref())?, render::operation)
        }
        "GetOperationsForResource" => {
            let name = required(body, "resourceName")?;
            render::page("operations", &l.get_operations(ctx, Some(&name), after()?.as_deref())?, render::operation)
        }
        "TagResource" => {
            let t = tags(body)?;
            if !body.0.contains_key("tags") {
                return Err(invalid("tags is required."));
            }
            render::operations(&l.tag_resource(
                ctx,
                &required(body, "resourceName")?,
                optional(body, "resourceArn")?.as_deref(),
                &t,
            )?)
        }
        "UntagResource" => {
            if !body.0.contains_key("tagKeys") {
                return Err(invalid("tagKeys is required."));
            }
            render::operations(&l.untag_resource(
                ctx,
                &required(body, "resourceName")?,
                optional(body, "resourceArn")?.as_deref(),
                &strings(body, "tagKeys")?,
            )?)
        }
        "GetRegions" => {
            let zones = bool_member(body, "includeAvailabilityZones")?.unwrap_or(false);
            bool_member(body, "includeRelationalDatabaseAvailabilityZones")?;
            json!({ "regions": l.regions(zones).iter().map(render::region).collect::<Vec<_>>() })
        }
        "GetBlueprints" => {
            if token()?.is_some() {
                return Err(invalid("GetBlueprints returns one page: there is no next page."));
            }
            json!({ "blueprints": ls::BLUEPRINTS.iter().map(render::blueprint).collect::<Vec<_>>() })
        }
        "GetBundles" => {
            if token()?.is_some() {
                return Err(invalid("GetBundles returns one page: there is no next page."));
            }
            json!({ "bundles": ls::BUNDLES.iter().map(render::bundle).collect::<Vec<_>>() })
        }
        other => {
            return Err(EngineError::Internal(format!("Lightsail operation {other} is listed but not dispatched")));
        }
    })
}
