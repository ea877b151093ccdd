//! Recent traffic of one destination or endpoint, for `breakwater status` and the
//! admin page: requests per second, success rate, latency quantiles and failures by
//! reason over the last half minute to minute, computed in the proxy.
//!
//! Prometheus has the long history; this answers "what is it doing now?" without
//! one. Two 30-second windows, the current one and the one before it, are read
//! together: one lock and a few additions per request. The kilobyte they take is
//! allocated with the first request, so endpoints never used cost a pointer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// How long one window lasts; a reading covers the last one to two of them.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Latency buckets: four per doubling of the latency in microseconds, up to
/// about 71 minutes; a quantile reads as its bucket's upper edge (at most 25 %
/// late).
pub const BUCKETS: usize = 128;

/// The bucket of a latency: the doubling (its highest bit in microseconds)
/// and which quarter of it (the next two bits).
pub fn bucket(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let octave = 63 - us.leading_zeros() as usize;
    let quarter = if octave >= 2 {
        (us >> (octave - 2)) & 3
    } else {
        (us << (2 - octave)) & 3
    } as usize;
    (octave * 4 + quarter).min(BUCKETS - 1)
}

/// The upper edge of bucket `i`: 2^octave × (1 + (quarter+1)/4) microseconds.
pub fn upper_edge(i: usize) -> Duration {
    let (octave, quarter) = (i / 4, i % 4);
    let base = 1u64 << octave;
    Duration::from_micros(base + base * (quarter as u64 + 1) / 4)
}

/// The `q` quantile of bucket counts, as a bucket's upper edge; `None` when empty.
pub fn quantile(counts: impl Fn(usize) -> u64, q: f64) -> Option<Duration> {
    let total: u64 = (0..BUCKETS).map(&counts).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for i in 0..BUCKETS {
        seen += counts(i);
        if seen >= rank {
            return Some(upper_edge(i));
        }
    }
    Some(upper_edge(BUCKETS - 1))
}

/// One window's counts.
#[derive(Clone)]
struct Counts {
    requests: u32,
    failures: u32,
    retries: u32,
    retries_skipped: u32,
    latency: [u32; BUCKETS],
    /// Failures by reason; a handful at most, so a list.
    reasons: Vec<(&'static str, u32)>,
}

impl Counts {
    const EMPTY: Counts = Counts {
        requests: 0,
        failures: 0,
        retries: 0,
        retries_skipped: 0,
        latency: [0; BUCKETS],
        reasons: Vec::new(),
    };
}

struct Windows {
    started: Instant,
    current: Counts,
    previous: Counts,
    /// Whether there was a window before the current one (not so in the first):
    /// then a reading spans it too.
    previous_valid: bool,
}

impl Windows {
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < WINDOW {
            return;
        }
        // The window just before the new one: the current one, or an empty one
        // when a quiet spell came between.
        self.previous = if age < 2 * WINDOW {
            std::mem::replace(&mut self.current, Counts::EMPTY)
        } else {
            self.current = Counts::EMPTY;
            Counts::EMPTY
        };
        self.previous_valid = true;
        // Windows start on multiples of WINDOW from the first, so that a quiet
        // spell does not shift them.
        let whole = age.as_nanos() / WINDOW.as_nanos();
        let step = WINDOW.saturating_mul(u32::try_from(whole).unwrap_or(u32::MAX));
        self.started += step;
    }
}

/// The recent traffic of one destination or endpoint.
pub struct RecentTraffic {
    windows: Mutex<Option<Box<Windows>>>,
    usage: Usage,
}

/// Requests begun and ended under one destination state, and when the last
/// one ended: what the registry's idle sweep and its eviction past
/// `--max-destinations` read. Its own, not the metrics', since destinations
/// past `--metrics-max-destinations` share their series.
#[derive(Default)]
pub struct Usage {
    begun: AtomicU64,
    ended: AtomicU64,
    /// Milliseconds from [`epoch`] to the end of the last request.
    last_ended: AtomicU64,
}

/// The moment [`Usage::last_ended`] counts from: the first time asked.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Usage {
    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self, now: Instant) {
        let ms = now.saturating_duration_since(epoch()).as_millis();
        self.last_ended
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests have ended so far.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight. `ended` is read first: a request that
    /// ends between the two reads is seen as still in flight, never the
    /// other way round.
    pub fn in_flight(&self) -> bool {
        let ended = self.ended.load(Ordering::Relaxed);
        self.begun.load(Ordering::Relaxed) > ended
    }

    /// When the last request ended, for least-recently-used eviction: lower
    /// is longer ago; 0 if none ever did.
    pub fn last_ended(&self) -> u64 {
        self.last_ended.load(Ordering::Relaxed)
    }
}

/// A reading of [`RecentTraffic`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recent {
    /// The seconds the reading covers.
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    /// Of the requests that ended; `None` when there were none.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub retries: u64,
    pub retries_skipped: u64,
    /// Failures by reason, most first.
    pub failures: Vec<(String, u64)>,
}

impl Default for RecentTraffic {
    fn default() -> Self {
        Self::new()
    }
}

impl RecentTraffic {
    pub fn new() -> Self {
        RecentTraffic {
            windows: Mutex::new(None),
            usage: Usage::default(),
        }
    }

    /// What the registry reads to tell an idle destination.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Runs `f` on the windows, made at `now` if there were none.
    fn with<R>(&self, now: Instant, f: impl FnOnce(&mut Windows) -> R) -> R {
        let mut guard = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = guard.get_or_insert_with(|| {
            Box::new(Windows {
                started: now,
                current: Counts::EMPTY,
                previous: Counts::EMPTY,
                previous_valid: false,
            })
        });
        w.roll(now);
        f(w)
    }

    /// A request (or attempt) that ended after `latency`; `failure` names why it
    /// failed, if it did.
    pub fn record(&self, latency: Duration, failure: Option<&'static str>, now: Instant) {
        let b = bucket(latency);
        self.with(now, |w| {
            let c = &mut w.current;
            c.requests = c.requests.saturating_add(1);
            c.latency[b] = c.latency[b].saturating_add(1);
            if let Some(reason) = failure {
                c.failures = c.failures.saturating_add(1);
                match c.reasons.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n = n.saturating_add(1),
                    None => c.reasons.push((reason, 1)),
                }
            }
        });
    }

    /// A retry sent, or one the budget (or the body) did not allow.
    pub fn record_retry(&self, sent: bool, now: Instant) {
        self.with(now, |w| {
            let c = &mut w.current;
            if sent {
                c.retries = c.retries.saturating_add(1);
            } else {
                c.retries_skipped = c.retries_skipped.saturating_add(1);
            }
        });
    }

    /// The last half minute to minute; `None` when nothing was ever recorded.
    pub fn read(&self, now: Instant) -> Option<Recent> {
        if self
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return None;
        }
        Some(self.with(now, |w| {
            let age = now.saturating_duration_since(w.started);
            let (prev, span) = if w.previous_valid {
                (&w.previous, WINDOW + age)
            } else {
                (&Counts::EMPTY, age)
            };
            let cur = &w.current;
            let sum = |f: fn(&Counts) -> u32| u64::from(f(cur)) + u64::from(f(prev));
            let requests = sum(|c| c.requests);
            let failures = sum(|c| c.failures);
            let counts = |i: usize| u64::from(cur.latency[i]) + u64::from(prev.latency[i]);
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let mut reasons: Vec<(String, u64)> = Vec::new();
            for (reason, n) in cur.reasons.iter().chain(&prev.reasons) {
                match reasons.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, total)) => *total += u64::from(*n),
                    None => reasons.push(((*reason).to_string(), u64::from(*n))),
                }
            }
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            // A reading a moment after start would divide by almost nothing.
            let seconds = span.as_secs_f64().max(1.0);
            Recent {
                seconds: span.as_secs_f64(),
                requests,
                requests_per_second: requests as f64 / seconds,
                success_rate: (requests > 0)
                    .then(|| (requests - failures.min(requests)) as f64 / requests as f64),
                p50_ms: quantile(counts, 0.5).map(ms),
                p99_ms: quantile(counts, 0.99).map(ms),
                retries: sum(|c| c.retries),
                retries_skipped: sum(|c| c.retries_skipped),
                failures: reasons,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn buckets_are_ordered_and_edges_bound_them() {
        let mut last = 0;
        for us in [
            1,
            2,
            3,
            5,
            8,
            100,
            999,
            1_000,
            2_500,
            12_345,
            1_000_000,
            3_600_000_000,
        ] {
            let d = Duration::from_micros(us);
            let b = bucket(d);
            assert!(b >= last, "{us}");
            assert!(upper_edge(b) >= d, "{us}: edge {:?}", upper_edge(b));
            assert!(upper_edge(b) <= d * 2 + Duration::from_micros(1), "{us}");
            last = b;
        }
        assert_eq!(bucket(Duration::from_secs(1_000_000)), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_covers_the_last_windows_and_forgets_older_ones() {
        let start = Instant::now();
        let recent = RecentTraffic::new();
        assert_eq!(recent.read(start), None);
        for i in 0..100u32 {
            let failure = (i % 10 == 0).then_some("connect-failure");
            let latency = if i < 98 { 10 * MS } else { 900 * MS };
            recent.record(
                latency,
                failure,
                start + Duration::from_millis(u64::from(i) * 100),
            );
        }
        recent.record_retry(true, start);
        recent.record_retry(false, start);
        let r = recent
            .read(start + Duration::from_secs(10))
            .expect("a reading");
        assert_eq!(r.requests, 100);
        assert!((r.requests_per_second - 10.0).abs() < 0.01, "{r:?}");
        assert_eq!(r.success_rate, Some(0.9));
        let p50 = r.p50_ms.expect("p50");
        assert!((10.0..=12.5).contains(&p50), "{r:?}");
        assert!(r.p99_ms.expect("p99") >= 900.0, "{r:?}");
        assert_eq!(r.failures, [("connect-failure".to_string(), 10)]);
        assert_eq!((r.retries, r.retries_skipped), (1, 1));

        // The next window: the last one still counts, and the rate spans both.
        let later = start + WINDOW + Duration::from_secs(15);
        recent.record(5 * MS, Some("reset"), later);
        let r = recent.read(later).expect("a reading");
        assert_eq!(r.requests, 101);
        assert!((r.seconds - 45.0).abs() < 0.01, "{r:?}");
        assert_eq!(r.failures[0], ("connect-failure".to_string(), 10));
        assert_eq!(r.failures[1], ("reset".to_string(), 1));

        // Two quiet windows later, nothing of it is left.
        let quiet = later + 3 * WINDOW;
        let r = recent.read(quiet).expect("a reading");
        assert_eq!(r.requests, 0);
        assert!(r.failures.is_empty());
        assert_eq!(r.p99_ms, None);
    }
}
