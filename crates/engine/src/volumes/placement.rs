//! Where a volume's bytes live, with several nodes (ARCHITECTURE.md, "Several nodes").
//!
//! v1 places every new volume on the node that leads when it is created (the one running this
//! engine). A volume placed on another node is *unavailable* here, as an EBS volume is when its
//! server is impaired: DescribeVolumeStatus says `impaired` (`io-enabled` `failed`), attaching,
//! snapshotting, resizing and its NBD export are refused with a message naming its node, and its
//! pending uploads and restores wait for that node to lead again (their state is on its disk). Its
//! snapshots stay restorable from any node (the stores are shared). Deleting it is allowed: the
//! row goes, and its node removes the orphan bytes at its next start. Without `--node-id` every
//! volume is here.
//!
//! A node started with `--replace-node` on a new data dir (the old one is gone) marks the volumes
//! placed on it whose bytes are not in that dir `lost`, in one commit before it serves
//! ([`Engine::mark_lost_volumes`]). A lost volume is unavailable on every node for good, as an EBS
//! volume whose server was lost: the same refusals as above, naming why, deletable, its snapshots
//! restorable. Never served again, so no empty file is ever made for it (zeros posing as its data).

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, Result};
use crate::model::{Snapshot, SnapshotState, Volume};

impl Engine {
    /// Whether the volume's bytes are on this node.
    pub(crate) fn volume_here(&self, v: &Volume) -> bool {
        match &self.config.node_id {
            _ if v.lost => false,
            None => true,
            Some(me) => v.node.as_deref() == Some(me.as_str()),
        }
    }

    /// Refuse a use of the volume's bytes when they are on another node.
    pub(crate) fn check_volume_here(&self, v: &Volume) -> Result<()> {
        if self.volume_here(v) {
            return Ok(());
        }
        if v.lost {
            return Err(EngineError::client(
                "IncorrectState",
                format!(
                    "The volume '{}' is lost: its bytes were in the data dir of node {}, which was replaced \
                     (--replace-node) after that data dir was lost. It cannot be attached, exported or \
                     snapshotted; delete it, and restore its snapshots as new volumes.",
                    v.id,
                    v.node.as_deref().unwrap_or("?")
                ),
            ));
        }
        let me = self.config.node_id.as_deref().unwrap_or("?");
        let place = match &v.node {
            Some(n) => format!("lives on node {n}"),
            None => "belongs to no node of the cluster (it was made before clustering)".to_string(),
        };
        Err(EngineError::client(
            "IncorrectState",
            format!(
                "The volume '{}' {place}, which does not serve it now: volumes are served by the node \
                 that leads the cluster (node {me}), so it is unavailable until its node leads again. \
                 Its snapshots can be restored as new volumes from any node.",
                v.id
            ),
        ))
    }

    /// Refuse when any of these volumes is not here (a missing id is left to the caller).
    pub(crate) fn check_volumes_here(&self, ids: &[String]) -> Result<()> {
        let st = self.lock();
        ids.iter().filter_map(|id| st.volumes.get(id)).try_for_each(|v| self.check_volume_here(v))
    }

    /// A node whose data dir was a single node's before clustering takes that node's volumes (rows
    /// without a node): their bytes are in this data dir. Durable before it returns.
    pub fn adopt_unplaced_volumes(&self) -> Result<usize> {
        let Some(me) = self.config.node_id.clone() else { return Ok(0) };
        let mut st = self.lock();
        let recs: Vec<Rec> = st
            .volumes
            .values()
            .filter(|v| v.node.is_none())
            .map(|v| Rec::Volume(Volume { node: Some(me.clone()), ..v.clone() }))
            .collect();
        let n = recs.len();
        if n > 0 {
            self.commit(&mut st, recs)?;
        }
        drop(st);
        self.sync_pending()?;
        Ok(n)
    }

    /// `--replace-node`: this node's previous data dir is gone, so the volumes placed on it whose
    /// bytes are not in this data dir are lost. Marks them in one commit, durable before it
    /// returns (call before the node serves). Answers their ids. Their snapshots still pending
    /// end in `error` in the same commit: what their uploads needed (the frozen epoch, the
    /// capture of the overwritten blocks) was in the lost dir, and no node could ever finish them.
    pub fn mark_lost_volumes(&self) -> Result<Vec<String>> {
        let (Some(me), Some(s)) = (self.config.node_id.clone(), &self.storage) else { return Ok(Vec::new()) };
        let here: std::collections::HashSet<String> =
            s.volumes.list().map_err(|e| EngineError::Internal(format!("listing volumes: {e}")))?.into_iter().collect();
        let mut st = self.lock();
        let recs: Vec<Rec> = st
            .volumes
            .values()
            .filter(|v| !v.lost && v.node.as_deref() == Some(me.as_str()) && !here.contains(&v.id))
            .map(|v| Rec::Volume(Volume { lost: true, ..v.clone() }))
            .collect();
        let ids: Vec<String> = recs
            .iter()
            .filter_map(|r| match r {
                Rec::Volume(v) => Some(v.id.clone()),
                _ => None,
            })
            .collect();
        let mut recs = recs;
        recs.extend(
            st.snapshots
                .values()
                .filter(|s| {
                    s.state == SnapshotState::Pending
                        && s.source_snapshot.is_none()
                        && s.direct.is_none()
                        && ids.contains(&s.volume_id)
                })
                .map(|s| {
                    Rec::Snapshot(Snapshot {
                        state: SnapshotState::Error,
                        state_message: Some(format!(
                            "The upload could not finish: volume {} was lost with node {me}'s data dir.",
                            s.volume_id
                        )),
                        epoch: None,
                        ..s.clone()
                    })
                }),
        );
        if !recs.is_empty() {
            self.commit(&mut st, recs)?;
        }
        drop(st);
        self.sync_pending()?;
        Ok(ids)
    }
}
