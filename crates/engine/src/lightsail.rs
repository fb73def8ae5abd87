//! Lightsail's view of the engine: disks are volumes, instances are instances, disk snapshots are
//! snapshots, all addressed by name; operations are views of the calls and of the jobs behind them.
//!
//! ## Namespace
//! Lightsail resources are their own namespace, as on AWS (where they live in an AWS-managed
//! account): the engine objects behind an account's Lightsail resources belong to that account's
//! *Lightsail principal* `<account>:lightsail` (see [`lightsail_principal`]). EC2 calls of the
//! account never list or touch them, and accounts stay isolated from each other, with no special
//! case in the EC2 code paths.
//!
//! ## Records
//! Names, ARNs, tags, blueprint/bundle and operations are Lightsail-only metadata kept in catalog
//! documents of the kinds `ls_disk`, `ls_instance`, `ls_disk_snapshot`, `ls_instance_snapshot` and
//! `ls_operation` (the document formats are the `*Doc` structs and [`Operation`] below; every later
//! field must be `#[serde(default)]`). Row ids are `<account>/<region>/<name>` (names are unique per
//! account, region and resource type) and `<account>/<region>/<millis>-<seq>-<uuid>` for operations,
//! so a prefix range lists one account's resources by name and its operations oldest first.
//!
//! ## Atomicity
//! A mutation runs the engine call (which takes and releases the engine lock and commits the
//! engine object), then commits the Lightsail documents; if that commit fails the engine call is
//! undone (volume deleted, instances terminated). Lightsail mutations are serialised by one mutex so
//! that "name is free" and "name is taken" cannot interleave; EC2 calls cannot touch the Lightsail
//! principal's objects, so nothing else races with them. A process killed between the two commits
//! leaves an engine object no document names: invisible to both APIs, never a name without its
//! object (documents whose engine object is gone are ignored and their names reusable).
//!
//! ## NBD
//! A disk's `supportCode` is `<account>/<vol-…>`: the volume id is the disk's NBD export (served
//! while the disk is attached). A disk snapshot's `supportCode` is `<account>/<snap-…>`: the
//! read-only NBD export of the completed snapshot. Instance snapshots name each disk's snapshot the
//! same way in `fromAttachedDisks[].supportCode` (system disk: the instance snapshot's own code).

use std::collections::HashMap;

use blocksnap_catalog::Row;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::instances::{BlockDeviceMappingSpec, EbsSpec, RunInstances};
use crate::model::Instance as Ec2Instance;
use crate::model::{Ctx, InstanceState, Millis, Snapshot, SnapshotState, Tag, Tags, Volume, VolumeState, now_millis};
use crate::snapshots::{CreateSnapshot, CreateSnapshots};
use crate::volumes::{CreateVolume, DetachVolume};

const KIND_DISK: &str = "ls_disk";
const KIND_INSTANCE: &str = "ls_instance";
const KIND_DISK_SNAPSHOT: &str = "ls_disk_snapshot";
const KIND_INSTANCE_SNAPSHOT: &str = "ls_instance_snapshot";
const KIND_OPERATION: &str = "ls_operation";

/// Items per page of GetDisks, GetInstances, GetDiskSnapshots, GetInstanceSnapshots.
pub const PAGE_SIZE: usize = 20;
/// Operations per page of GetOperations / GetOperationsForResource ("up to a maximum of 200").
pub const OPERATIONS_PAGE_SIZE: usize = 200;
/// Tags per resource.
pub const MAX_TAGS: usize = 50;
/// Block storage disk sizes (GB).
pub const MIN_DISK_GB: i64 = 8;
pub const MAX_DISK_GB: i64 = 16384;
/// Instances one CreateInstances call may create.
pub const MAX_INSTANCES_PER_CALL: usize = 20;
/// Where a snapshot "lives": Lightsail reports regional resources in zone `all`.
const ALL_ZONES: &str = "all";

pub const INVALID_INPUT: &str = "InvalidInputException";
pub const NOT_FOUND: &str = "NotFoundException";
pub const OPERATION_FAILURE: &str = "OperationFailureException";
pub const ACCESS_DENIED: &str = "AccessDeniedException";
pub const SERVICE: &str = "ServiceException";

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::client(INVALID_INPUT, msg)
}
fn not_found(msg: impl Into<String>) -> EngineError {
    EngineError::client(NOT_FOUND, msg)
}
fn failure(msg: impl Into<String>) -> EngineError {
    EngineError::client(OPERATION_FAILURE, msg)
}

/// An engine error in Lightsail's terms: EC2 codes become Lightsail exception names (the message
/// is kept). Used for the outcomes of the engine calls a Lightsail call makes.
pub fn to_lightsail(e: EngineError) -> EngineError {
    match e {
        EngineError::Client { code, message } => {
            let mapped = if code.ends_with("Exception") {
                code
            } else if code.ends_with(".NotFound") {
                NOT_FOUND
            } else if matches!(
                code,
                "IncorrectState"
                    | "IncorrectInstanceState"
                    | "VolumeInUse"
                    | "SnapshotLimitExceeded"
                    | "ConcurrentSnapshotLimitExceeded"
                    | "InvalidSnapshot.InUse"
                    | "AttachmentLimitExceeded"
                    | "InstanceLimitExceeded"
                    | "KMSKeyNotAccessible"
            ) {
                OPERATION_FAILURE
            } else if matches!(code, "AuthFailure" | "UnauthorizedOperation") {
                ACCESS_DENIED
            } else {
                INVALID_INPUT
            };
            EngineError::Client { code: mapped, message }
        }
        other => other,
    }
}

/// The engine principal that owns an account's Lightsail resources.
pub fn lightsail_principal(ctx: &Ctx) -> Ctx {
    Ctx { account: format!("{}:lightsail", ctx.account), region: ctx.region.clone() }
}

/// How long a Lightsail mutation waits for another one of the same account (which may be taking a
/// snapshot, itself bounded by the volume drain timeout).
const SERIALISE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

// ---- validation ------------------------------------------------------------------------------

/// Lightsail resource names: `\w[\w\-]*\w` (ASCII letters, digits, `_`, `-`; 2 to 255 characters;
/// first and last a letter, digit or underscore).
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let len = name.chars().count();
    let ok = (2..=255).contains(&len)
        && name.starts_with(edge)
        && name.ends_with(edge)
        && name.chars().all(|c| edge(c) || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "The {field} '{name}' is not a valid Lightsail resource name: use 2 to 255 letters, digits, underscores \
             and hyphens, starting and ending with a letter, digit or underscore (pattern \\w[\\w\\-]*\\w)."
        )))
    }
}

fn tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "+-=._:/@".contains(c)
}

/// Lightsail tag rules: keys of 1 to 128 and values of up to 256 letters, numbers, spaces or
/// `+ - = . _ : / @`; `aws:` keys are reserved; at most 50 tags per resource.
pub fn check_tags(tags: &[Tag]) -> Result<Tags> {
    let mut out = Tags::new();
    for t in tags {
        let klen = t.key.chars().count();
        if klen == 0 || klen > 128 {
            return Err(invalid(format!(
                "Tag key '{}' is {klen} characters long: tag keys must be 1 to 128 characters.",
                t.key
            )));
        }
        if let Some(c) = t.key.chars().find(|c| !tag_char(*c)) {
            return Err(invalid(format!(
                "Tag key '{}' contains the character '{c}': tag keys accept letters, numbers, spaces and + - = . _ : / @ only.",
                t.key
            )));
        }
        if t.key.to_lowercase().starts_with("aws:") {
            return Err(invalid(format!(
                "Tag key '{}' is reserved: keys starting with 'aws:' are for AWS use.",
                t.key
            )));
        }
        let vlen = t.value.chars().count();
        if vlen > 256 {
            return Err(invalid(format!(
                "The value of tag '{}' is {vlen} characters long: tag values must be at most 256 characters.",
                t.key
            )));
        }
        if let Some(c) = t.value.chars().find(|c| !tag_char(*c)) {
            return Err(invalid(format!(
                "The value of tag '{}' contains the character '{c}': tag values accept letters, numbers, spaces and + - = . _ : / @ only.",
                t.key
            )));
        }
        out.insert(t.key.clone(), t.value.clone());
    }
    if out.len() > MAX_TAGS {
        return Err(invalid(format!("A resource can have at most {MAX_TAGS} tags; {} were given.", out.len())));
    }
    Ok(out)
}

fn check_zone(ctx: &Ctx, zone: &str) -> Result<()> {
    let zones = crate::regions::zones(&ctx.region);
    if zones.iter().any(|z| z == zone) {
        Ok(())
    } else {
        Err(invalid(format!(
            "The Availability Zone '{zone}' is not valid in region {}: use one of {}.",
            ctx.region,
            zones.join(", ")
        )))
    }
}

fn check_size(size: i64) -> Result<()> {
    if (MIN_DISK_GB..=MAX_DISK_GB).contains(&size) {
        Ok(())
    } else {
        Err(invalid(format!("sizeInGb {size} is out of range: disks are {MIN_DISK_GB} to {MAX_DISK_GB} GB.")))
    }
}

// ---- built-in catalogues ---------------------------------------------------------------------

/// A built-in blueprint: an OS or app image. Every blueprint boots the built-in Linux image.
#[derive(Debug)]
pub struct Blueprint {
    pub id: &'static str,
    pub name: &'static str,
    pub group: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
    pub version: &'static str,
    pub username: &'static str,
    pub image_id: &'static str,
}

/// A built-in bundle: the instance's size, including its system disk.
#[derive(Debug)]
pub struct Bundle {
    pub id: &'static str,
    pub name: &'static str,
    pub instance_type: &'static str,
    pub price: f64,
    pub cpu_count: u32,
    pub disk_gb: u32,
    pub ram_gb: f64,
    pub power: u32,
    pub transfer_gb: u32,
}

const LINUX_IMAGE: &str = "ami-0b5e4c3d2a1f00001";

pub const BLUEPRINTS: &[Blueprint] = &[
    Blueprint {
        id: "amazon_linux_2023",
        name: "Amazon Linux 2023",
        group: "amazon_linux_2023",
        kind: "os",
        description: "Amazon Linux 2023 (blocksnap built-in image: a system disk, no compute)",
        version: "2023.0.0",
        username: "ec2-user",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "ubuntu_22_04",
        name: "Ubuntu",
        group: "ubuntu_22",
        kind: "os",
        description: "Ubuntu 22.04 LTS (blocksnap built-in image: a system disk, no compute)",
        version: "22.04 LTS",
        username: "ubuntu",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "debian_12",
        name: "Debian",
        group: "debian_12",
        kind: "os",
        description: "Debian 12 (blocksnap built-in image: a system disk, no compute)",
        version: "12",
        username: "admin",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "wordpress",
        name: "WordPress",
        group: "wordpress",
        kind: "app",
        description: "WordPress (blocksnap built-in image: a system disk, no compute)",
        version: "6.5.3-0",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "lamp_8_bitnami",
        name: "LAMP (PHP 8)",
        group: "lamp_8",
        kind: "app",
        description: "LAMP with PHP 8 (blocksnap built-in image: a system disk, no compute)",
        version: "8.2.18-4",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
    Blueprint {
        id: "nodejs",
        name: "Node.js",
        group: "node",
        kind: "app",
        description: "Node.js (blocksnap built-in image: a system disk, no compute)",
        version: "18.20.2-0",
        username: "bitnami",
        image_id: LINUX_IMAGE,
    },
];

pub const BUNDLES: &[Bundle] = &[
    Bundle {
        id: "nano_3_0",
        name: "Nano",
        instance_type: "nano",
        price: 5.0,
        cpu_count: 2,
        disk_gb: 20,
        ram_gb: 0.5,
        power: 298,
        transfer_gb: 1024,
    },
    Bundle {
        id: "micro_3_0",
        name: "Micro",
        instance_type: "micro",
        price: 7.0,
        cpu_count: 2,
        disk_gb: 40,
        ram_gb: 1.0,
        power: 500,
        transfer_gb: 2048,
    },
    Bundle {
        id: "small_3_0",
        name: "Small",
        instance_type: "small",
        price: 12.0,
        cpu_count: 2,
        disk_gb: 60,
        ram_gb: 2.0,
        power: 1000,
        transfer_gb: 3072,
    },
    Bundle {
        id: "medium_3_0",
        name: "Medium",
        instance_type: "medium",
        price: 24.0,
        cpu_count: 2,
        disk_gb: 80,
        ram_gb: 4.0,
        power: 2000,
        transfer_gb: 4096,
    },
    Bundle {
        id: "large_3_0",
        name: "Large",
        instance_type: "large",
        price: 44.0,
        cpu_count: 2,
        disk_gb: 160,
        ram_gb: 8.0,
        power: 3000,
        transfer_gb: 5120,
    },
    Bundle {
        id: "xlarge_3_0",
        name: "XLarge",
        instance_type: "xlarge",
        price: 84.0,
        cpu_count: 4,
        disk_gb: 320,
        ram_gb: 16.0,
        power: 4000,
        transfer_gb: 6144,
    },
    Bundle {
        id: "2xlarge_3_0",
        name: "2XLarge",
        instance_type: "2xlarge",
        price: 164.0,
        cpu_count: 8,
        disk_gb: 640,
        ram_gb: 32.0,
        power: 5000,
        transfer_gb: 7168,
    },
];

pub fn blueprint(id: &str) -> Option<&'static Blueprint> {
    BLUEPRINTS.iter().find(|b| b.id == id)
}

pub fn bundle(id: &str) -> Option<&'static Bundle> {
    BUNDLES.iter().find(|b| b.id == id)
}

/// A Lightsail region: (name, display name, continent, description).
pub struct RegionInfo {
    pub name: &'static str,
    pub display_name: &'static str,
    pub continent_code: &'static str,
    pub description: &'static str,
    pub zones: Vec<String>,
}

const LIGHTSAIL_REGIONS: &[(&str, &str, &str, &str)] = &[
    ("us-east-1", "Virginia", "NA", "This region is recommended to serve users in the eastern United States"),
    ("us-east-2", "Ohio", "NA", "This region is recommended to serve users in the eastern United States"),
    (
        "us-west-2",
        "Oregon",
        "NA",
        "This region is recommended to serve users in the northwestern United States, Alaska, and western Canada",
    ),
    ("ca-central-1", "Montreal", "NA", "This region is recommended to serve users in Canada"),
    (
        "eu-west-1",
        "Ireland",
        "EU",
        "This region is recommended to serve users in Ireland, the United Kingdom, and Iceland",
    ),
    (
        "eu-west-2",
        "London",
        "EU",
        "This region is recommended to serve users in London, the United Kingdom, and Iceland",
    ),
    ("eu-west-3", "Paris", "EU", "This region is recommended to serve users in France, Spain, and Portugal"),
    ("eu-central-1", "Frankfurt", "EU", "This region is recommended to serve users in Germany and Central Europe"),
    ("eu-north-1", "Stockholm", "EU", "This region is recommended to serve users in Scandinavia and Northern Europe"),
    ("ap-south-1", "Mumbai", "AP", "This region is recommended to serve users in India"),
    ("ap-southeast-1", "Singapore", "AP", "This region is recommended to serve users in Southeast Asia"),
    ("ap-southeast-2", "Sydney", "AP", "This region is recommended to serve users in Australia and New Zealand"),
    ("ap-southeast-3", "Jakarta", "AP", "This region is recommended to serve users in Indonesia"),
    ("ap-northeast-1", "Tokyo", "AP", "This region is recommended to serve users in Japan"),
    ("ap-northeast-2", "Seoul", "AP", "This region is recommended to serve users in South Korea"),
];

// ---- records ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskDoc {
    name: String,
    uuid: String,
    volume_id: String,
    zone: String,
    created_at: Millis,
    #[serde(default)]
    tags: Tags,
    /// The disk snapshot it was created from, if any.
    #[serde(default)]
    from_snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceDoc {
    name: String,
    uuid: String,
    instance_id: String,
    zone: String,
    created_at: Millis,
    blueprint_id: String,
    bundle_id: String,
    #[serde(default)]
    tags: Tags,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DiskSnapshotDoc {
    name: String,
    uuid: String,
    snapshot_id: String,
    created_at: Millis,
    size_gb: u32,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    from_disk_name: Option<String>,
    #[serde(default)]
    from_disk_arn: Option<String>,
    #[serde(default)]
    from_instance_name: Option<String>,
    #[serde(default)]
    from_instance_arn: Option<String>,
}

/// One disk of an instance snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapDisk {
    snapshot_id: String,
    volume_id: String,
    /// The Lightsail disk's name and ARN (None for the system disk).
    #[serde(default)]
    disk_name: Option<String>,
    #[serde(default)]
    disk_arn: Option<String>,
    path: String,
    size_gb: u32,
    #[serde(default)]
    iops: Option<u32>,
    is_system: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceSnapshotDoc {
    name: String,
    uuid: String,
    created_at: Millis,
    #[serde(default)]
    tags: Tags,
    from_instance_name: String,
    from_instance_arn: String,
    from_blueprint_id: String,
    from_bundle_id: String,
    zone: String,
    disks: Vec<SnapDisk>,
}

/// What an operation's status follows after the call returned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum Track {
    /// Done when the call returned.
    #[default]
    Done,
    /// Snapshot jobs: Started while any is pending, Failed if any failed, else Succeeded.
    Snapshots(Vec<String>),
    /// A volume being filled from a snapshot: Started while creating.
    Volume(String),
}

/// A Lightsail operation (also the `ls_operation` document format).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub resource_name: String,
    pub resource_type: String,
    pub created_at: Millis,
    pub availability_zone: String,
    pub region: String,
    pub is_terminal: bool,
    #[serde(default)]
    pub operation_details: Option<String>,
    pub operation_type: String,
    pub status: String,
    pub status_changed_at: Millis,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_details: Option<String>,
    #[serde(default)]
    pub track: Track,
}

impl Operation {
    /// As the creating call answers it: accepted and started (the documented responses).
    fn started(&self) -> Operation {
        let mut o = self.clone();
        if o.status == "Succeeded" {
            o.status = "Started".into();
            o.is_terminal = false;
        }
        o
    }
}

// ---- views -----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Location {
    pub availability_zone: String,
    pub region_name: String,
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
    /// pending | error | available | in-use | unknown
    pub state: &'static str,
    pub attached_to: Option<String>,
    pub is_attached: bool,
    pub attachment_state: &'static str,
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
    pub state_code: u32,
    pub state_name: &'static str,
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
    /// pending | completed | error | unknown
    pub state: &'static str,
    pub progress: String,
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
    /// pending | error | available
    pub state: &'static str,
    pub progress: String,
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

/// One page of a Get* listing.
#[derive(Debug, Clone)]
pub struct LsPage<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

// ---- requests --------------------------------------------------------------------------------

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

#[derive(Debug, Clone, Default)]
pub struct CreateDiskSnapshot {
    pub disk_snapshot_name: String,
    pub disk_name: Option<String>,
    pub instance_name: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default)]
pub struct CreateInstances {
    pub instance_names: Vec<String>,
    pub availability_zone: String,
    pub blueprint_id: String,
    pub bundle_id: String,
    pub tags: Vec<Tag>,
    pub custom_image_name: Option<String>,
    pub key_pair_name: Option<String>,
    pub ip_address_type: Option<String>,
    pub add_ons: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CreateInstanceSnapshot {
    pub instance_name: String,
    pub instance_snapshot_name: String,
    pub tags: Vec<Tag>,
}

// ---- helpers over documents ------------------------------------------------------------------

fn prefix(ctx: &Ctx) -> String {
    format!("{}/{}/", ctx.account, ctx.region)
}

fn row_id(ctx: &Ctx, name: &str) -> String {
    format!("{}{name}", prefix(ctx))
}

fn arn(ctx: &Ctx, kind: &str, uuid: &str) -> String {
    format!("arn:aws:lightsail:{}:{}:{kind}/{uuid}", ctx.region, ctx.account)
}

fn parse<T: DeserializeOwned>(r: &Row) -> Result<T> {
    serde_json::from_str(&r.doc)
        .map_err(|e| EngineError::Internal(format!("Lightsail record {}/{} is unreadable: {e}", r.kind, r.id)))
}

fn get<T: DeserializeOwned>(st: &State, kind: &str, id: &str) -> Result<Option<T>> {
    match st.docs.get(kind).and_then(|m| m.get(id)) {
        Some(r) => parse(r).map(Some),
        None => Ok(None),
    }
}

/// The rows of one account and region, in id order, starting after `after` (a name) if given.
fn rows<'a>(st: &'a State, kind: &str, ctx: &Ctx, after: Option<&str>) -> Vec<&'a Row> {
    let p = prefix(ctx);
    let Some(m) = st.docs.get(kind) else { return vec![] };
    let start = match after {
        Some(a) => format!("{p}{a}"),
        None => p.clone(),
    };
    m.range(start.clone()..)
        .skip_while(|(k, _)| after.is_some() && **k == start)
        .take_while(|(k, _)| k.starts_with(&p))
        .map(|(_, r)| r)
        .collect()
}

fn put<T: Serialize>(kind: &'static str, id: String, ctx: &Ctx, doc: &T) -> Result<Rec> {
    Ok(Rec::Doc(
        kind,
        Row {
            kind: kind.to_string(),
            id,
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            doc: serde_json::to_string(doc)?,
        },
    ))
}

fn encode_token(last: &str) -> String {
    format!("lsnt1{}", hex::encode(last))
}

fn decode_token(t: &str) -> Result<String> {
    t.strip_prefix("lsnt1").and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
        invalid(format!("The page token '{t}' is not valid: pass the nextPageToken of a previous call."))
    })
}

/// A Lightsail resource as listed: pages are keyed by name.
trait Named {
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

fn page<T>(mut items: Vec<T>, size: usize, key: impl Fn(&T) -> String) -> LsPage<T> {
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items.last().map(|i| encode_token(&key(i)))
    } else {
        None
    };
    LsPage { items, next_page_token }
}

fn disk_state(v: &Volume) -> &'static str {
    match v.state {
        VolumeState::Creating => "pending",
        VolumeState::Available => "available",
        VolumeState::InUse => "in-use",
        VolumeState::Error => "error",
        VolumeState::Deleting | VolumeState::Deleted => "unknown",
    }
}

fn snapshot_state(s: &Snapshot) -> &'static str {
    match s.state {
        SnapshotState::Pending => "pending",
        SnapshotState::Completed => "completed",
        SnapshotState::Error => "error",
    }
}

/// Lightsail's view of an engine: `engine.lightsail()`.
pub struct Lightsail<'a> {
    engine: &'a Engine,
}

impl Engine {
    pub fn lightsail(&self) -> Lightsail<'_> {
        Lightsail { engine: self }
    }
}

/// The operations one call records, with a sequence so that one call's operations keep their order.
struct Ops<'c> {
    ctx: &'c Ctx,
    now: Millis,
    list: Vec<Operation>,
}

impl<'c> Ops<'c> {
    fn new(ctx: &'c Ctx) -> Self {
        Ops { ctx, now: now_millis(), list: vec![] }
    }

    fn add(&mut self, name: &str, rtype: &str, zone: &str, op_type: &str, details: Option<&str>, track: Track) {
        let done = matches!(track, Track::Done);
        self.list.push(Operation {
            id: crate::ids::new_uuid(),
            resource_name: name.to_string(),
            resource_type: rtype.to_string(),
            created_at: self.now,
            availability_zone: zone.to_string(),
            region: self.ctx.region.clone(),
            is_terminal: done,
            operation_details: details.map(str::to_string),
            operation_type: op_type.to_string(),
            status: if done { "Succeeded" } else { "Started" }.to_string(),
            status_changed_at: self.now,
            error_code: None,
            error_details: None,
            track,
        });
    }

    fn recs(&self) -> Result<Vec<Rec>> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, o)| {
                put(KIND_OPERATION, format!("{}{:013}-{i:03}-{}", prefix(self.ctx), o.created_at, o.id), self.ctx, o)
            })
            .collect()
    }

    /// The operations as the call answers them: creations "Started", deletions "Succeeded".
    fn answer(self, started: bool) -> Vec<Operation> {
        if started { self.list.iter().map(Operation::started).collect() } else { self.list }
    }
}

impl Lightsail<'_> {
    /// Serialises one account's Lightsail mutations (name checks and the commits that take the
    /// names); other accounts go on.
    fn serialise(&self, ctx: &Ctx) -> Result<blocksnap_volume::Claim<'_>> {
        let key = [format!("lightsail:{}", ctx.account)];
        let deadline = std::time::Instant::now() + SERIALISE_TIMEOUT;
        self.engine.jobs.claims.claim(&key, deadline).ok_or_else(|| {
            EngineError::client(
                "ServiceException",
                "Another Lightsail request of this account is still running; retry in a few seconds.",
            )
        })
    }

    fn check_region(&self, ctx: &Ctx) -> Result<()> {
        if LIGHTSAIL_REGIONS.iter().any(|r| r.0 == ctx.region) {
            Ok(())
        } else {
            Err(invalid(format!(
                "Lightsail is not available in region {}; Lightsail regions: {}.",
                ctx.region,
                LIGHTSAIL_REGIONS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// A disk whose volume still exists.
    fn disk_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<DiskDoc>> {
        Ok(get::<DiskDoc>(st, KIND_DISK, &row_id(ctx, name))?.filter(|d| st.volumes.contains_key(&d.volume_id)))
    }

    fn need_disk(&self, st: &State, ctx: &Ctx, name: &str) -> Result<DiskDoc> {
        self.disk_doc(st, ctx, name)?.ok_or_else(|| not_found(format!("The Disk does not exist: {name}")))
    }

    fn instance_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<InstanceDoc>> {
        Ok(get::<InstanceDoc>(st, KIND_INSTANCE, &row_id(ctx, name))?
            .filter(|d| st.instances.get(&d.instance_id).is_some_and(|i| i.state != InstanceState::Terminated)))
    }

    fn need_instance(&self, st: &State, ctx: &Ctx, name: &str) -> Result<InstanceDoc> {
        self.instance_doc(st, ctx, name)?.ok_or_else(|| not_found(format!("The Instance does not exist: {name}")))
    }

    fn disk_snapshot_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<DiskSnapshotDoc>> {
        Ok(get::<DiskSnapshotDoc>(st, KIND_DISK_SNAPSHOT, &row_id(ctx, name))?
            .filter(|d| st.snapshots.contains_key(&d.snapshot_id)))
    }

    fn need_disk_snapshot(&self, st: &State, ctx: &Ctx, name: &str) -> Result<DiskSnapshotDoc> {
        self.disk_snapshot_doc(st, ctx, name)?
            .ok_or_else(|| not_found(format!("The DiskSnapshot does not exist: {name}")))
    }

    fn instance_snapshot_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<InstanceSnapshotDoc>> {
        Ok(get::<InstanceSnapshotDoc>(st, KIND_INSTANCE_SNAPSHOT, &row_id(ctx, name))?
            .filter(|d| d.disks.iter().any(|x| st.snapshots.contains_key(&x.snapshot_id))))
    }

    fn need_instance_snapshot(&self, st: &State, ctx: &Ctx, name: &str) -> Result<InstanceSnapshotDoc> {
        self.instance_snapshot_doc(st, ctx, name)?
            .ok_or_else(|| not_found(format!("The InstanceSnapshot does not exist: {name}")))
    }

    /// Instance id → Lightsail instance name, for the account and region.
    fn instance_names(&self, st: &State, ctx: &Ctx) -> HashMap<String, String> {
        rows(st, KIND_INSTANCE, ctx, None)
            .into_iter()
            .filter_map(|r| parse::<InstanceDoc>(r).ok())
            .map(|d| (d.instance_id, d.name))
            .collect()
    }

    fn disk_view(&self, st: &State, ctx: &Ctx, d: &DiskDoc, names: &HashMap<String, String>) -> Option<Disk> {
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
            state: disk_state(v),
            attached_to: att.and_then(|a| names.get(&a.instance_id).cloned()),
            is_attached: att.is_some(),
            attachment_state: if att.is_some() { "attached" } else { "detached" },
            volume_id: v.id.clone(),
        })
    }

    /// The instance's system disk volume.
    fn system_volume<'s>(&self, st: &'s State, inst: &Ec2Instance) -> Option<&'s Volume> {
        st.volumes
            .values()
            .find(|v| v.attachments.iter().any(|a| a.instance_id == inst.id && a.device == inst.root_device_name))
    }

    fn instance_view(&self, st: &State, ctx: &Ctx, d: &InstanceDoc) -> Option<Instance> {
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
                state: disk_state(v),
                attached_to: Some(d.name.clone()),
                is_attached: true,
                attachment_state: "attached",
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
            state_code: inst.state.code(),
            state_name: inst.state.as_str(),
            disks,
            instance_id: inst.id.clone(),
        })
    }

    fn disk_snapshot_view(&self, st: &State, ctx: &Ctx, d: &DiskSnapshotDoc) -> Option<DiskSnapshot> {
        let s = st.snapshots.get(&d.snapshot_id)?;
        Some(DiskSnapshot {
            name: d.name.clone(),
            arn: arn(ctx, "DiskSnapshot", &d.uuid),
            support_code: format!("{}/{}", ctx.account, s.id),
            created_at: d.created_at,
            location: Location { availability_zone: ALL_ZONES.into(), region_name: ctx.region.clone() },
            tags: d.tags.clone(),
            size_in_gb: d.size_gb,
            state: snapshot_state(s),
            progress: format!("{}%", s.progress),
            from_disk_name: d.from_disk_name.clone(),
            from_disk_arn: d.from_disk_arn.clone(),
            from_instance_name: d.from_instance_name.clone(),
            from_instance_arn: d.from_instance_arn.clone(),
            snapshot_id: s.id.clone(),
        })
    }

    fn instance_snapshot_view(&self, st: &State, ctx: &Ctx, d: &InstanceSnapshotDoc) -> Option<InstanceSnapshot> {
        let snaps: Vec<Option<&Snapshot>> = d.disks.iter().map(|x| st.snapshots.get(&x.snapshot_id)).collect();
        if snaps.iter().all(Option::is_none) {
            return None;
        }
        let state = if snaps.iter().any(|s| s.is_none_or(|s| s.state == SnapshotState::Error)) {
            "error"
        } else if snaps.iter().flatten().any(|s| s.state == SnapshotState::Pending) {
            "pending"
        } else {
            "available"
        };
        let progress = snaps.iter().flatten().map(|s| s.progress).min().unwrap_or(0);
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
                state: "in-use",
                attached_to: Some(d.from_instance_name.clone()),
                is_attached: true,
                attachment_state: "attached",
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
            progress: format!("{progress}%"),
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

    /// Bring operations that follow a job up to date with it (and persist the change).
    fn settle(&self, st: &mut State, ctx: &Ctx) {
        let mut recs = Vec::new();
        for r in rows(st, KIND_OPERATION, ctx, None) {
            if !r.doc.contains("\"is_terminal\":false") {
                continue;
            }
            let Ok(mut op) = parse::<Operation>(r) else { continue };
            let outcome: Option<(&str, Option<String>, Millis)> = match &op.track {
                Track::Done => Some(("Succeeded", None, op.status_changed_at)),
                Track::Snapshots(ids) => {
                    let snaps: Vec<Option<&Snapshot>> = ids.iter().map(|i| st.snapshots.get(i)).collect();
                    if let Some(failed) = snaps.iter().flatten().find(|s| s.state == SnapshotState::Error) {
                        Some(("Failed", failed.state_message.clone(), now_millis()))
                    } else if snaps.iter().any(Option::is_none) {
                        Some(("Failed", Some("the snapshot was deleted before it completed".into()), now_millis()))
                    } else if snaps.iter().flatten().all(|s| s.state == SnapshotState::Completed) {
                        let at = snaps.iter().flatten().filter_map(|s| s.completion_time).max();
                        Some(("Succeeded", None, at.unwrap_or_else(now_millis)))
                    } else {
                        None
                    }
                }
                Track::Volume(id) => match st.volumes.get(id) {
                    Some(v) if v.state == VolumeState::Creating => None,
                    Some(v) if v.state == VolumeState::Error => {
                        Some(("Failed", Some("the disk could not be filled from the snapshot".into()), now_millis()))
                    }
                    _ => Some(("Succeeded", None, now_millis())),
                },
            };
            if let Some((status, details, at)) = outcome {
                op.status = status.to_string();
                op.is_terminal = true;
                op.status_changed_at = at;
                if status == "Failed" {
                    op.error_code = Some("OperationFailure".into());
                    op.error_details = details;
                }
                match put(KIND_OPERATION, r.id.clone(), ctx, &op) {
                    Ok(rec) => recs.push(rec),
                    Err(e) => tracing::warn!(error = %e, "serialising a Lightsail operation"),
                }
            }
        }
        if !recs.is_empty()
            && let Err(e) = self.engine.commit(st, recs)
        {
            tracing::warn!(error = %e, "could not record finished Lightsail operations");
        }
    }

    fn commit_or(&self, recs: Vec<Rec>, undo: impl FnOnce()) -> Result<()> {
        let r = {
            let mut st = self.engine.lock();
            self.engine.commit(&mut st, recs)
        };
        if r.is_err() {
            undo();
        }
        r
    }

    // ---- disks -------------------------------------------------------------------------------

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
        let v = self
            .engine
            .create_volume(
                &sh,
                CreateVolume {
                    availability_zone: Some(req.availability_zone.clone()),
                    size: Some(req.size_in_gb),
                    volume_type: Some("gp2".into()),
                    ..Default::default()
                },
            )
            .map_err(to_lightsail)?;
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
        ops.add(&doc.name, "Disk", &doc.zone, "CreateDisk", None, Track::Done);
        let mut recs = vec![put(KIND_DISK, row_id(ctx, &doc.name), ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {
            let _ = self.engine.delete_volume(&sh, &v.id, false);
        })?;
        Ok(ops.answer(true))
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
                    snapshot_state(s)
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
        let v = self
            .engine
            .create_volume(
                &sh,
                CreateVolume {
                    availability_zone: Some(req.availability_zone.clone()),
                    size: Some(req.size_in_gb),
                    snapshot_id: Some(snap),
                    volume_type: Some("gp2".into()),
                    ..Default::default()
                },
            )
            .map_err(to_lightsail)?;
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
        ops.add(&doc.name, "Disk", &doc.zone, "CreateDiskFromSnapshot", None, Track::Volume(v.id.clone()));
        let mut recs = vec![put(KIND_DISK, row_id(ctx, &doc.name), ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {
            let _ = self.engine.delete_volume(&sh, &v.id, false);
        })?;
        Ok(ops.answer(true))
    }

    pub fn get_disk(&self, ctx: &Ctx, name: &str) -> Result<Disk> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_disk(&st, ctx, name)?;
        let names = self.instance_names(&st, ctx);
        self.disk_view(&st, ctx, &d, &names).ok_or_else(|| not_found(format!("The Disk does not exist: {name}")))
    }

    pub fn get_disks(&self, ctx: &Ctx, page_token: Option<&str>) -> Result<LsPage<Disk>> {
        let names = std::cell::OnceCell::new();
        self.list_page(ctx, KIND_DISK, page_token, |st, d: &DiskDoc| {
            self.disk_view(st, ctx, d, names.get_or_init(|| self.instance_names(st, ctx)))
        })
    }

    /// One page of a kind's records of the caller, in name order, each shown through `view`
    /// (`None` hides it); the Get*s calls.
    fn list_page<D: DeserializeOwned, V: Named>(
        &self,
        ctx: &Ctx,
        kind: &str,
        page_token: Option<&str>,
        view: impl Fn(&State, &D) -> Option<V>,
    ) -> Result<LsPage<V>> {
        self.check_region(ctx)?;
        let after = page_token.map(decode_token).transpose()?;
        let st = self.engine.lock();
        let items: Vec<V> = rows(&st, kind, ctx, after.as_deref())
            .into_iter()
            .filter_map(|r| parse::<D>(r).ok())
            .filter_map(|d| view(&st, &d))
            .take(PAGE_SIZE + 1)
            .collect();
        Ok(page(items, PAGE_SIZE, |v| v.name().to_string()))
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
        self.engine.delete_volume(&sh, &d.volume_id, false).map_err(to_lightsail)?;
        let mut ops = Ops::new(ctx);
        ops.add(name, "Disk", &d.zone, "DeleteDisk", None, Track::Done);
        let mut recs = vec![Rec::DeleteDoc(KIND_DISK, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {})?;
        Ok(ops.answer(false))
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
                    disk_state(v)
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
        self.engine.attach_volume(&sh, &d.volume_id, &i.instance_id, disk_path, false).map_err(to_lightsail)?;
        let mut ops = Ops::new(ctx);
        ops.add(disk_name, "Disk", &d.zone, "AttachDisk", Some(instance_name), Track::Done);
        ops.add(instance_name, "Instance", &i.zone, "AttachDisk", Some(disk_name), Track::Done);
        self.commit_or(ops.recs()?, || {})?;
        Ok(ops.answer(true))
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
        self.engine
            .detach_volume(&sh, DetachVolume { volume_id: d.volume_id.clone(), ..Default::default() })
            .map_err(to_lightsail)?;
        let mut ops = Ops::new(ctx);
        ops.add(disk_name, "Disk", &d.zone, "DetachDisk", Some(&inst_name), Track::Done);
        ops.add(&inst_name, "Instance", &inst_zone, "DetachDisk", Some(disk_name), Track::Done);
        self.commit_or(ops.recs()?, || {})?;
        Ok(ops.answer(true))
    }

    // ---- instances ---------------------------------------------------------------------------

    pub fn create_instances(&self, ctx: &Ctx, req: CreateInstances) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        if req.instance_names.is_empty() {
            return Err(invalid("instanceNames must name at least one instance."));
        }
        if req.instance_names.len() > MAX_INSTANCES_PER_CALL {
            return Err(invalid(format!(
                "{} instances were requested: one call creates at most {MAX_INSTANCES_PER_CALL}.",
                req.instance_names.len()
            )));
        }
        for (i, n) in req.instance_names.iter().enumerate() {
            check_name("instanceName", n)?;
            if req.instance_names[..i].contains(n) {
                return Err(invalid(format!("The instance name {n} is given more than once.")));
            }
        }
        check_zone(ctx, &req.availability_zone)?;
        let bp = blueprint(&req.blueprint_id).ok_or_else(|| {
            invalid(format!(
                "The blueprint '{}' does not exist: use one of {} (GetBlueprints).",
                req.blueprint_id,
                BLUEPRINTS.iter().map(|b| b.id).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let bundle = bundle(&req.bundle_id).ok_or_else(|| {
            invalid(format!(
                "The bundle '{}' does not exist: use one of {} (GetBundles).",
                req.bundle_id,
                BUNDLES.iter().map(|b| b.id).collect::<Vec<_>>().join(", ")
            ))
        })?;
        if req.custom_image_name.is_some() {
            return Err(invalid("Custom images are not supported by blocksnap: use a blueprint."));
        }
        if let Some(t) = req.ip_address_type.as_deref()
            && !matches!(t, "dualstack" | "ipv4" | "ipv6")
        {
            return Err(invalid(format!("ipAddressType '{t}' is not valid: use dualstack, ipv4 or ipv6.")));
        }
        if req.add_ons {
            return Err(invalid("Add-ons (automatic snapshots) are not supported by blocksnap."));
        }
        let tags = check_tags(&req.tags)?;
        let _g = self.serialise(ctx)?;
        {
            let st = self.engine.lock();
            let taken: Vec<&str> = req
                .instance_names
                .iter()
                .map(|n| self.instance_doc(&st, ctx, n).map(|d| d.map(|_| n.as_str())))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect();
            if !taken.is_empty() {
                return Err(invalid(format!("Some names are already in use: {}", taken.join(", "))));
            }
        }
        let image = crate::regions::image(bp.image_id)
            .ok_or_else(|| EngineError::Internal(format!("blueprint {} names no built-in image", bp.id)))?;
        let n = req.instance_names.len() as i64;
        let sh = lightsail_principal(ctx);
        let res = self
            .engine
            .run_instances(
                &sh,
                RunInstances {
                    image_id: Some(image.id.to_string()),
                    min_count: Some(n),
                    max_count: Some(n),
                    instance_type: Some(format!("lightsail.{}", bundle.instance_type)),
                    availability_zone: Some(req.availability_zone.clone()),
                    key_name: req.key_pair_name.clone(),
                    block_device_mappings: vec![BlockDeviceMappingSpec {
                        device_name: Some(image.root_device_name.to_string()),
                        ebs: Some(EbsSpec {
                            volume_size: Some(bundle.disk_gb as i64),
                            volume_type: Some("gp2".into()),
                            delete_on_termination: Some(true),
                            ..Default::default()
                        }),
                        no_device: false,
                    }],
                    ..Default::default()
                },
            )
            .map_err(to_lightsail)?;
        let mut instances: Vec<&Ec2Instance> = res.instances.iter().map(|v| &v.instance).collect();
        instances.sort_by_key(|i| i.ami_launch_index);
        let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
        let mut ops = Ops::new(ctx);
        let mut recs = Vec::new();
        for (name, inst) in req.instance_names.iter().zip(&instances) {
            let doc = InstanceDoc {
                name: name.clone(),
                uuid: crate::ids::new_uuid(),
                instance_id: inst.id.clone(),
                zone: req.availability_zone.clone(),
                created_at: ops.now,
                blueprint_id: bp.id.to_string(),
                bundle_id: bundle.id.to_string(),
                tags: tags.clone(),
            };
            recs.push(put(KIND_INSTANCE, row_id(ctx, name), ctx, &doc)?);
            ops.add(name, "Instance", &doc.zone, "CreateInstance", None, Track::Done);
        }
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {
            let _ = self.engine.terminate_instances(&sh, &ids, false);
        })?;
        Ok(ops.answer(true))
    }

    pub fn get_instance(&self, ctx: &Ctx, name: &str) -> Result<Instance> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_instance(&st, ctx, name)?;
        self.instance_view(&st, ctx, &d).ok_or_else(|| not_found(format!("The Instance does not exist: {name}")))
    }

    pub fn get_instances(&self, ctx: &Ctx, page_token: Option<&str>) -> Result<LsPage<Instance>> {
        self.list_page(ctx, KIND_INSTANCE, page_token, |st, d: &InstanceDoc| {
            st.instances.get(&d.instance_id).filter(|i| i.state != InstanceState::Terminated)?;
            self.instance_view(st, ctx, d)
        })
    }

    pub fn delete_instance(&self, ctx: &Ctx, name: &str) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let (d, attached) = {
            let mut st = self.engine.lock();
            self.settle(&mut st, ctx);
            let d = self.need_instance(&st, ctx, name)?;
            let inst = st.instances.get(&d.instance_id).cloned();
            if let Some(inst) = &inst
                && let Some(sys) = self.system_volume(&st, inst)
                && Engine::volume_has_pending_snapshot(&st, &sys.id)
            {
                return Err(failure(format!(
                    "A snapshot of the system disk of instance {name} is still pending: delete the instance once it has completed."
                )));
            }
            let attached: Vec<(String, String)> = rows(&st, KIND_DISK, ctx, None)
                .into_iter()
                .filter_map(|r| parse::<DiskDoc>(r).ok())
                .filter(|dd| {
                    st.volumes
                        .get(&dd.volume_id)
                        .is_some_and(|v| v.attachments.iter().any(|a| a.instance_id == d.instance_id))
                })
                .map(|dd| (dd.name, dd.zone))
                .collect();
            (d, attached)
        };
        let sh = lightsail_principal(ctx);
        self.engine.terminate_instances(&sh, std::slice::from_ref(&d.instance_id), false).map_err(to_lightsail)?;
        let mut ops = Ops::new(ctx);
        for (disk, zone) in &attached {
            ops.add(disk, "Disk", zone, "DetachDisk", Some(name), Track::Done);
            ops.add(name, "Instance", &d.zone, "DetachDisk", Some(disk), Track::Done);
        }
        ops.add(name, "Instance", &d.zone, "DeleteInstance", None, Track::Done);
        let mut recs = vec![Rec::DeleteDoc(KIND_INSTANCE, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {})?;
        // Detaching answers "Started" as the documented example does; the deletion is done.
        let n = ops.list.len();
        Ok(ops.list.iter().enumerate().map(|(k, o)| if k + 1 < n { o.started() } else { o.clone() }).collect())
    }

    // ---- disk snapshots ----------------------------------------------------------------------

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
                    (d.volume_id, dn.clone(), "Disk", d.zone, Some((dn.clone(), a)), None)
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
                    (sys.id.clone(), iname.clone(), "Instance", i.zone, None, Some((iname.clone(), a)))
                }
                (None, None) => return Err(invalid("One of diskName or instanceName is required.")),
            };
            if let Some(v) = st.volumes.get(&vid)
                && !matches!(v.state, VolumeState::Available | VolumeState::InUse)
            {
                return Err(failure(format!(
                    "The {} {source} is {}: it can be snapshotted once it is available.",
                    if rtype == "Disk" { "disk" } else { "system disk of instance" },
                    disk_state(v)
                )));
            }
            (vid, source, rtype, zone, from_disk, from_instance)
        };
        let sh = lightsail_principal(ctx);
        let snap = self
            .engine
            .create_snapshot(
                &sh,
                CreateSnapshot {
                    volume_id: volume_id.clone(),
                    description: Some(format!("Lightsail disk snapshot {name}")),
                    ..Default::default()
                },
            )
            .map_err(to_lightsail)?;
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
        ops.add(&name, "DiskSnapshot", ALL_ZONES, "CreateDiskSnapshot", Some(&source), track());
        ops.add(&source, rtype, &zone, "CreateDiskSnapshot", Some(&name), track());
        let mut recs = vec![put(KIND_DISK_SNAPSHOT, row_id(ctx, &name), ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {
            tracing::warn!(snapshot_id = snap.id, "a Lightsail disk snapshot's record could not be written");
        })?;
        Ok(ops.answer(true))
    }

    pub fn get_disk_snapshot(&self, ctx: &Ctx, name: &str) -> Result<DiskSnapshot> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_disk_snapshot(&st, ctx, name)?;
        self.disk_snapshot_view(&st, ctx, &d)
            .ok_or_else(|| not_found(format!("The DiskSnapshot does not exist: {name}")))
    }

    pub fn get_disk_snapshots(&self, ctx: &Ctx, page_token: Option<&str>) -> Result<LsPage<DiskSnapshot>> {
        self.list_page(ctx, KIND_DISK_SNAPSHOT, page_token, |st, d| self.disk_snapshot_view(st, ctx, d))
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
        ops.add(name, "DiskSnapshot", ALL_ZONES, "DeleteDiskSnapshot", None, Track::Done);
        let mut recs = vec![Rec::DeleteDoc(KIND_DISK_SNAPSHOT, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        // The snapshot row and its name go in one transaction.
        self.engine
            .delete_snapshots_with(&sh, std::slice::from_ref(&d.snapshot_id), recs, false)
            .map_err(to_lightsail)?;
        Ok(ops.answer(false))
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
        let snaps = self
            .engine
            .create_snapshots(
                &sh,
                CreateSnapshots {
                    instance_id: i.instance_id.clone(),
                    description: Some(format!("Lightsail instance snapshot {name}")),
                    ..Default::default()
                },
            )
            .map_err(to_lightsail)?;
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
            "InstanceSnapshot",
            ALL_ZONES,
            "CreateInstanceSnapshot",
            Some(&iname),
            Track::Snapshots(ids.clone()),
        );
        ops.add(&iname, "Instance", &i.zone, "CreateInstanceSnapshot", Some(&name), Track::Snapshots(ids));
        let mut recs = vec![put(KIND_INSTANCE_SNAPSHOT, row_id(ctx, &name), ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.commit_or(recs, || {
            tracing::warn!(name, "a Lightsail instance snapshot's record could not be written");
        })?;
        Ok(ops.answer(true))
    }

    pub fn get_instance_snapshot(&self, ctx: &Ctx, name: &str) -> Result<InstanceSnapshot> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_instance_snapshot(&st, ctx, name)?;
        self.instance_snapshot_view(&st, ctx, &d)
            .ok_or_else(|| not_found(format!("The InstanceSnapshot does not exist: {name}")))
    }

    pub fn get_instance_snapshots(&self, ctx: &Ctx, page_token: Option<&str>) -> Result<LsPage<InstanceSnapshot>> {
        self.list_page(ctx, KIND_INSTANCE_SNAPSHOT, page_token, |st, d| self.instance_snapshot_view(st, ctx, d))
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
        ops.add(name, "InstanceSnapshot", ALL_ZONES, "DeleteInstanceSnapshot", None, Track::Done);
        let mut recs = vec![Rec::DeleteDoc(KIND_INSTANCE_SNAPSHOT, row_id(ctx, name))];
        recs.extend(ops.recs()?);
        // Every disk's snapshot and the name go in one transaction: a crash never leaves half of it.
        self.engine.delete_snapshots_with(&sh, &ids, recs, false).map_err(to_lightsail)?;
        Ok(ops.answer(false))
    }

    // ---- operations --------------------------------------------------------------------------

    pub fn get_operation(&self, ctx: &Ctx, id: &str) -> Result<Operation> {
        self.check_region(ctx)?;
        let mut st = self.engine.lock();
        self.settle(&mut st, ctx);
        let suffix = format!("-{id}");
        rows(&st, KIND_OPERATION, ctx, None)
            .into_iter()
            .find(|r| r.id.ends_with(&suffix))
            .map(parse::<Operation>)
            .transpose()?
            .ok_or_else(|| not_found(format!("The Operation does not exist: {id}")))
    }

    /// Operations oldest first, optionally of one resource name.
    pub fn get_operations(
        &self,
        ctx: &Ctx,
        resource: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<LsPage<Operation>> {
        self.check_region(ctx)?;
        if let Some(n) = resource {
            check_name("resourceName", n)?;
        }
        let after = page_token.map(decode_token).transpose()?;
        let mut st = self.engine.lock();
        self.settle(&mut st, ctx);
        let p = prefix(ctx);
        let mut items: Vec<(String, Operation)> = Vec::new();
        for r in rows(&st, KIND_OPERATION, ctx, after.as_deref()) {
            let op = parse::<Operation>(r)?;
            if resource.is_some_and(|n| op.resource_name != n) {
                continue;
            }
            items.push((r.id[p.len()..].to_string(), op));
            if items.len() > OPERATIONS_PAGE_SIZE {
                break;
            }
        }
        if let Some(n) = resource
            && items.is_empty()
            && after.is_none()
            && !self.name_exists(&st, ctx, n)?
        {
            return Err(not_found(format!("No resource named {n} exists in {}.", ctx.region)));
        }
        let p = page(items, OPERATIONS_PAGE_SIZE, |(k, _)| k.clone());
        Ok(LsPage { items: p.items.into_iter().map(|(_, o)| o).collect(), next_page_token: p.next_page_token })
    }

    fn name_exists(&self, st: &State, ctx: &Ctx, name: &str) -> Result<bool> {
        Ok(self.disk_doc(st, ctx, name)?.is_some()
            || self.instance_doc(st, ctx, name)?.is_some()
            || self.disk_snapshot_doc(st, ctx, name)?.is_some()
            || self.instance_snapshot_doc(st, ctx, name)?.is_some())
    }

    // ---- tags --------------------------------------------------------------------------------

    /// The tagged resource a name (and optional ARN) designates: (kind, resource type, row id, zone, document).
    fn taggable(
        &self,
        st: &State,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
    ) -> Result<(&'static str, &'static str, String, String, serde_json::Value)> {
        check_name("resourceName", name)?;
        let mut found = Vec::new();
        if let Some(d) = self.disk_doc(st, ctx, name)? {
            found.push((KIND_DISK, "Disk", arn(ctx, "Disk", &d.uuid), d.zone.clone()));
        }
        if let Some(d) = self.instance_doc(st, ctx, name)? {
            found.push((KIND_INSTANCE, "Instance", arn(ctx, "Instance", &d.uuid), d.zone.clone()));
        }
        if let Some(d) = self.disk_snapshot_doc(st, ctx, name)? {
            found.push((KIND_DISK_SNAPSHOT, "DiskSnapshot", arn(ctx, "DiskSnapshot", &d.uuid), ALL_ZONES.into()));
        }
        if let Some(d) = self.instance_snapshot_doc(st, ctx, name)? {
            found.push((
                KIND_INSTANCE_SNAPSHOT,
                "InstanceSnapshot",
                arn(ctx, "InstanceSnapshot", &d.uuid),
                ALL_ZONES.into(),
            ));
        }
        if let Some(a) = want_arn {
            found.retain(|f| f.2 == a);
            if found.is_empty() {
                return Err(not_found(format!("No resource named {name} has the ARN {a}.")));
            }
        }
        match found.len() {
            0 => Err(not_found(format!("No taggable resource named {name} exists in {}.", ctx.region))),
            1 => {
                let (kind, rtype, _, zone) = found.remove(0);
                let id = row_id(ctx, name);
                let doc = st
                    .docs
                    .get(kind)
                    .and_then(|m| m.get(&id))
                    .map(|r| serde_json::from_str::<serde_json::Value>(&r.doc))
                    .transpose()?
                    .ok_or_else(|| not_found(format!("No taggable resource named {name} exists.")))?;
                Ok((kind, rtype, id, zone, doc))
            }
            _ => Err(invalid(format!(
                "Several resources are named {name} ({}): pass resourceArn to choose one.",
                found.iter().map(|f| f.1).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn retag(
        &self,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
        op_type: &str,
        f: impl FnOnce(&mut Tags) -> Result<()>,
    ) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let mut st = self.engine.lock();
        let (kind, rtype, id, zone, mut doc) = self.taggable(&st, ctx, name, want_arn)?;
        let mut tags: Tags = match doc.get("tags") {
            Some(t) => serde_json::from_value(t.clone())?,
            None => Tags::new(),
        };
        f(&mut tags)?;
        doc["tags"] = serde_json::to_value(&tags)?;
        let mut ops = Ops::new(ctx);
        ops.add(name, rtype, &zone, op_type, None, Track::Done);
        let mut recs = vec![put(kind, id, ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.engine.commit(&mut st, recs)?;
        Ok(ops.answer(false))
    }

    pub fn tag_resource(&self, ctx: &Ctx, name: &str, want_arn: Option<&str>, tags: &[Tag]) -> Result<Vec<Operation>> {
        if tags.is_empty() {
            return Err(invalid("tags must contain at least one tag."));
        }
        let add = check_tags(tags)?;
        self.retag(ctx, name, want_arn, "TagResource", |current| {
            current.extend(add);
            if current.len() > MAX_TAGS {
                return Err(invalid(format!(
                    "A resource can have at most {MAX_TAGS} tags: {name} would have {}.",
                    current.len()
                )));
            }
            Ok(())
        })
    }

    pub fn untag_resource(
        &self,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
        keys: &[String],
    ) -> Result<Vec<Operation>> {
        if keys.is_empty() {
            return Err(invalid("tagKeys must name at least one tag key."));
        }
        self.retag(ctx, name, want_arn, "UntagResource", |current| {
            for k in keys {
                current.remove(k);
            }
            Ok(())
        })
    }

    // ---- catalogues --------------------------------------------------------------------------

    /// The Lightsail regions this endpoint serves.
    pub fn regions(&self, include_zones: bool) -> Vec<RegionInfo> {
        LIGHTSAIL_REGIONS
            .iter()
            .filter(|r| self.engine.regions().iter().any(|s| s == r.0))
            .map(|r| RegionInfo {
                name: r.0,
                display_name: r.1,
                continent_code: r.2,
                description: r.3,
                zones: if include_zones { crate::regions::zones(r.0) } else { vec![] },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["Disk-1", "ab", "WordPress_Multisite-1", "_x", "a1"] {
            assert!(check_name("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "-ab", "ab-", "a b", "a.b", "dísk", &"a".repeat(256)] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        let t = |k: &str, v: &str| Tag { key: k.into(), value: v.into() };
        assert!(check_tags(&[t("env", "prod"), t("a b+-=._:/@", "ünïcode 1")]).is_ok());
        assert!(check_tags(&[t("", "x")]).is_err());
        assert!(check_tags(&[t(&"k".repeat(129), "")]).is_err());
        assert!(check_tags(&[t(&"k".repeat(128), &"v".repeat(256))]).is_ok());
        assert!(check_tags(&[t("k", &"v".repeat(257))]).is_err());
        assert!(check_tags(&[t("k!", "")]).is_err());
        assert!(check_tags(&[t("k", "v#")]).is_err());
        assert!(check_tags(&[t("aws:x", "")]).is_err());
        let many: Vec<Tag> = (0..51).map(|i| t(&format!("k{i}"), "")).collect();
        assert!(check_tags(&many).is_err());
    }

    #[test]
    fn errors_map_to_lightsail() {
        let m = |c: &'static str| to_lightsail(EngineError::client(c, "x")).code();
        assert_eq!(m("InvalidVolume.NotFound"), NOT_FOUND);
        assert_eq!(m("IncorrectState"), OPERATION_FAILURE);
        assert_eq!(m("InvalidParameterValue"), INVALID_INPUT);
        assert_eq!(m("NotFoundException"), NOT_FOUND);
    }

    #[test]
    fn tokens_round_trip() {
        assert_eq!(decode_token(&encode_token("Disk-1")).unwrap(), "Disk-1");
        assert!(decode_token("nope").is_err());
    }
}
