//! The engine's time. Every timestamp the engine writes and every expiry it checks (recycle bin
//! retention, snapshot locks, temporary restores, lifecycle schedules, block tokens) reads
//! [`now_millis`]: the wall clock plus an offset that only a test clock moves.
//!
//! The test clock exists so that tests can cross days of retention without waiting: a server
//! started with `BLOCKSNAP_TEST_CLOCK=1` (`EngineConfig::test_clock`) serves an AdvanceClock call to
//! the root account that moves this process's time forward (never back). Without it the offset stays
//! zero and nothing can change it. The offset is process-wide (one engine per process); SigV4 checks
//! keep using the real wall clock, since clients sign with theirs.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::model::Millis;

/// Milliseconds the test clock has been moved forward.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The most one AdvanceClock call may move the clock (about ten years): enough for any retention,
/// and far from overflowing milliseconds.
pub const MAX_ADVANCE_SECS: u64 = 10 * 366 * 24 * 3600;

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_millis() -> Millis {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The engine's time: what AWS timestamps resolve to (milliseconds since the Unix epoch).
pub fn now_millis() -> Millis {
    wall_millis().saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Moves the engine's time forward by `secs` (at most [`MAX_ADVANCE_SECS`]) and answers the new
/// time. Only reachable through [`crate::Engine::advance_test_clock`], which checks that the test
/// clock is enabled and the caller is root.
pub(crate) fn advance(secs: u64) -> Millis {
    let ms = (secs.min(MAX_ADVANCE_SECS) as i64).saturating_mul(1000);
    OFFSET_MS.fetch_add(ms, Ordering::Relaxed);
    now_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_time_forward_by_at_least_the_amount() {
        let before = now_millis();
        let after = advance(3600);
        assert!(after >= before + 3_600_000, "{before} -> {after}");
        assert!(now_millis() >= after);
    }
}
