//! Instances exist to own attachments: no compute runs. RunInstances creates root (and mapped)
//! volumes from a built-in image; Stop/Start move states; Terminate deletes DeleteOnTermination
//! volumes and detaches the rest.

use crate::describe::{self, ListQuery, Page};
use crate::engine::{Engine, Rec, State, settings_key};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::ids;
use crate::model::*;
use crate::tags::{TagSpec, check_tag};
use crate::volumes::{check_type, check_zone, valid_device};

/// Instances one RunInstances call may launch (EC2's per-call capacity answer).
pub const MAX_INSTANCES_PER_CALL: i64 = 100;

#[derive(Debug, Clone, Default)]
pub struct EbsSpec {
    pub volume_size: Option<i64>,
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    pub throughput: Option<i64>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub delete_on_termination: Option<bool>,
    pub snapshot_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct BlockDeviceMappingSpec {
    pub device_name: Option<String>,
    pub ebs: Option<EbsSpec>,
    pub no_device: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunInstances {
    pub image_id: Option<String>,
    pub min_count: Option<i64>,
    pub max_count: Option<i64>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    pub key_name: Option<String>,
    pub block_device_mappings: Vec<BlockDeviceMappingSpec>,
    pub tag_specifications: Vec<TagSpec>,
    pub client_token: Option<String>,
    pub dry_run: bool,
}

/// What RunInstances returns: one reservation.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub reservation_id: String,
    pub owner_id: String,
    pub instances: Vec<InstanceView>,
}

/// (device, volume id, attach state, attach time, delete on termination)
pub type BlockDevice = (String, String, AttachState, Millis, bool);

/// An instance with the block devices derived from the volumes attached to it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub instance: Instance,
    /// (device, volume id, attach state, attach time, delete on termination)
    pub block_devices: Vec<BlockDevice>,
}

#[derive(Debug, Clone)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "instance-state-name",
    "instance-state-code",
    "availability-zone",
    "image-id",
    "instance-type",
    "reservation-id",
    "owner-id",
    "root-device-name",
    "root-device-type",
    "block-device-mapping.device-name",
    "block-device-mapping.volume-id",
    "block-device-mapping.status",
    "block-device-mapping.delete-on-termination",
    "key-name",
    "launch-time",
    "architecture",
    "private-ip-address",
];

impl Filterable for InstanceView {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        let i = &self.instance;
        let bd = |f: &dyn Fn(&BlockDevice) -> String| self.block_devices.iter().map(f).collect::<Vec<_>>();
        Some(match name {
            "instance-id" => vec![i.id.clone()],
            "instance-state-name" => vec![i.state.as_str().into()],
            "instance-state-code" => vec![i.state.code().to_string()],
            "availability-zone" => vec![i.availability_zone.clone()],
            "image-id" => vec![i.image_id.clone()],
            "instance-type" => vec![i.instance_type.clone()],
            "reservation-id" => vec![i.reservation_id.clone()],
            "owner-id" => vec![i.account.clone()],
            "root-device-name" => vec![i.root_device_name.clone()],
            "root-device-type" => vec!["ebs".into()],
            "block-device-mapping.device-name" => bd(&|b| b.0.clone()),
            "block-device-mapping.volume-id" => bd(&|b| b.1.clone()),
            "block-device-mapping.status" => bd(&|b| b.2.as_str().into()),
            "block-device-mapping.delete-on-termination" => bd(&|b| b.4.to_string()),
            "key-name" => i.key_name.clone().into_iter().collect(),
            "launch-time" => vec![crate::volumes::format_time(i.launch_time)],
            "architecture" => {
                vec![crate::regions::image(&i.image_id).map(|m| m.architecture).unwrap_or("x86_64").into()]
            }
            "private-ip-address" => vec![i.private_ip.clone()],
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.instance.tags
    }
}

fn valid_instance_type(t: &str) -> bool {
    let mut parts = t.split('.');
    matches!((parts.next(), parts.next(), parts.next()), (Some(f), Some(s), None)
        if !f.is_empty() && !s.is_empty()
            && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

impl Engine {
    pub(crate) fn instance_of<'a>(&self, st: &'a State, ctx: &Ctx, id: &str) -> Result<&'a Instance> {
        if !ids::is_valid("i", id) {
            return Err(EngineError::client(
                "InvalidInstanceID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"i-...\")"),
            ));
        }
        st.instances.get(id).filter(|i| i.account == ctx.account && i.region == ctx.region).ok_or_else(|| {
            EngineError::client("InvalidInstanceID.NotFound", format!("The instance ID '{id}' does not exist"))
        })
    }

    pub(crate) fn view(st: &State, i: &Instance) -> InstanceView {
        let mut block_devices: Vec<_> = st
            .volumes
            .values()
            .flat_map(|v| {
                v.attachments
                    .iter()
                    .filter(|a| a.instance_id == i.id)
                    .map(|a| (a.device.clone(), v.id.clone(), a.state, a.attach_time, a.delete_on_termination))
            })
            .collect();
        // Root device first, then by device name, as EC2 lists them.
        block_devices.sort_by(|a, b| (a.0 != i.root_device_name, &a.0).cmp(&(b.0 != i.root_device_name, &b.0)));
        InstanceView { instance: i.clone(), block_devices }
    }

    pub fn run_instances(&self, ctx: &Ctx, req: RunInstances) -> Result<Reservation> {
        let image_id = req
            .image_id
            .clone()
            .ok_or_else(|| EngineError::missing("The request must contain the parameter ImageId"))?;
        let min =
            req.min_count.ok_or_else(|| EngineError::missing("The request must contain the parameter MinCount"))?;
        let max =
            req.max_count.ok_or_else(|| EngineError::missing("The request must contain the parameter MaxCount"))?;
        if min < 1 {
            return Err(EngineError::invalid_value(format!(
                "Value ({min}) for parameter minCount is invalid. Expected a positive integer."
            )));
        }
        if max < min {
            return Err(EngineError::invalid_value(format!(
                "Value ({max}) for parameter maxCount is invalid. maxCount must be greater than or equal to minCount ({min})."
            )));
        }
        if min > MAX_INSTANCES_PER_CALL {
            return Err(EngineError::client(
                "InstanceLimitExceeded",
                format!(
                    "You have requested more instances ({min}) than your current instance limit of {MAX_INSTANCES_PER_CALL} allows."
                ),
            ));
        }
        let count = max.min(MAX_INSTANCES_PER_CALL);
        let image = crate::regions::image(&image_id).ok_or_else(|| {
            if ids::is_valid("ami", &image_id) {
                EngineError::client("InvalidAMIID.NotFound", format!("The image id '[{image_id}]' does not exist"))
            } else {
                EngineError::client(
                    "InvalidAMIID.Malformed",
                    format!("Invalid id: \"{image_id}\" (expecting \"ami-...\")"),
                )
            }
        })?;
        let instance_type = req.instance_type.clone().unwrap_or_else(|| "m1.small".into());
        if !valid_instance_type(&instance_type) {
            return Err(EngineError::invalid_value(format!("Invalid value '{instance_type}' for InstanceType.")));
        }
        let zone = req.availability_zone.clone().unwrap_or_else(|| format!("{}a", ctx.region));
        check_zone(ctx, &zone)?;
        let mut instance_tags = Tags::new();
        let mut volume_tags = Tags::new();
        for spec in &req.tag_specifications {
            let target = match spec.resource_type.as_deref() {
                Some("instance") => &mut instance_tags,
                Some("volume") => &mut volume_tags,
                Some(other) => {
                    return Err(EngineError::invalid_value(format!(
                        "'{other}' is not a valid taggable resource type for this operation."
                    )));
                }
                None => {
                    return Err(EngineError::missing(
                        "The request must contain the parameter TagSpecification.N.ResourceType",
                    ));
                }
            };
            if spec.tags.is_empty() {
                return Err(EngineError::invalid_value("Tag specification must have at least one tag"));
            }
            for t in &spec.tags {
                check_tag(t)?;
                target.insert(t.key.clone(), t.value.clone());
            }
        }
        if instance_tags.len() > crate::tags::MAX_TAGS || volume_tags.len() > crate::tags::MAX_TAGS {
            return Err(EngineError::client("TagLimitExceeded", "The maximum number of tags per resource is 50."));
        }

        let mut st = self.lock();
        if let Some(token) = &req.client_token {
            let existing: Vec<&Instance> = st
                .instances
                .values()
                .filter(|i| {
                    i.account == ctx.account && i.region == ctx.region && i.client_token.as_deref() == Some(token)
                })
                .collect();
            if let Some(first) = existing.first() {
                if req.dry_run {
                    return Err(EngineError::DryRun);
                }
                let reservation_id = first.reservation_id.clone();
                let instances = existing.iter().map(|i| Self::view(&st, i)).collect();
                return Ok(Reservation { reservation_id, owner_id: ctx.account.clone(), instances });
            }
        }
        let settings = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        let mut recs = Vec::new();

        // The volumes each instance gets: the root (image size unless mapped) and every mapped EBS device.
        struct Planned {
            device: String,
            size: i64,
            vtype: String,
            iops: Option<u32>,
            throughput: Option<u32>,
            encrypted: bool,
            kms: Option<KmsKey>,
            delete_on_termination: bool,
        }
        let mut plan: Vec<Planned> = Vec::new();
        let root_mapped =
            req.block_device_mappings.iter().any(|m| m.device_name.as_deref() == Some(image.root_device_name));
        let mut mappings = req.block_device_mappings.clone();
        if !root_mapped {
            mappings.insert(
                0,
                BlockDeviceMappingSpec {
                    device_name: Some(image.root_device_name.into()),
                    ebs: Some(EbsSpec::default()),
                    no_device: false,
                },
            );
        }
        for m in &mappings {
            let device = m.device_name.clone().ok_or_else(|| {
                EngineError::missing("The request must contain the parameter BlockDeviceMapping.N.DeviceName")
            })?;
            if !valid_device(&device) {
                return Err(EngineError::invalid_value(format!("Invalid device name {device}")));
            }
            if plan.iter().any(|p| p.device == device) {
                return Err(EngineError::invalid_value(format!(
                    "The device name {device} is used more than once in the block device mapping."
                )));
            }
            let is_root = device == image.root_device_name;
            if m.no_device {
                if is_root {
                    return Err(EngineError::invalid_value("The root device cannot be removed with NoDevice."));
                }
                continue;
            }
            let Some(ebs) = &m.ebs else {
                // Instance-store (VirtualName) mappings have no EBS volume to create.
                continue;
            };
            if let Some(s) = &ebs.snapshot_id {
                return Err(EngineError::client(
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{s}' does not exist."),
                ));
            }
            let size = match ebs.volume_size {
                Some(s) => s,
                None if is_root => image.root_size_gib as i64,
                None => {
                    return Err(EngineError::missing(format!(
                        "The request must contain the parameter BlockDeviceMapping.Ebs.VolumeSize for {device}"
                    )));
                }
            };
            if is_root && size < image.root_size_gib as i64 {
                return Err(EngineError::invalid_value(format!(
                    "Volume of size {size}GB is smaller than snapshot of the image, expect size >= {}GB",
                    image.root_size_gib
                )));
            }
            let vtype = ebs.volume_type.clone().unwrap_or_else(|| "gp2".into());
            let (iops, throughput) = check_type(&vtype, size, ebs.iops, ebs.throughput, false)?;
            if ebs.kms_key_id.is_some() && ebs.encrypted != Some(true) {
                return Err(EngineError::client(
                    "InvalidParameterDependency",
                    "The parameter KmsKeyId requires the parameter Encrypted to be set.",
                ));
            }
            let encrypted = ebs.encrypted.unwrap_or(false) || settings.ebs_encryption_by_default;
            let kms = if encrypted {
                Some(match ebs.kms_key_id.as_deref().or(settings.default_kms_key.as_deref()) {
                    Some(k) => self.resolve_kms_key(&st, ctx, &mut recs, k)?,
                    None => self.default_ebs_key(&st, ctx, &mut recs),
                })
            } else {
                None
            };
            plan.push(Planned {
                device,
                size,
                vtype,
                iops,
                throughput,
                encrypted,
                kms,
                delete_on_termination: ebs.delete_on_termination.unwrap_or(true),
            });
        }
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let reservation_id = ids::new_id("r");
        let now = now_millis();
        let mut created: Vec<String> = Vec::new();
        let mut new_instances = Vec::new();
        for n in 0..count {
            let id = ids::new_id("i");
            let inst = Instance {
                id: id.clone(),
                account: ctx.account.clone(),
                region: ctx.region.clone(),
                availability_zone: zone.clone(),
                image_id: image_id.clone(),
                instance_type: instance_type.clone(),
                state: InstanceState::Running,
                state_reason: None,
                launch_time: now,
                root_device_name: image.root_device_name.into(),
                reservation_id: reservation_id.clone(),
                ami_launch_index: n as u32,
                private_ip: format!("10.0.{}.{}", rand_octet(), rand_octet()),
                key_name: req.key_name.clone(),
                tags: instance_tags.clone(),
                client_token: req.client_token.clone(),
            };
            for p in &plan {
                let vid = ids::new_id("vol");
                let lineage = match &p.kms {
                    Some(k) => {
                        let (w, id) = Self::new_data_key(k)?;
                        (Some(w), Some(id))
                    }
                    None => (None, None),
                };
                let v = Volume {
                    id: vid.clone(),
                    account: ctx.account.clone(),
                    region: ctx.region.clone(),
                    availability_zone: zone.clone(),
                    size_gib: p.size as u32,
                    volume_type: p.vtype.clone(),
                    iops: p.iops,
                    throughput: p.throughput,
                    encrypted: p.encrypted,
                    kms_key_id: p.kms.as_ref().map(|k| k.arn.clone()),
                    snapshot_id: None,
                    multi_attach_enabled: false,
                    state: VolumeState::InUse,
                    create_time: now,
                    attachments: vec![Attachment {
                        instance_id: id.clone(),
                        device: p.device.clone(),
                        state: AttachState::Attached,
                        attach_time: now,
                        delete_on_termination: p.delete_on_termination,
                    }],
                    tags: volume_tags.clone(),
                    client_token: None,
                    request_fingerprint: None,
                    wrapped_data_key: lineage.0,
                    data_key_id: lineage.1,
                    restore: None,
                    last_modification: None,
                    node: self.config.node_id.clone(),
                    lost: false,
                };
                created.push(vid);
                recs.push(Rec::Volume(v));
            }
            new_instances.push(inst.clone());
            recs.push(Rec::Instance(inst));
        }
        if let Err(e) = self.commit(&mut st, recs) {
            drop(st);
            for c in &created {
                self.drop_volume_bytes(c);
            }
            return Err(e);
        }
        let instances = new_instances
            .iter()
            .map(|i| {
                let mut v = Self::view(&st, i);
                v.instance.state = InstanceState::Pending;
                v
            })
            .collect();
        Ok(Reservation { reservation_id, owner_id: ctx.account.clone(), instances })
    }

    pub fn describe_instances(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<InstanceView>> {
        let st = self.lock();
        describe::require_all(
            &q.ids,
            |id| st.instances.get(id).is_some_and(|i| i.account == ctx.account && i.region == ctx.region),
            "i",
            "InvalidInstanceID.NotFound",
            "InvalidInstanceID.Malformed",
            "instance ID",
        )?;
        let mine: Vec<InstanceView> = st
            .instances
            .values()
            .filter(|i| i.account == ctx.account && i.region == ctx.region)
            .filter(|i| q.ids.is_empty() || q.ids.contains(&i.id))
            .map(|i| Self::view(&st, i))
            .collect();
        describe::run(q, INSTANCE_FILTERS, describe::INSTANCES, mine.iter(), |v| &v.instance.id)
    }

    fn change_states(
        &self,
        ctx: &Ctx,
        ids_in: &[String],
        dry_run: bool,
        mut f: impl FnMut(&State, &Instance, &mut Vec<Rec>) -> Result<(InstanceState, InstanceState)>,
    ) -> Result<Vec<StateChange>> {
        if ids_in.is_empty() {
            return Err(EngineError::missing("The request must contain the parameter InstanceId"));
        }
        let mut st = self.lock();
        describe::require_all(
            ids_in,
            |id| st.instances.get(id).is_some_and(|i| i.account == ctx.account && i.region == ctx.region),
            "i",
            "InvalidInstanceID.NotFound",
            "InvalidInstanceID.Malformed",
            "instance ID",
        )?;
        let mut recs = Vec::new();
        let mut out = Vec::new();
        for id in ids_in {
            let inst = self.instance_of(&st, ctx, id)?.clone();
            let (reported, stored) = f(&st, &inst, &mut recs)?;
            out.push(StateChange { instance_id: id.clone(), previous: inst.state, current: reported });
            if stored != inst.state {
                let mut ni = inst;
                ni.state = stored;
                recs.push(Rec::Instance(ni));
            }
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, recs)?;
        Ok(out)
    }

    pub fn stop_instances(&self, ctx: &Ctx, ids_in: &[String], dry_run: bool) -> Result<Vec<StateChange>> {
        self.change_states(ctx, ids_in, dry_run, |_, i, _| match i.state {
            InstanceState::Running | InstanceState::Pending => Ok((InstanceState::Stopping, InstanceState::Stopped)),
            InstanceState::Stopped | InstanceState::Stopping => Ok((i.state, i.state)),
            s => Err(EngineError::client(
                "IncorrectInstanceState",
                format!("This instance '{}' is not in a state from which it can be stopped ({}).", i.id, s.as_str()),
            )),
        })
    }

    pub fn start_instances(&self, ctx: &Ctx, ids_in: &[String], dry_run: bool) -> Result<Vec<StateChange>> {
        self.change_states(ctx, ids_in, dry_run, |_, i, _| match i.state {
            InstanceState::Stopped | InstanceState::Stopping => Ok((InstanceState::Pending, InstanceState::Running)),
            InstanceState::Running | InstanceState::Pending => Ok((i.state, i.state)),
            s => Err(EngineError::client(
                "IncorrectInstanceState",
                format!("The instance '{}' is not in a state from which it can be started ({}).", i.id, s.as_str()),
            )),
        })
    }

    pub fn terminate_instances(&self, ctx: &Ctx, ids_in: &[String], dry_run: bool) -> Result<Vec<StateChange>> {
        let mut freed = Vec::new();
        let mut detached = Vec::new();
        let out = self.change_states(ctx, ids_in, dry_run, |st, i, recs| {
            if i.state == InstanceState::Terminated {
                return Ok((InstanceState::Terminated, InstanceState::Terminated));
            }
            for v in st.volumes.values() {
                let Some(a) = v.attachments.iter().find(|a| a.instance_id == i.id) else { continue };
                if a.delete_on_termination && v.attachments.len() == 1 {
                    recs.push(Rec::DeleteVolume(v.id.clone()));
                    freed.push(v.id.clone());
                } else {
                    let mut nv = v.clone();
                    nv.attachments.retain(|a| a.instance_id != i.id);
                    if nv.attachments.is_empty() {
                        nv.state = VolumeState::Available;
                        detached.push(v.id.clone());
                    }
                    recs.push(Rec::Volume(nv));
                }
            }
            Ok((InstanceState::ShuttingDown, InstanceState::Terminated))
        })?;
        // The DeleteOnTermination volumes' rows are gone durably before their bytes go.
        self.sync_pending()?;
        for id in &freed {
            // A pending snapshot still reads the volume's frozen bytes: they go when it ends.
            let keep = Self::volume_has_pending_snapshot(&self.lock(), id);
            if keep {
                self.close_export(id);
            } else {
                self.free_volume_bytes(id);
            }
        }
        for id in &detached {
            self.close_export(id);
        }
        Ok(out)
    }
}

fn rand_octet() -> u8 {
    use rand::Rng;
    rand::rng().random_range(1..255)
}
