//! The live policy surface: a watched `--policy-file` applied without a
//! restart, routes that match path, method and header on both listeners,
//! observe-only mode, and admin overrides. Every test runs the proxy against
//! real upstreams on loopback and edits real files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

use crate::support::*;

/// An upstream that sleeps for `?ms=N` (default 0) before answering 200 with
/// its method and path.
async fn sleepy() -> Upstream {
    spawn_upstream(|req: Request<hyper::body::Incoming>| async move {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        text_response(200, &format!("{} {}\n", req.method(), req.uri().path()))
    })
    .await
}

fn sample_sum(metrics: &str, prefix: &str, contains: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `n` reloads ended with `result`; returns how long that took.
async fn wait_reloads(c: &HttpClient, proxy: &TestProxy, result: &str, n: f64) -> Duration {
    let started = Instant::now();
    let series = format!(r#"breakwater_policy_reloads_total{{result="{result}"}}"#);
    loop {
        let m = get(c, &proxy.admin("/metrics")).await.body;
        if sample_sum(&m, &series, &[]) >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {result} reload within 5s:\n{}",
            get(c, &proxy.admin("/config")).await.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn with_policy(file: &Path) -> TestProxy {
    let app = spawn_echo().await;
    let file = file.to_path_buf();
    // The app stays up for the proxy's lifetime: leak it into the task.
    let proxy = spawn_proxy(app.addr, move |c| c.policy_file = Some(file)).await;
    std::mem::forget(app);
    proxy
}

fn request(method: &str, proxy: &TestProxy, host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.outbound()))
        .header(http::header::HOST, host)
        .body(full(""))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_changes_the_next_request_and_spares_the_one_in_flight() {
    let upstream = sleepy().await;
    let dir = TestDir::new("policy-edit");
    let file = dir.write("policy.yaml", "defaults:\n  timeout: 3s\n");
    let proxy = Arc::new(with_policy(&file).await);
    let c = client();
    let host = upstream.addr.to_string();

    let in_flight = {
        let (c, proxy, host) = (c.clone(), proxy.clone(), host.clone());
        tokio::spawn(async move { get_via(&c, &proxy, &host, "/?ms=1200").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    dir.write("policy.yaml", "defaults:\n  timeout: 300ms\n");
    let latency = wait_reloads(&c, &proxy, "applied", 1.0).await;
    eprintln!("reload latency (file written -> applied): {latency:?}");

    let started = Instant::now();
    let next = get_via(&c, &proxy, &host, "/?ms=1200").await;
    assert_eq!(next.status, 504, "{}", next.body);
    assert_eq!(next.reason(), Some("timeout"));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "timed out after {took:?}"
    );

    // The request in flight keeps the policy it started under: 3s, not 300ms.
    let first = in_flight.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);

    let config = get(&c, &proxy.admin("/config")).await.body;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["timeout"], "300ms", "{config}");
    let file_status = &config["policy_file"];
    assert_eq!(
        file_status["version"]["hash"].as_str().map(str::len),
        Some(16)
    );
    assert_eq!(file_status["keys_over_flags"][0], "timeout");
    assert!(
        file_status["precedence"]
            .as_str()
            .is_some_and(|p| p.contains("over flags"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_data_symlink_swap_is_followed() {
    // A ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> a
    // timestamped directory, swapped by renaming a new symlink over ..data.
    let upstream = sleepy().await;
    let dir = TestDir::new("policy-configmap");
    let v1 = dir.0.join("..2026_12_02_01");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("policy.yaml"), "defaults:\n  timeout: 3s\n").unwrap();
    std::os::unix::fs::symlink("..2026_12_02_01", dir.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", dir.0.join("policy.yaml")).unwrap();
    let proxy = with_policy(&dir.0.join("policy.yaml")).await;
    let c = client();
    let host = upstream.addr.to_string();
    assert_eq!(get_via(&c, &proxy, &host, "/?ms=500").await.status, 200);

    let v2 = dir.0.join("..2026_12_02_02");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("policy.yaml"), "defaults:\n  timeout: 200ms\n").unwrap();
    std::os::unix::fs::symlink("..2026_12_02_02", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_reloads(&c, &proxy, "applied", 1.0).await;
    let after = get_via(&c, &proxy, &host, "/?ms=500").await;
    assert_eq!(after.status, 504, "{}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_policy_and_says_why() {
    let upstream = sleepy().await;
    let dir = TestDir::new("policy-invalid");
    let file = dir.write("policy.yaml", "defaults:\n  timeout: 200ms\n");
    let proxy = with_policy(&file).await;
    let c = client();
    let host = upstream.addr.to_string();
    let before: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/config")).await.body).unwrap();

    dir.write(
        "policy.yaml",
        "defaults:\n  timeout: 5s\nroutes:\n  - host: api\n    colour: blue\n",
    );
    wait_reloads(&c, &proxy, "rejected", 1.0).await;
    // Still the old 200ms: the slow call times out.
    let r = get_via(&c, &proxy, &host, "/?ms=600").await;
    assert_eq!(r.status, 504, "{}", r.body);
    let config: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/config")).await.body).unwrap();
    let rejected = config["policy_file"]["rejected"]
        .as_str()
        .unwrap_or_default();
    assert!(
        rejected.contains("line 5") && rejected.contains("colour"),
        "{rejected}"
    );
    assert_eq!(
        config["policy_file"]["version"], before["policy_file"]["version"],
        "the version in force is still the first"
    );
    assert_eq!(config["timeout"], "200ms");

    // Fixed: applied, and the rejection is cleared.
    dir.write("policy.yaml", "defaults:\n  timeout: 5s\n");
    wait_reloads(&c, &proxy, "applied", 1.0).await;
    assert_eq!(get_via(&c, &proxy, &host, "/?ms=600").await.status, 200);
    let config: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/config")).await.body).unwrap();
    assert!(config["policy_file"]["rejected"].is_null(), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_routes_match_path_method_and_header() {
    let upstream = sleepy().await;
    let port = upstream.addr.port();
    let dir = TestDir::new("policy-outbound-routes");
    let file = dir.write(
        "policy.yaml",
        &format!(
            "defaults:\n  timeout: 3s\nroutes:\n\
             \x20 - name: reports-slow\n    host: 127.0.0.1\n    port: {port}\n    path-prefix: /slow\n    method: GET\n    timeout: 200ms\n\
             \x20 - name: canary\n    host: 127.0.0.1\n    headers:\n      - name: x-canary\n        value: \"1\"\n    timeout: 200ms\n"
        ),
    );
    let proxy = with_policy(&file).await;
    let c = client();
    let host = upstream.addr.to_string();

    let slow_get = send(&c, request("GET", &proxy, &host, "/slow/report?ms=600")).await;
    assert_eq!(slow_get.status, 504, "{}", slow_get.body);
    let slow_post = send(&c, request("POST", &proxy, &host, "/slow/report?ms=600")).await;
    assert_eq!(slow_post.status, 200, "another method, the defaults");
    let fast = send(&c, request("GET", &proxy, &host, "/fast?ms=600")).await;
    assert_eq!(fast.status, 200, "another path, the defaults");
    let mut canary = request("POST", &proxy, &host, "/fast?ms=600");
    canary
        .headers_mut()
        .insert("x-canary", http::HeaderValue::from_static("1"));
    assert_eq!(send(&c, canary).await.status, 504, "the header route");

    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let dest = format!("destination=\"{host}\"");
    for (route, code) in [
        ("reports-slow", "504"),
        ("canary", "504"),
        ("default", "200"),
    ] {
        let label = format!("route=\"{route}\"");
        let code = format!("code=\"{code}\"");
        assert!(
            sample_sum(&m, "breakwater_requests_total", &[&dest, &label, &code]) >= 1.0,
            "{route} {code}:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_routes_limit_one_path_of_the_app() {
    let app = sleepy().await;
    let dir = TestDir::new("policy-inbound-routes");
    let file = dir.write(
        "policy.yaml",
        "routes:\n  - name: app-uploads\n    direction: inbound\n    path-prefix: /upload\n    method: POST\n    inbound-max-concurrent: 1\n",
    );
    let addr = app.addr;
    let proxy = Arc::new(spawn_proxy(addr, move |c| c.policy_file = Some(file)).await);
    let c = client();
    let call = |method: &'static str, path: &'static str| {
        let (c, proxy) = (c.clone(), proxy.clone());
        tokio::spawn(async move {
            let req = Request::builder()
                .method(method)
                .uri(proxy.inbound(path))
                .body(full(""))
                .unwrap();
            send(&c, req).await
        })
    };
    let uploads = [
        call("POST", "/upload?ms=500"),
        call("POST", "/upload?ms=500"),
    ];
    let others = [call("POST", "/other?ms=500"), call("GET", "/upload?ms=500")];
    let mut statuses = Vec::new();
    for t in uploads {
        let a = t.await.unwrap();
        if a.status == 503 {
            assert_eq!(a.reason(), Some("bulkhead-full"));
            assert!(a.headers.contains_key(http::header::RETRY_AFTER));
        }
        statuses.push(a.status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503], "one upload at a time");
    for t in others {
        assert_eq!(
            t.await.unwrap().status,
            200,
            "other paths and methods are not limited"
        );
    }
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    assert!(
        sample_sum(
            &m,
            "breakwater_requests_total",
            &[
                "direction=\"inbound\"",
                "route=\"app-uploads\"",
                "code=\"503\""
            ]
        ) == 1.0,
        "{m}"
    );
}

/// `n` concurrent GETs of `path`, their statuses sorted.
async fn burst(
    c: &HttpClient,
    proxy: &Arc<TestProxy>,
    host: &str,
    path: &str,
    n: usize,
) -> Vec<u16> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (c, proxy, host, path) =
                (c.clone(), proxy.clone(), host.to_string(), path.to_string());
            tokio::spawn(async move { get_via(&c, &proxy, &host, &path).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_bulkhead_lets_everything_through_until_the_file_enforces_it() {
    let upstream = sleepy().await;
    let dir = TestDir::new("policy-observe-bulkhead");
    let file = dir.write(
        "policy.yaml",
        "defaults:\n  max-concurrent: 1\n  bulkhead-mode: observe\n",
    );
    let proxy = Arc::new(with_policy(&file).await);
    let c = client();
    let host = upstream.addr.to_string();

    assert_eq!(
        burst(&c, &proxy, &host, "/?ms=400", 3).await,
        [200, 200, 200]
    );
    assert_eq!(upstream.hits(), 3);
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let observed = sample_sum(
        &m,
        "breakwater_observed_total",
        &["policy=\"bulkhead\"", "action=\"reject\""],
    );
    assert_eq!(observed, 2.0, "{m}");
    let upstreams = get(&c, &proxy.admin("/upstreams")).await.body;
    let all: serde_json::Value = serde_json::from_str(&upstreams).unwrap();
    let dest = all
        .as_array()
        .and_then(|a| a.iter().find(|d| d["destination"] == host.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(dest["modes"]["bulkhead"], "observe", "{upstreams}");
    assert_eq!(dest["observed"]["bulkhead"], 2, "{upstreams}");
    assert_eq!(dest["bulkhead"]["limit"], 1, "{upstreams}");

    dir.write(
        "policy.yaml",
        "defaults:\n  max-concurrent: 1\n  bulkhead-mode: enforce\n",
    );
    wait_reloads(&c, &proxy, "applied", 1.0).await;
    let config: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/config")).await.body).unwrap();
    assert_eq!(
        config["policy_file"]["last_reload"]["outbound"]["kept"], 1,
        "a mode flip keeps the destination's state: {config}"
    );
    assert_eq!(
        burst(&c, &proxy, &host, "/?ms=400", 3).await,
        [200, 503, 503]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_breaker_counts_what_it_would_refuse() {
    let failing = spawn_upstream(|_| async { text_response(500, "broken\n") }).await;
    let dir = TestDir::new("policy-observe-breaker");
    let file = dir.write(
        "policy.yaml",
        "defaults:\n  retries: 0\n  breaker-consecutive-failures: 2\n  breaker-mode: observe\n",
    );
    let proxy = with_policy(&file).await;
    let c = client();
    let host = failing.addr.to_string();
    for _ in 0..6 {
        let r = get_via(&c, &proxy, &host, "/").await;
        assert_eq!(r.status, 500, "the upstream's own answer");
    }
    assert_eq!(failing.hits(), 6, "every request reached the upstream");
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let observed = sample_sum(&m, "breakwater_observed_total", &["policy=\"breaker\""]);
    assert_eq!(
        observed, 4.0,
        "refused after the 2nd failure opened it:\n{m}"
    );
    let upstreams = get(&c, &proxy.admin("/upstreams")).await.body;
    assert!(
        upstreams.contains("\"breaker\": \"observe\""),
        "{upstreams}"
    );
    assert!(
        upstreams.contains("\"open\""),
        "the real state is open: {upstreams}"
    );

    dir.write(
        "policy.yaml",
        "defaults:\n  retries: 0\n  breaker-consecutive-failures: 2\n  breaker-mode: enforce\n",
    );
    wait_reloads(&c, &proxy, "applied", 1.0).await;
    let r = get_via(&c, &proxy, &host, "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.reason(), Some("circuit-open"));
    assert!(r.headers.contains_key(http::header::RETRY_AFTER));
    assert_eq!(
        failing.hits(),
        6,
        "the learned open circuit is enforced at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_retry_budget_retries_and_counts() {
    let failing = spawn_upstream(|_| async { text_response(503, "busy\n") }).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.retry.retries = 2;
        c.retry.budget_percent = 0.0;
        c.retry.budget_min_per_sec = 0;
        c.retry.backoff = Duration::from_millis(1);
        c.retry.backoff_max = Duration::from_millis(2);
        c.modes.retry_budget = breakwater::config::Mode::Observe;
    })
    .await;
    let c = client();
    let r = get_via(&c, &proxy, &failing.addr.to_string(), "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        failing.hits(),
        3,
        "the empty budget did not stop the retries"
    );
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let observed = sample_sum(
        &m,
        "breakwater_observed_total",
        &["policy=\"retry-budget\"", "action=\"skip-retry\""],
    );
    assert_eq!(observed, 2.0, "{m}");
}

async fn put(c: &HttpClient, url: &str) -> Answer {
    send(c, Request::put(url).body(full("")).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_overrides_force_a_circuit_and_expire() {
    let upstream = sleepy().await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();
    let host = upstream.addr.to_string();
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 200);

    let set = put(
        &c,
        &proxy.admin(&format!("/override?destination={host}&circuit=open&for=1s")),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let r = get_via(&c, &proxy, &host, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.reason(), Some("circuit-open"));
    assert_eq!(
        r.headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let config = get(&c, &proxy.admin("/config")).await.body;
    assert!(config.contains("circuit=open"), "{config}");
    let upstreams = get(&c, &proxy.admin("/upstreams")).await.body;
    assert!(upstreams.contains("circuit=open"), "{upstreams}");
    let hits = upstream.hits();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 200, "expired");
    assert_eq!(upstream.hits(), hits + 1);

    // Bad input is refused with a reason, and DELETE ends one early.
    for bad in [
        "/override?circuit=open&for=1m",
        "/override?destination=a:1&circuit=ajar&for=1m",
        "/override?destination=a:1&circuit=open",
        "/override?destination=a:1&circuit=open&for=48h",
        "/override?destinaton=a:1&circuit=closed&for=1m",
    ] {
        let r = put(&c, &proxy.admin(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    put(
        &c,
        &proxy.admin(&format!(
            "/override?destination={host}&circuit=open&for=10m"
        )),
    )
    .await;
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 503);
    let listed: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/override")).await.body).unwrap();
    let id = listed[0]["id"].as_u64().unwrap();
    let del = send(
        &c,
        Request::delete(proxy.admin(&format!("/override?id={id}")))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_circuit_closed_lets_requests_reach_a_tripped_upstream() {
    let failing = spawn_upstream(|_| async { text_response(500, "broken\n") }).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.retry.retries = 0;
        c.breaker.consecutive_failures = 2;
        c.breaker.open_duration = Duration::from_secs(30);
    })
    .await;
    let c = client();
    let host = failing.addr.to_string();
    for _ in 0..2 {
        assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 500);
    }
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 503);
    let set = put(
        &c,
        &proxy.admin(&format!(
            "/override?destination={host}&circuit=closed&for=1m"
        )),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(get_via(&c, &proxy, &host, "/").await.status, 500);
    assert_eq!(failing.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_at_start_up_names_the_file_line_and_key() {
    let dir = TestDir::new("policy-startup");
    let file = dir.write(
        "policy.yaml",
        "defaults:\n  timeout: 2s\nroutes:\n  - host: api\n    retries: many\n",
    );
    let out = std::process::Command::new(binary())
        .args(["run", "--check", "--policy-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy.yaml") && stderr.contains("line 5") && stderr.contains("retries"),
        "{stderr}"
    );
    // In process, start-up refuses it the same way.
    let mut config = breakwater::Config::loopback();
    config.policy_file = Some(file.clone());
    let e = breakwater::Proxy::bind(config)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("line 5")), "{e:?}");
    // A missing file too.
    let mut config = breakwater::Config::loopback();
    config.policy_file = Some(dir.0.join("absent.yaml"));
    let e = breakwater::Proxy::bind(config)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("absent.yaml")),
        "{e:?}"
    );

    // A valid file passes --check, and the file's routes are in the output.
    let ok = dir.write(
        "ok.yaml",
        "routes:\n  - name: slow\n    host: api\n    path-prefix: /slow\n    timeout: 30s\n",
    );
    let out = std::process::Command::new(binary())
        .args(["run", "--check", "--policy-file"])
        .arg(&ok)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"slow\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_inbound_limit_lets_the_app_take_everything() {
    let app = sleepy().await;
    let proxy = Arc::new(
        spawn_proxy(app.addr, |c| {
            c.inbound_bulkhead = Some(breakwater::config::BulkheadPolicy {
                max_concurrent: breakwater::config::ConcurrencyLimit::Fixed(1),
                min: 1,
                max: 1,
                max_queue: 0,
                queue_timeout: Duration::from_secs(1),
            });
            c.modes.bulkhead = breakwater::config::Mode::Observe;
        })
        .await,
    );
    let c = client();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (c, proxy) = (c.clone(), proxy.clone());
            tokio::spawn(async move { get(&c, &proxy.inbound("/?ms=400")).await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(app.hits(), 3);
    let m = get(&c, &proxy.admin("/metrics")).await.body;
    let observed = sample_sum(
        &m,
        "breakwater_observed_total",
        &["direction=\"inbound\"", "policy=\"bulkhead\""],
    );
    assert_eq!(observed, 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_route_is_refused_when_outbound_tls_did_not_load() {
    let dir = TestDir::new("policy-tls-unavailable");
    let file = dir.write("policy.yaml", "defaults:\n  timeout: 2s\n");
    let missing_ca = dir.0.join("no-such-ca.pem");
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, move |c| {
        c.policy_file = Some(file);
        c.outbound_tls.ca = Some(missing_ca);
    })
    .await;
    let c = client();
    dir.write(
        "policy.yaml",
        "routes:\n  - host: api.example\n    port: 443\n    tls: true\n",
    );
    wait_reloads(&c, &proxy, "rejected", 1.0).await;
    let config: serde_json::Value =
        serde_json::from_str(&get(&c, &proxy.admin("/config")).await.body).unwrap();
    let rejected = config["policy_file"]["rejected"]
        .as_str()
        .unwrap_or_default();
    assert!(rejected.contains("tls=true"), "{rejected}");
}
