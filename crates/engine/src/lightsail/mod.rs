//! Lightsail's view of the engine: disks are volumes, instances are instances, disk snapshots are
//! snapshots, all addressed by name; operations are views of the calls and of the jobs behind them.
//! This is the domain only: names, rules, records and typed results. Every wire name (exception
//! names, state strings, progress text, page tokens, the answered status of an operation) is the
//! front end's, in `crates/api/src/lightsail/`.
//!
//! One file per responsibility: `records.rs` (the catalog documents and their keys), `views.rs`
//! (the typed results and how they are built from records and engine objects), `disks.rs`,
//! `instances.rs`, `snapshots.rs` (disk and instance snapshots), `operations.rs` (recording and
//! settling operations), `tags.rs`, `catalogue.rs` (built-in blueprints, bundles and regions),
//! `validate.rs` (names, zones, sizes).
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
//! `ls_operation` (the document formats are the `*Doc` structs in `records.rs` and [`Operation`];
//! every later field must be `#[serde(default)]`). Row ids are `<account>/<region>/<name>` (names
//! are unique per account, region and resource type) and `<account>/<region>/<millis>-<seq>-<uuid>`
//! for operations, so a prefix range lists one account's resources by name and its operations
//! oldest first.
//!
//! ## Atomicity
//! A mutation runs the engine call (which takes and releases the engine lock and commits the
//! engine object), then commits the Lightsail documents; if that commit fails the engine call is
//! undone (volume deleted, instances terminated). One account's Lightsail mutations are serialised
//! by a claim on the account (`Lightsail::serialise`, bounded wait) so that "name is free" and
//! "name is taken" cannot interleave; other accounts go on. It cannot be the engine lock: the
//! engine calls in between take that lock themselves and may wait (a snapshot's cut). EC2 calls
//! cannot touch the Lightsail principal's objects, so nothing else races with them. A process
//! killed between the two commits leaves an engine object no document names: invisible to both
//! APIs, never a name without its object (documents whose engine object is gone are ignored and
//! their names reusable).
//!
//! ## NBD
//! A disk's `supportCode` is `<account>/<vol-…>`: the volume id is the disk's NBD export (served
//! while the disk is attached). A disk snapshot's `supportCode` is `<account>/<snap-…>`: the
//! read-only NBD export of the completed snapshot. Instance snapshots name each disk's snapshot the
//! same way in `fromAttachedDisks[].supportCode` (system disk: the instance snapshot's own code).

mod catalogue;
mod disks;
mod instances;
mod operations;
mod records;
mod snapshots;
mod tags;
mod validate;
mod views;

pub use catalogue::{BLUEPRINTS, BUNDLES, Blueprint, Bundle, RegionInfo, blueprint, bundle};
pub use disks::{CreateDisk, CreateDiskFromSnapshot};
pub use instances::CreateInstances;
pub use operations::{Operation, OperationStatus, OperationType, ResourceType, Track};
pub use snapshots::{CreateDiskSnapshot, CreateInstanceSnapshot};
pub use tags::check_tags;
pub use validate::check_name;
pub use views::{Disk, DiskSnapshot, DiskState, Instance, InstanceSnapshot, InstanceSnapshotState, Location, LsPage};

pub(crate) use operations::PendingOperations;

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, ErrorClass, Result};
use crate::model::Ctx;

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

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::classed(ErrorClass::InvalidInput, msg)
}
fn not_found(msg: impl Into<String>) -> EngineError {
    EngineError::classed(ErrorClass::NotFound, msg)
}
fn failure(msg: impl Into<String>) -> EngineError {
    EngineError::classed(ErrorClass::OperationFailure, msg)
}

/// The engine principal that owns an account's Lightsail resources.
pub fn lightsail_principal(ctx: &Ctx) -> Ctx {
    Ctx { account: format!("{}:lightsail", ctx.account), region: ctx.region.clone() }
}

/// How long a Lightsail mutation waits for another one of the same account (which may be taking a
/// snapshot, itself bounded by the volume drain timeout).
const SERIALISE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Lightsail's view of an engine: `engine.lightsail()`.
pub struct Lightsail<'a> {
    engine: &'a Engine,
}

impl Engine {
    pub fn lightsail(&self) -> Lightsail<'_> {
        Lightsail { engine: self }
    }
}

impl Lightsail<'_> {
    /// Serialises one account's Lightsail mutations (name checks and the commits that take the
    /// names); other accounts go on.
    fn serialise(&self, ctx: &Ctx) -> Result<blocksnap_volume::Claim<'_>> {
        let key = [format!("lightsail:{}", ctx.account)];
        let deadline = std::time::Instant::now() + SERIALISE_TIMEOUT;
        self.engine.jobs.claims.claim(&key, deadline).ok_or_else(|| {
            EngineError::classed(
                ErrorClass::Busy,
                "Another Lightsail request of this account is still running; retry in a few seconds.",
            )
        })
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
}
