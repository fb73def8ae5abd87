//! The Recycle Bin: retention rules (service `rbin`) and the bin they fill (EC2
//! ListSnapshotsInRecycleBin, RestoreSnapshotFromRecycleBin).
//!
//! **Rules** are `rbin_rule` documents (id = the rule's 11-character identifier). A rule is
//! *tag-level* (ResourceTags: a deleted snapshot with any of them is retained) or *region-level* (no
//! ResourceTags: every deleted snapshot is retained unless it has one of the ExcludeResourceTags).
//! A region-level rule without exclusion tags can be locked (LockConfiguration: an unlock delay of 7
//! to 30 days); its lock state is computed from the engine's clock when read:
//!
//! ```text
//!   CreateRule(LockConfiguration) / LockRule ─► locked ─UnlockRule─► pending_unlock ─(delay)─► unlocked
//!   LockRule during pending_unlock ─► locked
//! ```
//!
//! A `locked` or `pending_unlock` rule cannot be updated or deleted (ConflictException).
//!
//! **The bin**: DeleteSnapshot of a snapshot a rule retains commits, in one transaction, the
//! snapshot row's deletion and an `rbin_snapshot` document holding the whole snapshot record, its
//! entry and exit times. Its manifest (and so its blocks) stays: GC counts binned snapshots' manifests
//! as live. Restore is the reverse commit (the same id comes back, `completed`). Expiry: a binned
//! snapshot past its exit time is invisible at once (listing, restore) and purged by the sweep
//! ([`Engine::start_recycle_bin`]): the document's deletion is committed and made durable, then the
//! manifest goes, and GC reclaims the blocks no other manifest uses.
//!
//! Rules of type `EC2_IMAGE` are accepted and managed like the others: blocksnap's images are built
//! in and never deregistered, so they retain nothing. `EBS_VOLUME` rules are refused (deleted volumes
//! are not retained by blocksnap), so no one believes their volumes protected.

use std::sync::Arc;
use std::time::Duration;

use blocksnap_catalog::Row;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::archive::TieringStatus;
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Millis, Snapshot, SnapshotState, Tag, Tags, now_millis};

pub(crate) const KIND_RBIN_RULE: &str = "rbin_rule";
pub(crate) const KIND_RBIN_SNAPSHOT: &str = "rbin_snapshot";

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Retention rules per account and region (the service quota).
pub const MAX_RULES_PER_REGION: usize = 250;
/// "You can add the same tag key and value pair to a maximum of five retention rules."
pub const MAX_RULES_PER_TAG: usize = 5;
/// How often the sweep purges expired snapshots by default.
pub const DEFAULT_SWEEP: Duration = Duration::from_secs(60);

const VALIDATION: &str = "ValidationException";
const INVALID_VALUE: &str = "INVALID_PARAMETER_VALUE";

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::reasoned(VALIDATION, INVALID_VALUE, message)
}

fn not_found(id: &str) -> EngineError {
    EngineError::reasoned("ResourceNotFoundException", "RULE_NOT_FOUND", format!("The rule {id} does not exist."))
}

fn conflict(id: &str, state: &str) -> EngineError {
    EngineError::reasoned(
        "ConflictException",
        "INVALID_RULE_STATE",
        format!(
            "The rule {id} is {state}: it can't be modified or deleted until it is unlocked and its unlock delay has passed."
        ),
    )
}

fn quota(message: impl Into<String>) -> EngineError {
    EngineError::reasoned("ServiceQuotaExceededException", "SERVICE_QUOTA_EXCEEDED", message)
}

/// A ResourceTag of a rule: a key, and a value (`None`: any value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceTag {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

impl ResourceTag {
    fn matches(&self, tags: &Tags) -> bool {
        tags.get(&self.key).is_some_and(|v| self.value.as_ref().is_none_or(|want| want == v))
    }
}

/// A retention rule, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionRule {
    pub identifier: String,
    pub account: String,
    pub region: String,
    #[serde(default)]
    pub description: String,
    pub resource_type: String,
    pub retention_days: u32,
    #[serde(default)]
    pub resource_tags: Vec<ResourceTag>,
    #[serde(default)]
    pub exclude_resource_tags: Vec<ResourceTag>,
    #[serde(default)]
    pub tags: Tags,
    /// The LockConfiguration's unlock delay, while the rule is locked or pending unlock.
    #[serde(default)]
    pub unlock_delay_days: Option<u32>,
    /// When the unlock delay of an UnlockRule ends.
    #[serde(default)]
    pub unlock_at: Option<Millis>,
    pub created: Millis,
}

/// A rule as the API answers it, evaluated at one instant.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub rule: RetentionRule,
    pub arn: String,
    pub lock_state: &'static str,
    /// The end of the unlock delay (pending_unlock only).
    pub lock_end_time: Option<Millis>,
    /// The LockConfiguration's delay (locked or pending_unlock).
    pub unlock_delay_days: Option<u32>,
}

impl RetentionRule {
    fn lock_state(&self, now: Millis) -> &'static str {
        match (self.unlock_delay_days, self.unlock_at) {
            (None, _) => "unlocked",
            (Some(_), None) => "locked",
            (Some(_), Some(t)) if now < t => "pending_unlock",
            (Some(_), Some(_)) => "unlocked",
        }
    }

    fn view(&self, now: Millis) -> RuleView {
        let state = self.lock_state(now);
        RuleView {
            arn: rule_arn(&self.region, &self.account, &self.identifier),
            lock_state: state,
            lock_end_time: if state == "pending_unlock" { self.unlock_at } else { None },
            unlock_delay_days: if state == "unlocked" { None } else { self.unlock_delay_days },
            rule: self.clone(),
        }
    }

    fn is_region_level(&self) -> bool {
        self.resource_tags.is_empty()
    }

    /// Does this rule retain a deleted snapshot with these tags?
    fn retains(&self, tags: &Tags) -> bool {
        if self.resource_type != "EBS_SNAPSHOT" {
            return false;
        }
        if self.is_region_level() {
            !self.exclude_resource_tags.iter().any(|t| t.matches(tags))
        } else {
            self.resource_tags.iter().any(|t| t.matches(tags))
        }
    }
}

pub fn rule_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:aws:rbin:{region}:{account}:rule/{id}")
}

/// `RetentionPeriod`, as sent (both members are required; the engine says which is missing).
#[derive(Debug, Clone, Default)]
pub struct RetentionPeriod {
    pub value: Option<i64>,
    pub unit: Option<String>,
}

/// CreateRule, as parsed (types checked; values checked by the engine).
#[derive(Debug, Clone, Default)]
pub struct CreateRule {
    pub retention_period: Option<RetentionPeriod>,
    pub description: Option<String>,
    pub tags: Vec<Tag>,
    pub resource_type: Option<String>,
    pub resource_tags: Vec<ResourceTag>,
    pub exclude_resource_tags: Vec<ResourceTag>,
    pub lock: Option<LockConfiguration>,
}

/// `LockConfiguration.UnlockDelay`.
#[derive(Debug, Clone, Default)]
pub struct LockConfiguration {
    pub unlock_delay_value: Option<i64>,
    pub unlock_delay_unit: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UpdateRule {
    pub identifier: String,
    pub retention_period: Option<RetentionPeriod>,
    pub description: Option<String>,
    pub resource_type: Option<String>,
    pub resource_tags: Option<Vec<ResourceTag>>,
    pub exclude_resource_tags: Option<Vec<ResourceTag>>,
}

#[derive(Debug, Clone, Default)]
pub struct ListRules {
    pub resource_type: Option<String>,
    pub resource_tags: Vec<ResourceTag>,
    pub exclude_resource_tags: Vec<ResourceTag>,
    pub lock_state: Option<String>,
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// A snapshot in the Recycle Bin, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BinnedSnapshot {
    pub snapshot: Snapshot,
    pub entered: Millis,
    pub exit: Millis,
    /// The rule that retained it.
    pub rule: String,
}

fn retention_days(rp: &Option<RetentionPeriod>, resource_type: &str) -> Result<u32> {
    let Some(RetentionPeriod { value, unit }) = rp else {
        return Err(invalid("RetentionPeriod is required."));
    };
    let value = value.ok_or_else(|| invalid("RetentionPeriod.RetentionPeriodValue is required."))?;
    match unit.as_deref() {
        Some("DAYS") => {}
        None => return Err(invalid("RetentionPeriod.RetentionPeriodUnit is required.")),
        Some(u) => return Err(invalid(format!("RetentionPeriodUnit '{u}' is invalid. Valid values: DAYS"))),
    }
    let max = if resource_type == "EBS_VOLUME" { 7 } else { 365 };
    if !(1..=max).contains(&value) {
        return Err(invalid(format!(
            "RetentionPeriodValue {value} is invalid: retention rules for {resource_type} retain resources for 1 to {max} days."
        )));
    }
    Ok(value as u32)
}

fn check_resource_type(t: &Option<String>) -> Result<String> {
    match t.as_deref() {
        None => Err(invalid("ResourceType is required.")),
        Some("EBS_SNAPSHOT") | Some("EC2_IMAGE") => Ok(t.clone().unwrap_or_default()),
        Some("EBS_VOLUME") => Err(invalid(
            "ResourceType EBS_VOLUME is not supported by this Recycle Bin: deleted volumes are not retained. Valid values: EBS_SNAPSHOT, EC2_IMAGE",
        )),
        Some(o) => {
            Err(invalid(format!("ResourceType '{o}' is invalid. Valid values: EBS_SNAPSHOT, EC2_IMAGE, EBS_VOLUME")))
        }
    }
}

fn check_description(d: &Option<String>) -> Result<String> {
    let d = d.clone().unwrap_or_default();
    if d.chars().count() > 255 || d.chars().any(|c| c.is_whitespace() && c != ' ') {
        return Err(invalid("Description must be at most 255 characters, with no whitespace other than spaces."));
    }
    Ok(d)
}

fn check_resource_tags(tags: &[ResourceTag], what: &str, max: usize) -> Result<()> {
    if tags.len() > max {
        return Err(invalid(format!("{what} may hold at most {max} tags; {} were given.", tags.len())));
    }
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 {
            return Err(invalid(format!("{what}: ResourceTagKey must be 1 to 128 characters.")));
        }
        if t.value.as_ref().is_some_and(|v| v.chars().count() > 256) {
            return Err(invalid(format!("{what}: ResourceTagValue must be at most 256 characters.")));
        }
    }
    Ok(())
}

fn check_rule_tags(tags: &[Tag]) -> Result<()> {
    for t in tags {
        let ok_chars = |s: &str| s.chars().all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c));
        if t.key.is_empty() || t.key.chars().count() > 128 || !ok_chars(&t.key) {
            return Err(invalid(format!(
                "The tag key '{}' is invalid: 1 to 128 letters, digits, spaces or _.:/=+-@.",
                t.key
            )));
        }
        if t.value.chars().count() > 256 || !ok_chars(&t.value) {
            return Err(invalid(format!(
                "The tag value of '{}' is invalid: at most 256 letters, digits, spaces or _.:/=+-@.",
                t.key
            )));
        }
        if t.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(invalid(format!("The tag key '{}' is reserved (aws: prefix).", t.key)));
        }
    }
    Ok(())
}

fn check_lock(lock: &LockConfiguration) -> Result<u32> {
    let v = lock
        .unlock_delay_value
        .ok_or_else(|| invalid("LockConfiguration.UnlockDelay.UnlockDelayValue is required."))?;
    match lock.unlock_delay_unit.as_deref() {
        Some("DAYS") => {}
        None => return Err(invalid("LockConfiguration.UnlockDelay.UnlockDelayUnit is required.")),
        Some(u) => return Err(invalid(format!("UnlockDelayUnit '{u}' is invalid. Valid values: DAYS"))),
    }
    if !(7..=30).contains(&v) {
        return Err(invalid(format!("UnlockDelayValue {v} is invalid: the unlock delay is 7 to 30 days.")));
    }
    Ok(v as u32)
}

fn parse_rule(r: &Row) -> Result<RetentionRule> {
    serde_json::from_str(&r.doc)
        .map_err(|e| EngineError::Internal(format!("catalog row {KIND_RBIN_RULE}/{} is unreadable: {e}", r.id)))
}

fn parse_binned(r: &Row) -> Result<BinnedSnapshot> {
    serde_json::from_str(&r.doc)
        .map_err(|e| EngineError::Internal(format!("catalog row {KIND_RBIN_SNAPSHOT}/{} is unreadable: {e}", r.id)))
}

fn rule_rec(rule: &RetentionRule) -> Result<Rec> {
    Ok(Rec::Doc(
        KIND_RBIN_RULE,
        Row {
            kind: KIND_RBIN_RULE.into(),
            id: rule.identifier.clone(),
            account: rule.account.clone(),
            region: rule.region.clone(),
            doc: serde_json::to_string(rule)?,
        },
    ))
}

fn binned_rec(b: &BinnedSnapshot) -> Result<Rec> {
    Ok(Rec::Doc(
        KIND_RBIN_SNAPSHOT,
        Row {
            kind: KIND_RBIN_SNAPSHOT.into(),
            id: b.snapshot.id.clone(),
            account: b.snapshot.account.clone(),
            region: b.snapshot.region.clone(),
            doc: serde_json::to_string(b)?,
        },
    ))
}

fn rules_of(st: &State, ctx: &Ctx) -> Result<Vec<RetentionRule>> {
    match st.docs.get(KIND_RBIN_RULE) {
        None => Ok(Vec::new()),
        Some(m) => m.values().filter(|r| r.account == ctx.account && r.region == ctx.region).map(parse_rule).collect(),
    }
}

fn new_identifier(st: &State) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    loop {
        let id: String = (0..11).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
        if !st.docs.get(KIND_RBIN_RULE).is_some_and(|m| m.contains_key(&id)) {
            return id;
        }
    }
}

fn check_identifier(id: &str) -> Result<()> {
    if id.len() == 11 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(invalid(format!("The rule identifier '{id}' is invalid: 11 letters and digits.")))
    }
}

/// A snapshot of the caller in the bin (not past its exit time): the bin lets its tags change.
pub(crate) fn own_binned(st: &State, ctx: &Ctx, id: &str) -> Result<Option<BinnedSnapshot>> {
    let Some(row) = st.docs.get(KIND_RBIN_SNAPSHOT).and_then(|m| m.get(id)) else { return Ok(None) };
    if row.account != ctx.account || row.region != ctx.region {
        return Ok(None);
    }
    Ok(Some(parse_binned(row)?).filter(|b| b.exit > now_millis()))
}

/// The record that re-tags a binned snapshot.
pub(crate) fn retag_binned(mut b: BinnedSnapshot, tags: Tags) -> Result<Rec> {
    b.snapshot.tags = tags;
    binned_rec(&b)
}

/// The record of a snapshot in the bin (expired or not), for GC's archive pass.
pub(crate) fn binned_snapshot(st: &State, snapshot_id: &str) -> Option<Snapshot> {
    let row = st.docs.get(KIND_RBIN_SNAPSHOT)?.get(snapshot_id)?;
    parse_binned(row).ok().map(|b| b.snapshot)
}

/// Is a binned snapshot's manifest live (GC)? True while its document exists, expired or not: the
/// manifest goes only after the purge's commit is durable.
pub(crate) fn in_bin(st: &State, snapshot_id: &str) -> bool {
    st.docs.get(KIND_RBIN_SNAPSHOT).is_some_and(|m| m.contains_key(snapshot_id))
}

impl Engine {
    fn own_rule(&self, st: &State, ctx: &Ctx, id: &str) -> Result<RetentionRule> {
        check_identifier(id)?;
        let row = st
            .docs
            .get(KIND_RBIN_RULE)
            .and_then(|m| m.get(id))
            .filter(|r| r.account == ctx.account && r.region == ctx.region)
            .ok_or_else(|| not_found(id))?;
        parse_rule(row)
    }

    fn rule_of_arn(&self, st: &State, ctx: &Ctx, arn: &str) -> Result<RetentionRule> {
        let prefix = format!("arn:aws:rbin:{}:{}:rule/", ctx.region, ctx.account);
        match arn.strip_prefix(&prefix) {
            Some(id) if check_identifier(id).is_ok() => self.own_rule(st, ctx, id),
            Some(id) if !id.is_empty() && !id.contains('/') => Err(not_found(arn)),
            _ if arn.starts_with("arn:") && arn.contains(":rbin:") && arn.contains(":rule/") => Err(not_found(arn)),
            _ => Err(invalid(format!("'{arn}' is not a retention rule ARN."))),
        }
    }

    fn check_tag_quota(&self, st: &State, ctx: &Ctx, rule: &RetentionRule) -> Result<()> {
        let others = rules_of(st, ctx)?;
        for t in &rule.resource_tags {
            let n = others.iter().filter(|o| o.identifier != rule.identifier && o.resource_tags.contains(t)).count();
            if n >= MAX_RULES_PER_TAG {
                return Err(quota(format!(
                    "The resource tag {}={} is already used by {MAX_RULES_PER_TAG} retention rules.",
                    t.key,
                    t.value.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// CreateRule's checks alone (nothing is created): for the fuzzers.
    pub fn rbin_validate_create(&self, req: &CreateRule) -> Result<()> {
        let resource_type = check_resource_type(&req.resource_type)?;
        retention_days(&req.retention_period, &resource_type)?;
        check_description(&req.description)?;
        check_resource_tags(&req.resource_tags, "ResourceTags", 50)?;
        check_resource_tags(&req.exclude_resource_tags, "ExcludeResourceTags", 5)?;
        check_rule_tags(&req.tags)?;
        if let Some(l) = &req.lock {
            check_lock(l)?;
        }
        Ok(())
    }

    pub fn rbin_create_rule(&self, ctx: &Ctx, req: CreateRule) -> Result<RuleView> {
        let resource_type = check_resource_type(&req.resource_type)?;
        let retention_days = retention_days(&req.retention_period, &resource_type)?;
        let description = check_description(&req.description)?;
        check_resource_tags(&req.resource_tags, "ResourceTags", 50)?;
        check_resource_tags(&req.exclude_resource_tags, "ExcludeResourceTags", 5)?;
        if !req.resource_tags.is_empty() && !req.exclude_resource_tags.is_empty() {
            return Err(invalid(
                "ExcludeResourceTags can't be specified for tag-level retention rules (with ResourceTags).",
            ));
        }
        if req.tags.len() > 200 {
            return Err(invalid("A retention rule may have at most 200 tags."));
        }
        check_rule_tags(&req.tags)?;
        let unlock_delay_days = match &req.lock {
            None => None,
            Some(_) if !req.resource_tags.is_empty() || !req.exclude_resource_tags.is_empty() => {
                return Err(invalid(
                    "Only region-level retention rules without exclusion tags can be locked: remove LockConfiguration.",
                ));
            }
            Some(l) => Some(check_lock(l)?),
        };
        let mut st = self.lock();
        if rules_of(&st, ctx)?.len() >= MAX_RULES_PER_REGION {
            return Err(quota(format!(
                "An account may have at most {MAX_RULES_PER_REGION} retention rules per Region."
            )));
        }
        let now = now_millis();
        let rule = RetentionRule {
            identifier: new_identifier(&st),
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            description,
            resource_type,
            retention_days,
            resource_tags: req.resource_tags,
            exclude_resource_tags: req.exclude_resource_tags,
            tags: req.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            unlock_delay_days,
            unlock_at: None,
            created: now,
        };
        self.check_tag_quota(&st, ctx, &rule)?;
        self.commit(&mut st, vec![rule_rec(&rule)?])?;
        Ok(rule.view(now))
    }

    pub fn rbin_get_rule(&self, ctx: &Ctx, id: &str) -> Result<RuleView> {
        let st = self.lock();
        Ok(self.own_rule(&st, ctx, id)?.view(now_millis()))
    }

    pub fn rbin_list_rules(&self, ctx: &Ctx, req: &ListRules) -> Result<(Vec<RuleView>, Option<String>)> {
        let resource_type = check_resource_type(&req.resource_type).or_else(|e| {
            // Listing EBS_VOLUME rules is harmless: there are none.
            if req.resource_type.as_deref() == Some("EBS_VOLUME") { Ok("EBS_VOLUME".into()) } else { Err(e) }
        })?;
        let page = match req.max_results {
            None => 1000,
            Some(n) if (1..=1000).contains(&n) => n as usize,
            Some(n) => return Err(invalid(format!("MaxResults {n} is invalid: 1 to 1000."))),
        };
        if let Some(s) = req.lock_state.as_deref()
            && !matches!(s, "locked" | "pending_unlock" | "unlocked")
        {
            return Err(invalid(format!("LockState '{s}' is invalid. Valid values: locked, pending_unlock, unlocked")));
        }
        let after = match req.next_token.as_deref() {
            None => None,
            Some(t) => Some(crate::page_token::decode(crate::page_token::RBIN, t).ok_or_else(|| {
                EngineError::reasoned(VALIDATION, "INVALID_PAGE_TOKEN", "The NextToken is not one this service issued.")
            })?),
        };
        let st = self.lock();
        let now = now_millis();
        let mut rules = rules_of(&st, ctx)?;
        drop(st);
        rules.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        let mut out: Vec<RuleView> = rules
            .into_iter()
            .filter(|r| r.resource_type == resource_type)
            .filter(|r| after.as_deref().is_none_or(|a| r.identifier.as_str() > a))
            .filter(|r| req.resource_tags.iter().all(|t| r.resource_tags.contains(t)))
            .filter(|r| req.exclude_resource_tags.iter().all(|t| r.exclude_resource_tags.contains(t)))
            .map(|r| r.view(now))
            .filter(|v| req.lock_state.as_deref().is_none_or(|s| s == v.lock_state))
            .take(page + 1)
            .collect();
        let next = if out.len() > page {
            out.truncate(page);
            out.last().map(|v| crate::page_token::encode(crate::page_token::RBIN, &v.rule.identifier))
        } else {
            None
        };
        Ok((out, next))
    }

    pub fn rbin_update_rule(&self, ctx: &Ctx, req: UpdateRule) -> Result<RuleView> {
        let mut st = self.lock();
        let mut rule = self.own_rule(&st, ctx, &req.identifier)?;
        let now = now_millis();
        match rule.lock_state(now) {
            "unlocked" => {}
            state => return Err(conflict(&rule.identifier, state)),
        }
        if let Some(t) = &req.resource_type
            && *t != rule.resource_type
        {
            return Err(invalid("A retention rule's ResourceType can't be changed after creation."));
        }
        if req.retention_period.is_some() {
            rule.retention_days = retention_days(&req.retention_period, &rule.resource_type)?;
        }
        if req.description.is_some() {
            rule.description = check_description(&req.description)?;
        }
        if let Some(tags) = req.resource_tags {
            check_resource_tags(&tags, "ResourceTags", 50)?;
            rule.resource_tags = tags;
        }
        if let Some(tags) = req.exclude_resource_tags {
            check_resource_tags(&tags, "ExcludeResourceTags", 5)?;
            rule.exclude_resource_tags = tags;
        }
        if !rule.resource_tags.is_empty() && !rule.exclude_resource_tags.is_empty() {
            return Err(invalid(
                "ExcludeResourceTags can't be specified for tag-level retention rules (with ResourceTags).",
            ));
        }
        // An unlocked rule forgets a lock whose delay has passed.
        rule.unlock_delay_days = None;
        rule.unlock_at = None;
        self.check_tag_quota(&st, ctx, &rule)?;
        self.commit(&mut st, vec![rule_rec(&rule)?])?;
        Ok(rule.view(now))
    }

    pub fn rbin_delete_rule(&self, ctx: &Ctx, id: &str) -> Result<()> {
        let mut st = self.lock();
        let rule = self.own_rule(&st, ctx, id)?;
        match rule.lock_state(now_millis()) {
            "unlocked" => {}
            state => return Err(conflict(id, state)),
        }
        self.commit(&mut st, vec![Rec::DeleteDoc(KIND_RBIN_RULE, id.to_string())])
    }

    pub fn rbin_lock_rule(&self, ctx: &Ctx, id: &str, lock: Option<LockConfiguration>) -> Result<RuleView> {
        let lock = lock.ok_or_else(|| invalid("LockConfiguration is required."))?;
        let delay = check_lock(&lock)?;
        let mut st = self.lock();
        let mut rule = self.own_rule(&st, ctx, id)?;
        if !rule.is_region_level() || !rule.exclude_resource_tags.is_empty() {
            return Err(invalid(
                "Only region-level retention rules without exclusion tags can be locked; this rule has resource or exclusion tags.",
            ));
        }
        let now = now_millis();
        if rule.lock_state(now) == "locked" {
            return Err(conflict(id, "locked"));
        }
        rule.unlock_delay_days = Some(delay);
        rule.unlock_at = None;
        self.commit(&mut st, vec![rule_rec(&rule)?])?;
        Ok(rule.view(now))
    }

    pub fn rbin_unlock_rule(&self, ctx: &Ctx, id: &str) -> Result<RuleView> {
        let mut st = self.lock();
        let mut rule = self.own_rule(&st, ctx, id)?;
        let now = now_millis();
        let delay = match (rule.lock_state(now), rule.unlock_delay_days) {
            ("locked", Some(d)) => d,
            (state, _) => {
                return Err(EngineError::reasoned(
                    "ConflictException",
                    "INVALID_RULE_STATE",
                    format!("The rule {id} is {state}: only a locked rule can be unlocked."),
                ));
            }
        };
        rule.unlock_at = Some(now + delay as i64 * DAY_MS);
        self.commit(&mut st, vec![rule_rec(&rule)?])?;
        Ok(rule.view(now))
    }

    pub fn rbin_tag_resource(&self, ctx: &Ctx, arn: &str, tags: Vec<Tag>) -> Result<()> {
        check_rule_tags(&tags)?;
        let mut st = self.lock();
        let mut rule = self.rule_of_arn(&st, ctx, arn)?;
        for t in tags {
            rule.tags.insert(t.key, t.value);
        }
        if rule.tags.len() > 200 {
            return Err(quota("A retention rule may have at most 200 tags."));
        }
        self.commit(&mut st, vec![rule_rec(&rule)?])
    }

    pub fn rbin_untag_resource(&self, ctx: &Ctx, arn: &str, keys: &[String]) -> Result<()> {
        let mut st = self.lock();
        let mut rule = self.rule_of_arn(&st, ctx, arn)?;
        for k in keys {
            rule.tags.remove(k);
        }
        self.commit(&mut st, vec![rule_rec(&rule)?])
    }

    pub fn rbin_list_tags(&self, ctx: &Ctx, arn: &str) -> Result<Tags> {
        let st = self.lock();
        Ok(self.rule_of_arn(&st, ctx, arn)?.tags)
    }

    // ---- the bin ------------------------------------------------------------------------------

    /// The records that move deleted snapshots a rule retains into the bin (instead of deleting
    /// them), and the ids moved. The longest retention of the matching rules wins.
    pub(crate) fn recycle_bin_records(
        &self,
        st: &State,
        ctx: &Ctx,
        snaps: &[Snapshot],
    ) -> Result<(Vec<Rec>, Vec<String>)> {
        let rules = rules_of(st, ctx)?;
        if rules.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let now = now_millis();
        let (mut recs, mut ids) = (Vec::new(), Vec::new());
        for s in snaps {
            // Only completed snapshots are worth keeping: one in error has no data to restore.
            if s.state != SnapshotState::Completed {
                continue;
            }
            let Some(rule) = rules.iter().filter(|r| r.retains(&s.tags)).max_by_key(|r| r.retention_days) else {
                continue;
            };
            // An archive or tier restore still running would finish against a row that is gone:
            // the bin takes the snapshot once the job has ended.
            if s.tiering.as_ref().is_some_and(|t| {
                matches!(
                    t.status,
                    TieringStatus::ArchivalInProgress
                        | TieringStatus::TemporaryRestoreInProgress
                        | TieringStatus::PermanentRestoreInProgress
                )
            }) {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!(
                        "Snapshot '{}' has a storage tier operation in progress; a Recycle Bin rule retains it, so delete it once the operation has completed.",
                        s.id
                    ),
                ));
            }
            let binned = BinnedSnapshot {
                snapshot: s.clone(),
                entered: now,
                exit: now + rule.retention_days as i64 * DAY_MS,
                rule: rule.identifier.clone(),
            };
            recs.push(binned_rec(&binned)?);
            ids.push(s.id.clone());
        }
        Ok((recs, ids))
    }

    fn binned_of(st: &State, ctx: &Ctx, now: Millis) -> Result<Vec<BinnedSnapshot>> {
        match st.docs.get(KIND_RBIN_SNAPSHOT) {
            None => Ok(Vec::new()),
            Some(m) => Ok(m
                .values()
                .filter(|r| r.account == ctx.account && r.region == ctx.region)
                .map(parse_binned)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|b| b.exit > now)
                .collect()),
        }
    }

    pub fn list_snapshots_in_recycle_bin(
        &self,
        ctx: &Ctx,
        q: &crate::ListQuery,
        dry_run: bool,
    ) -> Result<crate::Page<BinnedSnapshot>> {
        for id in &q.ids {
            if !crate::ids::is_valid("snap", id) {
                return Err(EngineError::client(
                    "InvalidSnapshotID.Malformed",
                    format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
                ));
            }
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        let st = self.lock();
        let items: Vec<BinnedSnapshot> = Self::binned_of(&st, ctx, now_millis())?
            .into_iter()
            .filter(|b| q.ids.is_empty() || q.ids.contains(&b.snapshot.id))
            .collect();
        drop(st);
        const LIMITS: crate::describe::Limits =
            crate::describe::Limits { min: 5, max: 1000, clamp_above: false, ids_exclude_max: false };
        crate::page_of(q, LIMITS, items, |b| &b.snapshot.id)
    }

    pub fn restore_snapshot_from_recycle_bin(&self, ctx: &Ctx, id: &str, dry_run: bool) -> Result<Snapshot> {
        if !crate::ids::is_valid("snap", id) {
            return Err(EngineError::client(
                "InvalidSnapshotID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"snap-...\")"),
            ));
        }
        let mut st = self.lock();
        let now = now_millis();
        let binned = st
            .docs
            .get(KIND_RBIN_SNAPSHOT)
            .and_then(|m| m.get(id))
            .filter(|r| r.account == ctx.account && r.region == ctx.region)
            .map(parse_binned)
            .transpose()?
            .filter(|b| b.exit > now)
            .ok_or_else(|| {
                EngineError::client(
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{id}' does not exist in the Recycle Bin."),
                )
            })?;
        if dry_run {
            return Err(EngineError::DryRun);
        }
        let snap = binned.snapshot;
        self.commit(&mut st, vec![Rec::DeleteDoc(KIND_RBIN_SNAPSHOT, id.to_string()), Rec::Snapshot(snap.clone())])?;
        tracing::info!(snapshot_id = id, "snapshot restored from the Recycle Bin");
        Ok(snap)
    }

    /// Purge binned snapshots past their exit time: each document's deletion is committed and
    /// durable before its manifest is removed. Answers how many were purged.
    pub fn purge_recycle_bin(&self) -> Result<usize> {
        let now = now_millis();
        let mut st = self.lock();
        let expired: Vec<BinnedSnapshot> = match st.docs.get(KIND_RBIN_SNAPSHOT) {
            None => return Ok(0),
            Some(m) => m
                .values()
                .map(parse_binned)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|b| b.exit <= now)
                .collect(),
        };
        if expired.is_empty() {
            return Ok(0);
        }
        let recs = expired.iter().map(|b| Rec::DeleteDoc(KIND_RBIN_SNAPSHOT, b.snapshot.id.clone())).collect();
        self.commit(&mut st, recs)?;
        drop(st);
        self.sync_pending()?;
        for b in &expired {
            tracing::info!(snapshot_id = b.snapshot.id, "snapshot purged from the Recycle Bin (retention over)");
            self.forget_snapshot_data(&b.snapshot);
        }
        Ok(expired.len())
    }

    /// Purge the bin every `interval` (on blocking threads, never two passes at once).
    pub fn start_recycle_bin(self: &Arc<Self>, interval: Duration) {
        let Some(storage) = &self.storage else { return };
        let me = Arc::downgrade(self);
        let interval = interval.max(Duration::from_millis(10));
        storage.runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(engine) = me.upgrade() else { return };
                let pass = tokio::task::spawn_blocking(move || engine.purge_recycle_bin()).await;
                match pass {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "purging the Recycle Bin failed; retrying at the next pass")
                    }
                    Err(e) => tracing::warn!(error = %e, "the Recycle Bin pass panicked"),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource_tags: Vec<ResourceTag>, exclude: Vec<ResourceTag>) -> RetentionRule {
        RetentionRule {
            identifier: "abcdefghijk".into(),
            account: "123456789012".into(),
            region: "us-east-1".into(),
            description: String::new(),
            resource_type: "EBS_SNAPSHOT".into(),
            retention_days: 1,
            resource_tags,
            exclude_resource_tags: exclude,
            tags: Tags::new(),
            unlock_delay_days: None,
            unlock_at: None,
            created: 0,
        }
    }

    fn tag(k: &str, v: Option<&str>) -> ResourceTag {
        ResourceTag { key: k.into(), value: v.map(str::to_string) }
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tag_level_rules_retain_any_matching_tag() {
        let r = rule(vec![tag("keep", Some("yes")), tag("gold", None)], vec![]);
        assert!(r.retains(&tags(&[("keep", "yes")])));
        assert!(!r.retains(&tags(&[("keep", "no")])));
        assert!(r.retains(&tags(&[("gold", "anything")])));
        assert!(!r.retains(&Tags::new()));
    }

    #[test]
    fn region_level_rules_retain_all_but_exclusions() {
        let r = rule(vec![], vec![tag("temp", None)]);
        assert!(r.retains(&Tags::new()));
        assert!(!r.retains(&tags(&[("temp", "1")])));
        let mut image = rule(vec![], vec![]);
        image.resource_type = "EC2_IMAGE".into();
        assert!(!image.retains(&Tags::new()), "image rules never retain snapshots");
    }

    #[test]
    fn rule_lock_states_follow_the_clock() {
        let mut r = rule(vec![], vec![]);
        assert_eq!(r.lock_state(0), "unlocked");
        r.unlock_delay_days = Some(7);
        assert_eq!(r.lock_state(0), "locked");
        r.unlock_at = Some(7 * DAY_MS);
        assert_eq!(r.lock_state(7 * DAY_MS - 1), "pending_unlock");
        assert_eq!(r.lock_state(7 * DAY_MS), "unlocked");
        let v = r.view(0);
        assert_eq!((v.lock_end_time, v.unlock_delay_days), (Some(7 * DAY_MS), Some(7)));
        assert_eq!(r.view(7 * DAY_MS).unlock_delay_days, None);
    }

    #[test]
    fn retention_periods_are_checked() {
        let rp = |v: i64, u: &str| Some(RetentionPeriod { value: Some(v), unit: Some(u.into()) });
        assert_eq!(retention_days(&rp(365, "DAYS"), "EBS_SNAPSHOT").ok(), Some(365));
        assert!(retention_days(&rp(366, "DAYS"), "EBS_SNAPSHOT").is_err());
        assert!(retention_days(&rp(0, "DAYS"), "EBS_SNAPSHOT").is_err());
        assert!(retention_days(&rp(1, "HOURS"), "EBS_SNAPSHOT").is_err());
        assert!(retention_days(&None, "EBS_SNAPSHOT").is_err());
    }
}
