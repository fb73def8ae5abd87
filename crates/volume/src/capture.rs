//! Copy-before-write capture: what keeps a snapshot point-in-time while writes go on.
//!
//! At a snapshot cut (under the write gate) the engine registers a capture for the frozen epoch's
//! changed blocks. Until the snapshot is durable, the first write (or zeroing) that touches one of
//! those blocks first copies the block's old bytes into `capture.<epoch>.log` and `fdatasync`s it;
//! only then is the write issued. The uploader reads frozen blocks through the capture: from the log
//! when the block was captured, else from the data file (which then still holds the frozen bytes,
//! because any writer would have captured first while holding the same lock).
//!
//! Guest writes never wait on the object store: they pay one local 512 KiB copy, once per block.
//!
//! # Log format, version 1 (little-endian, CRC-32C)
//! Header (32 bytes): `magic "BSNPCAPT"` · `version u32 = 1` · `block_size u32` · `epoch u64` ·
//! `crc u32` over bytes 0..24 · 4 zero bytes. Records: `magic u32 = 0x4C434E42 ("BNCL")` ·
//! `block u32` · `len u32` · `crc u32` over the data · `len` data bytes. A torn or corrupt tail
//! record is dropped at resume (its write was never issued: data waits for the log's fsync).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;

use crate::BLOCK_SIZE;
use crate::sync::{Mutex, MutexGuard};

const HEADER_MAGIC: &[u8; 8] = b"BSNPCAPT";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const RECORD_MAGIC: u32 = 0x4C43_4E42;
const RECORD_HEADER: u64 = 16;

pub(crate) fn log_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("capture.{epoch}.log"))
}

struct Inner {
    /// Frozen blocks not yet copied (a write to them must capture first).
    pending: RoaringBitmap,
    /// Captured blocks: offset of their data in the log, and length.
    index: HashMap<u32, (u64, u32)>,
    end: u64,
}

pub(crate) struct Capture {
    pub(crate) epoch: u64,
    /// Volume size at the cut: blocks past it are not part of the snapshot.
    pub(crate) size: u64,
    path: PathBuf,
    log: File,
    frozen: Frozen,
}

/// The I/O of copy-before-write: the data file and the log (files here; memory in the model).
pub(crate) trait CaptureIo {
    /// Fills `buf` with the data at `offset` (zeros past the end).
    fn read_data(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// False when `start..end` of the data is a hole (it reads as zeros).
    fn has_data(&self, start: u64, end: u64) -> bool;
    fn write_log(&self, buf: &[u8], at: u64) -> io::Result<()>;
    fn read_log(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
    fn sync_log(&self) -> io::Result<()>;
}

struct Files<'a> {
    data: &'a File,
    log: &'a File,
}

impl CaptureIo for Files<'_> {
    fn read_data(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_full(self.data, buf, offset)
    }
    fn has_data(&self, start: u64, end: u64) -> bool {
        match rustix::fs::seek(self.data, rustix::fs::SeekFrom::Data(start)) {
            Ok(next) => next < end,
            Err(rustix::io::Errno::NXIO) => false,
            // Unknown: read it.
            Err(_) => true,
        }
    }
    fn write_log(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.log.write_all_at(buf, at)
    }
    fn read_log(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.log.read_exact_at(buf, at)
    }
    fn sync_log(&self) -> io::Result<()> {
        self.log.sync_data()
    }
}

/// The frozen blocks still to copy, where the copied ones are in the log, and the per-block
/// stripes: the protocol between writers and the uploader, independent of files so that loom
/// checks it as is (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-volume --lib --release loom`).
struct Frozen {
    /// Volume size at the cut.
    size: u64,
    inner: Mutex<Inner>,
    /// Per-block exclusion between a writer capturing a block and the uploader reading it, so
    /// uploads read different blocks in parallel (the inner lock is never held across a data read).
    stripes: Vec<Mutex<()>>,
}

#[cfg(not(loom))]
const STRIPES: usize = 64;
/// Two blocks of the model share a stripe or not, depending on their numbers.
#[cfg(loom)]
const STRIPES: usize = 2;

fn header(epoch: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(HEADER_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

impl Capture {
    /// A new, empty log for `epoch` (durable before the gate is released).
    pub(crate) fn create(dir: &Path, epoch: u64, size: u64, set: &RoaringBitmap) -> io::Result<Capture> {
        let log = Self::prepare(dir, epoch)?;
        crate::fsync_dir(dir)?;
        Ok(Self::from_prepared(dir, log, epoch, size, set))
    }

    /// The empty log file, made before the cut (outside the write gate). The caller fsyncs the
    /// directory; the header becomes durable with the first record's `fdatasync`, before any write
    /// relies on the log.
    pub(crate) fn prepare(dir: &Path, epoch: u64) -> io::Result<File> {
        let path = log_path(dir, epoch);
        let log = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        log.write_all_at(&header(epoch), 0)?;
        Ok(log)
    }

    /// Start capturing into a prepared log (under the gate: memory only).
    pub(crate) fn from_prepared(dir: &Path, log: File, epoch: u64, size: u64, set: &RoaringBitmap) -> Capture {
        let path = log_path(dir, epoch);
        Capture { epoch, size, path, log, frozen: Frozen::new(size, set.clone(), HashMap::new(), HEADER_LEN) }
    }

    /// Reopen a log after a restart: keep every whole record, drop a torn tail.
    pub(crate) fn resume(dir: &Path, epoch: u64, size: u64, set: &RoaringBitmap) -> io::Result<Capture> {
        let path = log_path(dir, epoch);
        let log = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Self::create(dir, epoch, size, set),
            Err(e) => return Err(e),
        };
        let mut h = [0u8; HEADER_LEN as usize];
        let len = log.metadata()?.len();
        if len < HEADER_LEN || (log.read_exact_at(&mut h, 0).is_ok() && h.iter().all(|&b| b == 0)) {
            // The header never reached the disk, so no record did either (each record's fdatasync
            // would have carried it): nothing was captured.
            drop(log);
            return Self::create(dir, epoch, size, set);
        }
        log.read_exact_at(&mut h, 0)?;
        if h != header(epoch) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} has a bad header", path.display())));
        }
        let mut index = HashMap::new();
        let mut pos = HEADER_LEN;
        let mut data = vec![0u8; BLOCK_SIZE as usize];
        while pos + RECORD_HEADER <= len {
            let mut rh = [0u8; RECORD_HEADER as usize];
            log.read_exact_at(&mut rh, pos)?;
            let word = |i: usize| u32::from_le_bytes([rh[i], rh[i + 1], rh[i + 2], rh[i + 3]]);
            let (magic, block, dlen, crc) = (word(0), word(4), word(8), word(12));
            if magic != RECORD_MAGIC || dlen as u64 > BLOCK_SIZE || pos + RECORD_HEADER + dlen as u64 > len {
                break;
            }
            let d = &mut data[..dlen as usize];
            log.read_exact_at(d, pos + RECORD_HEADER)?;
            if crc32c::crc32c(d) != crc {
                break;
            }
            index.insert(block, (pos + RECORD_HEADER, dlen));
            pos += RECORD_HEADER + dlen as u64;
        }
        if pos < len {
            tracing::warn!(path = %path.display(), kept = pos, len, "dropping a torn capture log tail");
            log.set_len(pos)?;
            log.sync_all()?;
        }
        let mut pending = set.clone();
        for b in index.keys() {
            pending.remove(*b);
        }
        Ok(Capture { epoch, size, path, log, frozen: Frozen::new(size, pending, index, pos) })
    }

    /// Before a write to blocks `first..=last`: copy every still-pending one into the log.
    pub(crate) fn before_write(&self, data: &File, first: u64, last: u64) -> io::Result<()> {
        self.frozen.before_write(&Files { data, log: &self.log }, first, last)
    }

    /// The block's bytes as they were at the cut (`buf` is the block's length at the cut). Returns
    /// `false` without touching `buf` when the block is a hole in the data file (it reads as zeros):
    /// the uploader then skips reading and hashing half a megabyte of zeros.
    pub(crate) fn read_block(&self, data: &File, block: u32, buf: &mut [u8]) -> io::Result<bool> {
        self.frozen.read_block(&Files { data, log: &self.log }, block, buf)
    }

    pub(crate) fn remove_file(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Frozen {
    fn new(size: u64, pending: RoaringBitmap, index: HashMap<u32, (u64, u32)>, end: u64) -> Frozen {
        Frozen {
            size,
            inner: Mutex::new(Inner { pending, index, end }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Inner is updated only after the log write and fsync succeed; a panic in between leaves
        // a consistent (if conservative) state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn block_len(&self, block: u32) -> u64 {
        let start = block as u64 * BLOCK_SIZE;
        self.size.saturating_sub(start).min(BLOCK_SIZE)
    }

    fn stripe(&self, block: u32) -> MutexGuard<'_, ()> {
        self.stripes[block as usize % STRIPES].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a write to blocks `first..=last`: copy every still-pending one into the log.
    pub(crate) fn before_write(&self, io: &impl CaptureIo, first: u64, last: u64) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut wrote = false;
        for b in first..=last {
            let Ok(b32) = u32::try_from(b) else { break };
            if !self.lock().pending.contains(b32) {
                continue;
            }
            // Stripe first, then the inner lock (the reader's order too). Appends stay serialized
            // under the inner lock, so records are contiguous and one fsync covers all before it.
            let _s = self.stripe(b32);
            let mut inner = self.lock();
            if !inner.pending.contains(b32) {
                continue;
            }
            let len = self.block_len(b32);
            buf.resize(len as usize, 0);
            io.read_data(&mut buf, b * BLOCK_SIZE)?;
            let mut rh = [0u8; RECORD_HEADER as usize];
            rh[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
            rh[4..8].copy_from_slice(&b32.to_le_bytes());
            rh[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            rh[12..16].copy_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
            let at = inner.end;
            io.write_log(&rh, at)?;
            io.write_log(&buf, at + RECORD_HEADER)?;
            inner.end = at + RECORD_HEADER + len;
            inner.index.insert(b32, (at + RECORD_HEADER, len as u32));
            inner.pending.remove(b32);
            wrote = true;
        }
        if wrote {
            // The old bytes are durable before the write that replaces them is issued.
            io.sync_log()?;
        }
        Ok(())
    }

    /// The block's bytes as they were at the cut (`buf` is the block's length at the cut). Returns
    /// `false` without touching `buf` when the block is a hole in the data file (it reads as zeros):
    /// the uploader then skips reading and hashing half a megabyte of zeros.
    pub(crate) fn read_block(&self, io: &impl CaptureIo, block: u32, buf: &mut [u8]) -> io::Result<bool> {
        let _s = self.stripe(block);
        let captured = self.lock().index.get(&block).copied();
        if let Some((at, len)) = captured {
            let n = (len as usize).min(buf.len());
            io.read_log(&mut buf[..n], at)?;
            buf[n..].fill(0);
            return Ok(true);
        }
        // Not captured: no write has touched it since the cut (a writer would have captured it first,
        // holding this block's stripe, which we hold now).
        let start = block as u64 * BLOCK_SIZE;
        let end = start + buf.len() as u64;
        if !io.has_data(start, end) {
            return Ok(false);
        }
        io.read_data(buf, start)?;
        Ok(true)
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Model check of the stripes (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-volume --lib --release
/// loom`): writers capture then overwrite their blocks while the uploader reads them. The data cells
/// are loom cells, so a data read that is not ordered against a write to the same block fails the
/// model, as does a read that returns anything but the bytes of the cut.
#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Three blocks (0 and 2 share a stripe), each holding one repeated byte; the log in memory.
    struct Mem {
        data: [UnsafeCell<u8>; 3],
        log: std::sync::Mutex<Vec<u8>>,
    }

    impl Mem {
        fn write_block(&self, block: usize, v: u8) {
            // SAFETY: loom checks that this write is ordered against every other access to the cell
            // (it fails the model otherwise); the pointer is valid for the cell's lifetime.
            self.data[block].with_mut(|p| unsafe { *p = v });
        }
    }

    impl CaptureIo for Mem {
        fn read_data(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            // SAFETY: as in `write_block`.
            let v = self.data[(offset / BLOCK_SIZE) as usize].with(|p| unsafe { *p });
            buf.fill(v);
            Ok(())
        }
        fn has_data(&self, _start: u64, _end: u64) -> bool {
            true
        }
        fn write_log(&self, buf: &[u8], at: u64) -> io::Result<()> {
            let mut log = self.log.lock().unwrap();
            let (at, end) = (at as usize, at as usize + buf.len());
            if log.len() < end {
                log.resize(end, 0);
            }
            log[at..end].copy_from_slice(buf);
            Ok(())
        }
        fn read_log(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
            let log = self.log.lock().unwrap();
            buf.copy_from_slice(&log[at as usize..at as usize + buf.len()]);
            Ok(())
        }
        fn sync_log(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn loom_capture_writers_and_uploader() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let mem = Arc::new(Mem {
                data: [UnsafeCell::new(7), UnsafeCell::new(7), UnsafeCell::new(7)],
                log: std::sync::Mutex::new(vec![0; HEADER_LEN as usize]),
            });
            let frozen = Arc::new(Frozen::new(3 * BLOCK_SIZE, (0..3).collect(), HashMap::new(), HEADER_LEN));
            let writer = |first: u64, last: u64, v: u8| {
                let (mem, frozen) = (mem.clone(), frozen.clone());
                loom::thread::spawn(move || {
                    frozen.before_write(&*mem, first, last).unwrap();
                    for b in first..=last {
                        mem.write_block(b as usize, v);
                    }
                })
            };
            let w1 = writer(0, 0, 1);
            let w2 = writer(1, 2, 2);
            let mut buf = vec![0u8; BLOCK_SIZE as usize];
            for block in 0..3 {
                assert!(frozen.read_block(&*mem, block, &mut buf).unwrap());
                assert!(buf.iter().all(|&x| x == 7), "block {block} read other bytes than the cut's");
            }
            w1.join().unwrap();
            w2.join().unwrap();
            let inner = frozen.lock();
            assert!(inner.pending.is_empty());
            assert_eq!(inner.index.len(), 3, "each block captured once");
            drop(inner);
            for block in 0..3 {
                assert!(frozen.read_block(&*mem, block, &mut buf).unwrap());
                assert!(buf.iter().all(|&x| x == 7), "block {block}'s capture is not the cut's bytes");
            }
        });
    }
}
