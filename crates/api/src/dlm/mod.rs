//! Data Lifecycle Manager (`dlm`, API version 2018-01-12, REST-JSON, SigV4 service `dlm`):
//! scheduled snapshot policies. Routed here by the credential scope's service (see
//! `crate::RestService`); one typed [`Endpoint`] per method + path, bodies parsed into the
//! engine's typed requests (`blocksnap_engine::dlm`), results and DLM's errors (with their
//! documented fields: `RequiredParameters`, `MutuallyExclusiveParameters`, `ResourceIds`,
//! `ResourceType`) rendered here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use blocksnap_engine::dlm::{
    CopyRule, CreatePolicy, CreateRule, DlmError, GetPolicies, KeyValue, Parameters, Policy, PolicyDetails, RetainRule,
    ScheduleSpec, ShareRule, UpdatePolicy,
};
use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Map, Value, json};

/// The SigV4 service name of Data Lifecycle Manager.
pub const SERVICE: &str = "dlm";

/// The operations served (the CLI sweep reads this list).
pub const OPERATIONS: &[&str] = &[
    "CreateLifecyclePolicy",
    "GetLifecyclePolicies",
    "GetLifecyclePolicy",
    "UpdateLifecyclePolicy",
    "DeleteLifecyclePolicy",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
];

/// One request of Data Lifecycle Manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    CreateLifecyclePolicy,
    GetLifecyclePolicies,
    GetLifecyclePolicy { policy_id: String },
    UpdateLifecyclePolicy { policy_id: String },
    DeleteLifecyclePolicy { policy_id: String },
    TagResource { arn: String },
    UntagResource { arn: String },
    ListTagsForResource { arn: String },
}

fn invalid(message: impl Into<String>) -> DlmError {
    DlmError::InvalidRequest { message: message.into(), required: vec![], exclusive: vec![] }
}

impl Endpoint {
    pub fn parse(method: &Method, uri: &Uri) -> Result<Endpoint, EngineError> {
        let path = uri.path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let ep = match (method.as_str(), parts.as_slice()) {
            ("POST", ["policies"]) => Some(Endpoint::CreateLifecyclePolicy),
            ("GET", ["policies"]) => Some(Endpoint::GetLifecyclePolicies),
            ("GET", ["policies", id]) => Some(Endpoint::GetLifecyclePolicy { policy_id: decode(id) }),
            ("PATCH", ["policies", id]) => Some(Endpoint::UpdateLifecyclePolicy { policy_id: decode(id) }),
            ("DELETE", ["policies", id]) => Some(Endpoint::DeleteLifecyclePolicy { policy_id: decode(id) }),
            ("POST", ["tags", arn]) => Some(Endpoint::TagResource { arn: decode(arn) }),
            ("DELETE", ["tags", arn]) => Some(Endpoint::UntagResource { arn: decode(arn) }),
            ("GET", ["tags", arn]) => Some(Endpoint::ListTagsForResource { arn: decode(arn) }),
            _ => None,
        };
        ep.ok_or_else(|| {
            EngineError::client(
                "UnknownOperationException",
                format!("{method} {} is not an operation of Data Lifecycle Manager.", uri.path()),
            )
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::CreateLifecyclePolicy => "CreateLifecyclePolicy",
            Endpoint::GetLifecyclePolicies => "GetLifecyclePolicies",
            Endpoint::GetLifecyclePolicy { .. } => "GetLifecyclePolicy",
            Endpoint::UpdateLifecyclePolicy { .. } => "UpdateLifecyclePolicy",
            Endpoint::DeleteLifecyclePolicy { .. } => "DeleteLifecyclePolicy",
            Endpoint::TagResource { .. } => "TagResource",
            Endpoint::UntagResource { .. } => "UntagResource",
            Endpoint::ListTagsForResource { .. } => "ListTagsForResource",
        }
    }
}

// ---- reading the request -----------------------------------------------------------------------

use crate::rest_json::{self, Obj};

fn body_json(body: &[u8]) -> Result<Obj, DlmError> {
    rest_json::body_object(body, invalid)
}

fn string(m: &Obj, k: &str) -> Result<Option<String>, DlmError> {
    rest_json::string(m, k, invalid)
}

fn int(m: &Obj, k: &str) -> Result<Option<i64>, DlmError> {
    rest_json::int(m, k, invalid)
}

fn boolean(m: &Obj, k: &str) -> Result<Option<bool>, DlmError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(format!("{k} must be a boolean."))),
    }
}

fn list<'a>(m: &'a Obj, k: &str) -> Result<&'a [Value], DlmError> {
    Ok(rest_json::list(m, k, invalid)?.unwrap_or_default())
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Obj, DlmError> {
    v.as_object().ok_or_else(|| invalid(format!("{what} must be an object.")))
}

fn child<'a>(m: &'a Obj, k: &str) -> Result<Option<&'a Obj>, DlmError> {
    rest_json::child(m, k, invalid)
}

fn strings(m: &Obj, k: &str) -> Result<Vec<String>, DlmError> {
    list(m, k)?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid(format!("{k} must be a list of strings."))))
        .collect()
}

/// A list of `{Key, Value}`.
fn tag_list(m: &Obj, k: &str) -> Result<Vec<KeyValue>, DlmError> {
    list(m, k)?
        .iter()
        .map(|v| {
            let t = object(v, k)?;
            let key = string(t, "Key")?.ok_or_else(|| invalid(format!("Each of {k} needs a Key.")))?;
            let value = string(t, "Value")?.ok_or_else(|| invalid(format!("Each of {k} needs a Value.")))?;
            Ok(KeyValue { key, value })
        })
        .collect()
}

/// A `TagMap` (`{"key": "value", …}`).
fn tag_map(m: &Obj, k: &str) -> Result<Vec<KeyValue>, DlmError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Object(t)) => t
            .iter()
            .map(|(key, v)| {
                v.as_str()
                    .map(|value| KeyValue { key: key.clone(), value: value.to_string() })
                    .ok_or_else(|| invalid(format!("{k}: the value of {key} must be a string.")))
            })
            .collect(),
        Some(_) => Err(invalid(format!("{k} must be a map of strings."))),
    }
}

fn given(m: &Obj, names: &[&str]) -> Vec<String> {
    names.iter().filter(|n| m.get(**n).is_some_and(|v| !v.is_null())).map(|n| n.to_string()).collect()
}

/// Members of the create and update requests that only default policies take.
const DEFAULT_POLICY_MEMBERS: &[&str] = &[
    "DefaultPolicy",
    "CreateInterval",
    "RetainInterval",
    "CopyTags",
    "ExtendDeletion",
    "CrossRegionCopyTargets",
    "Exclusions",
];

fn details(m: &Obj) -> Result<PolicyDetails, DlmError> {
    let mut schedules = Vec::new();
    for s in list(m, "Schedules")? {
        let s = object(s, "Schedules")?;
        let create_rule = child(s, "CreateRule")?
            .map(|c| -> Result<CreateRule, DlmError> {
                Ok(CreateRule {
                    location: string(c, "Location")?,
                    interval: int(c, "Interval")?,
                    interval_unit: string(c, "IntervalUnit")?,
                    times: strings(c, "Times")?,
                    cron_expression: string(c, "CronExpression")?,
                    scripts: !list(c, "Scripts")?.is_empty(),
                })
            })
            .transpose()?;
        let retain_rule = child(s, "RetainRule")?
            .map(|r| -> Result<RetainRule, DlmError> {
                Ok(RetainRule {
                    count: int(r, "Count")?,
                    interval: int(r, "Interval")?,
                    interval_unit: string(r, "IntervalUnit")?,
                })
            })
            .transpose()?;
        let mut copies = Vec::new();
        for c in list(s, "CrossRegionCopyRules")? {
            let c = object(c, "CrossRegionCopyRules")?;
            copies.push(CopyRule {
                target_region: string(c, "TargetRegion")?,
                target: string(c, "Target")?,
                encrypted: boolean(c, "Encrypted")?,
                cmk_arn: string(c, "CmkArn")?,
                copy_tags: boolean(c, "CopyTags")?,
                retain_rule: child(c, "RetainRule")?
                    .map(|r| -> Result<_, DlmError> { Ok((int(r, "Interval")?, string(r, "IntervalUnit")?)) })
                    .transpose()?,
                deprecate_rule: child(c, "DeprecateRule")?.is_some(),
            });
        }
        let mut share_rules = Vec::new();
        for r in list(s, "ShareRules")? {
            let r = object(r, "ShareRules")?;
            share_rules.push(ShareRule {
                target_accounts: strings(r, "TargetAccounts")?,
                unshare_interval: int(r, "UnshareInterval")?,
                unshare_interval_unit: string(r, "UnshareIntervalUnit")?,
            });
        }
        let archive_rule = match child(s, "ArchiveRule")? {
            None => None,
            Some(a) => {
                let retain = child(a, "RetainRule")?.ok_or_else(|| DlmError::InvalidRequest {
                    message: "ArchiveRule needs a RetainRule.".into(),
                    required: vec!["RetainRule".into()],
                    exclusive: vec![],
                })?;
                let tier = child(retain, "RetentionArchiveTier")?.ok_or_else(|| DlmError::InvalidRequest {
                    message: "ArchiveRule.RetainRule needs a RetentionArchiveTier.".into(),
                    required: vec!["RetentionArchiveTier".into()],
                    exclusive: vec![],
                })?;
                Some(RetainRule {
                    count: int(tier, "Count")?,
                    interval: int(tier, "Interval")?,
                    interval_unit: string(tier, "IntervalUnit")?,
                })
            }
        };
        schedules.push(ScheduleSpec {
            name: string(s, "Name")?,
            copy_tags: boolean(s, "CopyTags")?,
            tags_to_add: tag_list(s, "TagsToAdd")?,
            variable_tags: tag_list(s, "VariableTags")?,
            create_rule,
            retain_rule,
            cross_region_copy_rules: copies,
            share_rules,
            archive_rule,
            unsupported: given(s, &["FastRestoreRule", "DeprecateRule"]),
        });
    }
    let parameters = child(m, "Parameters")?
        .map(|p| -> Result<Parameters, DlmError> {
            Ok(Parameters {
                exclude_boot_volume: boolean(p, "ExcludeBootVolume")?,
                no_reboot: boolean(p, "NoReboot")?,
                exclude_data_volume_tags: tag_list(p, "ExcludeDataVolumeTags")?,
            })
        })
        .transpose()?;
    Ok(PolicyDetails {
        policy_type: string(m, "PolicyType")?,
        policy_language: string(m, "PolicyLanguage")?,
        resource_types: strings(m, "ResourceTypes")?,
        resource_locations: strings(m, "ResourceLocations")?,
        target_tags: tag_list(m, "TargetTags")?,
        schedules,
        parameters,
        unsupported: given(
            m,
            &[
                "EventSource",
                "Actions",
                "ResourceType",
                "CreateInterval",
                "RetainInterval",
                "CopyTags",
                "CrossRegionCopyTargets",
                "ExtendDeletion",
                "Exclusions",
            ],
        ),
    })
}

fn create_request(body: &[u8]) -> Result<CreatePolicy, DlmError> {
    let m = body_json(body)?;
    Ok(CreatePolicy {
        execution_role_arn: string(&m, "ExecutionRoleArn")?,
        description: string(&m, "Description")?,
        state: string(&m, "State")?,
        details: child(&m, "PolicyDetails")?.map(details).transpose()?,
        tags: tag_map(&m, "Tags")?,
        default_policy_members: given(&m, DEFAULT_POLICY_MEMBERS),
    })
}

fn update_request(policy_id: String, body: &[u8]) -> Result<UpdatePolicy, DlmError> {
    let m = body_json(body)?;
    Ok(UpdatePolicy {
        policy_id,
        execution_role_arn: string(&m, "ExecutionRoleArn")?,
        description: string(&m, "Description")?,
        state: string(&m, "State")?,
        details: child(&m, "PolicyDetails")?.map(details).transpose()?,
        default_policy_members: given(&m, &DEFAULT_POLICY_MEMBERS[1..]),
    })
}

/// Query parameters; lists repeat their name (`policyIds=a&policyIds=b`).
fn query(uri: &Uri) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

fn single(q: &HashMap<String, Vec<String>>, k: &str) -> Result<Option<String>, DlmError> {
    match q.get(k).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => Ok(Some(v.clone())),
        Some(_) => Err(invalid(format!("The query parameter {k} is given more than once."))),
    }
}

fn get_policies_request(uri: &Uri) -> Result<GetPolicies, DlmError> {
    let q = query(uri);
    let many = |k: &str| q.get(k).cloned().unwrap_or_default();
    Ok(GetPolicies {
        policy_ids: many("policyIds"),
        state: single(&q, "state")?,
        resource_types: many("resourceTypes"),
        target_tags: many("targetTags"),
        tags_to_add: many("tagsToAdd"),
        default_policy_type: single(&q, "defaultPolicyType")?,
    })
}

/// A request past authentication, for the fuzzers: routing, every parse, then the engine's
/// validation of creates and updates (nothing is created) and the read-only calls.
pub(crate) fn fuzz_request(
    engine: &Engine,
    ctx: &Ctx,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<(), DlmError> {
    match Endpoint::parse(method, uri)? {
        Endpoint::CreateLifecyclePolicy => engine.dlm_validate_create(ctx, &create_request(body)?),
        Endpoint::UpdateLifecyclePolicy { policy_id } => {
            let req = update_request(policy_id, body)?;
            let probe = CreatePolicy {
                execution_role_arn: req.execution_role_arn.or(Some("arn:aws:iam::123456789012:role/r".into())),
                description: req.description.or(Some("d".into())),
                state: req.state.or(Some("DISABLED".into())),
                details: req.details,
                ..Default::default()
            };
            if probe.details.is_some() { engine.dlm_validate_create(ctx, &probe) } else { Ok(()) }
        }
        Endpoint::GetLifecyclePolicies => engine.dlm_get_policies(ctx, &get_policies_request(uri)?).map(drop),
        Endpoint::GetLifecyclePolicy { policy_id } => engine.dlm_get_policy(ctx, &policy_id).map(drop),
        Endpoint::ListTagsForResource { arn } => engine.dlm_list_tags(ctx, &arn).map(drop),
        Endpoint::TagResource { .. } => tag_map(&body_json(body)?, "Tags").map(drop),
        Endpoint::DeleteLifecyclePolicy { .. } | Endpoint::UntagResource { .. } => Ok(()),
    }
}

// ---- rendering ----------------------------------------------------------------------------------

fn tags_list(tags: &[KeyValue]) -> Value {
    Value::Array(tags.iter().map(|t| json!({"Key": t.key, "Value": t.value})).collect())
}

fn tags_map(tags: &blocksnap_engine::model::Tags) -> Value {
    Value::Object(tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn put<T: Into<Value>>(m: &mut Obj, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), v.into());
    }
}

fn details_json(d: &PolicyDetails) -> Value {
    let mut m = Map::new();
    m.insert("PolicyType".into(), json!(d.policy_type.as_deref().unwrap_or("EBS_SNAPSHOT_MANAGEMENT")));
    put(&mut m, "PolicyLanguage", d.policy_language.clone());
    m.insert("ResourceTypes".into(), json!(d.resource_types));
    if !d.resource_locations.is_empty() {
        m.insert("ResourceLocations".into(), json!(d.resource_locations));
    }
    m.insert("TargetTags".into(), tags_list(&d.target_tags));
    let schedules: Vec<Value> = d
        .schedules
        .iter()
        .map(|s| {
            let mut o = Map::new();
            put(&mut o, "Name", s.name.clone());
            put(&mut o, "CopyTags", s.copy_tags);
            if !s.tags_to_add.is_empty() {
                o.insert("TagsToAdd".into(), tags_list(&s.tags_to_add));
            }
            if !s.variable_tags.is_empty() {
                o.insert("VariableTags".into(), tags_list(&s.variable_tags));
            }
            if let Some(c) = &s.create_rule {
                let mut r = Map::new();
                put(&mut r, "Location", c.location.clone());
                put(&mut r, "Interval", c.interval);
                put(&mut r, "IntervalUnit", c.interval_unit.clone());
                if !c.times.is_empty() {
                    r.insert("Times".into(), json!(c.times));
                }
                put(&mut r, "CronExpression", c.cron_expression.clone());
                o.insert("CreateRule".into(), Value::Object(r));
            }
            if let Some(c) = &s.retain_rule {
                let mut r = Map::new();
                put(&mut r, "Count", c.count);
                put(&mut r, "Interval", c.interval);
                put(&mut r, "IntervalUnit", c.interval_unit.clone());
                o.insert("RetainRule".into(), Value::Object(r));
            }
            if !s.cross_region_copy_rules.is_empty() {
                let rules: Vec<Value> = s
                    .cross_region_copy_rules
                    .iter()
                    .map(|c| {
                        let mut r = Map::new();
                        put(&mut r, "TargetRegion", c.target_region.clone());
                        put(&mut r, "Target", c.target.clone());
                        put(&mut r, "Encrypted", c.encrypted);
                        put(&mut r, "CmkArn", c.cmk_arn.clone());
                        put(&mut r, "CopyTags", c.copy_tags);
                        if let Some((n, u)) = &c.retain_rule {
                            let mut rr = Map::new();
                            put(&mut rr, "Interval", *n);
                            put(&mut rr, "IntervalUnit", u.clone());
                            r.insert("RetainRule".into(), Value::Object(rr));
                        }
                        Value::Object(r)
                    })
                    .collect();
                o.insert("CrossRegionCopyRules".into(), Value::Array(rules));
            }
            if let Some(a) = &s.archive_rule {
                let mut t = Map::new();
                put(&mut t, "Count", a.count);
                put(&mut t, "Interval", a.interval);
                put(&mut t, "IntervalUnit", a.interval_unit.clone());
                o.insert("ArchiveRule".into(), json!({ "RetainRule": { "RetentionArchiveTier": Value::Object(t) } }));
            }
            if !s.share_rules.is_empty() {
                let rules: Vec<Value> = s
                    .share_rules
                    .iter()
                    .map(|r| {
                        let mut o = Map::new();
                        o.insert("TargetAccounts".into(), json!(r.target_accounts));
                        put(&mut o, "UnshareInterval", r.unshare_interval);
                        put(&mut o, "UnshareIntervalUnit", r.unshare_interval_unit.clone());
                        Value::Object(o)
                    })
                    .collect();
                o.insert("ShareRules".into(), Value::Array(rules));
            }
            Value::Object(o)
        })
        .collect();
    m.insert("Schedules".into(), Value::Array(schedules));
    if let Some(p) = &d.parameters {
        let mut o = Map::new();
        put(&mut o, "ExcludeBootVolume", p.exclude_boot_volume);
        if !p.exclude_data_volume_tags.is_empty() {
            o.insert("ExcludeDataVolumeTags".into(), tags_list(&p.exclude_data_volume_tags));
        }
        m.insert("Parameters".into(), Value::Object(o));
    }
    Value::Object(m)
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "PolicyId": p.id,
        "Description": p.description,
        "State": p.state(),
        "StatusMessage": p.status_message(),
        "ExecutionRoleArn": p.execution_role_arn,
        "DateCreated": crate::json::epoch(p.created),
        "DateModified": crate::json::epoch(p.modified),
        "PolicyDetails": details_json(&p.details),
        "Tags": tags_map(&p.tags),
        "PolicyArn": p.arn(),
        "DefaultPolicy": false,
    })
}

fn summary_json(p: &Policy) -> Value {
    json!({
        "PolicyId": p.id,
        "Description": p.description,
        "State": p.state(),
        "Tags": tags_map(&p.tags),
        "PolicyType": p.details.policy_type.as_deref().unwrap_or("EBS_SNAPSHOT_MANAGEMENT"),
        "DefaultPolicy": false,
    })
}

pub fn error(e: &EngineError, request_id: &str) -> Response {
    crate::rest_json::error(e, crate::rest_json::common_status(e), request_id)
}

/// DLM's errors: `x-amzn-ErrorType` and `{"Message", "Code", …}` with the documented fields.
fn dlm_error(e: &DlmError, request_id: &str) -> Response {
    let (status, mut body) = match e {
        DlmError::Engine(e) => return error(e, request_id),
        DlmError::InvalidRequest { message, required, exclusive } => {
            let mut b = json!({ "Message": message });
            if !required.is_empty() {
                b["RequiredParameters"] = json!(required);
            }
            if !exclusive.is_empty() {
                b["MutuallyExclusiveParameters"] = json!(exclusive);
            }
            (StatusCode::BAD_REQUEST, b)
        }
        DlmError::NotFound { message, resource_type, ids } => {
            (StatusCode::NOT_FOUND, json!({ "Message": message, "ResourceType": resource_type, "ResourceIds": ids }))
        }
        DlmError::LimitExceeded { message, resource_type } => {
            (StatusCode::TOO_MANY_REQUESTS, json!({ "Message": message, "ResourceType": resource_type }))
        }
    };
    body["Code"] = json!(e.code());
    let mut r = crate::rest_json::ok(status, &body, request_id);
    r.headers_mut().insert("x-amzn-ErrorType", HeaderValue::from_static(e.code()));
    r
}

/// Runs a DLM engine call on a blocking thread (within the API's call bound) and makes its
/// commits durable before answering.
async fn blocking<T: Send + 'static>(
    engine: Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, DlmError> + Send + 'static,
) -> Result<T, DlmError> {
    let r = super::run_blocking(move || {
        let r = f(&engine);
        engine.sync_pending()?;
        Ok(r)
    })
    .await;
    match r {
        Ok(inner) => inner,
        Err(e) => Err(DlmError::Engine(e)),
    }
}

/// Serve one authenticated Data Lifecycle Manager request.
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    engine: Arc<Engine>,
    ctx: Ctx,
    method: &Method,
    uri: &Uri,
    _headers: &HeaderMap,
    body: Bytes,
    request_id: &str,
) -> Response {
    let started = std::time::Instant::now();
    let ep = match Endpoint::parse(method, uri) {
        Ok(ep) => ep,
        Err(e) => return error(&e, request_id),
    };
    let action = ep.name();
    let region = ctx.region.clone();
    let r = match run(engine, ctx, ep, uri, body).await {
        Ok(v) => crate::rest_json::ok(StatusCode::OK, &v, request_id),
        Err(e) => dlm_error(&e, request_id),
    };
    ::metrics::histogram!("blocksnap_api_request_duration_seconds", "action" => action, "region" => region)
        .record(started.elapsed().as_secs_f64());
    r
}

async fn run(engine: Arc<Engine>, ctx: Ctx, ep: Endpoint, uri: &Uri, body: Bytes) -> Result<Value, DlmError> {
    match ep {
        Endpoint::CreateLifecyclePolicy => {
            let req = create_request(&body)?;
            let id = blocking(engine, move |e| e.dlm_create_policy(&ctx, req)).await?;
            Ok(json!({ "PolicyId": id }))
        }
        Endpoint::GetLifecyclePolicies => {
            let req = get_policies_request(uri)?;
            let list = blocking(engine, move |e| e.dlm_get_policies(&ctx, &req)).await?;
            Ok(json!({ "Policies": list.iter().map(summary_json).collect::<Vec<_>>() }))
        }
        Endpoint::GetLifecyclePolicy { policy_id } => {
            let p = blocking(engine, move |e| e.dlm_get_policy(&ctx, &policy_id)).await?;
            Ok(json!({ "Policy": policy_json(&p) }))
        }
        Endpoint::UpdateLifecyclePolicy { policy_id } => {
            let req = update_request(policy_id, &body)?;
            blocking(engine, move |e| e.dlm_update_policy(&ctx, req)).await?;
            Ok(json!({}))
        }
        Endpoint::DeleteLifecyclePolicy { policy_id } => {
            blocking(engine, move |e| e.dlm_delete_policy(&ctx, &policy_id)).await?;
            Ok(json!({}))
        }
        Endpoint::TagResource { arn } => {
            let tags = tag_map(&body_json(&body)?, "Tags")?;
            blocking(engine, move |e| e.dlm_tag_resource(&ctx, &arn, &tags)).await?;
            Ok(json!({}))
        }
        Endpoint::UntagResource { arn } => {
            let keys = query(uri).remove("tagKeys").unwrap_or_default();
            blocking(engine, move |e| e.dlm_untag_resource(&ctx, &arn, &keys)).await?;
            Ok(json!({}))
        }
        Endpoint::ListTagsForResource { arn } => {
            let tags = blocking(engine, move |e| e.dlm_list_tags(&ctx, &arn)).await?;
            Ok(json!({ "Tags": tags_map(&tags) }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(m: Method, p: &str) -> Result<Endpoint, EngineError> {
        Endpoint::parse(&m, &p.parse::<Uri>().map_err(|e| EngineError::Internal(e.to_string()))?)
    }

    #[test]
    fn routes() -> Result<(), EngineError> {
        assert_eq!(ep(Method::POST, "/policies")?, Endpoint::CreateLifecyclePolicy);
        assert_eq!(ep(Method::GET, "/policies?state=ENABLED")?, Endpoint::GetLifecyclePolicies);
        assert_eq!(
            ep(Method::GET, "/policies/policy-1/")?,
            Endpoint::GetLifecyclePolicy { policy_id: "policy-1".into() }
        );
        assert_eq!(
            ep(Method::PATCH, "/policies/policy-1")?,
            Endpoint::UpdateLifecyclePolicy { policy_id: "policy-1".into() }
        );
        assert_eq!(
            ep(Method::DELETE, "/policies/policy-1")?,
            Endpoint::DeleteLifecyclePolicy { policy_id: "policy-1".into() }
        );
        let arn = "arn:aws:dlm:us-east-1:123456789012:policy/policy-1";
        assert_eq!(
            ep(Method::GET, "/tags/arn%3Aaws%3Adlm%3Aus-east-1%3A123456789012%3Apolicy%2Fpolicy-1")?,
            Endpoint::ListTagsForResource { arn: arn.into() }
        );
        assert!(ep(Method::PUT, "/policies/policy-1").is_err());
        assert!(ep(Method::GET, "/policies/a/b").is_err());
        Ok(())
    }

    #[test]
    fn details_round_trip() -> Result<(), DlmError> {
        let body = json!({
            "ExecutionRoleArn": "arn:aws:iam::123456789012:role/r", "Description": "d", "State": "ENABLED",
            "PolicyDetails": {
                "ResourceTypes": ["VOLUME"], "TargetTags": [{"Key": "k", "Value": "v"}],
                "Schedules": [{"Name": "s", "CopyTags": true, "TagsToAdd": [{"Key": "a", "Value": "b"}],
                    "CreateRule": {"Interval": 12, "IntervalUnit": "HOURS", "Times": ["09:00"]},
                    "RetainRule": {"Count": 3},
                    "CrossRegionCopyRules": [{"Target": "eu-west-1", "Encrypted": false,
                        "RetainRule": {"Interval": 2, "IntervalUnit": "DAYS"}}]}]},
            "Tags": {"team": "x"}
        });
        let req = create_request(body.to_string().as_bytes())?;
        let d = req.details.ok_or_else(|| invalid("no details"))?;
        let back = details_json(&d);
        assert_eq!(back["Schedules"][0]["CreateRule"], body["PolicyDetails"]["Schedules"][0]["CreateRule"]);
        assert_eq!(
            back["Schedules"][0]["CrossRegionCopyRules"],
            body["PolicyDetails"]["Schedules"][0]["CrossRegionCopyRules"]
        );
        assert_eq!(back["PolicyType"], "EBS_SNAPSHOT_MANAGEMENT");
        assert_eq!(req.tags, vec![KeyValue { key: "team".into(), value: "x".into() }]);
        let bad = create_request(br#"{"PolicyDetails": {"Schedules": [{"FastRestoreRule": {}}], "EventSource": {}}}"#)?;
        let d = bad.details.ok_or_else(|| invalid("no details"))?;
        assert_eq!(d.unsupported, vec!["EventSource".to_string()]);
        assert_eq!(d.schedules[0].unsupported, vec!["FastRestoreRule".to_string()]);
        Ok(())
    }

    #[test]
    fn errors_carry_their_fields() {
        let e = DlmError::InvalidRequest { message: "m".into(), required: vec!["State".into()], exclusive: vec![] };
        let r = dlm_error(&e, "rid");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers().get("x-amzn-ErrorType").and_then(|v| v.to_str().ok()), Some("InvalidRequestException"));
        let r = dlm_error(&DlmError::LimitExceeded { message: "m".into(), resource_type: "LifecyclePolicy" }, "rid");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
