//! `--max-concurrent auto`: the bulkhead limit found from observed latency, a
//! gradient limiter after Netflix concurrency-limits' Gradient, with a
//! minimum-RTT baseline as in TCP Vegas and BBR.
//!
//! Why a gradient and not plain AIMD: AIMD only learns of overload from drops
//! (timeouts, refusals), that is after callers have already been hurt, and needs
//! a latency threshold someone must choose per upstream. The gradient compares
//! the recent round-trip time with the upstream's unloaded one: when requests
//! start to queue upstream, latency rises before anything fails, and the limit
//! falls in proportion. Drops still count, as AIMD's multiplicative decrease.
//!
//! Why a minimum for the baseline: a request that waits in the upstream's queue
//! cannot be faster than the service time plus that wait, so the fastest
//! request of many windows is the unloaded latency, even for a limiter whose
//! first traffic is an overload (whose first requests still find the upstream
//! idle). An average would judge a fresh limiter against the overload it
//! starts in. The recent side is the window's mean, since that, not the
//! minimum, is what callers wait: so the limit settles where the mean latency
//! is about `TOLERANCE` × the unloaded one. The price: an upstream whose
//! latency varies widely even when idle (mean ≫ minimum) is held to a smaller
//! limit than it could take.
//!
//! The rule, once per window of at least [`WINDOW`] and [`WINDOW_SAMPLES`] samples:
//!
//! - `recent` = the window's mean answered RTT; `baseline` = the fastest
//!   answered RTT of the last [`BASELINE_WINDOWS`] windows (the minimum of
//!   their minima), so it falls at once when the upstream gets faster and
//!   rises once a slower upstream has been seen for that long;
//! - `gradient = clamp(TOLERANCE × baseline / recent, 0.5, 1)`: 1 while
//!   queueing costs at most 20 % of the unloaded latency, down to halving
//!   (never more, so one outlier window cannot collapse the limit);
//! - `target = limit × gradient + queue`, where `queue` = max(2, √limit / 2)
//!   is the headroom that lets the limit probe upward; then smoothed:
//!   `limit += 0.2 × (target − limit)` upward, `0.5 ×` downward, so that an
//!   overload is left within a few windows;
//! - a window with a drop instead multiplies the limit by 0.9;
//! - a window whose peak in-flight stayed under half the limit is app-limited:
//!   it says nothing about the upstream's capacity, so the limit may fall but
//!   not grow;
//! - under constant saturation every request may queue, and the baseline would
//!   then expire into a queued latency and let the limit creep up. So when no
//!   window's minimum has come within 10 % of the baseline for [`PROBE_AFTER`]
//!   windows, the next window (of at least [`PROBE_WINDOW`]) runs at half the
//!   limit, draining the upstream's queue so that its minimum is the unloaded
//!   latency again (BBR's ProbeRTT); the limit is restored after it;
//! - always within `[min, max]`.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Shortest window between two updates.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Fewest samples in a window; a quieter window waits for more.
pub const WINDOW_SAMPLES: u32 = 10;
/// Windows the baseline is the minimum over.
pub const BASELINE_WINDOWS: usize = 30;
/// Windows without a minimum near the baseline before a probe; fewer than
/// [`BASELINE_WINDOWS`], so the probe's minimum is in before the old one expires.
pub const PROBE_AFTER: u32 = 20;
/// Shortest probe window: a short one, since it halves the limit.
pub const PROBE_WINDOW: Duration = Duration::from_millis(250);
/// A window's minimum within this of the baseline refreshes it.
const NEAR_BASELINE: f64 = 1.1;
/// The limit during a probe.
const PROBE_FACTOR: f64 = 0.5;
/// The mean latency may exceed the baseline this much before the limit falls.
const TOLERANCE: f64 = 1.2;
const MIN_GRADIENT: f64 = 0.5;
const GROW_SMOOTHING: f64 = 0.2;
const SHRINK_SMOOTHING: f64 = 0.5;
const MIN_QUEUE: f64 = 2.0;
/// AIMD's multiplicative decrease on a drop (concurrency-limits' default).
const BACKOFF: f64 = 0.9;

/// What `/upstreams` shows of an adaptive limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AdaptiveSnapshot {
    pub limit: usize,
    pub min: usize,
    pub max: usize,
    /// The last window's mean answered RTT.
    pub rtt_recent_us: Option<u64>,
    /// The baseline it is compared with: the fastest of the last
    /// [`BASELINE_WINDOWS`] windows.
    pub rtt_baseline_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: Option<Instant>,
    samples: u32,
    /// Sum, count and minimum of the RTTs of requests that were not dropped: a
    /// timeout's "RTT" is the timeout, and a fast 503 no service time.
    rtt_sum_ns: f64,
    rtt_count: u32,
    min_rtt_ns: Option<f64>,
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
    /// The last windows' minima, oldest first.
    minima: VecDeque<f64>,
    /// Windows since one whose minimum was near the baseline (or a probe).
    stale: u32,
    /// The current window is a probe.
    probing: bool,
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
            minima: VecDeque::with_capacity(BASELINE_WINDOWS),
            stale: 0,
            probing: false,
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
            let ns = rtt.as_nanos() as f64;
            w.rtt_sum_ns += ns;
            w.rtt_count += 1;
            w.min_rtt_ns = Some(w.min_rtt_ns.map_or(ns, |m| m.min(ns)));
        }
        let span = if self.probing { PROBE_WINDOW } else { WINDOW };
        if now.saturating_duration_since(start) < span || w.samples < WINDOW_SAMPLES {
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
        let limit = if self.probing {
            self.estimate * PROBE_FACTOR
        } else {
            self.estimate
        };
        let limit = (limit as usize).clamp(self.min, self.max);
        (limit != std::mem::replace(&mut self.limit, limit)).then_some(limit)
    }

    fn baseline(&self) -> Option<f64> {
        self.minima.iter().copied().reduce(f64::min)
    }

    fn update(&mut self, w: &Window) {
        let probe = std::mem::take(&mut self.probing);
        let gradient = w.min_rtt_ns.map(|fastest| {
            if self.minima.len() == BASELINE_WINDOWS {
                self.minima.pop_front();
            }
            self.minima.push_back(fastest);
            let baseline = self.baseline().unwrap_or(fastest);
            let recent = w.rtt_sum_ns / f64::from(w.rtt_count.max(1));
            self.short_rtt_ns = Some(recent);
            if probe || fastest <= NEAR_BASELINE * baseline {
                self.stale = 0;
            } else {
                self.stale = self.stale.saturating_add(1);
            }
            if recent > 0.0 {
                (TOLERANCE * baseline / recent).clamp(MIN_GRADIENT, 1.0)
            } else {
                1.0
            }
        });
        if probe {
            // The probe's latency says how fast the upstream is unloaded, not
            // whether the limit before it was right: that is restored.
            if w.dropped {
                self.estimate = (self.estimate * BACKOFF).clamp(self.min as f64, self.max as f64);
            }
            return;
        }
        let target = match gradient {
            Some(gradient) if !w.dropped => {
                let queue = (self.estimate.sqrt() / 2.0).max(MIN_QUEUE);
                let target = self.estimate * gradient + queue;
                let smoothing = if target < self.estimate {
                    SHRINK_SMOOTHING
                } else {
                    GROW_SMOOTHING
                };
                self.estimate + smoothing * (target - self.estimate)
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
        // A probe only helps if it lowers the limit.
        let lower = ((self.estimate * PROBE_FACTOR) as usize).max(self.min);
        self.probing = self.stale >= PROBE_AFTER && lower < self.estimate as usize;
    }

    pub fn snapshot(&self) -> AdaptiveSnapshot {
        let us = |ns: f64| (ns / 1000.0) as u64;
        AdaptiveSnapshot {
            limit: self.limit,
            min: self.min,
            max: self.max,
            rtt_recent_us: self.short_rtt_ns.map(us),
            rtt_baseline_us: self.baseline().map(us),
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
        assert_eq!(s.rtt_recent_us, Some(40_000));
        assert!(s.rtt_baseline_us.is_some_and(|us| us < 12_000), "{s:?}");
    }

    #[test]
    fn latency_within_the_tolerance_does_not_lower_the_limit() {
        let mut l = AdaptiveLimit::new(1, 1000, 100);
        let mut now = Instant::now();
        window(&mut l, &mut now, 10 * MS, true, false);
        let before = l.limit();
        let after = window(&mut l, &mut now, 12 * MS, true, false);
        assert!(after >= before, "{before} → {after}");
    }

    /// An upstream that serves 8 requests at a time in 20ms and queues the rest,
    /// saturated at the limit: its latency is 20ms × max(1, limit / 8).
    fn queued(limit: usize) -> Duration {
        Duration::from_micros(20_000 * limit.max(8) as u64 / 8)
    }

    fn window_at(l: &mut AdaptiveLimit, now: &mut Instant) -> usize {
        let rtt = queued(l.limit());
        window(l, now, rtt, true, false)
    }

    #[test]
    fn a_saturated_queueing_upstream_settles_near_its_unloaded_latency() {
        let mut l = AdaptiveLimit::new(1, 1000, 20);
        let mut now = Instant::now();
        // Warmed: a few unloaded windows teach the 20ms baseline.
        for _ in 0..3 {
            window(&mut l, &mut now, 20 * MS, false, false);
        }
        let mut limits = Vec::new();
        for _ in 0..200 {
            limits.push(window_at(&mut l, &mut now));
        }
        // Within a few windows the limit is where the upstream is busy (≥ 8)
        // and its queue short (latency ≤ 1.5 × 20ms, i.e. limit ≤ 12), apart
        // from the probes, which halve it for a short window.
        let settled: Vec<_> = limits[5..].iter().filter(|&&x| x >= 8).collect();
        assert!(settled.iter().all(|&&x| x <= 12), "{limits:?}");
        assert!(settled.len() >= 180, "{limits:?}");
        assert_eq!(l.snapshot().rtt_baseline_us, Some(20_000));
    }

    #[test]
    fn a_limiter_started_under_overload_finds_the_unloaded_latency() {
        let mut l = AdaptiveLimit::new(1, 1000, 40);
        let mut now = Instant::now();
        // Its first window is already queued (100ms), with no fast request.
        window_at(&mut l, &mut now);
        assert_eq!(l.snapshot().rtt_baseline_us, Some(100_000));
        for _ in 0..150 {
            window_at(&mut l, &mut now);
        }
        // The probes drained the queue: the baseline is the unloaded 20ms.
        assert_eq!(l.snapshot().rtt_baseline_us, Some(20_000));
        let limit = window_at(&mut l, &mut now);
        assert!((8..=12).contains(&limit), "{limit}");
    }

    #[test]
    fn the_baseline_rises_when_the_upstream_gets_slower() {
        let mut l = AdaptiveLimit::new(1, 1000, 20);
        let mut now = Instant::now();
        for _ in 0..10 {
            window(&mut l, &mut now, 10 * MS, true, false);
        }
        let before = l.limit();
        // Three times slower at any load: at first that looks like queueing,
        // so the limit falls, and a probe finds no faster latency.
        let mut lowest = before;
        for _ in 0..BASELINE_WINDOWS {
            lowest = lowest.min(window(&mut l, &mut now, 30 * MS, true, false));
        }
        assert!(lowest <= before / 2, "{before} fell only to {lowest}");
        assert_eq!(l.snapshot().rtt_baseline_us, Some(30_000));
        // Once the old minimum has expired, the slower latency is the baseline
        // and flat latency grows the limit again.
        let after = l.limit();
        for _ in 0..20 {
            window(&mut l, &mut now, 30 * MS, true, false);
        }
        assert!(l.limit() > after, "{after} → {}", l.limit());
    }

    #[test]
    fn a_probe_halves_the_limit_for_one_short_window() {
        let mut l = AdaptiveLimit::new(1, 1000, 40);
        let mut now = Instant::now();
        window(&mut l, &mut now, 10 * MS, true, false);
        // Slightly above the baseline but within the tolerance: no fall, but
        // the baseline is not seen again.
        let slow = Duration::from_micros(11_500);
        for _ in 1..PROBE_AFTER {
            window(&mut l, &mut now, slow, true, false);
        }
        assert!(!l.probing);
        let before = l.limit();
        // The twentieth such window starts a probe at half the limit.
        let halved = window(&mut l, &mut now, slow, true, false);
        assert!(l.probing);
        assert!(
            halved < before && halved <= before.div_ceil(2) + 1,
            "{before} → {halved}"
        );
        // A probe window closes after PROBE_WINDOW, here 10 samples 25ms apart,
        // and the limit is back.
        let mut restored = None;
        for _ in 0..WINDOW_SAMPLES {
            now += 25 * MS;
            restored = l.on_sample(10 * MS, halved, false, now).or(restored);
        }
        assert!(!l.probing);
        assert!(restored.is_some_and(|r| r >= before), "{restored:?}");
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
        let long = l.snapshot().rtt_baseline_us.expect("measured");
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
