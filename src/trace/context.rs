//! Trace context as requests carry it: W3C `traceparent` (with `tracestate`)
//! and B3, single (`b3`) and multi-header (`x-b3-*`). Read on both listeners;
//! written on each attempt so that the upstream's spans nest under it.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// 128 random bits, never all zero (an invalid id).
    pub fn random() -> Self {
        TraceId(fastrand::u128(1..).to_be_bytes())
    }

    /// Whether a root with this id falls in `ratio` of all traces: the
    /// id's low 64 bits against the ratio of 2^64, as OpenTelemetry's
    /// TraceIdRatioBased sampler, so every hop that samples by ratio agrees.
    pub fn within(&self, ratio: f64) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        let low = u64::from_be_bytes(low);
        ratio >= 1.0 || (low as f64) < ratio * (u64::MAX as f64)
    }
}

impl SpanId {
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..).to_be_bytes())
    }
}

/// Which header form a context came in, to write it back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    W3c,
    B3Single,
    B3Multi,
}

/// The caller's context: its trace, its span (our parent) and its decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace: TraceId,
    pub span: SpanId,
    pub sampled: bool,
    pub form: Form,
}

/// What a request's headers say about its trace.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    None,
    Context(Parent),
    /// A `traceparent` that does not parse: dropped, never forwarded broken.
    Malformed,
}

/// The request's trace context, W3C first, then B3 single, then B3 multi.
pub fn read(headers: &HeaderMap) -> Read {
    // Most requests carry no context: one pass over the names finds that
    // more cheaply than a hashed lookup per form.
    let carries = headers.keys().any(|name| {
        let n = name.as_str();
        n == "traceparent" || n == "b3" || n.starts_with("x-b3-")
    });
    if !carries {
        return Read::None;
    }
    if let Some(tp) = headers.get(&TRACEPARENT) {
        return match parse_traceparent(tp.as_bytes()) {
            Some(p) => Read::Context(p),
            None => Read::Malformed,
        };
    }
    if let Some(b3) = headers.get(&B3) {
        if let Some(p) = parse_b3_single(b3.as_bytes()) {
            return Read::Context(p);
        }
        return Read::None;
    }
    if let (Some(t), Some(s)) = (headers.get(&X_B3_TRACEID), headers.get(&X_B3_SPANID)) {
        let sampled = match headers.get(&X_B3_SAMPLED).map(|v| v.as_bytes()) {
            Some(b"0" | b"false") => false,
            Some(_) => true,
            None => headers
                .get(&X_B3_FLAGS)
                .is_some_and(|f| f.as_bytes() == b"1"),
        };
        if let (Some(trace), Some(span)) = (trace_id(t.as_bytes()), span_id(s.as_bytes())) {
            return Read::Context(Parent {
                trace,
                span,
                sampled,
                form: Form::B3Multi,
            });
        }
    }
    Read::None
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): version 00
/// exactly; a later version may add fields after the four.
fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let mut parts = v.split(|&b| b == b'-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let extra = parts.next();
    if version.len() != 2 || version == b"ff" || !version.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    if version == b"00" && extra.is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = hex_byte(flags)?;
    Some(Parent {
        trace: trace_id(trace)?,
        span: span_id(span)?,
        sampled: flags & 1 == 1,
        form: Form::W3c,
    })
}

/// `TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`, or a lone sampling state (`0`,
/// `1`, `d`), which carries no context.
fn parse_b3_single(v: &[u8]) -> Option<Parent> {
    let mut parts = v.split(|&b| b == b'-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = !matches!(parts.next(), Some(b"0"));
    Some(Parent {
        trace,
        span,
        sampled,
        form: Form::B3Single,
    })
}

/// 32 hex digits, or 16 (a 64-bit B3 id, left-padded); not all zero.
fn trace_id(hex: &[u8]) -> Option<TraceId> {
    let mut out = [0u8; 16];
    match hex.len() {
        32 => decode(hex, &mut out)?,
        16 => decode(hex, &mut out[8..])?,
        _ => return None,
    }
    (out != [0; 16]).then_some(TraceId(out))
}

fn span_id(hex: &[u8]) -> Option<SpanId> {
    let mut out = [0u8; 8];
    if hex.len() != 16 {
        return None;
    }
    decode(hex, &mut out)?;
    (out != [0; 8]).then_some(SpanId(out))
}

fn decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = hex_byte(pair)?;
    }
    Some(())
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    match pair {
        [h, l] => Some(digit(*h)? << 4 | digit(*l)?),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` into `out`, two digits a byte.
fn hex_to(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn hex_into(bytes: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + 2 * bytes.len(), 0);
    hex_to(bytes, &mut out[at..]);
}

/// Lower-case hex of an id, for messages.
#[cfg(test)]
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Sets the headers an attempt carries: `traceparent` naming `span` as the
/// parent (sampled), and, for a request whose context came as B3, its B3
/// headers in the same form (span `span`, parent `parent`). `tracestate`
/// passes as it came.
pub fn write(headers: &mut HeaderMap, trace: TraceId, span: SpanId, parent: SpanId, form: Form) {
    // `00-{trace}-{span}-01`, written in place: every request traced sends one.
    let mut tp = [0u8; 55];
    tp[..3].copy_from_slice(b"00-");
    hex_to(&trace.0, &mut tp[3..35]);
    tp[35] = b'-';
    hex_to(&span.0, &mut tp[36..52]);
    tp[52..].copy_from_slice(b"-01");
    if let Ok(v) = HeaderValue::from_bytes(&tp) {
        headers.insert(TRACEPARENT, v);
    }
    match form {
        Form::W3c => {}
        Form::B3Single => {
            let mut b3 = Vec::with_capacity(68);
            hex_into(&trace.0, &mut b3);
            b3.push(b'-');
            hex_into(&span.0, &mut b3);
            b3.extend_from_slice(b"-1-");
            hex_into(&parent.0, &mut b3);
            if let Ok(v) = HeaderValue::from_bytes(&b3) {
                headers.insert(B3, v);
            }
        }
        Form::B3Multi => {
            let value = |bytes: &[u8]| {
                let mut out = Vec::with_capacity(32);
                hex_into(bytes, &mut out);
                HeaderValue::from_bytes(&out).ok()
            };
            for (name, v) in [
                (X_B3_TRACEID, value(&trace.0)),
                (X_B3_SPANID, value(&span.0)),
                (X_B3_PARENTSPANID, value(&parent.0)),
            ] {
                if let Some(v) = v {
                    headers.insert(name, v);
                }
            }
            headers.insert(X_B3_SAMPLED, HeaderValue::from_static("1"));
            headers.remove(X_B3_FLAGS);
        }
    }
}

/// Removes a `traceparent` that does not parse (and its `tracestate`, which
/// means nothing without it), so that nothing broken goes on. Called for
/// every request that names one, traced or not.
pub fn drop_malformed(headers: &mut HeaderMap) {
    if headers
        .get(&TRACEPARENT)
        .is_some_and(|tp| parse_traceparent(tp.as_bytes()).is_none())
    {
        headers.remove(&TRACEPARENT);
        headers.remove(HeaderName::from_static("tracestate"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_w3c_and_both_b3_forms() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let Read::Context(p) = read(&map(&[("traceparent", tp)])) else {
            panic!("w3c")
        };
        assert!(p.sampled && p.form == Form::W3c);
        assert_eq!(hex(&p.span.0), "00f067aa0ba902b7");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(
            matches!(read(&map(&[("traceparent", unsampled)])), Read::Context(p) if !p.sampled)
        );
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        assert!(matches!(read(&map(&[("b3", b3)])), Read::Context(p) if p.form == Form::B3Single));
        let multi = map(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let Read::Context(p) = read(&multi) else {
            panic!("multi")
        };
        assert_eq!(hex(&p.trace.0), "0000000000000000463ac35c9f6413ad");
        assert_eq!(read(&map(&[("b3", "0")])), Read::None);
    }

    #[test]
    fn malformed_traceparents_are_refused_and_dropped() {
        for bad in [
            "00-xyz-abc-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "",
        ] {
            let mut h = map(&[("traceparent", bad), ("tracestate", "a=1")]);
            assert_eq!(read(&h), Read::Malformed, "{bad}");
            drop_malformed(&mut h);
            assert!(h.is_empty(), "{bad}");
        }
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("traceparent", good)]);
        drop_malformed(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn writes_the_attempt_as_the_parent_in_the_form_that_came() {
        let (trace, span, parent) = (TraceId([0xab; 16]), SpanId([1; 8]), SpanId([2; 8]));
        let mut h = HeaderMap::new();
        write(&mut h, trace, span, parent, Form::B3Multi);
        let Read::Context(p) = read(&h) else {
            panic!("written")
        };
        assert_eq!((p.trace, p.span, p.form), (trace, span, Form::W3c));
        assert_eq!(h["x-b3-spanid"], "0101010101010101");
        assert_eq!(h["x-b3-parentspanid"], "0202020202020202");
        let mut h = HeaderMap::new();
        write(&mut h, trace, span, parent, Form::B3Single);
        assert_eq!(
            h["b3"],
            "abababababababababababababababab-0101010101010101-1-0202020202020202"
        );
    }

    #[test]
    fn ratio_sampling_is_by_trace_id() {
        assert!(TraceId([0; 16]).within(0.000_001));
        assert!(!TraceId([0xff; 16]).within(0.5));
        assert!(TraceId([0xff; 16]).within(1.0));
        let n = (0..10_000)
            .filter(|_| TraceId::random().within(0.25))
            .count();
        assert!((2_200..2_800).contains(&n), "{n}");
    }
}
