//! The built-in KMS's key catalogue as the EC2 side sees it: resolving `KmsKeyId` (key id, key ARN,
//! alias name, alias ARN) and the per-region AWS-managed default key `alias/aws/ebs`.

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::{Ctx, KmsKey, now_millis};

pub const DEFAULT_EBS_ALIAS: &str = "alias/aws/ebs";

impl Engine {
    /// The AWS-managed EBS key of the caller's region, created (as a pending record) on first use.
    pub(crate) fn default_ebs_key(&self, st: &State, ctx: &Ctx, recs: &mut Vec<Rec>) -> KmsKey {
        if let Some(k) = st.kms_keys.values().find(|k| {
            k.account == ctx.account && k.region == ctx.region && k.aliases.iter().any(|a| a == DEFAULT_EBS_ALIAS)
        }) {
            return k.clone();
        }
        if let Some(Rec::KmsKey(k)) =
            recs.iter().find(|r| matches!(r, Rec::KmsKey(k) if k.aliases.iter().any(|a| a == DEFAULT_EBS_ALIAS)))
        {
            return k.clone();
        }
        let key_id = ids::new_uuid();
        let key = KmsKey {
            arn: format!("arn:aws:kms:{}:{}:key/{}", ctx.region, ctx.account, key_id),
            key_id,
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            description: "Default key that protects my EBS volumes when no other key is defined".into(),
            aliases: vec![DEFAULT_EBS_ALIAS.into()],
            created: now_millis(),
            aws_managed: true,
        };
        recs.push(Rec::KmsKey(key.clone()));
        key
    }

    /// Resolve any of the four KmsKeyId forms to a key of the caller's account and region.
    pub(crate) fn resolve_kms_key(&self, st: &State, ctx: &Ctx, recs: &mut Vec<Rec>, id: &str) -> Result<KmsKey> {
        let alias = if let Some(a) = id.strip_prefix(&format!("arn:aws:kms:{}:{}:", ctx.region, ctx.account)) {
            if let Some(key_id) = a.strip_prefix("key/") {
                return self.find_key(st, ctx, |k| k.key_id == key_id, id);
            }
            a.to_string()
        } else if id.starts_with("arn:") {
            return Err(EngineError::invalid_value(format!(
                "Invalid KMS key ARN '{id}': the key must be in region {} of account {}",
                ctx.region, ctx.account
            )));
        } else {
            id.to_string()
        };
        if alias.starts_with("alias/") {
            if alias == DEFAULT_EBS_ALIAS {
                return Ok(self.default_ebs_key(st, ctx, recs));
            }
            return self.find_key(st, ctx, |k| k.aliases.iter().any(|a| *a == alias), id);
        }
        self.find_key(st, ctx, |k| k.key_id == alias, id)
    }

    fn find_key(&self, st: &State, ctx: &Ctx, pred: impl Fn(&KmsKey) -> bool, id: &str) -> Result<KmsKey> {
        st.kms_keys
            .values()
            .find(|k| k.account == ctx.account && k.region == ctx.region && pred(k))
            .cloned()
            .ok_or_else(|| EngineError::invalid_value(format!("The KMS key '{id}' does not exist in {}", ctx.region)))
    }
}
