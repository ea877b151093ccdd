//! When the upstream misbehaves, the client gets a response that says why:
//! status, `x-breakwater-reason` and a one-line body.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502_connect_failure() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = spawn_proxy(closed, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 502);
    assert_eq!(seen.reason(), Some("connect-failure"));
    assert!(
        seen.body.starts_with("breakwater: could not connect"),
        "{}",
        seen.body
    );
    assert_eq!(seen.body.lines().count(), 1);
    let outbound = get_via(&client(), &proxy, &closed.to_string(), "/").await;
    assert_eq!(outbound.status, 502);
    assert_eq!(outbound.reason(), Some("connect-failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_is_502_connect_failure() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let seen = get_via(&client(), &proxy, "no-such-host.invalid:80", "/").await;
    assert_eq!(seen.status, 502);
    assert_eq!(seen.reason(), Some("connect-failure"));
    assert!(seen.body.contains("resolve"), "{}", seen.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_the_response_is_502_reset() {
    let upstream = spawn_raw(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        reset(stream);
    })
    .await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 502);
    assert_eq!(seen.reason(), Some("reset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_response_head_then_close_is_502_reset() {
    let upstream = spawn_raw(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    })
    .await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 502);
    assert_eq!(seen.reason(), Some("reset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_timeout_at_the_deadline() {
    let app = spawn_upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text_response(200, "too late")
    })
    .await;
    let proxy = spawn_proxy(app.addr, |c| c.timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let seen = get(&client(), &proxy.inbound("/")).await;
    let took = started.elapsed();
    assert_eq!(seen.status, 504);
    assert_eq!(seen.reason(), Some("timeout"));
    assert!(
        took >= Duration::from_millis(290),
        "answered before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "deadline not enforced: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_overrides_the_timeout_for_its_destination() {
    let slow = spawn_upstream(|_| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        text_response(200, "slow but fine")
    })
    .await;
    let spec = format!("127.0.0.1:{},timeout=200ms", slow.addr.port());
    let proxy = spawn_proxy(slow.addr, |c| c.routes = vec![route(&spec)]).await;
    let c = client();
    let routed = get_via(&c, &proxy, &slow.addr.to_string(), "/").await;
    assert_eq!(routed.status, 504);
    assert_eq!(routed.reason(), Some("timeout"));
    // Inbound is not that route: the global 15 s deadline applies.
    let inbound = get(&c, &proxy.inbound("/")).await;
    assert_eq!(inbound.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_enforced() {
    // A listener with a full backlog never completes new handshakes: SYNs to it
    // are dropped, which is what an unreachable host looks like.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
            .into(),
    )
    .expect("bind");
    sock.listen(0).expect("listen");
    let addr = sock.local_addr().expect("addr").as_socket().expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let proxy = spawn_proxy(addr, |c| c.connect_timeout = Duration::from_millis(250)).await;
    let started = Instant::now();
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 502, "{}", seen.body);
    assert_eq!(seen.reason(), Some("connect-failure"));
    assert!(seen.body.contains("timed out"), "{}", seen.body);
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_breaking_off_mid_body_cuts_the_client_body_too() {
    let upstream = spawn_raw(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            .await;
        reset(stream);
    })
    .await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    let resp = client()
        .request(
            http::Request::get(proxy.inbound("/"))
                .body(full(""))
                .expect("request"),
        )
        .await
        .expect("headers arrive");
    assert_eq!(
        resp.status(),
        200,
        "headers were already sent: the status stands"
    );
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "a truncated body must not look complete");
}
