//! The change bitmap in memory and its group commit: bits are set under one lock, and a writer
//! returns only once its bits are on disk. Concurrent writers share one write: the first one that
//! finds no flush running leads (it writes every dirty page and syncs, without holding the lock),
//! the others wait for it and find their bits covered. A failed write covers nothing; its pages
//! stay dirty and the next writer leads again.
//!
//! Batches: a bit set while batch `n` is open is durable once `durable >= n`. Batch numbers run on
//! across epochs, so a waiter whose bits a cut moved into the frozen epoch still waits for them:
//! the cut hands the epoch's pages not yet written (`carried`), with the epoch's file, to the next
//! leader, which writes them before the new epoch's. A write that finishes after a cut never
//! marks bits of the old epoch durable in the new one (the lock-free fast path would then skip
//! bits the new epoch lacks).
//!
//! Independent of files (`F` is the file handle, `write` writes pages and syncs), so the protocol
//! is model-checked with loom as is (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-volume --lib
//! --release loom`, run by `tests/run`).

use std::collections::BTreeSet;
use std::io;

use crate::cbt::{PAGE_SIZE, WORDS_PER_PAGE, encode_page};
use crate::sync::{AtomicU64, Condvar, Mutex, MutexGuard, Ordering, RwLock};

/// One encoded bitmap page and its index.
pub(crate) type Page = (usize, [u8; PAGE_SIZE]);

/// Pages of an earlier epoch's file that are still to be written.
struct Carried<F> {
    file: F,
    pages: Vec<Page>,
}

pub(crate) struct Bits<F> {
    /// The current epoch's file.
    pub(crate) file: F,
    pub(crate) epoch: u64,
    pub(crate) nblocks: u64,
    /// Bits set in memory: a superset of the durable ones.
    pub(crate) words: Vec<u64>,
    dirty_pages: BTreeSet<usize>,
    /// Earlier epochs' pages not yet written (see the module docs).
    carried: Vec<Carried<F>>,
    /// Batch that newly set bits join.
    open_batch: u64,
    /// Every batch up to this one is durable.
    durable_batch: u64,
    /// Last batch whose write failed (its waiters get an error).
    failed_batch: u64,
    flushing: bool,
}

impl<F> Bits<F> {
    /// Sets the bits of blocks `first..=last` in memory (durable after [`ChangeSet::commit`]).
    pub(crate) fn set(&mut self, first: u64, last: u64) -> io::Result<()> {
        if last >= self.nblocks {
            return Err(io::Error::other("block beyond the change bitmap"));
        }
        for b in first..=last {
            let w = (b / 64) as usize;
            let bit = 1u64 << (b % 64);
            if self.words[w] & bit == 0 {
                self.words[w] |= bit;
                self.dirty_pages.insert(w / WORDS_PER_PAGE);
            }
        }
        Ok(())
    }
}

pub(crate) struct ChangeSet<F> {
    bits: Mutex<Bits<F>>,
    flushed: Condvar,
    /// The current epoch's bits known to be on disk: the lock-free fast path reads these. Set and
    /// cleared under `bits`' lock; the vector is replaced only by [`ChangeSet::resize`].
    durable: RwLock<Vec<AtomicU64>>,
}

impl<F: Clone> ChangeSet<F> {
    /// The state of a bitmap file just read: `words` are all on disk.
    pub(crate) fn new(file: F, epoch: u64, nblocks: u64, words: Vec<u64>) -> Self {
        let durable = words.iter().map(|&w| AtomicU64::new(w)).collect();
        ChangeSet {
            bits: Mutex::new(Bits {
                file,
                epoch,
                nblocks,
                words,
                dirty_pages: BTreeSet::new(),
                carried: Vec::new(),
                open_batch: 1,
                durable_batch: 0,
                failed_batch: 0,
                flushing: false,
            }),
            flushed: Condvar::new(),
            durable: RwLock::new(durable),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Bits<F>> {
        // Every update keeps the state consistent (plain field stores), so recover from poisoning.
        self.bits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the bits of blocks `first..=last` are on disk (two atomic loads for one block).
    pub(crate) fn all_durable(&self, first: u64, last: u64) -> bool {
        let d = self.durable.read().unwrap_or_else(|p| p.into_inner());
        (first..=last)
            .all(|b| d.get((b / 64) as usize).is_some_and(|w| w.load(Ordering::Acquire) & (1 << (b % 64)) != 0))
    }

    /// Group commit: returns once every bit set so far (under `st`, the caller's lock) is durable,
    /// writing as the leader when no write is running. `write` writes pages to a file and syncs it.
    pub(crate) fn commit<'a>(
        &'a self,
        mut st: MutexGuard<'a, Bits<F>>,
        write: impl Fn(&F, &[Page]) -> io::Result<()>,
    ) -> io::Result<()> {
        // Read under the lock that set the bits: the first batch whose write includes them.
        let target = st.open_batch;
        loop {
            if st.durable_batch >= target {
                return Ok(());
            }
            if st.failed_batch >= target {
                return Err(io::Error::other("change bitmap write failed"));
            }
            if st.flushing {
                st = self.flushed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let batch = st.open_batch;
            st.open_batch += 1;
            let epoch = st.epoch;
            let carried = std::mem::take(&mut st.carried);
            let pages: Vec<Page> = std::mem::take(&mut st.dirty_pages)
                .into_iter()
                .map(|p| (p, encode_page(epoch, p, &st.words)))
                .collect();
            let file = st.file.clone();
            drop(st);
            // Earlier epochs first (bits a cut froze before this batch's), then this epoch's.
            let res = carried
                .iter()
                .try_for_each(|c| write(&c.file, &c.pages))
                .and_then(|()| if pages.is_empty() { Ok(()) } else { write(&file, &pages) });
            st = self.lock();
            st.flushing = false;
            match &res {
                Ok(()) => {
                    st.durable_batch = batch;
                    // After a cut these pages belong to the frozen epoch, not to the current one.
                    if st.epoch == epoch {
                        self.publish(&pages);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "change bitmap write failed");
                    st.failed_batch = batch;
                    // Written again by the next leader, oldest first: a page written twice must
                    // end with its newest encoding.
                    let mut older = carried;
                    if st.epoch == epoch {
                        st.dirty_pages.extend(pages.iter().map(|(p, _)| *p));
                    } else if !pages.is_empty() {
                        // A cut since: these pages are older than any it carried.
                        older.push(Carried { file, pages });
                    }
                    st.carried.splice(0..0, older);
                }
            }
            self.flushed.notify_all();
        }
    }

    /// Marks the bits of written pages durable for the fast path.
    fn publish(&self, pages: &[Page]) {
        let d = self.durable.read().unwrap_or_else(|p| p.into_inner());
        for (p, buf) in pages {
            for i in 0..WORDS_PER_PAGE {
                let Some(slot) = d.get(p * WORDS_PER_PAGE + i) else { break };
                let mut x = [0u8; 8];
                x.copy_from_slice(&buf[i * 8..i * 8 + 8]);
                slot.fetch_or(u64::from_le_bytes(x), Ordering::Release);
            }
        }
    }

    /// Starts the next, empty epoch in `file` (memory only); returns the old epoch and its bits.
    /// Pages of the old epoch not yet written are carried to the next commit, into the old file.
    pub(crate) fn next_epoch(&self, st: &mut Bits<F>, file: F) -> (u64, Vec<u64>) {
        let old = st.epoch;
        let old_file = std::mem::replace(&mut st.file, file);
        if !st.dirty_pages.is_empty() {
            let pages =
                std::mem::take(&mut st.dirty_pages).into_iter().map(|p| (p, encode_page(old, p, &st.words))).collect();
            st.carried.push(Carried { file: old_file, pages });
        }
        st.epoch = old + 1;
        let n = st.words.len();
        let words = std::mem::replace(&mut st.words, vec![0u64; n]);
        for w in self.durable.read().unwrap_or_else(|p| p.into_inner()).iter() {
            w.store(0, Ordering::Release);
        }
        (old, words)
    }

    /// Replaces the current epoch's file by `file`, which holds all of `words` durably (a grown
    /// bitmap).
    pub(crate) fn resize(&self, st: &mut Bits<F>, file: F, nblocks: u64, words: Vec<u64>) {
        let mut d = self.durable.write().unwrap_or_else(|p| p.into_inner());
        *d = words.iter().map(|&w| AtomicU64::new(w)).collect();
        st.file = file;
        st.words = words;
        st.nblocks = nblocks;
        st.dirty_pages.clear();
    }
}

/// Model checks (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-volume --lib --release loom`).
/// The "disk" is a map from (file, page) to the words last written there.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize as StdCounter;

    type Disk = Arc<std::sync::Mutex<HashMap<(u32, usize), Vec<u64>>>>;

    fn on_disk(disk: &Disk, file: u32, block: u64) -> bool {
        let words = disk.lock().unwrap().get(&(file, 0)).cloned().unwrap_or_default();
        words.get((block / 64) as usize).is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    /// Two committers (as two abandoned snapshots returning their bits: they hold no write gate, so
    /// a cut may run meanwhile) and a cut. When `fail_writes` > 0, that many first writes fail and
    /// the committers retry. Each commit that returns Ok has its bit on disk, in the file of the
    /// epoch that holds it; at the end, every bit the fast path reads as durable is on disk in the
    /// current file.
    fn committers_and_a_cut(fail_writes: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            // 128 blocks: one page of file 0 (epoch 0), then file 1 (epoch 1).
            let cs = Arc::new(ChangeSet::new(0u32, 0, 128, vec![0; 2]));
            let disk: Disk = Arc::default();
            let fails = Arc::new(StdCounter::new(fail_writes));
            let committer = |block: u64| {
                let (cs, disk, fails) = (cs.clone(), disk.clone(), fails.clone());
                move || {
                    let mut st = cs.lock();
                    st.set(block, block).unwrap();
                    loop {
                        let r = cs.commit(st, |file: &u32, pages: &[Page]| {
                            if fails.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                                fails.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                                return Err(io::Error::other("injected"));
                            }
                            for (p, buf) in pages {
                                let words = (0..2)
                                    .map(|i| {
                                        let mut x = [0u8; 8];
                                        x.copy_from_slice(&buf[i * 8..i * 8 + 8]);
                                        u64::from_le_bytes(x)
                                    })
                                    .collect();
                                disk.lock().unwrap().insert((*file, *p), words);
                            }
                            Ok(())
                        });
                        if r.is_ok() {
                            break;
                        }
                        st = cs.lock();
                    }
                    assert!(
                        on_disk(&disk, 0, block) || on_disk(&disk, 1, block),
                        "block {block}'s commit returned before its bit was on disk"
                    );
                }
            };
            let t1 = loom::thread::spawn(committer(1));
            let t2 = loom::thread::spawn(committer(70));
            let (_, frozen) = {
                let mut st = cs.lock();
                cs.next_epoch(&mut st, 1u32)
            };
            t1.join().unwrap();
            t2.join().unwrap();
            let st = cs.lock();
            for block in [1u64, 70] {
                let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
                if frozen[w] & bit != 0 {
                    assert!(on_disk(&disk, 0, block), "frozen block {block} is not in the frozen file");
                } else {
                    assert!(st.words[w] & bit != 0, "block {block} is in neither epoch");
                    assert!(on_disk(&disk, 1, block), "block {block} is not in the current file");
                }
            }
            drop(st);
            for block in 0..128 {
                if cs.all_durable(block, block) {
                    assert!(on_disk(&disk, 1, block), "block {block} reads durable but is not in the current file");
                }
            }
        });
    }

    #[test]
    fn loom_cbt_commit_across_a_cut() {
        committers_and_a_cut(0);
    }

    #[test]
    fn loom_cbt_commit_failed_write_across_a_cut() {
        committers_and_a_cut(1);
    }
}
