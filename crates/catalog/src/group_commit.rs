//! Group commit: commits are numbered as they are made; `sync(n)` returns once commit `n` is durable.
//! Concurrent callers share one flush: the first caller that finds no flush running leads (it flushes
//! everything committed so far, without holding the lock), the others wait for it and find their
//! commit covered. A failed flush covers nothing; the next caller leads again.
//!
//! Model-checked with loom (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-catalog --lib --release
//! loom`, run by `tests/run`).

use std::io;

#[cfg(loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex, MutexGuard};

struct Seq {
    /// The newest commit's number.
    committed: u64,
    /// Every commit up to this one is durable.
    durable: u64,
    /// A leader is flushing.
    syncing: bool,
}

pub(crate) struct GroupCommit {
    seq: Mutex<Seq>,
    synced: Condvar,
}

impl GroupCommit {
    pub(crate) fn new() -> Self {
        GroupCommit { seq: Mutex::new(Seq { committed: 0, durable: 0, syncing: false }), synced: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Seq> {
        self.seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers a commit just made (call it after the commit, in commit order).
    pub(crate) fn committed(&self) -> u64 {
        let mut s = self.lock();
        s.committed += 1;
        s.committed
    }

    /// The newest commit's number.
    pub(crate) fn last(&self) -> u64 {
        self.lock().committed
    }

    /// Every commit up to this one is durable.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// Makes every commit up to `upto` durable: at once if it already is, else by waiting for the
    /// running flush or by running `flush` as the leader.
    pub(crate) fn sync(&self, upto: u64, flush: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.lock();
        loop {
            if st.durable >= upto {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        // Leader: one flush covers every commit made so far.
        st.syncing = true;
        let target = st.committed;
        drop(st);
        let result = flush();
        let mut st = self.lock();
        st.syncing = false;
        if result.is_ok() {
            st.durable = st.durable.max(target);
        }
        drop(st);
        self.synced.notify_all();
        result
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    /// Two committers syncing at once, the first flush may fail: each sync returns only after a
    /// flush that started after its commit has finished (flushes run one at a time, so counting
    /// finished flushes against those started before the commit proves it), and nobody waits for ever.
    #[test]
    fn loom_two_committers_share_flushes() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let g = Arc::new(GroupCommit::new());
            let started = Arc::new(AtomicUsize::new(0));
            let finished = Arc::new(AtomicUsize::new(0));
            let committer = |fail_first: bool| {
                let (g, started, finished) = (g.clone(), started.clone(), finished.clone());
                move || {
                    let before = started.load(Ordering::SeqCst);
                    let n = g.committed();
                    let mut first = fail_first;
                    loop {
                        let r = g.sync(n, || {
                            started.fetch_add(1, Ordering::SeqCst);
                            let fail = std::mem::take(&mut first);
                            finished.fetch_add(1, Ordering::SeqCst);
                            if fail { Err(io::Error::other("injected")) } else { Ok(()) }
                        });
                        if r.is_ok() {
                            break;
                        }
                    }
                    assert!(finished.load(Ordering::SeqCst) > before, "commit {n} reported durable too early");
                }
            };
            let t = loom::thread::spawn(committer(true));
            committer(false)();
            t.join().unwrap();
            assert!(started.load(Ordering::SeqCst) <= 3);
            let durable = g.lock().durable;
            assert_eq!(durable, g.last(), "every commit is durable at the end");
        });
    }
}
