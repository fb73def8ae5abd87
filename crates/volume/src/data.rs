//! A volume's data: reads, writes (fast inline path and the tracked one), zeroes, trims, flushes,
//! block status and growth.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use rustix::fs::{FallocateFlags, SeekFrom};

use crate::gate::WriterGuard;
use crate::{BLOCK_SIZE, Error, Result, Volume, cbt};

/// One run of a [`Volume::block_status`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in `data.img`.
    pub hole: bool,
    /// Reads as zeros.
    pub zero: bool,
}

impl Volume {
    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.hydrate_range(offset, buf.len() as u64, false)?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                // Past the file end (cannot normally happen): zeros.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Non-blocking read: reads only if the whole range is in the page cache
    /// (`RWF_NOWAIT`). `Ok(false)` means "not cached: use [`Volume::read_at`]
    /// from a blocking thread".
    pub fn try_read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(true);
        }
        if let Some(h) = self.hydration()
            && h.any_pending(offset / BLOCK_SIZE, (offset + buf.len() as u64 - 1) / BLOCK_SIZE)
        {
            return Ok(false);
        }
        let len = buf.len();
        match rustix::io::preadv2(
            &self.file,
            &mut [io::IoSliceMut::new(buf)],
            offset,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => Ok(n == len),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    /// Write fast path for callers that must not wait on the write gate or
    /// on a bitmap commit (async executors): writes only when no gate is held
    /// and the blocks' bits are already durable. `Ok(false)` means "use
    /// [`Volume::write_at`] from a blocking thread". Like any buffered write it
    /// can still block briefly in the page cache.
    pub fn try_write_fast(&self, offset: u64, buf: &[u8]) -> Result<bool> {
        let Some(_w) = WriterGuard::try_new(&self.gate) else {
            return Ok(false);
        };
        // While a snapshot captures, a block's bit can be durable before its frozen bytes are copied
        // (another writer is between `track` and the copy): only the slow path waits for the copy.
        if self.capturing.load(Ordering::Acquire) || self.hydrating.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.check(offset, buf.len() as u64)?;
        if !buf.is_empty() {
            let first = offset / BLOCK_SIZE;
            let last = (offset + buf.len() as u64 - 1) / BLOCK_SIZE;
            if !self.cbt.is_durable(first, last) {
                return Ok(false);
            }
        }
        self.file.write_all_at(buf, offset)?;
        Ok(true)
    }

    /// Writes `buf` at `offset`; with `fua` it is durable on return.
    pub fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> Result<()> {
        let _w = WriterGuard::new(&self.gate);
        self.check(offset, buf.len() as u64)?;
        self.hydrate_range(offset, buf.len() as u64, true)?;
        self.track(offset, buf.len() as u64)?;
        self.capture_before_write(offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// At a clean stop: abandon a staged cut (its files would read back at the next open as an
    /// interrupted cut) and flush. Call once nothing else uses the volume.
    pub fn close_clean(&self) -> Result<()> {
        let staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner).take();
        // A staged cut of an older epoch belongs to the cut that used that epoch (see take_staged).
        if let Some((p, _)) = staged
            && p.epoch == self.cbt.epoch()
        {
            self.abandon_cut(p)?;
        }
        self.flush()
    }

    /// Makes every completed write durable (and, while hydrating, which blocks are local).
    pub fn flush(&self) -> Result<()> {
        match self.hydration() {
            Some(h) => h.persist(Some(&self.file))?,
            None => self.file.sync_data()?,
        }
        self.file.sync_data()?;
        Ok(())
    }

    /// Discards a range: it reads as zeros afterwards and becomes a hole.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, true)
    }

    /// Zeroes a range, punching a hole when allowed.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_punch_hole: bool) -> Result<()> {
        self.write_zeroes_opts(offset, len, may_punch_hole, false)
    }

    /// Like [`Volume::write_zeroes`]; with `fast_only` it fails with
    /// [`Error::NotFast`] instead of falling back to writing zero bytes.
    pub fn write_zeroes_opts(&self, offset: u64, len: u64, may_punch_hole: bool, fast_only: bool) -> Result<()> {
        let _w = WriterGuard::new(&self.gate);
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.hydrate_range(offset, len, true)?;
        self.track(offset, len)?;
        self.capture_before_write(offset, len)?;
        let flags = if may_punch_hole {
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
        } else {
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
        };
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) if fast_only => Err(Error::NotFast),
            Err(rustix::io::Errno::OPNOTSUPP) => self.write_zero_bytes(offset, len),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let chunk = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(chunk.len() as u64) as usize;
            self.file.write_all_at(&chunk[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Allocation map of `offset..offset+len` (clipped to the volume), from
    /// the filesystem's SEEK_DATA/SEEK_HOLE: holes read as zeros, data is
    /// reported as data (not scanned for zeros).
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let Some(h) = self.hydration() else { return self.block_status_file(offset, len) };
        // Blocks still in the snapshot store hold data even though the local file has a hole there.
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK_SIZE;
            let pending = u32::try_from(b).is_ok_and(|b| h.is_pending(b));
            let mut stop = ((b + 1) * BLOCK_SIZE).min(end);
            while stop < end && u32::try_from(stop / BLOCK_SIZE).is_ok_and(|n| h.is_pending(n)) == pending {
                stop = (stop + BLOCK_SIZE).min(end);
            }
            let part = if pending {
                vec![Extent { len: stop - pos, hole: false, zero: false }]
            } else {
                self.block_status_file(pos, stop - pos)?
            };
            for e in part {
                match out.last_mut() {
                    Some(last) if last.hole == e.hole && last.zero == e.zero => last.len += e.len,
                    _ => out.push(e),
                }
            }
            pos = stop;
        }
        Ok(out)
    }

    fn block_status_file(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::Deleted(self.id.clone()));
        }
        let end = offset.saturating_add(len).min(self.size());
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |len: u64, hole: bool| {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += len,
                _ => out.push(Extent { len, hole, zero: hole }),
            }
        };
        let mut pos = offset;
        while pos < end {
            match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(data) if data > pos => {
                    let stop = data.min(end);
                    push(stop - pos, true);
                    pos = stop;
                }
                Ok(_) => {
                    let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(pos)) {
                        Ok(h) => h,
                        Err(_) => end,
                    };
                    let stop = hole.clamp(pos + 1, end);
                    push(stop - pos, false);
                    pos = stop;
                }
                // No data at or after pos.
                Err(rustix::io::Errno::NXIO) => {
                    push(end - pos, true);
                    pos = end;
                }
                // Filesystem without SEEK_DATA: everything is data.
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                    push(end - pos, false);
                    pos = end;
                }
                Err(e) => return Err(Error::Io(e.into())),
            }
        }
        Ok(out)
    }

    /// Marks every block changed, durably (returns once the change map is on disk): the next cut's
    /// frozen set is the whole volume. For when the snapshot the change map is relative to goes away.
    pub fn mark_all_changed(&self) -> Result<()> {
        let n = self.cbt.nblocks();
        if n > 0 {
            self.cbt.mark(0, n - 1)?;
        }
        Ok(())
    }

    /// Grows the volume (under the gate). New blocks read as zeros and start
    /// unchanged.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        let from = self.size();
        if new_size < from {
            return Err(Error::Shrink { from, to: new_size });
        }
        if !new_size.is_multiple_of(512) || new_size > (1u64 << 32) * BLOCK_SIZE {
            return Err(Error::InvalidSize(new_size));
        }
        if new_size == from {
            return Ok(());
        }
        // A staged cut was made for the old bitmap (and grow rewrites the active file); the lock
        // also keeps staging from running during the grow.
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, _)) = staged.take()
            && p.epoch == self.cbt.epoch()
        {
            let _ = self.abandon_cut(p);
        }
        let _g = self.gate()?;
        // Bitmap first: a crash before the data grows leaves a size mismatch,
        // which reads as all-changed.
        self.cbt.grow(cbt::nblocks_for(new_size))?;
        self.file.set_len(new_size)?;
        self.file.sync_all()?;
        self.size.store(new_size, Ordering::Release);
        tracing::debug!(volume = %self.id, from, to = new_size, "volume resized");
        Ok(())
    }
}
