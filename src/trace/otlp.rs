//! The OTLP/protobuf encoding of spans (`ExportTraceServiceRequest`,
//! opentelemetry-proto's `trace.proto` and `common.proto`), written by hand
//! into byte buffers: no message objects, no string allocated per attribute.
//! A request's spans are encoded as it goes (`span::RequestSpan`), so an
//! export is those bytes put one after another inside an [`Export`]. At full
//! sampling, building prost messages (a `String` per key and value) cost
//! more than the request being traced. Checked against opentelemetry-proto's
//! own decoder (the tests) and the official Python one (tests/tests/tracing.rs).
//!
//! A nested message whose length is not known when it starts gets a
//! five-byte length (a varint padded with continuation bytes), patched in
//! when it closes, so nothing is encoded twice; protobuf parsers accept
//! varints up to ten bytes. Protobuf lets fields come in any order and a
//! repeated field's elements be interleaved with other fields, which is what
//! lets a span's attributes and events be written before its times.

use std::io::Write;
use std::net::IpAddr;

use super::context::{SpanId, TraceId};
use super::span::{Kind, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `ScopeSpans.spans`: every span is one of these.
pub const SPAN: u32 = 2;
/// `Span.attributes`.
pub const SPAN_ATTRIBUTE: u32 = 9;

/// The bytes `varint` writes for `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[inline]
fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A nested message begun with [`open`], its length still to come.
#[must_use = "a message is closed with `close`"]
#[derive(Clone, Copy)]
pub struct Open(usize);

/// Begins message `field`: its key, and room for its length.
pub fn open(out: &mut Vec<u8>, field: u32) -> Open {
    key(out, field, LEN);
    let at = out.len();
    out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
    Open(at)
}

/// Ends the message `open` began: its length patched in.
pub fn close(out: &mut [u8], open: Open) {
    let at = open.0;
    let len = (out.len() - at - 5) as u32;
    for (i, b) in out[at..at + 5].iter_mut().enumerate() {
        let seven = ((len >> (7 * i)) & 0x7f) as u8;
        *b = if i < 4 { seven | 0x80 } else { seven };
    }
}

fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let m = open(out, field);
    body(out);
    close(out, m);
}

/// Room for any value [`text`] formats: an IPv6 socket address with a scope.
type TextBuf = [u8; 64];

/// Writes `d` into `buf` at `n`, returning the new end.
fn digits(buf: &mut TextBuf, n: usize, v: impl itoa::Integer) -> usize {
    let mut b = itoa::Buffer::new();
    let d = b.format(v).as_bytes();
    buf[n..n + d.len()].copy_from_slice(d);
    n + d.len()
}

/// An IPv4 address in dotted form, without the `fmt` machinery.
fn ipv4(buf: &mut TextBuf, ip: std::net::Ipv4Addr) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        n = digits(buf, n, octet);
    }
    n
}

/// A string value's bytes, formatted into `buf` where it is not text yet
/// (an address, a number).
fn text<'a>(value: &'a Value<'_>, buf: &'a mut TextBuf) -> &'a [u8] {
    let n = match *value {
        Value::Str(s) => return s.as_bytes(),
        Value::Int(v) => digits(buf, 0, v),
        Value::Code(v) => digits(buf, 0, v),
        Value::Ip(IpAddr::V4(ip)) => ipv4(buf, ip),
        Value::Addr(std::net::SocketAddr::V4(a)) => {
            let n = ipv4(buf, *a.ip());
            buf[n] = b':';
            digits(buf, n + 1, a.port())
        }
        // IPv6 is rare here: `fmt` (truncated, never past the buffer).
        Value::Ip(ip) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            64 - w.len()
        }
        Value::Addr(a) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{a}");
            64 - w.len()
        }
    };
    &buf[..n]
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string = 1; int = 3 }`
/// as message `field` (below 16: a one-byte key), with exact lengths: the
/// commonest message of an export. The usual one (under 128 bytes: every
/// length one byte) is written as four slices.
pub fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value<'_>) {
    let mut buf = [0; 64];
    let tag = ((field << 3) as u8) | LEN;
    match v {
        Value::Int(n) => {
            let n = *n as u64;
            let any_len = 1 + varint_len(n);
            let kv_len = 2 + k.len() + 2 + any_len;
            if kv_len < 128 {
                // One-byte lengths throughout.
                out.reserve(kv_len + 2);
                out.extend_from_slice(&[tag, kv_len as u8, 0x0a, k.len() as u8]);
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(&[0x12, any_len as u8, 0x18]);
                varint(out, n);
                return;
            }
            long_attribute(out, field, k, None, n, any_len);
        }
        other => {
            let s = text(other, &mut buf);
            let any_len = 2 + s.len();
            let kv_len = 2 + k.len() + 2 + any_len;
            if kv_len < 128 {
                out.reserve(kv_len + 2);
                out.extend_from_slice(&[tag, kv_len as u8, 0x0a, k.len() as u8]);
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(&[0x12, any_len as u8, 0x0a, s.len() as u8]);
                out.extend_from_slice(s);
                return;
            }
            let any_len = 1 + varint_len(s.len() as u64) + s.len();
            long_attribute(out, field, k, Some(s), 0, any_len);
        }
    }
}

/// An attribute of 128 bytes or more (a long path): lengths of any size.
fn long_attribute(
    out: &mut Vec<u8>,
    field: u32,
    k: &str,
    s: Option<&[u8]>,
    n: u64,
    any_len: usize,
) {
    let kv_len =
        1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
    out.reserve(kv_len + 6);
    key(out, field, LEN);
    varint(out, kv_len as u64);
    bytes(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, any_len as u64);
    match s {
        Some(s) => bytes(out, 1, s),
        None => uint(out, 3, n),
    }
}

/// `Span.events`: `{ time_unix_nano = 1; name = 2; attributes = 3 }`.
pub fn event(out: &mut Vec<u8>, at: u64, name: &str, attributes: &[(&str, Value<'_>)]) {
    message(out, 11, |o| {
        fixed64(o, 1, at);
        bytes(o, 2, name.as_bytes());
        for (k, v) in attributes {
            attribute(o, 3, k, v);
        }
    });
}

/// What every span has besides its attributes and events.
pub struct SpanFields<'a> {
    pub trace: TraceId,
    pub id: SpanId,
    pub parent: Option<SpanId>,
    pub name: &'a str,
    pub kind: Kind,
    pub start: u64,
    pub end: u64,
    /// An error's message: the span's status is ERROR with it.
    pub error: Option<Value<'a>>,
}

/// The fields of `Span` other than attributes and events, into the span
/// message under way.
pub fn span_fields(out: &mut Vec<u8>, s: &SpanFields<'_>) {
    out.reserve(96 + s.name.len());
    bytes(out, 1, &s.trace.0);
    bytes(out, 2, &s.id.0);
    if let Some(parent) = s.parent {
        bytes(out, 4, &parent.0);
    }
    bytes(out, 5, s.name.as_bytes());
    // SpanKind: SERVER = 2, CLIENT = 3.
    let kind = match s.kind {
        Kind::Server => 2,
        Kind::Client => 3,
    };
    uint(out, 6, kind);
    fixed64(out, 7, s.start);
    fixed64(out, 8, s.end);
    if let Some(error) = &s.error {
        // Status { message = 2; code = 3 (ERROR = 2) }
        message(out, 15, |o| {
            let mut buf = [0; 64];
            bytes(o, 2, text(error, &mut buf));
            uint(o, 3, 2);
        });
    }
    // Trace flags: sampled.
    fixed32(out, 16, 1);
}

/// One export request as it fills: `ExportTraceServiceRequest` with the
/// process's resource and breakwater's scope, its messages left open so that
/// spans are appended in place, then closed around them: the buffer requests
/// copy into is the body sent.
pub struct Export {
    buf: Vec<u8>,
    resource_spans: Open,
    scope_spans: Open,
    empty: usize,
}

impl Export {
    /// An export with room for `capacity` bytes of spans.
    pub fn new(resource: &[(&'static str, String)], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 256);
        // ExportTraceServiceRequest.resource_spans = 1.
        let resource_spans = open(&mut buf, 1);
        // ResourceSpans.resource = 1: Resource.attributes = 1.
        message(&mut buf, 1, |o| {
            for (k, v) in resource {
                attribute(o, 1, k, &Value::Str(v));
            }
        });
        // ResourceSpans.scope_spans = 2.
        let scope_spans = open(&mut buf, 2);
        // ScopeSpans.scope = 1: { name = 1; version = 2 }
        message(&mut buf, 1, |o| {
            bytes(o, 1, b"breakwater");
            bytes(o, 2, env!("CARGO_PKG_VERSION").as_bytes());
        });
        let empty = buf.len();
        Export {
            buf,
            resource_spans,
            scope_spans,
            empty,
        }
    }

    /// Appends `spans`: `ScopeSpans.spans` messages, as a request encoded them.
    pub fn push(&mut self, spans: &[u8]) {
        self.buf.extend_from_slice(spans);
    }

    /// The bytes of spans in it.
    pub fn spans_len(&self) -> usize {
        self.buf.len() - self.empty
    }

    /// The request's body.
    pub fn finish(mut self) -> Vec<u8> {
        close(&mut self.buf, self.scope_spans);
        close(&mut self.buf, self.resource_spans);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    use tokio::time::Instant;

    use super::*;
    use crate::trace::context::{Form, Parent};
    use crate::trace::span::{AttemptEnd, RequestSpan};

    fn string(s: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(s.into()))
    }

    fn attr(s: &Span, key: &str) -> Option<any_value::Value> {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
    }

    #[tokio::test]
    async fn the_official_decoder_reads_a_request_with_its_attempts() {
        let parent = Parent {
            trace: TraceId([1; 16]),
            span: SpanId([3; 8]),
            sampled: true,
            form: Form::W3c,
        };
        let started = Instant::now();
        let mut span = RequestSpan::new(Some(&parent), Kind::Client, &http::Method::POST, started);
        let path = "/x".repeat(100);
        span.set("url.path", path.as_str());
        span.set("breakwater.route", "orders");
        span.set(
            "server.address",
            Value::Ip("fd00::1:2".parse().expect("ipv6")),
        );
        span.set("breakwater.delta", -7i64);
        span.set("breakwater.big", i64::MAX);
        span.event(
            "bulkhead.granted",
            &[("breakwater.wait_ms", Value::Int(41))],
        );
        let first = span.begin_attempt(1, None);
        span.end_attempt(AttemptEnd::Answered(503), "10.1.2.3:8080".parse().ok());
        span.event(
            "breaker.transition",
            &[(
                "breakwater.endpoint",
                Value::Addr("10.1.2.3:8080".parse().expect("addr")),
            )],
        );
        let second = span.begin_attempt(2, Some((Duration::from_millis(20), "allowed")));
        span.end_attempt(AttemptEnd::Failed("reset"), None);
        let third = span.begin_attempt(3, Some((Duration::from_millis(40), "allowed")));
        let finished = span.finish(502);
        assert_eq!(finished.spans, 4);

        let mut export = Export::new(&[("service.name", "orders".into())], 0);
        export.push(&finished.encoded);
        let out = export.finish();
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        let rs = &decoded.resource_spans[0];
        let resource = rs.resource.as_ref().expect("resource");
        assert_eq!(resource.attributes[0].key, "service.name");
        let ss = &rs.scope_spans[0];
        assert_eq!(
            ss.scope.as_ref().map(|s| s.name.as_str()),
            Some("breakwater")
        );
        assert_eq!(ss.spans.len(), 4);

        let request = &ss.spans[0];
        assert_eq!(request.trace_id, vec![1; 16]);
        assert_eq!(request.parent_span_id, vec![3; 8]);
        assert_eq!((request.name.as_str(), request.kind), ("POST", 3));
        assert_eq!(request.flags, 1);
        assert!(request.end_time_unix_nano >= request.start_time_unix_nano);
        assert_eq!(attr(request, "url.path"), string(&path));
        assert_eq!(attr(request, "breakwater.route"), string("orders"));
        assert_eq!(attr(request, "server.address"), string("fd00::1:2"));
        assert_eq!(
            attr(request, "breakwater.delta"),
            Some(any_value::Value::IntValue(-7))
        );
        assert_eq!(
            attr(request, "breakwater.big"),
            Some(any_value::Value::IntValue(i64::MAX))
        );
        assert_eq!(
            attr(request, "http.response.status_code"),
            Some(any_value::Value::IntValue(502))
        );
        assert_eq!(attr(request, "error.type"), string("502"));
        let events: Vec<&str> = request.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(events, ["bulkhead.granted", "breaker.transition"]);
        assert_eq!(
            request.events[1].attributes[0]
                .value
                .as_ref()
                .and_then(|v| v.value.clone()),
            string("10.1.2.3:8080")
        );
        let status = request.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "502"));

        let attempts = &ss.spans[1..];
        for (a, id) in attempts.iter().zip([first, second, third]) {
            assert_eq!(a.span_id, id.0.to_vec());
            assert_eq!(a.parent_span_id, request.span_id);
            assert_eq!(a.trace_id, request.trace_id);
            assert_eq!(a.kind, 3);
            assert!(a.start_time_unix_nano >= request.start_time_unix_nano);
            assert!(a.end_time_unix_nano <= request.end_time_unix_nano);
            assert!(a.start_time_unix_nano <= a.end_time_unix_nano);
        }
        assert_eq!(
            attr(&attempts[0], "network.peer.address"),
            string("10.1.2.3")
        );
        assert_eq!(
            attr(&attempts[0], "network.peer.port"),
            Some(any_value::Value::IntValue(8080))
        );
        assert_eq!(attr(&attempts[0], "error.type"), string("503"));
        assert_eq!(attr(&attempts[0], "http.request.resend_count"), None);
        assert_eq!(attr(&attempts[1], "breakwater.reason"), string("reset"));
        assert_eq!(
            attr(&attempts[1], "http.request.resend_count"),
            Some(any_value::Value::IntValue(1))
        );
        assert_eq!(
            attr(&attempts[1], "breakwater.retry.wait_ms"),
            Some(any_value::Value::IntValue(20))
        );
        assert_eq!(
            attr(&attempts[1], "breakwater.retry.budget"),
            string("allowed")
        );
        // The third never saw its end: the request ended under it.
        assert_eq!(attr(&attempts[2], "breakwater.reason"), string("cancelled"));
        let status = attempts[1].status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "reset"));
        assert!(
            attempts[0]
                .status
                .as_ref()
                .is_some_and(|s| s.message == "503")
        );
    }

    #[test]
    fn a_root_span_has_no_parent_and_a_fresh_trace() {
        let span = RequestSpan::new(None, Kind::Server, &http::Method::GET, Instant::now());
        let trace = span.trace;
        let finished = span.finish(200);
        let mut export = Export::new(&[], 0);
        export.push(&finished.encoded);
        export.push(&finished.encoded);
        let out = export.finish();
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2, "two requests' spans in one export");
        let s = &spans[0];
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.trace_id, trace.0.to_vec());
        assert_eq!(s.kind, 2);
        assert!(s.status.is_none());
    }
}
