//! The built-in KMS's JSON 1.1 API (`X-Amz-Target: TrentService.<Operation>`): CreateKey,
//! DescribeKey, ListKeys, CreateAlias, DeleteAlias, ListAliases — enough for `KmsKeyId` to name real
//! keys by id, ARN, alias or alias ARN.

use blocksnap_engine::model::{Ctx, KmsKey};
use blocksnap_engine::{Engine, EngineError, Result, page_token};
use serde_json::{Value, json};

use crate::json::{Body, epoch};

fn metadata(k: &KmsKey) -> Value {
    json!({
        "AWSAccountId": k.account,
        "KeyId": k.key_id,
        "Arn": k.arn,
        "CreationDate": epoch(k.created),
        "Enabled": k.enabled,
        "Description": k.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": if k.enabled { "Enabled" } else { "Disabled" },
        "Origin": "AWS_KMS",
        "KeyManager": if k.aws_managed { "AWS" } else { "CUSTOMER" },
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "KeySpec": "SYMMETRIC_DEFAULT",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    })
}

/// Page a list (sorted by `key`) by an opaque marker naming the last item's key and a limit of 1 to
/// 1000 (100 when absent), as KMS's List* calls do.
fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    limit: Option<i64>,
    marker: Option<String>,
) -> Result<(Vec<T>, Option<String>)> {
    let limit = match limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            return Err(EngineError::client(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
                ),
            ));
        }
    };
    let after = marker.as_deref().filter(|m| !m.is_empty()).map(decode_marker).transpose()?;
    let mut rest: Vec<T> = match after {
        None => items,
        Some(m) => items.into_iter().filter(|i| key(i) > m).collect(),
    };
    let next = if rest.len() > limit {
        rest.truncate(limit);
        rest.last().map(|i| page_token::encode(page_token::KMS, &key(i)))
    } else {
        None
    };
    Ok((rest, next))
}

fn decode_marker(m: &str) -> Result<String> {
    page_token::decode(page_token::KMS, m).ok_or_else(|| EngineError::client("InvalidMarkerException", "The request was rejected because the marker that specifies where pagination should next begin is not valid."))
}

/// Every operation the built-in KMS serves: the one list (the CLI sweep in tests/e2e reads it). An
/// operation missing here is refused before dispatch.
pub const OPERATIONS: &[&str] = &["CreateKey", "DescribeKey", "ListKeys", "CreateAlias", "DeleteAlias", "ListAliases"];

pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    if !OPERATIONS.contains(&op) {
        return Err(EngineError::client(
            "UnknownOperationException",
            format!("Operation {op} is not supported by the built-in KMS"),
        ));
    }
    match op {
        "CreateKey" => {
            let k = engine.kms_create_key(
                ctx,
                body.str("Description")?,
                body.str("KeySpec")?.or(body.str("CustomerMasterKeySpec")?),
                body.str("KeyUsage")?,
                body.tags("Tags", "TagKey", "TagValue")?,
            )?;
            Ok(json!({ "KeyMetadata": metadata(&k) }))
        }
        "DescribeKey" => {
            let id = body.required("KeyId", "ValidationException")?;
            Ok(json!({ "KeyMetadata": metadata(&engine.kms_describe_key(ctx, &id)?) }))
        }
        "ListKeys" => {
            let (keys, next) =
                page(engine.kms_list_keys(ctx), |k| k.key_id.clone(), body.int("Limit")?, body.str("Marker")?)?;
            let mut out = json!({
                "Keys": keys.iter().map(|k| json!({"KeyId": k.key_id, "KeyArn": k.arn})).collect::<Vec<_>>(),
                "Truncated": next.is_some(),
            });
            if let Some(n) = next {
                out["NextMarker"] = json!(n);
            }
            Ok(out)
        }
        "CreateAlias" => {
            let alias = body.required("AliasName", "ValidationException")?;
            let target = body.required("TargetKeyId", "ValidationException")?;
            engine.kms_create_alias(ctx, &alias, &target)?;
            Ok(json!({}))
        }
        "DeleteAlias" => {
            engine.kms_delete_alias(ctx, &body.required("AliasName", "ValidationException")?)?;
            Ok(json!({}))
        }
        "ListAliases" => {
            let key = body.str("KeyId")?;
            let (aliases, next) = page(
                engine.kms_list_aliases(ctx, key.as_deref())?,
                |a| a.name.clone(),
                body.int("Limit")?,
                body.str("Marker")?,
            )?;
            let mut out = json!({
                "Aliases": aliases.iter().map(|a| {
                    let mut v = json!({"AliasName": a.name, "AliasArn": a.arn});
                    if let Some(t) = &a.target_key_id {
                        v["TargetKeyId"] = json!(t);
                        v["CreationDate"] = epoch(a.created);
                        v["LastUpdatedDate"] = epoch(a.created);
                    }
                    v
                }).collect::<Vec<_>>(),
                "Truncated": next.is_some(),
            });
            if let Some(n) = next {
                out["NextMarker"] = json!(n);
            }
            Ok(out)
        }
        other => Err(EngineError::Internal(format!("KMS operation {other} is listed but not dispatched"))),
    }
}
