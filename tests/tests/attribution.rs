//! One bad client never hurts the others: a client's broken, abandoned or late
//! request body is the client's fault (a 4xx, counted in
//! `breakwater_client_errors_total`), never a failure of the upstream, so it
//! cannot open a circuit that every other caller would then meet. And an
//! answer breakwater gives before it has read a body says `Connection: close`.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// An upstream that reads the whole body and says how long it was.
async fn spawn_reader() -> Upstream {
    spawn_upstream(|req: http::Request<hyper::body::Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => text_response(200, &format!("read {}", b.to_bytes().len())),
            Err(e) => text_response(400, &format!("body error: {e}")),
        }
    })
    .await
}

async fn metrics(proxy: &TestProxy) -> String {
    get(&client(), &proxy.admin("/metrics")).await.body
}

/// The value of the one series whose line starts with `prefix`.
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn circuit_state(text: &str, dest: &str) -> Option<f64> {
    series(
        text,
        &format!(
            r#"breakwater_circuit_state{{destination="{dest}",direction="outbound",endpoint="{dest}",route="default"}}"#
        ),
    )
}

/// Sends `head` and `body` on a fresh connection to the outbound listener and
/// reads what comes back until the connection closes or `wait` passes.
async fn raw(proxy: &TestProxy, bytes: &[u8], wait: Duration) -> String {
    raw_exchange(proxy.outbound(), bytes, wait).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_bodies_are_400_and_never_open_the_circuit() {
    let upstream = spawn_reader().await;
    let dest = upstream.addr.to_string();
    let proxy = spawn_proxy(upstream.addr, |c| c.retry.retries = 0).await;
    let wait = Duration::from_secs(3);
    let broken = [
        "+3\r\nabc\r\n0\r\n\r\n",
        "0x3\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
    ];
    for i in 0..100 {
        let chunked = broken[i % broken.len()];
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: {dest}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        );
        let seen = raw(&proxy, req.as_bytes(), wait).await;
        assert!(seen.starts_with("HTTP/1.1 400"), "request {i}: {seen}");
        assert!(
            seen.contains("x-breakwater-reason: malformed-body"),
            "request {i}: {seen}"
        );
        assert!(seen.contains("connection: close"), "{seen}");
    }
    let text = metrics(&proxy).await;
    assert_eq!(circuit_state(&text, &dest), Some(0.0), "{text}");
    assert_eq!(
        series(
            &text,
            r#"breakwater_client_errors_total{direction="outbound",reason="malformed-body"}"#
        ),
        Some(100.0),
        "{text}"
    );
    assert!(
        !text.contains(r#"reason="reset""#)
            || text.contains(r#"reason="reset",route="default"} 0"#),
        "no upstream failure counted: {text}"
    );
    // Another client of the same destination sees nothing of it.
    let ok = get_via(&client(), &proxy, &dest, "/").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_is_the_clients_fault() {
    let upstream = spawn_reader().await;
    let dest = upstream.addr.to_string();
    let proxy = spawn_proxy(upstream.addr, |c| c.retry.retries = 0).await;
    for _ in 0..10 {
        let mut s = TcpStream::connect(proxy.outbound()).await.expect("connect");
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: {dest}\r\nContent-Length: 100000\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&[b'x'; 1000]).await.expect("part of the body");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    // The proxy notices each client's close on its own time.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = metrics(&proxy).await;
    let gone = r#"breakwater_client_errors_total{direction="outbound",reason="client-gone"}"#;
    while series(&text, gone) != Some(10.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics(&proxy).await;
    }
    assert_eq!(series(&text, gone), Some(10.0), "{text}");
    assert_eq!(circuit_state(&text, &dest), Some(0.0), "{text}");
    let ok = get_via(&client(), &proxy, &dest, "/").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_408_not_an_upstream_timeout() {
    let upstream = spawn_reader().await;
    let dest = upstream.addr.to_string();
    let proxy = spawn_proxy(upstream.addr, |c| {
        c.retry.retries = 0;
        c.timeout = Duration::from_millis(300);
    })
    .await;
    for i in 0..6 {
        let req = format!("POST /slow HTTP/1.1\r\nHost: {dest}\r\nContent-Length: 10\r\n\r\nab");
        let started = Instant::now();
        let seen = raw(&proxy, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(seen.starts_with("HTTP/1.1 408"), "request {i}: {seen}");
        assert!(
            seen.contains("x-breakwater-reason: client-timeout"),
            "{seen}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let text = metrics(&proxy).await;
    assert_eq!(circuit_state(&text, &dest), Some(0.0), "{text}");
    let ok = get_via(&client(), &proxy, &dest, "/").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_resets_after_the_body_is_still_blamed() {
    let upstream = spawn_raw(|mut s| async move {
        let _ = read_head(&mut s).await;
        let mut body = [0u8; 5];
        let _ = s.read_exact(&mut body).await;
        reset(s);
    })
    .await;
    let dest = upstream.addr.to_string();
    let proxy = spawn_proxy(upstream.addr, |c| c.retry.retries = 0).await;
    let req = format!("POST / HTTP/1.1\r\nHost: {dest}\r\nContent-Length: 5\r\n\r\nhello");
    let seen = raw(&proxy, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(seen.starts_with("HTTP/1.1 502"), "{seen}");
    assert!(seen.contains("x-breakwater-reason: reset"), "{seen}");
}

/// A destination whose circuit is open: its only endpoint refused five
/// connections in a row.
async fn open_circuit() -> (TestProxy, String) {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = spawn_proxy(closed, |c| {
        c.retry.retries = 0;
        c.breaker.open_duration = Duration::from_secs(30);
    })
    .await;
    let dest = closed.to_string();
    for _ in 0..5 {
        get_via(&client(), &proxy, &dest, "/").await;
    }
    let seen = get_via(&client(), &proxy, &dest, "/").await;
    assert_eq!(seen.reason(), Some("circuit-open"));
    (proxy, dest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_closes_the_connection_and_says_so() {
    let (proxy, dest) = open_circuit().await;
    let mut s = TcpStream::connect(proxy.outbound()).await.expect("connect");
    let head = format!("POST / HTTP/1.1\r\nHost: {dest}\r\nContent-Length: 100000\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&[b'x'; 100]).await.expect("the body's start");
    let (seen, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    assert!(seen.contains("x-breakwater-reason: circuit-open"), "{seen}");
    assert!(seen.contains("connection: close"), "said so: {seen}");
    assert!(closed, "and closed");

    // A request without a body keeps its connection: the next one on it works.
    let mut s = TcpStream::connect(proxy.outbound()).await.expect("connect");
    let get = format!("GET / HTTP/1.1\r\nHost: {dest}\r\n\r\n");
    for _ in 0..2 {
        s.write_all(get.as_bytes()).await.expect("request");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        let seen = String::from_utf8_lossy(&buf[..n]);
        assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
        assert!(!seen.contains("connection: close"), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_posting_to_an_open_circuit_never_hits_a_dead_connection() {
    // hyper's pooled client reuses a connection unless told it closes.
    let (proxy, dest) = open_circuit().await;
    let c = client();
    for i in 0..20 {
        let req = http::Request::post(format!("http://{}/", proxy.outbound()))
            .header(http::header::HOST, &dest)
            .body(full(vec![b'x'; 200_000]))
            .expect("request");
        let resp = c.request(req).await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => panic!("request {i} failed on a reused connection: {e:?}"),
        };
        assert_eq!(resp.status(), 503, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_upstream_gets_traffic_back_within_half_a_second() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let proxy = spawn_proxy(addr, |c| c.retry.retries = 0).await;
    let dest = addr.to_string();
    for _ in 0..5 {
        get_via(&client(), &proxy, &dest, "/").await;
    }
    assert_eq!(
        get_via(&client(), &proxy, &dest, "/").await.reason(),
        Some("circuit-open")
    );
    // Down for 1.1 s in all, then it accepts again on the same port.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let up = Instant::now();
    let _server = tokio::spawn(async move {
        while let Ok((s, _)) = back.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(text_response(200, "back"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
            });
        }
    });
    let recovered = loop {
        let seen = get_via(&client(), &proxy, &dest, "/").await;
        if seen.status == 200 {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(4),
            "still {}",
            seen.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The open duration is 5 s; the reachability check lets the probe go
    // within its longest wait (250 ms) of the upstream's return.
    assert!(
        recovered < Duration::from_millis(500),
        "traffic back {recovered:?} after the upstream accepted again"
    );
}
