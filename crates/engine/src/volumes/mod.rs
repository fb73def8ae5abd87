//! Volumes and attachments: CreateVolume, DescribeVolumes, ModifyVolume, DeleteVolume, Attach/Detach.
//!
//! `rules.rs`: per-type size/IOPS/throughput rules and zones; `modify.rs`: ModifyVolume and its
//! modification records; `status.rs`: DescribeVolumeStatus; `attach.rs`: Attach/DetachVolume and
//! device names; `files.rs`: a volume's bytes on disk (created on first use, freed after durable
//! deletes, orphans removed at start). This file: create, describe, delete.

mod attach;
mod files;
mod modify;
mod placement;
mod rules;
mod status;
pub use status::VolumeStatus;

pub(crate) use attach::valid_device;
pub use attach::{AttachmentInfo, DetachVolume};
pub use modify::{ModifyVolume, VolumeModification};
pub(crate) use rules::{check_type, check_zone};

use crate::describe::{self, Limits, ListQuery, Page};
use crate::engine::{Engine, Rec, State, settings_key};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::ids;
use crate::model::*;
use crate::tags::{TagSpec, tags_for};

pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Default)]
pub struct CreateVolume {
    pub availability_zone: Option<String>,
    pub size: Option<i64>,
    pub snapshot_id: Option<String>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub multi_attach_enabled: Option<bool>,
    pub tag_specifications: Vec<TagSpec>,
    pub client_token: Option<String>,
    pub dry_run: bool,
}

/// The filters DescribeVolumes accepts.
const VOLUME_FILTERS: &[&str] = &[
    "attachment.attach-time",
    "attachment.delete-on-termination",
    "attachment.device",
    "attachment.instance-id",
    "attachment.status",
    "availability-zone",
    "create-time",
    "encrypted",
    "fast-restored",
    "multi-attach-enabled",
    "size",
    "snapshot-id",
    "status",
    "volume-id",
    "volume-type",
    "iops",
    "throughput",
];

pub fn format_time(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl Filterable for Volume {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        let att = |f: &dyn Fn(&Attachment) -> String| self.attachments.iter().map(f).collect::<Vec<_>>();
        Some(match name {
            "attachment.attach-time" => att(&|a| format_time(a.attach_time)),
            "attachment.delete-on-termination" => att(&|a| a.delete_on_termination.to_string()),
            "attachment.device" => att(&|a| a.device.clone()),
            "attachment.instance-id" => att(&|a| a.instance_id.clone()),
            "attachment.status" => att(&|a| a.state.as_str().to_string()),
            "availability-zone" => vec![self.availability_zone.clone()],
            "create-time" => vec![format_time(self.create_time)],
            "encrypted" => vec![self.encrypted.to_string()],
            "fast-restored" => vec!["false".into()],
            "multi-attach-enabled" => vec![self.multi_attach_enabled.to_string()],
            "size" => vec![self.size_gib.to_string()],
            "snapshot-id" => vec![self.snapshot_id.clone().unwrap_or_default()],
            "status" => vec![self.state.as_str().to_string()],
            "volume-id" => vec![self.id.clone()],
            "volume-type" => vec![self.volume_type.clone()],
            "iops" => self.iops.map(|i| i.to_string()).into_iter().collect(),
            "throughput" => self.throughput.map(|i| i.to_string()).into_iter().collect(),
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

impl Engine {
    pub(crate) fn volume_of<'a>(&self, st: &'a State, ctx: &Ctx, id: &str) -> Result<&'a Volume> {
        if !ids::is_valid("vol", id) {
            return Err(EngineError::client(
                "InvalidVolumeID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"vol-...\")"),
            ));
        }
        st.volumes
            .get(id)
            .filter(|v| v.account == ctx.account && v.region == ctx.region)
            .ok_or_else(|| EngineError::client("InvalidVolume.NotFound", format!("The volume '{id}' does not exist.")))
    }

    pub fn create_volume(&self, ctx: &Ctx, req: CreateVolume) -> Result<Volume> {
        let zone = req
            .availability_zone
            .clone()
            .ok_or_else(|| EngineError::missing("The request must contain the parameter AvailabilityZone"))?;
        let mut st = self.lock();
        let mut recs = Vec::new();
        let fingerprint = format!("{req:?}").replace(&format!("dry_run: {}", req.dry_run), "");
        if let Some(token) = &req.client_token {
            if token.len() > 64 {
                return Err(EngineError::invalid_value("The client token must be at most 64 characters."));
            }
            if let Some(v) = st.volumes.values().find(|v| {
                v.account == ctx.account && v.region == ctx.region && v.client_token.as_deref() == Some(token)
            }) {
                if v.request_fingerprint.as_deref() != Some(&fingerprint) {
                    return Err(EngineError::client(
                        "IdempotentParameterMismatch",
                        format!("The client token '{token}' was already used with different parameters."),
                    ));
                }
                if req.dry_run {
                    return Err(EngineError::DryRun);
                }
                return Ok(v.clone());
            }
        }
        check_zone(ctx, &zone)?;
        let source = match &req.snapshot_id {
            Some(sid) => {
                let snap = self.visible_snapshot(&st, ctx, sid)?.clone();
                if snap.state != SnapshotState::Completed {
                    return Err(EngineError::client(
                        "IncorrectState",
                        format!("Snapshot is in invalid state - {}", snap.state.as_str()),
                    ));
                }
                crate::archive::check_usable(&snap)?;
                Some(snap)
            }
            None => None,
        };
        let size = match (req.size, &source) {
            (Some(s), Some(snap)) if s < snap.volume_size_gib as i64 => {
                return Err(EngineError::invalid_value(format!(
                    "The volume size is invalid for the given snapshot: it must be at least {}GiB (the snapshot's size), not {s}GiB.",
                    snap.volume_size_gib
                )));
            }
            (Some(s), _) => s,
            (None, Some(snap)) => snap.volume_size_gib as i64,
            (None, None) => {
                // EC2's own words for it.
                return Err(EngineError::missing("The request must contain the parameter size/snapshot"));
            }
        };
        let vtype = req.volume_type.clone().unwrap_or_else(|| "gp2".into());
        let multi_attach = req.multi_attach_enabled.unwrap_or(false);
        let (iops, throughput) = check_type(&vtype, size, req.iops, req.throughput, multi_attach)?;
        let tags = tags_for(&req.tag_specifications, ResourceType::Volume)?;
        let settings = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        if req.kms_key_id.is_some() && req.encrypted != Some(true) {
            return Err(EngineError::client(
                "InvalidParameterDependency",
                "The parameter KmsKeyId requires the parameter Encrypted to be set.",
            ));
        }
        let from_encrypted = source.as_ref().is_some_and(|s| s.encrypted);
        if from_encrypted && req.encrypted == Some(false) {
            // AWS ignores Encrypted=false here: a volume from an encrypted snapshot is always encrypted.
        }
        // With encryption by default on, Encrypted=false is ignored too.
        let encrypted = req.encrypted.unwrap_or(false) || settings.ebs_encryption_by_default || from_encrypted;
        let kms_key = if encrypted {
            let key = match (req.kms_key_id.as_deref(), &source) {
                (Some(k), _) => self.resolve_kms_key(&st, ctx, &mut recs, k)?,
                (None, Some(snap)) if snap.encrypted => {
                    let arn = snap.kms_key_id.clone().unwrap_or_default();
                    match st.kms_keys.values().find(|k| k.arn == arn) {
                        Some(k) => k.clone(),
                        None => {
                            return Err(EngineError::client(
                                "InvalidParameterValue",
                                format!("The KMS key {arn} of snapshot {} is not accessible.", snap.id),
                            ));
                        }
                    }
                }
                (None, _) => match settings.default_kms_key.as_deref() {
                    Some(k) => self.resolve_kms_key(&st, ctx, &mut recs, k)?,
                    None => self.default_ebs_key(&st, ctx, &mut recs),
                },
            };
            Some(key)
        } else {
            None
        };
        // The lineage's data key: inherited from an encrypted snapshot under the same KMS key (so the
        // new volume's snapshots dedup against it), otherwise a new one.
        let (wrapped_data_key, data_key_id) = match (&kms_key, &source) {
            (Some(k), Some(snap)) if snap.encrypted && snap.kms_key_id.as_deref() == Some(k.arn.as_str()) => {
                (snap.wrapped_data_key.clone(), snap.data_encryption_key_id.clone())
            }
            (Some(k), _) => {
                let (w, id) = Self::new_data_key(k)?;
                (Some(w), Some(id))
            }
            (None, _) => (None, None),
        };
        let kms_key_id = kms_key.map(|k| k.arn);
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let mut id = ids::new_id("vol");
        while st.volumes.contains_key(&id) {
            id = ids::new_id("vol");
        }
        let vol = Volume {
            id: id.clone(),
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            availability_zone: zone,
            size_gib: size as u32,
            volume_type: vtype,
            iops,
            throughput,
            encrypted,
            kms_key_id,
            snapshot_id: source.as_ref().map(|s| s.id.clone()),
            multi_attach_enabled: multi_attach,
            state: if source.is_some() { VolumeState::Creating } else { VolumeState::Available },
            create_time: now_millis(),
            attachments: vec![],
            tags,
            client_token: req.client_token.clone(),
            request_fingerprint: req.client_token.as_ref().map(|_| fingerprint),
            wrapped_data_key,
            data_key_id,
            restore: None,
            last_modification: None,
            node: self.config.node_id.clone(),
            lost: false,
        };
        recs.push(Rec::Volume(vol.clone()));
        if let Err(e) = self.commit(&mut st, recs) {
            drop(st);
            self.drop_volume_bytes(&id);
            return Err(e);
        }
        drop(st);
        if let Some(snap) = &source {
            self.start_restore(&vol, snap);
        }
        // The call answers `creating`, as EC2 does; the volume is available as soon as it is described.
        let mut answer = vol;
        answer.state = VolumeState::Creating;
        Ok(answer)
    }

    pub fn describe_volumes(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<Volume>> {
        self.list_volumes(ctx, q, describe::VOLUMES)
    }

    /// The caller's volumes, paged with the calling action's MaxResults range.
    pub(super) fn list_volumes(&self, ctx: &Ctx, q: &ListQuery, limits: Limits) -> Result<Page<Volume>> {
        let st = self.lock();
        describe::require_all(
            &q.ids,
            |id| st.volumes.get(id).is_some_and(|v| v.account == ctx.account && v.region == ctx.region),
            "vol",
            "InvalidVolume.NotFound",
            "InvalidVolumeID.Malformed",
            "volume",
        )?;
        let mine: Box<dyn Iterator<Item = &Volume>> = if q.ids.is_empty() {
            Box::new(st.volumes.values().filter(|v| v.account == ctx.account && v.region == ctx.region))
        } else {
            // Explicit ids (all checked above): straight lookups, in id order.
            let mut ids: Vec<&String> = q.ids.iter().collect();
            ids.sort();
            ids.dedup();
            Box::new(ids.into_iter().filter_map(|id| st.volumes.get(id)))
        };
        describe::run(q, VOLUME_FILTERS, limits, mine, |v| &v.id)
    }

    pub fn delete_volume(&self, ctx: &Ctx, volume_id: &str, dry_run: bool) -> Result<()> {
        let mut st = self.lock();
        let v = self.volume_of(&st, ctx, volume_id)?;
        if !v.attachments.is_empty() {
            return Err(EngineError::client(
                "VolumeInUse",
                format!("Volume {volume_id} is currently attached to {}", v.attachments[0].instance_id),
            ));
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, vec![Rec::DeleteVolume(volume_id.to_string())])?;
        // A pending snapshot still reads the volume's frozen bytes: they go when it ends.
        let keep = Self::volume_has_pending_snapshot(&st, volume_id);
        drop(st);
        // The row's deletion is durable before any byte goes (an orphan dir is removed at start).
        self.sync_pending()?;
        if keep {
            self.close_export(volume_id);
        } else {
            self.free_volume_bytes(volume_id);
        }
        Ok(())
    }
}
