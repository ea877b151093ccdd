//! `x-breakwater-deadline-ms`: whatever a caller sends, `incoming` never panics;
//! `announce` of any time left writes one value that `incoming` reads back
//! within a millisecond (at least 1 ms, capped at what the header can carry).
#![no_main]

use std::time::Duration;

use breakwater::policy::deadline::{DEADLINE_HEADER, announce, incoming};
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(secs), Ok(nanos), Ok(grpc), Ok(sent)) = (
        u64::arbitrary(&mut u),
        u32::arbitrary(&mut u),
        bool::arbitrary(&mut u),
        <Vec<Vec<u8>>>::arbitrary(&mut u),
    ) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for bytes in sent {
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            headers.append(DEADLINE_HEADER, v.clone());
            headers.append("grpc-timeout", v);
        }
    }
    let _ = incoming(&headers);
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    }
    let left = Duration::new(secs, nanos % 1_000_000_000);
    announce(&mut headers, left);
    assert_eq!(headers.get_all(&DEADLINE_HEADER).iter().count(), 1);
    let back = incoming(&headers).expect("announced deadline parses");
    let cap = Duration::from_millis(u64::MAX);
    let expected = left.min(cap).max(Duration::from_millis(1));
    assert!(
        back <= expected && expected - back < Duration::from_millis(1),
        "{left:?} → {back:?}"
    );
});
