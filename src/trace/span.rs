//! One request's spans as they are recorded: the request's span (server
//! inbound, client outbound), a child per attempt, and events for what the
//! policies did to it. Kept compact (static keys, values as they come) so
//! that a traced request costs little; `otlp` writes them out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tokio::time::Instant;

use super::context::{Form, Parent, SpanId, TraceId};

/// A value of an attribute, kept as it came: formatted only when exported.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Static(&'static str),
    Shared(Arc<str>),
    Int(i64),
    /// A status code as text, as `error.type` wants it.
    Code(u16),
    Ip(IpAddr),
    Method(Method),
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

/// One attribute: its semantic-convention (or `breakwater.*`) key and value.
pub type Attr = (&'static str, Value);

/// Which side of the exchange breakwater's span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Inbound: breakwater serves the caller.
    Server,
    /// Outbound: breakwater calls for the app (and each attempt).
    Client,
}

/// A point in a span's time.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub at: u64,
    pub name: &'static str,
    pub attributes: Vec<Attr>,
}

/// A finished span, ready for export.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace: TraceId,
    pub id: SpanId,
    pub parent: Option<SpanId>,
    pub name: Method,
    pub kind: Kind,
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<Attr>,
    pub events: Vec<EventRecord>,
    /// An error's message: the span's status is ERROR with it.
    pub error: Option<Value>,
}

/// A request being recorded.
pub struct RequestSpan {
    pub trace: TraceId,
    pub id: SpanId,
    parent: Option<SpanId>,
    /// How the caller sent its context, to write it back that way.
    pub form: Form,
    kind: Kind,
    name: Method,
    /// The wall clock at `mono`: span times are wall times, measured on the
    /// monotonic clock.
    wall: u64,
    mono: Instant,
    attributes: Vec<Attr>,
    events: Vec<EventRecord>,
    /// Attempts that ended, and the one under way.
    attempts: Vec<SpanRecord>,
    current: Option<Attempt>,
    error: Option<&'static str>,
}

struct Attempt {
    id: SpanId,
    started: Instant,
    attributes: Vec<Attr>,
}

/// How an attempt ended.
pub enum AttemptEnd {
    /// A response head with this status.
    Answered(u16),
    /// No response: breakwater's reason for it.
    Failed(&'static str),
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
    pub fn new(parent: Option<&Parent>, kind: Kind, method: &Method, started: Instant) -> Self {
        let now = Instant::now();
        let wall = unix_nanos(SystemTime::now())
            .saturating_sub(u64::try_from((now - started).as_nanos()).unwrap_or(0));
        RequestSpan {
            trace: parent.map_or_else(TraceId::random, |p| p.trace),
            id: SpanId::random(),
            parent: parent.map(|p| p.span),
            form: parent.map_or(Form::W3c, |p| p.form),
            kind,
            name: method.clone(),
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
        self.attributes.push((key, value.into()));
    }

    /// An event now, with its attributes.
    pub fn event(&mut self, name: &'static str, attributes: Vec<Attr>) {
        let at = self.at(Instant::now());
        self.events.push(EventRecord {
            at,
            name,
            attributes,
        });
    }

    /// The request failed with breakwater's own `reason`.
    pub fn fail(&mut self, reason: &'static str) {
        self.set("breakwater.reason", reason);
        self.error = Some(reason);
    }

    /// Starts attempt `n`, after `waited` (its backoff or `Retry-After`) and
    /// with the retry budget's say (`None` for the first); returns its span id,
    /// the parent the attempt's `traceparent` names.
    pub fn begin_attempt(&mut self, n: u32, waited: Option<(Duration, &'static str)>) -> SpanId {
        let id = SpanId::random();
        let mut attributes = Vec::with_capacity(8);
        attributes.push(("breakwater.attempt", Value::Int(i64::from(n))));
        if let Some((wait, budget)) = waited {
            attributes.push(("http.request.resend_count", Value::Int(i64::from(n - 1))));
            attributes.push(("breakwater.retry.wait_ms", Value::Int(ms(wait))));
            attributes.push(("breakwater.retry.budget", Value::Static(budget)));
        }
        self.current = Some(Attempt {
            id,
            started: Instant::now(),
            attributes,
        });
        id
    }

    /// Ends the attempt under way, at `peer` if one was picked.
    pub fn end_attempt(&mut self, end: AttemptEnd, peer: Option<SocketAddr>) {
        let Some(mut a) = self.current.take() else {
            return;
        };
        if let Some(peer) = peer {
            a.attributes
                .push(("network.peer.address", Value::Ip(peer.ip())));
            a.attributes
                .push(("network.peer.port", Value::Int(i64::from(peer.port()))));
        }
        let error = match end {
            AttemptEnd::Answered(code) => {
                a.attributes
                    .push(("http.response.status_code", Value::Int(i64::from(code))));
                (code >= 500).then(|| {
                    a.attributes.push(("error.type", Value::Code(code)));
                    Value::Code(code)
                })
            }
            AttemptEnd::Failed(reason) => {
                a.attributes
                    .push(("breakwater.reason", Value::Static(reason)));
                a.attributes.push(("error.type", Value::Static(reason)));
                Some(Value::Static(reason))
            }
        };
        let end = self.at(Instant::now());
        self.attempts.push(SpanRecord {
            trace: self.trace,
            id: a.id,
            parent: Some(self.id),
            name: self.name.clone(),
            kind: Kind::Client,
            start: self.at(a.started),
            end,
            attributes: a.attributes,
            events: Vec::new(),
            error,
        });
    }

    /// The finished spans, the request's last, ending now with `status`.
    pub fn finish(mut self, status: u16) -> Vec<SpanRecord> {
        if self.current.is_some() {
            // An attempt whose end nobody saw: the request ended under it.
            self.end_attempt(AttemptEnd::Failed("cancelled"), None);
        }
        let end = self.at(Instant::now());
        self.attributes
            .push(("http.response.status_code", Value::Int(i64::from(status))));
        let error = match self.error {
            Some(reason) => Some(Value::Static(reason)),
            None if status >= 500 => Some(Value::Code(status)),
            None => None,
        };
        if let Some(e) = &error {
            self.attributes.push(("error.type", e.clone()));
        }
        let mut spans = std::mem::take(&mut self.attempts);
        spans.push(SpanRecord {
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            name: self.name,
            kind: self.kind,
            start: self.wall,
            end,
            attributes: self.attributes,
            events: self.events,
            error,
        });
        spans
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
        let mut span = RequestSpan::new(Some(&parent), Kind::Client, &Method::GET, Instant::now());
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
        assert_eq!(request.parent, Some(SpanId([9; 8])));
        assert_eq!(request.trace, TraceId([7; 16]));
        assert_eq!(request.events.len(), 1);
        for (attempt, id) in spans[..2].iter().zip([first, second]) {
            assert_eq!(attempt.parent, Some(request.id));
            assert_eq!(attempt.id, id);
            assert!(attempt.start >= request.start);
            assert!(attempt.end <= request.end);
            assert!(attempt.error.is_some());
        }
        let keys: Vec<&str> = spans[1].attributes.iter().map(|(k, _)| *k).collect();
        assert!(keys.contains(&"http.request.resend_count"), "{keys:?}");
        assert!(keys.contains(&"breakwater.reason"), "{keys:?}");
    }
}
