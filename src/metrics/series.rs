//! How long a per-destination or per-endpoint series lives. Each label set is
//! leased by the handles that count into it: an endpoint's series goes when
//! the last handle of that endpoint does (the pod left, the name resolves
//! elsewhere, its destination expired), and a destination's when the last
//! handle of a destination marked expired does. A series nobody will update
//! again is a stale value an alert keeps reading.
//!
//! The `endpoint` label is capped as `destination` is: past
//! `--metrics-max-endpoints` series, and for every endpoint of the overflow
//! destination, endpoints share `endpoint="other"` under their destination,
//! whose value is the worst state among them (open, then half-open).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};

use super::Direction;

/// The label value shared past a cap: the overflow destination's, and the
/// `endpoint` of endpoints past `--metrics-max-endpoints`.
pub const OTHER: &str = "other";

/// `--metrics-max-endpoints`' default.
pub const DEFAULT_MAX_ENDPOINTS: usize = 500;

type DestKey = (Direction, Box<str>, Box<str>);
type EndpointKey = (Direction, Box<str>, Box<str>, Box<str>);

#[derive(Default)]
struct DestLease {
    handles: usize,
    /// Remove the series once `handles` reaches zero.
    expired: bool,
}

/// The endpoints that share `endpoint="other"` under one destination.
struct Folded {
    members: usize,
    /// How many are closed, open, half-open (the gauge's values as indexes).
    states: [usize; 3],
    gauge: IntGauge,
}

impl Folded {
    /// Open wins over half-open over closed: the alert on an open circuit
    /// still fires when the open endpoint is one of many folded.
    fn show(&self) {
        let worst = if self.states[1] > 0 {
            1
        } else if self.states[2] > 0 {
            2
        } else {
            0
        };
        self.gauge.set(worst);
    }
}

#[derive(Default)]
struct EndpointBook {
    own: HashMap<EndpointKey, usize>,
    folded: HashMap<DestKey, Folded>,
}

/// The per-destination families and who holds which of their label sets.
pub(super) struct Book {
    counters: Vec<IntCounterVec>,
    gauges: Vec<IntGaugeVec>,
    histograms: Vec<HistogramVec>,
    circuit_state: IntGaugeVec,
    destinations: Mutex<HashMap<DestKey, DestLease>>,
    endpoints: Mutex<EndpointBook>,
    max_endpoints: AtomicUsize,
}

fn key(direction: Direction, dest: &str, route: &str) -> DestKey {
    (direction, dest.into(), route.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Book {
    /// `counters`, `gauges` and `histograms`: every family labelled
    /// `direction`, `destination` and `route` but `circuit_state`, whose
    /// series are per endpoint.
    pub(super) fn new(
        counters: Vec<IntCounterVec>,
        gauges: Vec<IntGaugeVec>,
        histograms: Vec<HistogramVec>,
        circuit_state: IntGaugeVec,
    ) -> Self {
        Book {
            counters,
            gauges,
            histograms,
            circuit_state,
            destinations: Mutex::default(),
            endpoints: Mutex::default(),
            max_endpoints: AtomicUsize::new(DEFAULT_MAX_ENDPOINTS),
        }
    }

    pub(super) fn set_max_endpoints(&self, n: usize) {
        self.max_endpoints.store(n, Ordering::Relaxed);
    }

    /// Called before a handle makes its series, so that a release racing
    /// with it cannot remove what it is about to count into.
    pub(super) fn lease(&self, direction: Direction, dest: &str, route: &str) {
        let mut all = lock(&self.destinations);
        let lease = all.entry(key(direction, dest, route)).or_default();
        lease.handles += 1;
        // In use again: whatever expired it is over.
        lease.expired = false;
    }

    /// The destination will not be counted again: its series go with its
    /// last handle.
    pub(super) fn expire(&self, direction: Direction, dest: &str, route: &str) {
        if let Some(lease) = lock(&self.destinations).get_mut(&key(direction, dest, route)) {
            lease.expired = true;
        }
    }

    pub(super) fn release(&self, direction: Direction, dest: &str, route: &str) {
        let mut all = lock(&self.destinations);
        let k = key(direction, dest, route);
        let Some(lease) = all.get_mut(&k) else {
            return;
        };
        lease.handles = lease.handles.saturating_sub(1);
        if lease.handles > 0 {
            return;
        }
        let expired = lease.expired;
        all.remove(&k);
        if expired {
            // Under the lock: a new lease waits, then makes fresh series.
            let want = [
                ("direction", direction.as_str()),
                ("destination", dest),
                ("route", route),
            ];
            self.counters.iter().for_each(|v| remove_matching(v, &want));
            self.gauges.iter().for_each(|v| remove_matching(v, &want));
            self.histograms
                .iter()
                .for_each(|v| remove_matching(v, &want));
        }
    }

    /// The circuit-state series of one endpoint, at 0 (closed).
    pub(super) fn circuit(
        self: &Arc<Self>,
        direction: Direction,
        dest: &str,
        route: &str,
        endpoint: &str,
    ) -> CircuitSeries {
        let mut book = lock(&self.endpoints);
        let own: EndpointKey = (direction, dest.into(), route.into(), endpoint.into());
        let labelled = dest != OTHER
            && (book.own.contains_key(&own)
                || book.own.len() < self.max_endpoints.load(Ordering::Relaxed));
        if labelled {
            *book.own.entry(own.clone()).or_insert(0) += 1;
            let gauge =
                self.circuit_state
                    .with_label_values(&[direction.as_str(), dest, route, endpoint]);
            gauge.set(0);
            return CircuitSeries {
                book: self.clone(),
                kind: Kind::Own(own, gauge),
            };
        }
        let k = key(direction, dest, route);
        let folded = book.folded.entry(k.clone()).or_insert_with(|| Folded {
            members: 0,
            states: [0; 3],
            gauge: self
                .circuit_state
                .with_label_values(&[direction.as_str(), dest, route, OTHER]),
        });
        folded.members += 1;
        folded.states[0] += 1;
        folded.show();
        CircuitSeries {
            book: self.clone(),
            kind: Kind::Folded(k, AtomicUsize::new(0)),
        }
    }
}

enum Kind {
    Own(EndpointKey, IntGauge),
    /// The destination's folded series, and this endpoint's state in it.
    Folded(DestKey, AtomicUsize),
}

/// `breakwater_circuit_state` for one endpoint: its own series, or its
/// share of `endpoint="other"`. Dropped with the endpoint, and the series
/// with the last endpoint that shows in it.
pub struct CircuitSeries {
    book: Arc<Book>,
    kind: Kind,
}

impl CircuitSeries {
    /// 0 closed, 1 open, 2 half-open; anything else is ignored.
    pub fn set(&self, value: i64) {
        let Some(to) = usize::try_from(value).ok().filter(|v| *v < 3) else {
            return;
        };
        match &self.kind {
            Kind::Own(_, gauge) => gauge.set(value),
            Kind::Folded(k, current) => {
                let mut book = lock(&self.book.endpoints);
                if let Some(f) = book.folded.get_mut(k) {
                    let from = current.swap(to, Ordering::Relaxed);
                    f.states[from] = f.states[from].saturating_sub(1);
                    f.states[to] += 1;
                    f.show();
                }
            }
        }
    }

    /// Whether this endpoint has a series of its own (not `endpoint="other"`).
    pub fn is_own(&self) -> bool {
        matches!(self.kind, Kind::Own(..))
    }
}

impl Drop for CircuitSeries {
    fn drop(&mut self) {
        let mut book = lock(&self.book.endpoints);
        match &self.kind {
            Kind::Own(k, _) => {
                let Some(n) = book.own.get_mut(k) else {
                    return;
                };
                *n -= 1;
                if *n == 0 {
                    book.own.remove(k);
                    let (d, dest, route, endpoint) = k;
                    let _ = self.book.circuit_state.remove_label_values(&[
                        d.as_str(),
                        dest,
                        route,
                        endpoint,
                    ]);
                }
            }
            Kind::Folded(k, current) => {
                let Some(f) = book.folded.get_mut(k) else {
                    return;
                };
                let at = current.load(Ordering::Relaxed);
                f.states[at] = f.states[at].saturating_sub(1);
                f.members -= 1;
                if f.members > 0 {
                    f.show();
                    return;
                }
                book.folded.remove(k);
                let (d, dest, route) = k;
                let _ =
                    self.book
                        .circuit_state
                        .remove_label_values(&[d.as_str(), dest, route, OTHER]);
            }
        }
    }
}

/// Removes every series of `vec` whose labels include all of `want`. The
/// prometheus crate removes by a full label set only, and the other labels
/// (a status code, a reason) are whatever was counted.
fn remove_matching<T: MetricVecBuilder>(vec: &MetricVec<T>, want: &[(&str, &str)]) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap_or_default()
    }

    fn circuit_lines(m: &Metrics) -> Vec<String> {
        text(m)
            .lines()
            .filter(|l| l.starts_with("breakwater_circuit_state{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn endpoints_past_the_cap_fold_and_show_the_worst_state() {
        let m = Metrics::with_max_endpoints(2);
        let d = m.destination(Direction::Outbound, "orders:80", "default");
        let series: Vec<CircuitSeries> = (1..=5)
            .map(|i| d.circuit_gauge(&format!("10.0.0.{i}:80")))
            .collect();
        assert!(series[0].is_own() && series[1].is_own() && !series[2].is_own());
        assert_eq!(circuit_lines(&m).len(), 3, "{:?}", circuit_lines(&m));
        let other = r#"breakwater_circuit_state{destination="orders:80",direction="outbound",endpoint="other",route="default"}"#;
        let value = |m: &Metrics| {
            text(m)
                .lines()
                .find_map(|l| l.strip_prefix(other))
                .map(|v| v.trim().to_string())
        };
        assert_eq!(value(&m).as_deref(), Some("0"));
        series[3].set(2);
        assert_eq!(value(&m).as_deref(), Some("2"));
        series[4].set(1);
        assert_eq!(value(&m).as_deref(), Some("1"), "open wins");
        let mut series = series;
        drop(series.split_off(3));
        assert_eq!(value(&m).as_deref(), Some("0"), "the open one left");
        drop(series);
        assert!(circuit_lines(&m).is_empty(), "{:?}", circuit_lines(&m));
    }

    #[test]
    fn an_expired_destination_loses_its_series_with_its_last_handle() {
        let m = Metrics::new();
        let first = m.destination(Direction::Outbound, "gone:80", "default");
        first.count_response(200);
        first.count_response(418);
        first.count_retry("5xx");
        let series = first.circuit_gauge("10.0.0.1:80");
        let second = m.destination(Direction::Outbound, "gone:80", "default");
        first.expire();
        drop(first);
        assert!(
            text(&m).contains(r#"code="418",destination="gone:80""#),
            "another handle still counts into them"
        );
        second.expire();
        drop(second);
        let left = text(&m);
        assert!(
            left.lines()
                .filter(|l| l.contains("gone:80"))
                .all(|l| l.starts_with("breakwater_circuit_state{")),
            "only the endpoint still held is left:\n{left}"
        );
        drop(series);
        assert!(!text(&m).contains("gone:80"), "{}", text(&m));
    }

    #[test]
    fn a_destination_not_expired_keeps_its_counts_across_handles() {
        let m = Metrics::new();
        let first = m.destination(Direction::Outbound, "kept:80", "default");
        first.count_response(200);
        drop(first);
        let again = m.destination(Direction::Outbound, "kept:80", "default");
        again.count_response(200);
        assert!(text(&m).contains(
            r#"breakwater_requests_total{code="200",destination="kept:80",direction="outbound",route="default"} 2"#
        ));
    }
}
