//! The handles the data path updates: label values resolved once per
//! destination, listener or prober, so a request touches only atomics.

use std::sync::{Arc, OnceLock};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::series::{Book, CircuitSeries};
use super::{
    CLIENT_ERROR_REASONS, COMMON_CODES, Direction, FAILURE_REASONS, HEDGE_OUTCOMES, RETRY_REASONS,
    SKIP_REASONS,
};

/// Cached handles for one (direction, destination): the hot path touches only atomics.
/// Its label set is leased while it lives (see [`super::series`]).
pub struct DestinationMetrics {
    pub(super) book: Arc<Book>,
    pub(super) requests: IntCounterVec,
    pub(super) direction: Direction,
    pub(super) label: Box<str>,
    /// The `route` label.
    pub(super) route: Box<str>,
    pub(super) observed: IntCounterVec,
    pub(super) common: [OnceLock<IntCounter>; COMMON_CODES.len()],
    pub inflight: IntGauge,
    pub duration: Histogram,
    pub(super) failures: [IntCounter; FAILURE_REASONS.len()],
    pub(super) retries: [IntCounter; RETRY_REASONS.len()],
    pub(super) retries_skipped: [IntCounter; SKIP_REASONS.len()],
    /// `breakwater_hedges_total`: its series are made only for destinations
    /// that hedge ([`hedge_series`](Self::hedge_series)).
    pub(super) hedges: IntCounterVec,
    pub(super) rejected: IntCounterVec,
    pub(super) client_errors: [IntCounter; CLIENT_ERROR_REASONS.len()],
    pub(super) transitions: [IntCounter; 3],
    pub limit: IntGauge,
    pub queued: IntGauge,
    /// `rejected` for each of the direction's [`Direction::rejections`].
    pub(super) rejections: Box<[IntCounter]>,
}

impl DestinationMetrics {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn count_response(&self, code: u16) {
        match COMMON_CODES.iter().position(|&c| c == code) {
            Some(i) => self.common[i].get_or_init(|| self.counter_for(code)).inc(),
            None => self.counter_for(code).inc(),
        }
    }

    /// Counts a failure by its reason, one of [`FAILURE_REASONS`].
    pub fn count_failure(&self, reason: &str) {
        count_by(&self.failures, &FAILURE_REASONS, reason);
    }

    /// The circuit-state series of one endpoint, made once when the endpoint
    /// is and dropped with it, so that pod churn does not grow the series.
    pub fn circuit_gauge(&self, endpoint: &str) -> CircuitSeries {
        self.book
            .circuit(self.direction, &self.label, &self.route, endpoint)
    }

    /// This destination will not be counted again (it expired, or its route
    /// is gone): its series are removed once its last handle is dropped.
    pub fn expire(&self) {
        self.book.expire(self.direction, &self.label, &self.route);
    }

    /// Counts a circuit entering `to` (`closed`, `open`, `half-open`).
    pub fn count_transition(&self, to: &str) {
        count_by(&self.transitions, &["closed", "open", "half-open"], to);
    }

    /// Counts a request breakwater refused itself for this destination.
    pub fn count_rejected(&self, reason: &str) {
        let reasons = self.direction.rejections();
        if let Some(i) = reasons.iter().position(|&r| r == reason) {
            return self.rejections[i].inc();
        }
        self.rejected
            .with_label_values(&[self.direction.as_str(), reason])
            .inc();
    }

    /// Counts a request failed by its client, one of [`CLIENT_ERROR_REASONS`].
    pub fn count_client_error(&self, reason: &str) {
        count_by(&self.client_errors, &CLIENT_ERROR_REASONS, reason);
    }

    /// Counts what an observed policy would have done (`breakwater_observed_total`).
    pub fn count_observed(&self, policy: &str, action: &str) {
        self.observed
            .with_label_values(&[
                self.direction.as_str(),
                &self.label,
                &self.route,
                policy,
                action,
            ])
            .inc();
    }

    /// Counts a retry by its reason, one of [`RETRY_REASONS`].
    pub fn count_retry(&self, reason: &str) {
        count_by(&self.retries, &RETRY_REASONS, reason);
    }

    /// Counts a retry not made, one of [`SKIP_REASONS`].
    pub fn count_retry_skipped(&self, reason: &str) {
        count_by(&self.retries_skipped, &SKIP_REASONS, reason);
    }

    /// Makes the hedge series at zero, for a destination that hedges.
    pub fn hedge_series(&self) {
        for outcome in HEDGE_OUTCOMES {
            self.hedge_counter(outcome);
        }
    }

    /// Counts a hedged request, one of [`HEDGE_OUTCOMES`].
    pub fn count_hedge(&self, outcome: &str) {
        self.hedge_counter(outcome).inc();
    }

    fn hedge_counter(&self, outcome: &str) -> IntCounter {
        self.hedges
            .with_label_values(&[self.direction.as_str(), &self.label, &self.route, outcome])
    }

    fn counter_for(&self, code: u16) -> IntCounter {
        let mut buf = itoa::Buffer::new();
        self.requests.with_label_values(&[
            self.direction.as_str(),
            &self.label,
            &self.route,
            buf.format(code),
        ])
    }
}

impl Drop for DestinationMetrics {
    fn drop(&mut self) {
        self.book.release(self.direction, &self.label, &self.route);
    }
}

/// Increments the counter whose label is `reason`, among cached ones.
fn count_by(counters: &[IntCounter], reasons: &[&str], reason: &str) {
    if let Some(i) = reasons.iter().position(|&r| r == reason) {
        counters[i].inc();
    }
}

/// Handles the app health prober updates.
pub struct AppHealthMetrics {
    pub(super) healthy: IntGauge,
    pub(super) transitions: IntCounterVec,
    pub(super) ok: IntCounter,
    pub(super) failed: IntCounter,
    pub(super) duration: Histogram,
}

impl AppHealthMetrics {
    pub fn observe(&self, ok: bool, seconds: f64) {
        if ok { &self.ok } else { &self.failed }.inc();
        self.duration.observe(seconds);
    }

    pub fn transition(&self, to: &str, healthy: bool) {
        self.transitions.with_label_values(&[to]).inc();
        self.healthy.set(i64::from(healthy));
    }
}

/// Handles for one listener's opaque TCP relays.
#[derive(Clone)]
pub struct OpaqueMetrics {
    pub connections: IntCounter,
    pub connect_failures: IntCounter,
    pub sent: IntCounter,
    pub received: IntCounter,
}

/// Handles for one listener's connection counters.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub accepted: IntCounter,
    pub active: IntGauge,
    pub refused: IntCounter,
}
