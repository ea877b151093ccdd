//! `Retry-After` from an upstream, as header bytes: never a panic; a delay only
//! on 429 and 503; delta-seconds are taken as they are, an HTTP date is never
//! further away than the date itself.
#![no_main]

use std::time::{Duration, SystemTime};

use breakwater::policy::retry::retry_after;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, value);
    assert_eq!(retry_after(StatusCode::OK, &headers), None);
    let before = SystemTime::now();
    let Some(wait) = retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers) else {
        return;
    };
    assert!(retry_after(StatusCode::TOO_MANY_REQUESTS, &headers).is_some());
    let text = std::str::from_utf8(data).unwrap_or_default().trim();
    if let Ok(secs) = text.parse::<u64>() {
        assert_eq!(wait, Duration::from_secs(secs));
    } else if let Ok(at) = httpdate::parse_http_date(text) {
        assert!(wait <= at.duration_since(before).unwrap_or(Duration::ZERO));
    } else {
        panic!("{text:?} gave a delay but is neither delta-seconds nor a date");
    }
});
