//! Hedged requests (`hedge-after=DURATION|pNN`): when the first attempt has no
//! response head after the hedge delay, a second copy goes out (to another
//! endpoint where there is one) and the first good answer wins. It cuts the
//! tail that one slow endpoint or one slow request adds, for the price of the
//! extra load, which a budget bounds like the retry budget does.
//!
//! `pNN` takes the delay from the destination's own recent latency: the time
//! to a response head that NN % of its attempts beat over the last 10 to 20
//! seconds (Dean and Barroso's "The Tail at Scale" hedges at the p95). Until
//! the destination has answered [`MIN_SAMPLES`] times in that window no hedge
//! goes, since a quantile of a handful of samples would hedge at random.
//!
//! Only requests without a body that are safe to repeat (idempotent, or with
//! an `Idempotency-Key`) are hedged: both copies are in flight at once, so a
//! body would have to be read by two senders, and a request that changes
//! state would change it twice.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::budget::RetryBudget;
use crate::metrics::recent::{BUCKETS, bucket, quantile};

/// Answers a destination must have given in the window before `pNN` hedges.
pub const MIN_SAMPLES: u32 = 50;

/// How long each of the two latency windows lasts.
const WINDOW: Duration = Duration::from_secs(10);

/// Hedges always allowed per second, on top of the budget's share: enough
/// for a quiet destination to be hedged at all, too few to add load.
const MIN_PER_SECOND: u32 = 1;

/// When to send the hedge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeAfter {
    /// A fixed delay.
    Fixed(Duration),
    /// The destination's latency quantile, in per mille: 500 (p50) to 999 (p99.9).
    Quantile(u16),
}

/// A `hedge-after` or `hedge-budget` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HedgeError {
    #[error("'{0}' is neither a duration (e.g. 50ms) nor a latency quantile from p50 to p99.9")]
    After(String),
    #[error("'{0}' is not a percentage from 0 to 100")]
    Budget(String),
}

impl HedgeAfter {
    /// `50ms`, or `pNN[.N]` from p50 to p99.9: two digits and at most one
    /// decimal, the chart's schema pattern exactly.
    pub fn parse(s: &str) -> Result<Self, HedgeError> {
        let s = s.trim_ascii();
        let bad = || HedgeError::After(s.into());
        if let Some(q) = s.strip_prefix(['p', 'P']) {
            let digit = |i: usize| {
                q.as_bytes()
                    .get(i)
                    .filter(|b| b.is_ascii_digit())
                    .map(|b| u16::from(*b - b'0'))
            };
            let tenths = match q.len() {
                2 => Some(0),
                4 if q.as_bytes().get(2) == Some(&b'.') => digit(3),
                _ => None,
            };
            let per_mille = match (digit(0), digit(1), tenths) {
                (Some(a), Some(b), Some(t)) => a * 100 + b * 10 + t,
                _ => return Err(bad()),
            };
            if !(500..=999).contains(&per_mille) {
                return Err(bad());
            }
            return Ok(HedgeAfter::Quantile(per_mille));
        }
        match crate::units::parse_positive_duration(s) {
            Ok(d) => Ok(HedgeAfter::Fixed(d)),
            Err(_) => Err(bad()),
        }
    }
}

impl std::fmt::Display for HedgeAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HedgeAfter::Fixed(d) => f.write_str(&crate::units::format_duration(*d)),
            HedgeAfter::Quantile(q) if q % 10 == 0 => write!(f, "p{}", q / 10),
            HedgeAfter::Quantile(q) => write!(f, "p{}.{}", q / 10, q % 10),
        }
    }
}

impl Serialize for HedgeAfter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `hedge-budget`: hedges as a percentage of requests, 0 to 100.
pub fn parse_budget(s: &str) -> Result<f32, HedgeError> {
    s.trim()
        .trim_end_matches('%')
        .parse::<f32>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| HedgeError::Budget(s.into()))
}

/// A destination's hedging, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HedgePolicy {
    pub after: HedgeAfter,
    /// Hedges allowed as a percentage of requests over ten seconds.
    pub budget_percent: f32,
}

impl HedgePolicy {
    /// A layer's `hedge-after` and `hedge-budget` (a policy file's defaults, a
    /// route) over the hedging beneath it: `hedge-after` turns hedging on,
    /// with the layer's budget, else the one beneath, else `flag_budget`
    /// (`--hedge-budget`); `hedge-budget` alone changes the budget of
    /// hedging that is on.
    pub fn layered(
        under: Option<HedgePolicy>,
        after: Option<HedgeAfter>,
        budget: Option<f32>,
        flag_budget: f32,
    ) -> Option<HedgePolicy> {
        let budget_percent = budget.unwrap_or(under.map_or(flag_budget, |h| h.budget_percent));
        after.or(under.map(|h| h.after)).map(|after| HedgePolicy {
            after,
            budget_percent,
        })
    }
}

/// A destination's hedging at run time: the policy, its budget, and for
/// `pNN` the latency it is taken from.
pub struct Hedging {
    pub policy: HedgePolicy,
    budget: RetryBudget,
    latency: Option<Mutex<LatencyWindow>>,
}

impl Hedging {
    pub fn new(policy: HedgePolicy) -> Self {
        let now = Instant::now();
        Hedging {
            policy,
            budget: RetryBudget::new(policy.budget_percent, MIN_PER_SECOND),
            latency: matches!(policy.after, HedgeAfter::Quantile(_))
                .then(|| Mutex::new(LatencyWindow::new(now))),
        }
    }

    /// How long the first attempt may go unanswered before its hedge; `None`:
    /// no hedge for this request (a quantile with too few samples yet).
    pub fn delay(&self, now: Instant) -> Option<Duration> {
        match self.policy.after {
            HedgeAfter::Fixed(d) => Some(d),
            HedgeAfter::Quantile(q) => self.latency.as_ref().and_then(|w| {
                w.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .quantile(f64::from(q) / 1000.0, now)
            }),
        }
    }

    /// An attempt's time to its response head, for `pNN`.
    pub fn observe(&self, latency: Duration, now: Instant) {
        if let Some(w) = &self.latency {
            w.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(latency, now);
        }
    }

    /// A request that may be hedged: it earns its share of a hedge.
    pub fn deposit_at(&self, now: Instant) {
        self.budget.deposit_at(now);
    }

    /// Takes one hedge from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// What `/upstreams` shows.
    pub fn snapshot(&self, now: Instant) -> serde_json::Value {
        serde_json::json!({
            "after": self.policy.after,
            "budget_percent": self.policy.budget_percent,
            "delay_ms": self.delay(now).map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

/// Latency counts over the current window and the one before it.
struct LatencyWindow {
    started: Instant,
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
}

impl LatencyWindow {
    fn new(now: Instant) -> Self {
        LatencyWindow {
            started: now,
            current: [0; BUCKETS],
            previous: [0; BUCKETS],
        }
    }

    /// Moves on to a new window when the current one is over.
    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age < WINDOW {
            return;
        }
        self.previous = if age < 2 * WINDOW {
            self.current
        } else {
            [0; BUCKETS]
        };
        self.current = [0; BUCKETS];
        self.started = now;
    }

    fn record(&mut self, latency: Duration, now: Instant) {
        self.roll(now);
        let b = &mut self.current[bucket(latency)];
        *b = b.saturating_add(1);
    }

    fn quantile(&mut self, q: f64, now: Instant) -> Option<Duration> {
        self.roll(now);
        let count = |i: usize| u64::from(self.current[i]) + u64::from(self.previous[i]);
        let total: u64 = (0..BUCKETS).map(count).sum();
        if total < u64::from(MIN_SAMPLES) {
            return None;
        }
        quantile(count, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn hedge_after_takes_a_duration_or_a_quantile() {
        assert_eq!(HedgeAfter::parse("50ms"), Ok(HedgeAfter::Fixed(50 * MS)));
        assert_eq!(HedgeAfter::parse("p95"), Ok(HedgeAfter::Quantile(950)));
        assert_eq!(HedgeAfter::parse("p99.9"), Ok(HedgeAfter::Quantile(999)));
        for bad in [
            "", "0s", "p", "p49", "p100", "pp95", "soon", "-5ms", "p95ms", "p99.95", "p5e1",
            "p+95", "p095", "p95.", "p 95",
        ] {
            assert!(HedgeAfter::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(HedgeAfter::Quantile(950).to_string(), "p95");
        assert_eq!(HedgeAfter::Quantile(999).to_string(), "p99.9");
        assert_eq!(HedgeAfter::Fixed(50 * MS).to_string(), "50ms");
        assert_eq!(parse_budget("10"), Ok(10.0));
        assert_eq!(parse_budget("2.5%"), Ok(2.5));
        assert!(parse_budget("101").is_err() && parse_budget("x").is_err());
    }

    #[test]
    fn a_layer_turns_hedging_on_or_changes_its_budget() {
        let on = |after, budget_percent| {
            Some(HedgePolicy {
                after,
                budget_percent,
            })
        };
        let p95 = HedgeAfter::Quantile(950);
        let fixed = HedgeAfter::Fixed(20 * MS);
        assert_eq!(HedgePolicy::layered(None, None, Some(5.0), 10.0), None);
        assert_eq!(
            HedgePolicy::layered(None, Some(p95), None, 7.0),
            on(p95, 7.0)
        );
        let under = on(fixed, 10.0);
        assert_eq!(
            HedgePolicy::layered(under, None, Some(5.0), 10.0),
            on(fixed, 5.0)
        );
        assert_eq!(
            HedgePolicy::layered(under, Some(p95), None, 3.0),
            on(p95, 10.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quantile_needs_samples_and_follows_the_latency() {
        let h = Hedging::new(HedgePolicy {
            after: HedgeAfter::Quantile(950),
            budget_percent: 10.0,
        });
        let now = Instant::now();
        for _ in 0..(MIN_SAMPLES - 1) {
            h.observe(2 * MS, now);
        }
        assert_eq!(h.delay(now), None, "too few samples");
        // 95 answers at 2 ms, 5 at 200 ms: the p95 is in the 2 ms bucket.
        for _ in 0..(95 - (MIN_SAMPLES - 1)) {
            h.observe(2 * MS, now);
        }
        for _ in 0..5 {
            h.observe(200 * MS, now);
        }
        let p95 = h.delay(now).expect("a p95");
        assert!((2 * MS..=3 * MS).contains(&p95), "{p95:?}");

        // The window moves: 20 s later, only what came since counts.
        let later = now + Duration::from_secs(21);
        for _ in 0..60 {
            h.observe(40 * MS, later);
        }
        let p95 = h.delay(later).expect("a p95");
        assert!((40 * MS..=50 * MS).contains(&p95), "{p95:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_hedges_to_a_share_of_requests() {
        let h = Hedging::new(HedgePolicy {
            after: HedgeAfter::Fixed(10 * MS),
            budget_percent: 10.0,
        });
        let now = Instant::now();
        for _ in 0..1_000 {
            h.deposit_at(now);
        }
        let allowed = (0..1_000).filter(|_| h.withdraw()).count();
        // 10 % of 1,000, plus one a second over the ten-second window.
        assert_eq!(allowed, 100 + 10);
    }
}
