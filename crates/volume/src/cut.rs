//! The cut protocol: preparing a cut outside the write gate, freezing the changed set under it
//! (epochs), copy-before-write capture of the frozen blocks while the snapshot is read, and the
//! write gate itself.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use roaring::RoaringBitmap;

use crate::{BLOCK_SIZE, DRAIN_TIMEOUT, Error, Result, Volume, WriteGateGuard, capture, fsync_dir};

/// The slow half of a snapshot cut, done before taking the write gate ([`Volume::prepare_cut`]).
#[derive(Debug)]
pub struct PreparedCut {
    pub epoch: u64,
    log: Option<File>,
    /// The volume's count of cuts handed out and not yet committed or abandoned (`None` while
    /// the cut is only staged). Background staging waits for it to be zero: it must never
    /// re-prepare (and truncate the capture log of) an epoch a caller is about to freeze.
    in_flight: Option<Arc<AtomicUsize>>,
}

impl Drop for PreparedCut {
    fn drop(&mut self) {
        if let Some(n) = self.in_flight.take() {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Volume {
    /// Copy the frozen bytes of blocks in `offset..offset+len` aside before they change.
    pub(crate) fn capture_before_write(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 || !self.capturing.load(Ordering::Acquire) {
            return Ok(());
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        let captures = self.captures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for c in captures {
            c.before_write(&self.file, first, last)?;
        }
        Ok(())
    }

    /// Starts copy-before-write for a frozen epoch's blocks (call under the gate, right after
    /// [`Volume::swap_epoch`]). The log is durable before this returns.
    pub fn begin_capture(&self, gate: &WriteGateGuard<'_>, epoch: u64, set: &RoaringBitmap) -> Result<()> {
        if !std::ptr::eq(gate.vol, self) {
            return Err(Error::WrongGate);
        }
        let c = capture::Capture::create(&self.dir, epoch, self.size(), set)?;
        self.register_capture(c);
        Ok(())
    }

    /// Cut, step 1 (outside the write gate): everything slow, made durable in advance. The epoch
    /// frozen by the cut is [`PreparedCut::epoch`]. Takes the cut [`Volume::stage_cut`] prepared
    /// when it is still valid, so the caller pays no file I/O and no fsync.
    pub fn prepare_cut(&self) -> Result<PreparedCut> {
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        let mut p = match self.take_staged(&mut staged) {
            Some(p) => p,
            None => self.prepare_cut_now()?,
        };
        // Counted under the staging lock, so staging never overlaps a handed-out cut.
        self.cuts_in_flight.fetch_add(1, Ordering::AcqRel);
        p.in_flight = Some(self.cuts_in_flight.clone());
        Ok(p)
    }

    /// Prepare the next cut ahead of time (call it off the request path, e.g. when a snapshot
    /// completes): the frozen link, the next bitmap and the capture log of the current epoch,
    /// durable. Safe across a crash: the restart logic treats a prepared-but-unused cut like a
    /// cut whose swap was lost (its bits stay in the changed set). Does nothing if one is staged.
    pub fn stage_cut(&self) -> Result<()> {
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        if staged.is_some() || self.deleted.load(Ordering::Acquire) || self.cuts_in_flight.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let nblocks = self.cbt.nblocks();
        let p = self.prepare_cut_now()?;
        *staged = Some((p, nblocks));
        Ok(())
    }

    /// The staged cut if it still matches the volume (same epoch, same bitmap size, frozen link
    /// still the active file); a stale one of the current epoch is removed.
    fn take_staged(&self, staged: &mut Option<(PreparedCut, u64)>) -> Option<PreparedCut> {
        let (p, nblocks) = staged.take()?;
        if p.epoch != self.cbt.epoch() {
            // The epoch moved by another path: its files belong to that path now.
            return None;
        }
        if nblocks == self.cbt.nblocks() && self.cbt.frozen_is_active(p.epoch) {
            return Some(p);
        }
        // Grown, or the active file was rewritten: the link would miss bits. Start over.
        let _ = self.abandon_cut(p);
        None
    }

    fn prepare_cut_now(&self) -> Result<PreparedCut> {
        let t0 = std::time::Instant::now();
        let epoch = self.cbt.prepare_swap()?;
        let t1 = std::time::Instant::now();
        // One directory fsync makes the frozen link, the next bitmap and the capture log durable.
        let r = capture::Capture::prepare(&self.dir, epoch).and_then(|log| {
            let t2 = std::time::Instant::now();
            let r = fsync_dir(&self.dir).map(|()| log);
            tracing::debug!(
                volume = self.id,
                bitmap_us = (t1 - t0).as_micros() as u64,
                log_us = (t2 - t1).as_micros() as u64,
                dir_fsync_us = t2.elapsed().as_micros() as u64,
                "cut prepared"
            );
            r
        });
        match r {
            Ok(log) => Ok(PreparedCut { epoch, log: Some(log), in_flight: None }),
            Err(e) => {
                let _ = std::fs::remove_file(capture::log_path(&self.dir, epoch));
                let _ = self.cbt.abandon_prepared(epoch);
                Err(e.into())
            }
        }
    }

    /// Cut, step 2 (under this volume's gate, no I/O but one rename): freeze the epoch's changed
    /// blocks and start copy-before-write on them. Returns `(epoch, frozen blocks)`.
    pub fn commit_cut(&self, gate: &WriteGateGuard<'_>, mut prepared: PreparedCut) -> Result<(u64, RoaringBitmap)> {
        if !std::ptr::eq(gate.vol, self) {
            return Err(Error::WrongGate);
        }
        let (epoch, set) = self.cbt.commit_swap(prepared.epoch)?;
        let log = prepared.log.take().ok_or_else(|| Error::Io(io::Error::other("prepared cut already used")))?;
        self.register_capture(capture::Capture::from_prepared(&self.dir, log, epoch, self.size(), &set));
        Ok((epoch, set))
    }

    /// Cut, step 3 (optional, after the gate opens): make the switch durable now. Without it, a
    /// rename lost in a crash is recovered at open (see `Cbt::open`).
    pub fn finish_cut(&self) -> Result<()> {
        Ok(self.cbt.sync()?)
    }

    /// A prepared cut that was not committed because its gates did not drain: kept as the staged
    /// cut when it is still current (the next cut takes it, and nothing touches the disk now, which
    /// may be the very thing that hangs); otherwise abandoned.
    pub fn return_cut(&self, mut prepared: PreparedCut) -> Result<()> {
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        if staged.is_none() && prepared.epoch == self.cbt.epoch() && !self.deleted.load(Ordering::Acquire) {
            if let Some(n) = prepared.in_flight.take() {
                n.fetch_sub(1, Ordering::AcqRel);
            }
            *staged = Some((prepared, self.cbt.nblocks()));
            return Ok(());
        }
        drop(staged);
        self.abandon_cut(prepared)
    }

    /// A prepared cut that will not be committed.
    pub fn abandon_cut(&self, prepared: PreparedCut) -> Result<()> {
        let _ = std::fs::remove_file(capture::log_path(&self.dir, prepared.epoch));
        Ok(self.cbt.abandon_prepared(prepared.epoch)?)
    }

    /// Re-registers a capture after a restart, from its log (call before the volume is served).
    pub fn resume_capture(&self, epoch: u64, snapshot_size: u64, set: &RoaringBitmap) -> Result<()> {
        if self.captures.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|c| c.epoch == epoch) {
            return Ok(());
        }
        let c = capture::Capture::resume(&self.dir, epoch, snapshot_size, set)?;
        self.register_capture(c);
        Ok(())
    }

    fn register_capture(&self, c: capture::Capture) {
        let mut list = self.captures.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(Arc::new(c));
        self.capturing.store(true, Ordering::Release);
    }

    /// Reads block `block` as it was when `epoch` was frozen. `buf` is `BLOCK_SIZE` long (the tail
    /// past the snapshot's size reads as zeros).
    pub fn read_frozen_block(&self, epoch: u64, block: u32, buf: &mut [u8]) -> Result<()> {
        if !self.read_frozen_block_sparse(epoch, block, buf)? {
            buf.fill(0);
        }
        Ok(())
    }

    /// Like [`Volume::read_frozen_block`], but returns `false` (leaving `buf` untouched) when the
    /// block was a hole at the cut: all zeros, nothing to read.
    pub fn read_frozen_block_sparse(&self, epoch: u64, block: u32, buf: &mut [u8]) -> Result<bool> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::Deleted(self.id.clone()));
        }
        let c = self
            .captures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|c| c.epoch == epoch)
            .cloned()
            .ok_or_else(|| Error::Io(io::Error::other(format!("no capture for epoch {epoch} of {}", self.id))))?;
        let start = block as u64 * BLOCK_SIZE;
        let len = c.size.saturating_sub(start).min(buf.len() as u64) as usize;
        // A block still in the source snapshot is fetched first (it can be frozen when the volume's
        // first snapshot must re-read restored blocks, e.g. after a change of key).
        self.hydrate_range(start, len as u64, false)?;
        if !c.read_block(&self.file, block, &mut buf[..len])? {
            return Ok(false);
        }
        buf[len..].fill(0);
        Ok(true)
    }

    /// Ends a capture (its snapshot is durable or abandoned) and removes its log.
    pub fn end_capture(&self, epoch: u64) -> Result<()> {
        let mut list = self.captures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = list.iter().position(|c| c.epoch == epoch) {
            let c = list.remove(i);
            c.remove_file()?;
        } else {
            // Not registered (e.g. never resumed): still drop a leftover log.
            let _ = std::fs::remove_file(capture::log_path(&self.dir, epoch));
        }
        self.capturing.store(!list.is_empty(), Ordering::Release);
        Ok(())
    }

    /// Takes the write gates of several volumes at one instant (in the given order): new writes to
    /// every one of them wait from the moment its gate is begun; then all in-flight writes drain
    /// together. The pause writers see is the slowest drain, not the sum. Gives up at `deadline`
    /// (another cut holding a gate, or a write that does not finish: a hung disk) with
    /// [`Error::Busy`], every gate open again and nothing changed.
    pub fn gate_all<'a>(vols: &[&'a Volume], deadline: Instant) -> Result<Vec<WriteGateGuard<'a>>> {
        let mut guards = Vec::with_capacity(vols.len());
        for v in vols {
            if !v.gate.begin_close_until(Some(deadline)) {
                return Err(Error::Busy(v.id.clone()));
            }
            guards.push(WriteGateGuard { vol: v });
        }
        for v in vols {
            if !v.gate.wait_drained_until(Some(deadline)) {
                // Dropping the guards opens every gate: the cut is abandoned.
                return Err(Error::Busy(v.id.clone()));
            }
        }
        Ok(guards)
    }

    /// Takes the write gate: new writes wait, in-flight writes drain (for at most
    /// [`DRAIN_TIMEOUT`], then [`Error::Busy`]). Cheap when uncontended. Blocks the calling thread
    /// while draining.
    pub fn gate(&self) -> Result<WriteGateGuard<'_>> {
        let mut g = Self::gate_all(&[self], Instant::now() + DRAIN_TIMEOUT)?;
        g.pop().ok_or_else(|| Error::Busy(self.id.clone()))
    }

    /// Current change-tracking epoch.
    pub fn epoch(&self) -> u64 {
        self.cbt.epoch()
    }

    /// Blocks changed in the current epoch so far.
    pub fn changed_blocks(&self) -> RoaringBitmap {
        self.cbt.current()
    }

    /// True when the bitmap was missing or damaged at open and blocks were
    /// marked changed conservatively (cleared by the next epoch swap).
    pub fn bitmap_was_damaged(&self) -> bool {
        self.cbt.damaged_on_open()
    }

    /// Ends the current epoch: returns `(old_epoch, blocks changed during it)`
    /// and durably starts epoch `old_epoch + 1` with an empty set. The old set
    /// stays on disk as a frozen bitmap until [`Volume::release_epoch`] or
    /// [`Volume::restore_epoch`]. Requires this volume's gate.
    pub fn swap_epoch(&self, gate: &WriteGateGuard<'_>) -> Result<(u64, RoaringBitmap)> {
        if !std::ptr::eq(gate.vol, self) {
            return Err(Error::WrongGate);
        }
        Ok(self.cbt.swap()?)
    }

    /// Frozen epochs still on disk with their sets (for recovery after a restart). A staged cut's
    /// link (the current epoch) is not frozen yet and is left out.
    pub fn frozen_epochs(&self) -> Result<Vec<(u64, RoaringBitmap)>> {
        let current = self.cbt.epoch();
        Ok(self.cbt.frozen()?.into_iter().filter(|(e, _)| *e < current).collect())
    }

    /// Forgets a frozen epoch (its snapshot is durable).
    pub fn release_epoch(&self, epoch: u64) -> Result<()> {
        Ok(self.cbt.release(epoch)?)
    }

    /// Merges a frozen epoch back into the current one (its snapshot was
    /// abandoned) and forgets it.
    pub fn restore_epoch(&self, epoch: u64) -> Result<()> {
        Ok(self.cbt.restore(epoch)?)
    }
}
