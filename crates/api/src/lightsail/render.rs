//! Lightsail JSON shapes (botocore's `lightsail/2016-11-28` model): typed engine results to JSON,
//! with every Lightsail wire string: resource and operation type names, operation statuses,
//! disk/snapshot states, progress text and page tokens.

use blocksnap_engine::lightsail::{
    Blueprint, Bundle, Disk, DiskSnapshot, DiskState, Instance, InstanceSnapshot, InstanceSnapshotState, LsPage,
    Operation, OperationStatus, OperationType, RegionInfo, ResourceType,
};
use blocksnap_engine::model::{SnapshotState, Tags, progress_text};
use blocksnap_engine::{EngineError, ErrorClass, page_token};
use serde_json::{Map, Value, json};

use crate::json::epoch;

/// The key a `pageToken` continues after.
pub fn page_token_key(token: &str) -> Result<String, EngineError> {
    page_token::decode(page_token::LIGHTSAIL, token).ok_or_else(|| {
        EngineError::classed(
            ErrorClass::InvalidInput,
            format!("The page token '{token}' is not valid: pass the nextPageToken of a previous call."),
        )
    })
}

fn resource_type(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Disk => "Disk",
        ResourceType::Instance => "Instance",
        ResourceType::DiskSnapshot => "DiskSnapshot",
        ResourceType::InstanceSnapshot => "InstanceSnapshot",
    }
}

fn operation_type(t: OperationType) -> &'static str {
    match t {
        OperationType::CreateDisk => "CreateDisk",
        OperationType::CreateDiskFromSnapshot => "CreateDiskFromSnapshot",
        OperationType::DeleteDisk => "DeleteDisk",
        OperationType::AttachDisk => "AttachDisk",
        OperationType::DetachDisk => "DetachDisk",
        OperationType::CreateInstance => "CreateInstance",
        OperationType::DeleteInstance => "DeleteInstance",
        OperationType::CreateDiskSnapshot => "CreateDiskSnapshot",
        OperationType::DeleteDiskSnapshot => "DeleteDiskSnapshot",
        OperationType::CreateInstanceSnapshot => "CreateInstanceSnapshot",
        OperationType::DeleteInstanceSnapshot => "DeleteInstanceSnapshot",
        OperationType::TagResource => "TagResource",
        OperationType::UntagResource => "UntagResource",
    }
}

fn operation_status(s: OperationStatus) -> &'static str {
    match s {
        OperationStatus::Started => "Started",
        OperationStatus::Succeeded => "Succeeded",
        OperationStatus::Failed => "Failed",
    }
}

fn disk_state(s: DiskState) -> &'static str {
    match s {
        DiskState::Pending => "pending",
        DiskState::Available => "available",
        DiskState::InUse => "in-use",
        DiskState::Error => "error",
        DiskState::Unknown => "unknown",
    }
}

/// A disk snapshot's state: Lightsail spells these as EC2 does.
fn disk_snapshot_state(s: SnapshotState) -> &'static str {
    s.as_str()
}

fn instance_snapshot_state(s: InstanceSnapshotState) -> &'static str {
    match s {
        InstanceSnapshotState::Pending => "pending",
        InstanceSnapshotState::Available => "available",
        InstanceSnapshotState::Error => "error",
    }
}

pub fn tags(t: &Tags) -> Value {
    Value::Array(t.iter().map(|(k, v)| json!({"key": k, "value": v})).collect())
}

fn location(zone: &str, region: &str) -> Value {
    json!({"availabilityZone": zone, "regionName": region})
}

pub fn operation(o: &Operation) -> Value {
    render_operation(o, false)
}

/// An operation; `started`: as a creating call answers it, accepted and started (the documented
/// responses) even when it is already done.
fn render_operation(o: &Operation, started: bool) -> Value {
    let (status, is_terminal) = match o.status {
        OperationStatus::Succeeded if started => (OperationStatus::Started, false),
        s => (s, o.is_terminal),
    };
    let mut v = json!({
        "id": o.id,
        "resourceName": o.resource_name,
        "resourceType": resource_type(o.resource_type),
        "createdAt": epoch(o.created_at),
        "location": location(&o.availability_zone, &o.region),
        "isTerminal": is_terminal,
        "operationType": operation_type(o.operation_type),
        "status": operation_status(status),
        "statusChangedAt": epoch(o.status_changed_at),
    });
    if let Some(d) = &o.operation_details {
        v["operationDetails"] = json!(d);
    }
    if o.error_code.is_some() {
        v["errorCode"] = json!("OperationFailure");
    }
    if let Some(d) = &o.error_details {
        v["errorDetails"] = json!(d);
    }
    v
}

/// The operations of a deleting or tagging call, as recorded.
pub fn operations(ops: &[Operation]) -> Value {
    json!({ "operations": ops.iter().map(operation).collect::<Vec<_>>() })
}

/// The operations of a creating call (Create*, Attach, Detach): answered "Started".
pub fn started(ops: &[Operation]) -> Value {
    json!({ "operations": ops.iter().map(|o| render_operation(o, true)).collect::<Vec<_>>() })
}

/// DeleteInstance's operations: detaching its disks answers "Started" as the documented example
/// does; the deletion itself is done.
pub fn instance_deleted(ops: &[Operation]) -> Value {
    let list = ops.iter().map(|o| render_operation(o, o.operation_type == OperationType::DetachDisk));
    json!({ "operations": list.collect::<Vec<_>>() })
}

pub fn disk(d: &Disk) -> Value {
    let mut v = Map::new();
    if !d.is_system_disk {
        v.insert("name".into(), json!(d.name));
        v.insert("arn".into(), json!(d.arn));
    }
    v.insert("supportCode".into(), json!(d.support_code));
    v.insert("createdAt".into(), epoch(d.created_at));
    v.insert("location".into(), location(&d.location.availability_zone, &d.location.region_name));
    v.insert("resourceType".into(), json!("Disk"));
    v.insert("tags".into(), tags(&d.tags));
    v.insert("addOns".into(), json!([]));
    v.insert("sizeInGb".into(), json!(d.size_in_gb));
    v.insert("isSystemDisk".into(), json!(d.is_system_disk));
    if let Some(i) = d.iops {
        v.insert("iops".into(), json!(i));
    }
    if let Some(p) = &d.path {
        v.insert("path".into(), json!(p));
    }
    v.insert("state".into(), json!(disk_state(d.state)));
    if let Some(a) = &d.attached_to {
        v.insert("attachedTo".into(), json!(a));
    }
    v.insert("isAttached".into(), json!(d.is_attached));
    v.insert("attachmentState".into(), json!(if d.is_attached { "attached" } else { "detached" }));
    Value::Object(v)
}

pub fn instance(i: &Instance) -> Value {
    json!({
        "name": i.name,
        "arn": i.arn,
        "supportCode": i.support_code,
        "createdAt": epoch(i.created_at),
        "location": location(&i.location.availability_zone, &i.location.region_name),
        "resourceType": "Instance",
        "tags": tags(&i.tags),
        "blueprintId": i.blueprint.id,
        "blueprintName": i.blueprint.name,
        "bundleId": i.bundle.id,
        "addOns": [],
        "isStaticIp": false,
        "privateIpAddress": i.private_ip,
        "ipv6Addresses": [],
        "ipAddressType": "ipv4",
        "hardware": {
            "cpuCount": i.bundle.cpu_count,
            "disks": i.disks.iter().map(disk).collect::<Vec<_>>(),
            "ramSizeInGb": i.bundle.ram_gb,
        },
        "networking": {
            "monthlyTransfer": {"gbPerMonthAllocated": i.bundle.transfer_gb},
            "ports": [{
                "fromPort": 22, "toPort": 22, "protocol": "tcp", "accessFrom": "Anywhere (0.0.0.0/0)",
                "accessType": "public", "commonName": "", "accessDirection": "inbound",
                "cidrs": ["0.0.0.0/0"], "ipv6Cidrs": [], "cidrListAliases": [],
            }],
        },
        "state": {"code": i.state.code(), "name": i.state.as_str()},
        "username": i.blueprint.username,
    })
}

pub fn disk_snapshot(s: &DiskSnapshot) -> Value {
    let mut v = json!({
        "name": s.name,
        "arn": s.arn,
        "supportCode": s.support_code,
        "createdAt": epoch(s.created_at),
        "location": location(&s.location.availability_zone, &s.location.region_name),
        "resourceType": "DiskSnapshot",
        "tags": tags(&s.tags),
        "sizeInGb": s.size_in_gb,
        "state": disk_snapshot_state(s.state),
        "progress": progress_text(s.progress),
        "isFromAutoSnapshot": false,
    });
    for (k, val) in [
        ("fromDiskName", &s.from_disk_name),
        ("fromDiskArn", &s.from_disk_arn),
        ("fromInstanceName", &s.from_instance_name),
        ("fromInstanceArn", &s.from_instance_arn),
    ] {
        if let Some(x) = val {
            v[k] = json!(x);
        }
    }
    v
}

pub fn instance_snapshot(s: &InstanceSnapshot) -> Value {
    json!({
        "name": s.name,
        "arn": s.arn,
        "supportCode": s.support_code,
        "createdAt": epoch(s.created_at),
        "location": location(&s.location.availability_zone, &s.location.region_name),
        "resourceType": "InstanceSnapshot",
        "tags": tags(&s.tags),
        "state": instance_snapshot_state(s.state),
        "progress": progress_text(s.progress),
        "fromAttachedDisks": s.from_attached_disks.iter().map(disk).collect::<Vec<_>>(),
        "fromInstanceName": s.from_instance_name,
        "fromInstanceArn": s.from_instance_arn,
        "fromBlueprintId": s.from_blueprint_id,
        "fromBundleId": s.from_bundle_id,
        "isFromAutoSnapshot": false,
        "sizeInGb": s.size_in_gb,
    })
}

/// `{"<key>": [items], "nextPageToken": …}`.
pub fn page<T>(key: &str, p: &LsPage<T>, f: impl Fn(&T) -> Value) -> Value {
    let mut v = Map::new();
    v.insert(key.into(), Value::Array(p.items.iter().map(f).collect()));
    if let Some(k) = &p.next_after {
        v.insert("nextPageToken".into(), json!(page_token::encode(page_token::LIGHTSAIL, k)));
    }
    Value::Object(v)
}

pub fn blueprint(b: &Blueprint) -> Value {
    json!({
        "blueprintId": b.id,
        "name": b.name,
        "group": b.group,
        "type": b.kind,
        "description": b.description,
        "isActive": true,
        "minPower": 0,
        "version": b.version,
        "versionCode": "1",
        "productUrl": "https://github.com/blocksnap",
        "licenseUrl": "https://github.com/blocksnap",
        "platform": "LINUX_UNIX",
    })
}

pub fn bundle(b: &Bundle) -> Value {
    json!({
        "price": b.price,
        "cpuCount": b.cpu_count,
        "diskSizeInGb": b.disk_gb,
        "bundleId": b.id,
        "instanceType": b.instance_type,
        "isActive": true,
        "name": b.name,
        "power": b.power,
        "ramSizeInGb": b.ram_gb,
        "transferPerMonthInGb": b.transfer_gb,
        "supportedPlatforms": ["LINUX_UNIX"],
        "supportedAppCategories": [],
        "publicIpv4AddressCount": 1,
    })
}

pub fn region(r: &RegionInfo) -> Value {
    json!({
        "continentCode": r.continent_code,
        "description": r.description,
        "displayName": r.display_name,
        "name": r.name,
        "availabilityZones": r.zones.iter().map(|z| json!({"zoneName": z, "state": "available"})).collect::<Vec<_>>(),
        "relationalDatabaseAvailabilityZones": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(page_token_key(&page_token::encode(page_token::LIGHTSAIL, "Disk-1")).unwrap(), "Disk-1");
        assert!(page_token_key("nope").is_err());
    }
}
