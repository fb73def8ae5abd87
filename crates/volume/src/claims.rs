//! Claims on named things, one holder per name at a time. The engine claims volumes for the
//! operations that hold their write gates (snapshot cuts, resizes), so two cuts never prepare the
//! same volume's next epoch at once, and Lightsail claims an account's names while it checks and
//! takes them.
//!
//! A caller claims all of its names in one step (all or nothing, never holding some while waiting
//! for others); a caller that nests claims takes them in one fixed order (an account's Lightsail
//! claim before volume claims, never the reverse). So claims cannot deadlock; and every wait has a
//! deadline.

use std::collections::HashSet;
use std::time::Instant;

use crate::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub struct Claims {
    held: Mutex<HashSet<String>>,
    cv: Condvar,
}

/// Held claims; dropping it releases them and wakes waiters.
pub struct Claim<'a> {
    claims: &'a Claims,
    ids: Vec<String>,
}

impl Claims {
    fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims every volume in `ids` at once, waiting for current holders until `deadline`. `None`
    /// when some volume was still claimed at the deadline (nothing is held then).
    pub fn claim(&self, ids: &[String], deadline: Instant) -> Option<Claim<'_>> {
        let mut held = self.held();
        while ids.iter().any(|id| held.contains(id)) {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            held = self.cv.wait_timeout(held, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        let mut taken = Vec::with_capacity(ids.len());
        for id in ids {
            if held.insert(id.clone()) {
                taken.push(id.clone());
            }
        }
        Some(Claim { claims: self, ids: taken })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.held();
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.claims.cv.notify_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlapping_claims_wait_and_time_out() {
        let c = Claims::default();
        let a = c.claim(&ids(&["vol-a", "vol-b"]), Instant::now()).expect("free");
        assert!(c.claim(&ids(&["vol-b", "vol-c"]), Instant::now() + Duration::from_millis(20)).is_none());
        // Disjoint claims pass; the same id twice in one claim is one claim.
        let d = c.claim(&ids(&["vol-c", "vol-c"]), Instant::now()).expect("disjoint");
        drop(a);
        assert!(c.claim(&ids(&["vol-a", "vol-b"]), Instant::now()).is_some());
        drop(d);
        assert!(c.held().is_empty());
    }

    #[test]
    fn a_waiter_is_woken_by_the_release() {
        let c = std::sync::Arc::new(Claims::default());
        let held = c.claim(&ids(&["vol-a"]), Instant::now()).expect("free");
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            c2.claim(&ids(&["vol-a"]), Instant::now() + Duration::from_secs(10)).map(|_| ()).is_some()
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert!(t.join().unwrap());
    }
}

/// Model check: crossing multi-volume claims never deadlock, never overlap, never leak.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn loom_crossing_claims() {
        loom::model(|| {
            let c = Arc::new(Claims::default());
            let on_b = Arc::new(AtomicUsize::new(0));
            let far = || Instant::now() + std::time::Duration::from_secs(3600);
            let (c1, b1) = (c.clone(), on_b.clone());
            let t = loom::thread::spawn(move || {
                let ids = vec!["a".to_string(), "b".to_string()];
                let _g = c1.claim(&ids, far()).expect("no deadline in the model");
                assert_eq!(b1.fetch_add(1, Ordering::SeqCst), 0, "two holders of b");
                b1.fetch_sub(1, Ordering::SeqCst);
            });
            {
                let ids = vec!["b".to_string(), "c".to_string()];
                let _g = c.claim(&ids, far()).expect("no deadline in the model");
                assert_eq!(on_b.fetch_add(1, Ordering::SeqCst), 0, "two holders of b");
                on_b.fetch_sub(1, Ordering::SeqCst);
            }
            t.join().unwrap();
            assert!(c.held().is_empty());
        });
    }
}
