//! The circuit breaker of one endpoint: closed → open → half-open → closed (or
//! open again), tripped by consecutive failures, a failure rate or a slow-call
//! rate over a sliding window. It only decides; the pipeline classifies outcomes,
//! enforces refusals, logs transitions and counts them in metrics.
//!
//! Why a breaker as well as the retry budget: the budget bounds the *extra* load
//! retries add to a destination, but every first attempt still goes out. A
//! breaker stops first attempts to one endpoint that is known to be failing, so
//! it gets room to recover and callers get an immediate `circuit-open` (with a
//! `Retry-After`) instead of waiting on a timeout. The two answer different
//! questions — "may I send this again?" and "is this endpoint worth sending to?"
//! — and are kept apart so that each stays a small rule.

mod config;
mod report;
mod window;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub use config::{BreakerConfig, MAX_OPEN_GROWTH};
pub use report::{BreakerSnapshot, Cause, CircuitState, Open, Transition};
use window::Window;

#[derive(Clone, Copy, Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl State {
    fn kind(self) -> CircuitState {
        match self {
            State::Closed => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition; a permit from an earlier state describes an
    /// upstream that no longer is, and its outcome is ignored.
    generation: u64,
    consecutive: u32,
    trips: u32,
    closed_since: Instant,
    /// When the circuit last closed after being open: slow start ramps from it.
    recovered_at: Option<Instant>,
    window: Window,
}

/// One endpoint's breaker. The mutex is per endpoint and held for a few
/// additions, never across an await.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                consecutive: 0,
                trips: 0,
                closed_since: now,
                recovered_at: None,
                window: Window::new(config.window, now),
            }),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// A poisoned lock still holds consistent counters: nothing in here panics
    /// between two writes.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets a request through, or says how long until a probe may go. When the
    /// open duration has passed, this request becomes the probe and the permit
    /// carries the open → half-open transition.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<BreakerPermit, Open> {
        let mut inner = self.lock();
        let (probe, transition) = match inner.state {
            State::Closed => (false, None),
            State::Open { until } if now < until => {
                return Err(Open {
                    retry_after: until - now,
                });
            }
            State::Open { .. } => {
                inner.state = State::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                inner.generation += 1;
                let t = Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen,
                    cause: Cause::ProbeDue,
                    open_for: None,
                };
                (true, Some(t))
            }
            State::HalfOpen {
                ref mut admitted, ..
            } => {
                if *admitted >= self.config.probes() {
                    return Err(Open {
                        retry_after: Duration::ZERO,
                    });
                }
                *admitted += 1;
                (true, None)
            }
        };
        Ok(BreakerPermit {
            breaker: Arc::clone(self),
            generation: inner.generation,
            probe,
            recorded: false,
            transition,
        })
    }

    /// The endpoint accepts connections again, after the circuit opened on
    /// failures to reach it: the half-open probe may go now instead of when the
    /// open duration ends. Only the wait is cut; the probe still decides, so an
    /// endpoint that accepts but fails opens again, for longer.
    pub fn reachable(&self, now: Instant) {
        if let State::Open { until } = &mut self.lock().state
            && *until > now
        {
            *until = now;
        }
    }

    /// When the probe is due, while the circuit is open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.lock().state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Whether `admit` would let a request through now, for the balancer's
    /// choice of endpoint. Racy by nature: `admit` has the last word.
    pub fn eligible(&self, now: Instant) -> bool {
        self.eligibility(now).0
    }

    /// [`eligible`](Self::eligible), and when the circuit last closed again
    /// after it had opened (none if it never opened): in one lock, for the
    /// balancer's slow start.
    pub fn eligibility(&self, now: Instant) -> (bool, Option<Instant>) {
        let inner = self.lock();
        let eligible = match inner.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::HalfOpen { admitted, .. } => admitted < self.config.probes(),
        };
        (eligible, inner.recovered_at)
    }

    /// The state as last changed. An open circuit whose probe is due stays open
    /// until a request comes to be the probe (as in resilience4j), so the gauge
    /// never claims a probe that was not sent.
    pub fn state(&self) -> CircuitState {
        self.lock().state.kind()
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.lock();
        let counts = inner.window.counts(now);
        let (next_probe_in_us, probes_in_flight) = match inner.state {
            State::Closed => (None, 0),
            State::Open { until } => {
                let left = until.saturating_duration_since(now).as_micros();
                (Some(u64::try_from(left).unwrap_or(u64::MAX)), 0)
            }
            State::HalfOpen {
                admitted,
                succeeded,
            } => (None, admitted.saturating_sub(succeeded)),
        };
        BreakerSnapshot {
            state: inner.state.kind(),
            next_probe_in_us,
            calls_in_window: counts.calls,
            failures_in_window: counts.failures,
            slow_calls_in_window: counts.slow,
            consecutive_failures: inner.consecutive,
            probes_in_flight,
            trips: inner.effective_trips(&self.config, now),
        }
    }

    fn record(
        &self,
        permit: &BreakerPermit,
        success: bool,
        latency: Duration,
        now: Instant,
        may_open: impl FnOnce() -> bool,
    ) -> Option<Transition> {
        let config = &self.config;
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            return None;
        }
        let slow = config.is_slow(latency);
        match inner.state {
            State::Closed => {
                inner.window.record(now, !success, slow);
                inner.consecutive = if success {
                    0
                } else {
                    inner.consecutive.saturating_add(1)
                };
                let cause = inner.trip_cause(config, now)?;
                // Asked last and only on a real trip: the gate may count it.
                if !may_open() {
                    return None;
                }
                Some(inner.open(config, now, cause))
            }
            State::HalfOpen {
                ref mut succeeded, ..
            } => {
                if !success || slow {
                    return Some(inner.open(config, now, Cause::ProbeFailed));
                }
                *succeeded += 1;
                if *succeeded < config.probes() {
                    return None;
                }
                Some(inner.close(now))
            }
            // Unreachable: opening bumps the generation.
            State::Open { .. } => None,
        }
    }

    /// A probe that ends without an outcome gives its slot back, or the circuit
    /// would stay half-open with no probe out, refusing forever.
    fn release(&self, permit: &BreakerPermit) {
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            return;
        }
        if let State::HalfOpen {
            ref mut admitted, ..
        } = inner.state
        {
            *admitted = admitted.saturating_sub(1);
        }
    }
}

impl Inner {
    fn trip_cause(&self, config: &BreakerConfig, now: Instant) -> Option<Cause> {
        if config.consecutive_failures > 0 && self.consecutive >= config.consecutive_failures {
            return Some(Cause::ConsecutiveFailures);
        }
        if config.failure_rate == 0 && config.slow_call.is_none() {
            return None; // no rate rule: spare every call the window's sum
        }
        let c = self.window.counts(now);
        if c.calls < config.min_requests.max(1) {
            return None;
        }
        let reaches = |part: u32, percent: u8| {
            percent > 0 && u64::from(part) * 100 >= u64::from(percent) * u64::from(c.calls)
        };
        if reaches(c.failures, config.failure_rate) {
            return Some(Cause::FailureRate);
        }
        if config.slow_call.is_some() && reaches(c.slow, config.slow_call_rate) {
            return Some(Cause::SlowCallRate);
        }
        None
    }

    /// Trips count as repeated until the circuit has stayed closed for a whole
    /// window: by then the window holds only calls made after the recovery, so
    /// a new trip is a new incident and starts again from the base duration.
    fn effective_trips(&self, config: &BreakerConfig, now: Instant) -> u32 {
        let clean = matches!(self.state, State::Closed)
            && now.saturating_duration_since(self.closed_since) >= config.window;
        if clean { 0 } else { self.trips }
    }

    fn open(&mut self, config: &BreakerConfig, now: Instant, cause: Cause) -> Transition {
        let from = self.state.kind();
        self.trips = self.effective_trips(config, now).saturating_add(1);
        let open_for = config.open_duration_for(self.trips);
        // Only an absurd configured duration overflows; it then opens for as
        // long as the clock allows rather than not at all.
        let until = now
            .checked_add(open_for)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        self.state = State::Open { until };
        self.generation += 1;
        Transition {
            from,
            to: CircuitState::Open,
            cause,
            open_for: Some(open_for),
        }
    }

    /// Closing starts from a clean slate: the failures that opened the circuit
    /// describe the upstream before it recovered.
    fn close(&mut self, now: Instant) -> Transition {
        let from = self.state.kind();
        self.state = State::Closed;
        self.generation += 1;
        self.consecutive = 0;
        self.closed_since = now;
        self.recovered_at = Some(now);
        self.window.clear();
        Transition {
            from,
            to: CircuitState::Closed,
            cause: Cause::ProbesSucceeded,
            open_for: None,
        }
    }
}

/// One admitted request. Record its outcome when the response is complete (the
/// body's end, or the error); a permit dropped without a record means "no
/// information": a cancelled request neither opens nor closes the circuit, and
/// a cancelled probe hands its slot to the next request.
#[must_use = "a permit records the outcome of the request it admitted"]
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    recorded: bool,
    transition: Option<Transition>,
}

impl BreakerPermit {
    /// The transition this admission caused (open → half-open), to report.
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }

    /// Whether this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records the outcome: `success` is false for a connect failure, reset,
    /// timeout or any 5xx. Returns the transition it caused, if any.
    pub fn record(self, success: bool, latency: Duration, now: Instant) -> Option<Transition> {
        self.record_gated(success, latency, now, || true)
    }

    /// [`record`](Self::record) for a destination that caps ejections:
    /// `may_open` is called (under this endpoint's lock, so it must be quick and
    /// must not touch this breaker) only when the outcome would open a closed
    /// circuit, and may refuse; the circuit then stays closed and asks again on
    /// the next failure. Reopening from half-open does not ask: the endpoint is
    /// already counted as ejected until it closes.
    pub fn record_gated(
        mut self,
        success: bool,
        latency: Duration,
        now: Instant,
        may_open: impl FnOnce() -> bool,
    ) -> Option<Transition> {
        self.recorded = true;
        self.breaker.record(&self, success, latency, now, may_open)
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn only_consecutive(n: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: n,
            failure_rate: 0,
            ..BreakerConfig::default()
        }
    }

    fn only_rate(rate: u8, min_requests: u32) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 0,
            failure_rate: rate,
            min_requests,
            ..BreakerConfig::default()
        }
    }

    fn breaker(config: BreakerConfig, t0: Instant) -> Arc<Breaker> {
        Arc::new(Breaker::new(config, t0))
    }

    /// Admits and records one call; panics if refused.
    fn call(b: &Arc<Breaker>, ok: bool, now: Instant) -> Option<Transition> {
        b.admit(now).expect("admitted").record(ok, 10 * MS, now)
    }

    fn trip(b: &Arc<Breaker>, now: Instant) -> Transition {
        (0..b.config().consecutive_failures.max(1))
            .find_map(|_| call(b, false, now))
            .expect("trips")
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_success_resets_the_run() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(3), t0);
        assert_eq!(call(&b, false, t0), None);
        assert_eq!(call(&b, false, t0), None);
        assert_eq!(call(&b, true, t0), None, "a success breaks the run");
        assert_eq!(call(&b, false, t0), None);
        assert_eq!(call(&b, false, t0), None);
        let t = call(&b, false, t0).expect("the third in a row opens");
        assert_eq!(
            t,
            Transition {
                from: CircuitState::Closed,
                to: CircuitState::Open,
                cause: Cause::ConsecutiveFailures,
                open_for: Some(5 * SEC),
            }
        );
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn zero_turns_each_rule_off() {
        let t0 = Instant::now();
        let b = breaker(
            BreakerConfig {
                consecutive_failures: 0,
                failure_rate: 0,
                slow_call: Some(MS),
                slow_call_rate: 0,
                ..BreakerConfig::default()
            },
            t0,
        );
        for _ in 0..1000 {
            assert_eq!(call(&b, false, t0), None);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn the_failure_rate_counts_only_once_the_window_holds_min_requests() {
        let t0 = Instant::now();
        let b = breaker(only_rate(50, 10), t0);
        for _ in 0..5 {
            assert_eq!(call(&b, true, t0), None);
        }
        for _ in 0..4 {
            assert_eq!(call(&b, false, t0), None, "fewer than 10 calls so far");
        }
        let t = call(&b, false, t0).expect("5 of 10 failed: 50%");
        assert_eq!(t.cause, Cause::FailureRate);
    }

    #[test]
    fn the_failure_rate_forgets_calls_older_than_the_window() {
        let t0 = Instant::now();
        let b = breaker(only_rate(50, 10), t0);
        for _ in 0..9 {
            assert_eq!(call(&b, false, t0), None);
        }
        // Ten seconds later those nine failures have left the window.
        let later = t0 + 10 * SEC;
        for _ in 0..6 {
            assert_eq!(call(&b, true, later), None);
        }
        for _ in 0..4 {
            assert_eq!(call(&b, false, later), None, "4 of 10 in the window");
        }
        assert_eq!(b.snapshot(later).failures_in_window, 4);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn the_slow_call_rate_opens_even_when_every_call_succeeds() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            slow_call: Some(100 * MS),
            slow_call_rate: 50,
            ..only_rate(0, 4)
        };
        let b = breaker(config, t0);
        let fast = || b.admit(t0).expect("admitted").record(true, 99 * MS, t0);
        let slow = || b.admit(t0).expect("admitted").record(true, 100 * MS, t0);
        assert_eq!(fast(), None);
        assert_eq!(fast(), None);
        assert_eq!(slow(), None, "3 calls, under min_requests");
        let t = slow().expect("2 of 4 slow: 50%");
        assert_eq!(t.cause, Cause::SlowCallRate);
    }

    #[test]
    fn slow_calls_do_not_count_without_the_slow_call_rule() {
        let t0 = Instant::now();
        let b = breaker(only_rate(50, 1), t0);
        let permit = b.admit(t0).expect("admitted");
        assert_eq!(permit.record(true, 60 * SEC, t0), None);
        assert_eq!(b.snapshot(t0).slow_calls_in_window, 0);
    }

    #[test]
    fn an_open_circuit_refuses_with_the_time_until_the_probe() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        trip(&b, t0);
        let refused = b.admit(t0 + 2 * SEC).expect_err("open");
        assert_eq!(refused.retry_after, 3 * SEC);
        assert_eq!(refused.retry_after_secs(), 3);
        let refused = b.admit(t0 + 4 * SEC + MS).expect_err("open");
        assert_eq!(refused.retry_after_secs(), 1, "999ms rounds up");
        assert!(!b.eligible(t0 + 4 * SEC));
        assert_eq!(b.snapshot(t0 + 4 * SEC).next_probe_in_us, Some(1_000_000));
        assert!(b.eligible(t0 + 5 * SEC));
        assert_eq!(b.state(), CircuitState::Open, "open until a probe goes");
    }

    #[test]
    fn half_open_lets_the_probes_through_and_closes_when_all_succeed() {
        let t0 = Instant::now();
        let b = breaker(
            BreakerConfig {
                half_open_requests: 2,
                ..only_consecutive(1)
            },
            t0,
        );
        trip(&b, t0);
        let due = t0 + 5 * SEC;
        let first = b.admit(due).expect("first probe");
        assert!(first.is_probe());
        assert_eq!(
            first.transition().map(|t| (t.to, t.cause)),
            Some((CircuitState::HalfOpen, Cause::ProbeDue))
        );
        let second = b.admit(due).expect("second probe");
        assert_eq!(second.transition(), None, "reported once");
        let refused = b.admit(due).expect_err("both probes are out");
        assert_eq!(refused.retry_after, Duration::ZERO);
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(!b.eligible(due));
        assert_eq!(b.snapshot(due).probes_in_flight, 2);

        assert_eq!(first.record(true, MS, due), None, "one of two");
        let t = second.record(true, MS, due).expect("closes");
        assert_eq!(
            (t.from, t.to),
            (CircuitState::HalfOpen, CircuitState::Closed)
        );
        assert_eq!(t.cause, Cause::ProbesSucceeded);
        let s = b.snapshot(due);
        assert_eq!(s.state, CircuitState::Closed);
        assert_eq!(
            (s.calls_in_window, s.failures_in_window),
            (0, 0),
            "closing clears the window"
        );
    }

    #[test]
    fn a_close_after_an_open_is_when_the_endpoint_recovered() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        assert_eq!(b.eligibility(t0), (true, None), "never opened");
        trip(&b, t0);
        assert_eq!(b.eligibility(t0 + SEC), (false, None));
        let due = t0 + 5 * SEC;
        let probe = b.admit(due).expect("probe");
        assert!(probe.record(true, MS, due).is_some(), "closes");
        assert_eq!(b.eligibility(due + SEC), (true, Some(due)));
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_ten_times_the_base() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        assert_eq!(trip(&b, t0).open_for, Some(5 * SEC));
        let mut now = t0;
        for expected in [10, 20, 40, 50, 50] {
            now += 60 * SEC;
            let probe = b.admit(now).expect("probe due");
            let t = probe.record(false, MS, now).expect("reopens");
            assert_eq!(
                (t.from, t.cause),
                (CircuitState::HalfOpen, Cause::ProbeFailed)
            );
            assert_eq!(t.open_for, Some(expected * SEC));
        }
        assert_eq!(b.snapshot(now).trips, 6);
    }

    #[test]
    fn a_reachable_endpoint_gets_its_probe_at_once_and_the_probe_decides() {
        let t0 = Instant::now();
        let breaker = Arc::new(Breaker::new(only_consecutive(1), t0));
        let t = breaker.admit(t0).unwrap().record(false, MS, t0);
        assert_eq!(t.map(|t| t.to), Some(CircuitState::Open));
        let until = breaker.open_until().expect("open");
        assert!(breaker.admit(t0 + MS).is_err(), "open, no probe yet");
        breaker.reachable(t0 + 2 * MS);
        assert!(breaker.open_until().is_some_and(|u| u < until));
        let probe = breaker.admit(t0 + 2 * MS).expect("the probe goes now");
        assert!(probe.is_probe());
        // It still fails: open again, for twice as long as before.
        let t = probe.record(false, MS, t0 + 3 * MS).expect("reopens");
        assert_eq!(t.open_for, Some(2 * BreakerConfig::default().open_duration));
        assert!(breaker.open_until().is_some());
    }

    #[test]
    fn a_slow_probe_is_a_failed_probe() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            slow_call: Some(SEC),
            slow_call_rate: 100,
            ..only_consecutive(1)
        };
        let b = breaker(config, t0);
        trip(&b, t0);
        let now = t0 + 5 * SEC;
        let t = b.admit(now).expect("probe").record(true, 2 * SEC, now);
        assert_eq!(t.map(|t| t.cause), Some(Cause::ProbeFailed));
    }

    #[test]
    fn the_growth_resets_after_a_full_window_closed() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        trip(&b, t0);
        let now = t0 + 5 * SEC;
        assert!(call(&b, true, now).is_some(), "closes at once");
        // Tripping again within the window counts as a repeated trip…
        let soon = now + 9 * SEC;
        assert_eq!(trip(&b, soon).open_for, Some(10 * SEC));
        let back = soon + 10 * SEC;
        assert!(call(&b, true, back).is_some(), "closes again");
        assert_eq!(b.snapshot(back + 9 * SEC).trips, 2);
        // …but after a whole clean window it starts from the base again.
        let clean = back + 10 * SEC;
        assert_eq!(b.snapshot(clean).trips, 0);
        assert_eq!(trip(&b, clean).open_for, Some(5 * SEC));
    }

    #[test]
    fn a_permit_dropped_without_a_record_tells_nothing() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        for _ in 0..10 {
            drop(b.admit(t0).expect("closed"));
        }
        assert_eq!(b.snapshot(t0).calls_in_window, 0);
        trip(&b, t0);
        let due = t0 + 5 * SEC;
        drop(b.admit(due).expect("probe"));
        assert_eq!(b.state(), CircuitState::HalfOpen, "no information");
        let probe = b.admit(due).expect("the slot came back");
        assert_eq!(probe.transition(), None);
        assert!(probe.record(true, MS, due).is_some());
    }

    #[test]
    fn outcomes_of_requests_admitted_before_a_transition_are_ignored() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        let early = b.admit(t0).expect("closed");
        let earlier = b.admit(t0).expect("closed");
        trip(&b, t0);
        assert_eq!(early.record(true, MS, t0), None);
        let due = t0 + 5 * SEC;
        let probe = b.admit(due).expect("probe");
        assert_eq!(
            b.state(),
            CircuitState::HalfOpen,
            "an old success closes nothing"
        );
        assert!(probe.record(true, MS, due).is_some());
        assert_eq!(earlier.record(false, MS, due), None);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "an old failure opens nothing"
        );
        assert_eq!(b.snapshot(due).calls_in_window, 0);
    }

    #[test]
    fn a_gate_may_keep_the_circuit_closed_until_it_allows_the_trip() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(2), t0);
        let fail = |allow: bool| {
            let p = b.admit(t0).expect("closed");
            p.record_gated(false, MS, t0, || allow)
        };
        let mut asked = 0;
        let p = b.admit(t0).expect("closed");
        assert_eq!(
            p.record_gated(false, MS, t0, || {
                asked += 1;
                false
            }),
            None
        );
        assert_eq!(asked, 0, "asked only when the circuit would open");
        assert_eq!(fail(false), None, "vetoed");
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(fail(true).is_some(), "the next failure asks again");
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn the_snapshot_serializes_for_the_admin_endpoint() {
        let t0 = Instant::now();
        let b = breaker(only_consecutive(1), t0);
        trip(&b, t0);
        let s = serde_json::to_value(b.snapshot(t0 + SEC)).expect("json");
        assert_eq!(s["state"], "open");
        assert_eq!(s["next_probe_in_us"], 4_000_000);
        assert_eq!(s["failures_in_window"], 1);
    }
}
