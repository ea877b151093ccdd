//! The OTLP/protobuf encoding of an export (`ExportTraceServiceRequest`,
//! opentelemetry-proto's `trace.proto` and `common.proto`), written straight
//! from the recorded spans into one buffer: no message objects, no string
//! allocated per attribute key. At full sampling, building prost messages
//! (a `String` per key and value) cost more than the request being traced.
//! Checked against opentelemetry-proto's own decoder (the tests) and the
//! official Python one (tests/tests/tracing.rs).
//!
//! Nested messages get a five-byte length (a varint padded with
//! continuation bytes), patched in once the message is written, so nothing
//! is encoded twice; protobuf parsers accept varints up to ten bytes.

use std::io::Write;

use super::span::{EventRecord, Kind, SpanRecord, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The bytes `varint` writes for `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A nested message: its key, a length patched in after `body` wrote it.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
    body(out);
    let len = (out.len() - at - 5) as u32;
    for (i, b) in out[at..at + 5].iter_mut().enumerate() {
        let seven = ((len >> (7 * i)) & 0x7f) as u8;
        *b = if i < 4 { seven | 0x80 } else { seven };
    }
}

/// Room for any value [`text`] formats: an IPv6 address at most.
type TextBuf = [u8; 48];

/// A string value's bytes, formatted into `buf` where it is not text yet
/// (an address, a number): no `String`, no `fmt` machinery for the usual
/// IPv4 address and status code.
fn text<'a>(value: &'a Value, buf: &'a mut TextBuf) -> &'a [u8] {
    let n = match value {
        Value::Str(s) => return s.as_bytes(),
        Value::Static(s) => return s.as_bytes(),
        Value::Shared(s) => return s.as_bytes(),
        Value::Method(m) => return m.as_str().as_bytes(),
        Value::Ip(std::net::IpAddr::V4(ip)) => {
            let mut n = 0;
            for (i, octet) in ip.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(*octet).as_bytes();
                buf[n..n + d.len()].copy_from_slice(d);
                n += d.len();
            }
            n
        }
        Value::Ip(ip) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{ip}");
            48 - w.len()
        }
        Value::Int(v) => {
            let mut digits = itoa::Buffer::new();
            let d = digits.format(*v).as_bytes();
            buf[..d.len()].copy_from_slice(d);
            d.len()
        }
        Value::Code(v) => {
            let mut digits = itoa::Buffer::new();
            let d = digits.format(*v).as_bytes();
            buf[..d.len()].copy_from_slice(d);
            d.len()
        }
    };
    &buf[..n]
}

/// A string field of `value`.
fn string_with(out: &mut Vec<u8>, field: u32, value: &Value) {
    let mut buf = [0; 48];
    bytes(out, field, text(value, &mut buf));
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string = 1; int = 3 }`,
/// with exact lengths (fields below 16: one-byte keys): the commonest message
/// of an export, written without a length patched in afterwards.
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    let mut buf = [0; 48];
    let (any_len, s) = match v {
        Value::Int(n) => (1 + varint_len(*n as u64), None),
        other => {
            let s = text(other, &mut buf);
            (1 + varint_len(s.len() as u64) + s.len(), Some(s))
        }
    };
    let kv_len =
        1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
    key(out, field, LEN);
    varint(out, kv_len as u64);
    bytes(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, any_len as u64);
    match (v, s) {
        (_, Some(s)) => bytes(out, 1, s),
        (Value::Int(n), None) => uint(out, 3, *n as u64),
        (_, None) => {}
    }
}

fn event(out: &mut Vec<u8>, e: &EventRecord) {
    // Span.events = 11: { time_unix_nano = 1; name = 2; attributes = 3 }
    message(out, 11, |o| {
        fixed64(o, 1, e.at);
        bytes(o, 2, e.name.as_bytes());
        for (k, v) in &e.attributes {
            attribute(o, 3, k, v);
        }
    });
}

fn span(out: &mut Vec<u8>, s: &SpanRecord) {
    // ScopeSpans.spans = 2.
    message(out, 2, |o| {
        bytes(o, 1, &s.trace.0);
        bytes(o, 2, &s.id.0);
        if let Some(parent) = s.parent {
            bytes(o, 4, &parent.0);
        }
        bytes(o, 5, s.name.as_str().as_bytes());
        // SpanKind: SERVER = 2, CLIENT = 3.
        uint(
            o,
            6,
            match s.kind {
                Kind::Server => 2,
                Kind::Client => 3,
            },
        );
        fixed64(o, 7, s.start);
        fixed64(o, 8, s.end);
        for (k, v) in &s.attributes {
            attribute(o, 9, k, v);
        }
        for e in &s.events {
            event(o, e);
        }
        if let Some(error) = &s.error {
            // Status { message = 2; code = 3 (ERROR = 2) }
            message(o, 15, |o| {
                string_with(o, 2, error);
                uint(o, 3, 2);
            });
        }
        // Trace flags: sampled.
        fixed32(o, 16, 1);
    });
}

/// One export of `spans` from the process `resource` describes, into `out`.
pub fn encode(resource: &[(&'static str, String)], spans: &[SpanRecord], out: &mut Vec<u8>) {
    // ExportTraceServiceRequest.resource_spans = 1.
    message(out, 1, |o| {
        // ResourceSpans.resource = 1: Resource.attributes = 1.
        message(o, 1, |o| {
            for (k, v) in resource {
                attribute(o, 1, k, &Value::Str(v.clone()));
            }
        });
        // ResourceSpans.scope_spans = 2.
        message(o, 2, |o| {
            // ScopeSpans.scope = 1: { name = 1; version = 2 }
            message(o, 1, |o| {
                bytes(o, 1, b"breakwater");
                bytes(o, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                span(o, s);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    use super::*;
    use crate::trace::context::{SpanId, TraceId};

    #[test]
    fn the_official_decoder_reads_what_we_write() {
        let spans = vec![SpanRecord {
            trace: TraceId([1; 16]),
            id: SpanId([2; 8]),
            parent: Some(SpanId([3; 8])),
            name: http::Method::POST,
            kind: Kind::Client,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_250_000_000,
            attributes: vec![
                ("http.response.status_code", Value::Int(503)),
                ("network.peer.address", Value::Ip([10, 1, 2, 3].into())),
                ("breakwater.route", Value::Shared("orders".into())),
                ("url.path", Value::Str("/x".repeat(100))),
                (
                    "server.address",
                    Value::Ip("fd00::1:2".parse().expect("ipv6")),
                ),
                ("breakwater.delta", Value::Int(-7)),
                ("breakwater.big", Value::Int(i64::MAX)),
                ("error.type", Value::Code(503)),
            ],
            events: vec![EventRecord {
                at: 1_700_000_000_100_000_000,
                name: "bulkhead.granted",
                attributes: vec![("breakwater.wait_ms", Value::Int(41))],
            }],
            error: Some(Value::Code(503)),
        }];
        let mut out = Vec::new();
        encode(&[("service.name", "orders".into())], &spans, &mut out);
        let decoded = ExportTraceServiceRequest::decode(out.as_slice()).expect("decodes");
        let rs = &decoded.resource_spans[0];
        let resource = rs.resource.as_ref().expect("resource");
        assert_eq!(resource.attributes[0].key, "service.name");
        let ss = &rs.scope_spans[0];
        assert_eq!(
            ss.scope.as_ref().map(|s| s.name.as_str()),
            Some("breakwater")
        );
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.name, "POST");
        assert_eq!(s.kind, 3);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 250_000_000);
        assert_eq!(s.flags, 1);
        let value = |i: usize| s.attributes[i].value.as_ref().and_then(|v| v.value.clone());
        assert_eq!(value(0), Some(any_value::Value::IntValue(503)));
        assert_eq!(
            value(1),
            Some(any_value::Value::StringValue("10.1.2.3".into()))
        );
        assert_eq!(
            value(2),
            Some(any_value::Value::StringValue("orders".into()))
        );
        assert_eq!(
            value(3),
            Some(any_value::Value::StringValue("/x".repeat(100)))
        );
        assert_eq!(
            value(4),
            Some(any_value::Value::StringValue("fd00::1:2".into()))
        );
        assert_eq!(value(5), Some(any_value::Value::IntValue(-7)));
        assert_eq!(value(6), Some(any_value::Value::IntValue(i64::MAX)));
        assert_eq!(value(7), Some(any_value::Value::StringValue("503".into())));
        assert_eq!(s.attributes[3].key, "url.path");
        assert_eq!(s.events[0].name, "bulkhead.granted");
        let status = s.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "503"));
    }
}
