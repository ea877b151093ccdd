//! `--max-concurrent auto`: the bulkhead limit found from observed latency, a
//! gradient limiter after Netflix concurrency-limits' Gradient2.
//!
//! Why a gradient and not plain AIMD: AIMD only learns of overload from drops
//! (timeouts, refusals), that is after callers have already been hurt, and needs
//! a latency threshold someone must choose per upstream. The gradient compares
//! the recent round-trip time with a long-term baseline: when requests start to
//! queue upstream, latency rises before anything fails, and the limit falls in
//! proportion. Drops still count, as AIMD's multiplicative decrease.
//!
//! The rule, once per window of at least [`WINDOW`] and [`WINDOW_SAMPLES`] samples:
//!
//! - `short` = the window's mean RTT; `long` = an exponential average of
//!   `short` over about [`LONG_WINDOWS`] windows (ten minutes at one a second),
//!   pulled down 5 % a window while it is more than twice `short`, so that a
//!   recovery is not judged against the overload it follows;
//! - `gradient = clamp(TOLERANCE × long / short, 0.5, 1)`: 1 while latency is
//!   within 1.5× the baseline, down to halving (never more, so one outlier
//!   window cannot collapse the limit);
//! - `target = limit × gradient + queue`, where `queue` = max(4, √limit) is the
//!   headroom that lets the limit probe upward (Gradient2's 4 for small limits,
//!   the first Gradient's √limit so that large limits still grow at a useful
//!   pace), then smoothed: `limit += 0.2 × (target − limit)`;
//! - a window with a drop instead multiplies the limit by 0.9;
//! - a window whose peak in-flight stayed under half the limit is app-limited:
//!   it says nothing about the upstream's capacity, so the limit may fall but
//!   not grow (Gradient2 ignores such windows altogether, which would miss a
//!   latency rise under light load);
//! - always within `[min, max]`.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Shortest window between two updates.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Fewest samples in a window; a quieter window waits for more.
pub const WINDOW_SAMPLES: u32 = 10;
/// Windows the long-term RTT averages over.
pub const LONG_WINDOWS: f64 = 600.0;
/// Latency may grow this much over the baseline before the limit falls.
const TOLERANCE: f64 = 1.5;
const MIN_GRADIENT: f64 = 0.5;
const SMOOTHING: f64 = 0.2;
const MIN_QUEUE: f64 = 4.0;
/// The long-term RTT is pulled down while it exceeds the recent one this much.
const DRIFT_RATIO: f64 = 2.0;
const DRIFT: f64 = 0.95;
/// AIMD's multiplicative decrease on a drop (concurrency-limits' default).
const BACKOFF: f64 = 0.9;

/// What `/upstreams` shows of an adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdaptiveSnapshot {
    pub limit: usize,
    pub min: usize,
    pub max: usize,
    /// The last window's mean RTT.
    pub rtt_short_us: Option<u64>,
    /// The long-term baseline it is compared with.
    pub rtt_long_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: Option<Instant>,
    samples: u32,
    /// Sum and count of the RTTs of requests that were not dropped: a timeout's
    /// "RTT" is the timeout, not the upstream's latency.
    rtt_sum_ns: f64,
    rtt_count: u32,
    peak_in_flight: usize,
    dropped: bool,
}

/// The limit of one destination. Pure: the caller feeds samples and applies
/// the limit it returns to the bulkhead.
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    min: usize,
    max: usize,
    estimate: f64,
    limit: usize,
    short_rtt_ns: Option<f64>,
    long_rtt_ns: Option<f64>,
    window: Window,
}

impl AdaptiveLimit {
    /// `min` is at least 1, `max` at least `min`, and `initial` is clamped
    /// between them.
    pub fn new(min: usize, max: usize, initial: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        let limit = initial.clamp(min, max);
        AdaptiveLimit {
            min,
            max,
            estimate: limit as f64,
            limit,
            short_rtt_ns: None,
            long_rtt_ns: None,
            window: Window::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One finished request: its round-trip time, the requests in flight when
    /// it started, and whether it was dropped (timed out, or refused by an
    /// overloaded upstream). Returns the new limit when it changes.
    pub fn on_sample(
        &mut self,
        rtt: Duration,
        in_flight: usize,
        dropped: bool,
        now: Instant,
    ) -> Option<usize> {
        let w = &mut self.window;
        let start = *w.start.get_or_insert(now);
        w.samples = w.samples.saturating_add(1);
        w.peak_in_flight = w.peak_in_flight.max(in_flight);
        if dropped {
            w.dropped = true;
        } else {
            w.rtt_sum_ns += rtt.as_nanos() as f64;
            w.rtt_count += 1;
        }
        if now.saturating_duration_since(start) < WINDOW || w.samples < WINDOW_SAMPLES {
            return None;
        }
        let done = std::mem::replace(
            w,
            Window {
                start: Some(now),
                ..Window::default()
            },
        );
        self.update(&done);
        let limit = (self.estimate as usize).clamp(self.min, self.max);
        (limit != std::mem::replace(&mut self.limit, limit)).then_some(limit)
    }

    fn update(&mut self, w: &Window) {
        let gradient = (w.rtt_count > 0).then(|| {
            let short = w.rtt_sum_ns / f64::from(w.rtt_count);
            let mut long = match self.long_rtt_ns {
                None => short,
                Some(long) => long + (short - long) * 2.0 / (LONG_WINDOWS + 1.0),
            };
            if long > DRIFT_RATIO * short {
                long *= DRIFT;
            }
            self.short_rtt_ns = Some(short);
            self.long_rtt_ns = Some(long);
            if short > 0.0 {
                (TOLERANCE * long / short).clamp(MIN_GRADIENT, 1.0)
            } else {
                1.0
            }
        });
        let target = match gradient {
            Some(gradient) if !w.dropped => {
                let queue = self.estimate.sqrt().max(MIN_QUEUE);
                let target = self.estimate * gradient + queue;
                self.estimate + SMOOTHING * (target - self.estimate)
            }
            _ => self.estimate * BACKOFF,
        };
        let app_limited = (w.peak_in_flight as f64) < self.estimate / 2.0;
        let target = if app_limited {
            target.min(self.estimate)
        } else {
            target
        };
        self.estimate = target.clamp(self.min as f64, self.max as f64);
    }

    pub fn snapshot(&self) -> AdaptiveSnapshot {
        let us = |ns: f64| (ns / 1000.0) as u64;
        AdaptiveSnapshot {
            limit: self.limit,
            min: self.min,
            max: self.max,
            rtt_short_us: self.short_rtt_ns.map(us),
            rtt_long_us: self.long_rtt_ns.map(us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds one window: ten samples 125ms apart (so the tenth closes it), each
    /// with `in_flight` set to the current limit (saturated) or to 1 (idle).
    /// Returns the limit after.
    fn window(
        l: &mut AdaptiveLimit,
        now: &mut Instant,
        rtt: Duration,
        saturated: bool,
        dropped: bool,
    ) -> usize {
        for _ in 0..WINDOW_SAMPLES {
            *now += 125 * MS;
            let in_flight = if saturated { l.limit() } else { 1 };
            l.on_sample(rtt, in_flight, dropped, *now);
        }
        l.limit()
    }

    #[test]
    fn flat_latency_under_saturation_grows_the_limit() {
        let mut l = AdaptiveLimit::new(1, 1000, 20);
        let mut now = Instant::now();
        let mut last = l.limit();
        for _ in 0..50 {
            let limit = window(&mut l, &mut now, 10 * MS, true, false);
            assert!(limit >= last, "{limit} after {last}");
            last = limit;
        }
        assert!(last > 40, "grew to {last}");
    }

    #[test]
    fn rising_latency_lowers_the_limit() {
        let mut l = AdaptiveLimit::new(1, 1000, 100);
        let mut now = Instant::now();
        for _ in 0..20 {
            window(&mut l, &mut now, 10 * MS, true, false);
        }
        let before = l.limit();
        let mut last = before;
        for _ in 0..10 {
            let limit = window(&mut l, &mut now, 40 * MS, true, false);
            assert!(limit <= last, "{limit} after {last}");
            last = limit;
        }
        assert!(last < before * 2 / 3, "{before} fell only to {last}");
        let s = l.snapshot();
        assert_eq!(s.rtt_short_us, Some(40_000));
        assert!(s.rtt_long_us.is_some_and(|us| us < 12_000), "{s:?}");
    }

    #[test]
    fn latency_within_the_tolerance_does_not_lower_the_limit() {
        let mut l = AdaptiveLimit::new(1, 1000, 100);
        let mut now = Instant::now();
        window(&mut l, &mut now, 10 * MS, true, false);
        let before = l.limit();
        let after = window(&mut l, &mut now, 14 * MS, true, false);
        assert!(after >= before, "{before} → {after}");
    }

    #[test]
    fn a_drop_backs_off_multiplicatively() {
        let mut l = AdaptiveLimit::new(1, 1000, 100);
        let mut now = Instant::now();
        assert_eq!(window(&mut l, &mut now, 10 * MS, true, true), 90);
        assert_eq!(window(&mut l, &mut now, 10 * MS, true, true), 81);
    }

    #[test]
    fn an_app_limited_window_never_grows_the_limit() {
        let mut l = AdaptiveLimit::new(1, 1000, 20);
        let mut now = Instant::now();
        for _ in 0..20 {
            assert_eq!(window(&mut l, &mut now, 10 * MS, false, false), 20);
        }
    }

    #[test]
    fn the_baseline_follows_a_recovery_so_a_later_rise_is_still_seen() {
        let mut l = AdaptiveLimit::new(1, 1000, 50);
        let mut now = Instant::now();
        for _ in 0..30 {
            window(&mut l, &mut now, 100 * MS, true, false);
        }
        // Latency falls to a tenth: the long-term RTT is pulled down to it
        // instead of taking the ten minutes its average alone would.
        for _ in 0..60 {
            window(&mut l, &mut now, 10 * MS, true, false);
        }
        let long = l.snapshot().rtt_long_us.expect("measured");
        assert!(long <= 20_000, "baseline still {long}us");
        // Three times the new baseline is overload, though far below the old one.
        let before = l.limit();
        assert!(window(&mut l, &mut now, 60 * MS, true, false) < before);
    }

    #[test]
    fn no_update_before_a_full_window() {
        let mut l = AdaptiveLimit::new(1, 1000, 100);
        let t0 = Instant::now();
        for i in 0..100 {
            // A hundred drops within the first second: not yet a window.
            assert_eq!(l.on_sample(MS, 100, true, t0 + i * 5 * MS), None);
        }
        assert_eq!(l.on_sample(MS, 100, true, t0 + 1000 * MS), Some(90));
    }

    #[test]
    fn the_limit_stays_within_min_and_max() {
        assert_eq!(AdaptiveLimit::new(0, 0, 0).limit(), 1, "min is at least 1");
        assert_eq!(
            AdaptiveLimit::new(10, 5, 1).limit(),
            10,
            "max is at least min"
        );
        let mut l = AdaptiveLimit::new(5, 40, 20);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut now = Instant::now();
        for _ in 0..3000 {
            now += Duration::from_millis(rng.u64(1..200));
            let rtt = Duration::from_micros(rng.u64(0..200_000));
            let in_flight = rng.usize(0..80);
            if let Some(limit) = l.on_sample(rtt, in_flight, rng.u8(..) < 20, now) {
                assert!((5..=40).contains(&limit), "{limit}");
            }
            assert!((5..=40).contains(&l.limit()));
        }
        let mut low = AdaptiveLimit::new(5, 40, 20);
        for _ in 0..100 {
            window(&mut low, &mut now, 10 * MS, true, true);
        }
        assert_eq!(low.limit(), 5);
        let mut high = AdaptiveLimit::new(5, 40, 20);
        for _ in 0..100 {
            window(&mut high, &mut now, 10 * MS, true, false);
        }
        assert_eq!(high.limit(), 40);
        let s = serde_json::to_value(high.snapshot()).expect("json");
        assert_eq!(
            (s["limit"].as_u64(), s["max"].as_u64()),
            (Some(40), Some(40))
        );
    }
}
