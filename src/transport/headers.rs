//! Header hygiene on the way through: hop-by-hop headers (RFC 9110 §7.6.1) stop
//! here, `X-Forwarded-*` grow by one hop, and every request leaves with an id that
//! logs on both sides can be joined on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Hop-by-hop headers: they describe one connection, not the message.
/// `HTTP2-Settings` belongs to an `Upgrade: h2c` offer (RFC 7540 §3.2.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("http2-settings"),
];

/// `HTTP2-Settings`'s place in [`HOP_BY_HOP`].
const HTTP2_SETTINGS: usize = 7;

/// Headers a `Connection` list may not remove: the message needs them to be routed
/// and framed, and a client could otherwise strip them at will.
static PROTECTED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");

/// Whether the request asks for a protocol switch (WebSocket and friends): HTTP/1.1
/// with `Upgrade` and `Connection: upgrade`. An offer of `h2c` alone (Java's
/// `HttpClient` makes one on every plain request) is no switch: the request is
/// served as HTTP/1.1 and the offer stops here, as RFC 9110 §7.8 lets a server
/// ignore it. Passed on, an app that speaks h2c would switch the connection
/// under breakwater's HTTP/1.1 client.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| !p.trim().eq_ignore_ascii_case("h2c"))
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and those the `Connection` header names. With
/// `upgrade`, `Upgrade` and `Connection: upgrade` are kept so the switch can pass
/// end to end. `TE: trailers` is kept: gRPC needs it and it is valid on HTTP/2.
///
/// Runs twice per request, so the common case — none of these headers — is one
/// scan of the names with no hashing and no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One scan notes which hop-by-hop headers are present (bit i: HOP_BY_HOP[i],
    // bit 8: Upgrade), so only those are looked up again.
    const UPGRADE_BIT: u16 = 1 << 8;
    let mut present = 0u16;
    for name in headers.keys() {
        if !may_be_hop_by_hop(name) {
            continue;
        }
        if name == header::UPGRADE {
            present |= UPGRADE_BIT;
        } else if name.as_str().len() == 14 {
            // Content-Length has this length too, and nearly every message has
            // it: one comparison, not eight.
            if *name == HOP_BY_HOP[HTTP2_SETTINGS] {
                present |= 1 << HTTP2_SETTINGS;
            }
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }

    if present == 0 {
        return;
    }
    let has = |name: &HeaderName| {
        HOP_BY_HOP
            .iter()
            .position(|h| h == name)
            .is_some_and(|i| present & (1 << i) != 0)
    };
    // Read before the Connection list can name it: `Connection: TE` is what
    // RFC 9110 §10.1.4 asks of a sender of `TE: trailers`.
    let te_trailers = has(&header::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    if has(&header::CONNECTION) {
        // Headers the Connection header nominates. `close` and `keep-alive` are
        // the usual tokens and name nothing beyond the fixed list.
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            if token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && !(PROTECTED.contains(&name) || (upgrade && name == header::UPGRADE))
            {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `name` has the length of a hop-by-hop header or `Upgrade`: most
/// names are ruled out on that alone, before any comparison.
fn may_be_hop_by_hop(name: &HeaderName) -> bool {
    matches!(name.as_str().len(), 2 | 7 | 10 | 14 | 16..=19)
}

/// Appends this hop to `X-Forwarded-For` (the client's address) and
/// `X-Forwarded-Proto` (the scheme it used with us).
pub fn append_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str) {
    append(headers, X_FORWARDED_FOR, client_ip.clone());
    append(headers, X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(e) => {
            e.insert(value);
        }
        header::Entry::Occupied(mut e) => {
            // Fold earlier values into one list, oldest hop first.
            let mut joined = Vec::new();
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                e.insert(v);
            }
        }
    }
}

/// Gives a request that carries no id (see [`request_id`]) a fresh
/// `x-request-id`, so that logs on both sides can be joined on it. Tracing
/// headers themselves pass through untouched, but for a malformed
/// `traceparent`, which is dropped.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    // Most requests carry none of the id headers: one scan of the names (standard
    // ones compare by tag) settles that without hashing four custom names.
    let named = headers
        .keys()
        .any(|k| *k == TRACEPARENT || *k == X_B3_TRACEID || *k == B3 || *k == X_REQUEST_ID);
    if named {
        // Nothing broken goes on: a `traceparent` that does not parse is dropped.
        crate::trace::context::drop_malformed(headers);
    }
    if !named || request_id(headers).is_none() {
        headers.insert(X_REQUEST_ID, new_request_id());
    }
}

/// The id that follows this request across services: the trace id of W3C
/// `traceparent` or B3, else `x-request-id`.
pub fn request_id(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(tp) = headers.get(&TRACEPARENT) {
        // version-traceid-parentid-flags
        if let Some(trace) = tp.as_bytes().split(|&b| b == b'-').nth(1) {
            return Some(trace);
        }
    }
    if let Some(id) = headers.get(&X_B3_TRACEID) {
        return Some(id.as_bytes());
    }
    if let Some(b3) = headers.get(&B3)
        && let Some(trace) = b3.as_bytes().split(|&b| b == b'-').next()
        && trace.len() >= 16
    {
        return Some(trace);
    }
    headers.get(&X_REQUEST_ID).map(HeaderValue::as_bytes)
}

/// 128 random bits as 32 lower-case hex digits (the W3C trace-id shape).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("host", "payments"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(h["host"], "payments");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn te_trailers_survives_being_named_by_connection() {
        let mut h = map(&[("connection", "TE"), ("te", "gzip"), ("x", "1")]);
        h.append("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h.get_all("te").iter().count(), 1);
    }

    #[test]
    fn plain_messages_are_left_alone() {
        let mut h = map(&[("content-type", "text/plain"), ("x-keep", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        let mut h = map(&[("connection", "keep-alive"), ("x-keep", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
        let mut h = map(&[("upgrade", "h2c"), ("x-keep", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert!(
            !h.contains_key("upgrade"),
            "an upgrade offer without the switch is dropped"
        );
    }

    #[test]
    fn an_h2c_offer_is_no_upgrade_and_stops_here() {
        let mut req = Request::new(());
        let h = req.headers_mut();
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQBAAAAAAIAAAAA"),
        );
        h.insert("host", HeaderValue::from_static("app"));
        assert!(!is_upgrade(&req));
        strip_hop_by_hop(req.headers_mut(), false);
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host"]);
        // Without Connection naming it, HTTP2-Settings goes all the same.
        let mut h = map(&[("http2-settings", "AAMA"), ("upgrade", "h2c")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut req = Request::new(());
        req.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        req.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&req), "WebSocket still switches");
    }

    #[test]
    fn upgrade_survives_when_switching_protocols() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn the_length_filter_lets_every_hop_by_hop_name_through() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            assert!(may_be_hop_by_hop(name), "{name}");
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert(header::HOST, HeaderValue::from_static("a"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name} is stripped");
        }
    }

    #[test]
    fn forwarded_headers_are_appended() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        append_forwarded(&mut h, &HeaderValue::from_static("10.0.0.7"), "http");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn trace_ids_are_reused_and_missing_ones_generated() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = map(&[("traceparent", tp)]);
        ensure_request_id(&mut h);
        assert_eq!(
            request_id(&h),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        assert!(!h.contains_key("x-request-id"), "trace context is enough");
        let mut h = map(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        ensure_request_id(&mut h);
        assert_eq!(
            request_id(&h),
            Some(&b"80f198ee56343ba864fe8b2a57d3eff7"[..])
        );
        assert!(!h.contains_key("x-request-id"));
        // A traceparent without a trace id is no id: the request gets one.
        let mut h = map(&[("traceparent", "garbage")]);
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"].len(), 32);
        let mut h = map(&[("x-request-id", "abc")]);
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], "abc");
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h), None);
        ensure_request_id(&mut h);
        let id = request_id(&h).map(<[u8]>::to_vec).unwrap_or_default();
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"].as_bytes(), id);
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other["x-request-id"].as_bytes(), id);
    }
}
