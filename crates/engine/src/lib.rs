//! The blocksnap engine: the domain. Accounts, regions, volumes, instances, attachments, tags and
//! keys, their state machines and the semantic validation of typed requests. It never sees HTTP,
//! XML, JSON or NBD bytes; its errors are [`EngineError`]s that map 1:1 to AWS error codes.

#![forbid(unsafe_code)]

mod accounts;
pub mod archive;
pub mod clock;
mod copy;
mod credentials;
mod data;
mod describe;
pub mod dlm;
pub mod ebs;
mod engine;
mod error;
mod filter;
pub mod ids;
mod instances;
mod keys;
mod kms;
pub mod lightsail;
pub mod lineage;
pub mod model;
pub mod page_token;
pub mod recycle_bin;
pub mod regions;
mod settings;
mod snapshot_locks;
mod snapshots;
mod tags;
mod volumes;

pub use accounts::DeletedAccount;
pub use copy::{COPY_VOLUME_ID, CopySnapshot, MAX_CONCURRENT_COPIES};
pub use credentials::{
    DescribeNbdEndpoints, ExportKind, MAX_NBD_CREDENTIALS, MAX_NBD_ENDPOINT_IDS, NbdAdvertise, NbdCredential,
    NbdCredentialInfo, NbdEndpoint, NbdExportInfo, NbdHost,
};
pub use data::{
    Figures, GcStatus, HISTORY_LEN, RegionUsage, Sample, SnapshotReader, StoreStats, StoreUsage, UsageScope,
};
pub use describe::{IMAGES as DESCRIBE_IMAGES_LIMITS, ListQuery, Page, page_of};
pub use engine::{Engine, EngineConfig, ExportHooks, Storage};
pub use error::{EngineError, ErrorClass, Result};
pub use filter::{Filter, glob};
pub use instances::{
    BlockDeviceMappingSpec, EbsSpec, InstanceView, MAX_INSTANCES_PER_CALL, Reservation, RunInstances, StateChange,
};
pub use keys::AccessKeyInfo;
pub use kms::{AliasInfo, DEFAULT_EBS_ALIAS};
pub use snapshot_locks::{LockMode, LockSnapshot, LockedSnapshotInfo};
pub use snapshots::{CreateSnapshot, CreateSnapshots, DescribeSnapshots, MAX_PENDING_PER_VOLUME, PermissionChange};
pub use tags::{TagDescription, TagSelector, TagSpec};
pub use volumes::{
    AttachmentInfo, CreateVolume, DetachVolume, GIB, ModifyVolume, VolumeModification, VolumeStatus, format_time,
};
