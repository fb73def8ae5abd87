//! The live volume store: one directory per volume holding a sparse raw data
//! file and a crash-safe change-tracking bitmap.
//!
//! # Layout
//!
//! ```text
//! <root>/<vol-id>/data.img                 sparse raw file, length = volume size
//! <root>/<vol-id>/changes.bitmap           active change bitmap (current epoch)
//! <root>/<vol-id>/changes.<epoch>.frozen   bitmap of a swapped-out epoch, kept
//!                                          until the engine releases or restores it
//! <root>/.tmp-<vol-id>, .del-<vol-id>      in-progress create / delete (removed on open)
//! ```
//!
//! # Change bitmap format, version 1
//!
//! All integers little-endian; CRCs are CRC-32C. The file is a sequence of
//! 4096-byte pages.
//!
//! * Page 0, header: `magic "BSNPCBT\0"` (8) · `version u32 = 1` ·
//!   `page_size u32 = 4096` · `block_size u32 = 524288` · `flags u32 = 0` ·
//!   `epoch u64` · `nblocks u64` · `crc u32` over bytes 0..40. Rest zero.
//! * Page `1 + i`: 511 `u64` words of bits (block `b` is bit `b % 64` of word
//!   `b / 64`; page `i` holds words `511 i .. 511 (i + 1)`), 4 reserved zero
//!   bytes, then `crc u32` over `epoch u64 · i u64 · bytes 0..4092` of the page.
//!   Binding the epoch and the page index into the CRC makes a stale or
//!   misplaced page fail its check.
//!
//! A missing file, a bad header or a size mismatch reads as every block
//! changed; a page that fails its check reads as all of its blocks changed.
//! Over-reporting costs a re-read that dedup makes cheap; under-reporting would
//! lose data and never happens.
//!
//! # The durability rule
//!
//! A block's bit is on disk (page written and `fdatasync`ed) before any write,
//! trim or zeroing of that block is issued to `data.img`. Concurrent writers
//! that dirty new blocks share one bitmap `fdatasync` (group commit); writes to
//! blocks whose bit is already durable only pay two atomic loads. A write that
//! continues the previous one (a sequential stream) marks ahead, 16 blocks
//! doubling per commit up to 128, so a stream pays a few commits rather than
//! one per block; that over-reports at most 64 MiB per stream, which is safe.
//!
//! # Epochs
//!
//! [`Volume::swap_epoch`] (under the [`WriteGateGuard`]) hard-links the active
//! bitmap to `changes.<old>.frozen`, then atomically replaces the active file
//! with an empty one for epoch `old + 1`. The frozen file stays until the
//! engine calls [`Volume::release_epoch`] (snapshot durable) or
//! [`Volume::restore_epoch`] (snapshot abandoned: its bits go back into the
//! active set), so a crash between the swap and the snapshot commit never
//! loses changed blocks.

// The only unsafe code is in the loom model check of the capture stripes (cfg(loom) tests),
// which allows it there with a SAFETY comment on each block.
#![deny(unsafe_code)]

mod capture;
mod cbt;
mod cbt_commit;
mod claims;
mod cut;
mod data;
mod gate;
mod hydrate;
mod hydration;
mod store;
mod sync;

pub use claims::{Claim, Claims};
pub use cut::PreparedCut;
pub use data::Extent;
pub use hydrate::BlockSource;
pub use store::{OpenHook, StoreOptions, VolumeStore};

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cbt::Cbt;
use gate::Gate;

/// Change-tracking granularity: the EBS direct-API block size.
pub const BLOCK_SIZE: u64 = 524_288;
/// Version of the change bitmap file format.
pub const BITMAP_FORMAT_VERSION: u32 = cbt::FORMAT_VERSION;

const DATA_NAME: &str = "data.img";
/// How long a gate holder (a cut, a resize, a delete) waits for in-flight writes to finish before
/// giving up: an NBD client that stopped reading or a hung disk must not stall the caller for ever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra blocks a sequential writer marks changed at once (ramping up).
const SEQ_MARK_AHEAD_MIN: u64 = 15;
const SEQ_MARK_AHEAD_MAX: u64 = 128;

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume {0} not found")]
    NotFound(String),
    #[error("volume {0} already exists")]
    AlreadyExists(String),
    #[error("invalid volume id {0:?}")]
    InvalidId(String),
    #[error("invalid volume size {0}")]
    InvalidSize(u64),
    #[error("cannot shrink volume from {from} to {to} bytes")]
    Shrink { from: u64, to: u64 },
    #[error("range {offset}+{len} is outside the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("volume {0} was deleted")]
    Deleted(String),
    #[error("write gate belongs to another volume")]
    WrongGate,
    #[error("in-flight writes to volume {0} did not finish in time")]
    Busy(String),
    #[error("zeroing cannot be done fast")]
    NotFast,
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(_) => {
                if let Error::Io(io) = e {
                    return io;
                }
                io::ErrorKind::Other
            }
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::AlreadyExists(_) => io::ErrorKind::AlreadyExists,
            Error::OutOfRange { .. }
            | Error::InvalidId(_)
            | Error::InvalidSize(_)
            | Error::Shrink { .. }
            | Error::WrongGate => io::ErrorKind::InvalidInput,
            Error::Deleted(_) => io::ErrorKind::NotFound,
            Error::NotFast => io::ErrorKind::Unsupported,
            Error::Busy(_) => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A live volume. Thread-safe and synchronous: call it from blocking threads.
pub struct Volume {
    id: String,
    dir: PathBuf,
    file: File,
    size: AtomicU64,
    gate: Gate,
    cbt: Cbt,
    deleted: AtomicBool,
    /// End offset of the last write, to detect sequential streams.
    seq_end: AtomicU64,
    seq_ahead: AtomicU64,
    /// Snapshot captures in progress (copy-before-write), and a flag so writes skip the lock when
    /// there are none.
    captures: Mutex<Vec<Arc<capture::Capture>>>,
    capturing: AtomicBool,
    /// Lazy hydration from a snapshot, while blocks are still pending.
    hydration: Mutex<Option<Arc<hydrate::Hydration>>>,
    hydrating: AtomicBool,
    /// A cut prepared ahead of time by [`Volume::stage_cut`], with the bitmap size it was made
    /// for. The lock also serialises preparing.
    staged: Mutex<Option<(PreparedCut, u64)>>,
    /// Cuts handed out by `prepare_cut` and not yet committed or abandoned.
    cuts_in_flight: Arc<AtomicUsize>,
}

/// Holds a volume's write gate: new writes wait, and every write that had
/// started has finished. Drop it to let writes continue.
pub struct WriteGateGuard<'a> {
    vol: &'a Volume,
}

impl Drop for WriteGateGuard<'_> {
    fn drop(&mut self) {
        self.vol.gate.open();
    }
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("id", &self.id).field("size", &self.size()).finish()
    }
}

impl Volume {
    fn open(id: &str, dir: PathBuf, tracking: bool) -> Result<Volume> {
        let file = OpenOptions::new().read(true).write(true).open(dir.join(DATA_NAME))?;
        let size = file.metadata()?.len();
        let cbt = Cbt::open(&dir, cbt::nblocks_for(size), tracking)?;
        Ok(Volume {
            id: id.to_string(),
            dir,
            file,
            size: AtomicU64::new(size),
            gate: Gate::default(),
            cbt,
            deleted: AtomicBool::new(false),
            seq_end: AtomicU64::new(u64::MAX),
            seq_ahead: AtomicU64::new(SEQ_MARK_AHEAD_MIN),
            captures: Mutex::new(Vec::new()),
            capturing: AtomicBool::new(false),
            hydration: Mutex::new(None),
            hydrating: AtomicBool::new(false),
            staged: Mutex::new(None),
            cuts_in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::Deleted(self.id.clone()));
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Marks the blocks of a non-empty range changed (durably).
    fn track(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first = offset / BLOCK_SIZE;
        let mut last = (end - 1) / BLOCK_SIZE;
        // A write that continues the previous one is part of a sequential
        // stream: mark ahead (16 blocks, doubling per commit up to 128 =
        // 64 MiB) so a stream pays a handful of bitmap commits instead of
        // one per block. Over-reporting is safe: the next snapshot re-reads
        // at most 64 MiB of unchanged blocks per stream.
        let sequential = self.seq_end.swap(end, Ordering::Relaxed) == offset;
        if !sequential {
            self.seq_ahead.store(SEQ_MARK_AHEAD_MIN, Ordering::Relaxed);
        } else if !self.cbt.is_durable(first, last) {
            let ahead = self.seq_ahead.load(Ordering::Relaxed);
            self.seq_ahead.store((ahead * 2).min(SEQ_MARK_AHEAD_MAX), Ordering::Relaxed);
            let nblocks = cbt::nblocks_for(self.size());
            last = (last + ahead).min(nblocks.saturating_sub(1)).max(last);
        }
        self.cbt.mark(first, last)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
