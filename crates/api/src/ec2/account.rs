//! Region, zone and account-level calls: DescribeRegions, DescribeAvailabilityZones,
//! DescribeAccountAttributes and the EBS encryption-by-default settings.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, Result, glob, regions};

use super::params::Params;
use super::xml::Xml;

fn matches(filters: &[blocksnap_engine::Filter], field: impl Fn(&str) -> Option<Vec<String>>) -> Result<bool> {
    for f in filters {
        let Some(values) = field(&f.name) else {
            return Err(EngineError::invalid_value(format!("The filter '{}' is invalid", f.name)));
        };
        if !values.iter().any(|v| f.values.iter().any(|pat| glob(pat, v))) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn describe_regions(e: &Engine, _ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let names = p.list("RegionName")?;
    let filters = p.filters()?;
    for n in &names {
        if !e.regions().iter().any(|r| r == n) {
            return Err(EngineError::invalid_value(format!("Invalid region names: [{n}]")));
        }
    }
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let mut out = Vec::new();
    for r in e.regions() {
        if !names.is_empty() && !names.contains(r) {
            continue;
        }
        let ok = matches(&filters, |f| match f {
            "region-name" => Some(vec![r.clone()]),
            "endpoint" => Some(vec![format!("ec2.{r}.amazonaws.com")]),
            "opt-in-status" => Some(vec!["opt-in-not-required".into()]),
            _ => None,
        })?;
        if ok {
            out.push(r.clone());
        }
    }
    x.set("regionInfo", out, |x, r| {
        x.leaf("regionName", &r)
            .leaf("regionEndpoint", format!("ec2.{r}.amazonaws.com"))
            .leaf("optInStatus", "opt-in-not-required");
    });
    Ok(())
}

pub fn describe_availability_zones(_e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let names = p.list("ZoneName")?;
    let zone_ids = p.list("ZoneId")?;
    let filters = p.filters()?;
    let zones = regions::zones(&ctx.region);
    for n in &names {
        if !zones.contains(n) {
            return Err(EngineError::invalid_value(format!("The zone '{n}' does not exist.")));
        }
    }
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let mut out = Vec::new();
    for z in zones {
        let id = regions::zone_id(&z);
        if (!names.is_empty() && !names.contains(&z)) || (!zone_ids.is_empty() && !zone_ids.contains(&id)) {
            continue;
        }
        let ok = matches(&filters, |f| match f {
            "zone-name" => Some(vec![z.clone()]),
            "zone-id" => Some(vec![id.clone()]),
            "region-name" => Some(vec![ctx.region.clone()]),
            "state" => Some(vec!["available".into()]),
            "zone-type" => Some(vec!["availability-zone".into()]),
            "group-name" | "network-border-group" => Some(vec![ctx.region.clone()]),
            "opt-in-status" => Some(vec!["opt-in-not-required".into()]),
            _ => None,
        })?;
        if ok {
            out.push((z, id));
        }
    }
    x.set("availabilityZoneInfo", out, |x, (z, id)| {
        x.leaf("zoneName", &z)
            .leaf("zoneState", "available")
            .leaf("regionName", &ctx.region)
            .leaf("zoneId", &id)
            .leaf("groupName", &ctx.region)
            .leaf("networkBorderGroup", &ctx.region)
            .leaf("zoneType", "availability-zone")
            .leaf("optInStatus", "opt-in-not-required");
        x.open("messageSet").close("messageSet");
    });
    Ok(())
}

pub fn describe_account_attributes(_e: &Engine, _ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    let wanted = p.list("AttributeName")?;
    let attrs: [(&str, &[&str]); 6] = [
        ("supported-platforms", &["VPC"]),
        ("default-vpc", &["vpc-0b5e4c3d2a1f00001"]),
        ("max-instances", &["100"]),
        ("vpc-max-security-groups-per-interface", &["5"]),
        ("max-elastic-ips", &["5"]),
        ("vpc-max-elastic-ips", &["5"]),
    ];
    for w in &wanted {
        if !attrs.iter().any(|(n, _)| n == w) {
            return Err(EngineError::invalid_value(format!("Value ({w}) for parameter attributeName is invalid.")));
        }
    }
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    let shown = attrs.iter().filter(|(n, _)| wanted.is_empty() || wanted.iter().any(|w| w == n));
    x.set("accountAttributeSet", shown, |x, (n, vals)| {
        x.leaf("attributeName", n);
        x.set("attributeValueSet", vals.iter(), |x, v| {
            x.leaf("attributeValue", v);
        });
    });
    Ok(())
}

pub fn get_ebs_encryption_by_default(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    x.leaf("ebsEncryptionByDefault", e.ebs_encryption_by_default(ctx)).leaf("sseType", "none");
    Ok(())
}

pub fn enable_ebs_encryption_by_default(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    x.leaf("ebsEncryptionByDefault", e.set_ebs_encryption_by_default(ctx, true, p.dry_run()?)?);
    Ok(())
}

pub fn disable_ebs_encryption_by_default(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    x.leaf("ebsEncryptionByDefault", e.set_ebs_encryption_by_default(ctx, false, p.dry_run()?)?);
    Ok(())
}

pub fn get_ebs_default_kms_key_id(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    if p.dry_run()? {
        return Err(EngineError::DryRun);
    }
    x.leaf("kmsKeyId", e.ebs_default_kms_key_id(ctx));
    Ok(())
}

pub fn modify_ebs_default_kms_key_id(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    x.leaf("kmsKeyId", e.modify_ebs_default_kms_key_id(ctx, &p.required("KmsKeyId")?, p.dry_run()?)?);
    Ok(())
}

pub fn reset_ebs_default_kms_key_id(e: &Engine, ctx: &Ctx, p: &Params, x: &mut Xml) -> Result<()> {
    x.leaf("kmsKeyId", e.reset_ebs_default_kms_key_id(ctx, p.dry_run()?)?);
    Ok(())
}
