//! Operations: what each Lightsail call records, and how operations that follow a job (a snapshot
//! upload, a disk being filled) are brought up to date. Queried by typed fields only: the row key
//! is an [`OperationKey`], the pending ones are found through [`PendingOperations`].

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::engine::{Rec, State};
use crate::error::Result;
use crate::model::{Ctx, Millis, Snapshot, SnapshotState, VolumeState, now_millis};

use super::records::{KIND_OPERATION, parse, prefix, put, rows};
use super::validate::check_name;
use super::views::{LsPage, page};
use super::{Lightsail, OPERATIONS_PAGE_SIZE, not_found};

/// What an operation's status follows after the call returned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum Track {
    /// Done when the call returned.
    #[default]
    Done,
    /// Snapshot jobs: Started while any is pending, Failed if any failed, else Succeeded.
    Snapshots(Vec<String>),
    /// A volume being filled from a snapshot: Started while creating.
    Volume(String),
}

/// The kind of resource an operation is about. The serde names are the document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceType {
    Disk,
    Instance,
    DiskSnapshot,
    InstanceSnapshot,
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What an operation did. The serde names are the document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationType {
    CreateDisk,
    CreateDiskFromSnapshot,
    DeleteDisk,
    AttachDisk,
    DetachDisk,
    CreateInstance,
    DeleteInstance,
    CreateDiskSnapshot,
    DeleteDiskSnapshot,
    CreateInstanceSnapshot,
    DeleteInstanceSnapshot,
    TagResource,
    UntagResource,
}

/// Where an operation is. The serde names are the document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationStatus {
    /// Accepted; a job it follows is still running.
    Started,
    Succeeded,
    Failed,
}

/// Why a failed operation failed (the only cause recorded: its job failed). The serde name is the
/// document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationError {
    OperationFailure,
}

/// A Lightsail operation (also the `ls_operation` document format: field names and order as
/// written since the first version).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub resource_name: String,
    pub resource_type: ResourceType,
    pub created_at: Millis,
    pub availability_zone: String,
    pub region: String,
    pub is_terminal: bool,
    #[serde(default)]
    pub operation_details: Option<String>,
    pub operation_type: OperationType,
    pub status: OperationStatus,
    pub status_changed_at: Millis,
    #[serde(default)]
    pub error_code: Option<OperationError>,
    #[serde(default)]
    pub error_details: Option<String>,
    #[serde(default)]
    pub track: Track,
}

/// An operation row's key after the account/region prefix: `<millis:013>-<seq:03>-<id>`, so one
/// account's operations list oldest first and one call's keep their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OperationKey {
    pub created_at: Millis,
    pub seq: usize,
    pub id: String,
}

impl OperationKey {
    pub fn encode(&self) -> String {
        format!("{:013}-{:03}-{}", self.created_at, self.seq, self.id)
    }

    pub fn parse(key: &str) -> Option<OperationKey> {
        let (ms, rest) = key.split_once('-')?;
        let (seq, id) = rest.split_once('-')?;
        Some(OperationKey { created_at: ms.parse().ok()?, seq: seq.parse().ok()?, id: id.to_string() })
    }
}

/// Row ids of the operations that are not terminal yet (they follow a job), so settling reads
/// those and nothing else. Built from the documents on first use (one parse of every operation,
/// under the engine lock, once per process); kept up to date by the calls that record operations
/// (after their commit) and by settling. An id whose row is gone or terminal is dropped when met.
#[derive(Default)]
pub(crate) struct PendingOperations {
    ids: Mutex<Option<BTreeSet<String>>>,
}

impl PendingOperations {
    /// The pending row ids under `prefix`, in row order.
    fn under(&self, st: &State, prefix: &str) -> Vec<String> {
        let mut g = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let ids = g.get_or_insert_with(|| {
            st.docs
                .get(KIND_OPERATION)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|r| parse::<Operation>(r).is_ok_and(|o| !o.is_terminal))
                .map(|r| r.id.clone())
                .collect()
        });
        ids.range(prefix.to_string()..).take_while(|k| k.starts_with(prefix)).cloned().collect()
    }

    fn add(&self, row_ids: impl IntoIterator<Item = String>) {
        let mut g = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        // Not built yet: the first use reads every document, these included.
        if let Some(ids) = g.as_mut() {
            ids.extend(row_ids);
        }
    }

    fn remove(&self, row_ids: &[String]) {
        if let Some(ids) = self.ids.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for id in row_ids {
                ids.remove(id);
            }
        }
    }
}

/// The operations one call records, with a sequence so that one call's operations keep their order.
pub(super) struct Ops<'c> {
    ctx: &'c Ctx,
    pub now: Millis,
    pub list: Vec<Operation>,
}

impl<'c> Ops<'c> {
    pub fn new(ctx: &'c Ctx) -> Self {
        Ops { ctx, now: now_millis(), list: vec![] }
    }

    pub fn add(
        &mut self,
        name: &str,
        rtype: ResourceType,
        zone: &str,
        op_type: OperationType,
        details: Option<&str>,
        track: Track,
    ) {
        let done = matches!(track, Track::Done);
        self.list.push(Operation {
            id: crate::ids::new_uuid(),
            resource_name: name.to_string(),
            resource_type: rtype,
            created_at: self.now,
            availability_zone: zone.to_string(),
            region: self.ctx.region.clone(),
            is_terminal: done,
            operation_details: details.map(str::to_string),
            operation_type: op_type,
            status: if done { OperationStatus::Succeeded } else { OperationStatus::Started },
            status_changed_at: self.now,
            error_code: None,
            error_details: None,
            track,
        });
    }

    fn row_id(&self, seq: usize, o: &Operation) -> String {
        let key = OperationKey { created_at: o.created_at, seq, id: o.id.clone() };
        format!("{}{}", prefix(self.ctx), key.encode())
    }

    pub fn recs(&self) -> Result<Vec<Rec>> {
        self.list.iter().enumerate().map(|(i, o)| put(KIND_OPERATION, self.row_id(i, o), self.ctx, o)).collect()
    }

    fn pending_row_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.list.iter().enumerate().filter(|(_, o)| !o.is_terminal).map(|(i, o)| self.row_id(i, o))
    }
}

impl Lightsail<'_> {
    /// Commit `recs` and the call's operations in one transaction (undoing the engine call if that
    /// fails); the operations that follow a job are then settled as it goes.
    pub(super) fn commit_ops(&self, mut recs: Vec<Rec>, ops: &Ops, undo: impl FnOnce()) -> Result<()> {
        recs.extend(ops.recs()?);
        self.commit_or(recs, undo)?;
        self.engine.jobs.lightsail_operations.add(ops.pending_row_ids());
        Ok(())
    }

    /// Bring operations that follow a job up to date with it (and persist the change).
    pub(super) fn settle(&self, st: &mut State, ctx: &Ctx) {
        let pending = &self.engine.jobs.lightsail_operations;
        let mut recs = Vec::new();
        let mut gone = Vec::new();
        let mut settled = Vec::new();
        for row_id in pending.under(st, &prefix(ctx)) {
            let Some(r) = st.docs.get(KIND_OPERATION).and_then(|m| m.get(&row_id)) else {
                gone.push(row_id);
                continue;
            };
            let Ok(mut op) = parse::<Operation>(r) else {
                gone.push(row_id);
                continue;
            };
            if op.is_terminal {
                gone.push(row_id);
                continue;
            }
            let outcome: Option<(OperationStatus, Option<String>, Millis)> = match &op.track {
                Track::Done => Some((OperationStatus::Succeeded, None, op.status_changed_at)),
                Track::Snapshots(ids) => {
                    let snaps: Vec<Option<&Snapshot>> = ids.iter().map(|i| st.snapshots.get(i)).collect();
                    if let Some(failed) = snaps.iter().flatten().find(|s| s.state == SnapshotState::Error) {
                        Some((OperationStatus::Failed, failed.state_message.clone(), now_millis()))
                    } else if snaps.iter().any(Option::is_none) {
                        Some((
                            OperationStatus::Failed,
                            Some("the snapshot was deleted before it completed".into()),
                            now_millis(),
                        ))
                    } else if snaps.iter().flatten().all(|s| s.state == SnapshotState::Completed) {
                        let at = snaps.iter().flatten().filter_map(|s| s.completion_time).max();
                        Some((OperationStatus::Succeeded, None, at.unwrap_or_else(now_millis)))
                    } else {
                        None
                    }
                }
                Track::Volume(id) => match st.volumes.get(id) {
                    Some(v) if v.state == VolumeState::Creating => None,
                    Some(v) if v.state == VolumeState::Error => Some((
                        OperationStatus::Failed,
                        Some("the disk could not be filled from the snapshot".into()),
                        now_millis(),
                    )),
                    _ => Some((OperationStatus::Succeeded, None, now_millis())),
                },
            };
            if let Some((status, details, at)) = outcome {
                op.status = status;
                op.is_terminal = true;
                op.status_changed_at = at;
                if status == OperationStatus::Failed {
                    op.error_code = Some(OperationError::OperationFailure);
                    op.error_details = details;
                }
                match put(KIND_OPERATION, row_id.clone(), ctx, &op) {
                    Ok(rec) => {
                        recs.push(rec);
                        settled.push(row_id);
                    }
                    Err(e) => tracing::warn!(error = %e, "serialising a Lightsail operation"),
                }
            }
        }
        pending.remove(&gone);
        if recs.is_empty() {
            return;
        }
        match self.engine.commit(st, recs) {
            Ok(()) => pending.remove(&settled),
            Err(e) => tracing::warn!(error = %e, "could not record finished Lightsail operations"),
        }
    }

    pub fn get_operation(&self, ctx: &Ctx, id: &str) -> Result<Operation> {
        self.check_region(ctx)?;
        let mut st = self.engine.lock();
        self.settle(&mut st, ctx);
        let p = prefix(ctx);
        rows(&st, KIND_OPERATION, ctx, None)
            .into_iter()
            .find(|r| OperationKey::parse(&r.id[p.len()..]).is_some_and(|k| k.id == id))
            .map(parse::<Operation>)
            .transpose()?
            .ok_or_else(|| not_found(format!("The Operation does not exist: {id}")))
    }

    /// Operations oldest first, optionally of one resource name, after the row key `after`.
    pub fn get_operations(&self, ctx: &Ctx, resource: Option<&str>, after: Option<&str>) -> Result<LsPage<Operation>> {
        self.check_region(ctx)?;
        if let Some(n) = resource {
            check_name("resourceName", n)?;
        }
        let mut st = self.engine.lock();
        self.settle(&mut st, ctx);
        let p = prefix(ctx);
        let mut items: Vec<(String, Operation)> = Vec::new();
        for r in rows(&st, KIND_OPERATION, ctx, after) {
            let op = parse::<Operation>(r)?;
            if resource.is_some_and(|n| op.resource_name != n) {
                continue;
            }
            items.push((r.id[p.len()..].to_string(), op));
            if items.len() > OPERATIONS_PAGE_SIZE {
                break;
            }
        }
        if let Some(n) = resource
            && items.is_empty()
            && after.is_none()
            && !self.name_exists(&st, ctx, n)?
        {
            return Err(not_found(format!("No resource named {n} exists in {}.", ctx.region)));
        }
        let p = page(items, OPERATIONS_PAGE_SIZE, |(k, _)| k.clone());
        Ok(LsPage { items: p.items.into_iter().map(|(_, o)| o).collect(), next_after: p.next_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = OperationKey { created_at: 1_700_000_000_123, seq: 2, id: "0e5f-aa-11".into() };
        assert_eq!(k.encode(), "1700000000123-002-0e5f-aa-11");
        assert_eq!(OperationKey::parse(&k.encode()), Some(k));
        assert_eq!(OperationKey::parse("nope"), None);
    }

    /// Documents written by earlier versions (field names, order and values) still read, and an
    /// operation is written exactly as before.
    #[test]
    fn document_format_is_unchanged() {
        let old = r#"{"id":"u1","resource_name":"d1","resource_type":"DiskSnapshot","created_at":5,"availability_zone":"all","region":"us-east-1","is_terminal":false,"operation_details":"disk-a","operation_type":"CreateDiskSnapshot","status":"Started","status_changed_at":5,"error_code":null,"error_details":null,"track":{"Snapshots":["snap-1"]}}"#;
        let op: Operation = serde_json::from_str(old).unwrap();
        assert_eq!(op.status, OperationStatus::Started);
        assert_eq!(op.resource_type, ResourceType::DiskSnapshot);
        assert_eq!(serde_json::to_string(&op).unwrap(), old);
        let failed = r#"{"id":"u2","resource_name":"d1","resource_type":"Disk","created_at":5,"availability_zone":"us-east-1a","region":"us-east-1","is_terminal":true,"operation_details":null,"operation_type":"CreateDiskFromSnapshot","status":"Failed","status_changed_at":6,"error_code":"OperationFailure","error_details":"x","track":{"Volume":"vol-1"}}"#;
        let op: Operation = serde_json::from_str(failed).unwrap();
        assert_eq!(op.error_code, Some(OperationError::OperationFailure));
        assert_eq!(serde_json::to_string(&op).unwrap(), failed);
        let done = r#"{"id":"u3","resource_name":"i","resource_type":"Instance","created_at":1,"availability_zone":"z","region":"r","is_terminal":true,"operation_type":"TagResource","status":"Succeeded","status_changed_at":1}"#;
        let op: Operation = serde_json::from_str(done).unwrap();
        assert!(matches!(op.track, Track::Done));
    }
}
