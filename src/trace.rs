//! Distributed tracing of what the sidecar did: a span per request (server
//! inbound, client outbound), a child per attempt with its endpoint, outcome,
//! reason and the wait before it, and events for the policies' decisions
//! (bulkhead waits, breaker refusals and changes, an adopted deadline, a
//! split or a mirror). Exported over OTLP/HTTP (`export`).
//!
//! Our own span model, written in OTLP's protobuf encoding as the request
//! goes (`span`, `otlp`) and sent with the hyper client breakwater already
//! has, rather than the
//! OpenTelemetry SDK: the SDK's exporters bring reqwest or tonic (a second
//! HTTP stack), and what is recorded here is specific to the proxy (attempts,
//! reasons, policy events), as in linkerd2-proxy. Off (`--otlp-endpoint`
//! unset), nothing is built per request.

pub mod context;
pub mod export;
pub mod otlp;
pub mod span;

use http::HeaderMap;
use tokio::time::Instant;

use crate::config::TracingConfig;
use context::Read;
pub use span::{AttemptEnd, Kind, RequestSpan, Value};

/// Decides which requests are recorded and hands finished ones to the exporter.
pub struct Tracer {
    ratio: f64,
    errors: bool,
    queue: export::Queue,
}

/// A request's trace as it goes: recorded for export, or (with
/// `--trace-errors`) kept in case breakwater answers it with an error.
pub struct Traced {
    pub span: RequestSpan,
    /// Sampled: exported whatever happens, and its context sent upstream.
    pub recording: bool,
    failed: bool,
    queue: export::Queue,
}

impl Tracer {
    /// Starts the exporter (within the runtime).
    pub fn new(config: &TracingConfig, metrics: export::ExportMetrics) -> Self {
        let mut resource = vec![("service.name", config.service_name.clone())];
        if let Some(pod) = &config.pod_name {
            resource.push(("k8s.pod.name", pod.clone()));
        }
        if let Some(ns) = &config.pod_namespace {
            resource.push(("k8s.namespace.name", ns.clone()));
        }
        resource.push(("telemetry.sdk.name", "breakwater".into()));
        let queue = export::spawn(
            export::Destination {
                endpoint: config.endpoint.clone(),
                resource,
            },
            metrics,
        );
        Tracer {
            ratio: config.sample_ratio,
            errors: config.errors,
            queue,
        }
    }

    /// The request's trace, from its headers: the caller's decision when it
    /// sent a context, else the ratio's; `None` when nothing is to be kept.
    pub fn start(
        &self,
        headers: &HeaderMap,
        kind: Kind,
        method: &http::Method,
        started: Instant,
    ) -> Option<Box<Traced>> {
        let (parent, recording) = match context::read(headers) {
            Read::Context(p) if !p.sampled => return None,
            Read::Context(p) => (Some(p), true),
            Read::None | Read::Malformed => (None, false),
        };
        let span = RequestSpan::new(parent.as_ref(), kind, method, started);
        let recording = recording || (parent.is_none() && span.trace.within(self.ratio));
        if !recording && !self.errors {
            return None;
        }
        Some(Box::new(Traced {
            span,
            recording,
            failed: false,
            queue: self.queue.clone(),
        }))
    }
}

impl Drop for Tracer {
    /// The exporter sends what is pending and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Traced {
    /// breakwater answered the request itself with an error (`reason`).
    pub fn fail(&mut self, reason: &'static str) {
        self.span.fail(reason);
        self.failed = true;
    }

    /// Whether the upstream should see this request's context: only for a
    /// trace that is exported.
    pub fn propagates(&self) -> bool {
        self.recording
    }

    /// The request ended with `status`: its spans go to the exporter if they
    /// are to be kept.
    pub fn finish(self: Box<Self>, status: u16) {
        if self.recording || self.failed {
            self.queue.push(self.span.finish(status));
        }
    }

    /// Writes the attempt's context, naming `attempt` as the parent.
    pub fn inject(&self, headers: &mut HeaderMap, attempt: context::SpanId) {
        if self.recording {
            context::write(
                headers,
                self.span.trace,
                attempt,
                self.span.id,
                self.span.form,
            );
        }
    }
}
