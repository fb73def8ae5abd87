//! Account-level EBS settings per region: encryption by default and the default KMS key.

use crate::engine::{Engine, Rec, settings_key};
use crate::error::{EngineError, Result};
use crate::kms::DEFAULT_EBS_ALIAS;
use crate::model::{Ctx, RegionSettings};

impl Engine {
    fn settings(&self, ctx: &Ctx) -> RegionSettings {
        self.lock().settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default()
    }

    fn update_settings(&self, ctx: &Ctx, dry_run: bool, f: impl FnOnce(&mut RegionSettings)) -> Result<RegionSettings> {
        let mut st = self.lock();
        let mut s = st.settings.get(&settings_key(&ctx.account, &ctx.region)).cloned().unwrap_or_default();
        f(&mut s);
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(
            &mut st,
            vec![Rec::Settings { account: ctx.account.clone(), region: ctx.region.clone(), settings: s.clone() }],
        )?;
        Ok(s)
    }

    pub fn ebs_encryption_by_default(&self, ctx: &Ctx) -> bool {
        self.settings(ctx).ebs_encryption_by_default
    }

    pub fn set_ebs_encryption_by_default(&self, ctx: &Ctx, on: bool, dry_run: bool) -> Result<bool> {
        Ok(self.update_settings(ctx, dry_run, |s| s.ebs_encryption_by_default = on)?.ebs_encryption_by_default)
    }

    /// The default key as GetEbsDefaultKmsKeyId reports it: the chosen key ARN, or the alias ARN of
    /// the AWS-managed key.
    pub fn ebs_default_kms_key_id(&self, ctx: &Ctx) -> String {
        self.settings(ctx)
            .default_kms_key
            .unwrap_or_else(|| format!("arn:aws:kms:{}:{}:{}", ctx.region, ctx.account, DEFAULT_EBS_ALIAS))
    }

    pub fn modify_ebs_default_kms_key_id(&self, ctx: &Ctx, key: &str, dry_run: bool) -> Result<String> {
        let arn = {
            let st = self.lock();
            let mut recs = Vec::new();
            let k = self.resolve_kms_key(&st, ctx, &mut recs, key)?;
            drop(st);
            if !recs.is_empty() {
                let mut st = self.lock();
                if !dry_run {
                    self.commit(&mut st, recs)?;
                }
            }
            k.arn
        };
        self.update_settings(ctx, dry_run, |s| s.default_kms_key = Some(arn.clone()))?;
        Ok(arn)
    }

    pub fn reset_ebs_default_kms_key_id(&self, ctx: &Ctx, dry_run: bool) -> Result<String> {
        self.update_settings(ctx, dry_run, |s| s.default_kms_key = None)?;
        Ok(self.ebs_default_kms_key_id(ctx))
    }
}
