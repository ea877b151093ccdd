//! Retries: what is retried, what never is, how long it waits, and the budget
//! that keeps retries from multiplying an outage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// An upstream whose n-th request (from 1) gets `script(n)`, recording the
/// `x-breakwater-attempt` header and the body of every request.
struct Scripted {
    upstream: Upstream,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn scripted(
    script: impl Fn(usize) -> (u16, Vec<(&'static str, &'static str)>, Duration) + Send + Sync + 'static,
) -> Scripted {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let s = seen.clone();
    let upstream = spawn_upstream(move |req: Request<Incoming>| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let (status, headers, delay) = script(n);
        let seen = s.clone();
        async move {
            let attempt = req
                .headers()
                .get("x-breakwater-attempt")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            seen.lock()
                .expect("lock")
                .push((attempt, String::from_utf8_lossy(&body).into_owned()));
            tokio::time::sleep(delay).await;
            let mut resp = text_response(status, &format!("answer {n}\n"));
            for (k, v) in headers {
                resp.headers_mut()
                    .insert(k, v.parse().expect("header value"));
            }
            resp
        }
    })
    .await;
    Scripted { upstream, seen }
}

/// 503 for the first `failures` requests, then 200.
fn fail_first(
    failures: usize,
) -> impl Fn(usize) -> (u16, Vec<(&'static str, &'static str)>, Duration) {
    move |n| {
        (
            if n <= failures { 503 } else { 200 },
            vec![],
            Duration::ZERO,
        )
    }
}

async fn post(proxy: &TestProxy, host: &str, body: &str, key: Option<&str>) -> Answer {
    let mut req = Request::post(format!("http://{}/orders", proxy.outbound())).header("host", host);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    send(
        &client(),
        req.body(full(body.to_string())).expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_is_200_after_three_attempts() {
    let s = scripted(fail_first(2)).await;
    let proxy = spawn_proxy(s.upstream.addr, |_| {}).await;
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.body, "answer 3\n");
    assert_eq!(s.upstream.hits(), 3);
    let attempts: Vec<String> = s
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_zero_returns_the_first_503() {
    let s = scripted(fail_first(2)).await;
    let proxy = spawn_proxy(s.upstream.addr, |c| c.retry.retries = 0).await;
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 503);
    assert_eq!(
        seen.reason(),
        None,
        "the upstream's own 503 passes unchanged"
    );
    assert_eq!(s.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_without_an_idempotency_key() {
    let s = scripted(fail_first(1)).await;
    let proxy = spawn_proxy(s.upstream.addr, |_| {}).await;
    let seen = post(&proxy, &s.upstream.addr.to_string(), "pay 10", None).await;
    assert_eq!(seen.status, 503);
    assert_eq!(s.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_an_idempotency_key_is_retried_with_its_body_intact() {
    let s = scripted(fail_first(2)).await;
    let proxy = spawn_proxy(s.upstream.addr, |_| {}).await;
    let body = "pay 10 to alice ".repeat(1000); // 16 KB, several frames
    let seen = post(&proxy, &s.upstream.addr.to_string(), &body, Some("order-7")).await;
    assert_eq!(seen.status, 200);
    let bodies: Vec<String> = s
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies.iter().all(|b| *b == body),
        "every attempt carries the whole body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_limit_is_not_retried() {
    let s = scripted(fail_first(1)).await;
    let proxy = spawn_proxy(s.upstream.addr, |c| c.retry.body_limit = 1024).await;
    let body = "x".repeat(4096);
    let seen = post(&proxy, &s.upstream.addr.to_string(), &body, Some("k")).await;
    assert_eq!(seen.status, 503);
    assert_eq!(s.upstream.hits(), 1);
    let m = get(&client(), &proxy.admin("/metrics")).await;
    let line = m
        .body
        .lines()
        .find(|l| {
            l.starts_with("breakwater_retries_skipped_total")
                && l.contains("body-too-large")
                && l.contains("outbound")
        })
        .unwrap_or("");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_then_success_is_200() {
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let upstream = spawn_raw(move |mut stream| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = read_head(&mut stream).await;
            if n == 0 {
                reset(stream);
            } else {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                let _ = read_head(&mut stream).await;
            }
        }
    })
    .await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let seen = get_via(&client(), &proxy, &upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_5xx_retries_a_500_and_the_default_does_not() {
    let s = scripted(|n| (if n == 1 { 500 } else { 200 }, vec![], Duration::ZERO)).await;
    let default = spawn_proxy(s.upstream.addr, |_| {}).await;
    let seen = get_via(&client(), &default, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 500);
    let s = scripted(|n| (if n == 1 { 500 } else { 200 }, vec![], Duration::ZERO)).await;
    let on_5xx = spawn_proxy(s.upstream.addr, |c| {
        c.retry.retry_on = breakwater::policy::retry::RetryOn::parse("5xx").expect("conditions")
    })
    .await;
    let seen = get_via(&client(), &on_5xx, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 200);
    assert_eq!(s.upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let s = scripted(|n| {
        if n == 1 {
            (503, vec![("retry-after", "1")], Duration::ZERO)
        } else {
            (200, vec![], Duration::ZERO)
        }
    })
    .await;
    let proxy = spawn_proxy(s.upstream.addr, |_| {}).await;
    let started = Instant::now();
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    let took = started.elapsed();
    assert_eq!(seen.status, 200);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_the_deadline_returns_the_response_at_once() {
    let s = scripted(|_| (503, vec![("retry-after", "30")], Duration::ZERO)).await;
    let proxy = spawn_proxy(s.upstream.addr, |c| c.timeout = Duration::from_secs(2)).await;
    let started = Instant::now();
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_lets_the_second_attempt_answer() {
    let s = scripted(|n| {
        (
            200,
            vec![],
            if n == 1 {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            },
        )
    })
    .await;
    let proxy = spawn_proxy(s.upstream.addr, |c| {
        c.retry.per_try_timeout = Some(Duration::from_millis(300))
    })
    .await;
    let started = Instant::now();
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.body, "answer 2\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_ends_all_attempts_with_504() {
    let s = scripted(|_| (200, vec![], Duration::from_secs(5))).await;
    let proxy = spawn_proxy(s.upstream.addr, |c| {
        c.timeout = Duration::from_millis(800);
        c.retry.per_try_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let started = Instant::now();
    let seen = get_via(&client(), &proxy, &s.upstream.addr.to_string(), "/").await;
    let took = started.elapsed();
    assert_eq!(seen.status, 504);
    assert_eq!(seen.reason(), Some("timeout"));
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(s.upstream.hits() >= 2, "per-try timeouts were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_overrides_retries_for_its_destination_only() {
    let a = scripted(fail_first(1)).await;
    let b = scripted(fail_first(1)).await;
    let spec = format!("127.0.0.1:{},retries=0", a.upstream.addr.port());
    let proxy = spawn_proxy(a.upstream.addr, |c| c.routes = vec![route(&spec)]).await;
    let c = client();
    assert_eq!(
        get_via(&c, &proxy, &a.upstream.addr.to_string(), "/")
            .await
            .status,
        503
    );
    assert_eq!(
        get_via(&c, &proxy, &b.upstream.addr.to_string(), "/")
            .await
            .status,
        200
    );
    assert_eq!((a.upstream.hits(), b.upstream.hits()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_during_a_full_outage() {
    let s = scripted(|_| (503, vec![], Duration::ZERO)).await;
    let proxy = spawn_proxy(s.upstream.addr, |c| {
        c.retry.retries = 3;
        c.retry.backoff = Duration::ZERO;
        c.retry.backoff_max = Duration::ZERO;
        c.retry.budget_min_per_sec = 0;
        // The budget alone: an open circuit would stop the retries first.
        c.breaker.consecutive_failures = 0;
        c.breaker.failure_rate = 0;
    })
    .await;
    let c = client();
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(
            get_via(&c, &proxy, &s.upstream.addr.to_string(), "/")
                .await
                .status,
            503
        );
    }
    let amplification = s.upstream.hits() as f64 / requests as f64;
    assert!(
        amplification <= 1.25,
        "upstream saw {amplification:.2}x the requests"
    );
    assert!(
        amplification > 1.1,
        "the budget allows some retries: {amplification:.2}"
    );
    let m = get(&c, &proxy.admin("/metrics")).await;
    assert!(
        m.body.contains(r#"reason="budget-exhausted""#),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_retries_connect_failures_while_the_app_restarts() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = spawn_proxy(port, |c| {
        c.retry.retries = 10;
        c.retry.backoff = Duration::from_millis(50);
        c.retry.backoff_max = Duration::from_millis(100);
    })
    .await;
    // The app comes up 150 ms after the request arrives.
    let app = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let listener = tokio::net::TcpListener::bind(port)
            .await
            .expect("rebind the app port");
        let (mut stream, _) = listener.accept().await.expect("accept");
        let _ = read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nup\n")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let req = Request::post(proxy.inbound("/"))
        .body(full("not idempotent, never sent"))
        .expect("request");
    let seen = send(&client(), req).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.body, "up\n");
    let _ = app.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_does_not_retry_the_apps_503() {
    let s = scripted(fail_first(1)).await;
    let proxy = spawn_proxy(s.upstream.addr, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 503);
    assert_eq!(s.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_travel_upstream_and_are_honoured_inbound() {
    let upstream = spawn_echo().await;
    let proxy = spawn_proxy(upstream.addr, |c| c.timeout = Duration::from_secs(2)).await;
    let seen = get_via(&client(), &proxy, &upstream.addr.to_string(), "/").await;
    let left: u64 = seen
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-breakwater-deadline-ms: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1500..=2000).contains(&left), "announced {left} ms of 2000");

    // A caller that will wait only 300 ms: the slow app is cut off then.
    let slow = scripted(|_| (200, vec![], Duration::from_secs(2))).await;
    let proxy = spawn_proxy(slow.upstream.addr, |_| {}).await;
    let req = Request::get(proxy.inbound("/"))
        .header("x-breakwater-deadline-ms", "300")
        .body(full(""))
        .expect("request");
    let started = Instant::now();
    let seen = send(&client(), req).await;
    assert_eq!(seen.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_in_a_trailers_only_response_is_retried() {
    let s = scripted(|n| {
        let status = if n == 1 { "14" } else { "0" };
        (
            200,
            vec![
                ("content-type", "application/grpc"),
                ("grpc-status", status),
            ],
            Duration::ZERO,
        )
    })
    .await;
    let proxy = spawn_proxy(s.upstream.addr, |c| {
        c.retry.retry_on =
            breakwater::policy::retry::RetryOn::parse("unavailable").expect("conditions")
    })
    .await;
    let req = Request::post(s.upstream.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("idempotency-key", "call-1")
        .body(full("\0\0\0\0\0"))
        .expect("request");
    let seen = h2_send_to(proxy.outbound(), req).await;
    assert_eq!(seen.headers["grpc-status"], "0");
    assert_eq!(s.upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_in_trailers_right_after_the_headers_is_retried() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let upstream = spawn_upstream(move |_req| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            // Headers without a status, then trailers: what gRPC servers send for
            // an error raised after the call started.
            let mut trailers = http::HeaderMap::new();
            let status = if n == 1 { "14" } else { "0" };
            trailers.insert("grpc-status", status.parse().expect("value"));
            let frames = vec![Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::trailers(trailers),
            )];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames))
                .map_err(|e| match e {})
                .boxed();
            let mut resp = http::Response::new(body);
            resp.headers_mut()
                .insert("content-type", "application/grpc".parse().expect("value"));
            resp
        }
    })
    .await;
    let proxy = spawn_proxy(upstream.addr, |c| {
        c.retry.retry_on =
            breakwater::policy::retry::RetryOn::parse("unavailable").expect("conditions")
    })
    .await;
    let req = Request::post(upstream.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("idempotency-key", "call-2")
        .body(full("\0\0\0\0\0"))
        .expect("request");
    let stream = tokio::net::TcpStream::connect(proxy.outbound())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("response");
    let collected = resp.into_body().collect().await.expect("body");
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    assert_eq!(
        status.as_ref().map(|s| s.as_bytes()),
        Some(&b"0"[..]),
        "the retry's trailers reach the client"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}
