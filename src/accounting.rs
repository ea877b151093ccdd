//! `InFlight`: one request from its start until its response body ends. Dropping it
//! records the request once: metrics, the connection's activity, the access log.

use std::sync::Arc;

use tokio::time::Instant;

use crate::listener::activity::ConnActivity;
use crate::metrics::recent::RecentTraffic;
use crate::metrics::{DestinationMetrics, Direction};
use crate::policy::bulkhead::BulkheadPermit;
use crate::trace::Traced;

/// The status recorded when the client went away before a response existed
/// (nginx's convention, which dashboards already know).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Counted in `breakwater_inflight_requests` from creation to drop. It rides on the
/// response body, so a streamed response stays in flight until its last byte.
pub struct InFlight {
    metrics: Arc<DestinationMetrics>,
    activity: Arc<ConnActivity>,
    start: Instant,
    status: u16,
    access: Option<Box<AccessEntry>>,
    /// The destination's bulkhead slot, given back with the last byte.
    slot: Option<BulkheadPermit>,
    /// The request's spans, when it is traced; exported with the last byte.
    trace: Option<Box<Traced>>,
    /// A gRPC request: breakwater's own answers to it are gRPC statuses.
    grpc: bool,
    /// Its destination's recent traffic, which it is recorded in at the end.
    recent: Option<Arc<RecentTraffic>>,
    /// Why breakwater could not complete it, if it could not.
    failure: Option<&'static str>,
}

/// What the access log line says about a request, captured only when it is on.
pub struct AccessEntry {
    pub direction: Direction,
    pub method: http::Method,
    pub authority: String,
    pub path: String,
    pub request_id: String,
    pub reason: Option<&'static str>,
    pub broken_body: bool,
    /// A fault a route injected on purpose: `delay` or `abort`.
    pub fault: Option<&'static str>,
}

impl InFlight {
    pub fn start(
        metrics: Arc<DestinationMetrics>,
        activity: Arc<ConnActivity>,
        start: Instant,
    ) -> Self {
        metrics.inflight.inc();
        activity.request_started();
        InFlight {
            metrics,
            activity,
            start,
            status: CLIENT_CLOSED_REQUEST,
            access: None,
            slot: None,
            trace: None,
            grpc: false,
            recent: None,
            failure: None,
        }
    }

    /// Marks a gRPC request, which breakwater answers the gRPC way.
    pub fn mark_grpc(&mut self) {
        self.grpc = true;
    }

    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    pub fn metrics(&self) -> &DestinationMetrics {
        &self.metrics
    }

    /// When the request arrived: its deadline counts from here.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Records the request's spans until the response body ends.
    pub fn set_trace(&mut self, trace: Box<Traced>) {
        self.trace = Some(trace);
    }

    /// The request's trace, when it has one.
    pub fn trace_mut(&mut self) -> Option<&mut Traced> {
        self.trace.as_deref_mut()
    }

    /// Keeps the bulkhead slot until the response body ends.
    pub fn hold_slot(&mut self, slot: BulkheadPermit) {
        self.slot = Some(slot);
    }

    /// Records the request in its destination's recent traffic when it ends.
    pub fn set_recent(&mut self, recent: Arc<RecentTraffic>) {
        recent.usage().begin();
        self.recent = Some(recent);
    }

    /// Why breakwater could not complete the request (an error's reason).
    pub fn set_failure(&mut self, reason: &'static str) {
        self.failure = Some(reason);
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_access(&mut self, entry: AccessEntry) {
        self.access = Some(Box::new(entry));
    }

    pub fn access_mut(&mut self) -> Option<&mut AccessEntry> {
        self.access.as_deref_mut()
    }

    /// Records that the response body broke off before its end.
    pub fn broken_body(&mut self) {
        if let Some(a) = self.access.as_deref_mut() {
            a.broken_body = true;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        self.metrics.inflight.dec();
        self.metrics.count_response(self.status);
        self.metrics.duration.observe(elapsed.as_secs_f64());
        self.activity.request_finished(now);
        if let Some(recent) = &self.recent {
            let failure = self
                .failure
                .or_else(|| (self.status >= 500).then_some("5xx"));
            recent.record(elapsed, failure, now);
            recent.usage().end(now);
        }
        if let Some(trace) = self.trace.take() {
            trace.finish(self.status);
        }
        if let Some(a) = self.access.take() {
            tracing::info!(
                target: "breakwater::access",
                direction = a.direction.as_str(),
                destination = self.metrics.label(),
                method = %a.method,
                authority = %a.authority,
                path = %a.path,
                status = self.status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = %a.request_id,
                reason = a.reason.unwrap_or(""),
                broken_body = a.broken_body,
                fault = a.fault.unwrap_or(""),
            );
        }
    }
}
