//! Amazon Data Lifecycle Manager: lifecycle policies that snapshot volumes or instances on a
//! schedule, copy the snapshots to other regions and retire them by count or age.
//!
//! A policy is one catalog row (kind `dlm_policy`, owned by this module through `Rec::Doc`): what
//! the caller set (description, role, state, [`PolicyDetails`], tags) and the scheduler's own state
//! (the slot claimed last per schedule, a run in progress, copies still to start, the last error).
//! Custom snapshot policies (`EBS_SNAPSHOT_MANAGEMENT`) only: default policies, AMI and event
//! policies, fast snapshot restore and scripts are refused with
//! `InvalidRequestException`. The scheduler is `runner.rs`; schedule arithmetic `schedule.rs`; the
//! policy operations `policies.rs`.

mod policies;
pub mod runner;
pub mod schedule;

use std::collections::BTreeMap;

use blocksnap_catalog::Row;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Rec, State};
use crate::error::EngineError;
use crate::ids;
use crate::model::*;
use crate::tags::{TagRules, TagViolation, tag_violation};

pub(crate) const KIND_DLM_POLICY: &str = "dlm_policy";
/// Lifecycle policies per account and region.
pub const MAX_POLICIES: usize = 100;
/// The tags DLM puts on every snapshot a policy creates.
pub const TAG_POLICY_ID: &str = "aws:dlm:lifecycle-policy-id";
pub const TAG_SCHEDULE_NAME: &str = "aws:dlm:lifecycle-schedule-name";
pub const TAG_MANAGED: &str = "dlm:managed";
/// On snapshots (and copies) retired by age: when they go (ISO 8601, UTC).
pub const TAG_EXPIRATION: &str = "aws:dlm:expirationTime";

/// The errors Data Lifecycle Manager defines, with their documented fields.
#[derive(Debug, thiserror::Error)]
pub enum DlmError {
    #[error("InvalidRequestException: {message}")]
    InvalidRequest { message: String, required: Vec<String>, exclusive: Vec<String> },
    #[error("ResourceNotFoundException: {message}")]
    NotFound { message: String, resource_type: &'static str, ids: Vec<String> },
    #[error("LimitExceededException: {message}")]
    LimitExceeded { message: String, resource_type: &'static str },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl DlmError {
    pub fn code(&self) -> &'static str {
        match self {
            DlmError::InvalidRequest { .. } => "InvalidRequestException",
            DlmError::NotFound { .. } => "ResourceNotFoundException",
            DlmError::LimitExceeded { .. } => "LimitExceededException",
            DlmError::Engine(e) => e.code(),
        }
    }
}

fn invalid(message: impl Into<String>) -> DlmError {
    DlmError::InvalidRequest { message: message.into(), required: vec![], exclusive: vec![] }
}

fn required(name: &str) -> DlmError {
    DlmError::InvalidRequest {
        message: format!("The request must contain the parameter {name}."),
        required: vec![name.to_string()],
        exclusive: vec![],
    }
}

fn exclusive(a: &str, b: &str, message: impl Into<String>) -> DlmError {
    DlmError::InvalidRequest { message: message.into(), required: vec![], exclusive: vec![a.into(), b.into()] }
}

fn not_found(id: &str) -> DlmError {
    DlmError::NotFound {
        message: format!("Lifecycle policy {id} not found."),
        resource_type: "LifecyclePolicy",
        ids: vec![id.to_string()],
    }
}

pub type DlmResult<T> = std::result::Result<T, DlmError>;

// ---- the policy document ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `PolicyDetails` of a custom snapshot policy. Enumerated values are kept as sent (validated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDetails {
    pub policy_type: Option<String>,
    pub policy_language: Option<String>,
    pub resource_types: Vec<String>,
    pub resource_locations: Vec<String>,
    pub target_tags: Vec<KeyValue>,
    pub schedules: Vec<ScheduleSpec>,
    pub parameters: Option<Parameters>,
    /// Members of default, AMI or event policies that were given (refused by name).
    #[serde(default)]
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    pub exclude_boot_volume: Option<bool>,
    pub no_reboot: Option<bool>,
    pub exclude_data_volume_tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub name: Option<String>,
    pub copy_tags: Option<bool>,
    pub tags_to_add: Vec<KeyValue>,
    pub variable_tags: Vec<KeyValue>,
    pub create_rule: Option<CreateRule>,
    pub retain_rule: Option<RetainRule>,
    pub cross_region_copy_rules: Vec<CopyRule>,
    /// `ShareRules`: accounts the snapshots are shared with, and when they are unshared.
    #[serde(default)]
    pub share_rules: Vec<ShareRule>,
    /// `ArchiveRule`'s `RetentionArchiveTier`: snapshots the retain rule retires are archived
    /// instead, and kept in the archive tier by this count or age.
    #[serde(default)]
    pub archive_rule: Option<RetainRule>,
    /// Schedule members blocksnap does not implement that were given (refused by name).
    #[serde(default)]
    pub unsupported: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRule {
    pub location: Option<String>,
    pub interval: Option<i64>,
    pub interval_unit: Option<String>,
    pub times: Vec<String>,
    pub cron_expression: Option<String>,
    #[serde(default)]
    pub scripts: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainRule {
    pub count: Option<i64>,
    pub interval: Option<i64>,
    pub interval_unit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRule {
    pub target_region: Option<String>,
    pub target: Option<String>,
    pub encrypted: Option<bool>,
    pub cmk_arn: Option<String>,
    pub copy_tags: Option<bool>,
    /// `(Interval, IntervalUnit)`.
    pub retain_rule: Option<(Option<i64>, Option<String>)>,
    #[serde(default)]
    pub deprecate_rule: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRule {
    pub target_accounts: Vec<String>,
    pub unshare_interval: Option<i64>,
    pub unshare_interval_unit: Option<String>,
}

/// A policy as stored: the caller's settings and the scheduler's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub account: String,
    pub region: String,
    pub description: String,
    pub execution_role_arn: String,
    pub enabled: bool,
    pub details: PolicyDetails,
    pub tags: Tags,
    pub created: Millis,
    pub modified: Millis,
    /// When the policy was last enabled: no slot at or before it runs.
    pub enabled_since: Millis,
    /// Per schedule name: slots at or before this time are claimed (run or skipped).
    #[serde(default)]
    pub claimed: BTreeMap<String, Millis>,
    /// Runs claimed and not yet recorded as done: a restart finds their snapshots by tag.
    #[serde(default)]
    pub in_progress: Vec<RunClaim>,
    /// Snapshots whose cross-region copies are still to be started.
    #[serde(default)]
    pub pending_copies: Vec<PendingCopy>,
    /// Why the last run failed (the policy's state reads `ERROR`); cleared by a clean run.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunClaim {
    pub schedule: String,
    pub slot: Millis,
    pub started: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCopy {
    pub snapshot_id: String,
    pub schedule: String,
    /// Target regions not copied to yet.
    pub regions: Vec<String>,
}

impl Policy {
    pub fn arn(&self) -> String {
        policy_arn(&self.region, &self.account, &self.id)
    }

    /// `ENABLED`, `DISABLED` or `ERROR`.
    pub fn state(&self) -> &'static str {
        match (self.enabled, &self.error) {
            (true, Some(_)) => "ERROR",
            (true, None) => "ENABLED",
            (false, _) => "DISABLED",
        }
    }

    pub fn status_message(&self) -> String {
        match &self.error {
            Some(e) if self.enabled => e.clone(),
            _ => self.state().to_string(),
        }
    }

    pub fn resource_type(&self) -> &str {
        self.details.resource_types.first().map(String::as_str).unwrap_or("VOLUME")
    }

    pub fn schedule(&self, name: &str) -> Option<&ScheduleSpec> {
        self.details.schedules.iter().find(|s| s.name.as_deref() == Some(name))
    }
}

pub fn policy_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:aws:dlm:{region}:{account}:policy/{id}")
}

// ---- requests -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct CreatePolicy {
    pub execution_role_arn: Option<String>,
    pub description: Option<String>,
    pub state: Option<String>,
    pub details: Option<PolicyDetails>,
    pub tags: Vec<KeyValue>,
    /// Members only default policies take that were given (`DefaultPolicy`, `CreateInterval`, …).
    pub default_policy_members: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UpdatePolicy {
    pub policy_id: String,
    pub execution_role_arn: Option<String>,
    pub description: Option<String>,
    pub state: Option<String>,
    pub details: Option<PolicyDetails>,
    pub default_policy_members: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct GetPolicies {
    pub policy_ids: Vec<String>,
    pub state: Option<String>,
    pub resource_types: Vec<String>,
    /// `key=value`.
    pub target_tags: Vec<String>,
    /// `key=value`.
    pub tags_to_add: Vec<String>,
    pub default_policy_type: Option<String>,
}

// ---- validation ---------------------------------------------------------------------------------

fn check_role(arn: &str) -> DlmResult<()> {
    let ok = (|| {
        let rest = arn.strip_prefix("arn:")?;
        let (partition, rest) = rest.split_once(":iam::")?;
        let (account, role) = rest.split_once(":role/")?;
        let p_ok = partition == "aws"
            || partition.strip_prefix("aws-").is_some_and(|p| {
                p.split('-').count() <= 2
                    && p.split('-').all(|s| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase()))
            });
        (p_ok
            && !account.is_empty()
            && account.bytes().all(|b| b.is_ascii_digit())
            && arn.len() <= 2048
            && !role.is_empty())
        .then_some(())
    })();
    ok.ok_or_else(|| {
        invalid(format!("ExecutionRoleArn {arn} is not a valid IAM role ARN (arn:aws:iam::<account>:role/<name>)."))
    })
}

fn check_name(what: &str, s: &str, max: usize) -> DlmResult<()> {
    if s.is_empty()
        || s.len() > max
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_' || b == b'-')
    {
        return Err(invalid(format!(
            "{what} '{s}' is not valid: 1 to {max} characters of letters, digits, spaces, '_' and '-'."
        )));
    }
    Ok(())
}

/// DLM's tags: keys of 1 to 128 characters, values of up to 256, any characters (the engine's one
/// tag checker with DLM's limits).
const DLM_TAG_RULES: TagRules = TagRules { max_key_chars: 128, max_value_chars: 256, allowed: None };

fn check_tag_kv(what: &str, t: &KeyValue) -> DlmResult<()> {
    let tag = Tag { key: t.key.clone(), value: t.value.clone() };
    match tag_violation(&DLM_TAG_RULES, &tag) {
        None => Ok(()),
        Some(TagViolation::ReservedKey) => {
            Err(invalid(format!("{what}: tag key '{}' is reserved: keys starting with 'aws:' are AWS's.", t.key)))
        }
        Some(_) => {
            Err(invalid(format!("{what}: tag key '{}' must be 1 to 128 characters and its value at most 256.", t.key)))
        }
    }
}

fn check_state(s: &str) -> DlmResult<bool> {
    match s {
        "ENABLED" => Ok(true),
        "DISABLED" => Ok(false),
        other => Err(invalid(format!("State {other} is not valid: use ENABLED or DISABLED."))),
    }
}

const RETAIN_UNITS: &[(&str, i64)] = &[("DAYS", 1), ("WEEKS", 7), ("MONTHS", 30), ("YEARS", 365)];

/// An age `Interval` + `IntervalUnit`, at most 100 years.
fn check_age(what: &str, interval: Option<i64>, unit: Option<&str>) -> DlmResult<(i64, String)> {
    let (Some(n), Some(u)) = (interval, unit) else {
        return Err(DlmError::InvalidRequest {
            message: format!("{what}: an age needs both Interval and IntervalUnit."),
            required: vec!["Interval".into(), "IntervalUnit".into()],
            exclusive: vec![],
        });
    };
    let days =
        RETAIN_UNITS.iter().find(|(name, _)| *name == u).map(|(_, d)| *d).ok_or_else(|| {
            invalid(format!("{what}: IntervalUnit {u} is not valid: use DAYS, WEEKS, MONTHS or YEARS."))
        })?;
    if n < 1 || n.saturating_mul(days) > 36_500 {
        return Err(invalid(format!("{what}: Interval {n} {u} is not valid: 1 up to 100 years.")));
    }
    Ok((n, u.to_string()))
}

/// When a snapshot taken at `t` expires under an age rule (calendar months and years).
pub fn expiry(t: Millis, interval: i64, unit: &str) -> Millis {
    let day = 86_400_000i64;
    match unit {
        "DAYS" => t + interval * day,
        "WEEKS" => t + interval * 7 * day,
        _ => {
            let months = if unit == "YEARS" { interval * 12 } else { interval };
            let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t) * 1_000_000) else {
                return t + months * 30 * day;
            };
            let total = i64::from(at.year()) * 12 + (at.month() as i64 - 1) + months;
            let (y, m) = (total.div_euclid(12) as i32, (total.rem_euclid(12) + 1) as u8);
            let month = time::Month::try_from(m).unwrap_or(time::Month::January);
            let d = at.day().min(month.length(y));
            match time::Date::from_calendar_date(y, month, d) {
                Ok(date) => at.replace_date(date).unix_timestamp() * 1000 + i64::from(at.millisecond()),
                Err(_) => t + months * 30 * day,
            }
        }
    }
}

/// The schedule a create rule describes (`created` anchors intervals without `Times`).
pub fn schedule_of(c: &CreateRule, created: Millis, now: Millis) -> DlmResult<schedule::Schedule> {
    match (&c.cron_expression, c.interval.is_some() || c.interval_unit.is_some() || !c.times.is_empty()) {
        (Some(_), true) => Err(exclusive(
            "CronExpression",
            "Interval",
            "CreateRule takes either CronExpression or Interval, IntervalUnit and Times, not both.",
        )),
        (Some(e), false) => schedule::Schedule::cron(e, now).map_err(invalid),
        (None, false) => Err(DlmError::InvalidRequest {
            message: "CreateRule needs CronExpression, or Interval and IntervalUnit.".into(),
            required: vec!["Interval".into(), "IntervalUnit".into()],
            exclusive: vec![],
        }),
        (None, true) => {
            let n = c.interval.ok_or_else(|| required("Interval"))?;
            match c.interval_unit.as_deref() {
                Some("HOURS") => {}
                Some(u) => return Err(invalid(format!("CreateRule IntervalUnit {u} is not valid: use HOURS."))),
                None => return Err(required("IntervalUnit")),
            }
            if c.times.len() > 1 {
                return Err(invalid("CreateRule Times takes at most one time."));
            }
            let hours = u32::try_from(n).map_err(|_| invalid(format!("Interval {n} is not valid.")))?;
            schedule::Schedule::interval(hours, c.times.first().map(String::as_str), created).map_err(invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_use_calendar_months() {
        let t = 1_798_675_200_000; // 2026-12-31T00:00:00Z
        assert_eq!(expiry(t, 2, "DAYS"), t + 2 * 86_400_000);
        assert_eq!(expiry(t, 1, "WEEKS"), t + 7 * 86_400_000);
        // 2027-02-28 (clamped), 2027-12-31.
        assert_eq!(expiry(t, 2, "MONTHS"), 1_803_772_800_000);
        assert_eq!(expiry(t, 1, "YEARS"), 1_830_211_200_000);
    }

    #[test]
    fn role_arns() {
        assert!(check_role("arn:aws:iam::123456789012:role/AWSDataLifecycleManagerDefaultRole").is_ok());
        assert!(check_role("arn:aws-us-gov:iam::123456789012:role/x").is_ok());
        assert!(check_role("arn:aws:iam::123456789012:user/x").is_err());
        assert!(check_role("role/x").is_err());
    }
}
