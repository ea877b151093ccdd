//! Header hygiene on generated header maps: after `strip_hop_by_hop` without an
//! upgrade, no hop-by-hop header is left (`te` only as `trailers`), nothing a
//! visible-ASCII `Connection` list names is left but `host` and
//! `content-length`, and every other header is as it was. `is_upgrade` never
//! panics, and only HTTP/1.1 upgrades.
#![no_main]

use breakwater::transport::headers::{is_upgrade, strip_hop_by_hop};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
];
const OTHERS: [&str; 5] = ["host", "content-length", "x-a", "x-b", "accept"];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(pairs), Ok(h2)) = (
        <Vec<(u8, Vec<u8>)>>::arbitrary(&mut u),
        bool::arbitrary(&mut u),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (which, value) in pairs {
        let all = HOP_BY_HOP.len() + OTHERS.len();
        let i = usize::from(which) % all;
        let name = HOP_BY_HOP
            .iter()
            .chain(&OTHERS)
            .nth(i)
            .copied()
            .unwrap_or("x-a");
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let mut req = Request::new(());
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers.clone();
    assert!(!(h2 && is_upgrade(&req)));

    let named: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut stripped = headers.clone();
    strip_hop_by_hop(&mut stripped, false);
    for name in HOP_BY_HOP {
        if name == "te" {
            assert!(stripped.get_all("te").iter().all(|v| v == "trailers"));
            assert!(stripped.get_all("te").iter().count() <= 1);
        } else {
            assert!(!stripped.contains_key(name), "{name} is left");
        }
    }
    for name in &named {
        let protected = *name == "host" || *name == "content-length";
        if protected {
            assert_eq!(stripped.get_all(name), headers.get_all(name));
        } else if *name != "te" {
            assert!(
                !stripped.contains_key(name),
                "{name} named in Connection is left"
            );
        }
    }
    for name in headers.keys() {
        if !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(name) {
            assert_eq!(
                stripped.get_all(name),
                headers.get_all(name),
                "{name} changed"
            );
        }
    }
    // Stripping is idempotent: exchange strips once per direction.
    let again = {
        let mut h = stripped.clone();
        strip_hop_by_hop(&mut h, false);
        h
    };
    assert_eq!(again, stripped);
});
