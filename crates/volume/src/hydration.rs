//! A volume's side of lazy hydration: blocks of a restored volume come from its snapshot on first
//! touch (single-flight, `hydrate.rs`) and from background hydrators.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use roaring::RoaringBitmap;

use crate::{BLOCK_SIZE, BlockSource, Result, Volume, hydrate};

impl Volume {
    pub(crate) fn hydration(&self) -> Option<Arc<hydrate::Hydration>> {
        if !self.hydrating.load(Ordering::Acquire) {
            return None;
        }
        self.hydration.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Writes a fetched block straight to the data file (not a guest write: no change bit).
    fn write_fetched(&self, block: u32, data: &[u8]) -> io::Result<()> {
        let start = block as u64 * BLOCK_SIZE;
        let len = (self.size().saturating_sub(start)).min(data.len() as u64) as usize;
        self.file.write_all_at(&data[..len], start)
    }

    /// Before a read or a write of `offset..offset+len`: make pending blocks local. A write that
    /// covers a whole block only claims it (its old bytes are not needed).
    pub(crate) fn hydrate_range(&self, offset: u64, len: u64, write: bool) -> Result<()> {
        let Some(h) = self.hydration() else { return Ok(()) };
        if len == 0 {
            return Ok(());
        }
        let first = offset / BLOCK_SIZE;
        let last = (offset + len - 1) / BLOCK_SIZE;
        for b in first..=last {
            let Ok(b32) = u32::try_from(b) else { break };
            if !h.is_pending(b32) {
                continue;
            }
            let start = b * BLOCK_SIZE;
            let end = (start + BLOCK_SIZE).min(self.size());
            if write && offset <= start && offset + len >= end {
                h.claim(b32);
            } else {
                h.ensure(b32, |data| self.write_fetched(b32, data))?;
            }
        }
        Ok(())
    }

    /// Starts lazy hydration of `pending` blocks from `source` (a new volume restored from a
    /// snapshot). The pending set is durable before this returns.
    pub fn start_hydration(&self, source: Box<dyn BlockSource>, pending: RoaringBitmap) -> Result<()> {
        let h = hydrate::Hydration::start(&self.dir, source, pending)?;
        *self.hydration.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(h));
        self.hydrating.store(true, Ordering::Release);
        Ok(())
    }

    /// After a restart: resumes hydration when a pending map is on disk. Returns whether it did.
    pub fn resume_hydration(&self, source: Box<dyn BlockSource>) -> Result<bool> {
        match hydrate::Hydration::resume(&self.dir, source)? {
            Some(h) => {
                *self.hydration.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(h));
                self.hydrating.store(true, Ordering::Release);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Marks blocks changed in the current epoch (durably), e.g. restored blocks that the next
    /// snapshot must read again because it cannot reuse the source's block ids.
    pub fn mark_changed(&self, blocks: &RoaringBitmap) -> Result<()> {
        for b in blocks.iter() {
            self.track(b as u64 * BLOCK_SIZE, 1)?;
        }
        Ok(())
    }

    /// Blocks still to fetch (0 when not hydrating).
    pub fn hydration_remaining(&self) -> u64 {
        self.hydration().map_or(0, |h| h.remaining())
    }

    /// Background hydration step: fetch one pending block. Returns `false` when hydration is over
    /// (the map is then removed and the volume is fully local). Several threads may run it at once:
    /// each takes a different block.
    pub fn hydrate_next(&self) -> Result<bool> {
        let Some(h) = self.hydration() else { return Ok(false) };
        match h.take_next() {
            Some(b) => {
                h.fetch_taken(b, |data| self.write_fetched(b, data))?;
                Ok(true)
            }
            None if h.remaining() > 0 => {
                // Every remaining block is being fetched by a reader right now.
                std::thread::sleep(std::time::Duration::from_millis(1));
                Ok(true)
            }
            None => {
                h.persist(Some(&self.file))?;
                self.file.sync_data()?;
                h.remove_map()?;
                h.done.store(true, Ordering::Release);
                self.hydrating.store(false, Ordering::Release);
                *self.hydration.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(false)
            }
        }
    }

    /// Makes a range local now (NBD_CMD_CACHE): fetches its pending blocks
    /// when the volume is hydrating, otherwise does nothing.
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        self.hydrate_range(offset, len, false)
    }
}
