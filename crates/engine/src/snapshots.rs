//! Snapshots: CreateSnapshot / CreateSnapshots (one instant across volumes), DescribeSnapshots,
//! DeleteSnapshot, snapshot attributes (createVolumePermission), and volumes restored from snapshots.
//!
//! The control plane lives here: validation, the pending row, the state machine. The cut (write
//! gates, epoch swap) and the background upload are in `data.rs`.

use crate::describe::{self, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::ids;
use crate::model::*;
use crate::tags::{TagSpec, tags_for};

/// Pending snapshots one volume may have at once.
pub const MAX_PENDING_PER_VOLUME: usize = 5;
/// Snapshots one account may have per region.
pub const MAX_SNAPSHOTS_PER_REGION: usize = 100_000;

#[derive(Debug, Clone, Default)]
pub struct CreateSnapshot {
    pub volume_id: String,
    pub description: Option<String>,
    pub tag_specifications: Vec<TagSpec>,
    pub location: Option<String>,
    pub outpost_arn: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default)]
pub struct CreateSnapshots {
    pub instance_id: String,
    pub exclude_boot_volume: bool,
    pub exclude_data_volume_ids: Vec<String>,
    pub description: Option<String>,
    pub tag_specifications: Vec<TagSpec>,
    pub copy_tags_from_source: Option<String>,
    pub outpost_arn: Option<String>,
    pub location: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DescribeSnapshots {
    pub query: ListQuery,
    pub owner_ids: Vec<String>,
    pub restorable_by: Vec<String>,
}

/// createVolumePermission changes.
#[derive(Debug, Clone, Default)]
pub struct PermissionChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

const SNAPSHOT_FILTERS: &[&str] = &[
    "description",
    "encrypted",
    "owner-alias",
    "owner-id",
    "progress",
    "snapshot-id",
    "start-time",
    "status",
    "storage-tier",
    "volume-id",
    "volume-size",
    "kms-key-id",
];

impl Filterable for Snapshot {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "description" => vec![self.description.clone()],
            "encrypted" => vec![self.encrypted.to_string()],
            "owner-alias" => vec![],
            "owner-id" => vec![self.account.clone()],
            "progress" => vec![self.progress_text()],
            "snapshot-id" => vec![self.id.clone()],
            "start-time" => vec![crate::volumes::format_time(self.start_time)],
            "status" => vec![self.state.as_str().into()],
            "storage-tier" => vec![crate::archive::storage_tier(self).into()],
            "volume-id" => vec![self.volume_id.clone()],
            "volume-size" => vec![self.volume_size_gib.to_string()],
            "kms-key-id" => self.kms_key_id.clone().into_iter().collect(),
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

fn check_description(d: &Option<String>) -> Result<String> {
    let d = d.clone().unwrap_or_default();
    if d.chars().count() > 255 {
        return Err(EngineError::invalid_value("The snapshot description must be at most 255 characters."));
    }
    Ok(d)
}

fn check_location(location: &Option<String>, outpost: &Option<String>) -> Result<()> {
    if outpost.is_some() {
        return Err(EngineError::invalid_value("Outposts are not available in blocksnap: OutpostArn cannot be used."));
    }
    match location.as_deref() {
        None | Some("regional") => Ok(()),
        Some("local") => Err(EngineError::invalid_value(
            "Location 'local' is only for volumes in a Local Zone; blocksnap volumes are regional.",
        )),
        Some(other) => Err(EngineError::invalid_value(format!(
            "Value ({other}) for parameter location is invalid. Valid values: regional, local"
        ))),
    }
}

impl Engine {
    /// A snapshot the caller owns (for mutations).
    pub(crate) fn own_snapshot<'a>(&self, st: &'a State, ctx: &Ctx, id: &str) -> Result<&'a Snapshot> {
        if !ids::is_valid("snap", id) {
            return Err(EngineError::client(
                "InvalidSnapshotID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
            ));
        }
        st.snapshots.get(id).filter(|s| s.account == ctx.account && s.region == ctx.region).ok_or_else(|| {
            EngineError::client("InvalidSnapshot.NotFound", format!("The snapshot '{id}' does not exist."))
        })
    }

    /// A snapshot the caller may read (own, shared with the account, or public).
    pub(crate) fn visible_snapshot<'a>(&self, st: &'a State, ctx: &Ctx, id: &str) -> Result<&'a Snapshot> {
        if !ids::is_valid("snap", id) {
            return Err(EngineError::client(
                "InvalidSnapshotID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
            ));
        }
        st.snapshots.get(id).filter(|s| s.region == ctx.region && can_see(s, &ctx.account)).ok_or_else(|| {
            EngineError::client("InvalidSnapshot.NotFound", format!("The snapshot '{id}' does not exist."))
        })
    }

    fn check_snapshot_limits(&self, st: &State, ctx: &Ctx, volume_ids: &[&str], adding: usize) -> Result<()> {
        for vid in volume_ids {
            let pending = st
                .snapshots
                .values()
                .filter(|s| s.volume_id == *vid && s.state == SnapshotState::Pending && s.account == ctx.account)
                .count();
            if pending >= MAX_PENDING_PER_VOLUME {
                // The per-volume limit of pending snapshots; `SnapshotLimitExceeded` is the
                // account's limit (below), as the EC2 error codes document them.
                return Err(EngineError::client(
                    "ConcurrentSnapshotLimitExceeded",
                    format!(
                        "Volume {vid} already has {pending} pending snapshots; the maximum is {MAX_PENDING_PER_VOLUME}. Wait for one to complete."
                    ),
                ));
            }
        }
        let total = st.snapshots.values().filter(|s| s.account == ctx.account && s.region == ctx.region).count();
        if total + adding > MAX_SNAPSHOTS_PER_REGION {
            return Err(EngineError::client(
                "SnapshotLimitExceeded",
                format!("The maximum number of snapshots per region ({MAX_SNAPSHOTS_PER_REGION}) has been reached."),
            ));
        }
        Ok(())
    }

    /// The newest snapshot of a volume that is not in error: the parent of the next one.
    pub(crate) fn lineage_parent(st: &State, volume: &Volume) -> Option<String> {
        st.snapshots
            .values()
            .filter(|s| s.volume_id == volume.id && s.account == volume.account && s.state != SnapshotState::Error)
            .max_by_key(|s| (s.start_time, s.epoch))
            .map(|s| s.id.clone())
            // The snapshot it was restored from, while it exists (deleted, its blocks may be gone:
            // the deletion marked the whole volume changed, see `delete_snapshots_with`).
            .or_else(|| volume.snapshot_id.clone().filter(|id| st.snapshots.contains_key(id)))
    }

    fn new_snapshot(&self, st: &State, v: &Volume, description: String, tags: Tags, now: Millis) -> Snapshot {
        let mut id = ids::new_id("snap");
        while st.snapshots.contains_key(&id) {
            id = ids::new_id("snap");
        }
        Snapshot {
            id,
            account: v.account.clone(),
            region: v.region.clone(),
            volume_id: v.id.clone(),
            volume_size_gib: v.size_gib,
            state: SnapshotState::Pending,
            state_message: None,
            progress: 0,
            start_time: now,
            completion_time: None,
            description,
            encrypted: v.encrypted,
            kms_key_id: v.kms_key_id.clone(),
            tags,
            parent: Self::lineage_parent(st, v),
            epoch: None,
            create_volume_permissions: vec![],
            wrapped_data_key: v.wrapped_data_key.clone(),
            data_encryption_key_id: v.data_key_id.clone(),
            stored_bytes: 0,
            blocks_total: 0,
            instance_set: None,
            tiering: None,
            source_snapshot: None,
            direct: None,
        }
    }

    pub fn create_snapshot(&self, ctx: &Ctx, req: CreateSnapshot) -> Result<Snapshot> {
        self.create_snapshot_tagged(ctx, req, Tags::new())
    }

    /// CreateSnapshot with tags the engine itself adds (e.g. DLM's `aws:dlm:*`), unchecked.
    pub(crate) fn create_snapshot_tagged(&self, ctx: &Ctx, req: CreateSnapshot, extra: Tags) -> Result<Snapshot> {
        check_location(&req.location, &req.outpost_arn)?;
        let description = check_description(&req.description)?;
        let mut tags = tags_for(&req.tag_specifications, ResourceType::Snapshot)?;
        tags.extend(extra);
        let mut snaps = self.cut_and_commit(|st| {
            let v = self.volume_of(st, ctx, &req.volume_id)?;
            if !matches!(v.state, VolumeState::Available | VolumeState::InUse) {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!("Volume '{}' is in the '{}' state and cannot be snapshotted.", v.id, v.state.as_str()),
                ));
            }
            self.check_snapshot_limits(st, ctx, &[&v.id], 1)?;
            if req.dry_run {
                return Err(EngineError::DryRun);
            }
            Ok(vec![self.new_snapshot(st, v, description.clone(), tags.clone(), now_millis())])
        })?;
        Ok(snaps.remove(0))
    }

    pub fn create_snapshots(&self, ctx: &Ctx, req: CreateSnapshots) -> Result<Vec<Snapshot>> {
        self.create_snapshots_tagged(ctx, req, Tags::new())
    }

    /// CreateSnapshots with tags the engine itself adds (e.g. DLM's `aws:dlm:*`), unchecked.
    pub(crate) fn create_snapshots_tagged(
        &self,
        ctx: &Ctx,
        req: CreateSnapshots,
        extra: Tags,
    ) -> Result<Vec<Snapshot>> {
        check_location(&req.location, &req.outpost_arn)?;
        let description = check_description(&req.description)?;
        let mut spec_tags = tags_for(&req.tag_specifications, ResourceType::Snapshot)?;
        spec_tags.extend(extra);
        match req.copy_tags_from_source.as_deref() {
            None | Some("volume") => {}
            Some(other) => {
                return Err(EngineError::invalid_value(format!(
                    "Value ({other}) for parameter CopyTagsFromSource is invalid. Valid value: volume"
                )));
            }
        }
        if req.exclude_data_volume_ids.len() > 40 {
            return Err(EngineError::invalid_value("ExcludeDataVolumeIds may name at most 40 volumes."));
        }
        let set = ids::new_id("cs");
        self.cut_and_commit(|st| {
            let inst = self.instance_of(st, ctx, &req.instance_id)?.clone();
            if matches!(inst.state, InstanceState::Terminated | InstanceState::ShuttingDown) {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!(
                        "The instance '{}' is {} and its volumes cannot be snapshotted.",
                        inst.id,
                        inst.state.as_str()
                    ),
                ));
            }
            let view = Self::view(st, &inst);
            let root_volume = view.block_devices.iter().find(|b| b.0 == inst.root_device_name).map(|b| b.1.clone());
            for ex in &req.exclude_data_volume_ids {
                self.volume_of(st, ctx, ex)?;
                if Some(ex) == root_volume.as_ref() {
                    return Err(EngineError::invalid_value(format!(
                        "The root volume {ex} cannot be named in ExcludeDataVolumeIds; use ExcludeBootVolume instead."
                    )));
                }
                if !view.block_devices.iter().any(|b| &b.1 == ex) {
                    return Err(EngineError::invalid_value(format!(
                        "The volume {ex} in ExcludeDataVolumeIds is not attached to instance {}.",
                        inst.id
                    )));
                }
            }
            let mut volumes: Vec<Volume> = view
                .block_devices
                .iter()
                .filter(|b| !(req.exclude_boot_volume && Some(&b.1) == root_volume.as_ref()))
                .filter(|b| !req.exclude_data_volume_ids.contains(&b.1))
                .filter_map(|b| st.volumes.get(&b.1).cloned())
                .collect();
            if volumes.is_empty() {
                return Err(EngineError::client(
                    "InvalidParameterCombination",
                    format!("Instance {} has no volumes left to snapshot after the exclusions.", inst.id),
                ));
            }
            // A fixed order (by volume id) for taking the write gates: no two cuts can deadlock.
            volumes.sort_by(|a, b| a.id.cmp(&b.id));
            let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
            self.check_snapshot_limits(st, ctx, &ids, volumes.len())?;
            if req.dry_run {
                return Err(EngineError::DryRun);
            }
            let now = now_millis();
            let snaps: Vec<Snapshot> = volumes
                .iter()
                .map(|v| {
                    let mut tags = if req.copy_tags_from_source.is_some() { v.tags.clone() } else { Tags::new() };
                    tags.extend(spec_tags.clone());
                    let mut s = self.new_snapshot(st, v, description.clone(), tags, now);
                    s.instance_set = Some(set.clone());
                    s
                })
                .collect();
            Ok(snaps)
        })
    }

    pub fn describe_snapshots(&self, ctx: &Ctx, req: &DescribeSnapshots) -> Result<Page<Snapshot>> {
        let st = self.lock();
        describe::require_all(
            &req.query.ids,
            |id| st.snapshots.get(id).is_some_and(|s| s.region == ctx.region && can_see(s, &ctx.account)),
            "snap",
            "InvalidSnapshot.NotFound",
            "InvalidSnapshotID.Malformed",
            "snapshot",
        )?;
        let owners: Vec<String> =
            req.owner_ids.iter().map(|o| if o == "self" { ctx.account.clone() } else { o.clone() }).collect();
        let restorable: Vec<String> =
            req.restorable_by.iter().map(|o| if o == "self" { ctx.account.clone() } else { o.clone() }).collect();
        let items = st
            .snapshots
            .values()
            .filter(|s| s.region == ctx.region && can_see(s, &ctx.account))
            .filter(|s| owners.is_empty() || owners.contains(&s.account))
            .filter(|s| {
                restorable.is_empty()
                    || restorable
                        .iter()
                        .any(|a| s.account == *a || s.create_volume_permissions.iter().any(|p| p == a || p == "all"))
            });
        describe::run(&req.query, SNAPSHOT_FILTERS, describe::SNAPSHOTS, items, |s| &s.id)
    }

    pub fn delete_snapshot(&self, ctx: &Ctx, id: &str, dry_run: bool) -> Result<()> {
        self.delete_snapshots_with(ctx, &[id.to_string()], Vec::new(), dry_run)
    }

    /// A volume's next snapshot is incremental against its newest snapshot, and the volume's change
    /// tracking holds only what changed since that snapshot's cut. Deleting that snapshot would leave
    /// the next one built on an older snapshot (or none) with too small a changed set: the blocks
    /// changed between the two would be lost. So before such a deletion the whole volume is marked
    /// changed, durably (holes cost a seek at upload, not a read): the next snapshot reads every
    /// block it needs. Done first, outside the state lock (it writes the change map); if the
    /// deletion is then refused, the next snapshot only reads more than it had to.
    fn mark_lineage_bases_changed(&self, ids: &[String]) -> Result<()> {
        let Some(storage) = &self.storage else { return Ok(()) };
        let bases: Vec<String> = {
            let st = self.lock();
            // Only the deleted snapshots' own volumes and the volumes restored from them can have
            // one as their base: no lineage walk for every volume.
            let of_deleted: Vec<&str> =
                ids.iter().filter_map(|id| st.snapshots.get(id)).map(|s| s.volume_id.as_str()).collect();
            st.volumes
                .values()
                .filter(|v| {
                    of_deleted.contains(&v.id.as_str()) || v.snapshot_id.as_ref().is_some_and(|s| ids.contains(s))
                })
                .filter(|v| Self::lineage_parent(&st, v).is_some_and(|p| ids.contains(&p)))
                .map(|v| v.id.clone())
                .collect()
        };
        for vid in bases {
            match storage.volumes.open_volume(&vid) {
                Ok(vol) => vol.mark_all_changed().map_err(|e| {
                    EngineError::Internal(format!(
                        "marking volume {vid} changed before deleting its base snapshot: {e}"
                    ))
                })?,
                // Deleted meanwhile: nothing will be snapshotted from it.
                Err(blocksnap_volume::Error::NotFound(_)) => {}
                Err(e) => return Err(EngineError::Internal(format!("opening volume {vid}: {e}"))),
            }
            tracing::info!(volume = %vid, "its newest snapshot is being deleted: its next snapshot reads every block");
        }
        Ok(())
    }

    /// Delete snapshots, committing `extra` rows (e.g. Lightsail names) in the same transaction: all
    /// or nothing, and durable before any manifest goes (GC drops manifests without rows).
    pub(crate) fn delete_snapshots_with(
        &self,
        ctx: &Ctx,
        ids: &[String],
        extra: Vec<Rec>,
        dry_run: bool,
    ) -> Result<()> {
        if !dry_run {
            self.mark_lineage_bases_changed(ids)?;
        }
        let mut st = self.lock();
        let mut gone = Vec::with_capacity(ids.len());
        for id in ids {
            let s = self.own_snapshot(&st, ctx, id)?.clone();
            if s.state == SnapshotState::Pending {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!("Snapshot '{id}' is still pending; it can be deleted once it is completed or in error."),
                ));
            }
            let children = st
                .snapshots
                .values()
                .filter(|c| c.parent.as_deref() == Some(id.as_str()) && c.state == SnapshotState::Pending)
                .count();
            if children > 0 || self.snapshot_busy(id) {
                return Err(EngineError::client(
                    "InvalidSnapshot.InUse",
                    format!("The snapshot {id} is in use by a snapshot, copy or volume restore still running."),
                ));
            }
            gone.push(s);
        }
        // A locked snapshot is never deleted, whoever asks; expired locks go with their snapshots.
        let released = self.release_expired_locks(&st, ids)?;
        if dry_run {
            return Err(EngineError::DryRun);
        }
        let mut recs: Vec<Rec> = gone.iter().map(|s| Rec::DeleteSnapshot(s.id.clone())).collect();
        recs.extend(released);
        // Snapshots a Recycle Bin rule retains move to the bin in the same commit; their manifests stay.
        let (binned, binned_ids) = self.recycle_bin_records(&st, ctx, &gone)?;
        recs.extend(binned);
        recs.extend(extra);
        self.commit(&mut st, recs)?;
        drop(st);
        // Readers of the exports end before their data goes.
        for s in &gone {
            self.close_export(&s.id);
        }
        // The rows' deletion is durable before the manifests go.
        self.sync_pending()?;
        for s in gone.iter().filter(|s| !binned_ids.contains(&s.id)) {
            self.forget_snapshot_data(s);
        }
        Ok(())
    }

    pub fn snapshot_permissions(&self, ctx: &Ctx, id: &str) -> Result<Vec<String>> {
        let st = self.lock();
        Ok(self.own_snapshot(&st, ctx, id)?.create_volume_permissions.clone())
    }

    pub fn modify_snapshot_permissions(
        &self,
        ctx: &Ctx,
        id: &str,
        change: PermissionChange,
        dry_run: bool,
    ) -> Result<()> {
        let mut st = self.lock();
        let mut s = self.own_snapshot(&st, ctx, id)?.clone();
        for who in change.add.iter().chain(change.remove.iter()) {
            let ok = who == "all" || (who.len() == 12 && who.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(EngineError::invalid_value(format!(
                    "Value ({who}) for parameter userId is invalid. Expected a 12-digit account id or the group 'all'."
                )));
            }
        }
        if !change.add.is_empty() && !crate::archive::in_standard_tier(&s) {
            return Err(EngineError::client(
                "IncorrectState",
                format!("The snapshot '{id}' is in the archive tier: archived snapshots cannot be shared."),
            ));
        }
        if s.encrypted && change.add.iter().any(|w| w == "all") {
            return Err(EngineError::combination("Encrypted snapshots cannot be made public."));
        }
        for a in change.add {
            if !s.create_volume_permissions.contains(&a) {
                s.create_volume_permissions.push(a);
            }
        }
        let removed = s.create_volume_permissions.iter().any(|p| change.remove.contains(p));
        s.create_volume_permissions.retain(|p| !change.remove.contains(p));
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, vec![Rec::Snapshot(s)])?;
        drop(st);
        if removed {
            // Accounts that lost the share lose their open NBD connections too.
            self.export_access_changed(id);
        }
        Ok(())
    }
}

fn can_see(s: &Snapshot, account: &str) -> bool {
    s.account == account || s.create_volume_permissions.iter().any(|p| p == account || p == "all")
}
