//! Request ids from `traceparent`, `b3`, `x-b3-traceid` and `x-request-id` as a
//! client sends them: never a panic; the id is a piece of one of those headers,
//! and a request without one leaves with a fresh 32-hex `x-request-id`.
#![no_main]

use breakwater::transport::headers::{X_REQUEST_ID, ensure_request_id, request_id};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "traceparent",
    "b3",
    "x-b3-traceid",
    "x-request-id",
    "x-other",
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(pairs) = <Vec<(u8, Vec<u8>)>>::arbitrary(&mut u) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (which, value) in pairs {
        let name = HeaderName::from_static(NAMES[usize::from(which) % NAMES.len()]);
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.append(name, v);
        }
    }
    let before = headers.clone();
    if let Some(id) = request_id(&headers) {
        let from_a_header = NAMES[..4].iter().any(|n| {
            before
                .get_all(*n)
                .iter()
                .any(|v| contains(v.as_bytes(), id))
        });
        assert!(from_a_header, "{id:?} is in none of the id headers");
    }
    ensure_request_id(&mut headers);
    let id = request_id(&headers).expect("every request leaves with an id");
    if request_id(&before).is_none() {
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
        assert_eq!(id.len(), 32);
        assert!(
            id.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        );
    } else {
        assert_eq!(headers, before, "an id already there is left alone");
    }
});
