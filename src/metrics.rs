//! Prometheus metric families and the cached per-destination handles the data path
//! updates. Label values are resolved once per destination, never per request.
//! The `reason` label sets come from [`Reason`], so none can be missing.

mod handles;
mod process;
pub mod recent;
mod series;

pub use handles::{AppHealthMetrics, DestinationMetrics, ListenerMetrics, OpaqueMetrics};
pub use series::{CircuitSeries, DEFAULT_MAX_ENDPOINTS};

use std::sync::Arc;

use crate::error::{Counted, Reason};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Which way a request crosses the pod boundary; the `direction` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// The reasons breakwater can refuse a request with in this direction.
    pub fn rejections(self) -> &'static [&'static str] {
        match self {
            Direction::Inbound => &INBOUND_REJECTIONS,
            Direction::Outbound => &OUTBOUND_REJECTIONS,
        }
    }
}

/// Latency buckets in seconds: sub-millisecond proxy overhead up to long polls.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes whose counters are cached per destination; others are looked up.
const COMMON_CODES: [u16; 19] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504,
];

/// The reasons counted as `class` that can happen in `only` (or either)
/// direction, in [`Reason::ALL`]'s order.
const fn reasons<const N: usize>(class: Counted, only: Option<Direction>) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < Reason::ALL.len() {
        if counts(Reason::ALL[i], class, only) {
            out[n] = Reason::ALL[i].as_str();
            n += 1;
        }
        i += 1;
    }
    assert!(n == N, "a reason label set has the wrong length");
    out
}

/// How many reasons [`reasons`] lists.
const fn count(class: Counted, only: Option<Direction>) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < Reason::ALL.len() {
        if counts(Reason::ALL[i], class, only) {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn counts(r: Reason, class: Counted, only: Option<Direction>) -> bool {
    r.counted_as() as u8 == class as u8
        && match only {
            None => true,
            Some(Direction::Inbound) => r.inbound(),
            Some(Direction::Outbound) => r.outbound(),
        }
}

const FAILURES: usize = count(Counted::UpstreamFailure, None);
const CLIENT_ERRORS: usize = count(Counted::ClientError, None);
const OUTBOUND: usize = count(Counted::Rejection, Some(Direction::Outbound));
const INBOUND: usize = count(Counted::Rejection, Some(Direction::Inbound));

/// The upstream's failures breakwater answered itself
/// (`breakwater_upstream_failures_total{reason}`).
pub const FAILURE_REASONS: [&str; FAILURES] = reasons(Counted::UpstreamFailure, None);

/// Why a request failed by its client's doing (a 4xx of breakwater's own):
/// counted apart, never against an upstream.
pub const CLIENT_ERROR_REASONS: [&str; CLIENT_ERRORS] = reasons(Counted::ClientError, None);

/// Why an attempt was retried: the `--retry-on` condition it met.
pub const RETRY_REASONS: [&str; 8] = [
    "connect-failure",
    "reset",
    "per-try-timeout",
    "gateway-error",
    "5xx",
    "429",
    "status",
    "unavailable",
];

/// Why a retry-worthy attempt was not retried.
pub const SKIP_REASONS: [&str; 2] = ["budget-exhausted", "body-too-large"];

/// The outcomes of `breakwater_hedges_total`.
pub const HEDGE_OUTCOMES: [&str; 3] = ["won", "lost", "skipped"];

/// The 503s breakwater answers itself (`breakwater_rejected_total{reason}`),
/// as they can happen outbound: a request with no usable destination, every
/// circuit open, the bulkhead full or its queue timed out.
pub const OUTBOUND_REJECTIONS: [&str; OUTBOUND] =
    reasons(Counted::Rejection, Some(Direction::Outbound));
/// Inbound there is no route to miss and no breaker in front of the app; the
/// app may be unready.
pub const INBOUND_REJECTIONS: [&str; INBOUND] =
    reasons(Counted::Rejection, Some(Direction::Inbound));

/// The series one route's traffic keys count under.
pub struct TrafficSeries<'a> {
    pub route: &'a str,
    /// The destinations a split may send to, its own included where the
    /// route names one host and port.
    pub destinations: Vec<String>,
    pub shadow: Option<String>,
    pub faults: Vec<&'static str>,
}

/// Every metric family breakwater exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    inflight: IntGaugeVec,
    failures: IntCounterVec,
    client_errors: IntCounterVec,
    rejected: IntCounterVec,
    connections: IntCounterVec,
    connections_active: IntGaugeVec,
    connections_refused: IntCounterVec,
    tunnels: IntCounterVec,
    retries: IntCounterVec,
    retries_skipped: IntCounterVec,
    hedges: IntCounterVec,
    app_healthy: IntGauge,
    app_health_transitions: IntCounterVec,
    app_probes: IntCounterVec,
    app_probe_duration: Histogram,
    pub draining: IntGauge,
    circuit_transitions: IntCounterVec,
    concurrency_limit: IntGaugeVec,
    queued: IntGaugeVec,
    observed: IntCounterVec,
    pub policy_reloads: IntCounterVec,
    split: IntCounterVec,
    mirror: IntCounterVec,
    faults: IntCounterVec,
    pub spans_exported: IntCounter,
    spans_dropped: IntCounterVec,
    opaque_connections: IntCounterVec,
    opaque_connect_failures: IntCounterVec,
    opaque_bytes: IntCounterVec,
    destinations_kept: IntGaugeVec,
    destinations_forgotten: IntCounterVec,
    /// Who holds which per-destination and per-endpoint series.
    book: Arc<series::Book>,
}

/// `breakwater_destinations` and `breakwater_destinations_forgotten_total`
/// of one registry.
pub struct RegistryCounts {
    pub kept: IntGauge,
    pub idle: IntCounter,
    pub evicted: IntCounter,
}

/// The version and commit `breakwater_build_info` names: the crate's
/// version, and the commit build.rs found (`unknown` without git or
/// `BREAKWATER_COMMIT`).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("BREAKWATER_COMMIT");

impl Metrics {
    /// With at most `max` endpoints labelled in `breakwater_circuit_state`
    /// (`--metrics-max-endpoints`).
    pub fn with_max_endpoints(max: usize) -> Self {
        let metrics = Self::new();
        metrics.book.set_max_endpoints(max);
        metrics
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let dest = &["direction", "destination", "route"];
        let requests = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_requests_total",
                    "Requests answered, by response status.",
                ),
                &["direction", "destination", "route", "code"],
            ),
        );
        let duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "breakwater_request_duration_seconds",
                    "Time from request start to the end of the response body.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                dest,
            ),
        );
        let inflight = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "breakwater_inflight_requests",
                    "Requests whose response has not ended yet.",
                ),
                dest,
            ),
        );
        let failures = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_upstream_failures_total",
                    "Requests breakwater could not complete, by x-breakwater-reason.",
                ),
                &["direction", "destination", "route", "reason"],
            ),
        );
        let retries = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_retries_total",
                    "Retries made, by the --retry-on condition the failed attempt met.",
                ),
                &["direction", "destination", "route", "reason"],
            ),
        );
        let retries_skipped = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_retries_skipped_total",
                    "Retry-worthy failures returned as they were: budget spent, body too large to replay.",
                ),
                &["direction", "destination", "route", "reason"],
            ),
        );
        let hedges = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_hedges_total",
                    "Hedged requests, by outcome: won (the hedge's answer was used), lost \
                     (the first attempt's was), skipped (the hedge budget was spent). \
                     Hedges sent: won + lost.",
                ),
                &["direction", "destination", "route", "outcome"],
            ),
        );
        let observed = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_observed_total",
                    "What a policy in observe mode would have done and did not: \
                     requests let through that it would have refused, retries made \
                     that it would have skipped.",
                ),
                &["direction", "destination", "route", "policy", "action"],
            ),
        );
        let circuit_state = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "breakwater_circuit_state",
                    "Circuit of each endpoint: 0 closed, 1 open, 2 half-open.",
                ),
                &["direction", "destination", "route", "endpoint"],
            ),
        );
        let circuit_transitions = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_circuit_transitions_total",
                    "Circuit state changes, by the state entered.",
                ),
                &["direction", "destination", "route", "to"],
            ),
        );
        let concurrency_limit = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "breakwater_concurrency_limit",
                    "The bulkhead's limit of requests in flight (moves with --max-concurrent auto).",
                ),
                dest,
            ),
        );
        let queued = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "breakwater_queued_requests",
                    "Requests waiting for a bulkhead slot.",
                ),
                dest,
            ),
        );
        let book = Arc::new(series::Book::new(
            vec![
                requests.clone(),
                failures.clone(),
                retries.clone(),
                retries_skipped.clone(),
                hedges.clone(),
                observed.clone(),
                circuit_transitions.clone(),
            ],
            vec![inflight.clone(), concurrency_limit.clone(), queued.clone()],
            vec![duration.clone()],
            circuit_state,
        ));
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "breakwater_build_info",
                    "1, labelled with the version and commit of this binary.",
                ),
                &["version", "commit"],
            ),
        );
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        // The process families have constant options and names of their own.
        let _ = r.register(Box::new(process::ProcessCollector::new()));
        let metrics = Metrics {
            requests,
            duration,
            inflight,
            failures,
            retries,
            retries_skipped,
            hedges,
            observed,
            circuit_transitions,
            concurrency_limit,
            queued,
            book,
            client_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_client_errors_total",
                        "Requests that failed by the client's doing (a broken or late body, \
                         a request that cannot be proxied), by x-breakwater-reason.",
                    ),
                    &["direction", "reason"],
                ),
            ),
            rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_rejected_total",
                        "Requests breakwater refused itself, by x-breakwater-reason.",
                    ),
                    &["direction", "reason"],
                ),
            ),
            connections: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_connections_total",
                        "Client connections accepted.",
                    ),
                    &["listener"],
                ),
            ),
            connections_active: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "breakwater_connections_active",
                        "Client connections open now.",
                    ),
                    &["listener"],
                ),
            ),
            connections_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_connections_refused_total",
                        "Client connections closed at accept because --max-connections was reached.",
                    ),
                    &["listener"],
                ),
            ),
            tunnels: register(
                r,
                IntCounterVec::new(
                    Opts::new("breakwater_tunnels_total", "CONNECT tunnels opened."),
                    &["direction", "kind"],
                ),
            ),
            app_healthy: register(
                r,
                IntGauge::new(
                    "breakwater_app_healthy",
                    "1 while the app passes its health probes.",
                ),
            ),
            app_health_transitions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_app_health_transitions_total",
                        "Changes of the app's health state, by the state entered.",
                    ),
                    &["to"],
                ),
            ),
            app_probes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_app_probes_total",
                        "App health probes, by result.",
                    ),
                    &["result"],
                ),
            ),
            app_probe_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "breakwater_app_probe_duration_seconds",
                        "Time an app health probe took.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                ),
            ),
            draining: register(
                r,
                IntGauge::new(
                    "breakwater_draining",
                    "1 from SIGTERM or POST /shutdown until exit.",
                ),
            ),
            split: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_split_total",
                        "Requests of a route with to= or split=, by the destination they \
                         were sent to (the route's own included).",
                    ),
                    &["route", "destination"],
                ),
            ),
            mirror: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_mirror_total",
                        "Copies due to a shadow destination (mirror=), by outcome: its \
                         status class matched the original's, did not, it gave no answer, \
                         or the copy was skipped (unsafe method, body not replayable, \
                         shadow busy).",
                    ),
                    &["destination", "outcome"],
                ),
            ),
            faults: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_faults_injected_total",
                        "Requests failed (abort) or slowed (delay) on purpose by a route's \
                         fault-abort= or fault-delay=.",
                    ),
                    &["direction", "route", "kind"],
                ),
            ),
            spans_exported: register(
                r,
                IntCounter::new(
                    "breakwater_spans_exported_total",
                    "Spans the OTLP collector accepted.",
                ),
            ),
            spans_dropped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_spans_dropped_total",
                        "Spans not exported: the queue was full (queue-full) or the \
                         collector refused or did not answer (export-failed).",
                    ),
                    &["reason"],
                ),
            ),
            policy_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_policy_reloads_total",
                        "Reads of a changed --policy-file: applied, or rejected (the old policy kept).",
                    ),
                    &["result"],
                ),
            ),
            opaque_connections: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_opaque_connections_total",
                        "Redirected connections that did not speak HTTP, relayed as TCP.",
                    ),
                    &["listener"],
                ),
            ),
            opaque_connect_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_opaque_connect_failures_total",
                        "Opaque TCP relays whose upstream could not be reached.",
                    ),
                    &["listener"],
                ),
            ),
            opaque_bytes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_opaque_bytes_total",
                        "Bytes relayed as opaque TCP.",
                    ),
                    &["listener", "way"],
                ),
            ),
            destinations_kept: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "breakwater_destinations",
                        "Destinations with state kept (breakers, budget, pools), \
                         at most --max-destinations per direction.",
                    ),
                    &["direction"],
                ),
            ),
            destinations_forgotten: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "breakwater_destinations_forgotten_total",
                        "Destination states dropped: idle past --destination-idle-timeout \
                         (idle), or the least recently used ones at --max-destinations \
                         (evicted).",
                    ),
                    &["direction", "reason"],
                ),
            ),
            registry,
        };
        // Closed label sets are exported from start-up, at zero: an alert on
        // their rate has a series to evaluate before the first event.
        for d in [Direction::Inbound, Direction::Outbound] {
            for reason in CLIENT_ERROR_REASONS {
                metrics
                    .client_errors
                    .with_label_values(&[d.as_str(), reason]);
            }
        }
        metrics.tunnels.with_label_values(&["outbound", "connect"]);
        for result in ["applied", "rejected"] {
            metrics.policy_reloads.with_label_values(&[result]);
        }
        for reason in ["queue-full", "export-failed"] {
            metrics.spans_dropped.with_label_values(&[reason]);
        }
        metrics
    }

    /// The handles a destination registry counts its states in.
    pub fn registry_counts(&self, direction: Direction) -> RegistryCounts {
        let d = direction.as_str();
        RegistryCounts {
            kept: self.destinations_kept.with_label_values(&[d]),
            idle: self.destinations_forgotten.with_label_values(&[d, "idle"]),
            evicted: self
                .destinations_forgotten
                .with_label_values(&[d, "evicted"]),
        }
    }

    pub fn opaque(&self, listener: &'static str) -> OpaqueMetrics {
        OpaqueMetrics {
            connections: self.opaque_connections.with_label_values(&[listener]),
            connect_failures: self.opaque_connect_failures.with_label_values(&[listener]),
            sent: self
                .opaque_bytes
                .with_label_values(&[listener, "to-upstream"]),
            received: self
                .opaque_bytes
                .with_label_values(&[listener, "from-upstream"]),
        }
    }

    pub fn app_health(&self) -> AppHealthMetrics {
        for to in ["healthy", "unhealthy"] {
            self.app_health_transitions.with_label_values(&[to]);
        }
        AppHealthMetrics {
            healthy: self.app_healthy.clone(),
            transitions: self.app_health_transitions.clone(),
            ok: self.app_probes.with_label_values(&["ok"]),
            failed: self.app_probes.with_label_values(&["failed"]),
            duration: self.app_probe_duration.clone(),
        }
    }

    /// Requests whose response has not ended, over every destination: what a
    /// drain that runs out of time abandons.
    pub fn inflight_total(&self) -> i64 {
        self.inflight
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum()
    }

    /// The handles for one destination label; built once per destination.
    pub fn destination(
        &self,
        direction: Direction,
        label: &str,
        route: &str,
    ) -> DestinationMetrics {
        let d = direction.as_str();
        self.book.lease(direction, label, route);
        DestinationMetrics {
            book: self.book.clone(),
            requests: self.requests.clone(),
            observed: self.observed.clone(),
            direction,
            label: label.into(),
            route: route.into(),
            common: Default::default(),
            inflight: self.inflight.with_label_values(&[d, label, route]),
            duration: self.duration.with_label_values(&[d, label, route]),
            failures: FAILURE_REASONS
                .map(|r| self.failures.with_label_values(&[d, label, route, r])),
            retries: RETRY_REASONS.map(|r| self.retries.with_label_values(&[d, label, route, r])),
            retries_skipped: SKIP_REASONS.map(|r| {
                self.retries_skipped
                    .with_label_values(&[d, label, route, r])
            }),
            hedges: self.hedges.clone(),
            rejected: self.rejected.clone(),
            client_errors: CLIENT_ERROR_REASONS
                .map(|r| self.client_errors.with_label_values(&[d, r])),
            transitions: ["closed", "open", "half-open"].map(|to| {
                self.circuit_transitions
                    .with_label_values(&[d, label, route, to])
            }),
            limit: self.concurrency_limit.with_label_values(&[d, label, route]),
            queued: self.queued.with_label_values(&[d, label, route]),
            // Per direction, not per destination: the registries' overflow
            // destinations make these at start-up, so they are there at zero.
            rejections: direction
                .rejections()
                .iter()
                .map(|r| self.rejected.with_label_values(&[d, r]))
                .collect(),
        }
    }

    /// The drop counter for spans lost for `reason` (`queue-full`, `export-failed`).
    pub fn spans_dropped(&self, reason: &str) -> IntCounter {
        self.spans_dropped.with_label_values(&[reason])
    }

    /// Counts a request of a route that moves traffic, by where it went.
    pub fn count_split(&self, route: &str, destination: &str) {
        self.split.with_label_values(&[route, destination]).inc();
    }

    /// Counts a copy to a shadow, by outcome (`match`, `mismatch`, `error`, `skipped`).
    pub fn count_mirror(&self, destination: &str, outcome: &str) {
        self.mirror.with_label_values(&[destination, outcome]).inc();
    }

    /// Counts a fault injected on purpose (`abort` or `delay`).
    pub fn count_fault(&self, direction: Direction, route: &str, kind: &str) {
        self.faults
            .with_label_values(&[direction.as_str(), route, kind])
            .inc();
    }

    /// Makes the series a route table's traffic keys will count, at zero, so
    /// that a migration dashboard and its alerts have them before the first
    /// request: split shares per destination, mirror outcomes, faults.
    pub fn traffic_series<'a>(
        &self,
        direction: Direction,
        routes: impl IntoIterator<Item = TrafficSeries<'a>>,
    ) {
        for r in routes {
            for dest in &r.destinations {
                self.split.with_label_values(&[r.route, dest]);
            }
            if let Some(shadow) = &r.shadow {
                for outcome in ["match", "mismatch", "error", "skipped"] {
                    self.mirror.with_label_values(&[shadow, outcome]);
                }
            }
            for kind in r.faults {
                self.faults
                    .with_label_values(&[direction.as_str(), r.route, kind]);
            }
        }
    }

    pub fn listener(&self, name: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            accepted: self.connections.with_label_values(&[name]),
            active: self.connections_active.with_label_values(&[name]),
            refused: self.connections_refused.with_label_values(&[name]),
        }
    }

    pub fn tunnel(&self, direction: Direction, kind: &'static str) {
        self.tunnels
            .with_label_values(&[direction.as_str(), kind])
            .inc();
    }

    /// The Prometheus text exposition of every family.
    /// The registry, for families defined elsewhere (TLS).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric with a bad name could,
        // and would be a programming error, so an empty answer is the worst case.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Registers a metric family built from constant options. Either step failing is a
/// programming error (a bad name, a duplicate), caught by every test that starts
/// the proxy, so it may panic.
#[allow(clippy::expect_used)]
pub(crate) fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = metric.expect("metric options are valid constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_label_set() {
        for r in Reason::ALL {
            let token = r.as_str();
            let sets: Vec<&[&str]> = match r.counted_as() {
                Counted::UpstreamFailure => vec![&FAILURE_REASONS],
                Counted::ClientError => vec![&CLIENT_ERROR_REASONS],
                Counted::Rejection => [
                    (r.inbound(), &INBOUND_REJECTIONS[..]),
                    (r.outbound(), &OUTBOUND_REJECTIONS[..]),
                ]
                .into_iter()
                .filter_map(|(happens, set)| happens.then_some(set))
                .collect(),
            };
            assert!(!sets.is_empty(), "{token}");
            for set in sets {
                assert!(set.contains(&token), "{token} missing from {set:?}");
            }
        }
        assert_eq!(
            OUTBOUND_REJECTIONS,
            [
                "no-route",
                "circuit-open",
                "bulkhead-full",
                "queue-timeout",
                "fault-injected",
                "rate-limited"
            ]
        );
        assert_eq!(
            INBOUND_REJECTIONS,
            [
                "app-not-ready",
                "bulkhead-full",
                "queue-timeout",
                "fault-injected",
                "rate-limited"
            ]
        );
    }

    #[test]
    fn cached_and_uncached_codes_land_in_the_same_family() {
        let m = Metrics::new();
        let d = m.destination(Direction::Outbound, "payments:80", "default");
        d.count_response(200);
        d.count_response(200);
        d.count_response(418);
        d.count_failure("timeout");
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        assert!(text.contains(
            r#"breakwater_requests_total{code="200",destination="payments:80",direction="outbound",route="default"} 2"#
        ), "{text}");
        assert!(text.contains(r#"code="418""#));
        assert!(text.contains(
            r#"breakwater_upstream_failures_total{destination="payments:80",direction="outbound",reason="timeout",route="default"} 1"#
        ));
    }
}
