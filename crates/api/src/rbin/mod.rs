//! Recycle Bin (`rbin`, API version 2021-06-15, REST-JSON, SigV4 service `rbin`): retention rules
//! for deleted EBS snapshots. Routed here by the credential scope's service (see
//! `crate::RestService`); one typed [`Endpoint`] per method + path, bodies parsed into the engine's
//! typed requests (`blocksnap_engine::recycle_bin`), rules rendered here. Errors are the service's:
//! `ValidationException` (Reason `INVALID_PARAMETER_VALUE` / `INVALID_PAGE_TOKEN`),
//! `ResourceNotFoundException` (`RULE_NOT_FOUND`), `ConflictException` (`INVALID_RULE_STATE`),
//! `ServiceQuotaExceededException` (`SERVICE_QUOTA_EXCEEDED`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use blocksnap_engine::model::{Ctx, Tag, Tags};
use blocksnap_engine::recycle_bin::{
    CreateRule, ListRules, LockConfiguration, ResourceTag, RetentionPeriod, RuleView, UpdateRule,
};
use blocksnap_engine::{Engine, EngineError};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

/// The SigV4 service name of the Recycle Bin.
pub const SERVICE: &str = "rbin";

/// The operations served (the CLI sweep reads this list).
pub const OPERATIONS: &[&str] = &[
    "CreateRule",
    "GetRule",
    "ListRules",
    "UpdateRule",
    "DeleteRule",
    "LockRule",
    "UnlockRule",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
];

/// One request of the Recycle Bin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    CreateRule,
    GetRule { id: String },
    ListRules,
    UpdateRule { id: String },
    DeleteRule { id: String },
    LockRule { id: String },
    UnlockRule { id: String },
    TagResource { arn: String },
    UntagResource { arn: String },
    ListTagsForResource { arn: String },
}

impl Endpoint {
    pub fn parse(method: &Method, uri: &Uri) -> Result<Endpoint, EngineError> {
        let path = uri.path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let ep = match (method.as_str(), parts.as_slice()) {
            ("POST", ["rules"]) => Some(Endpoint::CreateRule),
            ("GET", ["rules", id]) => Some(Endpoint::GetRule { id: decode(id) }),
            ("PATCH", ["rules", id]) => Some(Endpoint::UpdateRule { id: decode(id) }),
            ("DELETE", ["rules", id]) => Some(Endpoint::DeleteRule { id: decode(id) }),
            ("PATCH", ["rules", id, "lock"]) => Some(Endpoint::LockRule { id: decode(id) }),
            ("PATCH", ["rules", id, "unlock"]) => Some(Endpoint::UnlockRule { id: decode(id) }),
            ("POST", ["list-rules"]) => Some(Endpoint::ListRules),
            ("POST", ["tags", arn]) => Some(Endpoint::TagResource { arn: decode(arn) }),
            ("DELETE", ["tags", arn]) => Some(Endpoint::UntagResource { arn: decode(arn) }),
            ("GET", ["tags", arn]) => Some(Endpoint::ListTagsForResource { arn: decode(arn) }),
            _ => None,
        };
        ep.ok_or_else(|| {
            EngineError::client(
                "UnknownOperationException",
                format!("{method} {} is not an operation of the Recycle Bin.", uri.path()),
            )
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::CreateRule => "CreateRule",
            Endpoint::GetRule { .. } => "GetRule",
            Endpoint::ListRules => "ListRules",
            Endpoint::UpdateRule { .. } => "UpdateRule",
            Endpoint::DeleteRule { .. } => "DeleteRule",
            Endpoint::LockRule { .. } => "LockRule",
            Endpoint::UnlockRule { .. } => "UnlockRule",
            Endpoint::TagResource { .. } => "TagResource",
            Endpoint::UntagResource { .. } => "UntagResource",
            Endpoint::ListTagsForResource { .. } => "ListTagsForResource",
        }
    }

    /// The status of a success (as the service model declares it).
    fn status(&self) -> StatusCode {
        match self {
            Endpoint::CreateRule | Endpoint::TagResource { .. } => StatusCode::CREATED,
            Endpoint::DeleteRule { .. } | Endpoint::UntagResource { .. } => StatusCode::NO_CONTENT,
            _ => StatusCode::OK,
        }
    }
}

pub fn error(e: &EngineError, request_id: &str) -> Response {
    crate::rest_json::error(e, crate::rest_json::common_status(e), request_id)
}

// ---- reading the request -----------------------------------------------------------------------

use crate::rest_json::{self, Obj};

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::reasoned("ValidationException", "INVALID_PARAMETER_VALUE", message)
}

fn body_json(body: &[u8]) -> Result<Obj, EngineError> {
    rest_json::body_object(body, invalid)
}

fn string(m: &Obj, k: &str) -> Result<Option<String>, EngineError> {
    rest_json::string(m, k, invalid)
}

fn int(m: &Obj, k: &str) -> Result<Option<i64>, EngineError> {
    rest_json::int(m, k, invalid)
}

fn child<'a>(m: &'a Obj, k: &str) -> Result<Option<&'a Obj>, EngineError> {
    rest_json::child(m, k, invalid)
}

fn list<'a>(m: &'a Obj, k: &str) -> Result<Option<&'a [Value]>, EngineError> {
    rest_json::list(m, k, invalid)
}

fn objects<'a>(m: &'a Obj, k: &str) -> Result<Option<Vec<&'a Obj>>, EngineError> {
    list(m, k)?
        .map(|a| {
            a.iter().map(|v| v.as_object().ok_or_else(|| invalid(format!("{k} must be a list of objects.")))).collect()
        })
        .transpose()
}

fn resource_tags(m: &Obj, k: &str) -> Result<Option<Vec<ResourceTag>>, EngineError> {
    objects(m, k)?
        .map(|items| {
            items
                .into_iter()
                .map(|t| {
                    let key = string(t, "ResourceTagKey")?
                        .ok_or_else(|| invalid(format!("Each of {k} needs a ResourceTagKey.")))?;
                    Ok(ResourceTag { key, value: string(t, "ResourceTagValue")? })
                })
                .collect()
        })
        .transpose()
}

fn tags(m: &Obj, k: &str) -> Result<Vec<Tag>, EngineError> {
    objects(m, k)?
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let key = string(t, "Key")?.ok_or_else(|| invalid(format!("Each of {k} needs a Key.")))?;
            let value = string(t, "Value")?.ok_or_else(|| invalid(format!("Each of {k} needs a Value.")))?;
            Ok(Tag { key, value })
        })
        .collect()
}

fn retention_period(m: &Obj) -> Result<Option<RetentionPeriod>, EngineError> {
    child(m, "RetentionPeriod")?
        .map(|rp| {
            Ok(RetentionPeriod { value: int(rp, "RetentionPeriodValue")?, unit: string(rp, "RetentionPeriodUnit")? })
        })
        .transpose()
}

fn lock_configuration(m: &Obj) -> Result<Option<LockConfiguration>, EngineError> {
    let Some(lc) = child(m, "LockConfiguration")? else { return Ok(None) };
    let delay = child(lc, "UnlockDelay")?;
    Ok(Some(LockConfiguration {
        unlock_delay_value: delay.map(|d| int(d, "UnlockDelayValue")).transpose()?.flatten(),
        unlock_delay_unit: delay.map(|d| string(d, "UnlockDelayUnit")).transpose()?.flatten(),
    }))
}

fn tag_keys(uri: &Uri) -> Vec<String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "tagKeys")
        .map(|(_, v)| v.into_owned())
        .collect()
}

// ---- rendering --------------------------------------------------------------------------------

fn resource_tags_json(tags: &[ResourceTag]) -> Value {
    Value::Array(
        tags.iter()
            .map(|t| {
                let mut o = json!({ "ResourceTagKey": t.key });
                if let Some(v) = &t.value {
                    o["ResourceTagValue"] = json!(v);
                }
                o
            })
            .collect(),
    )
}

fn tags_json(tags: &Tags) -> Value {
    Value::Array(tags.iter().map(|(k, v)| json!({ "Key": k, "Value": v })).collect())
}

fn retention_json(v: &RuleView) -> Value {
    json!({ "RetentionPeriodValue": v.rule.retention_days, "RetentionPeriodUnit": "DAYS" })
}

fn seconds(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// A whole rule (CreateRule, GetRule, UpdateRule, LockRule, UnlockRule).
fn rule_json(v: &RuleView, with_tags: bool) -> Value {
    let r = &v.rule;
    let mut o = json!({
        "Identifier": r.identifier,
        "RetentionPeriod": retention_json(v),
        "Description": r.description,
        "ResourceType": r.resource_type,
        "ResourceTags": resource_tags_json(&r.resource_tags),
        "Status": "available",
        "LockState": v.lock_state,
        "RuleArn": v.arn,
        "ExcludeResourceTags": resource_tags_json(&r.exclude_resource_tags),
    });
    if let Some(d) = v.unlock_delay_days {
        o["LockConfiguration"] = json!({ "UnlockDelay": { "UnlockDelayValue": d, "UnlockDelayUnit": "DAYS" } });
    }
    if let Some(t) = v.lock_end_time {
        o["LockEndTime"] = seconds(t);
    }
    if with_tags {
        o["Tags"] = tags_json(&r.tags);
    }
    o
}

fn summary_json(v: &RuleView) -> Value {
    json!({
        "Identifier": v.rule.identifier,
        "Description": v.rule.description,
        "RetentionPeriod": retention_json(v),
        "LockState": v.lock_state,
        "RuleArn": v.arn,
    })
}

// ---- serving ----------------------------------------------------------------------------------

async fn blocking<T: Send + 'static>(
    engine: Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    super::run_blocking(move || {
        let r = f(&engine);
        // Nothing is answered before its catalog commit is durable.
        engine.sync_pending().and(r)
    })
    .await
}

fn create_request(m: &Obj) -> Result<CreateRule, EngineError> {
    Ok(CreateRule {
        retention_period: retention_period(m)?,
        description: string(m, "Description")?,
        tags: tags(m, "Tags")?,
        resource_type: string(m, "ResourceType")?,
        resource_tags: resource_tags(m, "ResourceTags")?.unwrap_or_default(),
        exclude_resource_tags: resource_tags(m, "ExcludeResourceTags")?.unwrap_or_default(),
        lock: lock_configuration(m)?,
    })
}

fn list_request(m: &Obj) -> Result<ListRules, EngineError> {
    Ok(ListRules {
        resource_type: string(m, "ResourceType")?,
        resource_tags: resource_tags(m, "ResourceTags")?.unwrap_or_default(),
        exclude_resource_tags: resource_tags(m, "ExcludeResourceTags")?.unwrap_or_default(),
        lock_state: string(m, "LockState")?,
        max_results: int(m, "MaxResults")?,
        next_token: string(m, "NextToken")?,
    })
}

fn update_request(id: String, m: &Obj) -> Result<UpdateRule, EngineError> {
    Ok(UpdateRule {
        identifier: id,
        retention_period: retention_period(m)?,
        description: string(m, "Description")?,
        resource_type: string(m, "ResourceType")?,
        resource_tags: resource_tags(m, "ResourceTags")?,
        exclude_resource_tags: resource_tags(m, "ExcludeResourceTags")?,
    })
}

/// A Recycle Bin request past authentication, for the fuzzers: routing, the body's parse into the
/// typed request, CreateRule's validation (nothing is created) and the read-only calls.
pub(crate) fn fuzz_request(
    engine: &Engine,
    ctx: &Ctx,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<(), EngineError> {
    let ep = Endpoint::parse(method, uri)?;
    let m = body_json(body)?;
    match ep {
        Endpoint::CreateRule => engine.rbin_validate_create(&create_request(&m)?),
        Endpoint::GetRule { id } => engine.rbin_get_rule(ctx, &id).map(drop),
        Endpoint::ListRules => engine.rbin_list_rules(ctx, &list_request(&m)?).map(drop),
        Endpoint::UpdateRule { id } => update_request(id, &m).map(drop),
        Endpoint::LockRule { .. } => lock_configuration(&m).map(drop),
        Endpoint::TagResource { .. } => tags(&m, "Tags").map(drop),
        Endpoint::UntagResource { .. } => {
            tag_keys(uri);
            Ok(())
        }
        Endpoint::ListTagsForResource { arn } => engine.rbin_list_tags(ctx, &arn).map(drop),
        Endpoint::DeleteRule { .. } | Endpoint::UnlockRule { .. } => Ok(()),
    }
}

async fn run(engine: Arc<Engine>, ctx: Ctx, ep: &Endpoint, uri: &Uri, body: Bytes) -> Result<Value, EngineError> {
    let m = body_json(&body)?;
    Ok(match ep.clone() {
        Endpoint::CreateRule => {
            let req = create_request(&m)?;
            let v = blocking(engine, move |e| e.rbin_create_rule(&ctx, req)).await?;
            rule_json(&v, true)
        }
        Endpoint::GetRule { id } => rule_json(&blocking(engine, move |e| e.rbin_get_rule(&ctx, &id)).await?, false),
        Endpoint::ListRules => {
            let req = list_request(&m)?;
            let (rules, next) = blocking(engine, move |e| e.rbin_list_rules(&ctx, &req)).await?;
            let mut o = json!({ "Rules": rules.iter().map(summary_json).collect::<Vec<_>>() });
            if let Some(t) = next {
                o["NextToken"] = json!(t);
            }
            o
        }
        Endpoint::UpdateRule { id } => {
            let req = update_request(id, &m)?;
            rule_json(&blocking(engine, move |e| e.rbin_update_rule(&ctx, req)).await?, false)
        }
        Endpoint::DeleteRule { id } => {
            blocking(engine, move |e| e.rbin_delete_rule(&ctx, &id)).await?;
            json!({})
        }
        Endpoint::LockRule { id } => {
            let lock = lock_configuration(&m)?;
            rule_json(&blocking(engine, move |e| e.rbin_lock_rule(&ctx, &id, lock)).await?, false)
        }
        Endpoint::UnlockRule { id } => {
            rule_json(&blocking(engine, move |e| e.rbin_unlock_rule(&ctx, &id)).await?, false)
        }
        Endpoint::TagResource { arn } => {
            if m.get("Tags").is_none_or(Value::is_null) {
                return Err(invalid("Tags is required."));
            }
            let t = tags(&m, "Tags")?;
            blocking(engine, move |e| e.rbin_tag_resource(&ctx, &arn, t)).await?;
            json!({})
        }
        Endpoint::UntagResource { arn } => {
            let keys = tag_keys(uri);
            if keys.is_empty() {
                return Err(invalid("tagKeys is required."));
            }
            blocking(engine, move |e| e.rbin_untag_resource(&ctx, &arn, &keys)).await?;
            json!({})
        }
        Endpoint::ListTagsForResource { arn } => {
            json!({ "Tags": tags_json(&blocking(engine, move |e| e.rbin_list_tags(&ctx, &arn)).await?) })
        }
    })
}

/// Serve one authenticated Recycle Bin request.
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
    let r = match run(engine, ctx, &ep, uri, body).await {
        Ok(_) if ep.status() == StatusCode::NO_CONTENT => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(request_id) {
                r.headers_mut().insert("x-amzn-requestid", v);
            }
            r
        }
        Ok(v) => crate::rest_json::ok(ep.status(), &v, request_id),
        Err(e) => error(&e, request_id),
    };
    ::metrics::histogram!("blocksnap_api_request_duration_seconds", "action" => action, "region" => region)
        .record(started.elapsed().as_secs_f64());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let p = |m: &str, u: &str| Endpoint::parse(&m.parse().unwrap(), &u.parse().unwrap());
        assert_eq!(p("POST", "/rules").unwrap(), Endpoint::CreateRule);
        assert_eq!(p("PATCH", "/rules/abcdefghijk/lock").unwrap(), Endpoint::LockRule { id: "abcdefghijk".into() });
        assert_eq!(
            p("GET", "/tags/arn%3Aaws%3Arbin%3Aus-east-1%3A123456789012%3Arule%2Fabcdefghijk").unwrap(),
            Endpoint::ListTagsForResource { arn: "arn:aws:rbin:us-east-1:123456789012:rule/abcdefghijk".into() }
        );
        assert_eq!(p("POST", "/list-rules").unwrap(), Endpoint::ListRules);
        assert!(p("PUT", "/rules").is_err());
        assert!(p("GET", "/rules/a/b/c").is_err());
    }
}
