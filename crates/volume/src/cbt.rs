//! Change-block tracking bitmap: one bit per 512 KiB block, made durable
//! before the write it covers is issued (see the crate docs for the format).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use roaring::RoaringBitmap;

use crate::cbt_commit::{Bits, ChangeSet, Page};
use crate::{BLOCK_SIZE, fsync_dir};

pub(crate) const PAGE_SIZE: usize = 4096;
/// Bitmap words stored in one page; the page tail holds a reserved word and
/// the CRC.
pub(crate) const WORDS_PER_PAGE: usize = 511;
const MAGIC: &[u8; 8] = b"BSNPCBT\0";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const ACTIVE_NAME: &str = "changes.bitmap";
const TMP_NAME: &str = "changes.bitmap.tmp";
/// The next epoch's empty bitmap, prepared before a cut and renamed over the active file during it.
const NEXT_NAME: &str = "changes.next";
/// The next file's own temp name: preparing a cut (possibly in the background) never shares a
/// temp file with `write_full`.
const NEXT_TMP_NAME: &str = "changes.next.tmp";
const FROZEN_PREFIX: &str = "changes.";
const FROZEN_SUFFIX: &str = ".frozen";

pub(crate) fn nblocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

fn nwords(nblocks: u64) -> usize {
    nblocks.div_ceil(64) as usize
}

fn npages(nblocks: u64) -> usize {
    nwords(nblocks).div_ceil(WORDS_PER_PAGE)
}

/// Mask of valid bits in word `w` of a bitmap of `nblocks` bits.
fn valid_mask(nblocks: u64, w: usize) -> u64 {
    let start = w as u64 * 64;
    let n = nblocks.saturating_sub(start).min(64);
    if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
}

fn encode_header(epoch: u64, nblocks: u64) -> [u8; PAGE_SIZE] {
    let mut h = [0u8; PAGE_SIZE];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    // 20..24 flags, zero in v1.
    h[24..32].copy_from_slice(&epoch.to_le_bytes());
    h[32..40].copy_from_slice(&nblocks.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Returns (epoch, nblocks) of a valid header.
fn decode_header(h: &[u8]) -> Option<(u64, u64)> {
    if h.len() < PAGE_SIZE || &h[0..8] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if crc32c::crc32c(&h[0..40]) != u32_at(40)
        || u32_at(8) != FORMAT_VERSION
        || u32_at(12) != PAGE_SIZE as u32
        || u64::from(u32_at(16)) != BLOCK_SIZE
    {
        return None;
    }
    Some((u64_at(24), u64_at(32)))
}

fn page_crc(epoch: u64, index: usize, body: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&epoch.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &(index as u64).to_le_bytes());
    crc32c::crc32c_append(crc, body)
}

pub(crate) fn encode_page(epoch: u64, index: usize, words: &[u64]) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    let start = index * WORDS_PER_PAGE;
    let end = (start + WORDS_PER_PAGE).min(words.len());
    for (i, w) in words[start..end].iter().enumerate() {
        p[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let crc = page_crc(epoch, index, &p[..PAGE_SIZE - 4]);
    p[PAGE_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
    p
}

/// What a bitmap file held: its words, epoch, and whether anything had to be
/// assumed dirty because it was missing or damaged.
pub(crate) struct Loaded {
    pub epoch: Option<u64>,
    pub words: Vec<u64>,
    pub damaged: bool,
}

/// Reads a bitmap file expecting `nblocks` bits. Missing, short or damaged
/// parts read as all-dirty; never fails for content reasons.
pub(crate) fn load(path: &Path, nblocks: u64) -> io::Result<Loaded> {
    let all_dirty =
        |epoch| Loaded { epoch, words: (0..nwords(nblocks)).map(|w| valid_mask(nblocks, w)).collect(), damaged: true };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(all_dirty(None)),
        Err(e) => return Err(e),
    };
    // A bitmap written by a newer format is refused, never read as damaged and rewritten.
    if bytes.len() >= 12 && &bytes[0..8] == MAGIC {
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version > FORMAT_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has change bitmap format {version}, newer than this binary's {FORMAT_VERSION}",
                    path.display()
                ),
            ));
        }
    }
    let Some((epoch, file_nblocks)) = decode_header(&bytes) else {
        return Ok(all_dirty(None));
    };
    if file_nblocks != nblocks {
        return Ok(all_dirty(Some(epoch)));
    }
    let mut words = vec![0u64; nwords(nblocks)];
    let mut damaged = false;
    for page in 0..npages(nblocks) {
        let off = PAGE_SIZE * (1 + page);
        let body = bytes.get(off..off + PAGE_SIZE);
        let ok = body.is_some_and(|b| {
            let stored = u32::from_le_bytes([b[PAGE_SIZE - 4], b[PAGE_SIZE - 3], b[PAGE_SIZE - 2], b[PAGE_SIZE - 1]]);
            stored == page_crc(epoch, page, &b[..PAGE_SIZE - 4])
        });
        let start = page * WORDS_PER_PAGE;
        let end = (start + WORDS_PER_PAGE).min(words.len());
        for (w, slot) in words.iter_mut().enumerate().take(end).skip(start) {
            *slot = match (ok, body) {
                (true, Some(b)) => {
                    let o = (w - start) * 8;
                    let mut x = [0u8; 8];
                    x.copy_from_slice(&b[o..o + 8]);
                    u64::from_le_bytes(x) & valid_mask(nblocks, w)
                }
                // A page that fails its check reads as all-dirty.
                _ => valid_mask(nblocks, w),
            };
        }
        damaged |= !ok;
    }
    Ok(Loaded { epoch: Some(epoch), words, damaged })
}

/// Writes a complete bitmap file at `dir/name` atomically (temp file, fsync,
/// rename, fsync dir) and returns the open file.
pub(crate) fn write_full(dir: &Path, name: &str, epoch: u64, nblocks: u64, words: &[u64]) -> io::Result<File> {
    let tmp = dir.join(TMP_NAME);
    let buf = encode_file(epoch, nblocks, words);
    {
        let f = File::create(&tmp)?;
        f.write_all_at(&buf, 0)?;
        f.sync_all()?;
    }
    let target = dir.join(name);
    fs::rename(&tmp, &target)?;
    fsync_dir(dir)?;
    OpenOptions::new().read(true).write(true).open(target)
}

/// A whole bitmap file: header page, then every page of `words`.
fn encode_file(epoch: u64, nblocks: u64, words: &[u64]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(PAGE_SIZE * (1 + npages(nblocks)));
    buf.extend_from_slice(&encode_header(epoch, nblocks));
    for p in 0..npages(nblocks) {
        buf.extend_from_slice(&encode_page(epoch, p, words));
    }
    buf
}

pub(crate) fn words_to_roaring(words: &[u64]) -> RoaringBitmap {
    let mut bm = RoaringBitmap::new();
    for (i, &w) in words.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            let b = w.trailing_zeros();
            // Block numbers fit u32: volumes stay below 2 PiB.
            bm.insert((i as u64 * 64 + u64::from(b)) as u32);
            w &= w - 1;
        }
    }
    bm
}

fn frozen_name(epoch: u64) -> String {
    format!("{FROZEN_PREFIX}{epoch}{FROZEN_SUFFIX}")
}

/// Lists the epochs of frozen bitmaps in `dir`.
pub(crate) fn frozen_epochs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix(FROZEN_PREFIX)
            .and_then(|r| r.strip_suffix(FROZEN_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) struct Cbt {
    dir: PathBuf,
    enabled: bool,
    /// The bits and their group commit (`cbt_commit.rs`).
    bits: ChangeSet<Arc<File>>,
    damaged: AtomicBool,
}

/// Writes encoded pages to a bitmap file and makes them durable.
fn write_pages(file: &Arc<File>, pages: &[Page]) -> io::Result<()> {
    for (p, buf) in pages {
        file.write_all_at(buf, (PAGE_SIZE * (1 + p)) as u64)?;
    }
    file.sync_data()
}

impl Cbt {
    /// Creates a fresh, clean bitmap (epoch 0) in `dir`.
    pub(crate) fn create_file(dir: &Path, nblocks: u64) -> io::Result<()> {
        write_full(dir, ACTIVE_NAME, 0, nblocks, &vec![0; nwords(nblocks)]).map(drop)
    }

    pub(crate) fn open(dir: &Path, nblocks: u64, enabled: bool) -> io::Result<Cbt> {
        let mut loaded = load(&dir.join(ACTIVE_NAME), nblocks)?;
        // Missing or damaged content (a warning: something was lost), as opposed to a cut that a
        // stop interrupted (expected after a crash, recovered exactly: informational).
        let damaged = loaded.damaged;
        let mut interrupted = false;
        // A prepared next-epoch file left by a cut whose rename did not reach the disk (or a cut
        // staged ahead of time and never used): bits set in it after the cut are kept (or-ed into
        // the active set: over-reporting is safe). A clean stop removes a staged cut.
        let next = dir.join(NEXT_NAME);
        if next.exists() {
            if let Ok(extra) = load(&next, nblocks) {
                for (w, x) in loaded.words.iter_mut().zip(extra.words.iter()) {
                    *w |= *x;
                }
                interrupted = true;
            }
            fs::remove_file(&next)?;
        }
        let frozen = frozen_epochs(dir)?;
        let epoch = match loaded.epoch {
            // The active file still carries an epoch that is frozen: a cut's rename did not reach
            // the disk (the cut does not wait for it), or a staged cut was left. Continue in the
            // next epoch with the old bits (a superset) plus any prepared file's, in a new file: the
            // frozen one may belong to a pending snapshot and must not receive later bits.
            Some(e) if frozen.contains(&e) => {
                interrupted = true;
                e + 1
            }
            Some(e) => e,
            // Header lost: continue after any frozen epoch still on disk.
            None => frozen.last().map_or(0, |e| e + 1),
        };
        loaded.damaged = damaged || interrupted;
        let file = if loaded.damaged {
            if damaged {
                tracing::warn!(dir = %dir.display(), epoch, "change bitmap missing or damaged; treating affected blocks as changed");
            } else {
                tracing::info!(dir = %dir.display(), epoch, "recovering an interrupted cut: its changed blocks stay in the changed set");
            }
            // Rewrite so the conservative reading is itself durable.
            write_full(dir, ACTIVE_NAME, epoch, nblocks, &loaded.words)?
        } else {
            OpenOptions::new().read(true).write(true).open(dir.join(ACTIVE_NAME))?
        };
        Ok(Cbt {
            dir: dir.to_path_buf(),
            enabled,
            bits: ChangeSet::new(Arc::new(file), epoch, nblocks, loaded.words),
            damaged: AtomicBool::new(loaded.damaged),
        })
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, Bits<Arc<File>>> {
        self.bits.lock()
    }

    pub(crate) fn damaged_on_open(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    pub(crate) fn nblocks(&self) -> u64 {
        self.lock().nblocks
    }

    /// Whether epoch `epoch`'s frozen file is a link to the active file (a prepared cut whose
    /// swap has not happened: it still receives the epoch's bits).
    pub(crate) fn frozen_is_active(&self, epoch: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        let st = self.lock();
        match (fs::metadata(self.dir.join(frozen_name(epoch))), st.file.metadata()) {
            (Ok(f), Ok(a)) => f.ino() == a.ino() && f.dev() == a.dev(),
            _ => false,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// True when writes to blocks `first..=last` need no bitmap update.
    pub(crate) fn is_durable(&self, first: u64, last: u64) -> bool {
        !self.enabled || self.all_durable(first, last)
    }

    fn all_durable(&self, first: u64, last: u64) -> bool {
        self.bits.all_durable(first, last)
    }

    /// Makes the bits of blocks `first..=last` durable; returns once they are
    /// on disk. Blocks already durable cost two atomic loads.
    pub(crate) fn mark(&self, first: u64, last: u64) -> io::Result<()> {
        if !self.enabled || self.all_durable(first, last) {
            return Ok(());
        }
        let mut st = self.lock();
        st.set(first, last)?;
        // Another writer's flush may have covered these bits meanwhile.
        if self.all_durable(first, last) {
            return Ok(());
        }
        self.bits.commit(st, write_pages)
    }

    /// Bits of the current epoch (in memory, a superset of the durable ones).
    pub(crate) fn current(&self) -> RoaringBitmap {
        words_to_roaring(&self.lock().words)
    }

    /// Freezes the current epoch into `changes.<epoch>.frozen` and starts a
    /// new, empty one. Caller holds the write gate.
    pub(crate) fn swap(&self) -> io::Result<(u64, RoaringBitmap)> {
        let mut st = self.lock();
        let old = st.epoch;
        // Frozen copy first and durable: a crash before the new active file is
        // in place leaves both, which only over-reports.
        self.link_frozen(old)?;
        fsync_dir(&self.dir)?;
        let file = write_full(&self.dir, ACTIVE_NAME, old + 1, st.nblocks, &vec![0u64; st.words.len()])?;
        Ok(self.install_next_epoch(&mut st, file))
    }

    /// (Re)link the active file as `epoch`'s frozen copy (same inode).
    fn link_frozen(&self, epoch: u64) -> io::Result<()> {
        let frozen = self.dir.join(frozen_name(epoch));
        match fs::remove_file(&frozen) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::hard_link(self.dir.join(ACTIVE_NAME), &frozen)
    }

    /// Switch the in-memory state to the next, empty epoch backed by `file`; returns the old epoch
    /// and its changed set.
    fn install_next_epoch(&self, st: &mut Bits<Arc<File>>, file: File) -> (u64, RoaringBitmap) {
        let (old, words) = self.bits.next_epoch(st, Arc::new(file));
        self.damaged.store(false, Ordering::Relaxed);
        (old, words_to_roaring(&words))
    }

    /// Cut, first half (outside the write gate, may take milliseconds): link the active file as
    /// the frozen copy of the current epoch (the same inode, so bits set until the cut land in it
    /// too) and write the next epoch's empty file; both durable. Returns the epoch being frozen.
    pub(crate) fn prepare_swap(&self) -> io::Result<u64> {
        let (old, nblocks) = {
            let st = self.lock();
            (st.epoch, st.nblocks)
        };
        self.link_frozen(old)?;
        // The next file needs no fsync of its own: if it is renamed into place and then found
        // damaged after a crash, it reads as all-changed (safe). The caller fsyncs the directory
        // once for the link, this file and the capture log.
        let buf = encode_file(old + 1, nblocks, &vec![0u64; nwords(nblocks)]);
        let tmp = self.dir.join(NEXT_TMP_NAME);
        File::create(&tmp)?.write_all_at(&buf, 0)?;
        fs::rename(&tmp, self.dir.join(NEXT_NAME))?;
        Ok(old)
    }

    /// Cut, second half (under the write gate, microseconds): switch to the prepared file with one
    /// rename. No fsync here: if the rename is lost in a crash, the old file (a superset) stays
    /// active and the prepared file's bits are merged at open. Call `sync` before relying on it.
    pub(crate) fn commit_swap(&self, expected_epoch: u64) -> io::Result<(u64, RoaringBitmap)> {
        let mut st = self.lock();
        if st.epoch != expected_epoch {
            return Err(io::Error::other(format!(
                "epoch moved from {expected_epoch} to {} between prepare and cut",
                st.epoch
            )));
        }
        let next = self.dir.join(NEXT_NAME);
        let file = OpenOptions::new().read(true).write(true).open(&next)?;
        fs::rename(&next, self.dir.join(ACTIVE_NAME))?;
        Ok(self.install_next_epoch(&mut st, file))
    }

    /// A prepared cut that did not happen: drop the frozen link (same inode as the active file)
    /// and the prepared file.
    pub(crate) fn abandon_prepared(&self, epoch: u64) -> io::Result<()> {
        for name in [frozen_name(epoch), NEXT_NAME.to_string()] {
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fsync_dir(&self.dir)
    }

    /// Makes a committed swap durable (optional: a lost rename is recovered at open).
    pub(crate) fn sync(&self) -> io::Result<()> {
        fsync_dir(&self.dir)
    }

    /// Grows the bitmap to `nblocks`; new blocks start clean. Caller holds
    /// the write gate.
    pub(crate) fn grow(&self, nblocks: u64) -> io::Result<()> {
        let mut st = self.lock();
        if nblocks <= st.nblocks {
            return Ok(());
        }
        let mut words = st.words.clone();
        words.resize(nwords(nblocks), 0);
        let file = write_full(&self.dir, ACTIVE_NAME, st.epoch, nblocks, &words)?;
        self.bits.resize(&mut st, Arc::new(file), nblocks, words);
        Ok(())
    }

    pub(crate) fn frozen(&self) -> io::Result<Vec<(u64, RoaringBitmap)>> {
        let nblocks = self.lock().nblocks;
        let mut out = Vec::new();
        for e in frozen_epochs(&self.dir)? {
            let path = self.dir.join(frozen_name(e));
            // A frozen file is from an older, possibly smaller size.
            let file_nblocks = fs::read(&path).ok().and_then(|b| decode_header(&b)).map_or(nblocks, |(_, n)| n);
            let loaded = load(&path, file_nblocks.min(nblocks))?;
            out.push((e, words_to_roaring(&loaded.words)));
        }
        Ok(out)
    }

    pub(crate) fn release(&self, epoch: u64) -> io::Result<()> {
        match fs::remove_file(self.dir.join(frozen_name(epoch))) {
            Ok(()) => fsync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ors a frozen epoch back into the active bitmap (durably) and removes it.
    pub(crate) fn restore(&self, epoch: u64) -> io::Result<()> {
        let Some((_, set)) = self.frozen()?.into_iter().find(|(e, _)| *e == epoch) else {
            return Ok(());
        };
        // Set and committed under one lock hold; a cut meanwhile carries the bits into the epoch
        // it freezes (see `cbt_commit.rs`).
        let mut st = self.lock();
        for b in set.iter() {
            let b = u64::from(b);
            if b < st.nblocks {
                st.set(b, b)?;
            }
        }
        self.bits.commit(st, write_pages)?;
        self.release(epoch)
    }
}
