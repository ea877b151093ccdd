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
//!
//! Slow start (`--slow-start`) weighs an endpoint that joined a live set, or
//! whose circuit just closed again, by a share that grows linearly from 10 %
//! to whole over the window (Envoy's `slow_start_config` at aggression 1.0 and
//! its default `min_weight_percent`), and divides its cost by that weight, as
//! Envoy's weighted least-request divides weight by active requests. Under
//! load that gives it about its weight's share of the requests in flight (its
//! cost matches the others' when its in-flight count is that share of
//! theirs); at low concurrency less, since it only wins a draw once the other
//! one is busier than its weight allows. Endpoints there at the destination's
//! first resolution do not ramp: at start all of them are new, and ramping
//! them all alike would change nothing but the ramp of one that joins later.

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
    /// Its share of a whole endpoint's, in millionths: [`FULL_WEIGHT`] but
    /// while it ramps up ([`slow_start_weight`]).
    pub weight: u32,
}

/// The weight of an endpoint that does not ramp.
pub const FULL_WEIGHT: u32 = 1_000_000;

/// Where a ramp starts: a tenth of a whole endpoint's share.
pub const SLOW_START_FLOOR: u32 = FULL_WEIGHT / 10;

/// Endpoints that joined within this time of a set's oldest came with the
/// destination's first resolution (an address, or the pods of a Service's
/// first list, made one after the other), not after it.
pub const FIRST_RESOLUTION: Duration = Duration::from_secs(1);

impl Load {
    /// linkerd's cost: latency × (in flight + 1), divided by the weight while
    /// the endpoint ramps up. The floor of one nanosecond keeps in-flight
    /// counts deciding when no latency is known.
    fn cost(&self) -> u128 {
        let cost = self.ewma.as_nanos().max(1) * (self.in_flight as u128 + 1);
        if self.weight >= FULL_WEIGHT {
            return cost;
        }
        cost * u128::from(FULL_WEIGHT) / u128::from(self.weight.max(1))
    }
}

/// When an endpoint's ramp started, if it has one: its circuit's last close
/// (`recovered`), or when it joined (`created`) if that was after the first
/// resolution of its destination, whose oldest endpoint now was made at
/// `first_created`. The later of the two.
pub fn ramp_start(
    created: Instant,
    recovered: Option<Instant>,
    first_created: Instant,
) -> Option<Instant> {
    let joined = created.saturating_duration_since(first_created) > FIRST_RESOLUTION;
    joined.then_some(created).max(recovered)
}

/// An endpoint's weight `now` within a ramp of length `window` that started
/// at `since`: linear from [`SLOW_START_FLOOR`] to [`FULL_WEIGHT`], whole
/// without a ramp or once the window has passed.
pub fn slow_start_weight(window: Duration, since: Option<Instant>, now: Instant) -> u32 {
    let Some(since) = since else {
        return FULL_WEIGHT;
    };
    let elapsed = now.saturating_duration_since(since);
    if elapsed >= window {
        return FULL_WEIGHT;
    }
    let share = elapsed.as_nanos() * u128::from(FULL_WEIGHT) / window.as_nanos().max(1);
    u32::try_from(share)
        .unwrap_or(FULL_WEIGHT)
        .max(SLOW_START_FLOOR)
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
            weight: FULL_WEIGHT,
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

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_weight_ramps_linearly_from_the_floor() {
        let t0 = Instant::now();
        let window = 10 * SEC;
        let w = |at: Duration| slow_start_weight(window, Some(t0), t0 + at);
        assert_eq!(w(Duration::ZERO), SLOW_START_FLOOR);
        assert_eq!(w(SEC / 2), SLOW_START_FLOOR, "5 % is below the floor");
        assert_eq!(w(2 * SEC), FULL_WEIGHT / 5);
        assert_eq!(w(5 * SEC), FULL_WEIGHT / 2);
        assert_eq!(w(9 * SEC), FULL_WEIGHT / 10 * 9);
        assert_eq!(w(10 * SEC), FULL_WEIGHT);
        assert_eq!(w(60 * SEC), FULL_WEIGHT);
        assert_eq!(slow_start_weight(window, None, t0), FULL_WEIGHT);
        // A clock read before the start (another thread's) is the start.
        assert_eq!(
            slow_start_weight(window, Some(t0 + SEC), t0),
            SLOW_START_FLOOR
        );
    }

    #[test]
    fn only_endpoints_that_joined_later_or_recovered_ramp() {
        let t0 = Instant::now();
        // The first resolution's endpoints, made one after the other.
        assert_eq!(ramp_start(t0, None, t0), None);
        assert_eq!(ramp_start(t0 + 5 * MS, None, t0), None);
        // One that joined the live set later.
        assert_eq!(ramp_start(t0 + 30 * SEC, None, t0), Some(t0 + 30 * SEC));
        // One whose circuit closed again, whenever it joined.
        assert_eq!(ramp_start(t0, Some(t0 + 90 * SEC), t0), Some(t0 + 90 * SEC));
        assert_eq!(
            ramp_start(t0 + 30 * SEC, Some(t0 + 10 * SEC), t0),
            Some(t0 + 30 * SEC),
            "the later start counts"
        );
        // A set whose first endpoints are all gone: the oldest left is the
        // base, so a whole new set does not ramp.
        let later = t0 + 60 * SEC;
        assert_eq!(ramp_start(later, None, later), None);
    }

    #[test]
    fn a_ramping_endpoint_costs_more_by_its_weight() {
        let ramping = |weight| Load {
            weight,
            ..load(0, 10)
        };
        // Idle, it loses to an idle whole one, whichever is drawn first.
        let loads = [load(0, 10), ramping(FULL_WEIGHT / 2)];
        assert_eq!(pick_p2c(&loads, script(&[1, 0])), Some(0));
        assert_eq!(pick_p2c(&loads, script(&[0, 0])), Some(0));
        // At half weight it matches a whole one with one request in flight
        // (a tie: the first drawn), and wins against one with two.
        let loads = [load(1, 10), ramping(FULL_WEIGHT / 2)];
        assert_eq!(pick_p2c(&loads, script(&[1, 0])), Some(1));
        assert_eq!(pick_p2c(&loads, script(&[0, 0])), Some(0));
        let loads = [load(2, 10), ramping(FULL_WEIGHT / 2)];
        assert_eq!(pick_p2c(&loads, script(&[0, 0])), Some(1));
        // A weight of zero is taken as the least there is, not a division by it.
        assert!(pick_p2c(&[load(0, 10), ramping(0)], script(&[1, 0])).is_some());
    }

    /// Requests in flight on three endpoints, one of them at `weight`: each
    /// step one random request ends and a new one is placed by P2C. Returns
    /// the ramping endpoint's share of the placements.
    fn share_under_load(weight: u32, concurrency: usize, seed: u64) -> f64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut loads = [load(0, 10), load(0, 10), load(0, 10)];
        loads[2].weight = weight;
        let mut in_flight: Vec<usize> = Vec::new();
        let mut ramping = 0u32;
        let steps = 20_000;
        for step in 0..steps + concurrency {
            if in_flight.len() == concurrency {
                let done = in_flight.swap_remove(rng.usize(..concurrency));
                loads[done].in_flight -= 1;
            }
            let i = pick_p2c(&loads, |n| rng.usize(..n)).expect("picks");
            loads[i].in_flight += 1;
            in_flight.push(i);
            if step >= concurrency && i == 2 {
                ramping += 1;
            }
        }
        f64::from(ramping) / steps as f64
    }

    #[test]
    fn under_load_a_ramping_endpoint_gets_about_its_weights_share() {
        // Of three, a whole one takes a third; at weight w, w / (2 + w).
        for (percent, seed) in [(10u32, 1u64), (50, 2), (100, 3)] {
            let weight = FULL_WEIGHT / 100 * percent;
            let w = f64::from(percent) / 100.0;
            let expected = w / (2.0 + w);
            let got = share_under_load(weight, 60, seed);
            assert!(
                (got - expected).abs() < 0.04,
                "weight {percent} %: share {got:.3}, expected about {expected:.3}"
            );
        }
        // The share grows with the weight all along the ramp.
        let shares: Vec<f64> = [10u32, 30, 60, 90]
            .iter()
            .map(|p| share_under_load(FULL_WEIGHT / 100 * p, 60, 7))
            .collect();
        assert!(shares.windows(2).all(|w| w[0] < w[1]), "{shares:?}");
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
