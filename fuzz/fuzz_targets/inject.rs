//! `breakwater inject` on any text: an error or YAML, never a panic; what it
//! writes injects again to the same text (inject is idempotent, see
//! `injecting_twice_changes_nothing` in src/inject/tests.rs).
#![no_main]

use breakwater::inject::{Mode, Plan, SidecarForm, inject_stream};
use libfuzzer_sys::fuzz_target;

fn plan() -> Plan {
    Plan {
        mode: Mode::Transparent,
        sidecar: SidecarForm::Native,
        image: "breakwater:fuzz".into(),
        init_image: "breakwater:fuzz-init".into(),
        app_port: None,
        proxy_uid: 1717,
        exclude_inbound_ports: Vec::new(),
        exclude_outbound_ports: Vec::new(),
        exclude_outbound_cidrs: Vec::new(),
        run_flags: Vec::new(),
        policy: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plan = plan();
    if let Ok(once) = inject_stream(text, &plan) {
        let twice = inject_stream(&once.output, &plan).expect("inject's own output reads back");
        assert_eq!(twice.output, once.output, "injecting twice changes nothing");
    }
});
