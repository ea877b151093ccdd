//! Circuit breakers and bulkheads: failing fast, finding the way back, and
//! keeping one saturated destination from slowing the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// An upstream answering 500 while `failing` is set, else 200; `delay` first.
async fn switchable(failing: Arc<AtomicBool>, delay: Duration) -> Upstream {
    spawn_upstream(move |_| {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            if failing {
                text_response(500, "broken\n")
            } else {
                text_response(200, "fine\n")
            }
        }
    })
    .await
}

async fn call(c: &HttpClient, proxy: &TestProxy, upstream: &Upstream) -> Answer {
    get_via(c, proxy, &upstream.addr.to_string(), "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_the_circuit_and_a_probe_closes_it() {
    let failing = Arc::new(AtomicBool::new(true));
    let upstream = switchable(failing.clone(), Duration::ZERO).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.breaker.open_duration = Duration::from_millis(400);
    })
    .await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(call(&c, &proxy, &upstream).await.status, 500);
    }
    assert_eq!(upstream.hits(), 5);
    let started = Instant::now();
    for _ in 0..20 {
        let fast = call(&c, &proxy, &upstream).await;
        assert_eq!(fast.status, 503);
        assert_eq!(fast.reason(), Some("circuit-open"));
        assert!(
            fast.headers.contains_key("retry-after"),
            "tells when to come back"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "failing fast: {:?}",
        started.elapsed()
    );
    assert_eq!(
        upstream.hits(),
        5,
        "the upstream saw nothing while the circuit was open"
    );
    let m = get(&c, &proxy.admin("/metrics")).await;
    let open = format!(
        r#"breakwater_circuit_state{{destination="{0}",direction="outbound",endpoint="{0}",route="default"}} 1"#,
        upstream.addr
    );
    assert!(m.body.contains(&open), "{}", m.body);

    // The upstream recovers; after the open duration one probe goes, and closes it.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(call(&c, &proxy, &upstream).await.status, 200);
    assert_eq!(upstream.hits(), 6, "exactly one probe");
    for _ in 0..5 {
        assert_eq!(call(&c, &proxy, &upstream).await.status, 200);
    }
    let m = get(&c, &proxy.admin("/metrics")).await;
    let closed = format!(
        r#"breakwater_circuit_state{{destination="{0}",direction="outbound",endpoint="{0}",route="default"}} 0"#,
        upstream.addr
    );
    assert!(m.body.contains(&closed), "{}", m.body);
    assert!(
        m.body.contains(r#"to="half-open"} 1"#) && m.body.contains(r#"to="closed"} 1"#),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_rate_opens_the_circuit_once_the_minimum_is_met() {
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    // Three failures in every five calls, never five in a row.
    let upstream = spawn_upstream(move |_| {
        let i = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if [0, 2, 4].contains(&(i % 5)) {
                text_response(500, "x")
            } else {
                text_response(200, "ok")
            }
        }
    })
    .await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.breaker.consecutive_failures = 0;
        c.breaker.min_requests = 10;
    })
    .await;
    let c = client();
    let mut opened_after = None;
    for i in 1..=30 {
        if call(&c, &proxy, &upstream).await.reason() == Some("circuit-open") {
            opened_after = Some(i);
            break;
        }
    }
    let opened_after = opened_after.expect("60% failures open the circuit");
    assert!(
        opened_after > 10,
        "not before the minimum of 10 calls: {opened_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_opens_again_for_longer() {
    let failing = Arc::new(AtomicBool::new(true));
    let upstream = switchable(failing, Duration::ZERO).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.breaker.consecutive_failures = 2;
        c.breaker.open_duration = Duration::from_millis(300);
    })
    .await;
    let c = client();
    for _ in 0..2 {
        call(&c, &proxy, &upstream).await;
    }
    assert_eq!(
        call(&c, &proxy, &upstream).await.reason(),
        Some("circuit-open")
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        call(&c, &proxy, &upstream).await.status,
        500,
        "the probe went and failed"
    );
    assert_eq!(upstream.hits(), 3);
    // The first open lasted 300 ms; the second lasts 600 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        call(&c, &proxy, &upstream).await.reason(),
        Some("circuit-open"),
        "still open after 400 ms"
    );
    assert_eq!(upstream.hits(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        call(&c, &proxy, &upstream).await.status,
        500,
        "probed again after 600 ms"
    );
    assert_eq!(upstream.hits(), 4);
    let ups = get(&c, &proxy.admin("/upstreams")).await;
    let json: serde_json::Value = serde_json::from_str(&ups.body).expect("JSON");
    let dest = json
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["destination"] == upstream.addr.to_string())
        })
        .expect("the destination is listed");
    assert_eq!(dest["endpoints"][0]["circuit"]["state"], "open");
    assert_eq!(dest["endpoints"][0]["circuit"]["trips"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_refuses_at_once() {
    let slow = switchable(Arc::new(AtomicBool::new(false)), Duration::from_millis(600)).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.bulkhead.max_concurrent = breakwater::config::ConcurrencyLimit::Fixed(2);
    })
    .await;
    let proxy = Arc::new(proxy);
    let host = slow.addr.to_string();
    let mut calls = Vec::new();
    for _ in 0..6 {
        let (proxy, host) = (proxy.clone(), host.clone());
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let a = get_via(&client(), &proxy, &host, "/").await;
            let retry_after = a.headers.get("retry-after").cloned();
            (
                a.status,
                a.reason().map(str::to_string),
                started.elapsed(),
                retry_after,
            )
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for call in calls {
        let (status, reason, took, retry_after) = call.await.expect("task");
        match (status, reason.as_deref()) {
            (200, None) => ok += 1,
            (503, Some("bulkhead-full")) => {
                full += 1;
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
                assert!(
                    took < Duration::from_millis(300),
                    "refused at once: {took:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ok, full), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_time_out_at_the_queue_timeout() {
    let slow = switchable(
        Arc::new(AtomicBool::new(false)),
        Duration::from_millis(1000),
    )
    .await;
    let app = spawn_echo().await;
    let proxy = Arc::new(
        spawn_proxy(app.addr, |c| {
            c.bulkhead.max_concurrent = breakwater::config::ConcurrencyLimit::Fixed(1);
            c.bulkhead.max_queue = 2;
            c.bulkhead.queue_timeout = Duration::from_millis(200);
        })
        .await,
    );
    let host = slow.addr.to_string();
    let mut calls = Vec::new();
    for i in 0..4 {
        let (proxy, host) = (proxy.clone(), host.clone());
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            let started = Instant::now();
            let a = get_via(&client(), &proxy, &host, "/").await;
            let retry_after = a.headers.get("retry-after").cloned();
            (
                a.reason().map(str::to_string),
                started.elapsed(),
                retry_after,
            )
        }));
    }
    let mut reasons = Vec::new();
    for call in calls {
        let (reason, took, retry_after) = call.await.expect("task");
        if reason.is_some() {
            // Every 503 of breakwater's own says when to come back.
            assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
        }
        if reason.as_deref() == Some("queue-timeout") {
            assert!(
                took >= Duration::from_millis(180) && took < Duration::from_millis(600),
                "{took:?}"
            );
        }
        reasons.push(reason.unwrap_or_else(|| "ok".into()));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        ["bulkhead-full", "ok", "queue-timeout", "queue-timeout"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_destination_does_not_slow_another() {
    let slow = switchable(Arc::new(AtomicBool::new(false)), Duration::from_millis(800)).await;
    let fast = spawn_echo().await;
    let app = spawn_echo().await;
    let proxy = Arc::new(
        spawn_proxy(app.addr, |c| {
            c.bulkhead.max_concurrent = breakwater::config::ConcurrencyLimit::Fixed(4);
        })
        .await,
    );
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let (proxy, host) = (proxy.clone(), slow.addr.to_string());
        hogs.push(tokio::spawn(async move {
            get_via(&client(), &proxy, &host, "/").await.status
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = client();
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            get_via(&c, &proxy, &fast.addr.to_string(), "/")
                .await
                .status,
            200
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    for h in hogs {
        let _ = h.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_bulkhead_protects_the_app() {
    let app = switchable(Arc::new(AtomicBool::new(false)), Duration::from_millis(600)).await;
    let proxy = Arc::new(
        spawn_proxy(app.addr, |c| {
            c.inbound_bulkhead = Some(breakwater::config::BulkheadPolicy {
                max_concurrent: breakwater::config::ConcurrencyLimit::Fixed(2),
                min: 1,
                max: 2,
                max_queue: 0,
                queue_timeout: Duration::from_secs(1),
            });
        })
        .await,
    );
    let mut calls = Vec::new();
    for _ in 0..5 {
        let url = proxy.inbound("/");
        calls.push(tokio::spawn(async move {
            get(&client(), &url).await.reason().map(str::to_string)
        }));
    }
    let mut full = 0;
    for call in calls {
        if call.await.expect("task").as_deref() == Some("bulkhead-full") {
            full += 1;
        }
    }
    assert_eq!(full, 3);
    assert_eq!(app.hits(), 2);
}
