//! Snapshot locks (EC2 LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots): a locked snapshot
//! cannot be deleted by anyone, the root account included, until its lock expires or (governance
//! mode, or compliance mode within its cooling-off period) it is unlocked.
//!
//! A lock is one catalog document of kind `snapshot_lock` (id = the snapshot id), written in one
//! commit; it never needs a background job: its state is a function of the engine's time
//! ([`crate::clock`]) and the snapshot's completion:
//!
//! ```text
//!   LockSnapshot(governance) ─► governance ─────────────────────────┐
//!   LockSnapshot(compliance, CoolOffPeriod=h) ─► compliance-cooloff ─(h hours)─► compliance ─┤
//!   LockSnapshot(compliance) ─► compliance ──────────────────────────────────────────────────┤
//!                                                        (lock duration over) ─► expired ◄──┘
//!   UnlockSnapshot: governance / compliance-cooloff ─► (no lock)
//! ```
//!
//! A lock with `LockDuration` on a pending snapshot starts counting when the snapshot completes (as
//! AWS documents): until then it has no expiry and the snapshot cannot be deleted anyway. An expired
//! lock stays listed (`expired`) until the snapshot is deleted; the deletion removes it in the same
//! commit.

use blocksnap_catalog::Row;
use serde::{Deserialize, Serialize};

use crate::describe::{self, Limits, ListQuery, Page};
use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::filter::Filterable;
use crate::model::{Ctx, Millis, Snapshot, SnapshotState, Tags, now_millis};

pub(crate) const KIND_SNAPSHOT_LOCK: &str = "snapshot_lock";

const DAY_MS: i64 = 24 * 3600 * 1000;
const HOUR_MS: i64 = 3600 * 1000;
/// LockDuration, in days: "Min: 1, max 36500".
pub const MAX_LOCK_DAYS: u32 = 36_500;
/// CoolOffPeriod, in hours: "Min 1, max 72".
pub const MAX_COOL_OFF_HOURS: u32 = 72;
/// DescribeLockedSnapshots: MaxResults between 5 and 1,000.
const LOCKED_SNAPSHOTS: Limits = Limits { min: 5, max: 1000, clamp_above: false, ids_exclude_max: false };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            other => Err(EngineError::invalid_value(format!(
                "Value ({other}) for parameter LockMode is invalid. Valid values: compliance, governance"
            ))),
        }
    }
}

/// How long a lock lasts: a number of days (from the snapshot's completion, or from the lock when
/// the snapshot is already complete) or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockLength {
    Days(u32),
    Until(Millis),
}

/// LockSnapshot, parsed.
#[derive(Debug, Clone)]
pub struct LockSnapshot {
    pub snapshot_id: String,
    pub mode: String,
    pub cool_off_hours: Option<i64>,
    pub lock_duration_days: Option<i64>,
    pub expiration_date: Option<Millis>,
    pub dry_run: bool,
}

/// The stored lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotLockDoc {
    pub snapshot_id: String,
    pub account: String,
    pub mode: LockMode,
    pub length: LockLength,
    /// When the lock was first taken (kept across modifications).
    pub created: Millis,
    /// When a `Days` lock began counting (the lock's time, or the snapshot's completion if later).
    #[serde(default)]
    pub duration_start: Option<Millis>,
    /// Compliance mode's cooling-off period: its length and its end.
    #[serde(default)]
    pub cool_off_hours: Option<u32>,
    #[serde(default)]
    pub cool_off_until: Option<Millis>,
}

/// A lock as DescribeLockedSnapshots and LockSnapshot answer it, evaluated at one instant.
#[derive(Debug, Clone)]
pub struct LockedSnapshotInfo {
    pub owner_id: String,
    pub snapshot_id: String,
    pub lock_state: &'static str,
    pub lock_duration_days: Option<u32>,
    pub cool_off_hours: Option<u32>,
    pub cool_off_expires_on: Option<Millis>,
    pub lock_created_on: Millis,
    pub lock_duration_start_time: Option<Millis>,
    pub lock_expires_on: Option<Millis>,
    tags: Tags,
}

impl Filterable for LockedSnapshotInfo {
    fn field(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "lock-state" => Some(vec![self.lock_state.to_string()]),
            _ => None,
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

impl SnapshotLockDoc {
    /// When the lock's duration starts: for a `Days` lock on a pending snapshot, at its completion.
    fn start(&self, snap: Option<&Snapshot>) -> Option<Millis> {
        match self.length {
            LockLength::Until(_) => Some(self.duration_start.unwrap_or(self.created)),
            LockLength::Days(_) => self.duration_start.or_else(|| {
                snap.filter(|s| s.state == SnapshotState::Completed).map(|s| s.completion_time.unwrap_or(self.created))
            }),
        }
    }

    fn expires(&self, snap: Option<&Snapshot>) -> Option<Millis> {
        match self.length {
            LockLength::Until(t) => Some(t),
            LockLength::Days(d) => self.start(snap).map(|s| s.saturating_add(d as i64 * DAY_MS)),
        }
    }

    fn state(&self, snap: Option<&Snapshot>, now: Millis) -> &'static str {
        if self.expires(snap).is_some_and(|e| now >= e) {
            return "expired";
        }
        match self.mode {
            LockMode::Governance => "governance",
            LockMode::Compliance if self.cool_off_until.is_some_and(|c| now < c) => "compliance-cooloff",
            LockMode::Compliance => "compliance",
        }
    }

    fn info(&self, snap: Option<&Snapshot>, now: Millis) -> LockedSnapshotInfo {
        let expires = self.expires(snap);
        LockedSnapshotInfo {
            owner_id: self.account.clone(),
            snapshot_id: self.snapshot_id.clone(),
            lock_state: self.state(snap, now),
            lock_duration_days: match self.length {
                LockLength::Days(d) => Some(d),
                // A lock to a date reports the whole days it spans, as AWS does.
                LockLength::Until(t) => {
                    let start = self.start(snap).unwrap_or(self.created);
                    Some(((t - start).max(0) / DAY_MS) as u32)
                }
            },
            cool_off_hours: self.cool_off_hours,
            cool_off_expires_on: self.cool_off_until,
            lock_created_on: self.created,
            lock_duration_start_time: self.start(snap),
            lock_expires_on: expires,
            tags: Tags::new(),
        }
    }
}

fn lock_row(doc: &SnapshotLockDoc, region: &str) -> Result<Rec> {
    Ok(Rec::Doc(
        KIND_SNAPSHOT_LOCK,
        Row {
            kind: KIND_SNAPSHOT_LOCK.into(),
            id: doc.snapshot_id.clone(),
            account: doc.account.clone(),
            region: region.into(),
            doc: serde_json::to_string(doc)?,
        },
    ))
}

fn parse_lock(r: &Row) -> Result<SnapshotLockDoc> {
    serde_json::from_str(&r.doc)
        .map_err(|e| EngineError::Internal(format!("catalog row {KIND_SNAPSHOT_LOCK}/{} is unreadable: {e}", r.id)))
}

/// The lock of a snapshot, if any (expired or not).
pub(crate) fn lock_of(st: &State, snapshot_id: &str) -> Result<Option<SnapshotLockDoc>> {
    st.docs.get(KIND_SNAPSHOT_LOCK).and_then(|m| m.get(snapshot_id)).map(parse_lock).transpose()
}

fn locked_error(id: &str, state: &str, expires: Option<Millis>) -> EngineError {
    let until = expires.map(|t| format!(" until {}", crate::volumes::format_time(t))).unwrap_or_default();
    EngineError::client(
        "SnapshotLocked",
        format!("The snapshot {id} is locked in {state} mode{until} and can't be deleted."),
    )
}

impl Engine {
    /// Before snapshots are deleted (or moved to the Recycle Bin): refuse if any is locked, and
    /// answer the records that drop their expired locks (committed with the deletion).
    pub(crate) fn release_expired_locks(&self, st: &State, ids: &[String]) -> Result<Vec<Rec>> {
        let now = now_millis();
        let mut recs = Vec::new();
        for id in ids {
            let Some(lock) = lock_of(st, id)? else { continue };
            let snap = st.snapshots.get(id);
            match lock.state(snap, now) {
                "expired" => recs.push(Rec::DeleteDoc(KIND_SNAPSHOT_LOCK, id.clone())),
                state => return Err(locked_error(id, state, lock.expires(snap))),
            }
        }
        Ok(recs)
    }

    pub fn lock_snapshot(&self, ctx: &Ctx, req: LockSnapshot) -> Result<LockedSnapshotInfo> {
        let mode = LockMode::parse(&req.mode)?;
        let length = match (req.lock_duration_days, req.expiration_date) {
            (Some(_), Some(_)) => {
                return Err(EngineError::combination(
                    "The parameters LockDuration and ExpirationDate cannot be used together: specify one.",
                ));
            }
            (None, None) => {
                return Err(EngineError::missing(
                    "The request must contain the parameter LockDuration or ExpirationDate",
                ));
            }
            (Some(d), None) => {
                if !(1..=MAX_LOCK_DAYS as i64).contains(&d) {
                    return Err(EngineError::invalid_value(format!(
                        "Value ({d}) for parameter LockDuration is invalid. It must be between 1 and {MAX_LOCK_DAYS} days."
                    )));
                }
                LockLength::Days(d as u32)
            }
            (None, Some(t)) => LockLength::Until(t),
        };
        let cool_off = match req.cool_off_hours {
            None => None,
            Some(_) if mode == LockMode::Governance => {
                return Err(EngineError::combination(
                    "CoolOffPeriod applies to compliance mode only: omit it when locking in governance mode.",
                ));
            }
            Some(h) if !(1..=MAX_COOL_OFF_HOURS as i64).contains(&h) => {
                return Err(EngineError::invalid_value(format!(
                    "Value ({h}) for parameter CoolOffPeriod is invalid. It must be between 1 and {MAX_COOL_OFF_HOURS} hours."
                )));
            }
            Some(h) => Some(h as u32),
        };
        let mut st = self.lock();
        let snap = self.own_snapshot(&st, ctx, &req.snapshot_id)?.clone();
        if snap.state == SnapshotState::Error {
            return Err(EngineError::client(
                "IncorrectState",
                format!(
                    "Snapshot '{}' is in the error state; only pending or completed snapshots can be locked.",
                    snap.id
                ),
            ));
        }
        let now = now_millis();
        if let LockLength::Until(t) = length {
            if t <= now {
                return Err(EngineError::invalid_value("ExpirationDate must be in the future."));
            }
            if t > now.saturating_add(MAX_LOCK_DAYS as i64 * DAY_MS) {
                return Err(EngineError::invalid_value(format!(
                    "ExpirationDate must be at most {MAX_LOCK_DAYS} days in the future."
                )));
            }
        }
        let existing = lock_of(&st, &snap.id)?;
        let current = existing.as_ref().map(|l| (l, l.state(Some(&snap), now))).filter(|(_, s)| *s != "expired");
        let duration_start = match length {
            LockLength::Until(_) => Some(now),
            LockLength::Days(_) if snap.state == SnapshotState::Completed => Some(now),
            LockLength::Days(_) => None,
        };
        let mut doc = SnapshotLockDoc {
            snapshot_id: snap.id.clone(),
            account: snap.account.clone(),
            mode,
            length,
            created: now,
            duration_start,
            cool_off_hours: cool_off,
            cool_off_until: cool_off.map(|h| now + h as i64 * HOUR_MS),
        };
        if let Some((old, state)) = current {
            doc.created = old.created;
            if state == "compliance" {
                // Past its cooling-off period a compliance lock can only be extended.
                if mode != LockMode::Compliance {
                    return Err(EngineError::client(
                        "IncorrectState",
                        format!(
                            "Snapshot '{}' is locked in compliance mode and its cooling-off period has expired: its lock mode can't be changed.",
                            snap.id
                        ),
                    ));
                }
                if cool_off.is_some() {
                    return Err(EngineError::combination(format!(
                        "Snapshot '{}' is locked in compliance mode past its cooling-off period: omit CoolOffPeriod when extending the lock.",
                        snap.id
                    )));
                }
                let (old_end, new_end) = (old.expires(Some(&snap)), doc.expires(Some(&snap)));
                let shorter = match (old_end, new_end) {
                    (Some(o), Some(n)) => n < o,
                    // A pending snapshot's lock: compare the durations.
                    _ => match (old.length, doc.length) {
                        (LockLength::Days(o), LockLength::Days(n)) => n < o,
                        _ => false,
                    },
                };
                if shorter {
                    return Err(EngineError::client(
                        "IncorrectState",
                        format!(
                            "Snapshot '{}' is locked in compliance mode past its cooling-off period: its lock can only be extended, not shortened.",
                            snap.id
                        ),
                    ));
                }
                doc.cool_off_hours = old.cool_off_hours;
                doc.cool_off_until = old.cool_off_until;
            } else if state == "compliance-cooloff" && mode == LockMode::Compliance {
                // Still cooling off: the period may be changed; it counts from when it began.
                let began = old.cool_off_until.zip(old.cool_off_hours).map(|(u, h)| u - h as i64 * HOUR_MS);
                if let (Some(b), Some(h)) = (began, cool_off) {
                    doc.cool_off_until = Some(b + h as i64 * HOUR_MS);
                }
            }
        }
        if req.dry_run {
            return Err(EngineError::DryRun);
        }
        let rec = lock_row(&doc, &snap.region)?;
        self.commit(&mut st, vec![rec])?;
        Ok(doc.info(Some(&snap), now))
    }

    pub fn unlock_snapshot(&self, ctx: &Ctx, id: &str, dry_run: bool) -> Result<()> {
        let mut st = self.lock();
        let snap = self.own_snapshot(&st, ctx, id)?.clone();
        let now = now_millis();
        let lock = lock_of(&st, id)?;
        match lock.as_ref().map(|l| l.state(Some(&snap), now)) {
            None | Some("expired") => {
                return Err(EngineError::client("IncorrectState", format!("Snapshot '{id}' is not locked.")));
            }
            Some("compliance") => {
                return Err(EngineError::client(
                    "IncorrectState",
                    format!(
                        "Snapshot '{id}' is locked in compliance mode and its cooling-off period has expired: it can't be unlocked."
                    ),
                ));
            }
            Some(_) => {}
        }
        if dry_run {
            return Err(EngineError::DryRun);
        }
        self.commit(&mut st, vec![Rec::DeleteDoc(KIND_SNAPSHOT_LOCK, id.to_string())])
    }

    pub fn describe_locked_snapshots(&self, ctx: &Ctx, q: &ListQuery) -> Result<Page<LockedSnapshotInfo>> {
        let st = self.lock();
        for id in &q.ids {
            self.own_snapshot(&st, ctx, id)?;
        }
        let now = now_millis();
        let locks: Vec<LockedSnapshotInfo> = match st.docs.get(KIND_SNAPSHOT_LOCK) {
            None => Vec::new(),
            Some(m) => m
                .values()
                .filter(|r| r.account == ctx.account && r.region == ctx.region)
                .map(|r| parse_lock(r).map(|l| l.info(st.snapshots.get(&l.snapshot_id), now)))
                .collect::<Result<_>>()?,
        };
        drop(st);
        describe::run(q, &["lock-state"], LOCKED_SNAPSHOTS, locks.iter(), |l| &l.snapshot_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(mode: LockMode, length: LockLength, cool_off_hours: Option<u32>) -> SnapshotLockDoc {
        SnapshotLockDoc {
            snapshot_id: "snap-0123456789abcdef0".into(),
            account: "123456789012".into(),
            mode,
            length,
            created: 0,
            duration_start: Some(0),
            cool_off_hours,
            cool_off_until: cool_off_hours.map(|h| h as i64 * HOUR_MS),
        }
    }

    #[test]
    fn states_follow_the_clock() {
        let g = lock(LockMode::Governance, LockLength::Days(1), None);
        assert_eq!(g.state(None, 0), "governance");
        assert_eq!(g.state(None, DAY_MS), "expired");
        let c = lock(LockMode::Compliance, LockLength::Until(2 * DAY_MS), Some(2));
        assert_eq!(c.state(None, HOUR_MS), "compliance-cooloff");
        assert_eq!(c.state(None, 2 * HOUR_MS), "compliance");
        assert_eq!(c.state(None, 2 * DAY_MS), "expired");
        assert_eq!(c.info(None, 0).lock_duration_days, Some(2));
    }

    #[test]
    fn a_days_lock_on_a_pending_snapshot_starts_at_completion() {
        let mut l = lock(LockMode::Compliance, LockLength::Days(3), None);
        l.duration_start = None;
        assert_eq!(l.expires(None), None);
        assert_eq!(l.state(None, 100 * DAY_MS), "compliance", "no expiry before completion");
    }
}
