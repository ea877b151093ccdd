//! The breaker flags of one destination, and the rule that grows the open
//! duration on repeated trips.

use std::time::Duration;

use serde::Serialize;

/// Repeated trips double the open duration up to this multiple of
/// `--breaker-open-duration` (50s at the default 5s). A multiple rather than a
/// fixed ceiling keeps the cap on the scale the operator chose, and ten is about
/// where waiting longer saves the upstream little while delaying the discovery
/// that it has recovered: a sidecar has no operator to close the circuit by hand.
pub const MAX_OPEN_GROWTH: u32 = 10;

/// The breaker flags of one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit; 0 turns the rule off.
    pub consecutive_failures: u32,
    /// Percentage of failed calls in the window that opens it; 0 turns it off.
    pub failure_rate: u8,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub window: Duration,
    /// Calls the window must hold before either rate rule counts, so that two
    /// failures out of three calls do not open a circuit.
    pub min_requests: u32,
    /// How long the first trip stays open; it doubles on each repeated trip.
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub open_duration: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_requests: u32,
    /// A call at least this slow counts as slow (resilience4j's slow-call rule).
    #[serde(serialize_with = "crate::units::serialize_opt_duration")]
    pub slow_call: Option<Duration>,
    /// Percentage of slow calls in the window that opens the circuit; 0 turns
    /// it off. 100, resilience4j's default, opens only when every call is slow.
    pub slow_call_rate: u8,
}

impl Default for BreakerConfig {
    /// The defaults of the CLI contract.
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 50,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_duration: Duration::from_secs(5),
            half_open_requests: 1,
            slow_call: None,
            slow_call_rate: 100,
        }
    }
}

impl BreakerConfig {
    /// The open duration of trip number `trips` (1-based) without a clean period
    /// in between: doubled each time, capped at [`MAX_OPEN_GROWTH`] × the base.
    pub fn open_duration_for(&self, trips: u32) -> Duration {
        let doubled = self
            .open_duration
            .saturating_mul(1u32 << trips.saturating_sub(1).min(31));
        doubled.min(self.open_duration.saturating_mul(MAX_OPEN_GROWTH))
    }

    pub(super) fn probes(&self) -> u32 {
        self.half_open_requests.max(1)
    }

    pub(super) fn is_slow(&self, latency: Duration) -> bool {
        self.slow_call_rate > 0 && self.slow_call.is_some_and(|t| latency >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_open_duration_doubles_per_trip_up_to_ten_times_the_base() {
        let c = BreakerConfig::default();
        let open: Vec<_> = (1..=7).map(|t| c.open_duration_for(t)).collect();
        assert_eq!(open, [5, 10, 20, 40, 50, 50, 50].map(|s| s * SEC));
        assert_eq!(c.open_duration_for(u32::MAX), 50 * SEC, "no overflow");
    }

    #[test]
    fn durations_serialize_as_the_flags_take_them() {
        let config = serde_json::to_value(BreakerConfig::default()).expect("json");
        assert_eq!(config["window"], "10s");
        assert_eq!(config["open_duration"], "5s");
        assert_eq!(config["slow_call"], serde_json::Value::Null);
        let slow = BreakerConfig {
            slow_call: Some(Duration::from_millis(250)),
            ..BreakerConfig::default()
        };
        let config = serde_json::to_value(slow).expect("json");
        assert_eq!(config["slow_call"], "250ms");
    }
}
