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
mod gate;
mod hydrate;
mod sync;

pub use claims::{Claim, Claims};
pub use hydrate::BlockSource;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;
use rustix::fs::{FallocateFlags, SeekFrom};

use cbt::Cbt;
use gate::{Gate, WriterGuard};

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

/// One run of a [`Volume::block_status`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in `data.img`.
    pub hole: bool,
    /// Reads as zeros.
    pub zero: bool,
}

/// Options of a [`VolumeStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Keep change bitmaps up to date on writes (off only for benchmarks).
    pub change_tracking: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { change_tracking: true }
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A directory of volumes. Handles are cached: every caller of
/// [`VolumeStore::open`] for one id shares one [`Volume`].
pub struct VolumeStore {
    root: PathBuf,
    opts: StoreOptions,
    /// Also serializes create / resize / delete.
    handles: Mutex<HashMap<String, Arc<Volume>>>,
    /// Runs once per volume when this process first opens it, before the handle is handed out
    /// (lazy recovery: start-up does not touch every volume).
    on_first_open: std::sync::OnceLock<OpenHook>,
}

/// See [`VolumeStore::set_on_first_open`].
pub type OpenHook = Box<dyn Fn(&Volume) -> Result<()> + Send + Sync>;

impl VolumeStore {
    /// Opens (creating if needed) a store at `root`, removing leftovers of
    /// interrupted creates and deletes.
    pub fn open(root: PathBuf) -> Result<VolumeStore> {
        Self::open_with(root, StoreOptions::default())
    }

    /// Opens a store another process may own (read-only tools such as `blocksnap admin verify`):
    /// leftovers of interrupted operations are left alone.
    pub fn open_shared(root: PathBuf) -> Result<VolumeStore> {
        Ok(VolumeStore {
            root,
            opts: StoreOptions::default(),
            handles: Mutex::new(HashMap::new()),
            on_first_open: std::sync::OnceLock::new(),
        })
    }

    pub fn open_with(root: PathBuf, opts: StoreOptions) -> Result<VolumeStore> {
        fs::create_dir_all(&root)?;
        for e in fs::read_dir(&root)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".del-") {
                tracing::info!(path = %e.path().display(), "removing leftover of an interrupted operation");
                fs::remove_dir_all(e.path())?;
            }
        }
        fsync_dir(&root)?;
        Ok(VolumeStore { root, opts, handles: Mutex::new(HashMap::new()), on_first_open: std::sync::OnceLock::new() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Set (once) what runs when a volume is first opened by this process, before anyone gets
    /// its handle: the owner's recovery of state a previous run left (e.g. orphaned frozen
    /// epochs). A failing hook fails that open; the next open tries again.
    pub fn set_on_first_open(&self, hook: OpenHook) {
        let _ = self.on_first_open.set(hook);
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Volume>>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checked_dir(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::InvalidId(id.to_string()));
        }
        Ok(self.root.join(id))
    }

    /// Creates an all-zero volume of `size_bytes` (a multiple of 512).
    /// Atomic: built in a temp dir, then renamed into place.
    pub fn create(&self, id: &str, size_bytes: u64) -> Result<()> {
        let dir = self.checked_dir(id)?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(512) || size_bytes > (1u64 << 32) * BLOCK_SIZE {
            return Err(Error::InvalidSize(size_bytes));
        }
        let _ops = self.handles();
        if dir.exists() {
            return Err(Error::AlreadyExists(id.to_string()));
        }
        let tmp = self.root.join(format!(".tmp-{id}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        let data = File::create(tmp.join(DATA_NAME))?;
        data.set_len(size_bytes)?;
        data.sync_all()?;
        Cbt::create_file(&tmp, cbt::nblocks_for(size_bytes))?;
        fsync_dir(&tmp)?;
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &dir,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                fs::remove_dir_all(&tmp)?;
                return Err(Error::AlreadyExists(id.to_string()));
            }
            Err(e) => return Err(Error::Io(e.into())),
        }
        fsync_dir(&self.root)?;
        tracing::debug!(volume = id, size_bytes, "volume created");
        Ok(())
    }

    /// Returns the shared handle of a volume, opening it on first use.
    pub fn open_volume(&self, id: &str) -> Result<Arc<Volume>> {
        let dir = self.checked_dir(id)?;
        let mut handles = self.handles();
        if let Some(v) = handles.get(id) {
            return Ok(v.clone());
        }
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        let v = Arc::new(Volume::open(id, dir, self.opts.change_tracking)?);
        if let Some(hook) = self.on_first_open.get() {
            hook(&v)?;
        }
        handles.insert(id.to_string(), v.clone());
        Ok(v)
    }

    pub fn exists(&self, id: &str) -> bool {
        valid_id(id) && self.root.join(id).is_dir()
    }

    /// Ids of all volumes, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if let Some(name) = e.file_name().to_str()
                && valid_id(name)
                && e.file_type()?.is_dir()
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Grows a volume to `new_size` (shrinking is refused; same size is a no-op).
    pub fn resize(&self, id: &str, new_size: u64) -> Result<()> {
        let v = self.open_volume(id)?;
        let _ops = self.handles();
        v.resize(new_size)
    }

    /// Clean stop: for every open volume, drop a cut staged ahead of time and make completed
    /// writes and the hydration map durable (see [`Volume::close_clean`]), so the next start finds
    /// exactly the state it needs and nothing to recover. Returns how many volumes failed.
    pub fn close_all(&self) -> usize {
        let open: Vec<Arc<Volume>> = self.handles().values().cloned().collect();
        let mut failed = 0;
        for v in open {
            if let Err(e) = v.close_clean() {
                tracing::error!(volume = v.id, error = %e, "volume state could not be saved at stop");
                failed += 1;
            }
        }
        failed
    }

    /// Drops the cached handle (the files stay). Live `Arc`s keep working.
    pub fn close(&self, id: &str) {
        self.handles().remove(id);
    }

    /// Deletes a volume and its files. Atomic: renamed away, then removed.
    /// Handles still held elsewhere fail further I/O with [`Error::Deleted`].
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.checked_dir(id)?;
        let mut handles = self.handles();
        if !dir.is_dir() {
            return Err(Error::NotFound(id.to_string()));
        }
        if let Some(v) = handles.remove(id) {
            // Let in-flight writes finish before the files go away (bounded: a write that never
            // finishes lands in the unlinked file, which is harmless).
            let g = v.gate();
            v.deleted.store(true, Ordering::Release);
            if let Err(e) = &g {
                tracing::warn!(volume = id, error = %e, "deleting a volume with writes still in flight");
            }
            drop(g);
        }
        let gone = self.root.join(format!(".del-{id}"));
        if gone.exists() {
            fs::remove_dir_all(&gone)?;
        }
        fs::rename(&dir, &gone)?;
        fsync_dir(&self.root)?;
        fs::remove_dir_all(&gone)?;
        tracing::debug!(volume = id, "volume deleted");
        Ok(())
    }
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

    /// Copy the frozen bytes of blocks in `offset..offset+len` aside before they change.
    fn capture_before_write(&self, offset: u64, len: u64) -> Result<()> {
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

    fn hydration(&self) -> Option<Arc<hydrate::Hydration>> {
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
    fn hydrate_range(&self, offset: u64, len: u64, write: bool) -> Result<()> {
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

#[cfg(test)]
mod tests;
