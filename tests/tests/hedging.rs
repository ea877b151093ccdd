//! Hedged requests (`hedge-after`), with the real binary between a real client
//! and real upstreams: a slow first attempt is overtaken by its hedge and
//! cancelled, only idempotent requests without a body are hedged, `pNN`
//! follows the destination's latency, and the budget caps the extra load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Upstream, client, full, get, read_head, sample_sum, send, spawn_binary, spawn_raw,
    spawn_upstream, text_response,
};

/// A GET to `upstream` through the outbound listener.
fn via(
    proxy: &crate::support::BinaryProxy,
    upstream: &Upstream,
    method: &str,
) -> Request<crate::support::TestBody> {
    Request::builder()
        .method(method)
        .uri(format!("http://{}/", proxy.addrs.outbound))
        .header(http::header::HOST, upstream.addr.to_string())
        .body(full(""))
        .expect("request")
}

async fn hedges(proxy: &crate::support::BinaryProxy, outcome: &str) -> f64 {
    let text = get(&client(), &format!("http://{}/metrics", proxy.addrs.admin))
        .await
        .body;
    sample_sum(
        &text,
        "breakwater_hedges_total",
        &format!("outcome=\"{outcome}\""),
    )
}

#[tokio::test]
async fn a_slow_first_attempt_is_overtaken_by_its_hedge_and_cancelled() {
    // The first request's connection gets no answer for 3 s, and the test
    // learns whether breakwater closed it meanwhile; the rest are answered at once.
    let requests = Arc::new(AtomicUsize::new(0));
    let (cancelled_tx, mut cancelled) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let hedge_seen = Arc::new(AtomicUsize::new(0));
    let (r, h) = (requests.clone(), hedge_seen.clone());
    let upstream = spawn_raw(move |mut stream| {
        let (r, h, cancelled_tx) = (r.clone(), h.clone(), cancelled_tx.clone());
        async move {
            loop {
                let head = read_head(&mut stream).await;
                if head.is_empty() {
                    return;
                }
                if head.to_ascii_lowercase().contains("x-breakwater-hedge: 1") {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mut byte = [0u8; 1];
                    let closed = matches!(
                        tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte)).await,
                        Ok(Ok(0)) | Ok(Err(_))
                    );
                    let _ = cancelled_tx.send(closed);
                    return;
                }
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhedged";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let app = spawn_upstream(|_req| async { text_response(200, "app") }).await;
    let proxy = spawn_binary(
        app.addr,
        &[&format!("--route={},hedge-after=100ms", upstream.addr)],
    )
    .await;
    let started = Instant::now();
    let answer = send(&client(), via(&proxy, &upstream, "GET")).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "hedged");
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(1500),
        "answered by the hedge, sent after 100 ms: {took:?}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the first and its hedge"
    );
    assert_eq!(hedge_seen.load(Ordering::SeqCst), 1, "the hedge says so");
    let closed = tokio::time::timeout(Duration::from_secs(5), cancelled.recv())
        .await
        .expect("the slow connection ends")
        .expect("a verdict");
    assert!(
        closed,
        "the loser's connection was closed, not left waiting"
    );
    assert_eq!(hedges(&proxy, "won").await, 1.0);
    assert_eq!(hedges(&proxy, "lost").await, 0.0);
}

#[tokio::test]
async fn only_idempotent_requests_without_a_body_are_hedged() {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        text_response(200, "slow")
    })
    .await;
    let app = spawn_upstream(|_req| async { text_response(200, "app") }).await;
    let proxy = spawn_binary(
        app.addr,
        &[&format!("--route={},hedge-after=30ms", upstream.addr)],
    )
    .await;
    let c = client();
    assert_eq!(send(&c, via(&proxy, &upstream, "POST")).await.status, 200);
    assert_eq!(upstream.hits(), 1, "a POST is never sent twice");

    let with_body = Request::put(format!("http://{}/", proxy.addrs.outbound))
        .header(http::header::HOST, upstream.addr.to_string())
        .body(full("payload"))
        .expect("request");
    assert_eq!(send(&c, with_body).await.status, 200);
    assert_eq!(upstream.hits(), 2, "a PUT with a body is not hedged either");

    assert_eq!(send(&c, via(&proxy, &upstream, "GET")).await.status, 200);
    assert_eq!(upstream.hits(), 4, "a GET is: its hedge went too");
    assert_eq!(
        hedges(&proxy, "won").await + hedges(&proxy, "lost").await,
        1.0
    );
}

#[tokio::test]
async fn a_p95_hedge_follows_the_destinations_latency() {
    // Fast while the window fills, then one slow answer: hedged at the p95 of
    // the fast ones, the request takes about that, not the slow time.
    let slow_next = Arc::new(AtomicUsize::new(0));
    let s = slow_next.clone();
    let upstream = spawn_upstream(move |_req| {
        let slow = s.swap(0, Ordering::SeqCst) == 1;
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            text_response(200, "ok")
        }
    })
    .await;
    let app = spawn_upstream(|_req| async { text_response(200, "app") }).await;
    let proxy = spawn_binary(
        app.addr,
        &[&format!("--route={},hedge-after=p95", upstream.addr)],
    )
    .await;
    let c = client();
    slow_next.store(1, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(send(&c, via(&proxy, &upstream, "GET")).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "no hedge before the window has 50 answers"
    );
    for _ in 0..60 {
        assert_eq!(send(&c, via(&proxy, &upstream, "GET")).await.status, 200);
    }
    let snapshot = get(&c, &format!("http://{}/upstreams", proxy.addrs.admin)).await;
    let json: serde_json::Value = serde_json::from_str(&snapshot.body).expect("JSON");
    let delay_ms = json
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["hedge"]["delay_ms"].as_f64())
        .expect("/upstreams shows the hedge delay");
    assert!(delay_ms < 200.0, "p95 of fast answers: {delay_ms} ms");

    slow_next.store(1, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(send(&c, via(&proxy, &upstream, "GET")).await.status, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "the slow answer was overtaken at the p95 ({delay_ms} ms): {took:?}"
    );
    assert!(hedges(&proxy, "won").await >= 1.0);
}

#[tokio::test]
async fn the_hedge_budget_caps_the_extra_load() {
    let upstream = spawn_upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        text_response(200, "ok")
    })
    .await;
    // A budget of 0 %: only the floor of one hedge a second (ten over the window).
    let app = spawn_upstream(|_req| async { text_response(200, "app") }).await;
    let proxy = spawn_binary(
        app.addr,
        &[&format!(
            "--route={},hedge-after=5ms,hedge-budget=0",
            upstream.addr
        )],
    )
    .await;
    let c = client();
    for _ in 0..25 {
        assert_eq!(send(&c, via(&proxy, &upstream, "GET")).await.status, 200);
    }
    let sent = hedges(&proxy, "won").await + hedges(&proxy, "lost").await;
    assert_eq!(sent, 10.0, "the floor, no more");
    assert_eq!(hedges(&proxy, "skipped").await, 15.0);
    // Every sent hedge reached the upstream (or was cancelled on the way).
    assert!(upstream.hits() <= 25 + 10, "{} hits", upstream.hits());
}
