//! The chart's alerts, run by Prometheus's own rule engine: the PrometheusRule
//! is rendered with helm, its groups written out as a rules file, and
//! `promtool test rules` evaluates every alert on recorded series, for the
//! cases that must fire and those that must not (a flapping circuit, an
//! endpoint whose series is gone, a draining pod, a certificate with time
//! left). promtool comes from Debian's `prometheus` package (.ci/programs);
//! without it the test fails under CI=true and is skipped elsewhere.

use std::process::Command;

use breakwater::inject::yaml::emit;

use crate::kubernetes::{chart, find, have_helm, missing, parse, render, text};
use crate::support::TestDir;

fn have_promtool() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    !missing(found, "promtool (apt-get install prometheus)")
}

/// Series as Prometheus would scrape them: the target's namespace and pod added.
const TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - name: circuits
    interval: 1m
    input_series:
      # Open all along: fires once open for circuitOpenFor (5m).
      - series: 'breakwater_circuit_state{namespace="shop",pod="a",direction="outbound",destination="orders:80",route="default",endpoint="10.0.0.1:80"}'
        values: '1x10'
      # Its other endpoint is closed: the destination still has one open.
      - series: 'breakwater_circuit_state{namespace="shop",pod="a",direction="outbound",destination="orders:80",route="default",endpoint="10.0.0.2:80"}'
        values: '0x10'
      # Open, then half-open with its probe failing, and so on: never closed.
      - series: 'breakwater_circuit_state{namespace="shop",pod="a",direction="outbound",destination="search:80",route="default",endpoint="other"}'
        values: '1 2 1 2 1 2 1 2 1 2 1'
      # Closes between trips: never open for 5m.
      - series: 'breakwater_circuit_state{namespace="shop",pod="a",direction="outbound",destination="flappy:80",route="default",endpoint="10.0.0.3:80"}'
        values: '1 1 1 0 1 1 1 0 1 1 1'
      # The endpoint left after 3m and breakwater removed its series.
      - series: 'breakwater_circuit_state{namespace="shop",pod="a",direction="outbound",destination="gone:80",route="default",endpoint="10.0.0.4:80"}'
        values: '1 1 1 stale'
    alert_rule_test:
      - eval_time: 4m
        alertname: BreakwaterCircuitOpen
        exp_alerts: []
      - eval_time: 7m
        alertname: BreakwaterCircuitOpen
        exp_alerts:
          - exp_labels: {severity: critical, namespace: shop, pod: a, direction: outbound, destination: "orders:80"}
            exp_annotations:
              summary: "Circuit to orders:80 open for 5m"
              description: "breakwater in shop/a has kept its circuit to orders:80 open for 5m: calls there fail fast with 503 circuit-open. Check that destination's health."
          - exp_labels: {severity: critical, namespace: shop, pod: a, direction: outbound, destination: "search:80"}
            exp_annotations:
              summary: "Circuit to search:80 open for 5m"
              description: "breakwater in shop/a has kept its circuit to search:80 open for 5m: calls there fail fast with 503 circuit-open. Check that destination's health."

  - name: retry budget
    interval: 1m
    input_series:
      - series: 'breakwater_retries_skipped_total{namespace="shop",pod="a",direction="outbound",destination="payments:80",route="default",reason="budget-exhausted"}'
        values: '0+6x30'
      - series: 'breakwater_retries_skipped_total{namespace="shop",pod="a",direction="outbound",destination="quiet:80",route="default",reason="budget-exhausted"}'
        values: '3x30'
      - series: 'breakwater_retries_skipped_total{namespace="shop",pod="a",direction="outbound",destination="big:80",route="default",reason="body-too-large"}'
        values: '0+6x30'
    alert_rule_test:
      - eval_time: 8m
        alertname: BreakwaterRetryBudgetExhausted
        exp_alerts: []
      - eval_time: 20m
        alertname: BreakwaterRetryBudgetExhausted
        exp_alerts:
          - exp_labels: {severity: critical, namespace: shop, pod: a, destination: "payments:80"}
            exp_annotations:
              summary: "Retry budget to payments:80 exhausted"
              description: "breakwater in shop/a has been refusing retries to payments:80 for 10m: its failures exceed what --retry-budget allows to retry."

  - name: app not ready
    interval: 1m
    input_series:
      - series: 'breakwater_app_healthy{namespace="shop",pod="a"}'
        values: '0x10'
      - series: 'breakwater_draining{namespace="shop",pod="a"}'
        values: '0x10'
      # Unhealthy while it drains: expected, not alerted.
      - series: 'breakwater_app_healthy{namespace="shop",pod="b"}'
        values: '0x10'
      - series: 'breakwater_draining{namespace="shop",pod="b"}'
        values: '1x10'
      - series: 'breakwater_app_healthy{namespace="shop",pod="c"}'
        values: '1x10'
      - series: 'breakwater_draining{namespace="shop",pod="c"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: BreakwaterAppNotReady
        exp_alerts: []
      - eval_time: 7m
        alertname: BreakwaterAppNotReady
        exp_alerts:
          - exp_labels: {severity: critical, namespace: shop, pod: a}
            exp_annotations:
              summary: "App in shop/a not ready"
              description: "breakwater's probes of its app have failed for 5m; inbound requests get 503 app-not-ready. See `kubectl logs` of the app and /ready?verbose on breakwater's admin port."

  - name: tls expiry
    interval: 1m
    input_series:
      # Time starts at 0: ten days left, thirty days left, expired.
      - series: 'breakwater_tls_cert_expiry_timestamp_seconds{namespace="shop",pod="a",cert="inbound"}'
        values: '864000x30'
      - series: 'breakwater_tls_cert_expiry_timestamp_seconds{namespace="shop",pod="a",cert="outbound-ca"}'
        values: '2592000x30'
      - series: 'breakwater_tls_cert_expiry_timestamp_seconds{namespace="shop",pod="b",cert="inbound"}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: BreakwaterTLSCertificateExpiring
        exp_alerts: []
      - eval_time: 20m
        alertname: BreakwaterTLSCertificateExpiring
        exp_alerts:
          - exp_labels: {severity: critical, namespace: shop, pod: a, cert: inbound}
            exp_annotations:
              summary: "TLS certificate inbound of shop/a expires within 14 days"
              description: "The inbound certificate breakwater in shop/a serves or trusts expires in 9d 23h 40m 0s (negative: it has expired). Renew the Secret it is mounted from; breakwater picks the new files up by itself."
          - exp_labels: {severity: critical, namespace: shop, pod: b, cert: inbound}
            exp_annotations:
              summary: "TLS certificate inbound of shop/b expires within 14 days"
              description: "The inbound certificate breakwater in shop/b serves or trusts expires in -20m 0s (negative: it has expired). Renew the Secret it is mounted from; breakwater picks the new files up by itself."
"#;

#[test]
fn every_alert_fires_when_it_should_and_not_otherwise() {
    if !have_helm() || !have_promtool() {
        return;
    }
    let docs = parse(&render(&[chart().join("ci/monitoring-values.yaml")]));
    let spec = find(&docs, "PrometheusRule")
        .get("spec")
        .expect("the PrometheusRule's spec");
    let dir = TestDir::new("alerts");
    dir.write("rules.yaml", &emit(spec));
    // Every alert the chart defines has a test here: a new one needs its own.
    let rules = emit(spec);
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 4, "{rules}");
    for alert in &alerts {
        assert!(
            TESTS.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
    let tests = dir.write("tests.yaml", TESTS);
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .current_dir(&dir.0)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}\nrules:\n{rules}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_rules_check_and_every_threshold_follows_its_value() {
    if !have_helm() || !have_promtool() {
        return;
    }
    let out = crate::kubernetes::helm_template(
        &[chart().join("ci/monitoring-values.yaml")],
        &[
            "prometheusRule.circuitOpenFor=12m",
            "prometheusRule.tlsCertExpiryDays=30",
        ],
        crate::kubernetes::KUBE_VERSION,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = parse(&text(&out.stdout));
    let spec = find(&docs, "PrometheusRule").get("spec").expect("spec");
    let rules = emit(spec);
    assert!(rules.contains("for: 12m"), "{rules}");
    assert!(rules.contains("< 30 * 86400"), "{rules}");
    let dir = TestDir::new("alerts-check");
    let file = dir.write("rules.yaml", &rules);
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
