//! `--policy-file`: any bytes are read and applied over the loopback flags, or
//! refused with a position, never a panic; whatever applies passes the same
//! validation as the flags and shows in `/config` (its JSON).
#![no_main]

use std::path::Path;

use breakwater::Config;
use breakwater::config::layered;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let flags = Config::loopback();
    if let Ok(l) = layered::apply(&flags, Path::new("policy.yaml"), data) {
        assert!(l.config.validate().is_ok(), "an applied file validates");
        serde_json::to_string(&l.config).expect("the effective config serializes");
    }
});
