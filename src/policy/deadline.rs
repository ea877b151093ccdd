//! Deadlines that travel: the time left is sent upstream with each attempt, and
//! an incoming deadline from an upstream breakwater caps our own, so a chain of
//! services never works on a request its first caller already gave up on.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Milliseconds the caller will still wait, set by breakwater on each attempt.
pub const DEADLINE_HEADER: HeaderName = HeaderName::from_static("x-breakwater-deadline-ms");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The deadline a caller announced, if any and if it parses: an upstream
/// breakwater's `x-breakwater-deadline-ms`, or a gRPC client's `grpc-timeout`
/// (the shorter of the two when both came). A value that does not parse is
/// ignored, as gRPC servers do: the request keeps the route's own timeout.
pub fn incoming(headers: &HeaderMap) -> Option<Duration> {
    let ours = headers.get(&DEADLINE_HEADER).and_then(|v| {
        let ms: u64 = v.to_str().ok()?.trim().parse().ok()?;
        Some(Duration::from_millis(ms))
    });
    let grpc = headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout);
    match (ours, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Writes the time left into the request: always `x-breakwater-deadline-ms`, and
/// `grpc-timeout` for gRPC requests when it is shorter than the client's own.
pub fn announce(headers: &mut HeaderMap, left: Duration) {
    // At least 1 ms (0 would read as "already gone"), at most what the header's
    // u64 carries: `as u64` would wrap a longer wait into a short one.
    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut buf = itoa::Buffer::new();
    if let Ok(v) = HeaderValue::from_str(buf.format(ms)) {
        headers.insert(DEADLINE_HEADER, v);
    }
    if is_grpc(headers) {
        let current = headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        if current.is_none_or(|c| c > left) {
            headers.insert(GRPC_TIMEOUT, grpc_timeout(left));
        }
    }
}

/// `left` as a `grpc-timeout`: milliseconds (at least 1), or for a wait past
/// gRPC's 8 digits of them (about 27 hours) the finest unit that fits, rounded
/// down so the deadline never grows.
fn grpc_timeout(left: Duration) -> HeaderValue {
    const MAX_DIGITS: u128 = 99_999_999;
    let units: [(u128, char); 4] = [(1, 'm'), (1_000, 'S'), (60_000, 'M'), (3_600_000, 'H')];
    let ms = left.as_millis().max(1);
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (ms / per, unit))
        .find(|&(n, _)| n <= MAX_DIGITS)
        .unwrap_or((MAX_DIGITS, 'H'));
    let mut buf = itoa::Buffer::new();
    let mut value = String::with_capacity(9);
    value.push_str(buf.format(n as u64));
    value.push(unit);
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("1m"))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n); anything else
/// is not one (gRPC over HTTP/2, "Requests").
fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if !(1..=8).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
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
    fn a_grpc_timeout_is_the_callers_deadline_and_junk_is_ignored() {
        let mut h = HeaderMap::new();
        let with = |h: &mut HeaderMap, v: &'static str| {
            h.insert(GRPC_TIMEOUT, HeaderValue::from_static(v));
            incoming(h)
        };
        assert_eq!(with(&mut h, "250m"), Some(Duration::from_millis(250)));
        assert_eq!(with(&mut h, "2S"), Some(Duration::from_secs(2)));
        for junk in [
            "",
            "m",
            "12",
            "1x",
            "+5m",
            "-5m",
            "123456789m",
            "1.5S",
            "5 m",
        ] {
            h.insert(
                GRPC_TIMEOUT,
                HeaderValue::from_str(junk).unwrap_or(HeaderValue::from_static("?")),
            );
            assert_eq!(incoming(&h), None, "{junk:?}");
        }
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("900"));
        assert_eq!(
            with(&mut h, "1S"),
            Some(Duration::from_millis(900)),
            "the shorter"
        );
        assert_eq!(
            with(&mut h, "300m"),
            Some(Duration::from_millis(300)),
            "the shorter"
        );
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn grpc_request() -> HeaderMap {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// A client's `grpc-timeout` may be any bytes.
            #[test]
            fn grpc_timeout_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    let _ = parse_grpc_timeout(&v);
                }
            }

            /// What announce writes is gRPC's shape (1-8 digits and a unit), never
            /// longer than the time left, and at most a unit shorter.
            #[test]
            fn announced_grpc_timeout_fits_the_spec(secs in 0u64..=u64::MAX, nanos in 0u32..1_000_000_000, small in any::<bool>()) {
                let left = if small { Duration::new(secs % 200_000, nanos) } else { Duration::new(secs, nanos) };
                let mut h = grpc_request();
                announce(&mut h, left);
                let v = &h[GRPC_TIMEOUT];
                let s = v.to_str().unwrap_or_default();
                prop_assert!((2..=9).contains(&s.len()), "{s}");
                prop_assert!(s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit()), "{s}");
                let parsed = parse_grpc_timeout(v).unwrap_or_default();
                let floor = left.max(Duration::from_millis(1));
                prop_assert!(parsed <= floor, "{s} is longer than {left:?}");
                let unit = match s.as_bytes()[s.len() - 1] {
                    b'm' => Duration::from_millis(1),
                    b'S' => Duration::from_secs(1),
                    b'M' => Duration::from_secs(60),
                    _ => Duration::from_secs(3600),
                };
                let capped = left < Duration::from_secs(99_999_999 * 3600);
                prop_assert!(!capped || floor - parsed < unit, "{s} for {left:?}");
            }

            /// A client's shorter `grpc-timeout` stays; a longer one shrinks to ours.
            #[test]
            fn grpc_timeout_only_shrinks_whatever_the_client_sent(theirs_ms in 1u64..10_000_000, ours_ms in 1u64..10_000_000) {
                let mut h = grpc_request();
                let theirs = HeaderValue::from_str(&format!("{theirs_ms}m")).unwrap_or(HeaderValue::from_static("1m"));
                h.insert(GRPC_TIMEOUT, theirs);
                announce(&mut h, Duration::from_millis(ours_ms));
                let now = parse_grpc_timeout(&h[GRPC_TIMEOUT]).unwrap_or_default();
                prop_assert_eq!(now, Duration::from_millis(theirs_ms.min(ours_ms)));
            }
        }
    }
}
