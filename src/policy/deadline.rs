//! Deadlines that travel: the time left is sent upstream with each attempt, and
//! an incoming deadline from an upstream breakwater caps our own, so a chain of
//! services never works on a request its first caller already gave up on.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Milliseconds the caller will still wait, set by breakwater on each attempt.
pub const DEADLINE_HEADER: HeaderName = HeaderName::from_static("x-breakwater-deadline-ms");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The deadline a caller announced, if any and if it parses.
pub fn incoming(headers: &HeaderMap) -> Option<Duration> {
    let ms: u64 = headers
        .get(&DEADLINE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// Writes the time left into the request: always `x-breakwater-deadline-ms`, and
/// `grpc-timeout` for gRPC requests when it is shorter than the client's own.
pub fn announce(headers: &mut HeaderMap, left: Duration) {
    let ms = left.as_millis().max(1) as u64;
    let mut buf = itoa::Buffer::new();
    if let Ok(v) = HeaderValue::from_str(buf.format(ms)) {
        headers.insert(DEADLINE_HEADER, v);
    }
    if is_grpc(headers) {
        let current = headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        if current.is_none_or(|c| c > left) {
            let value = format!("{ms}m");
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(GRPC_TIMEOUT, v);
            }
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_round_trips_and_junk_is_ignored() {
        let mut h = HeaderMap::new();
        announce(&mut h, Duration::from_millis(1500));
        assert_eq!(h[&DEADLINE_HEADER], "1500");
        assert_eq!(incoming(&h), Some(Duration::from_millis(1500)));
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("soon"));
        assert_eq!(incoming(&h), None);
        assert!(!h.contains_key(GRPC_TIMEOUT), "not a gRPC request");
    }

    #[test]
    fn grpc_timeout_only_shrinks() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        announce(&mut h, Duration::from_millis(400));
        assert_eq!(h[GRPC_TIMEOUT], "400m");
        announce(&mut h, Duration::from_secs(5));
        assert_eq!(
            h[GRPC_TIMEOUT], "400m",
            "a longer deadline never replaces a shorter one"
        );
    }
}
