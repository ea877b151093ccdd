//! The app's protocol and the upstream's are learned, never assumed from the
//! client: HTTP/2 clients reach HTTP/1.1-only servers, gRPC is refused the gRPC
//! way where it cannot go, and requests the RFCs forbid are answered 400.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTP/1.1-only server, as most apps are (gunicorn, Rails, Express on their
/// defaults): it answers the HTTP/2 preface with an error. Every request it
/// serves is echoed (method, version, headers) and counted.
struct H1Only {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H1Only {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn spawn_h1_only() -> H1Only {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (h, c) = (hits.clone(), connections.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let hits = h.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                    for (k, v) in req.headers() {
                        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<bytes>")));
                    }
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let len = body.map_or(0, |b| b.len());
                        out.push_str(&format!("body: {len}\n"));
                        Ok::<_, Infallible>(text_response(200, &out))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    H1Only {
        addr,
        hits,
        connections,
        task,
    }
}

/// Every endpoint's `speaks` in `/upstreams`.
fn speaks(upstreams: &str) -> Vec<serde_json::Value> {
    fn walk(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "speaks" {
                        out.push(v.clone());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(upstreams).expect("JSON"), &mut out);
    out
}

fn h2_get(url: &str) -> Request<TestBody> {
    Request::get(url)
        .version(Version::HTTP_2)
        .body(full(""))
        .expect("request")
}

#[tokio::test]
async fn an_h2c_client_reaches_an_http1_only_app_through_inbound() {
    let app = spawn_h1_only().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let client = h2_client();
    for i in 0..3 {
        let a = get(&client, &proxy.inbound(&format!("/hello?n={i}"))).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.version, Version::HTTP_2, "the client keeps its HTTP/2");
        assert!(a.body.starts_with("GET /hello"), "{}", a.body);
        assert!(
            a.body.contains("HTTP/1.1"),
            "the app got HTTP/1.1: {}",
            a.body
        );
        assert!(
            a.body.contains(&format!("host: {}", proxy.addrs.inbound)),
            ":authority became Host: {}",
            a.body
        );
    }
    assert_eq!(app.hits.load(Ordering::SeqCst), 3);
    // The refusal is learned once: later requests go straight to HTTP/1.1, over
    // the connection they pooled.
    assert!(
        app.connections.load(Ordering::SeqCst) <= 3,
        "{} connections",
        app.connections.load(Ordering::SeqCst)
    );
    let upstreams = get(&crate::support::client(), &proxy.admin("/upstreams")).await;
    let learned = speaks(&upstreams.body);
    assert_eq!(
        learned,
        [serde_json::json!({"h2": false, "http/1.1": true})],
        "/upstreams shows what the app speaks: {}",
        upstreams.body
    );
}

#[tokio::test]
async fn an_h2c_client_reaches_an_http1_only_upstream_through_outbound() {
    let upstream = spawn_h1_only().await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    // An HTTP/2 request with a body and no length: chunked on the way to 1.1.
    let body = "x".repeat(100_000);
    let req = Request::post(format!("http://{}/upload", upstream.addr))
        .version(Version::HTTP_2)
        .body(full(body.clone()))
        .expect("request");
    let a = h2_send_to(proxy.outbound(), req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.starts_with("POST /upload HTTP/1.1"), "{}", a.body);
    assert!(
        a.body.contains(&format!("host: {}", upstream.addr)),
        "{}",
        a.body
    );
    assert!(a.body.contains("body: 100000"), "{}", a.body);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_h2c_client_to_an_h2_capable_app_stays_on_http2() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let client = h2_client();
    let a = get(&client, &proxy.inbound("/x")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("HTTP/2.0"), "{}", a.body);
    let upstreams = get(&crate::support::client(), &proxy.admin("/upstreams")).await;
    assert_eq!(
        speaks(&upstreams.body),
        [serde_json::json!({"h2": true, "http/1.1": null})],
        "{}",
        upstreams.body
    );
}

#[tokio::test]
async fn grpc_toward_an_http1_only_app_gets_a_grpc_status_that_says_why() {
    let app = spawn_h1_only().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    for _ in 0..3 {
        let mut req = h2_get(&proxy.inbound("/pkg.Service/Method"));
        *req.method_mut() = http::Method::POST;
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        req.headers_mut()
            .insert("te", "trailers".parse().expect("value"));
        let a = send(&h2_client(), req).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.reason(), Some("protocol"));
        assert_eq!(a.headers["grpc-status"], "14");
        let message = a.headers["grpc-message"].to_str().expect("ascii");
        assert!(message.contains("does not speak HTTP/2"), "{message}");
    }
    assert_eq!(
        app.hits.load(Ordering::SeqCst),
        0,
        "the app never saw a gRPC call"
    );
    // One connection for the HTTP/2 preface, one for the health probe's connect.
    assert!(
        app.connections.load(Ordering::SeqCst) <= 2,
        "learned once, not retried: {} connections",
        app.connections.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn app_protocol_h2_toward_an_http1_only_app_says_protocol() {
    let app = spawn_h1_only().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.app_protocol = breakwater::config::Protocol::H2;
    })
    .await;
    let a = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.reason(), Some("protocol"));
    assert!(a.body.contains("does not speak HTTP/2"), "{}", a.body);
}

#[tokio::test]
async fn http11_without_host_is_refused_on_both_listeners() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let wait = Duration::from_secs(2);
    for (what, addr, target) in [
        ("inbound", proxy.addrs.inbound, "/".to_string()),
        (
            "outbound",
            proxy.outbound(),
            format!("http://{}/", app.addr),
        ),
    ] {
        let bytes = format!("GET {target} HTTP/1.1\r\n\r\n");
        let (head, _) = raw_exchange(addr, bytes.as_bytes(), wait).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{what}: {head}");
        assert!(head.contains("needs a Host header"), "{what}: {head}");
    }
    // HTTP/1.0 has no Host requirement.
    let (head, _) = raw_exchange(proxy.addrs.inbound, b"GET / HTTP/1.0\r\n\r\n", wait).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert_eq!(app.hits(), 1);
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_served_as_http11() {
    // What Java's HttpClient sends on every plain request by default.
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let req = Request::get(proxy.inbound("/java"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA")
        .body(full(""))
        .expect("request");
    let a = send(&client(), req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("HTTP/1.1"), "{}", a.body);
    for gone in ["upgrade:", "http2-settings:", "connection:"] {
        assert!(!a.body.contains(gone), "{gone} reached the app: {}", a.body);
    }
}
