//! The engine's lifecycle-policy operations: create, describe, update, delete and tag policies
//! (the documents, their validation and the scheduler's state are in `mod.rs`; the scheduler is
//! `runner.rs`).

use super::*;

impl Engine {
    /// Every semantic rule of a custom snapshot policy's details.
    fn check_details(&self, ctx: &Ctx, d: &PolicyDetails, now: Millis) -> DlmResult<()> {
        if let Some(m) = d.unsupported.first() {
            return Err(invalid(format!(
                "PolicyDetails.{m} belongs to default, AMI or event-based policies, which blocksnap does not implement; \
                 create a custom snapshot policy (EBS_SNAPSHOT_MANAGEMENT)."
            )));
        }
        match d.policy_type.as_deref() {
            None | Some("EBS_SNAPSHOT_MANAGEMENT") => {}
            Some(t @ ("IMAGE_MANAGEMENT" | "EVENT_BASED_POLICY")) => {
                return Err(invalid(format!(
                    "PolicyType {t} is not supported by blocksnap: use EBS_SNAPSHOT_MANAGEMENT."
                )));
            }
            Some(t) => return Err(invalid(format!("PolicyType {t} is not valid."))),
        }
        match d.policy_language.as_deref() {
            None | Some("STANDARD") => {}
            Some("SIMPLIFIED") => {
                return Err(invalid("Default policies (PolicyLanguage SIMPLIFIED) are not supported by blocksnap."));
            }
            Some(l) => return Err(invalid(format!("PolicyLanguage {l} is not valid: use STANDARD."))),
        }
        let instance = match d.resource_types.as_slice() {
            [] => return Err(required("ResourceTypes")),
            [t] if t == "VOLUME" => false,
            [t] if t == "INSTANCE" => true,
            [t] => return Err(invalid(format!("ResourceTypes {t} is not valid: use VOLUME or INSTANCE."))),
            _ => return Err(invalid("ResourceTypes takes exactly one value (VOLUME or INSTANCE).")),
        };
        match d.resource_locations.as_slice() {
            [] => {}
            [l] if l == "CLOUD" => {}
            [l] if l == "OUTPOST" || l == "LOCAL_ZONE" => {
                return Err(invalid(format!(
                    "ResourceLocations {l}: blocksnap has no Outposts or Local Zones; use CLOUD."
                )));
            }
            _ => return Err(invalid("ResourceLocations takes exactly one value: CLOUD.")),
        }
        if d.target_tags.is_empty() {
            return Err(required("TargetTags"));
        }
        if d.target_tags.len() > 50 {
            return Err(invalid("TargetTags takes at most 50 tags."));
        }
        for t in &d.target_tags {
            if t.key.is_empty() || t.key.chars().count() > 128 {
                return Err(invalid(format!("TargetTags: tag key '{}' must be 1 to 128 characters.", t.key)));
            }
        }
        if let Some(p) = &d.parameters {
            if p.no_reboot.is_some() {
                return Err(invalid("Parameters.NoReboot is for AMI policies only."));
            }
            if !instance && (p.exclude_boot_volume.is_some() || !p.exclude_data_volume_tags.is_empty()) {
                return Err(invalid(
                    "Parameters.ExcludeBootVolume and ExcludeDataVolumeTags are for policies that target instances only.",
                ));
            }
            if p.exclude_data_volume_tags.len() > 50 {
                return Err(invalid("ExcludeDataVolumeTags takes at most 50 tags."));
            }
        }
        match d.schedules.len() {
            0 => return Err(required("Schedules")),
            1..=4 => {}
            _ => return Err(invalid("A policy has at most 4 schedules.")),
        }
        let mut names = std::collections::HashSet::new();
        let mut count_based = None;
        for s in &d.schedules {
            let name = s.name.as_deref().ok_or_else(|| required("Name"))?;
            check_name("Schedule name", name, 120)?;
            if !names.insert(name) {
                return Err(invalid(format!("Schedule names must be unique; '{name}' is used twice.")));
            }
            if let Some(m) = s.unsupported.first() {
                return Err(invalid(format!(
                    "Schedule '{name}': {m} is not supported by blocksnap (fast snapshot restore and AMI deprecation \
                     are not implemented)."
                )));
            }
            if s.tags_to_add.len() > 45 || s.variable_tags.len() > 45 {
                return Err(invalid(format!(
                    "Schedule '{name}': TagsToAdd and VariableTags take at most 45 tags each."
                )));
            }
            for t in &s.tags_to_add {
                check_tag_kv(&format!("Schedule '{name}' TagsToAdd"), t)?;
            }
            if !s.variable_tags.is_empty() && !instance {
                return Err(invalid("VariableTags are valid only for policies that target instances."));
            }
            for t in &s.variable_tags {
                check_tag_kv(&format!("Schedule '{name}' VariableTags"), t)?;
                if t.value != "$(instance-id)" && t.value != "$(timestamp)" {
                    return Err(invalid(format!(
                        "VariableTags value '{}' is not valid: use $(instance-id) or $(timestamp).",
                        t.value
                    )));
                }
            }
            let c = s.create_rule.as_ref().ok_or_else(|| required("CreateRule"))?;
            schedule_of(c, now, now)?;
            if c.scripts {
                return Err(invalid("CreateRule.Scripts (pre and post scripts) are not supported by blocksnap."));
            }
            match c.location.as_deref() {
                None | Some("CLOUD") => {}
                Some(l) => {
                    return Err(invalid(format!("CreateRule.Location {l} is not available in blocksnap: use CLOUD.")));
                }
            }
            let r = s.retain_rule.as_ref().ok_or_else(|| required("RetainRule"))?;
            let by_count = match (r.count, r.interval.is_some() || r.interval_unit.is_some()) {
                (Some(_), true) => {
                    return Err(exclusive(
                        "Count",
                        "Interval",
                        "RetainRule takes either Count or Interval and IntervalUnit, not both.",
                    ));
                }
                (None, false) => return Err(invalid("RetainRule needs Count, or Interval and IntervalUnit.")),
                (Some(n), false) => {
                    if !(1..=1000).contains(&n) {
                        return Err(invalid(format!("RetainRule Count {n} is not valid: 1 to 1000.")));
                    }
                    true
                }
                (None, true) => {
                    check_age("RetainRule", r.interval, r.interval_unit.as_deref())?;
                    false
                }
            };
            if count_based.is_some_and(|c| c != by_count) {
                return Err(invalid("All schedules of a policy retain by count, or all by age."));
            }
            count_based = Some(by_count);
            match s.share_rules.as_slice() {
                [] => {}
                [r] => {
                    if r.target_accounts.is_empty() {
                        return Err(required("TargetAccounts"));
                    }
                    for a in &r.target_accounts {
                        if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                            return Err(invalid(format!(
                                "ShareRules TargetAccounts {a} is not a 12-digit account id."
                            )));
                        }
                    }
                    if r.unshare_interval.is_some() || r.unshare_interval_unit.is_some() {
                        check_age(
                            "ShareRules UnshareInterval",
                            r.unshare_interval,
                            r.unshare_interval_unit.as_deref(),
                        )?;
                    }
                }
                _ => return Err(invalid(format!("Schedule '{name}': at most one ShareRule."))),
            }
            if let Some(a) = &s.archive_rule {
                self.check_archive_rule(name, instance, c, by_count, a, now)?;
            }
            if s.cross_region_copy_rules.len() > 3 {
                return Err(invalid(format!("Schedule '{name}': at most 3 CrossRegionCopyRules.")));
            }
            let mut targets = std::collections::HashSet::new();
            for rule in &s.cross_region_copy_rules {
                let target = match (&rule.target, &rule.target_region) {
                    (Some(_), Some(_)) => {
                        return Err(exclusive(
                            "Target",
                            "TargetRegion",
                            "A CrossRegionCopyRule takes Target or TargetRegion, not both.",
                        ));
                    }
                    (None, None) => return Err(required("Target")),
                    (Some(t), None) | (None, Some(t)) => t,
                };
                if target.starts_with("arn:") {
                    return Err(invalid(format!("Copy target {target}: blocksnap has no Outposts; name a region.")));
                }
                if !self.config.regions.iter().any(|r| r == target) {
                    return Err(invalid(format!(
                        "Copy target region {target} is not served by this endpoint (served: {}).",
                        self.config.regions.join(", ")
                    )));
                }
                if *target == ctx.region {
                    return Err(invalid(format!("Copy target region {target} is the policy's own region.")));
                }
                if !targets.insert(target.clone()) {
                    return Err(invalid(format!("Schedule '{name}' copies to {target} twice.")));
                }
                if rule.encrypted.is_none() {
                    return Err(required("Encrypted"));
                }
                if let Some(k) = &rule.cmk_arn {
                    let ok = k.starts_with("arn:aws") && k.contains(":kms:") && k.contains(":key/");
                    if !ok {
                        return Err(invalid(format!("CmkArn {k} is not a KMS key ARN.")));
                    }
                    if rule.encrypted != Some(true) {
                        return Err(invalid("CmkArn requires Encrypted to be true."));
                    }
                }
                if rule.deprecate_rule {
                    return Err(invalid("CrossRegionCopyRule.DeprecateRule is for AMI policies only."));
                }
                if let Some((n, u)) = &rule.retain_rule {
                    check_age("CrossRegionCopyRule RetainRule", *n, u.as_deref())?;
                }
            }
        }
        Ok(())
    }

    /// An `ArchiveRule` as AWS documents it: volume policies only, schedules at least 28 days
    /// apart (so cron), the same kind of retention as the schedule's, at least 90 days in the
    /// archive tier.
    fn check_archive_rule(
        &self,
        name: &str,
        instance: bool,
        create: &CreateRule,
        by_count: bool,
        a: &RetainRule,
        now: Millis,
    ) -> DlmResult<()> {
        const DAY: i64 = 86_400_000;
        if instance {
            return Err(invalid(format!("Schedule '{name}': ArchiveRule is for policies that target volumes only.")));
        }
        if create.cron_expression.is_none() {
            return Err(invalid(format!(
                "Schedule '{name}': an ArchiveRule needs a creation frequency of at least 28 days (a CronExpression)."
            )));
        }
        let sched = schedule_of(create, now, now)?;
        // The runs of the coming year (and the one after it): their smallest and average gaps.
        let (mut t, mut runs, mut min_gap) = (now, 0i64, i64::MAX);
        let (mut first, mut prev): (Option<Millis>, Option<Millis>) = (None, None);
        while let Some(next) = sched.next_after(t).filter(|n| *n <= now + 366 * DAY || runs < 2) {
            if let Some(p) = prev {
                min_gap = min_gap.min(next - p);
            }
            first.get_or_insert(next);
            prev = Some(next);
            runs += 1;
            t = next;
            if next > now + 366 * DAY {
                break;
            }
        }
        if runs == 0 || min_gap < 28 * DAY {
            return Err(invalid(format!(
                "Schedule '{name}': an ArchiveRule needs a creation frequency of at least 28 days."
            )));
        }
        match (a.count, a.interval.is_some() || a.interval_unit.is_some()) {
            (Some(_), true) => Err(exclusive(
                "Count",
                "Interval",
                "RetentionArchiveTier takes either Count or Interval and IntervalUnit, not both.",
            )),
            (None, false) => Err(invalid("RetentionArchiveTier needs Count, or Interval and IntervalUnit.")),
            (Some(_), false) if !by_count => Err(invalid(
                "RetentionArchiveTier of an age-based schedule takes Interval and IntervalUnit, not Count.",
            )),
            (None, true) if by_count => Err(invalid(
                "RetentionArchiveTier of a count-based schedule takes Count, not Interval and IntervalUnit.",
            )),
            (Some(n), false) => {
                // Each snapshot must stay at least 90 days in the archive tier.
                let average_gap = match (first, prev) {
                    (Some(a), Some(b)) if runs > 1 => (b - a) / (runs - 1),
                    _ => 366 * DAY,
                };
                if !(1..=1000).contains(&n) || n * average_gap < 90 * DAY {
                    return Err(invalid(format!(
                        "RetentionArchiveTier Count {n} keeps snapshots less than 90 days in the archive tier \
                         at this schedule's frequency (or is not 1 to 1000)."
                    )));
                }
                Ok(())
            }
            (None, true) => {
                let (n, u) = check_age("RetentionArchiveTier", a.interval, a.interval_unit.as_deref())?;
                if expiry(now, n, &u) - now < 90 * DAY {
                    return Err(invalid(
                        "RetentionArchiveTier must keep snapshots at least 90 days in the archive tier.",
                    ));
                }
                Ok(())
            }
        }
    }

    fn policies_in<'a>(st: &'a State) -> impl Iterator<Item = Policy> + 'a {
        st.docs.get(KIND_DLM_POLICY).into_iter().flat_map(|m| m.values()).filter_map(|r| {
            match serde_json::from_str::<Policy>(&r.doc) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(policy_id = r.id, error = %e, "unreadable lifecycle policy row");
                    None
                }
            }
        })
    }

    pub(crate) fn dlm_policies(st: &State) -> Vec<Policy> {
        Self::policies_in(st).collect()
    }

    fn policy_of(st: &State, ctx: &Ctx, id: &str) -> DlmResult<Policy> {
        let r = st
            .docs
            .get(KIND_DLM_POLICY)
            .and_then(|m| m.get(id))
            .filter(|r| r.account == ctx.account && r.region == ctx.region)
            .ok_or_else(|| not_found(id))?;
        Ok(serde_json::from_str(&r.doc).map_err(EngineError::from)?)
    }

    pub(crate) fn policy_rec(p: &Policy) -> crate::error::Result<Rec> {
        Ok(Rec::Doc(
            KIND_DLM_POLICY,
            Row {
                kind: KIND_DLM_POLICY.into(),
                id: p.id.clone(),
                account: p.account.clone(),
                region: p.region.clone(),
                doc: serde_json::to_string(p)?,
            },
        ))
    }

    fn check_policy_tags(tags: &[KeyValue]) -> DlmResult<Tags> {
        let mut out = Tags::new();
        for t in tags {
            check_tag_kv("Tags", t)?;
            out.insert(t.key.clone(), t.value.clone());
        }
        if out.len() > 200 {
            return Err(invalid("A policy has at most 200 tags."));
        }
        Ok(out)
    }

    /// Every rule CreateLifecyclePolicy checks, without creating anything.
    pub fn dlm_validate_create(&self, ctx: &Ctx, req: &CreatePolicy) -> DlmResult<()> {
        if let Some(m) = req.default_policy_members.first() {
            return Err(invalid(format!(
                "{m} is for default policies, which blocksnap does not implement; create a custom policy with PolicyDetails."
            )));
        }
        check_role(req.execution_role_arn.as_deref().ok_or_else(|| required("ExecutionRoleArn"))?)?;
        check_name("Description", req.description.as_deref().ok_or_else(|| required("Description"))?, 500)?;
        check_state(req.state.as_deref().ok_or_else(|| required("State"))?)?;
        self.check_details(ctx, req.details.as_ref().ok_or_else(|| required("PolicyDetails"))?, now_millis())?;
        Self::check_policy_tags(&req.tags)?;
        Ok(())
    }

    pub fn dlm_create_policy(&self, ctx: &Ctx, req: CreatePolicy) -> DlmResult<String> {
        self.dlm_validate_create(ctx, &req)?;
        let (Some(role), Some(description), Some(state), Some(details)) =
            (req.execution_role_arn, req.description, req.state, req.details)
        else {
            return Err(invalid("The request is incomplete."));
        };
        let enabled = check_state(&state)?;
        let now = now_millis();
        let tags = Self::check_policy_tags(&req.tags)?;
        let mut st = self.lock();
        let count = Self::policies_in(&st).filter(|p| p.account == ctx.account && p.region == ctx.region).count();
        if count >= MAX_POLICIES {
            return Err(DlmError::LimitExceeded {
                message: format!(
                    "The account has {count} lifecycle policies in {}; the limit is {MAX_POLICIES}.",
                    ctx.region
                ),
                resource_type: "LifecyclePolicy",
            });
        }
        let mut id = ids::new_id("policy");
        while st.docs.get(KIND_DLM_POLICY).is_some_and(|m| m.contains_key(&id)) {
            id = ids::new_id("policy");
        }
        let p = Policy {
            id: id.clone(),
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            description,
            execution_role_arn: role,
            enabled,
            details,
            tags,
            created: now,
            modified: now,
            enabled_since: now,
            claimed: BTreeMap::new(),
            in_progress: vec![],
            pending_copies: vec![],
            error: None,
        };
        self.commit(&mut st, vec![Self::policy_rec(&p)?])?;
        tracing::info!(policy_id = id, account = ctx.account, region = ctx.region, "lifecycle policy created");
        Ok(id)
    }

    pub fn dlm_get_policy(&self, ctx: &Ctx, id: &str) -> DlmResult<Policy> {
        Self::policy_of(&self.lock(), ctx, id)
    }

    pub fn dlm_get_policies(&self, ctx: &Ctx, q: &GetPolicies) -> DlmResult<Vec<Policy>> {
        if let Some(s) = &q.state
            && !["ENABLED", "DISABLED", "ERROR"].contains(&s.as_str())
        {
            return Err(invalid(format!("State {s} is not valid: use ENABLED, DISABLED or ERROR.")));
        }
        for t in &q.resource_types {
            if t != "VOLUME" && t != "INSTANCE" {
                return Err(invalid(format!("ResourceTypes {t} is not valid: use VOLUME or INSTANCE.")));
            }
        }
        let pairs = |list: &[String], what: &str| -> DlmResult<Vec<(String, String)>> {
            list.iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| invalid(format!("{what} '{s}' is not valid: use key=value.")))
                })
                .collect()
        };
        let target_tags = pairs(&q.target_tags, "TargetTags")?;
        let tags_to_add = pairs(&q.tags_to_add, "TagsToAdd")?;
        if let Some(t) = &q.default_policy_type
            && !["VOLUME", "INSTANCE", "ALL"].contains(&t.as_str())
        {
            return Err(invalid(format!("DefaultPolicyType {t} is not valid: use VOLUME, INSTANCE or ALL.")));
        }
        let st = self.lock();
        let mine: Vec<Policy> =
            Self::policies_in(&st).filter(|p| p.account == ctx.account && p.region == ctx.region).collect();
        let missing: Vec<String> =
            q.policy_ids.iter().filter(|id| !mine.iter().any(|p| &&p.id == id)).cloned().collect();
        if !missing.is_empty() {
            return Err(DlmError::NotFound {
                message: format!("Lifecycle policies not found: {}.", missing.join(", ")),
                resource_type: "LifecyclePolicy",
                ids: missing,
            });
        }
        let has = |list: &[KeyValue], (k, v): &(String, String)| list.iter().any(|t| &t.key == k && &t.value == v);
        let mut out: Vec<Policy> = mine
            .into_iter()
            // Every policy here is a custom one: a filter on default policies matches none.
            .filter(|_| q.default_policy_type.is_none())
            .filter(|p| q.policy_ids.is_empty() || q.policy_ids.contains(&p.id))
            .filter(|p| q.state.as_deref().is_none_or(|s| s == p.state()))
            .filter(|p| q.resource_types.is_empty() || q.resource_types.iter().any(|t| t == p.resource_type()))
            .filter(|p| target_tags.is_empty() || target_tags.iter().any(|kv| has(&p.details.target_tags, kv)))
            .filter(|p| {
                tags_to_add.is_empty()
                    || tags_to_add.iter().any(|kv| p.details.schedules.iter().any(|s| has(&s.tags_to_add, kv)))
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn dlm_update_policy(&self, ctx: &Ctx, req: UpdatePolicy) -> DlmResult<()> {
        if let Some(m) = req.default_policy_members.first() {
            return Err(invalid(format!("{m} is for default policies, which blocksnap does not implement.")));
        }
        if let Some(r) = &req.execution_role_arn {
            check_role(r)?;
        }
        if let Some(d) = &req.description {
            check_name("Description", d, 500)?;
        }
        let enabled = req.state.as_deref().map(check_state).transpose()?;
        let now = now_millis();
        let mut st = self.lock();
        let mut p = Self::policy_of(&st, ctx, &req.policy_id)?;
        if let Some(d) = req.details {
            self.check_details(ctx, &d, now)?;
            if d.resource_types != p.details.resource_types {
                return Err(invalid("The resource type of a policy cannot be changed; create a new policy."));
            }
            if d.policy_type.as_deref().unwrap_or("EBS_SNAPSHOT_MANAGEMENT")
                != p.details.policy_type.as_deref().unwrap_or("EBS_SNAPSHOT_MANAGEMENT")
            {
                return Err(invalid("The policy type of a policy cannot be changed; create a new policy."));
            }
            let by_count =
                |s: &[ScheduleSpec]| s.first().and_then(|s| s.retain_rule.as_ref()).map(|r| r.count.is_some());
            if by_count(&d.schedules) != by_count(&p.details.schedules) {
                return Err(invalid(
                    "The retention of a policy cannot change between count-based and age-based; create a new policy.",
                ));
            }
            p.details = d;
        }
        if let Some(r) = req.execution_role_arn {
            p.execution_role_arn = r;
        }
        if let Some(d) = req.description {
            p.description = d;
        }
        if let Some(e) = enabled {
            if e && !p.enabled {
                // Slots missed while disabled are not made up.
                p.enabled_since = now;
                p.error = None;
            }
            p.enabled = e;
        }
        p.modified = now;
        self.commit(&mut st, vec![Self::policy_rec(&p)?])?;
        Ok(())
    }

    /// Deletes the policy; its snapshots stay (AWS keeps them too).
    pub fn dlm_delete_policy(&self, ctx: &Ctx, id: &str) -> DlmResult<()> {
        let mut st = self.lock();
        let p = Self::policy_of(&st, ctx, id)?;
        self.commit(&mut st, vec![Rec::DeleteDoc(KIND_DLM_POLICY, p.id)])?;
        Ok(())
    }

    /// The policy an ARN names, if the caller owns it.
    fn policy_by_arn(st: &State, ctx: &Ctx, arn: &str) -> DlmResult<Policy> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let (region, account, id) = match parts.as_slice() {
            ["arn", p, "dlm", region, account, res] if p.starts_with("aws") => {
                let id = res
                    .strip_prefix("policy/")
                    .ok_or_else(|| invalid(format!("{arn} is not a lifecycle policy ARN.")))?;
                (*region, *account, id)
            }
            _ => {
                return Err(invalid(format!(
                    "{arn} is not a lifecycle policy ARN (arn:aws:dlm:<region>:<account>:policy/<id>)."
                )));
            }
        };
        if region != ctx.region || account != ctx.account {
            return Err(DlmError::NotFound {
                message: format!("Resource {arn} not found."),
                resource_type: "LifecyclePolicy",
                ids: vec![arn.to_string()],
            });
        }
        Self::policy_of(st, ctx, id)
    }

    pub fn dlm_list_tags(&self, ctx: &Ctx, arn: &str) -> DlmResult<Tags> {
        Ok(Self::policy_by_arn(&self.lock(), ctx, arn)?.tags)
    }

    pub fn dlm_tag_resource(&self, ctx: &Ctx, arn: &str, tags: &[KeyValue]) -> DlmResult<()> {
        if tags.is_empty() {
            return Err(required("Tags"));
        }
        let add = Self::check_policy_tags(tags)?;
        let mut st = self.lock();
        let mut p = Self::policy_by_arn(&st, ctx, arn)?;
        p.tags.extend(add);
        if p.tags.len() > 200 {
            return Err(invalid("A policy has at most 200 tags."));
        }
        self.commit(&mut st, vec![Self::policy_rec(&p)?])?;
        Ok(())
    }

    pub fn dlm_untag_resource(&self, ctx: &Ctx, arn: &str, keys: &[String]) -> DlmResult<()> {
        if keys.is_empty() {
            return Err(required("TagKeys"));
        }
        let mut st = self.lock();
        let mut p = Self::policy_by_arn(&st, ctx, arn)?;
        for k in keys {
            p.tags.remove(k);
        }
        self.commit(&mut st, vec![Self::policy_rec(&p)?])?;
        Ok(())
    }
}
