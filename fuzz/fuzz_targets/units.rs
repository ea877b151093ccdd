//! The value grammars of the flags (durations, sizes, percentages, per-second
//! counts): never a panic, results within their documented bounds, and a
//! duration formatted for `/config` parses back to itself.
#![no_main]

use breakwater::config::units::{
    MAX_DURATION, format_duration, parse_bytes, parse_duration, parse_per_second, parse_percent,
    parse_positive_duration,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = parse_duration(&text) {
        assert!(d <= MAX_DURATION);
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
    if let Ok(d) = parse_positive_duration(&text) {
        assert!(!d.is_zero());
    }
    let _ = parse_bytes(&text);
    if let Ok(p) = parse_percent(&text) {
        assert!((0.0..=1000.0).contains(&p));
    }
    if let Ok(n) = parse_per_second(&text) {
        assert!(n < 1_000_000);
    }
});
