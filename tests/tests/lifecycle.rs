//! Graceful shutdown: `/ready` turns 503, listeners stop accepting, in-flight
//! requests finish, keep-alive connections are told to close, the process exits 0.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// An app that answers after `delay`.
async fn slow_app(delay: Duration) -> Upstream {
    spawn_upstream(move |_| async move {
        tokio::time::sleep(delay).await;
        text_response(200, "finished")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_closes_keep_alive() {
    let app = slow_app(Duration::from_millis(600)).await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let inbound = proxy.addrs.inbound;
    let admin = proxy.admin("/ready");

    // A keep-alive HTTP/1.1 request in flight when the drain starts.
    let mut stream = TcpStream::connect(inbound).await.expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stop = tokio::spawn(proxy.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ready = get(&client(), &admin).await;
    assert_eq!(
        ready.status, 503,
        "/ready fails as soon as the drain starts"
    );
    let refused = TcpStream::connect(inbound).await;
    assert!(
        refused.is_err(),
        "listener must stop accepting during the drain"
    );
    let (text, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "in-flight request finishes: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.ends_with("finished"), "{text}");
    assert!(
        closed,
        "the keep-alive connection is closed after its response"
    );

    let report = tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("drain ends")
        .expect("run task");
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait() {
    let app = slow_app(Duration::from_secs(30)).await;
    let proxy = spawn_proxy(app.addr, |c| c.drain_timeout = Duration::from_millis(500)).await;
    let url = proxy.inbound("/stuck");
    let stuck = tokio::spawn(async move {
        client()
            .request(http::Request::get(url).body(full("")).expect("request"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let report = proxy.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        report.abandoned >= 1,
        "the stuck request is reported abandoned"
    );
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_off_drains_and_exits_zero() {
    let app = slow_app(Duration::from_millis(800)).await;
    let mut proxy = spawn_binary(app.addr, &["--drain-timeout=10s", "--drain-delay=0s"]).await;
    let c = client();
    let inbound = format!("http://{}/slow", proxy.addrs.inbound);
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &inbound).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = proxy.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(150)).await;

    let ready = get(&c, &format!("http://{}/ready", proxy.addrs.admin)).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("draining"));
    let finished = in_flight.await.expect("request task");
    assert_eq!(finished.status, 200);
    assert_eq!(finished.body, "finished");

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = proxy.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "breakwater did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_a_goaway_and_finish_their_streams() {
    let app = slow_app(Duration::from_millis(500)).await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let stream = TcpStream::connect(proxy.addrs.inbound)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/slow", proxy.addrs.inbound))
        .body(full(""))
        .expect("request");
    let pending = tokio::spawn(sender.send_request(req));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let report = tokio::spawn(proxy.stop());
    let resp = pending
        .await
        .expect("task")
        .expect("stream completes despite the drain");
    assert_eq!(answer(resp).await.body, "finished");
    // After GOAWAY and the last stream, the server closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    assert!(closed.is_ok(), "connection ends after the GOAWAY");
    assert_eq!(report.await.expect("run").abandoned, 0);
}
