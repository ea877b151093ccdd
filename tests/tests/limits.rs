//! Bad input and the limits that protect the proxy: oversized and malformed heads,
//! ambiguous framing, slow and idle clients, the connection cap, and requests the
//! outbound listener cannot route. Raw TCP clients send the bytes; every test
//! asserts what the client sees and that nothing ambiguous reached the upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Upstream};

/// How long a test waits for an answer it expects at once.
const ANSWER: Duration = Duration::from_secs(5);

/// What a raw client saw: the bytes breakwater wrote, and whether it closed.
struct Reply {
    text: String,
    closed: bool,
}

impl Reply {
    /// The status code of the first response.
    fn status(&self) -> Option<u16> {
        status_of(&self.text)
    }

    /// A header of the first response, by case-insensitive name.
    fn header(&self, name: &str) -> Option<String> {
        header_of(&self.text, name)
    }

    /// How many responses came back (status lines seen).
    fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count() + self.text.matches("HTTP/1.0 ").count()
    }
}

fn status_of(text: &str) -> Option<u16> {
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn header_of(text: &str, name: &str) -> Option<String> {
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends `bytes` on a fresh connection and reads until the server closes or `wait`
/// passes. Unlike `support::raw_exchange`, a write cut short by the server (it may
/// answer and close before reading an oversized head to the end) is not a failure.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Reply {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let _ = stream.write_all(bytes).await;
    let (text, closed) = support::read_until_close(&mut stream, wait).await;
    Reply { text, closed }
}

/// Reads exactly one response with a `content-length` body from a keep-alive
/// connection, leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read a response head");
            assert_eq!(
                n,
                1,
                "connection closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len: usize = header_of(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .expect("a response with content-length");
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .expect("read the response body");
        buf.extend_from_slice(&body);
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .expect("a response in time");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the server closed `stream` within `wait` (true) or left it open (false).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// An upstream speaking HTTP/1.1 by hand, recording every byte it receives, so a
/// test sees the framing exactly as breakwater sent it (a real HTTP server would
/// normalise it away).
async fn spawn_recorder() -> (Upstream, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = support::spawn_raw(move |mut stream| {
        let seen = record.clone();
        async move {
            let head = support::read_head(&mut stream).await;
            let lower = head.to_ascii_lowercase();
            let mut body = Vec::new();
            if lower.contains("transfer-encoding: chunked") {
                let mut byte = [0u8; 1];
                while !body.ends_with(b"0\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => body.push(byte[0]),
                        _ => break,
                    }
                }
            } else if let Some(len) =
                header_of(&head, "content-length").and_then(|v| v.parse().ok())
            {
                body.resize(len, 0);
                let _ = stream.read_exact(&mut body).await;
            }
            seen.lock()
                .expect("recorder lock")
                .extend(head.as_bytes().iter().chain(&body));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // Anything more on this connection is recorded too: a smuggled request.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(500), stream.read_to_end(&mut rest))
                .await;
            seen.lock().expect("recorder lock").extend(rest);
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431_and_a_closed_connection() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| c.limits.max_request_header_bytes = 8192).await;
    let big = "x".repeat(10_000);
    let request = format!("GET / HTTP/1.1\r\nHost: app\r\nX-Big: {big}\r\n\r\n");

    let reply = exchange(proxy.addrs.inbound, request.as_bytes(), ANSWER).await;
    assert_eq!(reply.status(), Some(431), "inbound: {}", reply.text);
    assert!(reply.closed, "the connection stays open after a 431");

    let reply = exchange(proxy.outbound(), request.as_bytes(), ANSWER).await;
    assert_eq!(reply.status(), Some(431), "outbound: {}", reply.text);
    assert!(
        reply.closed,
        "the outbound connection stays open after a 431"
    );
    assert_eq!(app.hits(), 0, "an oversized head reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_just_under_the_limit_is_forwarded() {
    let app = support::spawn_echo().await;
    let proxy =
        support::spawn_proxy(app.addr, |c| c.limits.max_request_header_bytes = 16 * 1024).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
        "x".repeat(12_000)
    );
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let response = read_response(&mut stream).await;
    assert_eq!(status_of(&response), Some(200), "{response}");
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| c.limits.max_request_headers = 10).await;
    let mut request = String::from("GET / HTTP/1.1\r\nHost: app\r\n");
    for i in 0..20 {
        request.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");

    let reply = exchange(proxy.addrs.inbound, request.as_bytes(), ANSWER).await;
    assert_eq!(reply.status(), Some(431), "{}", reply.text);
    assert!(reply.closed, "the connection stays open after a 431");
    assert_eq!(app.hits(), 0, "a header flood reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_target_gets_414_from_breakwater() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| c.limits.max_uri_bytes = 1024).await;
    let request = format!("GET /{} HTTP/1.1\r\nHost: app\r\n\r\n", "a".repeat(2000));

    for (listener, addr) in [
        ("inbound", proxy.addrs.inbound),
        ("outbound", proxy.outbound()),
    ] {
        let request = if listener == "outbound" {
            request.replace("Host: app", &format!("Host: {}", app.addr))
        } else {
            request.clone()
        };
        let reply = exchange(addr, request.as_bytes(), ANSWER).await;
        assert_eq!(reply.status(), Some(414), "{listener}: {}", reply.text);
        assert_eq!(
            reply.header("x-breakwater-reason").as_deref(),
            Some("uri-too-long"),
            "{listener}"
        );
        assert!(
            reply.closed,
            "{listener}: the connection stays open after a 414"
        );
    }
    assert_eq!(app.hits(), 0, "a too-long target reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_400_and_never_reach_the_app() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "control byte in a header value",
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\x01b\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Bad: a\x00b\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nHost: app\r\nX Bad: v\r\n\r\n",
        ),
        (
            "header line without a colon",
            b"GET / HTTP/1.1\r\nHost: app\r\nno-colon-here\r\n\r\n",
        ),
        (
            "request line without a version",
            b"GET /\r\nHost: app\r\n\r\n",
        ),
        (
            "unknown HTTP version",
            b"GET / HTTP/9.9\r\nHost: app\r\n\r\n",
        ),
        (
            "space inside the target",
            b"GET /a b HTTP/1.1\r\nHost: app\r\n\r\n",
        ),
        (
            "binary garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        ),
        ("bad method token", b"G(T / HTTP/1.1\r\nHost: app\r\n\r\n"),
        (
            "non-numeric content-length",
            b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "negative content-length",
            b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "transfer-encoding that is not chunked",
            b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "transfer-encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: app\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let reply = exchange(proxy.addrs.inbound, bytes, ANSWER).await;
        assert_eq!(reply.status(), Some(400), "{what}: {:?}", reply.text);
        assert!(
            reply.closed,
            "{what}: the connection stays open after a 400"
        );
    }
    assert_eq!(app.hits(), 0, "a malformed request reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_content_lengths_get_400_and_are_not_forwarded() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "two header lines",
            b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\nContent-Length: 10\r\n\r\nabcdefghij",
        ),
        ("one list value", b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 3, 10\r\n\r\nabcdefghij"),
    ];
    for (what, bytes) in cases {
        let reply = exchange(proxy.addrs.inbound, bytes, ANSWER).await;
        assert_eq!(reply.status(), Some(400), "{what}: {:?}", reply.text);
        assert!(reply.closed, "{what}: the connection stays open");
        assert_eq!(
            reply.responses(),
            1,
            "{what}: the leftover body was read as a request"
        );
    }
    assert_eq!(app.hits(), 0, "an ambiguous length reached the app");
}

/// What happens (observed with hyper 1.12): for `Content-Length` together with
/// `Transfer-Encoding: chunked`, hyper does what RFC 9112 §6.1 allows: it drops
/// `Content-Length`, reads the body as chunked, and closes the connection after the
/// response (`connection: close`). So the request is forwarded, unambiguously: the
/// upstream sees chunked framing only, the bytes the `Content-Length` would have
/// covered beyond the last chunk are never read as a second request, and the client
/// gets exactly one response. (Refusing it with a 4xx would be safe too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_forwarded_as_chunked_only_and_closed() {
    let (upstream, seen) = spawn_recorder().await;
    let proxy = support::spawn_proxy(upstream.addr, |_| {}).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n";
    let body = format!("5\r\nhello\r\n0\r\n\r\n{smuggled}");
    for order in ["cl-first", "te-first"] {
        seen.lock().expect("recorder lock").clear();
        let framing = if order == "cl-first" {
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                body.len()
            )
        } else {
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                body.len()
            )
        };
        let request = format!("POST /upload HTTP/1.1\r\nHost: app\r\n{framing}\r\n{body}");

        let reply = exchange(proxy.addrs.inbound, request.as_bytes(), ANSWER).await;
        assert_eq!(reply.status(), Some(200), "{order}: {}", reply.text);
        assert_eq!(
            reply.header("connection").as_deref(),
            Some("close"),
            "{order}: {}",
            reply.text
        );
        assert!(
            reply.closed,
            "{order}: the connection stays open after CL+TE"
        );
        assert_eq!(
            reply.responses(),
            1,
            "{order}: more than one response: {}",
            reply.text
        );

        // Give the recorder time to see anything else that might come.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen =
            String::from_utf8_lossy(&seen.lock().expect("recorder lock")).to_ascii_lowercase();
        assert!(
            !seen.contains("/smuggled"),
            "{order}: a smuggled request reached the upstream:\n{seen}"
        );
        assert_eq!(seen.matches("post /upload").count(), 1, "{order}:\n{seen}");
        let head = seen.split("\r\n\r\n").next().unwrap_or_default();
        assert!(
            head.contains("transfer-encoding: chunked"),
            "{order}: upstream head:\n{head}"
        );
        assert!(
            !head.contains("content-length"),
            "{order}: both framings forwarded:\n{head}"
        );
        assert!(
            seen.ends_with("5\r\nhello\r\n0\r\n\r\n"),
            "{order}: the body changed:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_get_400_and_are_not_forwarded() {
    // RFC 9112 §3.2: a server MUST answer 400 to more than one Host field line; an
    // app behind breakwater and breakwater itself might each pick a different one.
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let request = b"GET / HTTP/1.1\r\nHost: app\r\nHost: evil.example\r\n\r\n";
    for (listener, addr) in [
        ("inbound", proxy.addrs.inbound),
        ("outbound", proxy.outbound()),
    ] {
        let reply = exchange(addr, request, ANSWER).await;
        assert_eq!(reply.status(), Some(400), "{listener}: {}", reply.text);
        assert!(
            reply.closed,
            "{listener}: the connection stays open after a 400"
        );
    }
    assert_eq!(
        app.hits(),
        0,
        "a request with two Host headers reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_cut_off_by_the_header_read_timeout() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: ")
        .await
        .expect("write a partial head");
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "a partial head held the connection open for 3s with --header-read-timeout=300ms"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before the timeout"
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_on_a_reused_connection_is_cut_off_too() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream.write_all(&get("app")).await.expect("write");
    let first = read_response(&mut stream).await;
    assert_eq!(status_of(&first), Some(200), "{first}");
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHo")
        .await
        .expect("write a partial head");
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "a partial second head held a keep-alive connection open"
    );
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_not_closed_by_the_header_timer() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream.write_all(&get("app")).await.expect("write");
    let first = read_response(&mut stream).await;
    assert_eq!(status_of(&first), Some(200), "{first}");

    assert!(
        !closed_within(&mut stream, Duration::from_secs(1)).await,
        "an idle keep-alive connection was closed after 1s with --header-read-timeout=300ms"
    );
    stream
        .write_all(&get("app"))
        .await
        .expect("write a second request");
    let second = read_response(&mut stream).await;
    assert_eq!(status_of(&second), Some(200), "{second}");
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_by_the_idle_timeout() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.idle_timeout = Duration::from_millis(300)
    })
    .await;
    let mut stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    stream.write_all(&get("app")).await.expect("write");
    let response = read_response(&mut stream).await;
    assert_eq!(status_of(&response), Some(200), "{response}");
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "an idle connection was still open 3s after its response with --idle-timeout=300ms"
    );
    assert!(
        idle_from.elapsed() >= Duration::from_millis(200),
        "closed before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_by_the_idle_timeout() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.idle_timeout = Duration::from_millis(300)
    })
    .await;
    for addr in [proxy.addrs.inbound, proxy.outbound()] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(
            closed_within(&mut stream, Duration::from_secs(3)).await,
            "a silent connection to {addr} was still open after 3s with --idle-timeout=300ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| c.limits.max_connections = 2).await;
    let addr = proxy.addrs.inbound;

    // Two connections, each proven accepted and served by a full exchange.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&get("app")).await.expect("write");
        let response = read_response(&mut stream).await;
        assert_eq!(status_of(&response), Some(200), "{response}");
        held.push(stream);
    }

    let started = Instant::now();
    let third = exchange(addr, &get("app"), ANSWER).await;
    assert!(
        third.closed,
        "a third connection was kept with --max-connections=2"
    );
    assert!(
        third.text.is_empty(),
        "the third connection was served: {}",
        third.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the third connection was not closed at once"
    );
    assert_eq!(app.hits(), 2);

    // Freeing a slot lets a new connection in; the slot frees once the proxy sees
    // the close, so allow it a moment.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = exchange(addr, &get("app"), Duration::from_secs(1)).await;
        if reply.status() == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection was served after one closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_request_without_host_or_absolute_target_gets_503_no_route() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let reply = exchange(proxy.outbound(), b"GET /where HTTP/1.0\r\n\r\n", ANSWER).await;
    assert_eq!(reply.status(), Some(503), "{}", reply.text);
    assert_eq!(
        reply.header("x-breakwater-reason").as_deref(),
        Some("no-route")
    );
    assert!(
        reply.text.contains("breakwater"),
        "the body does not say why: {}",
        reply.text
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_request_addressed_to_the_outbound_listener_gets_503_no_route() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let port = proxy.outbound().port();
    let requests = [
        format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.outbound()),
        format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: LOCALHOST:{port}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: [::1]:{port}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: 0.0.0.0:{port}\r\n\r\n"),
        format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: elsewhere\r\n\r\n"),
    ];
    for request in &requests {
        // A 503 leaves the connection open, so read just the one response.
        let mut stream = TcpStream::connect(proxy.outbound()).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let response = read_response(&mut stream).await;
        assert_eq!(status_of(&response), Some(503), "{request:?}: {response}");
        assert_eq!(
            header_of(&response, "x-breakwater-reason").as_deref(),
            Some("no-route"),
            "{request:?}"
        );
    }
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_request_with_an_invalid_host_gets_400_bad_request() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    for host in ["a b", "[::1", "bad/host"] {
        let reply = exchange(proxy.outbound(), &get(host), ANSWER).await;
        assert_eq!(reply.status(), Some(400), "Host: {host}: {}", reply.text);
        assert_eq!(
            reply.header("x-breakwater-reason").as_deref(),
            Some("bad-request"),
            "Host: {host}"
        );
        assert!(
            reply.closed,
            "Host: {host}: the connection stays open after a 400"
        );
    }
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_request_with_an_invalid_port_gets_400_not_port_80() {
    // A port that is not a number in 1-65535 must not quietly become port 80.
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |_| {}).await;
    let requests = [
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:http\r\n\r\n",
        "GET http://127.0.0.1:99999/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for request in requests {
        let reply = exchange(proxy.outbound(), request.as_bytes(), ANSWER).await;
        assert_eq!(reply.status(), Some(400), "{request:?}: {}", reply.text);
        assert_eq!(
            reply.header("x-breakwater-reason").as_deref(),
            Some("bad-request"),
            "{request:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_barrage_of_garbage_a_normal_request_still_works() {
    let app = support::spawn_echo().await;
    let proxy = support::spawn_proxy(app.addr, |c| {
        c.limits.max_request_header_bytes = 8192;
        c.limits.max_request_headers = 10;
        c.limits.max_uri_bytes = 256;
        c.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let huge_chunk = b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n";
    let garbage: Vec<Vec<u8>> = vec![
        b"\r\n\r\n\r\n".to_vec(),
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec(),
        (0u8..=255).collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\n".to_vec(),
        b"GET http://[::1 HTTP/1.1\r\n\r\n".to_vec(),
        b"GET http://user:pass@x:1/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET * HTTP/1.1\r\nHost: app\r\n\r\n".to_vec(),
        b"OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n".to_vec(),
        b"CONNECT app HTTP/1.1\r\nHost: app\r\n\r\n".to_vec(),
        b"CONNECT :0 HTTP/1.1\r\n\r\n".to_vec(),
        b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: app\r\nUpgrade: \xff\r\nConnection: upgrade\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: host, content-length, x-forwarded-for\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        huge_chunk.to_vec(),
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        format!("GET /{} HTTP/1.1\r\nHost: app\r\n\r\n", "%".repeat(1000)).into_bytes(),
        format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "h".repeat(4000)).into_bytes(),
        b"GET / HTTP/1.1\r\nHost: app".to_vec(),
    ];
    // All at once: several of these leave the connection waiting for more bytes.
    let mut sent = tokio::task::JoinSet::new();
    for bytes in garbage {
        for addr in [proxy.addrs.inbound, proxy.outbound()] {
            let bytes = bytes.clone();
            sent.spawn(async move {
                let reply = exchange(addr, &bytes, Duration::from_millis(2000)).await;
                (bytes, reply)
            });
        }
    }
    while let Some(done) = sent.join_next().await {
        let (bytes, reply) = done.expect("a garbage exchange");
        if let Some(status) = reply.status() {
            assert!(
                status != 500,
                "{:?} got a 500: {}",
                String::from_utf8_lossy(&bytes),
                reply.text
            );
        }
    }

    let client = support::client();
    let answer = support::get(&client, &proxy.inbound("/after")).await;
    assert_eq!(
        answer.status, 200,
        "inbound no longer serves after the garbage"
    );
    let answer = support::get_via(&client, &proxy, &app.addr.to_string(), "/after").await;
    assert_eq!(
        answer.status, 200,
        "outbound no longer serves after the garbage"
    );
    let answer = support::get(&client, &proxy.admin("/live")).await;
    assert_eq!(answer.status, 200, "the admin endpoint died");
}
