//! The write gate: writers hold a cheap shared side, a snapshot cut holds the
//! exclusive side (new writes wait, in-flight writes drain).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

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
        self.mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
                g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Enters the shared side only if no gate is held; never waits.
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
        if prev == GATED | 1 {
            // Last writer out while a gate waits for the drain.
            self.notify();
        }
    }

    /// Takes the exclusive side: blocks new writers, waits for in-flight ones.
    pub(crate) fn close(&self) {
        self.begin_close();
        self.wait_drained();
    }

    /// First half of [`Gate::close`]: new writers wait from now on (in-flight ones go on). Several
    /// gates can be begun before any is drained, so a multi-volume cut waits for the slowest
    /// in-flight write, not for the sum of them.
    pub(crate) fn begin_close(&self) {
        let mut g = self.lock();
        // One gate at a time: the bit is only set under the mutex.
        while self.state.load(Ordering::Acquire) & GATED != 0 {
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        self.state.fetch_or(GATED, Ordering::AcqRel);
    }

    /// Second half of [`Gate::close`]: wait until no writer is inside.
    pub(crate) fn wait_drained(&self) {
        let mut g = self.lock();
        while self.state.load(Ordering::Acquire) != GATED {
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Releases the exclusive side.
    pub(crate) fn open(&self) {
        self.state.fetch_and(!GATED, Ordering::Release);
        self.notify();
    }
}

/// Writer-side guard (internal).
pub(crate) struct WriterGuard<'a>(&'a Gate);

impl<'a> WriterGuard<'a> {
    pub(crate) fn new(gate: &'a Gate) -> Self {
        gate.enter();
        WriterGuard(gate)
    }
}

impl<'a> WriterGuard<'a> {
    pub(crate) fn try_new(gate: &'a Gate) -> Option<Self> {
        gate.try_enter().then_some(WriterGuard(gate))
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.0.exit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn gate_drains_and_blocks() {
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(AtomicBool::new(false));
        gate.enter();
        let g2 = gate.clone();
        let i2 = inside.clone();
        let t = std::thread::spawn(move || {
            g2.close();
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
    }
}
