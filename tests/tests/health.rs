//! App health and the pod's lifecycle: readiness that follows the app, the
//! inbound gate, the drain in Kubernetes order, and the admin calls for Jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;

use crate::support::*;

/// An app whose `/healthz` answers 200 while `healthy` is set, else 503 "db down";
/// every other path answers 200 after `delay` and is counted in `work`.
struct FlippingApp {
    upstream: Upstream,
    healthy: Arc<AtomicBool>,
    work: Arc<AtomicUsize>,
}

async fn flipping_app(delay: Duration) -> FlippingApp {
    let healthy = Arc::new(AtomicBool::new(true));
    let work = Arc::new(AtomicUsize::new(0));
    let (h, w) = (healthy.clone(), work.clone());
    let upstream = spawn_upstream(move |req: Request<Incoming>| {
        let (h, w) = (h.clone(), w.clone());
        async move {
            if req.uri().path() == "/healthz" {
                return if h.load(Ordering::SeqCst) {
                    text_response(200, "ok\n")
                } else {
                    text_response(503, "db down\n")
                };
            }
            w.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            text_response(200, "served\n")
        }
    })
    .await;
    FlippingApp {
        upstream,
        healthy,
        work,
    }
}

fn fast_probes(c: &mut breakwater::Config) {
    c.app_health.path = Some("/healthz".into());
    c.app_health.interval = Duration::from_millis(100);
    c.app_health.timeout = Duration::from_millis(500);
    c.app_health.healthy_threshold = 1;
    c.app_health.unhealthy_threshold = 2;
}

/// Polls `url` until it answers `status`, for at most `within`; returns the
/// time it took.
async fn until_status(url: &str, status: u16, within: Duration) -> Duration {
    let c = client();
    let started = Instant::now();
    loop {
        let seen = get(&c, url).await;
        if seen.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{url} still answers {} after {within:?}: {}",
            seen.status,
            seen.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_app_and_inbound_is_gated_while_it_is_unhealthy() {
    let app = flipping_app(Duration::ZERO).await;
    let proxy = spawn_proxy(app.upstream.addr, fast_probes).await;
    let c = client();
    // interval 100 ms × threshold, with margin for a loaded machine.
    let bound = Duration::from_secs(2);
    until_status(&proxy.admin("/ready"), 200, bound).await;
    assert_eq!(get(&c, &proxy.inbound("/work")).await.status, 200);

    app.healthy.store(false, Ordering::SeqCst);
    until_status(&proxy.admin("/ready"), 503, bound).await;
    let ready = get(&c, &proxy.admin("/ready")).await;
    assert!(ready.body.contains("app unhealthy"), "{}", ready.body);
    let verbose = get(&c, &proxy.admin("/ready?verbose")).await;
    let json: serde_json::Value = serde_json::from_str(&verbose.body).expect("JSON");
    assert_eq!(json["app"]["state"], "unhealthy");
    assert_eq!(json["app"]["last_probe"]["status"], 503);
    assert_eq!(json["ready"], false);

    let served_before = app.work.load(Ordering::SeqCst);
    for _ in 0..5 {
        let refused = get(&c, &proxy.inbound("/work")).await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.reason(), Some("app-not-ready"));
        // The probe interval (100 ms), in the header's whole seconds.
        assert_eq!(refused.headers["retry-after"], "1");
    }
    assert_eq!(
        app.work.load(Ordering::SeqCst),
        served_before,
        "the unhealthy app saw no requests"
    );
    let upstream = spawn_echo().await;
    let outbound = get_via(&c, &proxy, &upstream.addr.to_string(), "/").await;
    assert_eq!(
        outbound.status, 200,
        "outbound keeps working: the app may need its dependencies"
    );
    let m = get(&c, &proxy.admin("/metrics")).await;
    assert!(m.body.contains("breakwater_app_healthy 0"), "{}", m.body);

    app.healthy.store(true, Ordering::SeqCst);
    until_status(&proxy.admin("/ready"), 200, bound).await;
    assert_eq!(get(&c, &proxy.inbound("/work")).await.status, 200);
    let m = get(&c, &proxy.admin("/metrics")).await;
    assert!(m.body.contains("breakwater_app_healthy 1"), "{}", m.body);
    assert!(
        m.body
            .contains(r#"breakwater_app_health_transitions_total{to="unhealthy"} 1"#),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_health_path_a_tcp_connect_is_the_probe() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.app_health.interval = Duration::from_millis(100);
    })
    .await;
    until_status(&proxy.admin("/ready"), 200, Duration::from_secs(2)).await;
    let probe = get(&client(), &proxy.admin("/app-health")).await;
    assert_eq!(probe.status, 200);
    assert!(probe.body.contains("TCP connect"), "{}", probe.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_health_on_the_admin_endpoint_proxies_one_probe() {
    let app = flipping_app(Duration::ZERO).await;
    let proxy = spawn_proxy(app.upstream.addr, fast_probes).await;
    let c = client();
    let up = get(&c, &proxy.admin("/app-health")).await;
    assert_eq!((up.status, up.body.as_str()), (200, "ok\n"));
    app.healthy.store(false, Ordering::SeqCst);
    let down = get(&c, &proxy.admin("/app-health")).await;
    assert_eq!((down.status, down.body.as_str()), (503, "db down\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_delay_keeps_accepting_then_in_flight_requests_finish() {
    let app = flipping_app(Duration::from_millis(1500)).await;
    let proxy = spawn_binary(
        app.upstream.addr,
        &[
            "--drain-delay=600ms",
            "--drain-timeout=10s",
            "--app-health-interval=100ms",
        ],
    )
    .await;
    let inbound = proxy.addrs.inbound;
    let c = client();
    let slow = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &format!("http://{inbound}/slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sigterm_at = Instant::now();
    sigterm(&proxy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = get(&c, &format!("http://{}/ready", proxy.addrs.admin)).await;
    assert_eq!(ready.status, 503, "/ready turns 503 at once");
    // Within the delay: new connections are still accepted and served.
    assert!(sigterm_at.elapsed() < Duration::from_millis(400));
    assert!(
        tokio::net::TcpStream::connect(inbound).await.is_ok(),
        "accepting during the delay"
    );
    // After the delay: refused.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        tokio::net::TcpStream::connect(inbound).await.is_err(),
        "new connections after the drain delay are refused"
    );
    let finished = slow.await.expect("task");
    assert_eq!((finished.status, finished.body.as_str()), (200, "served\n"));
    assert_exits_zero(proxy, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_keeps_serving_the_app_during_the_drain() {
    let app = spawn_echo().await;
    let dependency = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.drain_timeout = Duration::from_secs(5)).await;
    let addrs = proxy.addrs;
    let app_client = client();
    // The app holds a connection to its proxy, as a pooled client does.
    let first = get_via(&app_client, &proxy, &dependency.addr.to_string(), "/before").await;
    assert_eq!(first.status, 200);
    proxy.shutdown.request();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addrs.inbound).await.is_err(),
        "inbound has stopped"
    );
    // The app's shutdown calls still go out.
    for i in 0..3 {
        let req = Request::get(format!("http://{}/during-{i}", addrs.outbound))
            .header("host", dependency.addr.to_string())
            .body(full(""))
            .expect("request");
        assert_eq!(send(&app_client, req).await.status, 200);
    }
    // The app exits: its connections close, and the drain completes.
    drop(app_client);
    let report = tokio::time::timeout(Duration::from_secs(3), proxy.stop())
        .await
        .expect("the drain ends once the app's connections are gone");
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_loopback_drains_and_exits_zero() {
    let app = spawn_echo().await;
    let proxy = spawn_binary(app.addr, &["--drain-delay=100ms"]).await;
    let c = client();
    let req = Request::post(format!("http://{}/shutdown", proxy.addrs.admin))
        .body(full(""))
        .expect("request");
    let answer = send(&c, req).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_exits_zero(proxy, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_calls_from_another_host_get_403() {
    if skip_unless(
        TestNetns::available(),
        "root and iproute2 (network namespaces)",
    ) {
        return;
    }
    let ns = TestNetns::create(7).expect("network namespace");
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.admin_addr = std::net::SocketAddr::from((ns.host_ip, 0));
    })
    .await;
    let admin = proxy.addrs.admin;
    let call = |method: &str, path: &str| {
        ns.exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "--max-time",
            "5",
            &format!("http://{admin}{path}"),
        ])
        .expect("curl in the namespace")
    };
    assert_eq!(call("POST", "/shutdown"), "403");
    assert_eq!(call("PUT", "/log-level"), "403");
    assert_eq!(call("GET", "/live"), "200", "reads are open to the kubelet");
    let ready = get(&client(), &format!("http://{admin}/ready")).await;
    assert_ne!(
        ready.body, "not ready: draining\n",
        "the refused shutdown did nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_at_run_time_from_loopback() {
    let app = spawn_echo().await;
    let proxy = spawn_binary(app.addr, &[]).await;
    let c = client();
    let put = |body: &'static str| {
        Request::put(format!("http://{}/log-level", proxy.addrs.admin))
            .body(full(body))
            .expect("request")
    };
    let ok = send(&c, put("debug,hyper=info")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let bad = send(&c, put("loud=[[")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A word that is no level would be a target at every level: nothing logged.
    let bad = send(&c, put("verbose")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("is not a log level"), "{}", bad.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let app = flipping_app(Duration::from_secs(30)).await;
    let proxy = spawn_binary(
        app.upstream.addr,
        &["--drain-delay=0s", "--drain-timeout=60s"],
    )
    .await;
    let inbound = proxy.addrs.inbound;
    let stuck = tokio::spawn(async move {
        client()
            .request(
                Request::get(format!("http://{inbound}/stuck"))
                    .body(full(""))
                    .expect("request"),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&proxy);
    let started = Instant::now();
    assert_exits_zero(proxy, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_loses_no_request_it_sent_before_the_drain_ended() {
    let app = spawn_echo().await;
    let delay = Duration::from_millis(500);
    let proxy = spawn_proxy(app.addr, |c| c.drain_delay = delay).await;
    let url = proxy.inbound("/steady");
    let stop_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, c) = (url.clone(), client());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let sent = Instant::now();
                let req = Request::get(&url).body(full("")).expect("request");
                let ok = matches!(c.request(req).await, Ok(r) if r.status() == 200);
                results.push((sent, ok));
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    *stop_at.lock().expect("lock") = Some(Instant::now());
    let stopping = tokio::spawn(proxy.stop());
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.expect("worker"));
    }
    let drain_began = stop_at.lock().expect("lock").expect("stop time");
    // The listener closes when the delay ends; what was sent before then must
    // have been answered. `sent` is read before the client has a connection:
    // under load, one stamped just before the close may only connect after it
    // (a refusal the caller would see as such, not a lost request), so the
    // last 100 ms of the delay are not judged.
    let listener_closed = drain_began + delay;
    let judged_until = listener_closed - Duration::from_millis(100);
    let before: Vec<_> = results
        .iter()
        .filter(|(sent, _)| *sent < judged_until)
        .collect();
    let during_delay = before
        .iter()
        .filter(|(sent, _)| *sent >= drain_began)
        .count();
    assert!(
        during_delay > 10,
        "traffic kept flowing during the delay: {during_delay}"
    );
    let lost: Vec<_> = before
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(sent, _)| sent.saturating_duration_since(drain_began))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} requests sent before the drain ended failed (sent this long after it began: {lost:?})",
        lost.len(),
        before.len()
    );
    let _ = stopping.await;
}

fn sigterm(proxy: &BinaryProxy) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn assert_exits_zero(mut proxy: BinaryProxy, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proxy.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "breakwater did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
