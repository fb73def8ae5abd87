//! What a volume may be: size, IOPS and throughput per volume type, and the region's zones.

use crate::error::{EngineError, Result};
use crate::model::*;

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
        // Throughput depends on the volume type (gp3 only): EC2 says InvalidParameterDependency.
        (None, Some(_)) => {
            return Err(EngineError::client(
                "InvalidParameterDependency",
                format!("The parameter throughput is only valid for gp3 volumes, not {vtype} volumes."),
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
