//! The breaker's sliding window: calls, failures and slow calls over the last
//! `--breaker-window`, kept in a fixed ring of buckets so that recording a call
//! costs a few additions and never allocates.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window. Ten keeps the window's edge accurate to a tenth of its
/// length (one second at the default 10s), which is finer than any rule needs.
const BUCKETS: usize = 10;

/// What the window holds at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The bucket's tick plus one, so that the zeroed bucket of a new window
    /// never matches a real tick.
    tick: u64,
    counts: Counts,
}

/// The window covers the current bucket and the nine before it: between nine
/// and ten tenths of `--breaker-window`, depending on where in the current
/// bucket `now` falls (resilience4j's time-based window does the same).
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    width_ns: u128,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    pub fn new(length: Duration, origin: Instant) -> Self {
        Window {
            origin,
            // A zero window is refused at start-up; one nanosecond keeps the
            // division defined if one ever gets here.
            width_ns: (length.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.width_ns).unwrap_or(u64::MAX - 1) + 1
    }

    pub fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        let tick = self.tick(now);
        let bucket = &mut self.buckets[(tick % BUCKETS as u64) as usize];
        if bucket.tick != tick {
            *bucket = Bucket {
                tick,
                counts: Counts::default(),
            };
        }
        let c = &mut bucket.counts;
        c.calls = c.calls.saturating_add(1);
        c.failures = c.failures.saturating_add(u32::from(failure));
        c.slow = c.slow.saturating_add(u32::from(slow));
    }

    pub fn counts(&self, now: Instant) -> Counts {
        let tick = self.tick(now);
        let oldest = tick.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=tick).contains(&b.tick))
            .fold(Counts::default(), |acc, b| Counts {
                calls: acc.calls.saturating_add(b.counts.calls),
                failures: acc.failures.saturating_add(b.counts.failures),
                slow: acc.slow.saturating_add(b.counts.slow),
            })
    }

    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn calls_leave_the_window_a_window_later() {
        let t0 = Instant::now();
        let mut w = Window::new(10 * SEC, t0);
        w.record(t0, true, false);
        w.record(t0 + 5 * SEC, false, true);
        let expected = Counts {
            calls: 2,
            failures: 1,
            slow: 1,
        };
        assert_eq!(w.counts(t0 + 9 * SEC), expected);
        assert_eq!(
            w.counts(t0 + 10 * SEC),
            Counts {
                calls: 1,
                failures: 0,
                slow: 1
            },
            "the first call is ten seconds old"
        );
        assert_eq!(w.counts(t0 + 15 * SEC), Counts::default());
    }

    #[test]
    fn a_reused_bucket_forgets_its_old_counts() {
        let t0 = Instant::now();
        let mut w = Window::new(10 * SEC, t0);
        w.record(t0, true, false);
        // Same ring slot, one lap later.
        w.record(t0 + 10 * SEC, false, false);
        assert_eq!(
            w.counts(t0 + 10 * SEC),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn clear_empties_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(10 * SEC, t0);
        w.record(t0, true, true);
        w.clear();
        assert_eq!(w.counts(t0), Counts::default());
    }

    #[test]
    fn a_long_idle_gap_does_not_resurrect_old_buckets() {
        let t0 = Instant::now();
        let mut w = Window::new(10 * SEC, t0);
        w.record(t0 + 3 * SEC, true, false);
        assert_eq!(w.counts(t0 + 1003 * SEC), Counts::default());
    }
}
