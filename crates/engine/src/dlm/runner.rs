//! The lifecycle-policy scheduler: one task ticking on real time (every `tick`), comparing each
//! schedule's next slot with the engine's clock ([`now_millis`], which a test clock moves).
//!
//! A tick, each step on a blocking thread and none holding the engine lock while it waits:
//! 1. **Claim** (under the lock, one commit, then fsync): every schedule whose next slot after
//!    its last claim is due records the claim (`claimed[schedule] = now`) and a `RunClaim` in
//!    `in_progress`. Only then are snapshots taken, so a restart or a second tick never takes a
//!    slot twice. Slots missed while the server was down (or the clock jumped) are not each made
//!    up: one run now covers them (a catch-up), the rest are skipped.
//! 2. **Run**: snapshots of the targets through the engine's own CreateSnapshot (volumes) and
//!    CreateSnapshots (instances: one crash-consistent cut across the instance's volumes), tagged
//!    as DLM tags them; then (one commit) the claim is replaced by the copies still to start.
//!    A claim left by a crash is settled at the next tick from the snapshots that carry its tags
//!    (taken after the claim): nothing is taken again, a slot interrupted half-way stays half-done.
//! 3. **Copy**: once a snapshot is `completed`, CopySnapshot into each rule's region (skipped if
//!    a copy of it is already there, so a crash between the copy and its record copies once).
//!    Snapshots of a schedule with a `ShareRule` are shared with its accounts when taken.
//! 4. **Retire**: snapshots past a `ShareRule`'s `UnshareInterval` are unshared; with an `ArchiveRule`
//!    what the retain rule retires is archived (ModifySnapshotTier) and deleted once past the archive
//!    tier's own count or age; otherwise snapshots beyond a count-based rule's count (per volume, oldest first) and
//!    snapshots or copies past their `aws:dlm:expirationTime` are deleted through DeleteSnapshot,
//!    so whatever protects snapshots from deletion applies; a refused deletion is tried again at
//!    the next tick. Disabled policies neither run nor retire (as AWS documents); deleted ones leave
//!    their snapshots alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::copy::CopySnapshot;
use crate::snapshots::{CreateSnapshot, CreateSnapshots, PermissionChange};

/// Real time between two ticks unless `BLOCKSNAP_DLM_TICK_MS` says otherwise (the binary reads it).
pub const DEFAULT_TICK: Duration = Duration::from_secs(30);

/// What one tick did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub runs: usize,
    pub snapshots: usize,
    pub copies: usize,
    pub retired: usize,
}

impl Engine {
    /// Start the scheduler (once, after `start`).
    pub fn start_dlm(self: &Arc<Self>, tick: Duration) {
        let Some(storage) = &self.storage else { return };
        let me = Arc::downgrade(self);
        let tick = tick.max(Duration::from_millis(10));
        storage.runtime.spawn(async move {
            let mut running: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                tokio::time::sleep(tick).await;
                // A tick still running (a slow disk) is never overlapped by the next one.
                if running.as_ref().is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                let Some(engine) = me.upgrade() else { return };
                running = Some(tokio::task::spawn_blocking(move || {
                    let r = engine.dlm_tick();
                    if r != TickReport::default() {
                        tracing::info!(
                            runs = r.runs,
                            snapshots = r.snapshots,
                            copies = r.copies,
                            retired = r.retired,
                            "lifecycle policies ran"
                        );
                    }
                }));
            }
        });
    }

    /// One pass of the scheduler.
    pub fn dlm_tick(&self) -> TickReport {
        let mut report = TickReport::default();
        let claims = match self.dlm_claim() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "lifecycle policies: claiming due schedules failed");
                return report;
            }
        };
        fail::fail_point!("dlm.after_claim", |_| report.clone());
        for (policy, claim) in claims {
            report.runs += 1;
            report.snapshots += self.dlm_run(&policy, &claim);
        }
        report.copies = self.dlm_copy();
        report.retired = self.dlm_retire();
        report
    }

    /// Step 1: settle claims a crash left, claim the due slots, make it durable.
    fn dlm_claim(&self) -> crate::error::Result<Vec<(Policy, RunClaim)>> {
        let now = now_millis();
        let mut jobs = Vec::new();
        {
            let mut st = self.lock();
            let mut recs = Vec::new();
            for mut p in Self::dlm_policies(&st) {
                let mut changed = false;
                for claim in std::mem::take(&mut p.in_progress) {
                    tracing::info!(
                        policy_id = p.id,
                        schedule = claim.schedule,
                        "settling a run interrupted by a restart"
                    );
                    let taken: Vec<String> = st
                        .snapshots
                        .values()
                        .filter(|s| is_run_snapshot(s, &p, &claim.schedule) && s.start_time >= claim.started)
                        .map(|s| s.id.clone())
                        .collect();
                    queue_copies(&mut p, &claim.schedule, &taken);
                    changed = true;
                }
                if p.enabled {
                    for s in &p.details.schedules {
                        let (Some(name), Some(rule)) = (&s.name, &s.create_rule) else { continue };
                        let sched = match schedule_of(rule, p.created, now) {
                            Ok(s) => s,
                            Err(e) => {
                                let msg = format!("Schedule '{name}' cannot run: {e}");
                                if p.error.as_ref() != Some(&msg) {
                                    p.error = Some(msg);
                                    changed = true;
                                }
                                continue;
                            }
                        };
                        let floor = p.claimed.get(name).copied().unwrap_or(i64::MIN).max(p.enabled_since);
                        if let Some(slot) = sched.next_after(floor).filter(|slot| *slot <= now) {
                            // One run covers every slot up to now: a catch-up, not one per missed slot.
                            p.claimed.insert(name.clone(), now);
                            let claim = RunClaim { schedule: name.clone(), slot, started: now };
                            p.in_progress.push(claim.clone());
                            jobs.push((p.clone(), claim));
                            changed = true;
                        }
                    }
                }
                if changed {
                    recs.push(Self::policy_rec(&p)?);
                }
            }
            if !recs.is_empty() {
                self.commit(&mut st, recs)?;
            }
        }
        // Claims are durable before any snapshot is taken.
        self.sync_pending()?;
        Ok(jobs)
    }

    /// Step 2: take one schedule's snapshots; record the run. Returns the snapshots taken.
    fn dlm_run(&self, p: &Policy, claim: &RunClaim) -> usize {
        let ctx = Ctx { account: p.account.clone(), region: p.region.clone() };
        let mut taken = Vec::new();
        let mut errors = Vec::new();
        if let Some(s) = p.schedule(&claim.schedule) {
            let now = claim.started;
            let mut system = Tags::new();
            system.insert(TAG_POLICY_ID.into(), p.id.clone());
            system.insert(TAG_SCHEDULE_NAME.into(), claim.schedule.clone());
            system.insert(TAG_MANAGED.into(), "true".into());
            if let Some(r) = &s.retain_rule
                && let (Some(n), Some(u)) = (r.interval, r.interval_unit.as_deref())
            {
                system.insert(TAG_EXPIRATION.into(), crate::volumes::format_time(expiry(now, n, u)));
            }
            let description = format!("Created for policy: {} schedule: {}", p.id, claim.schedule);
            let add: Tags = s.tags_to_add.iter().map(|t| (t.key.clone(), t.value.clone())).collect();
            let copy_tags = s.copy_tags == Some(true);
            for target in self.dlm_targets(p) {
                let mut tags = if copy_tags { user_tags(&target.tags) } else { Tags::new() };
                tags.extend(add.clone());
                let r = if p.resource_type() == "INSTANCE" {
                    for v in &s.variable_tags {
                        let value = match v.value.as_str() {
                            "$(instance-id)" => target.id.clone(),
                            _ => crate::volumes::format_time(now),
                        };
                        tags.insert(v.key.clone(), value);
                    }
                    tags.extend(system.clone());
                    let req = CreateSnapshots {
                        instance_id: target.id.clone(),
                        exclude_boot_volume: target.exclude_boot,
                        exclude_data_volume_ids: target.exclude_volumes.clone(),
                        description: Some(description.clone()),
                        ..Default::default()
                    };
                    self.create_snapshots_tagged(&ctx, req, tags)
                        .map(|v| v.into_iter().map(|s| s.id).collect::<Vec<_>>())
                } else {
                    tags.extend(system.clone());
                    let req = CreateSnapshot {
                        volume_id: target.id.clone(),
                        description: Some(description.clone()),
                        ..Default::default()
                    };
                    self.create_snapshot_tagged(&ctx, req, tags).map(|s| vec![s.id])
                };
                match r {
                    Ok(ids) => taken.extend(ids),
                    Err(e) => {
                        tracing::warn!(policy_id = p.id, target = target.id, error = %e, "lifecycle policy could not snapshot a target");
                        errors.push(format!("{}: {}", target.id, e.message()));
                    }
                }
            }
        }
        // ShareRules: the new snapshots are shared with the rule's accounts.
        if let Some(rule) = p.schedule(&claim.schedule).and_then(|s| s.share_rules.first()) {
            for id in &taken {
                let change = PermissionChange { add: rule.target_accounts.clone(), remove: vec![] };
                if let Err(e) = self.modify_snapshot_permissions(&ctx, id, change, false) {
                    tracing::warn!(policy_id = p.id, snapshot_id = id, error = %e, "lifecycle policy could not share a snapshot");
                    errors.push(format!("sharing {id}: {}", e.message()));
                }
            }
        }
        let n = taken.len();
        fail::fail_point!("dlm.before_record", |_| n);
        let _ = self.dlm_update(&p.id, |q| {
            q.in_progress.retain(|c| c != claim);
            queue_copies(q, &claim.schedule, &taken);
            q.error = (!errors.is_empty()).then(|| format!("The last run failed for {}", errors.join("; ")));
        });
        tracing::info!(policy_id = p.id, schedule = claim.schedule, snapshots = n, "lifecycle policy ran");
        n
    }

    /// Read-modify-write of a policy under the lock (nothing if it was deleted meanwhile).
    fn dlm_update(&self, id: &str, f: impl FnOnce(&mut Policy)) -> crate::error::Result<()> {
        {
            let mut st = self.lock();
            let Some(row) = st.docs.get(KIND_DLM_POLICY).and_then(|m| m.get(id)) else { return Ok(()) };
            let mut p: Policy = serde_json::from_str(&row.doc)?;
            let before = serde_json::to_string(&p)?;
            f(&mut p);
            if serde_json::to_string(&p)? == before {
                return Ok(());
            }
            self.commit(&mut st, vec![Self::policy_rec(&p)?])?;
        }
        self.sync_pending()
    }

    /// The volumes or instances a policy targets now (any of its target tags).
    fn dlm_targets(&self, p: &Policy) -> Vec<Target> {
        let st = self.lock();
        let matches = |tags: &Tags| p.details.target_tags.iter().any(|t| tags.get(&t.key) == Some(&t.value));
        if p.resource_type() == "INSTANCE" {
            let params = p.details.parameters.clone().unwrap_or_default();
            st.instances
                .values()
                .filter(|i| i.account == p.account && i.region == p.region && matches(&i.tags))
                .filter(|i| !matches!(i.state, InstanceState::Terminated | InstanceState::ShuttingDown))
                .map(|i| {
                    let view = Self::view(&st, i);
                    let exclude_volumes = view
                        .block_devices
                        .iter()
                        .filter(|b| b.0 != i.root_device_name)
                        .filter(|b| {
                            st.volumes.get(&b.1).is_some_and(|v| {
                                params.exclude_data_volume_tags.iter().any(|t| v.tags.get(&t.key) == Some(&t.value))
                            })
                        })
                        .map(|b| b.1.clone())
                        .collect();
                    Target {
                        id: i.id.clone(),
                        tags: i.tags.clone(),
                        exclude_boot: params.exclude_boot_volume == Some(true),
                        exclude_volumes,
                    }
                })
                .collect()
        } else {
            st.volumes
                .values()
                .filter(|v| v.account == p.account && v.region == p.region && matches(&v.tags))
                .filter(|v| matches!(v.state, VolumeState::Available | VolumeState::InUse))
                .map(|v| Target {
                    id: v.id.clone(),
                    tags: v.tags.clone(),
                    exclude_boot: false,
                    exclude_volumes: vec![],
                })
                .collect()
        }
    }

    /// Step 3: start the copies of completed snapshots. Returns the copies started.
    fn dlm_copy(&self) -> usize {
        let policies: Vec<Policy> =
            Self::dlm_policies(&self.lock()).into_iter().filter(|p| !p.pending_copies.is_empty()).collect();
        if policies.is_empty() {
            return 0;
        }
        // The copies that exist, by account and source (`region/id`): one pass over the snapshots.
        let mut copied: HashMap<(String, String), Vec<String>> = HashMap::new();
        for s in self.lock().snapshots.values() {
            if let Some(src) = &s.source_snapshot {
                copied.entry((s.account.clone(), src.clone())).or_default().push(s.region.clone());
            }
        }
        let mut started = 0;
        for p in policies {
            for pc in &p.pending_copies {
                let source = self.lock().snapshots.get(&pc.snapshot_id).cloned();
                let existing = copied
                    .get(&(p.account.clone(), format!("{}/{}", p.region, pc.snapshot_id)))
                    .cloned()
                    .unwrap_or_default();
                let rules = p.schedule(&pc.schedule).map(|s| s.cross_region_copy_rules.clone()).unwrap_or_default();
                let mut done: Vec<String> = Vec::new();
                let mut error = None;
                match source.as_ref().map(|s| s.state) {
                    Some(SnapshotState::Pending) => continue,
                    Some(SnapshotState::Completed) => {}
                    // Gone or failed: nothing to copy.
                    _ => done.clone_from(&pc.regions),
                }
                if let Some(src) = source.as_ref().filter(|s| s.state == SnapshotState::Completed) {
                    for region in &pc.regions {
                        let Some(rule) =
                            rules.iter().find(|r| r.target.as_ref().or(r.target_region.as_ref()) == Some(region))
                        else {
                            done.push(region.clone());
                            continue;
                        };
                        if existing.contains(region) {
                            done.push(region.clone());
                            continue;
                        }
                        match self.dlm_copy_one(&p, &pc.schedule, src, region, rule) {
                            Ok(()) => {
                                fail::fail_point!("dlm.after_copy", |_| started);
                                started += 1;
                                done.push(region.clone());
                            }
                            Err(e) => {
                                tracing::warn!(policy_id = p.id, snapshot_id = src.id, region, error = %e, "lifecycle policy copy failed");
                                error = Some(format!("Copying {} to {region} failed: {}", src.id, e.message()));
                            }
                        }
                    }
                }
                if !done.is_empty() || error.is_some() {
                    let _ = self.dlm_update(&p.id, |q| {
                        for e in q.pending_copies.iter_mut().filter(|e| e.snapshot_id == pc.snapshot_id) {
                            e.regions.retain(|r| !done.contains(r));
                        }
                        q.pending_copies.retain(|e| !e.regions.is_empty());
                        if let Some(msg) = error {
                            q.error = Some(msg);
                        }
                    });
                }
            }
        }
        started
    }

    fn dlm_copy_one(
        &self,
        p: &Policy,
        schedule: &str,
        src: &Snapshot,
        region: &str,
        rule: &CopyRule,
    ) -> crate::error::Result<()> {
        let ctx = Ctx { account: p.account.clone(), region: region.to_string() };
        let mut tags = if rule.copy_tags == Some(true) { user_tags(&src.tags) } else { Tags::new() };
        tags.insert(TAG_POLICY_ID.into(), p.id.clone());
        tags.insert(TAG_SCHEDULE_NAME.into(), schedule.to_string());
        tags.insert(TAG_MANAGED.into(), "true".into());
        if let Some((Some(n), Some(u))) = &rule.retain_rule {
            tags.insert(TAG_EXPIRATION.into(), crate::volumes::format_time(expiry(now_millis(), *n, u)));
        }
        let req = CopySnapshot {
            source_region: p.region.clone(),
            source_snapshot_id: src.id.clone(),
            description: Some(format!("Copied for policy: {} schedule: {} from {}", p.id, schedule, src.id)),
            encrypted: rule.encrypted,
            kms_key_id: rule.cmk_arn.clone(),
            ..Default::default()
        };
        self.copy_snapshot_tagged(&ctx, req, tags)?;
        self.sync_pending()
    }

    /// Step 4: delete what the retention rules retire. Returns the snapshots deleted.
    fn dlm_retire(&self) -> usize {
        let now = now_millis();
        let mut unshare: Vec<(String, String, String, Vec<String>)> = Vec::new();
        let mut archive: Vec<(String, String, String)> = Vec::new();
        let doomed: Vec<(String, String, String)> = {
            let st = self.lock();
            let mut out = Vec::new();
            let policies: Vec<Policy> = Self::dlm_policies(&st).into_iter().filter(|p| p.enabled).collect();
            if policies.is_empty() {
                return 0;
            }
            // The snapshots (and copies) policies made, by policy id: one pass over the snapshots.
            let mut made: HashMap<&str, Vec<&Snapshot>> = HashMap::new();
            for s in st.snapshots.values() {
                if let Some(id) = s.tags.get(TAG_POLICY_ID) {
                    made.entry(id.as_str()).or_default().push(s);
                }
            }
            for p in &policies {
                let mine: &[&Snapshot] = made.get(p.id.as_str()).map_or(&[], Vec::as_slice);
                // The archive rule of the schedule that took a snapshot (copies have none).
                let archive_rule = |s: &Snapshot| {
                    let name = s.tags.get(TAG_SCHEDULE_NAME)?;
                    is_run_snapshot(s, p, name).then(|| p.schedule(name)?.archive_rule.as_ref()).flatten()
                };
                // By age: the expiry written on the snapshot (and on copies, in any region); with an
                // archive rule the snapshot is archived then, and deleted once its archive age passes.
                for s in mine {
                    if s.account != p.account || s.state == SnapshotState::Pending {
                        continue;
                    }
                    if s.tags.get(TAG_EXPIRATION).and_then(|t| parse_time(t)).is_none_or(|t| t > now) {
                        continue;
                    }
                    let key = (s.account.clone(), s.region.clone(), s.id.clone());
                    match archive_rule(s).map(|a| (a.interval, a.interval_unit.as_deref())) {
                        None => out.push(key),
                        Some((Some(n), Some(u))) => match archived_since(s) {
                            None => archive.push(key),
                            Some(t) if expiry(t, n, u) <= now => out.push(key),
                            Some(_) => {}
                        },
                        Some(_) => {}
                    }
                }
                // ShareRules' UnshareInterval: shared snapshots past it are unshared.
                for sch in &p.details.schedules {
                    let (Some(name), Some(rule)) = (&sch.name, sch.share_rules.first()) else { continue };
                    let (Some(n), Some(u)) = (rule.unshare_interval, rule.unshare_interval_unit.as_deref()) else {
                        continue;
                    };
                    for s in mine.iter().filter(|s| is_run_snapshot(s, p, name)) {
                        let shared: Vec<String> = rule
                            .target_accounts
                            .iter()
                            .filter(|a| s.create_volume_permissions.contains(a))
                            .cloned()
                            .collect();
                        if !shared.is_empty() && expiry(s.start_time, n, u) <= now {
                            unshare.push((s.account.clone(), s.region.clone(), s.id.clone(), shared));
                        }
                    }
                }
                // By count: per schedule and volume, the newest `count` stay.
                for sch in &p.details.schedules {
                    let (Some(name), Some(count)) = (&sch.name, sch.retain_rule.as_ref().and_then(|r| r.count)) else {
                        continue;
                    };
                    let mut by_volume: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
                    for s in mine.iter().copied().filter(|s| is_run_snapshot(s, p, name)) {
                        by_volume.entry(s.volume_id.as_str()).or_default().push(s);
                    }
                    let archive_count = sch.archive_rule.as_ref().and_then(|a| a.count);
                    for mut list in by_volume.into_values() {
                        list.sort_by_key(|s| std::cmp::Reverse((s.start_time, s.id.clone())));
                        let key = |s: &Snapshot| (s.account.clone(), s.region.clone(), s.id.clone());
                        let Some(keep_archived) = archive_count else {
                            for s in list.into_iter().skip(count.max(1) as usize) {
                                if s.state != SnapshotState::Pending {
                                    out.push(key(s));
                                }
                            }
                            continue;
                        };
                        // With an archive rule: beyond the count, standard snapshots are archived;
                        // beyond the archive count, archived ones are deleted.
                        let (archived, standard): (Vec<&Snapshot>, Vec<&Snapshot>) =
                            list.into_iter().partition(|s| archived_since(s).is_some());
                        for s in standard.into_iter().skip(count.max(1) as usize) {
                            if s.state == SnapshotState::Completed {
                                archive.push(key(s));
                            }
                        }
                        for s in archived.into_iter().skip(keep_archived.max(1) as usize) {
                            out.push(key(s));
                        }
                    }
                }
            }
            out.sort();
            out.dedup();
            out
        };
        for (account, region, id, accounts) in unshare {
            let ctx = Ctx { account, region };
            let change = PermissionChange { add: vec![], remove: accounts };
            match self.modify_snapshot_permissions(&ctx, &id, change, false).and_then(|()| self.sync_pending()) {
                Ok(()) => tracing::info!(snapshot_id = id, "lifecycle policy unshared a snapshot"),
                Err(e) => {
                    tracing::debug!(snapshot_id = id, error = %e, "unsharing a snapshot failed; trying again later")
                }
            }
        }
        for (account, region, id) in archive {
            let ctx = Ctx { account, region };
            match self.modify_snapshot_tier(&ctx, &id, Some("archive"), false) {
                Ok(_) => tracing::info!(snapshot_id = id, "lifecycle policy archived a snapshot"),
                Err(e) => {
                    tracing::debug!(snapshot_id = id, error = %e, "archiving a snapshot failed; trying again later")
                }
            }
        }
        let mut retired = 0;
        for (account, region, id) in doomed {
            let ctx = Ctx { account, region };
            match self.delete_snapshot(&ctx, &id, false).and_then(|()| self.sync_pending()) {
                Ok(()) => {
                    tracing::info!(snapshot_id = id, region = ctx.region, "lifecycle policy retired a snapshot");
                    retired += 1;
                }
                Err(e) => {
                    tracing::debug!(snapshot_id = id, error = %e, "retiring a snapshot was refused; trying again later")
                }
            }
        }
        retired
    }
}

struct Target {
    id: String,
    tags: Tags,
    exclude_boot: bool,
    exclude_volumes: Vec<String>,
}

/// Since when a snapshot is in (or on its way to) the archive tier, if it is.
fn archived_since(s: &Snapshot) -> Option<Millis> {
    use crate::archive::TieringStatus;
    s.tiering
        .as_ref()
        .filter(|t| t.archived || t.status == TieringStatus::ArchivalInProgress)
        .map(|t| t.archival_complete_time.unwrap_or(t.start_time))
}

/// A snapshot a schedule of the policy took in the policy's region (not a copy).
fn is_run_snapshot(s: &Snapshot, p: &Policy, schedule: &str) -> bool {
    s.account == p.account
        && s.region == p.region
        && s.source_snapshot.is_none()
        && s.tags.get(TAG_POLICY_ID) == Some(&p.id)
        && s.tags.get(TAG_SCHEDULE_NAME).map(String::as_str) == Some(schedule)
}

fn queue_copies(p: &mut Policy, schedule: &str, taken: &[String]) {
    let regions: Vec<String> = p
        .schedule(schedule)
        .map(|s| {
            s.cross_region_copy_rules
                .iter()
                .filter_map(|r| r.target.clone().or_else(|| r.target_region.clone()))
                .collect()
        })
        .unwrap_or_default();
    if regions.is_empty() {
        return;
    }
    for id in taken {
        if !p.pending_copies.iter().any(|c| &c.snapshot_id == id) {
            p.pending_copies.push(PendingCopy {
                snapshot_id: id.clone(),
                schedule: schedule.to_string(),
                regions: regions.clone(),
            });
        }
    }
}

/// The caller's own tags (`aws:` tags are never copied).
fn user_tags(tags: &Tags) -> Tags {
    tags.iter().filter(|(k, _)| !k.starts_with("aws:")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn parse_time(s: &str) -> Option<Millis> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}
