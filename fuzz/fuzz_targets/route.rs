//! `--route HOST[:PORT],key=value,...`: any text parses or is refused, never a
//! panic; whatever parses has a lower-case host and a routable port, and shows
//! in `/config` (its JSON) without a panic either.
#![no_main]

use breakwater::config::RouteOverride;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(route) = RouteOverride::parse(&text) {
        let lower = route.host.as_ref().map(|h| h.to_ascii_lowercase());
        assert_eq!(route.host, lower);
        assert_ne!(route.port, Some(0), "port 0 is refused");
        serde_json::to_string(&route).expect("a parsed route serializes");
    }
});
