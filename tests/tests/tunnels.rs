//! Byte relays: `CONNECT` tunnels on the outbound listener and protocol upgrades
//! (WebSocket) in both directions.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A TCP server that echoes every byte back.
async fn spawn_tcp_echo() -> Upstream {
    spawn_raw(|mut stream| async move {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

async fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    stream
        .write_all(payload)
        .await
        .expect("write through the tunnel");
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .expect("read echo");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_a_tcp_tunnel() {
    let echo = spawn_tcp_echo().await;
    let proxy = spawn_proxy(echo.addr, |_| {}).await;
    let mut stream = TcpStream::connect(proxy.outbound()).await.expect("connect");
    let hello = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr);
    stream.write_all(hello.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Bytes that are not HTTP at all, e.g. a TLS ClientHello.
    let payload: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    assert_eq!(echo_round_trip(&mut stream, &payload).await, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_is_502_connect_failure() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = spawn_proxy(closed, |_| {}).await;
    let hello = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", closed);
    let (text, _) = raw_exchange(proxy.outbound(), hello.as_bytes(), Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains("x-breakwater-reason: connect-failure"),
        "{text}"
    );
}

/// An upstream that accepts any upgrade and then echoes bytes, as a WebSocket
/// server would echo frames.
async fn spawn_upgrade_echo() -> Upstream {
    spawn_upstream(|mut req: Request<Incoming>| async move {
        if !req.headers().contains_key("upgrade") {
            return text_response(400, "upgrade expected");
        }
        let key = req.headers().get("sec-websocket-key").cloned();
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(full(""));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().expect("value"));
        resp.headers_mut()
            .insert("connection", "upgrade".parse().expect("value"));
        if let Some(key) = key {
            resp.headers_mut().insert("x-saw-key", key);
        }
        resp
    })
    .await
}

async fn websocket_through(addr: std::net::SocketAddr, host: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let hello = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(hello.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        head.contains("x-saw-key: dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );
    for msg in [
        &b"ping"[..],
        b"a longer frame of websocket bytes",
        &[0x81, 0x05, 0x00, 0xff],
    ] {
        assert_eq!(echo_round_trip(&mut stream, msg).await, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_works_inbound() {
    let app = spawn_upgrade_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    websocket_through(proxy.addrs.inbound, "app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_works_outbound() {
    let upstream = spawn_upgrade_echo().await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    websocket_through(proxy.outbound(), &upstream.addr.to_string()).await;
}
