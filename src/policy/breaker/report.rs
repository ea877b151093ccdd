//! What a breaker tells the pipeline: its state (for the gauge), each
//! transition (for the log and the counter), a refusal (for `Retry-After`) and
//! a snapshot (for `/upstreams`).

use std::time::Duration;

use serde::Serialize;

/// Also the value of `breakwater_circuit_state` and the `to` label of
/// `breakwater_circuit_transitions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

/// Why the circuit changed state, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    /// The open duration passed and a request came: it goes as a probe.
    ProbeDue,
    ProbeFailed,
    ProbesSucceeded,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::ConsecutiveFailures => "consecutive-failures",
            Cause::FailureRate => "failure-rate",
            Cause::SlowCallRate => "slow-call-rate",
            Cause::ProbeDue => "probe-due",
            Cause::ProbeFailed => "probe-failed",
            Cause::ProbesSucceeded => "probes-succeeded",
        }
    }
}

/// A change of state, reported once to whoever caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    pub cause: Cause,
    /// How long the circuit stays open, when `to` is open.
    pub open_for: Option<Duration>,
}

/// The refusal: the circuit is open, or half-open with every probe out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit open, next probe in {retry_after:?}")]
pub struct Open {
    /// Time until a probe may go. Zero while half-open: a probe is out and its
    /// answer decides, which the breaker cannot time.
    pub retry_after: Duration,
}

impl Open {
    /// `Retry-After` in whole seconds, rounded up and at least 1, so that a
    /// client never hears "retry now" from a circuit that is not closed.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// What `/upstreams` shows of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerSnapshot {
    pub state: CircuitState,
    /// While open: microseconds until the next probe may go (0: due now).
    pub next_probe_in_us: Option<u64>,
    pub calls_in_window: u32,
    pub failures_in_window: u32,
    pub slow_calls_in_window: u32,
    pub consecutive_failures: u32,
    pub probes_in_flight: u32,
    /// Trips without a clean period between them; each doubles the open duration.
    pub trips: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gauge_and_labels() {
        assert_eq!(CircuitState::Closed.as_gauge(), 0);
        assert_eq!(CircuitState::Open.as_gauge(), 1);
        assert_eq!(CircuitState::HalfOpen.as_gauge(), 2);
        assert_eq!(CircuitState::HalfOpen.as_str(), "half-open");
        assert_eq!(
            serde_json::to_value(CircuitState::HalfOpen).expect("json"),
            "half-open"
        );
        assert_eq!(Cause::ConsecutiveFailures.as_str(), "consecutive-failures");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_never_says_now() {
        let secs = |d: Duration| Open { retry_after: d }.retry_after_secs();
        assert_eq!(secs(Duration::from_secs(3)), 3);
        assert_eq!(secs(Duration::from_millis(2001)), 3);
        assert_eq!(secs(Duration::from_micros(1)), 1);
        assert_eq!(secs(Duration::ZERO), 1);
    }
}
