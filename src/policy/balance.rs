//! Choosing among a destination's endpoints: power of two choices over a
//! peak-EWMA latency estimate (as linkerd2-proxy and Finagle do), skipping
//! ejected endpoints, and the cap on how many may be ejected at once.
//!
//! Why not round-robin: it gives a slow endpoint the same share as a fast one,
//! so under uneven latency the slow one piles up requests and drags the tail
//! latency of every caller. Picking the least loaded of all endpoints reacts to
//! load but herds: every picker sends to the same "best" one until its numbers
//! catch up. Power of two choices — draw two at random, keep the less loaded —
//! avoids both: the worst endpoint is never chosen while another is drawn
//! with it, and randomness spreads the picks. Load is the latency estimate
//! times the requests in flight, so a fast endpoint may carry more of them.
//!
//! The estimate is *peak*-sensitive: a slower sample replaces it at once, a
//! faster one only pulls it down with time. An endpoint that starts to
//! struggle is shunned at its first slow answer, not after a moving average
//! has caught up; and the estimate decays while the endpoint is idle, so a
//! past spike does not exile it forever.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// An endpoint's latency estimate.
#[derive(Clone, Copy, Debug)]
pub struct PeakEwma {
    rtt_ns: f64,
    updated_at: Instant,
    decay_ns: f64,
}

/// What `/upstreams` shows of an endpoint's latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EwmaSnapshot {
    pub latency_ewma_us: u64,
}

impl PeakEwma {
    /// linkerd2-proxy's defaults: a new endpoint is assumed to answer in
    /// 30ms, and a sample's weight fades over a 10s time constant.
    pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

    /// `default_rtt` is the estimate before any sample: neither zero, which
    /// would flood a new endpoint, nor pessimistic, which would starve it.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma {
            rtt_ns: default_rtt.as_nanos() as f64,
            updated_at: now,
            decay_ns: (decay.as_nanos() as f64).max(1.0),
        }
    }

    /// `e^(-elapsed/decay)`: the weight the past keeps after `elapsed`.
    fn weight_kept(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated_at).as_nanos() as f64;
        (-elapsed / self.decay_ns).exp()
    }

    /// A response took `rtt`. A slower sample than the estimate becomes the
    /// estimate; a faster one is blended in by the time since the last sample,
    /// so a burst of fast answers in one instant cannot erase a slow one.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        self.rtt_ns = if rtt > self.rtt_ns {
            rtt
        } else {
            let kept = self.weight_kept(now);
            self.rtt_ns * kept + rtt * (1.0 - kept)
        };
        self.updated_at = self.updated_at.max(now);
    }

    /// The estimate now, decayed towards zero since the last sample so that an
    /// idle endpoint is tried again.
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos((self.rtt_ns * self.weight_kept(now)) as u64)
    }

    pub fn snapshot(&self, now: Instant) -> EwmaSnapshot {
        let us = self.estimate(now).as_micros();
        EwmaSnapshot {
            latency_ewma_us: u64::try_from(us).unwrap_or(u64::MAX),
        }
    }
}

/// One endpoint as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub in_flight: usize,
    pub ewma: Duration,
    /// False while the endpoint is ejected (its circuit refuses requests).
    pub eligible: bool,
}

impl Load {
    /// linkerd's cost: latency × (in flight + 1). The floor of one nanosecond
    /// keeps in-flight counts deciding when no latency is known.
    fn cost(&self) -> u128 {
        self.ewma.as_nanos().max(1) * (self.in_flight as u128 + 1)
    }
}

/// The index of the endpoint to send to: the cheaper of two eligible ones
/// drawn at random (the first drawn on a tie), or the only eligible one, or
/// `None` when every endpoint is ejected. `rng(n)` draws from `0..n`
/// (`|n| fastrand::usize(..n)`); tests pass a script. No allocation.
pub fn pick_p2c(loads: &[Load], mut rng: impl FnMut(usize) -> usize) -> Option<usize> {
    let eligible = loads.iter().filter(|l| l.eligible).count();
    let nth = |n: usize| {
        loads
            .iter()
            .enumerate()
            .filter(|(_, l)| l.eligible)
            .nth(n)
            .map(|(i, _)| i)
    };
    match eligible {
        0 => None,
        1 => nth(0),
        n => {
            let a = rng(n) % n;
            let mut b = rng(n - 1) % (n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if loads[b].cost() < loads[a].cost() {
                b
            } else {
                a
            })
        }
    }
}

/// Whether one more of a destination's `total` endpoints may be ejected while
/// `ejected` already are: never beyond `max_ejection_percent`, except that one
/// may always be, so a single-endpoint destination still opens its circuit
/// (Envoy's outlier detection has the same rule).
pub fn may_eject(ejected: usize, total: usize, max_ejection_percent: u8) -> bool {
    if ejected >= total {
        return false;
    }
    ejected == 0 || (ejected + 1) * 100 <= usize::from(max_ejection_percent) * total
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ewma(t0: Instant) -> PeakEwma {
        PeakEwma::new(PeakEwma::DEFAULT_RTT, PeakEwma::DEFAULT_DECAY, t0)
    }

    fn load(in_flight: usize, ewma_ms: u64) -> Load {
        Load {
            in_flight,
            ewma: Duration::from_millis(ewma_ms),
            eligible: true,
        }
    }

    /// An rng that returns the given draws in order.
    fn script(draws: &[usize]) -> impl FnMut(usize) -> usize + '_ {
        let mut it = draws.iter().copied();
        move |_| it.next().expect("scripted draw")
    }

    #[test]
    fn a_new_endpoint_starts_at_the_default_rtt() {
        let t0 = Instant::now();
        assert_eq!(ewma(t0).estimate(t0), 30 * MS);
        assert_eq!(ewma(t0).snapshot(t0).latency_ewma_us, 30_000);
    }

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut e = ewma(t0);
        e.observe(500 * MS, t0);
        assert_eq!(e.estimate(t0), 500 * MS);
    }

    #[test]
    fn a_faster_sample_pulls_the_estimate_down_by_elapsed_time() {
        let t0 = Instant::now();
        let mut e = ewma(t0);
        e.observe(100 * MS, t0);
        e.observe(MS, t0);
        assert_eq!(e.estimate(t0), 100 * MS, "no time passed: no weight");
        // One decay constant later the sample has weight 1 - 1/e ≈ 63 %.
        let later = t0 + PeakEwma::DEFAULT_DECAY;
        let mut e2 = e;
        e2.observe(MS, later);
        let ms = e2.estimate(later).as_secs_f64() * 1000.0;
        assert!((37.0..37.5).contains(&ms), "{ms}ms");
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero() {
        let t0 = Instant::now();
        let mut e = ewma(t0);
        e.observe(1000 * MS, t0);
        let later = e.estimate(t0 + PeakEwma::DEFAULT_DECAY);
        assert_eq!(later.as_millis(), 367, "1s × 1/e");
        assert!(e.estimate(t0 + 100 * PeakEwma::DEFAULT_DECAY) < MS);
    }

    #[test]
    fn nothing_to_pick_without_an_eligible_endpoint() {
        assert_eq!(pick_p2c(&[], script(&[])), None);
        let ejected = Load {
            eligible: false,
            ..load(0, 1)
        };
        assert_eq!(pick_p2c(&[ejected, ejected], script(&[])), None);
    }

    #[test]
    fn a_single_eligible_endpoint_is_picked_without_drawing() {
        let ejected = Load {
            eligible: false,
            ..load(0, 1)
        };
        assert_eq!(pick_p2c(&[load(9, 900)], script(&[])), Some(0));
        assert_eq!(
            pick_p2c(&[ejected, load(9, 900), ejected], script(&[])),
            Some(1)
        );
    }

    #[test]
    fn the_cheaper_of_the_two_drawn_wins() {
        let loads = [load(0, 10), load(0, 50), load(0, 20)];
        // Draws 1 then 1 (shifted past 1 to 2): endpoints 1 and 2.
        assert_eq!(pick_p2c(&loads, script(&[1, 1])), Some(2));
        // Draws 0 then 0 (shifted to 1): endpoints 0 and 1.
        assert_eq!(pick_p2c(&loads, script(&[0, 0])), Some(0));
        // In flight counts: 10ms × 5 costs more than 20ms × 1.
        let busy = [load(4, 10), load(0, 20)];
        assert_eq!(pick_p2c(&busy, script(&[0, 0])), Some(1));
        // A tie keeps the first drawn.
        let even = [load(1, 10), load(1, 10)];
        assert_eq!(pick_p2c(&even, script(&[1, 0])), Some(1));
    }

    #[test]
    fn ejected_endpoints_are_never_drawn() {
        let mut loads = [load(0, 10); 4];
        loads[0].eligible = false;
        loads[2].eligible = false;
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let i = pick_p2c(&loads, |n| rng.usize(..n)).expect("picks");
            assert!(i == 1 || i == 3, "picked ejected {i}");
        }
    }

    #[test]
    fn a_slow_endpoint_gets_a_small_share() {
        let loads = [load(0, 10), load(0, 10), load(0, 100)];
        let mut rng = fastrand::Rng::with_seed(2);
        let mut picks = [0u32; 3];
        for _ in 0..3000 {
            picks[pick_p2c(&loads, |n| rng.usize(..n)).expect("picks")] += 1;
        }
        // It can only win a draw against itself, which never happens.
        assert_eq!(picks[2], 0, "{picks:?}");
        assert!(picks[0] > 1000 && picks[1] > 1000, "{picks:?}");
    }

    #[test]
    fn a_draw_out_of_range_does_not_panic() {
        let loads = [load(0, 10), load(0, 20)];
        assert!(pick_p2c(&loads, |_| usize::MAX).is_some());
    }

    #[test]
    fn one_endpoint_may_always_be_ejected() {
        assert!(may_eject(0, 1, 10), "a single endpoint still opens");
        assert!(may_eject(0, 3, 0), "even at 0 %");
        assert!(!may_eject(1, 3, 10));
        assert!(!may_eject(1, 1, 100), "nothing left to eject");
        assert!(!may_eject(0, 0, 100), "no endpoints");
    }

    #[test]
    fn never_more_than_the_percentage_beyond_the_first() {
        assert!(may_eject(4, 10, 50), "the fifth of ten is 50 %");
        assert!(!may_eject(5, 10, 50), "the sixth would be 60 %");
        assert!(may_eject(1, 2, 100));
        assert!(!may_eject(1, 3, 33), "two of three is 67 %");
        assert!(may_eject(1, 3, 67));
    }
}
