//! What `/metrics` costs and tells over a pod's life: label caps that hold
//! under a scan of hosts, series that leave with the destinations that
//! expired, and the process and build families every exporter is expected
//! to have. (The chart's monitoring objects and alerts: `kubernetes.rs` and
//! `alerts.rs`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// The sample lines of `family` (exactly that name, any labels).
fn series<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// The value of `label` in a sample line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!("{name}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
}

/// The value of a sample line.
fn value(line: &str) -> Option<f64> {
    line.rsplit(' ').next().and_then(|v| v.parse().ok())
}

fn outbound_circuits(text: &str) -> Vec<&str> {
    series(text, "breakwater_circuit_state")
        .into_iter()
        .filter(|l| l.contains(r#"direction="outbound""#))
        .collect()
}

/// The outbound `destination` labels any family carries.
fn destinations(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("breakwater_") && l.contains(r#"direction="outbound""#))
        .filter_map(|l| label(l, "destination"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_labels_stay_at_their_cap_and_idle_destinations_take_their_series_away() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.metrics_max_destinations = 5;
        c.metrics_max_endpoints = 3;
        c.destination_idle_timeout = Some(Duration::from_secs(2));
        // One quick attempt each: all 40 are made well within the idle time.
        c.retry.retries = 0;
    })
    .await;
    let c = client();
    // 40 destinations of one endpoint each, all failing fast (nothing
    // listens on port 1): before the cap on endpoints, each one left a
    // circuit series of its own under destination="other", forever.
    for i in 0..40 {
        let a = get_via(&c, &proxy, &format!("127.0.0.{}:1", i + 2), "/").await;
        assert_eq!(a.status, 502, "{}", a.body);
    }
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let (overflow, circuits): (Vec<&str>, Vec<&str>) = outbound_circuits(&m)
        .into_iter()
        .partition(|l| label(l, "destination") == Some("other"));
    assert_eq!(
        circuits.len(),
        5,
        "3 endpoints of their own, and the 2 further destinations' endpoints \
         as endpoint=\"other\":\n{}",
        circuits.join("\n")
    );
    let own: Vec<&str> = circuits
        .iter()
        .filter_map(|l| label(l, "endpoint"))
        .filter(|e| *e != "other")
        .collect();
    assert_eq!(own.len(), 3, "{circuits:?}");
    // The overflow's endpoints are per request; the client's connection
    // still holds its last one.
    assert!(
        overflow.len() <= 1
            && overflow
                .iter()
                .all(|l| label(l, "endpoint") == Some("other")),
        "{overflow:?}"
    );
    assert_eq!(
        destinations(&m).len(),
        7,
        "5, other, and none (no destination): {:?}",
        destinations(&m)
    );

    // One destination stays in use; the four others go once idle for 2 s,
    // with every series they had.
    let kept = "127.0.0.2:1";
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let _ = get_via(&c, &proxy, kept, "/").await;
        let m = get(&c, &proxy.admin("/metrics")).await.body;
        if destinations(&m).len() == 3 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let left: BTreeSet<String> = [kept, "none", "other"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(destinations(&m), left, "{m}");
    let (overflow, circuits): (Vec<&str>, Vec<&str>) = outbound_circuits(&m)
        .into_iter()
        .partition(|l| label(l, "destination") == Some("other"));
    assert_eq!(circuits.len(), 1, "{circuits:?}");
    assert_eq!(label(circuits[0], "destination"), Some(kept));
    assert!(overflow.len() <= 1, "{overflow:?}");
    let other = r#"breakwater_requests_total{code="502",destination="other",direction="outbound",route="default"}"#;
    assert_eq!(
        series(&m, "breakwater_requests_total")
            .into_iter()
            .find(|l| l.starts_with(other))
            .and_then(value),
        Some(35.0),
        "the overflow's counts stay: {m}"
    );

    // The labels they held are free for destinations in use.
    let a = get_via(&c, &proxy, "127.0.0.200:1", "/").await;
    assert_eq!(a.status, 502);
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    assert!(destinations(&m).contains("127.0.0.200:1"), "{m}");
    let circuits = outbound_circuits(&m);
    assert!(
        circuits
            .iter()
            .any(|l| label(l, "endpoint") == Some("127.0.0.200:1")),
        "{circuits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_process_and_build_info() {
    let app = spawn_echo().await;
    let proxy = spawn_binary(app.addr, &[]).await;
    let c = client();
    for _ in 0..20 {
        let a = get(&c, &format!("http://{}/", proxy.addrs.inbound)).await;
        assert_eq!(a.status, 200);
    }
    let m = get(&c, &format!("http://{}/metrics", proxy.addrs.admin))
        .await
        .body;
    let one = |family: &str| -> f64 {
        let lines = series(&m, family);
        assert_eq!(lines.len(), 1, "one {family}: {lines:?}\n{m}");
        value(lines[0]).unwrap_or_else(|| panic!("{family} has a number: {lines:?}"))
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = one("process_start_time_seconds");
    assert!(
        started > now - 120.0 && started <= now + 1.0,
        "started {started}, now {now}"
    );
    let (_, rss_kib) = memory_kib(proxy.child.id());
    let rss = one("process_resident_memory_bytes");
    assert!(
        rss > 1e6 && (rss / 1024.0 - rss_kib as f64).abs() < 0.5 * rss_kib as f64,
        "resident {rss} B against /proc's {rss_kib} KiB"
    );
    assert!(one("process_virtual_memory_bytes") >= rss);
    let open = one("process_open_fds");
    let max = one("process_max_fds");
    assert!(open >= 5.0 && open < max, "{open} of {max}");
    let cpu = one("process_cpu_seconds_total");
    assert!((0.0..60.0).contains(&cpu), "{cpu}");
    assert!(m.contains("# TYPE process_cpu_seconds_total counter"));
    assert!(one("process_threads") >= 2.0);

    let info = series(&m, "breakwater_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(value(info[0]), Some(1.0));
    assert_eq!(label(info[0], "version"), Some(env!("CARGO_PKG_VERSION")));
    let commit = label(info[0], "commit").unwrap_or_default();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
}

/// Past `--metrics-max-destinations` only the label is shared: each
/// destination still keeps its own breaker and its pooled connections (they
/// were built per request before, so a failing destination past the cap
/// never opened its circuit and every request paid a new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_past_the_label_cap_keeps_its_breaker_and_its_connections() {
    let labelled = spawn_echo().await;
    let failing = spawn_upstream(|_req| async { text_response(503, "down") }).await;
    let healthy = spawn_echo().await;
    let proxy = spawn_proxy(labelled.addr, |c| {
        c.metrics_max_destinations = 1;
        c.retry.retries = 0;
        c.breaker.consecutive_failures = 3;
        c.breaker.open_duration = Duration::from_secs(30);
    })
    .await;
    let a = get_via(&client(), &proxy, &labelled.addr.to_string(), "/").await;
    assert_eq!(a.status, 200);

    // A new client connection each time: nothing the client side holds
    // carries the state from one request to the next.
    let mut reasons = Vec::new();
    for _ in 0..10 {
        let a = get_via(&client(), &proxy, &failing.addr.to_string(), "/").await;
        reasons.push((a.status, a.reason().unwrap_or("").to_string()));
    }
    assert_eq!(
        failing.hits(),
        3,
        "the circuit opened on the third: {reasons:?}"
    );
    assert!(
        reasons[3..]
            .iter()
            .all(|(s, r)| *s == 503 && r == "circuit-open"),
        "{reasons:?}"
    );

    for _ in 0..5 {
        let a = get_via(&client(), &proxy, &healthy.addr.to_string(), "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(healthy.hits(), 5);
    assert_eq!(
        healthy.connections(),
        1,
        "one pooled upstream connection served all five"
    );

    let m = get(&client(), &proxy.admin("/metrics")).await.body;
    assert_eq!(
        destinations(&m),
        [
            labelled.addr.to_string(),
            "other".to_string(),
            "none".to_string()
        ]
        .into_iter()
        .collect::<BTreeSet<_>>(),
        "the label is still capped (none: requests without a destination)"
    );
    let kept = series(&m, "breakwater_destinations")
        .into_iter()
        .find(|l| l.contains(r#"direction="outbound""#))
        .and_then(value);
    assert_eq!(kept, Some(3.0), "{m}");
    let upstreams = get(&client(), &proxy.admin("/upstreams")).await.body;
    assert!(
        upstreams.contains(&failing.addr.to_string()) && upstreams.contains("open"),
        "/upstreams shows the unlabelled destination's open circuit: {upstreams}"
    );
}
