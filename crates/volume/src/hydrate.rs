//! Lazy hydration: a volume created from a snapshot is usable at once. Blocks still in the snapshot
//! store ("pending") are fetched on first touch (single-flight per block) and by a background
//! hydrator; reads of a pending block wait for its fetch, partial writes fetch it first, whole-block
//! writes and zeroing simply claim it.
//!
//! Durability: the set of still-pending blocks is kept in `hydration.map` (format below), rewritten
//! atomically (temp file, fsync, rename, dir fsync) after the data file is synced. It is persisted at
//! every guest flush/FUA when it changed, so a flushed write to a just-hydrated block can never be
//! overwritten by a re-fetch after a crash; fetched-but-unflushed blocks are simply fetched again.
//!
//! # `hydration.map`, version 1
//! `magic "BSNPHYDR"` · `version u32 = 1` · `len u32` · `crc32c u32` over the payload · payload =
//! a serialized Roaring bitmap of pending block numbers.

use crate::sync::{Condvar, Mutex, MutexGuard};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use roaring::RoaringBitmap;

const MAGIC: &[u8; 8] = b"BSNPHYDR";
const VERSION: u32 = 1;
pub(crate) const MAP_NAME: &str = "hydration.map";

/// Where pending blocks come from (the engine's snapshot store).
pub trait BlockSource: Send + Sync + 'static {
    /// The block's bytes (`None` when it reads as zeros). Called from blocking threads.
    fn fetch(&self, block: u32) -> io::Result<Option<Vec<u8>>>;
}

struct State {
    pending: RoaringBitmap,
    in_flight: HashSet<u32>,
    /// The map on disk is older than `pending`.
    dirty: bool,
}

pub(crate) struct Hydration {
    source: Box<dyn BlockSource>,
    path: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
    cv: Condvar,
    /// Serializes map writes.
    persist_lock: Mutex<()>,
    pub(crate) done: AtomicBool,
}

fn encode(pending: &RoaringBitmap) -> io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(pending.serialized_size());
    pending.serialize_into(&mut payload)?;
    let mut out = Vec::with_capacity(payload.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode(bytes: &[u8]) -> io::Result<RoaringBitmap> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("hydration map: {why}"));
    if bytes.len() < 20 || &bytes[0..8] != MAGIC {
        return Err(bad("bad header"));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(8) != VERSION {
        return Err(bad("unknown version"));
    }
    let len = word(12) as usize;
    let payload = bytes.get(20..20 + len).ok_or_else(|| bad("truncated"))?;
    if crc32c::crc32c(payload) != word(16) {
        return Err(bad("checksum mismatch"));
    }
    RoaringBitmap::deserialize_from(payload).map_err(|e| bad(&e.to_string()))
}

impl Hydration {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn start(dir: &Path, source: Box<dyn BlockSource>, pending: RoaringBitmap) -> io::Result<Hydration> {
        let h = Hydration {
            source,
            path: dir.join(MAP_NAME),
            dir: dir.to_path_buf(),
            state: Mutex::new(State { pending, in_flight: HashSet::new(), dirty: true }),
            cv: Condvar::new(),
            persist_lock: Mutex::new(()),
            done: AtomicBool::new(false),
        };
        h.persist(None)?;
        Ok(h)
    }

    /// Resume from the map on disk; `None` when there is none (hydration had finished).
    pub(crate) fn resume(dir: &Path, source: Box<dyn BlockSource>) -> io::Result<Option<Hydration>> {
        let path = dir.join(MAP_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let pending = decode(&bytes)?;
        Ok(Some(Hydration {
            source,
            path,
            dir: dir.to_path_buf(),
            state: Mutex::new(State { pending, in_flight: HashSet::new(), dirty: false }),
            cv: Condvar::new(),
            persist_lock: Mutex::new(()),
            done: AtomicBool::new(false),
        }))
    }

    pub(crate) fn is_pending(&self, block: u32) -> bool {
        self.lock().pending.contains(block)
    }

    pub(crate) fn any_pending(&self, first: u64, last: u64) -> bool {
        let st = self.lock();
        let (Ok(f), Ok(l)) = (u32::try_from(first), u32::try_from(last)) else { return false };
        st.pending.range_cardinality(f..=l) > 0
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.lock().pending.len()
    }

    /// Take the first pending block nobody is fetching and mark it in flight (for concurrent
    /// background hydrators); finish it with [`Hydration::fetch_taken`].
    pub(crate) fn take_next(&self) -> Option<u32> {
        let mut st = self.lock();
        let b = st.pending.iter().find(|b| !st.in_flight.contains(b))?;
        st.in_flight.insert(b);
        Some(b)
    }

    /// Make `block` local: fetch it (once, whoever asks first) and write it with `write`. Returns
    /// when the block is no longer pending.
    pub(crate) fn ensure(&self, block: u32, write: impl FnOnce(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut st = self.lock();
        loop {
            if !st.pending.contains(block) {
                return Ok(());
            }
            if !st.in_flight.contains(&block) {
                break;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.in_flight.insert(block);
        drop(st);
        self.fetch_taken(block, write)
    }

    /// Fetch and write a block this caller marked in flight, then clear the mark.
    pub(crate) fn fetch_taken(&self, block: u32, write: impl FnOnce(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let result = self.source.fetch(block).and_then(|data| match data {
            Some(d) => write(&d),
            None => Ok(()),
        });
        let mut st = self.lock();
        st.in_flight.remove(&block);
        if result.is_ok() {
            st.pending.remove(block);
            st.dirty = true;
        }
        drop(st);
        self.cv.notify_all();
        result
    }

    /// A whole-block overwrite makes the fetch unnecessary.
    pub(crate) fn claim(&self, block: u32) {
        let mut st = self.lock();
        while st.in_flight.contains(&block) {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.pending.remove(block) {
            st.dirty = true;
        }
    }

    /// Write the map if it changed. `data` (when given) is synced first, so the map never says
    /// "local" for bytes that are not durable.
    pub(crate) fn persist(&self, data: Option<&File>) -> io::Result<()> {
        let _p = self.persist_lock.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = {
            let mut st = self.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            st.pending.clone()
        };
        if let Some(f) = data {
            f.sync_data()?;
        }
        let result = (|| {
            let tmp = self.dir.join(format!("{MAP_NAME}.tmp"));
            let mut f = File::create(&tmp)?;
            f.write_all(&encode(&snapshot)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            crate::fsync_dir(&self.dir)
        })();
        if result.is_err() {
            self.lock().dirty = true;
        }
        result
    }

    pub(crate) fn remove_map(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => crate::fsync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(all(test, loom))]
impl Hydration {
    /// A hydration with no map on disk (the protocol alone, for the model checks).
    fn in_memory(source: Box<dyn BlockSource>, pending: RoaringBitmap) -> Hydration {
        Hydration {
            source,
            path: PathBuf::new(),
            dir: PathBuf::new(),
            state: Mutex::new(State { pending, in_flight: HashSet::new(), dirty: false }),
            cv: Condvar::new(),
            persist_lock: Mutex::new(()),
            done: AtomicBool::new(false),
        }
    }
}

/// Model checks of the single-flight protocol (`RUSTFLAGS="--cfg loom"`, see `tests/run`): two
/// readers and a background hydrator (or a whole-block writer) on one pending block; the block is
/// fetched at most once, nobody waits for ever (loom reports a deadlock), and it ends local.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    impl BlockSource for Counting {
        fn fetch(&self, _block: u32) -> io::Result<Option<Vec<u8>>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Some(vec![7]))
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    fn setup() -> (Arc<Hydration>, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut pending = RoaringBitmap::new();
        pending.insert(0);
        (Arc::new(Hydration::in_memory(Box::new(Counting(fetches.clone())), pending)), fetches)
    }

    #[test]
    fn loom_two_readers_and_a_hydrator_fetch_once() {
        model(|| {
            let (h, fetches) = setup();
            let h1 = h.clone();
            let r1 = loom::thread::spawn(move || h1.ensure(0, |_| Ok(())).unwrap());
            let h2 = h.clone();
            let bg = loom::thread::spawn(move || {
                if let Some(b) = h2.take_next() {
                    h2.fetch_taken(b, |_| Ok(())).unwrap();
                }
            });
            h.ensure(0, |_| Ok(())).unwrap();
            r1.join().unwrap();
            bg.join().unwrap();
            assert_eq!(fetches.load(Ordering::SeqCst), 1, "a block was fetched twice");
            assert!(!h.is_pending(0));
        });
    }

    #[test]
    fn loom_a_claim_racing_a_reader() {
        model(|| {
            let (h, fetches) = setup();
            let h1 = h.clone();
            let r = loom::thread::spawn(move || h1.ensure(0, |_| Ok(())).unwrap());
            h.claim(0);
            r.join().unwrap();
            assert!(fetches.load(Ordering::SeqCst) <= 1);
            assert!(!h.is_pending(0));
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn map_roundtrip_and_damage() {
        let mut b = RoaringBitmap::new();
        b.insert_range(3..900);
        let bytes = encode(&b).unwrap();
        assert_eq!(decode(&bytes).unwrap(), b);
        let mut bad = bytes.clone();
        let n = bad.len() - 1;
        bad[n] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&bytes[..10]).is_err());
    }
}
