//! The admin endpoint: liveness, readiness, Prometheus metrics, configuration.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ready_and_config_answer() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.timeout = std::time::Duration::from_secs(7)).await;
    let c = client();
    let live = get(&c, &proxy.admin("/live")).await;
    assert_eq!(live.status, 200);
    wait_for_ready(&proxy.admin("/ready")).await;
    let config = get(&c, &proxy.admin("/config")).await;
    assert_eq!(config.status, 200);
    assert_eq!(config.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&config.body).expect("config is JSON");
    assert_eq!(json["timeout"], "7s");
    assert_eq!(json["app_addr"], app.addr.to_string());
    let missing = get(&c, &proxy.admin("/nope")).await;
    assert_eq!(missing.status, 404);
}

fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_direction_destination_and_code() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &proxy.inbound("/")).await.status, 200);
    }
    let _ = get_via(&c, &proxy, "127.0.0.1:1", "/").await;
    let m = get(&c, &proxy.admin("/metrics")).await;
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let app_label = app.addr.to_string();
    let inbound_200 = format!(
        r#"breakwater_requests_total{{code="200",destination="{app_label}",direction="inbound",route="default"}}"#
    );
    assert_eq!(sample(&m.body, &inbound_200), Some(3.0), "{}", m.body);
    let outbound_502 = r#"breakwater_requests_total{code="502",destination="127.0.0.1:1",direction="outbound",route="default"}"#;
    assert_eq!(sample(&m.body, outbound_502), Some(1.0), "{}", m.body);
    let failures = r#"breakwater_upstream_failures_total{destination="127.0.0.1:1",direction="outbound",reason="connect-failure",route="default"}"#;
    assert_eq!(sample(&m.body, failures), Some(1.0));
    let count = format!(
        r#"breakwater_request_duration_seconds_count{{destination="{app_label}",direction="inbound",route="default"}}"#
    );
    assert_eq!(sample(&m.body, &count), Some(3.0));
    let inflight = format!(
        r#"breakwater_inflight_requests{{destination="{app_label}",direction="inbound",route="default"}}"#
    );
    assert_eq!(
        sample(&m.body, &inflight),
        Some(0.0),
        "nothing in flight after the bodies ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_hosts_cannot_grow_the_destination_labels() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.metrics_max_destinations = 5).await;
    let c = client();
    // Distinct destinations that all fail fast (nothing listens on port 1).
    for i in 0..40 {
        let host = format!("127.0.0.{}:1", i + 2);
        let _ = get_via(&c, &proxy, &host, "/").await;
    }
    let m = get(&c, &proxy.admin("/metrics")).await;
    let labels: std::collections::BTreeSet<&str> = m
        .body
        .lines()
        .filter(|l| l.starts_with("breakwater_requests_total{"))
        .filter(|l| l.contains(r#"direction="outbound""#))
        .filter_map(|l| l.split("destination=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(
        labels.len() <= 6,
        "at most 5 destinations plus \"other\": {labels:?}"
    );
    assert!(labels.contains("other"), "{labels:?}");
    let other = r#"breakwater_requests_total{code="502",destination="other",direction="outbound",route="default"}"#;
    assert_eq!(sample(&m.body, other), Some(35.0), "{}", m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_carries_the_trace_or_request_id() {
    let app = spawn_echo().await;
    let mut proxy = spawn_binary_with(
        app.addr,
        &["--access-log", "--log-format=json"],
        std::process::Stdio::piped(),
    )
    .await;
    let lines = access_lines(&mut proxy, 2);
    let c = client();
    let traced = http::Request::get(format!("http://{}/traced", proxy.addrs.inbound))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(full(""))
        .expect("request");
    assert_eq!(send(&c, traced).await.status, 200);
    let untraced = get(&c, &format!("http://{}/untraced", proxy.addrs.inbound)).await;
    let generated = untraced
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a generated request id reached the app")
        .to_string();
    let lines = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::task::spawn_blocking(move || lines.join()),
    )
    .await
    .expect("two access log lines within 10 s")
    .expect("join")
    .expect("reader");
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("access log lines are JSON"))
        .collect();
    assert_eq!(entries[0]["path"], "/traced");
    assert_eq!(entries[0]["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(entries[0]["status"], 200);
    assert_eq!(entries[0]["direction"], "inbound");
    assert_eq!(entries[1]["path"], "/untraced");
    assert_eq!(entries[1]["request_id"], generated.as_str());
}

/// Counters over a closed set of reasons are exported at zero before the first
/// event, so a `rate()` alert has a series to evaluate: the refusals of each
/// direction from start-up, a destination's own reasons from its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_label_sets_start_at_zero() {
    use breakwater::metrics::{
        FAILURE_REASONS, INBOUND_REJECTIONS, OUTBOUND_REJECTIONS, RETRY_REASONS, SKIP_REASONS,
    };
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();
    let fresh = get(&c, &proxy.admin("/metrics")).await.body;
    let rejected = |direction: &str, reason: &str| {
        format!(r#"breakwater_rejected_total{{direction="{direction}",reason="{reason}"}}"#)
    };
    for reason in OUTBOUND_REJECTIONS {
        let series = rejected("outbound", reason);
        assert_eq!(sample(&fresh, &series), Some(0.0), "{series}:\n{fresh}");
    }
    for reason in INBOUND_REJECTIONS {
        let series = rejected("inbound", reason);
        assert_eq!(sample(&fresh, &series), Some(0.0), "{series}:\n{fresh}");
    }
    for to in ["healthy", "unhealthy"] {
        let series = format!(r#"breakwater_app_health_transitions_total{{to="{to}"}}"#);
        assert!(sample(&fresh, &series).is_some(), "{series}:\n{fresh}");
    }
    for direction in ["inbound", "outbound"] {
        for reason in breakwater::metrics::CLIENT_ERROR_REASONS {
            let series = format!(
                r#"breakwater_client_errors_total{{direction="{direction}",reason="{reason}"}}"#
            );
            assert_eq!(sample(&fresh, &series), Some(0.0), "{series}:\n{fresh}");
        }
    }
    let tunnels = r#"breakwater_tunnels_total{direction="outbound",kind="connect"}"#;
    assert_eq!(sample(&fresh, tunnels), Some(0.0), "{fresh}");
    for result in ["ok", "failed", "certificate-error"] {
        let series =
            format!(r#"breakwater_tls_handshakes_total{{direction="inbound",result="{result}"}}"#);
        assert_eq!(sample(&fresh, &series), Some(0.0), "{series}:\n{fresh}");
    }

    let dest = app.addr.to_string();
    assert_eq!(get_via(&c, &proxy, &dest, "/").await.status, 200);
    let after = get(&c, &proxy.admin("/metrics")).await.body;
    let per_destination = |family: &str, label: &str, value: &str| {
        // Prometheus sorts label names: `reason` before `route`, `to` after it.
        if label < "route" {
            format!(
                r#"{family}{{destination="{dest}",direction="outbound",{label}="{value}",route="default"}}"#
            )
        } else {
            format!(
                r#"{family}{{destination="{dest}",direction="outbound",route="default",{label}="{value}"}}"#
            )
        }
    };
    let mut expected = Vec::new();
    for r in FAILURE_REASONS {
        expected.push(per_destination(
            "breakwater_upstream_failures_total",
            "reason",
            r,
        ));
    }
    for r in RETRY_REASONS {
        expected.push(per_destination("breakwater_retries_total", "reason", r));
    }
    for r in SKIP_REASONS {
        expected.push(per_destination(
            "breakwater_retries_skipped_total",
            "reason",
            r,
        ));
    }
    for to in ["closed", "open", "half-open"] {
        expected.push(per_destination(
            "breakwater_circuit_transitions_total",
            "to",
            to,
        ));
    }
    for series in expected {
        assert_eq!(sample(&after, &series), Some(0.0), "{series}:\n{after}");
    }
}
