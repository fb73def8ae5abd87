//! The write gate: writers hold a cheap shared side, a snapshot cut holds the
//! exclusive side (new writes wait, in-flight writes drain).
//!
//! # Protocol
//!
//! `state` is one word: the high bit (`GATED`) is set while a cutter holds
//! (or is acquiring) the gate; the low bits count writers inside.
//!
//! * A writer enters with one `fetch_add`. If `GATED` was set it backs out
//!   (`exit`) and waits on the condvar until the bit clears.
//! * A cutter sets `GATED` under the mutex (only one cutter at a time: a second
//!   one waits until the first opens), then waits until the writer count is 0.
//! * Every state change that a waiter may be waiting for is followed by taking
//!   the mutex and `notify_all`, so a check made under the mutex never misses
//!   its wakeup.
//!
//! # Bounds
//!
//! Cutters never wait unboundedly: [`Gate::begin_close_until`] and
//! [`Gate::wait_drained_until`] take a deadline and report `false` when it
//! passes; the cutter then gives up with [`Gate::open`] (abandoning the cut),
//! which is always safe, drained or not. A writer waits only while a cutter
//! holds the gate, so its wait is bounded by the cutter's deadline plus the
//! few renames of a cut's commit.
//!
//! The protocol is model-checked with loom (`tests` below, under `--cfg loom`:
//! `bench/loom` runs them).

use std::time::Instant;

use crate::sync::{AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};

/// High bit set while a gate is held (or being acquired); the low bits count
/// writers currently inside.
const GATED: usize = 1 << (usize::BITS - 1);

#[derive(Default)]
pub(crate) struct Gate {
    state: AtomicUsize,
    mutex: Mutex<()>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned one is still usable.
        self.mutex.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the condvar until `deadline` (or forever without one). `false` when the deadline
    /// has passed.
    fn wait<'a>(&self, g: MutexGuard<'a, ()>, deadline: Option<Instant>) -> (MutexGuard<'a, ()>, bool) {
        match deadline {
            None => (self.cv.wait(g).unwrap_or_else(|p| p.into_inner()), true),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (g, false);
                }
                let (g, _) = self.cv.wait_timeout(g, d - now).unwrap_or_else(|p| p.into_inner());
                (g, true)
            }
        }
    }

    fn notify(&self) {
        // Taking the mutex orders this wakeup after any waiter's check, so
        // no wakeup is lost.
        drop(self.lock());
        self.cv.notify_all();
    }

    /// Enters the shared (writer) side, waiting while a gate is held.
    pub(crate) fn enter(&self) {
        loop {
            let prev = self.state.fetch_add(1, Ordering::Acquire);
            if prev & GATED == 0 {
                return;
            }
            self.exit();
            let mut g = self.lock();
            while self.state.load(Ordering::Acquire) & GATED != 0 {
                g = self.wait(g, None).0;
            }
        }
    }

    /// Enters the shared side only if no gate is held; never waits. On `false` nothing is held
    /// and the caller must not call [`Gate::exit`].
    pub(crate) fn try_enter(&self) -> bool {
        let prev = self.state.fetch_add(1, Ordering::Acquire);
        if prev & GATED == 0 {
            return true;
        }
        self.exit();
        false
    }

    /// Leaves the shared side.
    pub(crate) fn exit(&self) {
        let prev = self.state.fetch_sub(1, Ordering::Release);
        debug_assert!(prev & !GATED != 0, "gate exit without a matching enter");
        if prev == GATED | 1 {
            // Last writer out while a gate waits for the drain.
            self.notify();
        }
    }

    /// First half of a cut: new writers wait from now on (in-flight ones go on). Several gates
    /// can be begun before any is drained, so a multi-volume cut waits for the slowest in-flight
    /// write, not for the sum of them. Waits for another cutter to open the gate until `deadline`;
    /// `false` if it did not (nothing is held then).
    pub(crate) fn begin_close_until(&self, deadline: Option<Instant>) -> bool {
        let mut g = self.lock();
        // One gate at a time: the bit is only set under the mutex.
        while self.state.load(Ordering::Acquire) & GATED != 0 {
            let (next, in_time) = self.wait(g, deadline);
            g = next;
            if !in_time {
                return false;
            }
        }
        self.state.fetch_or(GATED, Ordering::AcqRel);
        true
    }

    /// Second half of a cut: waits until no writer is inside, until `deadline`. `false` if the
    /// writers did not drain in time: the gate is still held and the caller must [`Gate::open`] it.
    pub(crate) fn wait_drained_until(&self, deadline: Option<Instant>) -> bool {
        let mut g = self.lock();
        while self.state.load(Ordering::Acquire) != GATED {
            let (next, in_time) = self.wait(g, deadline);
            g = next;
            if !in_time {
                return false;
            }
        }
        true
    }

    /// Releases the exclusive side (after a cut, or to abandon one that did not drain in time).
    pub(crate) fn open(&self) {
        let prev = self.state.fetch_and(!GATED, Ordering::Release);
        debug_assert!(prev & GATED != 0, "gate opened while not held");
        self.notify();
    }

    #[cfg(test)]
    pub(crate) fn raw_state(&self) -> usize {
        self.state.load(Ordering::SeqCst)
    }
}

/// Writer-side guard (internal).
pub(crate) struct WriterGuard<'a>(&'a Gate);

impl<'a> WriterGuard<'a> {
    pub(crate) fn new(gate: &'a Gate) -> Self {
        gate.enter();
        WriterGuard(gate)
    }

    /// A guard only when the gate is open; never waits. (Built only after a successful
    /// `try_enter`: a guard made and dropped on failure would `exit` twice and underflow the
    /// writer count into the `GATED` bit, closing the gate for good.)
    pub(crate) fn try_new(gate: &'a Gate) -> Option<Self> {
        if gate.try_enter() { Some(WriterGuard(gate)) } else { None }
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn close(g: &Gate) {
        assert!(g.begin_close_until(None));
        assert!(g.wait_drained_until(None));
    }

    #[test]
    fn gate_drains_and_blocks() {
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(AtomicBool::new(false));
        gate.enter();
        let g2 = gate.clone();
        let i2 = inside.clone();
        let t = std::thread::spawn(move || {
            close(&g2);
            i2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!inside.load(Ordering::SeqCst), "gate must wait for the writer");
        gate.exit();
        t.join().unwrap();
        assert!(inside.load(Ordering::SeqCst));
        // A writer now waits until the gate opens.
        let entered = Arc::new(AtomicBool::new(false));
        let (g3, e3) = (gate.clone(), entered.clone());
        let w = std::thread::spawn(move || {
            g3.enter();
            e3.store(true, Ordering::SeqCst);
            g3.exit();
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst));
        gate.open();
        w.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
        assert_eq!(gate.raw_state(), 0);
    }

    /// The bug of issue 11: a failed `try_new` must leave the writer count untouched, so the gate
    /// opens again and later writers and cutters pass.
    #[test]
    fn failed_try_new_leaves_the_count_alone() {
        let gate = Gate::default();
        close(&gate);
        for _ in 0..3 {
            assert!(WriterGuard::try_new(&gate).is_none());
        }
        assert_eq!(gate.raw_state(), GATED, "a failed try_new changed the writer count");
        gate.open();
        assert_eq!(gate.raw_state(), 0);
        drop(WriterGuard::try_new(&gate).expect("the gate is open"));
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert!(gate.begin_close_until(deadline));
        assert!(gate.wait_drained_until(deadline), "the gate must drain: no writer is inside");
        gate.open();
    }

    #[test]
    fn drain_times_out_and_the_cut_is_abandoned() {
        let gate = Gate::default();
        let w = WriterGuard::new(&gate);
        let deadline = Some(Instant::now() + Duration::from_millis(30));
        assert!(gate.begin_close_until(deadline));
        assert!(!gate.wait_drained_until(deadline), "a writer is inside: the drain cannot finish");
        gate.open();
        // The writer was never disturbed; new writers pass again.
        drop(w);
        drop(WriterGuard::new(&gate));
        assert_eq!(gate.raw_state(), 0);
    }

    #[test]
    fn second_cutter_gives_up_at_its_deadline() {
        let gate = Gate::default();
        close(&gate);
        let deadline = Some(Instant::now() + Duration::from_millis(30));
        assert!(!gate.begin_close_until(deadline));
        assert_eq!(gate.raw_state(), GATED);
        gate.open();
        assert!(gate.begin_close_until(Some(Instant::now() + Duration::from_secs(5))));
        gate.open();
    }
}

/// Model checks of the gate protocol (`RUSTFLAGS="--cfg loom" cargo test -p blocksnap-volume
/// --lib --release loom`). loom's `wait_timeout` never times out, so a timed-out drain is
/// modelled by a cutter that opens without waiting (the abandon path).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize as Counter;

    /// Writers inside and cutters holding, checked against each other.
    #[derive(Default)]
    struct Probe {
        writers: Counter,
        cutters: Counter,
    }

    fn write(gate: &Gate, p: &Probe) {
        let _w = WriterGuard::new(gate);
        p.writers.fetch_add(1, Ordering::SeqCst);
        assert_eq!(p.cutters.load(Ordering::SeqCst), 0, "a writer ran inside a drained cut");
        p.writers.fetch_sub(1, Ordering::SeqCst);
    }

    fn try_write(gate: &Gate, p: &Probe) {
        if let Some(_w) = WriterGuard::try_new(gate) {
            p.writers.fetch_add(1, Ordering::SeqCst);
            assert_eq!(p.cutters.load(Ordering::SeqCst), 0, "a fast writer ran inside a drained cut");
            p.writers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn cut(gate: &Gate, p: &Probe) {
        assert!(gate.begin_close_until(None));
        assert!(gate.wait_drained_until(None));
        assert_eq!(p.cutters.fetch_add(1, Ordering::SeqCst), 0, "two cutters held one gate");
        assert_eq!(p.writers.load(Ordering::SeqCst), 0, "the drain let a writer stay inside");
        p.cutters.fetch_sub(1, Ordering::SeqCst);
        gate.open();
    }

    /// Every interleaving with up to three preemptions (tokio's suites use two): enough for each
    /// thread to be interrupted between every pair of its atomic steps in these small models.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// A cutter that gives up: opens without waiting for the drain (a timed-out cut).
    fn abandon(gate: &Gate, _p: &Probe) {
        assert!(gate.begin_close_until(None));
        gate.open();
    }

    type Step = fn(&Gate, &Probe);

    /// Runs `a` and `b` on two threads and `main` on this one, over one gate; once all are done the
    /// gate counts nothing (a lost or doubled exit shows here).
    fn three(a: Step, b: Step, main: Step) -> (Arc<Gate>, Arc<Probe>) {
        let gate = Arc::new(Gate::default());
        let p = Arc::new(Probe::default());
        let threads: Vec<_> = [a, b]
            .into_iter()
            .map(|f| {
                let (g, p) = (gate.clone(), p.clone());
                loom::thread::spawn(move || f(&g, &p))
            })
            .collect();
        main(&gate, &p);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.raw_state(), 0);
        (gate, p)
    }

    #[test]
    fn loom_two_writers_and_a_cutter() {
        model(|| {
            three(write, try_write, cut);
        });
    }

    #[test]
    fn loom_two_cutters_and_a_writer() {
        model(|| {
            three(cut, try_write, cut);
        });
    }

    /// The abandon path: a cutter that gives up while writers enter, back out and wait; afterwards
    /// a full cut still drains.
    #[test]
    fn loom_abandoned_cut_and_two_writers() {
        model(|| {
            let (gate, p) = three(write, try_write, abandon);
            cut(&gate, &p);
        });
    }
}
