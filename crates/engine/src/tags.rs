//! Tags on every taggable resource: CreateTags, DeleteTags, DescribeTags and TagSpecifications.

use crate::describe::{self, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::model::*;

pub const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, Default)]
pub struct TagSpec {
    pub resource_type: Option<String>,
    pub tags: Vec<Tag>,
}

/// A DeleteTags selector: a key alone deletes the tag whatever its value; with a value (even "")
/// only a tag with exactly that value.
#[derive(Debug, Clone)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TagDescription {
    pub resource_id: String,
    pub resource_type: ResourceType,
    pub key: String,
    pub value: String,
    tags: Tags,
}

/// What a service accepts in a tag: the one implementation of the tag rules (EC2's and
/// Lightsail's differ only in these numbers and the character set; each names a violation its own
/// way). Keys starting with `aws:` (any case) are reserved everywhere.
pub(crate) struct TagRules {
    pub max_key_chars: usize,
    pub max_value_chars: usize,
    /// The characters keys and values may hold (`None`: any).
    pub allowed: Option<fn(char) -> bool>,
}

/// EC2: keys of 1 to 127 characters, values of up to 256, any characters.
pub(crate) const EC2_TAG_RULES: TagRules = TagRules { max_key_chars: 127, max_value_chars: 256, allowed: None };

/// The first rule a tag breaks, in this order: key length, key characters, reserved key, value
/// length, value characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagViolation {
    EmptyKey,
    KeyTooLong(usize),
    KeyChar(char),
    ReservedKey,
    ValueTooLong(usize),
    ValueChar(char),
}

pub(crate) fn tag_violation(rules: &TagRules, t: &Tag) -> Option<TagViolation> {
    let klen = t.key.chars().count();
    if klen == 0 {
        return Some(TagViolation::EmptyKey);
    }
    if klen > rules.max_key_chars {
        return Some(TagViolation::KeyTooLong(klen));
    }
    if let Some(ok) = rules.allowed
        && let Some(c) = t.key.chars().find(|c| !ok(*c))
    {
        return Some(TagViolation::KeyChar(c));
    }
    if t.key.to_lowercase().starts_with("aws:") {
        return Some(TagViolation::ReservedKey);
    }
    let vlen = t.value.chars().count();
    if vlen > rules.max_value_chars {
        return Some(TagViolation::ValueTooLong(vlen));
    }
    if let Some(ok) = rules.allowed
        && let Some(c) = t.value.chars().find(|c| !ok(*c))
    {
        return Some(TagViolation::ValueChar(c));
    }
    None
}

pub(crate) fn check_tag(t: &Tag) -> Result<()> {
    let Some(v) = tag_violation(&EC2_TAG_RULES, t) else { return Ok(()) };
    Err(EngineError::invalid_value(match v {
        TagViolation::EmptyKey => "Tag key cannot be empty.".to_string(),
        TagViolation::KeyTooLong(_) => {
            format!("Tag key exceeds the maximum length of 127 characters: '{}'", t.key)
        }
        TagViolation::ValueTooLong(_) => {
            format!("Tag value exceeds the maximum length of 256 characters for key '{}'", t.key)
        }
        TagViolation::ReservedKey => {
            format!("Tag key '{}' is invalid: tag keys starting with 'aws:' are reserved for internal use", t.key)
        }
        // EC2 allows any character.
        TagViolation::KeyChar(c) | TagViolation::ValueChar(c) => format!("Tag '{}' has the character '{c}'", t.key),
    }))
}

/// The tags of TagSpecifications for a resource type; specifications of another type are an error.
pub(crate) fn tags_for(specs: &[TagSpec], rt: ResourceType) -> Result<Tags> {
    let mut out = Tags::new();
    for s in specs {
        let Some(kind) = s.resource_type.as_deref() else {
            return Err(EngineError::missing("The request must contain the parameter TagSpecification.N.ResourceType"));
        };
        if kind != rt.as_str() {
            return Err(EngineError::invalid_value(format!(
                "'{kind}' is not a valid taggable resource type for this operation."
            )));
        }
        if s.tags.is_empty() {
            return Err(EngineError::invalid_value("Tag specification must have at least one tag"));
        }
        for t in &s.tags {
            check_tag(t)?;
            out.insert(t.key.clone(), t.value.clone());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(EngineError::client(
            "TagLimitExceeded",
            format!("The maximum number of tags per resource is {MAX_TAGS}; {} were given.", out.len()),
        ));
    }
    Ok(out)
}

impl Filterable for TagDescription {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "key" => vec![self.key.clone()],
            "value" => vec![self.value.clone()],
            "resource-id" => vec![self.resource_id.clone()],
            "resource-type" => vec![self.resource_type.as_str().to_string()],
            _ => return None,
        })
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

impl Engine {
    /// The tags of a resource of the caller, or the resource's NotFound error.
    fn resource_tags(&self, st: &State, ctx: &Ctx, id: &str) -> Result<Tags> {
        match ResourceType::from_id(id) {
            Some(ResourceType::Volume) => Ok(self.volume_of(st, ctx, id)?.tags.clone()),
            Some(ResourceType::Instance) => Ok(self.instance_of(st, ctx, id)?.tags.clone()),
            Some(ResourceType::Snapshot) => match self.own_snapshot(st, ctx, id) {
                Ok(s) => Ok(s.tags.clone()),
                // A snapshot in the Recycle Bin can still be tagged (AWS: "view it, restore it, or
                // modify its tags").
                Err(e) => crate::recycle_bin::own_binned(st, ctx, id)?.map(|b| b.snapshot.tags).ok_or(e),
            },
            _ => Err(EngineError::client("InvalidID", format!("The ID '{id}' is not valid"))),
        }
    }

    fn retag(&self, st: &State, ctx: &Ctx, id: &str, tags: Tags) -> Result<Rec> {
        Ok(match ResourceType::from_id(id) {
            Some(ResourceType::Volume) => {
                let mut v = self.volume_of(st, ctx, id)?.clone();
                v.tags = tags;
                Rec::Volume(v)
            }
            Some(ResourceType::Instance) => {
                let mut i = self.instance_of(st, ctx, id)?.clone();
                i.tags = tags;
                Rec::Instance(i)
            }
            Some(ResourceType::Snapshot) => match self.own_snapshot(st, ctx, id) {
                Ok(s) => {
                    let mut s = s.clone();
                    s.tags = tags;
                    Rec::Snapshot(s)
                }
                Err(e) => match crate::recycle_bin::own_binned(st, ctx, id)? {
                    Some(b) => crate::recycle_bin::retag_binned(b, tags)?,
                    None => return Err(e),
                },
            },
            _ => return Err(EngineError::client("InvalidID", format!("The ID '{id}' is not valid"))),
        })
    }

    pub fn create_tags(&self, ctx: &Ctx, resources: &[String], tags: &[Tag], dry_run: bool) -> Result<()> {
        if resources.is_empty() {
            return Err(EngineError::missing("The request must contain the parameter resourceIdSet"));
        }
        if tags.is_empty() {
            return Err(EngineError::missing("The request must contain the parameter tagSet"));
        }
        for t in tags {
            check_tag(t)?;
        }
        let mut st = self.lock();
        let mut recs = Vec::new();
        for id in resources {
            let mut current = self.resource_tags(&st, ctx, id)?;
            for t in tags {
                current.insert(t.key.clone(), t.value.clone());
            }
            if current.len() > MAX_TAGS {
                return Err(EngineError::client(
                    "TagLimitExceeded",
                    format!(
                        "The maximum number of tags per resource is {MAX_TAGS}; resource {id} would have {}.",
                        current.len()
                    ),
                ));
            }
            recs.push(self.retag(&st, ctx, id, current)?);
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, recs)
    }

    pub fn delete_tags(&self, ctx: &Ctx, resources: &[String], selectors: &[TagSelector], dry_run: bool) -> Result<()> {
        if resources.is_empty() {
            return Err(EngineError::missing("The request must contain the parameter resourceIdSet"));
        }
        for s in selectors {
            if s.key.to_ascii_lowercase().starts_with("aws:") {
                return Err(EngineError::invalid_value(format!(
                    "Tag key '{}' is invalid: tag keys starting with 'aws:' are reserved",
                    s.key
                )));
            }
        }
        let mut st = self.lock();
        let mut recs = Vec::new();
        for id in resources {
            let mut current = self.resource_tags(&st, ctx, id)?;
            if selectors.is_empty() {
                current.clear();
            } else {
                for s in selectors {
                    if s.value.as_ref().is_none_or(|v| current.get(&s.key) == Some(v)) {
                        current.remove(&s.key);
                    }
                }
            }
            recs.push(self.retag(&st, ctx, id, current)?);
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, recs)
    }

    pub fn describe_tags(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<TagDescription>> {
        let st = self.lock();
        let mut all = Vec::new();
        let mut push = |id: &str, rt: ResourceType, tags: &Tags| {
            for (k, v) in tags {
                let mut one = Tags::new();
                one.insert(k.clone(), v.clone());
                all.push(TagDescription {
                    resource_id: id.to_string(),
                    resource_type: rt,
                    key: k.clone(),
                    value: v.clone(),
                    tags: one,
                });
            }
        };
        for v in st.volumes.values().filter(|v| v.account == ctx.account && v.region == ctx.region) {
            push(&v.id, ResourceType::Volume, &v.tags);
        }
        for i in st.instances.values().filter(|i| i.account == ctx.account && i.region == ctx.region) {
            push(&i.id, ResourceType::Instance, &i.tags);
        }
        for s in st.snapshots.values().filter(|s| s.account == ctx.account && s.region == ctx.region) {
            push(&s.id, ResourceType::Snapshot, &s.tags);
        }
        drop(st);
        // Page by (resource, key): the token names the last pair.
        all.sort_by(|a, b| (&a.resource_id, &a.key).cmp(&(&b.resource_id, &b.key)));
        let keyed: Vec<(String, TagDescription)> =
            all.into_iter().map(|t| (format!("{}\u{1}{}", t.resource_id, t.key), t)).collect();
        let page = describe::run(
            q,
            &["key", "value", "resource-id", "resource-type"],
            describe::TAGS,
            keyed.into_iter().map(|(k, t)| Keyed { key: k, item: t }).collect::<Vec<_>>().iter(),
            |k| &k.key,
        )?;
        Ok(Page { items: page.items.into_iter().map(|k| k.item).collect(), next_token: page.next_token })
    }
}

#[derive(Clone)]
struct Keyed {
    key: String,
    item: TagDescription,
}

impl Filterable for Keyed {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        self.item.field(name)
    }
    fn tags(&self) -> &Tags {
        &self.item.tags
    }
}
