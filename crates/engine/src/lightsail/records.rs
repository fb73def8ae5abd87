//! The Lightsail catalog documents (their formats are on disk: fields are only ever added, with
//! `#[serde(default)]`), their row keys, and the lookups by name.

use std::collections::HashMap;

use blocksnap_catalog::Row;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::{Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, InstanceState, Millis, Tags};

use super::{Lightsail, not_found};

pub(super) const KIND_DISK: &str = "ls_disk";
pub(super) const KIND_INSTANCE: &str = "ls_instance";
pub(super) const KIND_DISK_SNAPSHOT: &str = "ls_disk_snapshot";
pub(super) const KIND_INSTANCE_SNAPSHOT: &str = "ls_instance_snapshot";
pub(super) const KIND_OPERATION: &str = "ls_operation";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DiskDoc {
    pub name: String,
    pub uuid: String,
    pub volume_id: String,
    pub zone: String,
    pub created_at: Millis,
    #[serde(default)]
    pub tags: Tags,
    /// The disk snapshot it was created from, if any.
    #[serde(default)]
    pub from_snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InstanceDoc {
    pub name: String,
    pub uuid: String,
    pub instance_id: String,
    pub zone: String,
    pub created_at: Millis,
    pub blueprint_id: String,
    pub bundle_id: String,
    #[serde(default)]
    pub tags: Tags,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DiskSnapshotDoc {
    pub name: String,
    pub uuid: String,
    pub snapshot_id: String,
    pub created_at: Millis,
    pub size_gb: u32,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub from_disk_name: Option<String>,
    #[serde(default)]
    pub from_disk_arn: Option<String>,
    #[serde(default)]
    pub from_instance_name: Option<String>,
    #[serde(default)]
    pub from_instance_arn: Option<String>,
}

/// One disk of an instance snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SnapDisk {
    pub snapshot_id: String,
    pub volume_id: String,
    /// The Lightsail disk's name and ARN (None for the system disk).
    #[serde(default)]
    pub disk_name: Option<String>,
    #[serde(default)]
    pub disk_arn: Option<String>,
    pub path: String,
    pub size_gb: u32,
    #[serde(default)]
    pub iops: Option<u32>,
    pub is_system: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct InstanceSnapshotDoc {
    pub name: String,
    pub uuid: String,
    pub created_at: Millis,
    #[serde(default)]
    pub tags: Tags,
    pub from_instance_name: String,
    pub from_instance_arn: String,
    pub from_blueprint_id: String,
    pub from_bundle_id: String,
    pub zone: String,
    pub disks: Vec<SnapDisk>,
}

pub(super) fn prefix(ctx: &Ctx) -> String {
    format!("{}/{}/", ctx.account, ctx.region)
}

pub(super) fn row_id(ctx: &Ctx, name: &str) -> String {
    format!("{}{name}", prefix(ctx))
}

pub(super) fn arn(ctx: &Ctx, kind: &str, uuid: &str) -> String {
    format!("arn:aws:lightsail:{}:{}:{kind}/{uuid}", ctx.region, ctx.account)
}

pub(super) fn parse<T: DeserializeOwned>(r: &Row) -> Result<T> {
    serde_json::from_str(&r.doc)
        .map_err(|e| EngineError::Internal(format!("Lightsail record {}/{} is unreadable: {e}", r.kind, r.id)))
}

pub(super) fn get<T: DeserializeOwned>(st: &State, kind: &str, id: &str) -> Result<Option<T>> {
    match st.docs.get(kind).and_then(|m| m.get(id)) {
        Some(r) => parse(r).map(Some),
        None => Ok(None),
    }
}

/// The rows of one account and region, in id order, starting after `after` (a name) if given.
pub(super) fn rows<'a>(st: &'a State, kind: &str, ctx: &Ctx, after: Option<&str>) -> Vec<&'a Row> {
    let p = prefix(ctx);
    let Some(m) = st.docs.get(kind) else { return vec![] };
    let start = match after {
        Some(a) => format!("{p}{a}"),
        None => p.clone(),
    };
    m.range(start.clone()..)
        .skip_while(|(k, _)| after.is_some() && **k == start)
        .take_while(|(k, _)| k.starts_with(&p))
        .map(|(_, r)| r)
        .collect()
}

pub(super) fn put<T: Serialize>(kind: &'static str, id: String, ctx: &Ctx, doc: &T) -> Result<Rec> {
    Ok(Rec::Doc(
        kind,
        Row {
            kind: kind.to_string(),
            id,
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            doc: serde_json::to_string(doc)?,
        },
    ))
}

impl Lightsail<'_> {
    /// A disk whose volume still exists.
    pub(super) fn disk_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<DiskDoc>> {
        Ok(get::<DiskDoc>(st, KIND_DISK, &row_id(ctx, name))?.filter(|d| st.volumes.contains_key(&d.volume_id)))
    }

    pub(super) fn need_disk(&self, st: &State, ctx: &Ctx, name: &str) -> Result<DiskDoc> {
        self.disk_doc(st, ctx, name)?.ok_or_else(|| not_found(format!("The Disk does not exist: {name}")))
    }

    pub(super) fn instance_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<InstanceDoc>> {
        Ok(get::<InstanceDoc>(st, KIND_INSTANCE, &row_id(ctx, name))?
            .filter(|d| st.instances.get(&d.instance_id).is_some_and(|i| i.state != InstanceState::Terminated)))
    }

    pub(super) fn need_instance(&self, st: &State, ctx: &Ctx, name: &str) -> Result<InstanceDoc> {
        self.instance_doc(st, ctx, name)?.ok_or_else(|| not_found(format!("The Instance does not exist: {name}")))
    }

    pub(super) fn disk_snapshot_doc(&self, st: &State, ctx: &Ctx, name: &str) -> Result<Option<DiskSnapshotDoc>> {
        Ok(get::<DiskSnapshotDoc>(st, KIND_DISK_SNAPSHOT, &row_id(ctx, name))?
            .filter(|d| st.snapshots.contains_key(&d.snapshot_id)))
    }

    pub(super) fn need_disk_snapshot(&self, st: &State, ctx: &Ctx, name: &str) -> Result<DiskSnapshotDoc> {
        self.disk_snapshot_doc(st, ctx, name)?
            .ok_or_else(|| not_found(format!("The DiskSnapshot does not exist: {name}")))
    }

    pub(super) fn instance_snapshot_doc(
        &self,
        st: &State,
        ctx: &Ctx,
        name: &str,
    ) -> Result<Option<InstanceSnapshotDoc>> {
        Ok(get::<InstanceSnapshotDoc>(st, KIND_INSTANCE_SNAPSHOT, &row_id(ctx, name))?
            .filter(|d| d.disks.iter().any(|x| st.snapshots.contains_key(&x.snapshot_id))))
    }

    pub(super) fn need_instance_snapshot(&self, st: &State, ctx: &Ctx, name: &str) -> Result<InstanceSnapshotDoc> {
        self.instance_snapshot_doc(st, ctx, name)?
            .ok_or_else(|| not_found(format!("The InstanceSnapshot does not exist: {name}")))
    }

    /// Instance id → Lightsail instance name, for the account and region.
    pub(super) fn instance_names(&self, st: &State, ctx: &Ctx) -> HashMap<String, String> {
        rows(st, KIND_INSTANCE, ctx, None)
            .into_iter()
            .filter_map(|r| parse::<InstanceDoc>(r).ok())
            .map(|d| (d.instance_id, d.name))
            .collect()
    }

    pub(super) fn name_exists(&self, st: &State, ctx: &Ctx, name: &str) -> Result<bool> {
        Ok(self.disk_doc(st, ctx, name)?.is_some()
            || self.instance_doc(st, ctx, name)?.is_some()
            || self.disk_snapshot_doc(st, ctx, name)?.is_some()
            || self.instance_snapshot_doc(st, ctx, name)?.is_some())
    }
}
