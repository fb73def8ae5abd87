//! The point-in-time cut of one or more volumes.

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Snapshot, VolumeState};

use super::internal;

impl Engine {
    /// Take every volume's write gate (in the given order), freeze each volume's changed blocks and
    /// start capturing them, release the gates, commit all pending rows in one catalog transaction,
    /// start the uploads. No write on any of the volumes is acknowledged during the cut.
    ///
    /// `plan` validates the request against the current state and builds the snapshot rows; it
    /// runs under the engine lock, once to learn the volumes and once more after they are claimed.
    /// Nothing slow happens under the engine lock: opening files, preparing the cut, draining the
    /// gates (bounded by [`blocksnap_volume::DRAIN_TIMEOUT`]) and undoing a failed cut all run
    /// without it, so a stuck volume stalls only its own callers.
    pub(crate) fn cut_and_commit(&self, plan: impl Fn(&State) -> Result<Vec<Snapshot>>) -> Result<Vec<Snapshot>> {
        if self.storage.is_none() {
            let mut st = self.lock();
            let snaps = plan(&st)?;
            let recs = snaps.iter().cloned().map(Rec::Snapshot).collect();
            self.commit(&mut st, recs)?;
            return Ok(snaps);
        }
        let volume_ids = |snaps: &[Snapshot]| snaps.iter().map(|s| s.volume_id.clone()).collect::<Vec<_>>();
        let ids = volume_ids(&plan(&self.lock())?);
        self.check_volumes_here(&ids)?;
        let deadline = std::time::Instant::now() + blocksnap_volume::DRAIN_TIMEOUT;
        let _claim = self.jobs.claims.claim(&ids, deadline).ok_or_else(|| {
            EngineError::client(
                "SnapshotCreationPerVolumeRateExceeded",
                format!("Another snapshot of {} is still being taken; wait a few seconds and retry.", ids.join(", ")),
            )
        })?;
        let mut snaps = plan(&self.lock())?;
        if volume_ids(&snaps) != ids {
            return Err(EngineError::client(
                "IncorrectState",
                "The set of volumes changed while the snapshot was being started; retry.",
            ));
        }
        let vols =
            snaps.iter().map(|s| self.live_volume(&s.volume_id, s.volume_size_gib)).collect::<Result<Vec<_>>>()?;
        // Everything slow (files, fsyncs) happens before the gates, so the pause is a few renames.
        let prepare_started = std::time::Instant::now();
        let mut prepared = Vec::with_capacity(vols.len());
        for v in &vols {
            match v.prepare_cut() {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    for (v, p) in vols.iter().zip(prepared) {
                        let _ = v.abandon_cut(p);
                    }
                    return Err(internal("preparing the cut", e));
                }
            }
        }
        let started = std::time::Instant::now();
        let prepare = started - prepare_started;
        let refs: Vec<&blocksnap_volume::Volume> = vols.iter().map(|v| v.as_ref()).collect();
        let gates = match blocksnap_volume::Volume::gate_all(&refs, deadline) {
            Ok(g) => g,
            Err(e) => {
                // Kept for the next cut: no file I/O here, the disk may be what hangs.
                for (v, p) in vols.iter().zip(prepared) {
                    let _ = v.return_cut(p);
                }
                tracing::warn!(error = %e, "snapshot cut abandoned: writes did not drain in time");
                return Err(EngineError::client(
                    "ServiceUnavailable",
                    format!(
                        "The snapshot was not created: {e} (within {} s; a client that stopped reading its \
                         replies or a slow disk). Retry later.",
                        blocksnap_volume::DRAIN_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        let mut frozen: Vec<u64> = Vec::new();
        let undo = |frozen: &[u64]| {
            for (v, e) in vols.iter().zip(frozen) {
                let _ = v.end_capture(*e);
                if let Err(err) = v.restore_epoch(*e) {
                    tracing::error!(volume = v.id(), epoch = e, error = %err, "could not restore a frozen epoch");
                }
            }
        };
        let mut prepared = prepared.into_iter();
        for (i, v) in vols.iter().enumerate() {
            let Some(p) = prepared.next() else { break };
            match v.commit_cut(&gates[i], p) {
                Ok((epoch, set)) => {
                    frozen.push(epoch);
                    snaps[i].epoch = Some(epoch);
                    snaps[i].blocks_total = set.len();
                }
                Err(e) => {
                    undo(&frozen);
                    for (v, p) in vols.iter().skip(i + 1).zip(prepared) {
                        let _ = v.abandon_cut(p);
                    }
                    return Err(internal("freezing changed blocks", e));
                }
            }
        }
        // Every volume is frozen at the same instant: writes may go on. The rows are committed after
        // the gates open and only if the volumes are still what the plan saw; if anything fails the
        // frozen sets go back into the volumes and no snapshot exists.
        drop(gates);
        let pause = started.elapsed();
        // No directory fsync for the renames: a rename lost in a crash is recovered when the volume
        // is opened (the frozen link is already durable), so the cut costs one fsync per volume.
        let recs = snaps.iter().cloned().map(Rec::Snapshot).collect();
        let commit_started = std::time::Instant::now();
        let committed = {
            let mut st = self.lock();
            match snaps.iter().find(|s| {
                !st.volumes.get(&s.volume_id).is_some_and(|v| {
                    v.size_gib == s.volume_size_gib && matches!(v.state, VolumeState::Available | VolumeState::InUse)
                })
            }) {
                Some(s) => Err(EngineError::client(
                    "IncorrectState",
                    format!("Volume '{}' was changed or deleted while it was being snapshotted.", s.volume_id),
                )),
                None => self.commit(&mut st, recs),
            }
        };
        if let Err(e) = committed {
            undo(&frozen);
            return Err(e);
        }
        metrics::histogram!("blocksnap_snapshot_cut_seconds").record(pause.as_secs_f64());
        tracing::info!(
            volumes = vols.len(),
            pause_us = pause.as_micros() as u64,
            prepare_us = prepare.as_micros() as u64,
            commit_us = commit_started.elapsed().as_micros() as u64,
            "snapshot cut"
        );
        for s in &snaps {
            self.spawn_upload(s.id.clone());
        }
        Ok(snaps)
    }
}
