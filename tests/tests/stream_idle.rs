//! `--stream-idle-timeout`, with the real binary: a response body that stalls
//! or breaks mid-stream ends the client's body and counts against the
//! endpoint (its circuit opens), without a retry; a slow body that keeps
//! moving is never cut; a client that stalls its upload gets 408; a CONNECT
//! tunnel that stands still is closed, one that moves is kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    BinaryProxy, client, full, get, read_head, read_until_close, reset, spawn_binary, spawn_raw,
    spawn_upstream, text_response,
};

/// How a raw upstream misbehaves after a 200 head and the first chunk.
#[derive(Clone, Copy)]
enum Then {
    /// Sends nothing more and keeps the connection open.
    Stall,
    /// Resets the connection.
    Reset,
    /// Sends a chunk every 100 ms for a second, then ends properly.
    Trickle,
}

/// A chunked upstream that answers every request 200 with a first chunk, then
/// does `then`; counts the requests it got.
async fn spawn_streamer(then: Then) -> (crate::support::Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let upstream = spawn_raw(move |mut stream| {
        let h = h.clone();
        async move {
            loop {
                if read_head(&mut stream).await.is_empty() {
                    return;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                match then {
                    Then::Stall => {
                        let mut sink = [0u8; 64];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut sink))
                                .await;
                        return;
                    }
                    Then::Reset => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        reset(stream);
                        return;
                    }
                    Then::Trickle => {
                        for _ in 0..10 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if stream.write_all(b"1\r\n.\r\n").await.is_err() {
                                return;
                            }
                        }
                        if stream.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    (upstream, hits)
}

async fn proxy_to(upstream: SocketAddr, extra: &[&str]) -> BinaryProxy {
    let app = spawn_upstream(|_req| async { text_response(200, "app") }).await;
    let mut args = vec![format!(
        "--route={upstream},breaker-consecutive-failures=2,breaker-open-duration=30s"
    )];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_binary(app.addr, &args).await
}

/// A GET to `upstream` through the outbound listener.
fn to_upstream(proxy: &BinaryProxy, upstream: SocketAddr) -> Request<crate::support::TestBody> {
    Request::get(format!("http://{}/", proxy.addrs.outbound))
        .header(http::header::HOST, upstream.to_string())
        .body(full(""))
        .expect("request")
}

/// A GET through the outbound listener: the status, whether the body ended
/// cleanly, the bytes that came, and how long it all took.
async fn fetch(proxy: &BinaryProxy, upstream: SocketAddr) -> (u16, bool, String, Duration) {
    let started = Instant::now();
    let req = to_upstream(proxy, upstream);
    let resp = client().request(req).await.expect("a response head");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let clean = loop {
        match tokio::time::timeout(Duration::from_secs(8), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    got.extend_from_slice(data);
                }
            }
            Ok(Some(Err(_))) => break false,
            Ok(None) => break true,
            Err(_) => panic!("the body neither moved nor ended within 8 s"),
        }
    };
    (
        status,
        clean,
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_and_opens_the_circuit() {
    let (upstream, hits) = spawn_streamer(Then::Stall).await;
    let proxy = proxy_to(upstream.addr, &["--stream-idle-timeout=300ms"]).await;
    for _ in 0..2 {
        let (status, clean, got, took) = fetch(&proxy, upstream.addr).await;
        assert_eq!(status, 200, "the head had come");
        assert!(
            !clean,
            "the client's body ends abruptly, not as if complete"
        );
        assert_eq!(got, "first");
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(3),
            "cut after 300 ms of silence: {took:?}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "never retried: bytes had reached the client"
    );
    let req = to_upstream(&proxy, upstream.addr);
    let third = crate::support::send(&client(), req).await;
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(
        third.reason(),
        Some("circuit-open"),
        "two stalled bodies are two failures of the endpoint"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_broken_mid_stream_counts_against_the_endpoint() {
    let (upstream, hits) = spawn_streamer(Then::Reset).await;
    let proxy = proxy_to(upstream.addr, &[]).await;
    for _ in 0..2 {
        let (status, clean, _, _) = fetch(&proxy, upstream.addr).await;
        assert_eq!(status, 200);
        assert!(!clean, "the reset ends the client's body abruptly");
    }
    let req = to_upstream(&proxy, upstream.addr);
    let third = crate::support::send(&client(), req).await;
    assert_eq!(third.reason(), Some("circuit-open"), "{}", third.body);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_slow_body_that_keeps_moving_is_never_cut() {
    let (upstream, _) = spawn_streamer(Then::Trickle).await;
    let proxy = proxy_to(upstream.addr, &["--stream-idle-timeout=300ms"]).await;
    for _ in 0..3 {
        let (status, clean, got, took) = fetch(&proxy, upstream.addr).await;
        assert_eq!(status, 200);
        assert!(clean, "a chunk every 100 ms is a live stream");
        assert_eq!(got, "first..........");
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
    let req = to_upstream(&proxy, upstream.addr);
    assert_eq!(
        crate::support::send(&client(), req).await.status,
        200,
        "and the circuit stays closed"
    );
}

#[tokio::test]
async fn a_client_that_stalls_its_upload_gets_408_and_the_app_is_not_blamed() {
    // The app waits for the whole body before it answers.
    let app = spawn_upstream(|req: Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await;
        text_response(200, if body.is_ok() { "got it" } else { "broken" })
    })
    .await;
    let proxy = spawn_binary(app.addr, &["--stream-idle-timeout=300ms"]).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\nthe first ten",
        )
        .await
        .expect("write");
    let (text, _) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("x-breakwater-reason: client-timeout"),
        "{text}"
    );
    assert!(
        text.contains("stream-idle-timeout"),
        "the answer says why: {text}"
    );
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let metrics = get(&client(), &format!("http://{}/metrics", proxy.addrs.admin)).await;
    assert_eq!(
        crate::support::sample_sum(
            &metrics.body,
            "breakwater_upstream_failures_total",
            "direction=\"inbound\""
        ),
        0.0,
        "the client's stall is not the app's failure"
    );
}

#[tokio::test]
async fn a_tunnel_that_stands_still_is_closed_and_one_that_moves_is_kept() {
    let echo = spawn_raw(|mut stream| async move {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let proxy = proxy_to(echo.addr, &["--stream-idle-timeout=400ms"]).await;
    let mut stream = TcpStream::connect(proxy.addrs.outbound)
        .await
        .expect("connect");
    let hello = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr);
    stream.write_all(hello.as_bytes()).await.expect("write");
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Eight round trips 150 ms apart: 1.2 s in all, never 400 ms quiet.
    for i in 0..8u8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(&[i]).await.expect("the tunnel is open");
        let mut back = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut back))
            .await
            .expect("echo")
            .expect("echo read");
        assert_eq!(back[0], i);
    }
    let quiet = Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert!(closed, "the idle tunnel is closed");
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn the_default_is_five_minutes_and_zero_turns_it_off() {
    let config = |extra: &[&str]| {
        let mut args = vec!["run", "--check"];
        args.extend_from_slice(extra);
        let out = crate::support::run_to_end(&args);
        assert!(out.succeeded(), "{}", out.stderr);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON config");
        json["limits"]["stream_idle_timeout"].clone()
    };
    assert_eq!(config(&[]), "5m");
    assert_eq!(
        config(&["--stream-idle-timeout=0s"]),
        serde_json::Value::Null
    );
    let bad = crate::support::run_to_end(&["run", "--check", "--stream-idle-timeout=soon"]);
    assert!(!bad.succeeded());
    assert!(
        bad.stderr.contains("--stream-idle-timeout"),
        "{}",
        bad.stderr
    );
}
