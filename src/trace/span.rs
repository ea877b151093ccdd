//! One request's spans as they are recorded: the request's span (server
//! inbound, client outbound), a child per attempt, and events for what the
//! policies did to it. Written in OTLP's encoding as they happen (`otlp`):
//! the request's span is an open message in one buffer from the start, its
//! attributes and events go in as they are set, and at the end its times,
//! its status and the attempts' spans follow. A traced request so allocates
//! one buffer, clones nothing shared and hands the exporter bytes, not
//! records to free on its thread.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tokio::time::Instant;

use super::context::{Form, Parent, SpanId, TraceId};
use super::otlp;

/// A value of an attribute, borrowed for as long as it takes to encode it;
/// addresses and numbers are formatted straight into the buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    /// A status code as text, as `error.type` wants it.
    Code(u16),
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

/// Which side of the exchange breakwater's span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Inbound: breakwater serves the caller.
    Server,
    /// Outbound: breakwater calls for the app (and each attempt).
    Client,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug)]
pub enum AttemptEnd {
    /// A response head with this status.
    Answered(u16),
    /// No response: breakwater's reason for it.
    Failed(&'static str),
}

/// A request's finished spans, encoded: `ScopeSpans.spans` messages one
/// after another, ready to be put in an export as they are.
pub struct Finished {
    pub spans: usize,
    pub encoded: Vec<u8>,
}

/// Room for a request's spans without growing: the request's attributes,
/// one attempt, a couple of events.
const USUAL_BYTES: usize = 640;

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
    /// The request's span so far (attributes and events), an open message.
    out: Vec<u8>,
    open: otlp::Open,
    /// Attempts that ended, the first kept inline (most requests have one),
    /// and the one under way; encoded when the request ends.
    first: Option<Ended>,
    retries: Vec<Ended>,
    current: Option<Attempt>,
    error: Option<&'static str>,
}

#[derive(Clone, Copy)]
struct Attempt {
    id: SpanId,
    n: u32,
    started: Instant,
    /// The wait before it and the retry budget's say; `None` for the first.
    waited: Option<(Duration, &'static str)>,
}

#[derive(Clone, Copy)]
struct Ended {
    attempt: Attempt,
    at: Instant,
    end: AttemptEnd,
    peer: Option<SocketAddr>,
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
        let mut out = Vec::with_capacity(USUAL_BYTES);
        let open = otlp::open(&mut out, otlp::SPAN);
        RequestSpan {
            trace: parent.map_or_else(TraceId::random, |p| p.trace),
            id: SpanId::random(),
            parent: parent.map(|p| p.span),
            form: parent.map_or(Form::W3c, |p| p.form),
            kind,
            name: method.clone(),
            wall,
            mono: started,
            out,
            open,
            first: None,
            retries: Vec::new(),
            current: None,
            error: None,
        }
    }

    fn at(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.mono);
        self.wall
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// An attribute of the request's span.
    pub fn set<'a>(&mut self, key: &str, value: impl Into<Value<'a>>) {
        otlp::attribute(&mut self.out, otlp::SPAN_ATTRIBUTE, key, &value.into());
    }

    /// An event now, with its attributes.
    pub fn event(&mut self, name: &str, attributes: &[(&str, Value<'_>)]) {
        let at = self.at(Instant::now());
        otlp::event(&mut self.out, at, name, attributes);
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
        self.current = Some(Attempt {
            id,
            n,
            started: Instant::now(),
            waited,
        });
        id
    }

    /// Ends the attempt under way, at `peer` if one was picked.
    pub fn end_attempt(&mut self, end: AttemptEnd, peer: Option<SocketAddr>) {
        let Some(attempt) = self.current.take() else {
            return;
        };
        let ended = Ended {
            attempt,
            at: Instant::now(),
            end,
            peer,
        };
        if self.first.is_none() {
            self.first = Some(ended);
        } else {
            self.retries.push(ended);
        }
    }

    /// The finished spans, the request's first, ending now with `status`.
    pub fn finish(mut self, status: u16) -> Finished {
        if self.current.is_some() {
            // An attempt whose end nobody saw: the request ended under it.
            self.end_attempt(AttemptEnd::Failed("cancelled"), None);
        }
        let end = self.at(Instant::now());
        self.set("http.response.status_code", i64::from(status));
        let error = match self.error {
            Some(reason) => Some(Value::Str(reason)),
            None if status >= 500 => Some(Value::Code(status)),
            None => None,
        };
        if let Some(e) = &error {
            self.set("error.type", *e);
        }
        let mut out = std::mem::take(&mut self.out);
        otlp::span_fields(
            &mut out,
            &otlp::SpanFields {
                trace: self.trace,
                id: self.id,
                parent: self.parent,
                name: self.name.as_str(),
                kind: self.kind,
                start: self.wall,
                end,
                error,
            },
        );
        otlp::close(&mut out, self.open);
        let mut spans = 1;
        for ended in self.first.iter().chain(&self.retries) {
            self.attempt_span(&mut out, ended);
            spans += 1;
        }
        Finished {
            spans,
            encoded: out,
        }
    }

    /// An attempt's span: a client span under the request's.
    fn attempt_span(&self, out: &mut Vec<u8>, ended: &Ended) {
        let a = &ended.attempt;
        let span = otlp::open(out, otlp::SPAN);
        let attr = |out: &mut Vec<u8>, k: &str, v: Value<'_>| {
            otlp::attribute(out, otlp::SPAN_ATTRIBUTE, k, &v);
        };
        attr(out, "breakwater.attempt", Value::Int(i64::from(a.n)));
        if let Some((wait, budget)) = a.waited {
            attr(
                out,
                "http.request.resend_count",
                Value::Int(i64::from(a.n.saturating_sub(1))),
            );
            attr(out, "breakwater.retry.wait_ms", Value::Int(ms(wait)));
            attr(out, "breakwater.retry.budget", Value::Str(budget));
        }
        if let Some(peer) = ended.peer {
            attr(out, "network.peer.address", Value::Ip(peer.ip()));
            attr(out, "network.peer.port", Value::Int(i64::from(peer.port())));
        }
        let error = match ended.end {
            AttemptEnd::Answered(code) => {
                attr(
                    out,
                    "http.response.status_code",
                    Value::Int(i64::from(code)),
                );
                (code >= 500).then_some(Value::Code(code))
            }
            AttemptEnd::Failed(reason) => {
                attr(out, "breakwater.reason", Value::Str(reason));
                Some(Value::Str(reason))
            }
        };
        if let Some(e) = error {
            attr(out, "error.type", e);
        }
        otlp::span_fields(
            out,
            &otlp::SpanFields {
                trace: self.trace,
                id: a.id,
                parent: Some(self.id),
                name: self.name.as_str(),
                kind: Kind::Client,
                start: self.at(a.started),
                end: self.at(ended.at),
                error,
            },
        );
        otlp::close(out, span);
    }
}
