//! The built-in KMS's key catalogue as the EC2 side sees it: resolving `KmsKeyId` (key id, key ARN,
//! alias name, alias ARN) and the per-region AWS-managed default key `alias/aws/ebs`.

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::{Ctx, KmsKey, Tag, now_millis};

pub const DEFAULT_EBS_ALIAS: &str = "alias/aws/ebs";

/// A new enabled, customer-managed key of the caller's account and region with fresh material.
fn new_key(ctx: &Ctx, description: String) -> KmsKey {
    let key_id = ids::new_uuid();
    KmsKey {
        arn: format!("arn:aws:kms:{}:{}:key/{}", ctx.region, ctx.account, key_id),
        key_id,
        account: ctx.account.clone(),
        region: ctx.region.clone(),
        description,
        aliases: vec![],
        created: now_millis(),
        aws_managed: false,
        material: new_material(),
        enabled: true,
        tags: Default::default(),
    }
}

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
        let key = KmsKey {
            aliases: vec![DEFAULT_EBS_ALIAS.into()],
            aws_managed: true,
            ..new_key(ctx, "Default key that protects my EBS volumes when no other key is defined".into())
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
            return self.find_key(st, ctx, |k| k.aliases.contains(&alias), id);
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

fn new_material() -> String {
    use rand::Rng;
    let b: [u8; 32] = rand::rng().random();
    hex::encode(b)
}

fn kms_err(code: &'static str, msg: impl Into<String>) -> EngineError {
    EngineError::client(code, msg)
}

/// An alias as ListAliases shows it.
#[derive(Debug, Clone)]
pub struct AliasInfo {
    pub name: String,
    pub arn: String,
    pub target_key_id: Option<String>,
    pub created: i64,
}

fn valid_alias_name(name: &str) -> bool {
    name.len() <= 256
        && name.strip_prefix("alias/").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
        })
}

impl Engine {
    /// KMS CreateKey: a customer-managed symmetric key.
    pub fn kms_create_key(
        &self,
        ctx: &Ctx,
        description: Option<String>,
        key_spec: Option<String>,
        key_usage: Option<String>,
        tags: Vec<Tag>,
    ) -> Result<KmsKey> {
        if let Some(s) = key_spec.as_deref()
            && s != "SYMMETRIC_DEFAULT"
        {
            return Err(kms_err(
                "ValidationException",
                format!("KeySpec {s} is not supported: the built-in KMS makes SYMMETRIC_DEFAULT keys"),
            ));
        }
        if let Some(u) = key_usage.as_deref()
            && u != "ENCRYPT_DECRYPT"
        {
            return Err(kms_err("ValidationException", format!("KeyUsage {u} is not supported: use ENCRYPT_DECRYPT")));
        }
        let description = description.unwrap_or_default();
        if description.len() > 8192 {
            return Err(kms_err("ValidationException", "Description must be at most 8192 characters"));
        }
        let mut tag_map = crate::model::Tags::new();
        for t in tags {
            if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 {
                return Err(kms_err(
                    "TagException",
                    format!("Invalid tag '{}': keys are 1-128 characters, values up to 256", t.key),
                ));
            }
            tag_map.insert(t.key, t.value);
        }
        let mut st = self.lock();
        let key = KmsKey { tags: tag_map, ..new_key(ctx, description) };
        self.commit(&mut st, vec![Rec::KmsKey(key.clone())])?;
        Ok(key)
    }

    /// Resolve a KMS KeyId (id, ARN, alias, alias ARN) as the KMS API does (NotFoundException).
    pub fn kms_describe_key(&self, ctx: &Ctx, key_id: &str) -> Result<KmsKey> {
        let st = self.lock();
        let mut recs = Vec::new();
        let key = self
            .resolve_kms_key(&st, ctx, &mut recs, key_id)
            .map_err(|_| kms_err("NotFoundException", format!("Key '{key_id}' does not exist")))?;
        if !recs.is_empty() {
            let mut st = st;
            self.commit(&mut st, recs)?;
        }
        Ok(key)
    }

    pub fn kms_list_keys(&self, ctx: &Ctx) -> Vec<KmsKey> {
        let st = self.lock();
        st.kms_keys.values().filter(|k| k.account == ctx.account && k.region == ctx.region).cloned().collect()
    }

    pub fn kms_create_alias(&self, ctx: &Ctx, alias: &str, target: &str) -> Result<()> {
        if !valid_alias_name(alias) {
            return Err(kms_err(
                "ValidationException",
                format!("Alias name '{alias}' must begin with 'alias/' followed by letters, digits, '/', '_' or '-'"),
            ));
        }
        if alias.starts_with("alias/aws/") {
            return Err(kms_err(
                "NotAuthorizedException",
                format!("Alias names beginning with 'alias/aws/' are reserved for AWS managed keys: {alias}"),
            ));
        }
        let mut st = self.lock();
        let exists = st
            .kms_keys
            .values()
            .any(|k| k.account == ctx.account && k.region == ctx.region && k.aliases.iter().any(|a| a == alias));
        if exists {
            return Err(kms_err(
                "AlreadyExistsException",
                format!("An alias with the name arn:aws:kms:{}:{}:{alias} already exists", ctx.region, ctx.account),
            ));
        }
        if target.starts_with("alias/") || target.contains(":alias/") {
            return Err(kms_err("ValidationException", "TargetKeyId must be a key id or key ARN, not an alias"));
        }
        let mut recs = Vec::new();
        let mut key = self
            .resolve_kms_key(&st, ctx, &mut recs, target)
            .map_err(|_| kms_err("NotFoundException", format!("Key '{target}' does not exist")))?;
        if key.aws_managed {
            return Err(kms_err("NotAuthorizedException", "Aliases cannot be added to AWS managed keys"));
        }
        key.aliases.push(alias.to_string());
        recs.push(Rec::KmsKey(key));
        self.commit(&mut st, recs)
    }

    pub fn kms_delete_alias(&self, ctx: &Ctx, alias: &str) -> Result<()> {
        if alias.starts_with("alias/aws/") {
            return Err(kms_err("NotAuthorizedException", format!("Alias {alias} is reserved for an AWS managed key")));
        }
        let mut st = self.lock();
        let key = st
            .kms_keys
            .values()
            .find(|k| k.account == ctx.account && k.region == ctx.region && k.aliases.iter().any(|a| a == alias))
            .cloned()
            .ok_or_else(|| {
                kms_err(
                    "NotFoundException",
                    format!("Alias arn:aws:kms:{}:{}:{alias} is not found.", ctx.region, ctx.account),
                )
            })?;
        let mut key = key;
        key.aliases.retain(|a| a != alias);
        self.commit(&mut st, vec![Rec::KmsKey(key)])
    }

    /// Aliases of the caller's region: every customer alias, and the AWS-managed `alias/aws/ebs`
    /// (with its target once the key exists).
    pub fn kms_list_aliases(&self, ctx: &Ctx, key_filter: Option<&str>) -> Result<Vec<AliasInfo>> {
        let filter_key = match key_filter {
            Some(k) => Some(self.kms_describe_key(ctx, k)?.key_id),
            None => None,
        };
        let st = self.lock();
        let mut out = Vec::new();
        let mut has_ebs = false;
        for k in st.kms_keys.values().filter(|k| k.account == ctx.account && k.region == ctx.region) {
            for a in &k.aliases {
                has_ebs |= a == DEFAULT_EBS_ALIAS;
                out.push(AliasInfo {
                    name: a.clone(),
                    arn: format!("arn:aws:kms:{}:{}:{a}", ctx.region, ctx.account),
                    target_key_id: Some(k.key_id.clone()),
                    created: k.created,
                });
            }
        }
        if !has_ebs {
            out.push(AliasInfo {
                name: DEFAULT_EBS_ALIAS.into(),
                arn: format!("arn:aws:kms:{}:{}:{DEFAULT_EBS_ALIAS}", ctx.region, ctx.account),
                target_key_id: None,
                created: 0,
            });
        }
        if let Some(k) = filter_key {
            out.retain(|a| a.target_key_id.as_deref() == Some(k.as_str()));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A key's 256-bit material.
pub(crate) fn material(key: &KmsKey) -> Result<[u8; 32]> {
    let bytes = hex::decode(&key.material)
        .map_err(|e| EngineError::Internal(format!("KMS key {} material: {e}", key.key_id)))?;
    bytes.try_into().map_err(|_| EngineError::Internal(format!("KMS key {} material has the wrong length", key.key_id)))
}
