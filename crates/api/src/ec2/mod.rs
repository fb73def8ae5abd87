//! The EC2 Query front end: `Action=…&Version=2016-11-15&…` in, EC2 XML out. Each action parses its
//! parameters into a typed engine request and renders the typed result; no business rule lives here.

mod account;
mod instances;
pub mod params;
mod recycle_bin;
mod snapshot_locks;
mod snapshots;
mod tags;
mod tiers;
mod volumes;
pub mod xml;

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, Result};

use params::Params;
use xml::Xml;

type Handler = fn(&Engine, &Ctx, &Params, &mut Xml) -> Result<()>;

/// Every action this front end answers: (name, handler, mutating). Mutating actions run on the
/// blocking pool because they wait for a durable catalog commit.
const ACTIONS: &[(&str, Handler, bool)] = &[
    ("CreateVolume", volumes::create_volume, true),
    ("DescribeVolumes", volumes::describe_volumes, false),
    ("DeleteVolume", volumes::delete_volume, true),
    ("ModifyVolume", volumes::modify_volume, true),
    ("DescribeVolumesModifications", volumes::describe_volumes_modifications, false),
    ("DescribeVolumeStatus", volumes::describe_volume_status, false),
    ("AttachVolume", volumes::attach_volume, true),
    ("DetachVolume", volumes::detach_volume, true),
    ("RunInstances", instances::run_instances, true),
    ("DescribeInstances", instances::describe_instances, false),
    ("StopInstances", instances::stop_instances, true),
    ("StartInstances", instances::start_instances, true),
    ("TerminateInstances", instances::terminate_instances, true),
    ("DescribeImages", instances::describe_images, false),
    ("CreateSnapshot", snapshots::create_snapshot, true),
    ("CreateSnapshots", snapshots::create_snapshots, true),
    ("DescribeSnapshots", snapshots::describe_snapshots, false),
    ("DeleteSnapshot", snapshots::delete_snapshot, true),
    ("CopySnapshot", snapshots::copy_snapshot, true),
    ("ModifySnapshotAttribute", snapshots::modify_snapshot_attribute, true),
    ("DescribeSnapshotAttribute", snapshots::describe_snapshot_attribute, false),
    ("ResetSnapshotAttribute", snapshots::reset_snapshot_attribute, true),
    ("LockSnapshot", snapshot_locks::lock_snapshot, true),
    ("UnlockSnapshot", snapshot_locks::unlock_snapshot, true),
    ("DescribeLockedSnapshots", snapshot_locks::describe_locked_snapshots, false),
    ("ModifySnapshotTier", tiers::modify_snapshot_tier, true),
    ("RestoreSnapshotTier", tiers::restore_snapshot_tier, true),
    ("DescribeSnapshotTierStatus", tiers::describe_snapshot_tier_status, false),
    ("ListSnapshotsInRecycleBin", recycle_bin::list_snapshots_in_recycle_bin, false),
    ("RestoreSnapshotFromRecycleBin", recycle_bin::restore_snapshot_from_recycle_bin, true),
    ("CreateTags", tags::create_tags, true),
    ("DeleteTags", tags::delete_tags, true),
    ("DescribeTags", tags::describe_tags, false),
    ("DescribeRegions", account::describe_regions, false),
    ("DescribeAvailabilityZones", account::describe_availability_zones, false),
    ("DescribeAccountAttributes", account::describe_account_attributes, false),
    ("GetEbsEncryptionByDefault", account::get_ebs_encryption_by_default, false),
    ("EnableEbsEncryptionByDefault", account::enable_ebs_encryption_by_default, true),
    ("DisableEbsEncryptionByDefault", account::disable_ebs_encryption_by_default, true),
    ("GetEbsDefaultKmsKeyId", account::get_ebs_default_kms_key_id, false),
    ("ModifyEbsDefaultKmsKeyId", account::modify_ebs_default_kms_key_id, true),
    ("ResetEbsDefaultKmsKeyId", account::reset_ebs_default_kms_key_id, true),
];

/// A resolved action, ready to run.
pub struct Call {
    pub action: &'static str,
    handler: Handler,
    pub mutating: bool,
}

/// Find the action named by the request (InvalidAction / MissingAction otherwise).
pub fn route(p: &Params) -> Result<Call> {
    let action = p
        .str("Action")
        .ok_or_else(|| EngineError::client("MissingAction", "The request must contain the parameter Action"))?;
    if let Some(v) = p.str("Version")
        && v != "2016-11-15"
    {
        return Err(EngineError::client(
            "InvalidParameterValue",
            format!("Version '{v}' is not supported: blocksnap speaks EC2 API version 2016-11-15"),
        ));
    }
    ACTIONS
        .iter()
        .find(|(name, _, _)| *name == action)
        .map(|(name, handler, mutating)| Call { action: name, handler: *handler, mutating: *mutating })
        .ok_or_else(|| {
            EngineError::client("InvalidAction", format!("The action {action} is not valid for this web service."))
        })
}

/// Run a call and render its XML body.
pub fn run(call: &Call, engine: &Engine, ctx: &Ctx, p: &Params, request_id: &str) -> Result<String> {
    let mut x = Xml::response(call.action, request_id);
    (call.handler)(engine, ctx, p, &mut x)?;
    Ok(x.finish(call.action))
}
