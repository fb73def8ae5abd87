//! Volumes and attachments: CreateVolume, DescribeVolumes, ModifyVolume, DeleteVolume, Attach/Detach.

use std::sync::Arc;

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

#[derive(Debug, Clone, Default)]
pub struct ModifyVolume {
    pub volume_id: String,
    pub size: Option<i64>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub multi_attach_enabled: Option<bool>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VolumeModification {
    pub volume_id: String,
    pub state: String,
    pub target_size: u32,
    pub target_iops: Option<u32>,
    pub target_volume_type: String,
    pub target_throughput: Option<u32>,
    pub target_multi_attach_enabled: bool,
    pub original_size: u32,
    pub original_iops: Option<u32>,
    pub original_volume_type: String,
    pub original_throughput: Option<u32>,
    pub original_multi_attach_enabled: bool,
    pub progress: u32,
    pub start_time: Millis,
    pub end_time: Option<Millis>,
}

#[derive(Debug, Clone, Default)]
pub struct DetachVolume {
    pub volume_id: String,
    pub instance_id: Option<String>,
    pub device: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

/// An attachment as AttachVolume/DetachVolume return it.
#[derive(Debug, Clone)]
pub struct AttachmentInfo {
    pub volume_id: String,
    pub attachment: Attachment,
}

/// Size, IOPS and throughput rules per volume type (EBS documentation, "Amazon EBS volume types").
pub(crate) struct TypeRules {
    pub min_size: i64,
    pub max_size: i64,
    /// (min, max, max iops per GiB) when IOPS may be set.
    pub iops: Option<(i64, i64, i64)>,
    pub iops_required: bool,
    /// (min, max) MiB/s when throughput may be set.
    pub throughput: Option<(i64, i64)>,
    pub multi_attach: bool,
}

pub(crate) fn type_rules(t: &str) -> Option<TypeRules> {
    let r = |min_size, max_size, iops, iops_required, throughput, multi_attach| TypeRules {
        min_size,
        max_size,
        iops,
        iops_required,
        throughput,
        multi_attach,
    };
    Some(match t {
        "gp2" => r(1, 16384, None, false, None, false),
        "gp3" => r(1, 16384, Some((3000, 16000, 500)), false, Some((125, 1000)), false),
        "io1" => r(4, 16384, Some((100, 64000, 50)), true, None, true),
        "io2" => r(4, 16384, Some((100, 256000, 1000)), true, None, true),
        "st1" => r(125, 16384, None, false, None, false),
        "sc1" => r(125, 16384, None, false, None, false),
        "standard" => r(1, 1024, None, false, None, false),
        _ => return None,
    })
}

/// Validate a (type, size, iops, throughput, multi-attach) combination and return the effective
/// iops/throughput the volume reports.
pub(crate) fn check_type(
    vtype: &str,
    size: i64,
    iops: Option<i64>,
    throughput: Option<i64>,
    multi_attach: bool,
) -> Result<(Option<u32>, Option<u32>)> {
    let rules = type_rules(vtype).ok_or_else(|| {
        EngineError::invalid_value(format!(
            "Value ({vtype}) for parameter volumeType is invalid. Valid values: gp2, gp3, io1, io2, st1, sc1, standard"
        ))
    })?;
    if size < rules.min_size {
        return Err(EngineError::invalid_value(format!(
            "Volume of {size}GiB is too small; minimum is {}GiB.",
            rules.min_size
        )));
    }
    if size > rules.max_size {
        return Err(EngineError::invalid_value(format!(
            "Volume of {size}GiB is too large for volume type {vtype}; maximum is {}GiB.",
            rules.max_size
        )));
    }
    let iops = match (rules.iops, iops) {
        (None, Some(_)) => {
            return Err(EngineError::combination(format!("The parameter iops is not supported for {vtype} volumes.")));
        }
        (Some(_), None) if rules.iops_required => {
            return Err(EngineError::missing(format!("The parameter iops must be specified for {vtype} volumes.")));
        }
        (Some((min, _, _)), None) => Some(min as u32),
        (Some((min, max, per_gib)), Some(n)) => {
            if n < min || n > max {
                return Err(EngineError::invalid_value(format!(
                    "Volume iops of {n} is {}; {vtype} volumes support {min} to {max} iops.",
                    if n < min { "too low" } else { "too high" }
                )));
            }
            if n > size.saturating_mul(per_gib) && n > min {
                return Err(EngineError::invalid_value(format!(
                    "Iops to volume size ratio of {} is too high; maximum is {per_gib}.",
                    n as f64 / size as f64
                )));
            }
            Some(n as u32)
        }
        (None, None) if vtype == "gp2" => Some((size * 3).clamp(100, 16000) as u32),
        (None, None) => None,
    };
    let throughput = match (rules.throughput, throughput) {
        (None, Some(_)) => {
            return Err(EngineError::combination(format!(
                "The parameter throughput is not supported for {vtype} volumes."
            )));
        }
        (Some((min, _)), None) => Some(min as u32),
        (Some((min, max)), Some(n)) => {
            if n < min || n > max {
                return Err(EngineError::invalid_value(format!(
                    "Throughput of {n} MiB/s is out of range; {vtype} volumes support {min} to {max} MiB/s."
                )));
            }
            if let Some(i) = iops
                && n * 4 > i as i64
                && n > min
            {
                return Err(EngineError::invalid_value(format!(
                    "Throughput ({n} MiB/s) to iops ({i}) ratio is too high; maximum is 0.25 MiB/s per iops."
                )));
            }
            Some(n as u32)
        }
        (None, None) => None,
    };
    if multi_attach && !rules.multi_attach {
        return Err(EngineError::invalid_value(format!(
            "Multi-Attach is not supported for {vtype} volumes; only io1 and io2 volumes support it."
        )));
    }
    Ok((iops, throughput))
}

pub(crate) fn check_zone(ctx: &Ctx, zone: &str) -> Result<()> {
    if crate::regions::zones(&ctx.region).iter().any(|z| z == zone) {
        Ok(())
    } else {
        Err(EngineError::invalid_value(format!("Invalid availability zone: [{zone}]")))
    }
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

impl Filterable for VolumeModification {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        let opt = |v: Option<u32>| v.map(|x| x.to_string()).into_iter().collect::<Vec<_>>();
        Some(match name {
            "modification-state" => vec![self.state.clone()],
            "original-iops" => opt(self.original_iops),
            "original-size" => vec![self.original_size.to_string()],
            "original-volume-type" => vec![self.original_volume_type.clone()],
            "original-multi-attach-enabled" => vec![self.original_multi_attach_enabled.to_string()],
            "start-time" => vec![format_time(self.start_time)],
            "target-iops" => opt(self.target_iops),
            "target-size" => vec![self.target_size.to_string()],
            "target-volume-type" => vec![self.target_volume_type.clone()],
            "target-multi-attach-enabled" => vec![self.target_multi_attach_enabled.to_string()],
            "target-throughput" => opt(self.target_throughput),
            "volume-id" => vec![self.volume_id.clone()],
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        static NONE: std::sync::OnceLock<Tags> = std::sync::OnceLock::new();
        NONE.get_or_init(Tags::new)
    }
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

/// EC2 device names: `/dev/sd[a-z]`, `/dev/xvd[a-z]`, optionally with a further letter or partition
/// digit (`/dev/sdf1`, `/dev/xvdba`), and `xvd[a-z]` for Windows.
pub(crate) fn valid_device(d: &str) -> bool {
    let rest = if let Some(r) = d.strip_prefix("/dev/sd") {
        r
    } else if let Some(r) = d.strip_prefix("/dev/xvd") {
        r
    } else if let Some(r) = d.strip_prefix("/dev/nvme") {
        return !r.is_empty() && r.len() < 8;
    } else if let Some(r) = d.strip_prefix("xvd") {
        r
    } else {
        return false;
    };
    let b = rest.as_bytes();
    match b.len() {
        1 => b[0].is_ascii_lowercase(),
        2 => b[0].is_ascii_lowercase() && (b[1].is_ascii_lowercase() || (b'1'..=b'9').contains(&b[1])),
        3 => b[0].is_ascii_lowercase() && (b'1'..=b'9').contains(&b[1]) && b[2].is_ascii_digit(),
        _ => false,
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
                return Err(EngineError::missing("The request must contain the parameter size or snapshotId"));
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
        };
        recs.push(Rec::Volume(vol.clone()));
        if let Err(e) = self.commit(&mut st, recs) {
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
    fn list_volumes(&self, ctx: &Ctx, q: &ListQuery, limits: Limits) -> Result<Page<Volume>> {
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

    /// The catalog no longer knows the volume: its bytes go. A failure here leaves an orphan that the
    /// next start removes; it never resurrects the volume.
    pub(crate) fn free_volume_bytes(&self, volume_id: &str) {
        self.close_export(volume_id);
        self.release_volume_bytes(volume_id);
    }

    pub(crate) fn release_volume_bytes(&self, volume_id: &str) {
        if self.row_changes_durable("freeing volume bytes") {
            fail::fail_point!("volume.before_free_bytes");
            self.drop_volume_bytes(volume_id);
        }
    }

    /// Remove a volume's files. Callers: a durable deletion (above), or a volume whose row was never
    /// committed (a failed create).
    pub(crate) fn drop_volume_bytes(&self, volume_id: &str) {
        if let Some(s) = &self.storage {
            match s.volumes.delete(volume_id) {
                Ok(()) | Err(blocksnap_volume::Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(volume_id, error = %e, "could not free volume bytes"),
            }
        }
    }

    /// The live volume's bytes, created on first use: a volume nobody has attached or snapshotted
    /// reads as zeros and needs no file, so CreateVolume costs one catalog commit.
    pub(crate) fn live_volume(&self, volume_id: &str, size_gib: u32) -> Result<Arc<blocksnap_volume::Volume>> {
        let s = self.storage.as_ref().ok_or_else(|| EngineError::Internal("no volume store".into()))?;
        match s.volumes.open_volume(volume_id) {
            Ok(v) => Ok(v),
            Err(blocksnap_volume::Error::NotFound(_)) => {
                match s.volumes.create(volume_id, size_gib as u64 * GIB) {
                    Ok(()) | Err(blocksnap_volume::Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(EngineError::Internal(format!("allocating volume {volume_id}: {e}"))),
                }
                s.volumes
                    .open_volume(volume_id)
                    .map_err(|e| EngineError::Internal(format!("opening volume {volume_id}: {e}")))
            }
            Err(e) => Err(EngineError::Internal(format!("opening volume {volume_id}: {e}"))),
        }
    }

    pub fn modify_volume(&self, ctx: &Ctx, req: ModifyVolume) -> Result<VolumeModification> {
        // Validated under the engine lock (twice when the bytes grow: once more after the volume is
        // claimed); the file grows without the lock, so a slow disk stalls only this call.
        let plan = |st: &State| -> Result<(Volume, VolumeModification, u32)> {
            let v = self.volume_of(st, ctx, &req.volume_id)?.clone();
            if req.size.is_none()
                && req.volume_type.is_none()
                && req.iops.is_none()
                && req.throughput.is_none()
                && req.multi_attach_enabled.is_none()
            {
                return Err(EngineError::missing(
                    "At least one of the parameters size, volumeType, iops, throughput or multiAttachEnabled must be specified.",
                ));
            }
            let size = req.size.unwrap_or(v.size_gib as i64);
            if size < v.size_gib as i64 {
                return Err(EngineError::invalid_value(format!(
                    "New size cannot be smaller than existing size: the volume {} is {}GiB and cannot shrink to {size}GiB.",
                    v.id, v.size_gib
                )));
            }
            let vtype = req.volume_type.clone().unwrap_or_else(|| v.volume_type.clone());
            let same_type = vtype == v.volume_type;
            let iops_in = req.iops.or(if same_type && vtype != "gp2" { v.iops.map(i64::from) } else { None });
            let tp_in = req.throughput.or(if same_type { v.throughput.map(i64::from) } else { None });
            let multi = req.multi_attach_enabled.unwrap_or(v.multi_attach_enabled);
            let (iops, throughput) = check_type(&vtype, size, iops_in, tp_in, multi)?;
            if req.dry_run {
                return Err(EngineError::DryRun);
            }
            let now = now_millis();
            let modification = VolumeModification {
                volume_id: v.id.clone(),
                state: "modifying".into(),
                target_size: size as u32,
                target_iops: iops,
                target_volume_type: vtype.clone(),
                target_throughput: throughput,
                target_multi_attach_enabled: multi,
                original_size: v.size_gib,
                original_iops: v.iops,
                original_volume_type: v.volume_type.clone(),
                original_throughput: v.throughput,
                original_multi_attach_enabled: v.multi_attach_enabled,
                progress: 0,
                start_time: now,
                end_time: None,
            };
            let original = v.size_gib;
            let mut nv = v;
            nv.size_gib = size as u32;
            nv.volume_type = vtype;
            nv.iops = iops;
            nv.throughput = throughput;
            nv.multi_attach_enabled = multi;
            // The change is in effect at once: the record DescribeVolumesModifications shows is done.
            let mut done = modification.clone();
            done.state = "completed".into();
            done.progress = 100;
            done.end_time = Some(now);
            nv.last_modification = Some(done);
            Ok((nv, modification, original))
        };
        let (mut nv, mut modification, mut original) = plan(&self.lock())?;
        let mut _claim = None;
        if nv.size_gib != original
            && let Some(s) = &self.storage
        {
            let deadline = std::time::Instant::now() + blocksnap_volume::DRAIN_TIMEOUT;
            _claim = Some(self.jobs.claims.claim(std::slice::from_ref(&nv.id), deadline).ok_or_else(|| {
                EngineError::client(
                    "IncorrectModificationState",
                    format!("Volume {} is being snapshotted or modified; retry in a few seconds.", nv.id),
                )
            })?);
            (nv, modification, original) = plan(&self.lock())?;
            if nv.size_gib != original {
                match s.volumes.resize(&nv.id, nv.size_gib as u64 * GIB) {
                    // Not allocated yet: it will be created at the new size.
                    Ok(()) | Err(blocksnap_volume::Error::NotFound(_)) => {}
                    Err(e) => return Err(EngineError::Internal(format!("growing volume {}: {e}", nv.id))),
                }
            }
        }
        let mut st = self.lock();
        if st.volumes.get(&nv.id).is_none_or(|v| v.size_gib != original) {
            return Err(EngineError::client(
                "IncorrectModificationState",
                format!("Volume {} was modified by another request meanwhile; retry.", nv.id),
            ));
        }
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        Ok(modification)
    }

    /// DescribeVolumesModifications: the latest modification of each of the caller's volumes.
    pub fn describe_volume_modifications(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<VolumeModification>> {
        let st = self.lock();
        for id in &q.ids {
            self.volume_of(&st, ctx, id)?;
        }
        let mods: Vec<VolumeModification> = st
            .volumes
            .values()
            .filter(|v| v.account == ctx.account && v.region == ctx.region)
            .filter_map(|v| v.last_modification.clone())
            .collect();
        describe::run(
            q,
            &[
                "modification-state",
                "original-iops",
                "original-size",
                "original-volume-type",
                "original-multi-attach-enabled",
                "start-time",
                "target-iops",
                "target-size",
                "target-volume-type",
                "target-multi-attach-enabled",
                "target-throughput",
                "volume-id",
            ],
            describe::VOLUME_MODIFICATIONS,
            mods.iter(),
            |m| &m.volume_id,
        )
    }

    /// DescribeVolumeStatus: every volume of the caller is healthy (`ok`, I/O enabled, no events).
    pub fn describe_volume_status(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<Volume>> {
        let mut rest = Vec::new();
        let mut all_match = true;
        for f in &q.filters {
            let constant: Option<&[&str]> = match f.name.as_str() {
                "volume-status.status" => Some(&["ok"]),
                "volume-status.details-name" => Some(&["io-enabled", "io-performance"]),
                "volume-status.details-status" => Some(&["passed", "not-applicable"]),
                n if n.starts_with("event.") || n.starts_with("action.") => Some(&[]),
                _ => None,
            };
            match constant {
                Some(vals) => all_match &= vals.iter().any(|v| f.values.iter().any(|p| crate::filter::glob(p, v))),
                None => rest.push(f.clone()),
            }
        }
        let inner = ListQuery {
            ids: q.ids.clone(),
            filters: rest,
            max_results: q.max_results,
            next_token: q.next_token.clone(),
        };
        let mut page = self.list_volumes(ctx, &inner, describe::VOLUME_STATUS)?;
        if !all_match {
            page.items.clear();
            page.next_token = None;
        }
        Ok(page)
    }

    pub fn attach_volume(
        &self,
        ctx: &Ctx,
        volume_id: &str,
        instance_id: &str,
        device: &str,
        dry_run: bool,
    ) -> Result<AttachmentInfo> {
        let mut st = self.lock();
        let v = self.volume_of(&st, ctx, volume_id)?.clone();
        let inst = self.instance_of(&st, ctx, instance_id)?.clone();
        if !valid_device(device) {
            return Err(EngineError::invalid_value(format!(
                "Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name."
            )));
        }
        if matches!(inst.state, InstanceState::Terminated | InstanceState::ShuttingDown) {
            return Err(EngineError::client(
                "IncorrectInstanceState",
                format!(
                    "The instance '{instance_id}' is not in a valid state for this operation ({}).",
                    inst.state.as_str()
                ),
            ));
        }
        if v.availability_zone != inst.availability_zone {
            return Err(EngineError::client(
                "InvalidVolume.ZoneMismatch",
                format!("The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"),
            ));
        }
        if v.attachments.iter().any(|a| a.instance_id == instance_id) {
            return Err(EngineError::client(
                "VolumeInUse",
                format!("{volume_id} is already attached to instance {instance_id}"),
            ));
        }
        if !v.attachments.is_empty() && !v.multi_attach_enabled {
            return Err(EngineError::client("VolumeInUse", format!("{volume_id} is already attached to an instance")));
        }
        if v.attachments.len() >= 16 {
            return Err(EngineError::client(
                "AttachmentLimitExceeded",
                format!("{volume_id} is already attached to 16 instances, the Multi-Attach maximum"),
            ));
        }
        if v.state != VolumeState::Available && v.state != VolumeState::InUse {
            return Err(EngineError::client(
                "IncorrectState",
                format!("Volume '{volume_id}' is in the '{}' state.", v.state.as_str()),
            ));
        }
        if device == inst.root_device_name
            || st
                .volumes
                .values()
                .any(|o| o.attachments.iter().any(|a| a.instance_id == instance_id && a.device == device))
        {
            return Err(EngineError::invalid_value(format!(
                "Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"
            )));
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        let att = Attachment {
            instance_id: instance_id.to_string(),
            device: device.to_string(),
            state: AttachState::Attached,
            attach_time: now_millis(),
            delete_on_termination: false,
        };
        let mut nv = v;
        nv.attachments.push(att.clone());
        nv.state = VolumeState::InUse;
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        let mut answer = att;
        answer.state = AttachState::Attaching;
        Ok(AttachmentInfo { volume_id: volume_id.to_string(), attachment: answer })
    }

    pub fn detach_volume(&self, ctx: &Ctx, req: DetachVolume) -> Result<AttachmentInfo> {
        let mut st = self.lock();
        let v = self.volume_of(&st, ctx, &req.volume_id)?.clone();
        if let Some(i) = &req.instance_id {
            self.instance_of(&st, ctx, i)?;
        }
        if v.attachments.is_empty() {
            return Err(EngineError::client(
                "IncorrectState",
                format!("Volume '{}' is in the '{}' state.", v.id, v.state.as_str()),
            ));
        }
        let candidates: Vec<&Attachment> = v
            .attachments
            .iter()
            .filter(|a| req.instance_id.as_deref().is_none_or(|i| a.instance_id == i))
            .filter(|a| req.device.as_deref().is_none_or(|d| a.device == d))
            .collect();
        let att = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(EngineError::client(
                    "InvalidAttachment.NotFound",
                    format!(
                        "Attachment point {} is not in use for instance {} with volume {}",
                        req.device.as_deref().unwrap_or("(any)"),
                        req.instance_id.as_deref().unwrap_or("(any)"),
                        v.id
                    ),
                ));
            }
            _ => {
                return Err(EngineError::combination(format!(
                    "Volume {} is attached to several instances; specify InstanceId to detach it",
                    v.id
                )));
            }
        };
        if let Some(inst) = st.instances.get(&att.instance_id)
            && inst.root_device_name == att.device
            && !matches!(inst.state, InstanceState::Stopped | InstanceState::Terminated)
        {
            return Err(EngineError::client(
                "IncorrectState",
                format!(
                    "Unable to detach root volume '{}' from instance '{}': stop the instance first",
                    v.id, att.instance_id
                ),
            ));
        }
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let mut nv = v;
        nv.attachments.retain(|a| a.instance_id != att.instance_id);
        if nv.attachments.is_empty() {
            nv.state = VolumeState::Available;
        }
        let still_attached = !nv.attachments.is_empty();
        self.commit(&mut st, vec![Rec::Volume(nv)])?;
        drop(st);
        if !still_attached {
            self.close_export(&req.volume_id);
        }
        let mut answer = att;
        answer.state = AttachState::Detaching;
        Ok(AttachmentInfo { volume_id: req.volume_id, attachment: answer })
    }

    /// Is the volume attached (so its NBD export may be served)?
    pub fn volume_attached(&self, volume_id: &str) -> bool {
        self.lock().volumes.get(volume_id).is_some_and(|v| !v.attachments.is_empty())
    }

    /// The live volume behind an attached volume's NBD export, if it is attached.
    pub fn attached_volume(&self, volume_id: &str) -> Option<Arc<blocksnap_volume::Volume>> {
        let size = {
            let st = self.lock();
            let v = st.volumes.get(volume_id).filter(|v| !v.attachments.is_empty())?;
            v.size_gib
        };
        self.live_volume(volume_id, size).ok()
    }

    /// Volume ids whose NBD export may be served (attached), for NBD `LIST`.
    pub fn attached_volume_ids(&self) -> Vec<String> {
        self.lock().volumes.values().filter(|v| !v.attachments.is_empty()).map(|v| v.id.clone()).collect()
    }

    /// Remove volume directories the catalog does not know (left by a crash between allocating a
    /// volume and committing its row, or between deleting the row and freeing the bytes).
    pub fn remove_orphan_volumes(&self) -> Result<usize> {
        let Some(s) = &self.storage else { return Ok(0) };
        let known: std::collections::HashSet<String> = {
            let st = self.lock();
            st.volumes
                .keys()
                .cloned()
                .chain(st.snapshots.values().filter(|s| s.state == SnapshotState::Pending).map(|s| s.volume_id.clone()))
                .collect()
        };
        let mut removed = 0;
        for id in s.volumes.list().map_err(|e| EngineError::Internal(format!("listing volumes: {e}")))? {
            if !known.contains(&id) {
                tracing::info!(volume_id = %id, "removing orphan volume data");
                s.volumes.delete(&id).map_err(|e| EngineError::Internal(format!("removing orphan {id}: {e}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        for ok in ["/dev/sdf", "/dev/xvdf", "/dev/sdf1", "/dev/xvdba", "xvdg", "/dev/sda1"] {
            assert!(valid_device(ok), "{ok}");
        }
        for bad in ["sdf", "/dev/", "/dev/sdF", "/dev/sdf123", "/etc/passwd", ""] {
            assert!(!valid_device(bad), "{bad}");
        }
    }

    #[test]
    fn type_rules_apply() {
        assert_eq!(check_type("gp3", 8, None, None, false).unwrap(), (Some(3000), Some(125)));
        assert_eq!(check_type("gp2", 8, None, None, false).unwrap(), (Some(100), None));
        assert_eq!(check_type("gp2", 100, None, None, false).unwrap(), (Some(300), None));
        assert!(check_type("gp2", 8, Some(100), None, false).is_err());
        assert!(check_type("io1", 8, None, None, false).is_err());
        assert!(check_type("io1", 8, Some(400), None, true).is_ok());
        assert!(check_type("io1", 8, Some(401), None, false).is_err(), "50:1 ratio");
        assert!(check_type("st1", 100, None, None, false).is_err(), "st1 minimum 125");
        assert!(check_type("gp3", 8, Some(3000), Some(1000), false).is_err(), "throughput/iops ratio");
        assert!(check_type("gp3", 8, None, None, true).is_err(), "multi-attach only io1/io2");
        assert!(check_type("gp2", 16385, None, None, false).is_err());
        assert!(check_type("gp2", 0, None, None, false).is_err());
        assert!(check_type("nope", 8, None, None, false).is_err());
    }
}
