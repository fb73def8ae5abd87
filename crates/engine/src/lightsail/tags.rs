//! Tags on Lightsail resources: TagResource, UntagResource, and Lightsail's tag rules (the
//! engine's one tag checker with Lightsail's limits and character set).

use crate::engine::State;
use crate::error::Result;
use crate::model::{Ctx, Tag, Tags};
use crate::tags::{TagRules, TagViolation, tag_violation};

use super::operations::{Operation, OperationType, Ops, ResourceType, Track};
use super::records::{KIND_DISK, KIND_DISK_SNAPSHOT, KIND_INSTANCE, KIND_INSTANCE_SNAPSHOT, arn, put, row_id};
use super::validate::check_name;
use super::{ALL_ZONES, Lightsail, MAX_TAGS, invalid, not_found};

fn tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "+-=._:/@".contains(c)
}

/// Lightsail: keys of 1 to 128 and values of up to 256 letters, numbers, spaces or `+ - = . _ : / @`.
const LIGHTSAIL_TAG_RULES: TagRules = TagRules { max_key_chars: 128, max_value_chars: 256, allowed: Some(tag_char) };

/// Lightsail tag rules: keys of 1 to 128 and values of up to 256 letters, numbers, spaces or
/// `+ - = . _ : / @`; `aws:` keys are reserved; at most 50 tags per resource.
pub fn check_tags(tags: &[Tag]) -> Result<Tags> {
    let mut out = Tags::new();
    for t in tags {
        if let Some(v) = tag_violation(&LIGHTSAIL_TAG_RULES, t) {
            return Err(invalid(match v {
                TagViolation::EmptyKey | TagViolation::KeyTooLong(_) => format!(
                    "Tag key '{}' is {} characters long: tag keys must be 1 to 128 characters.",
                    t.key,
                    t.key.chars().count()
                ),
                TagViolation::KeyChar(c) => format!(
                    "Tag key '{}' contains the character '{c}': tag keys accept letters, numbers, spaces and + - = . _ : / @ only.",
                    t.key
                ),
                TagViolation::ReservedKey => {
                    format!("Tag key '{}' is reserved: keys starting with 'aws:' are for AWS use.", t.key)
                }
                TagViolation::ValueTooLong(n) => format!(
                    "The value of tag '{}' is {n} characters long: tag values must be at most 256 characters.",
                    t.key
                ),
                TagViolation::ValueChar(c) => format!(
                    "The value of tag '{}' contains the character '{c}': tag values accept letters, numbers, spaces and + - = . _ : / @ only.",
                    t.key
                ),
            }));
        }
        out.insert(t.key.clone(), t.value.clone());
    }
    if out.len() > MAX_TAGS {
        return Err(invalid(format!("A resource can have at most {MAX_TAGS} tags; {} were given.", out.len())));
    }
    Ok(out)
}

impl Lightsail<'_> {
    /// The tagged resource a name (and optional ARN) designates: (kind, resource type, row id, zone, document).
    fn taggable(
        &self,
        st: &State,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
    ) -> Result<(&'static str, ResourceType, String, String, serde_json::Value)> {
        check_name("resourceName", name)?;
        let mut found = Vec::new();
        if let Some(d) = self.disk_doc(st, ctx, name)? {
            found.push((KIND_DISK, ResourceType::Disk, arn(ctx, "Disk", &d.uuid), d.zone.clone()));
        }
        if let Some(d) = self.instance_doc(st, ctx, name)? {
            found.push((KIND_INSTANCE, ResourceType::Instance, arn(ctx, "Instance", &d.uuid), d.zone.clone()));
        }
        if let Some(d) = self.disk_snapshot_doc(st, ctx, name)? {
            found.push((
                KIND_DISK_SNAPSHOT,
                ResourceType::DiskSnapshot,
                arn(ctx, "DiskSnapshot", &d.uuid),
                ALL_ZONES.into(),
            ));
        }
        if let Some(d) = self.instance_snapshot_doc(st, ctx, name)? {
            found.push((
                KIND_INSTANCE_SNAPSHOT,
                ResourceType::InstanceSnapshot,
                arn(ctx, "InstanceSnapshot", &d.uuid),
                ALL_ZONES.into(),
            ));
        }
        if let Some(a) = want_arn {
            found.retain(|f| f.2 == a);
            if found.is_empty() {
                return Err(not_found(format!("No resource named {name} has the ARN {a}.")));
            }
        }
        match found.len() {
            0 => Err(not_found(format!("No taggable resource named {name} exists in {}.", ctx.region))),
            1 => {
                let (kind, rtype, _, zone) = found.remove(0);
                let id = row_id(ctx, name);
                let doc = st
                    .docs
                    .get(kind)
                    .and_then(|m| m.get(&id))
                    .map(|r| serde_json::from_str::<serde_json::Value>(&r.doc))
                    .transpose()?
                    .ok_or_else(|| not_found(format!("No taggable resource named {name} exists.")))?;
                Ok((kind, rtype, id, zone, doc))
            }
            _ => Err(invalid(format!(
                "Several resources are named {name} ({}): pass resourceArn to choose one.",
                found.iter().map(|f| f.1.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn retag(
        &self,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
        op_type: OperationType,
        f: impl FnOnce(&mut Tags) -> Result<()>,
    ) -> Result<Vec<Operation>> {
        self.check_region(ctx)?;
        let _g = self.serialise(ctx)?;
        let mut st = self.engine.lock();
        let (kind, rtype, id, zone, mut doc) = self.taggable(&st, ctx, name, want_arn)?;
        let mut tags: Tags = match doc.get("tags") {
            Some(t) => serde_json::from_value(t.clone())?,
            None => Tags::new(),
        };
        f(&mut tags)?;
        doc["tags"] = serde_json::to_value(&tags)?;
        let mut ops = Ops::new(ctx);
        ops.add(name, rtype, &zone, op_type, None, Track::Done);
        let mut recs = vec![put(kind, id, ctx, &doc)?];
        recs.extend(ops.recs()?);
        self.engine.commit(&mut st, recs)?;
        Ok(ops.list)
    }

    pub fn tag_resource(&self, ctx: &Ctx, name: &str, want_arn: Option<&str>, tags: &[Tag]) -> Result<Vec<Operation>> {
        if tags.is_empty() {
            return Err(invalid("tags must contain at least one tag."));
        }
        let add = check_tags(tags)?;
        self.retag(ctx, name, want_arn, OperationType::TagResource, |current| {
            current.extend(add);
            if current.len() > MAX_TAGS {
                return Err(invalid(format!(
                    "A resource can have at most {MAX_TAGS} tags: {name} would have {}.",
                    current.len()
                )));
            }
            Ok(())
        })
    }

    pub fn untag_resource(
        &self,
        ctx: &Ctx,
        name: &str,
        want_arn: Option<&str>,
        keys: &[String],
    ) -> Result<Vec<Operation>> {
        if keys.is_empty() {
            return Err(invalid("tagKeys must name at least one tag key."));
        }
        self.retag(ctx, name, want_arn, OperationType::UntagResource, |current| {
            for k in keys {
                current.remove(k);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let t = |k: &str, v: &str| Tag { key: k.into(), value: v.into() };
        assert!(check_tags(&[t("env", "prod"), t("a b+-=._:/@", "ünïcode 1")]).is_ok());
        assert!(check_tags(&[t("", "x")]).is_err());
        assert!(check_tags(&[t(&"k".repeat(129), "")]).is_err());
        assert!(check_tags(&[t(&"k".repeat(128), &"v".repeat(256))]).is_ok());
        assert!(check_tags(&[t("k", &"v".repeat(257))]).is_err());
        assert!(check_tags(&[t("k!", "")]).is_err());
        assert!(check_tags(&[t("k", "v#")]).is_err());
        assert!(check_tags(&[t("aws:x", "")]).is_err());
        let many: Vec<Tag> = (0..51).map(|i| t(&format!("k{i}"), "")).collect();
        assert!(check_tags(&many).is_err());
    }
}
