//! Lightsail's input rules: resource names, zones and disk sizes.

use crate::error::Result;
use crate::model::Ctx;

use super::{MAX_DISK_GB, MIN_DISK_GB, invalid};

/// Lightsail resource names: `\w[\w\-]*\w` (ASCII letters, digits, `_`, `-`; 2 to 255 characters;
/// first and last a letter, digit or underscore).
pub fn check_name(field: &str, name: &str) -> Result<()> {
    let edge = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let len = name.chars().count();
    let ok = (2..=255).contains(&len)
        && name.starts_with(edge)
        && name.ends_with(edge)
        && name.chars().all(|c| edge(c) || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "The {field} '{name}' is not a valid Lightsail resource name: use 2 to 255 letters, digits, underscores \
             and hyphens, starting and ending with a letter, digit or underscore (pattern \\w[\\w\\-]*\\w)."
        )))
    }
}

pub(super) fn check_zone(ctx: &Ctx, zone: &str) -> Result<()> {
    let zones = crate::regions::zones(&ctx.region);
    if zones.iter().any(|z| z == zone) {
        Ok(())
    } else {
        Err(invalid(format!(
            "The Availability Zone '{zone}' is not valid in region {}: use one of {}.",
            ctx.region,
            zones.join(", ")
        )))
    }
}

pub(super) fn check_size(size: i64) -> Result<()> {
    if (MIN_DISK_GB..=MAX_DISK_GB).contains(&size) {
        Ok(())
    } else {
        Err(invalid(format!("sizeInGb {size} is out of range: disks are {MIN_DISK_GB} to {MAX_DISK_GB} GB.")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["Disk-1", "ab", "WordPress_Multisite-1", "_x", "a1"] {
            assert!(check_name("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "-ab", "ab-", "a b", "a.b", "dísk", &"a".repeat(256)] {
            assert!(check_name("n", bad).is_err(), "{bad}");
        }
    }
}
