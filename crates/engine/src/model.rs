//! The engine's records. They are serialised as the catalog's row documents, so every field added
//! later must be `#[serde(default)]` to keep old catalogs readable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: what AWS timestamps resolve to.
pub type Millis = i64;

/// The engine's time (see [`crate::clock`]: the wall clock, moved only by a test clock).
pub fn now_millis() -> Millis {
    crate::clock::now_millis()
}

/// Tags keep key order so responses are stable.
pub type Tags = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub created: Millis,
    /// When the account was deleted (`DeleteAccount`): it keeps its row (its id is never reused) but
    /// has no keys or NBD credentials and none can be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Millis>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account: String,
}

/// Who is calling and where: the engine's view of an authenticated request.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub account: String,
    pub region: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
    Detached,
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
            AttachState::Detached => "detached",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    pub instance_id: String,
    pub device: String,
    pub state: AttachState,
    pub attach_time: Millis,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub account: String,
    pub region: String,
    pub availability_zone: String,
    pub size_gib: u32,
    pub volume_type: String,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: bool,
    /// The KMS key ARN for encrypted volumes.
    pub kms_key_id: Option<String>,
    /// The snapshot this volume was created from ("" in responses when none, as AWS does).
    pub snapshot_id: Option<String>,
    pub multi_attach_enabled: bool,
    pub state: VolumeState,
    pub create_time: Millis,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub client_token: Option<String>,
    /// Fingerprint of the request that created it, to detect ClientToken reuse with other parameters.
    #[serde(default)]
    pub request_fingerprint: Option<String>,
    /// Encrypted volumes: the lineage's data key wrapped under the KMS key (hex) and its id.
    #[serde(default)]
    pub wrapped_data_key: Option<String>,
    #[serde(default)]
    pub data_key_id: Option<String>,
    /// Restore from a snapshot still running (blocks copied so far / total), if any.
    #[serde(default)]
    pub restore: Option<RestoreProgress>,
    /// The latest ModifyVolume, as DescribeVolumesModifications reports it.
    #[serde(default)]
    pub last_modification: Option<crate::volumes::VolumeModification>,
    /// The cluster node whose data dir holds the bytes (`--node-id`); `None`: the single node's
    /// (rows written before clustering, or by a server without `--node-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its bytes are gone for good: its node's data dir was lost and the node was started again on
    /// a new one (`--replace-node`). Never served again; only deleting it (and restoring its
    /// snapshots as new volumes) is left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }
    /// The numeric code EC2 sends beside the name.
    pub fn code(self) -> u32 {
        match self {
            InstanceState::Pending => 0,
            InstanceState::Running => 16,
            InstanceState::ShuttingDown => 32,
            InstanceState::Terminated => 48,
            InstanceState::Stopping => 64,
            InstanceState::Stopped => 80,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub account: String,
    pub region: String,
    pub availability_zone: String,
    pub image_id: String,
    pub instance_type: String,
    pub state: InstanceState,
    pub state_reason: Option<String>,
    pub launch_time: Millis,
    pub root_device_name: String,
    pub reservation_id: String,
    pub ami_launch_index: u32,
    pub private_ip: String,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// A KMS key of the built-in KMS. Only metadata lives here; key material arrives with encryption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsKey {
    pub key_id: String,
    pub account: String,
    pub region: String,
    pub arn: String,
    pub description: String,
    pub aliases: Vec<String>,
    pub created: Millis,
    /// AWS-managed (`alias/aws/ebs`) or customer-managed.
    pub aws_managed: bool,
    /// 256-bit key material (hex) that wraps data keys. Never leaves the process in responses.
    #[serde(default)]
    pub material: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub tags: Tags,
}

fn default_true() -> bool {
    true
}

/// Per account and region settings (EBS encryption by default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegionSettings {
    pub ebs_encryption_by_default: bool,
    /// Customer-chosen default key ARN; `None` means `alias/aws/ebs`.
    pub default_kms_key: Option<String>,
}

/// A built-in machine image: instances exist to own attachments, so an image is a name, a root
/// device and a root volume size.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub architecture: &'static str,
    pub root_device_name: &'static str,
    pub root_size_gib: u32,
    pub platform_details: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// The kinds of tagged resources, as EC2 names them in `resourceType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Volume,
    Instance,
    Snapshot,
    Image,
}

impl ResourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Volume => "volume",
            ResourceType::Instance => "instance",
            ResourceType::Snapshot => "snapshot",
            ResourceType::Image => "image",
        }
    }
    pub fn from_id(id: &str) -> Option<Self> {
        match id.split('-').next()? {
            "vol" => Some(ResourceType::Volume),
            "i" => Some(ResourceType::Instance),
            "snap" => Some(ResourceType::Snapshot),
            "ami" => Some(ResourceType::Image),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub account: String,
    pub region: String,
    /// The source volume (for copies, the arbitrary id AWS uses: `vol-ffffffff`).
    pub volume_id: String,
    pub volume_size_gib: u32,
    pub state: SnapshotState,
    #[serde(default)]
    pub state_message: Option<String>,
    /// 0..=100.
    pub progress: u8,
    pub start_time: Millis,
    #[serde(default)]
    pub completion_time: Option<Millis>,
    pub description: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub tags: Tags,
    /// The snapshot this one is incremental against (same volume lineage), if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// The volume's change-tracking epoch this snapshot froze (pending snapshots only).
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Accounts (or "all") that may create volumes from this snapshot.
    #[serde(default)]
    pub create_volume_permissions: Vec<String>,
    /// The lineage data key wrapped under the KMS key (hex), for encrypted snapshots.
    #[serde(default)]
    pub wrapped_data_key: Option<String>,
    #[serde(default)]
    pub data_encryption_key_id: Option<String>,
    /// Bytes this snapshot added to the store (what it costs beyond its parent).
    #[serde(default)]
    pub stored_bytes: u64,
    /// Blocks the uploader must read (the frozen changed set), for progress.
    #[serde(default)]
    pub blocks_total: u64,
    /// Instance of a multi-volume set (CreateSnapshots), if any.
    #[serde(default)]
    pub instance_set: Option<String>,
    /// For copies: the source snapshot (region/id) being copied.
    #[serde(default)]
    pub source_snapshot: Option<String>,
    /// For snapshots written block by block (EBS direct APIs `StartSnapshot`).
    #[serde(default)]
    pub direct: Option<DirectWrite>,
    /// Archive tier: the last archive or restore and where the snapshot's blocks are (`None`:
    /// never archived, standard tier).
    #[serde(default)]
    pub tiering: Option<crate::archive::Tiering>,
}

impl Snapshot {
    /// How far the snapshot is, in percent: 100 once completed, at most 99 before.
    pub fn percent_done(&self) -> u8 {
        if self.state == SnapshotState::Completed { 100 } else { self.progress.min(99) }
    }

    /// The progress as every API writes it (EC2's `progress` and its filter, Lightsail's): `"42%"`.
    pub fn progress_text(&self) -> String {
        progress_text(self.percent_done())
    }
}

/// A percentage as the AWS APIs write progress: `"42%"`. The one implementation.
pub fn progress_text(percent: u8) -> String {
    format!("{percent}%")
}

/// A snapshot written through the EBS direct APIs: what its pending life needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirectWrite {
    /// When a still-pending snapshot moves to `error` (StartSnapshot's `Timeout`).
    pub deadline: Millis,
    pub timeout_minutes: u32,
    #[serde(default)]
    pub client_token: Option<String>,
    /// Fingerprint of the StartSnapshot request, to detect ClientToken reuse with other parameters.
    #[serde(default)]
    pub fingerprint: String,
    /// CompleteSnapshot accepted (count and checksum verified): the manifest is being written; a
    /// restart finishes it.
    #[serde(default)]
    pub completing: bool,
    /// The parent's blocks are in another encryption lineage (or none): they are re-encoded at
    /// completion instead of referenced.
    #[serde(default)]
    pub reencode_parent: bool,
}
