//! Instances: CreateInstances, GetInstance(s), DeleteInstance. An instance is an EC2 instance of
//! the account's Lightsail principal, booted from a built-in image with a system disk of its bundle's size.

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, Result};
use crate::instances::{BlockDeviceMappingSpec, EbsSpec, RunInstances};
use crate::model::{Ctx, Instance as Ec2Instance, InstanceState, Tag};

use super::catalogue::{BLUEPRINTS, BUNDLES, blueprint, bundle};
use super::operations::{Operation, OperationType, Ops, ResourceType, Track};
use super::records::{DiskDoc, InstanceDoc, KIND_DISK, KIND_INSTANCE, parse, put, row_id, rows};
use super::tags::check_tags;
use super::validate::{check_name, check_zone};
use super::views::{Instance, LsPage};
use super::{Lightsail, MAX_INSTANCES_PER_CALL, failure, invalid, lightsail_principal, not_found};

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

impl Lightsail<'_> {
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
        let res = self.engine.run_instances(
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
        )?;
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
            ops.add(name, ResourceType::Instance, &doc.zone, OperationType::CreateInstance, None, Track::Done);
        }
        self.commit_ops(recs, &ops, || {
            let _ = self.engine.terminate_instances(&sh, &ids, false);
        })?;
        Ok(ops.list)
    }

    pub fn get_instance(&self, ctx: &Ctx, name: &str) -> Result<Instance> {
        self.check_region(ctx)?;
        let st = self.engine.lock();
        let d = self.need_instance(&st, ctx, name)?;
        self.instance_view(&st, ctx, &d).ok_or_else(|| not_found(format!("The Instance does not exist: {name}")))
    }

    pub fn get_instances(&self, ctx: &Ctx, after: Option<&str>) -> Result<LsPage<Instance>> {
        self.list_page(ctx, KIND_INSTANCE, after, |st, d: &InstanceDoc| {
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
        self.engine.terminate_instances(&sh, std::slice::from_ref(&d.instance_id), false)?;
        let mut ops = Ops::new(ctx);
        for (disk, zone) in &attached {
            ops.add(disk, ResourceType::Disk, zone, OperationType::DetachDisk, Some(name), Track::Done);
            ops.add(name, ResourceType::Instance, &d.zone, OperationType::DetachDisk, Some(disk), Track::Done);
        }
        ops.add(name, ResourceType::Instance, &d.zone, OperationType::DeleteInstance, None, Track::Done);
        self.commit_ops(vec![Rec::DeleteDoc(KIND_INSTANCE, row_id(ctx, name))], &ops, || {})?;
        Ok(ops.list)
    }
}
