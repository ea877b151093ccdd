//! One request's spans as they are recorded: the request's span (server
//! inbound, client outbound), a child per attempt, and events for what the
//! policies did to it. Built as OTLP messages directly, so that finishing a
//! request is handing them to the exporter.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status::StatusCode};
use tokio::time::Instant;

use super::context::{Form, Parent, SpanId, TraceId};

/// A value of an attribute.
pub enum Value {
    Str(String),
    Static(&'static str),
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Static(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

fn kv(key: &'static str, value: impl Into<Value>) -> KeyValue {
    let value = match value.into() {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Static(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(n) => any_value::Value::IntValue(n),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Which side of the exchange breakwater's span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Inbound: breakwater serves the caller.
    Server,
    /// Outbound: breakwater calls for the app.
    Client,
}

/// A request being recorded.
pub struct RequestSpan {
    pub trace: TraceId,
    pub id: SpanId,
    parent: Option<SpanId>,
    /// How the caller sent its context, to write it back that way.
    pub form: Form,
    kind: Kind,
    name: String,
    /// The wall clock at `mono`: span times are wall times, measured on the
    /// monotonic clock.
    wall: u64,
    mono: Instant,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    /// Attempts that ended, and the one under way.
    attempts: Vec<Span>,
    current: Option<Attempt>,
    error: Option<String>,
}

struct Attempt {
    id: SpanId,
    started: Instant,
    attributes: Vec<KeyValue>,
}

/// How an attempt ended.
pub enum AttemptEnd<'a> {
    /// A response head with this status.
    Answered(u16),
    /// No response: breakwater's reason for it.
    Failed(&'a str),
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RequestSpan {
    /// A span that started at `started`: under `parent` (the caller's), or a
    /// new trace's root.
    pub fn new(parent: Option<&Parent>, kind: Kind, method: &str, started: Instant) -> Self {
        let now = Instant::now();
        let wall = unix_nanos(SystemTime::now())
            .saturating_sub(u64::try_from((now - started).as_nanos()).unwrap_or(0));
        RequestSpan {
            trace: parent.map_or_else(TraceId::random, |p| p.trace),
            id: SpanId::random(),
            parent: parent.map(|p| p.span),
            form: parent.map_or(Form::W3c, |p| p.form),
            kind,
            name: method.to_string(),
            wall,
            mono: started,
            attributes: Vec::with_capacity(12),
            events: Vec::new(),
            attempts: Vec::new(),
            current: None,
            error: None,
        }
    }

    fn at(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.mono);
        self.wall
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(kv(key, value));
    }

    /// An event now, with its attributes.
    pub fn event(&mut self, name: &'static str, attributes: Vec<(&'static str, Value)>) {
        let time_unix_nano = self.at(Instant::now());
        self.events.push(Event {
            time_unix_nano,
            name: name.to_string(),
            attributes: attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            dropped_attributes_count: 0,
        });
    }

    /// The request failed with breakwater's own `reason`.
    pub fn fail(&mut self, reason: &'static str) {
        self.set("breakwater.reason", reason);
        self.error = Some(reason.to_string());
    }

    /// Starts attempt `n`, after `waited` (its backoff or `Retry-After`) and
    /// with the retry budget's say (`None` for the first); returns its span id,
    /// the parent the attempt's `traceparent` names.
    pub fn begin_attempt(&mut self, n: u32, waited: Option<(Duration, &'static str)>) -> SpanId {
        let id = SpanId::random();
        let mut attributes = Vec::with_capacity(8);
        attributes.push(kv("breakwater.attempt", i64::from(n)));
        if let Some((wait, budget)) = waited {
            attributes.push(kv("http.request.resend_count", i64::from(n - 1)));
            attributes.push(kv("breakwater.retry.wait_ms", ms(wait)));
            attributes.push(kv("breakwater.retry.budget", budget));
        }
        self.current = Some(Attempt {
            id,
            started: Instant::now(),
            attributes,
        });
        id
    }

    /// Ends the attempt under way, at `peer` if one was picked.
    pub fn end_attempt(&mut self, end: AttemptEnd<'_>, peer: Option<SocketAddr>) {
        let Some(mut a) = self.current.take() else {
            return;
        };
        if let Some(peer) = peer {
            a.attributes
                .push(kv("network.peer.address", peer.ip().to_string()));
            a.attributes
                .push(kv("network.peer.port", i64::from(peer.port())));
        }
        let status = match end {
            AttemptEnd::Answered(code) => {
                a.attributes
                    .push(kv("http.response.status_code", i64::from(code)));
                if code >= 500 {
                    a.attributes.push(kv("error.type", code.to_string()));
                    Some(error_status(code.to_string()))
                } else {
                    None
                }
            }
            AttemptEnd::Failed(reason) => {
                a.attributes
                    .push(kv("breakwater.reason", reason.to_string()));
                a.attributes.push(kv("error.type", reason.to_string()));
                Some(error_status(reason.to_string()))
            }
        };
        let end = self.at(Instant::now());
        self.attempts.push(Span {
            trace_id: self.trace.0.to_vec(),
            span_id: a.id.0.to_vec(),
            parent_span_id: self.id.0.to_vec(),
            flags: 1,
            name: self.name.clone(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: self.at(a.started),
            end_time_unix_nano: end,
            attributes: a.attributes,
            status,
            ..Span::default()
        });
    }

    /// The finished spans, the request's last, ending now with `status`.
    pub fn finish(mut self, status: u16) -> Vec<Span> {
        if self.current.is_some() {
            // An attempt whose end nobody saw: the request ended under it.
            self.end_attempt(AttemptEnd::Failed("cancelled"), None);
        }
        let end = self.at(Instant::now());
        self.attributes
            .push(kv("http.response.status_code", i64::from(status)));
        let error = match self.error.take() {
            Some(reason) => Some(reason),
            None if status >= 500 => Some(status.to_string()),
            None => None,
        };
        let status = error.map(|e| {
            self.attributes.push(kv("error.type", e.clone()));
            error_status(e)
        });
        let kind = match self.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        };
        let mut spans = std::mem::take(&mut self.attempts);
        spans.push(Span {
            trace_id: self.trace.0.to_vec(),
            span_id: self.id.0.to_vec(),
            parent_span_id: self.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            flags: 1,
            name: self.name,
            kind: kind as i32,
            start_time_unix_nano: self.wall,
            end_time_unix_nano: end,
            attributes: self.attributes,
            events: self.events,
            status,
            ..Span::default()
        });
        spans
    }
}

fn error_status(message: String) -> Status {
    Status {
        message,
        code: StatusCode::Error as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attempts_are_children_of_the_request_and_end_before_it() {
        let parent = Parent {
            trace: TraceId([7; 16]),
            span: SpanId([9; 8]),
            sampled: true,
            form: Form::W3c,
        };
        let mut span = RequestSpan::new(Some(&parent), Kind::Client, "GET", Instant::now());
        let first = span.begin_attempt(1, None);
        span.end_attempt(AttemptEnd::Answered(503), "10.1.2.3:80".parse().ok());
        let second = span.begin_attempt(2, Some((Duration::from_millis(20), "allowed")));
        span.end_attempt(AttemptEnd::Failed("reset"), None);
        span.event(
            "bulkhead.granted",
            vec![("breakwater.wait_ms", 3i64.into())],
        );
        let spans = span.finish(502);
        assert_eq!(spans.len(), 3);
        let request = &spans[2];
        assert_eq!(request.parent_span_id, vec![9; 8]);
        assert_eq!(request.trace_id, vec![7; 16]);
        assert_eq!(request.events.len(), 1);
        for (attempt, id) in spans[..2].iter().zip([first, second]) {
            assert_eq!(attempt.parent_span_id, request.span_id);
            assert_eq!(attempt.span_id, id.0.to_vec());
            assert!(attempt.start_time_unix_nano >= request.start_time_unix_nano);
            assert!(attempt.end_time_unix_nano <= request.end_time_unix_nano);
            assert_eq!(attempt.status.as_ref().map(|s| s.code), Some(2));
        }
        let keys: Vec<&str> = spans[1].attributes.iter().map(|k| k.key.as_str()).collect();
        assert!(keys.contains(&"http.request.resend_count"), "{keys:?}");
        assert!(keys.contains(&"breakwater.reason"), "{keys:?}");
    }
}
