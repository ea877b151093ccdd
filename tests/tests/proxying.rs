//! The happy path in both directions: what the upstream sees, what the client gets.

use std::time::Duration;

use http::Request;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_http1_reaches_the_app_with_forwarded_headers_and_a_request_id() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/orders?id=7")).await;
    assert_eq!(seen.status, 200);
    assert!(
        seen.body.starts_with("GET /orders?id=7 HTTP/1.1"),
        "{}",
        seen.body
    );
    assert!(
        seen.body.contains("x-forwarded-for: 127.0.0.1\n"),
        "{}",
        seen.body
    );
    assert!(
        seen.body.contains("x-forwarded-proto: http\n"),
        "{}",
        seen.body
    );
    let id_line = seen.body.lines().find(|l| l.starts_with("x-request-id: "));
    assert_eq!(id_line.map(|l| l.len()), Some("x-request-id: ".len() + 32));
    assert_eq!(
        seen.reason(),
        None,
        "an app's answer carries no breakwater reason"
    );
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_responses_pass_through_unchanged() {
    let app = spawn_upstream(|_| async {
        let mut resp = text_response(503, "the app's own 503\n");
        resp.headers_mut()
            .insert("x-app", "kept".parse().expect("value"));
        resp
    })
    .await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let seen = get(&client(), &proxy.inbound("/")).await;
    assert_eq!(seen.status, 503);
    assert_eq!(seen.body, "the app's own 503\n");
    assert_eq!(seen.headers["x-app"], "kept");
    assert_eq!(seen.reason(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_proxy_and_trace_headers_pass() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get(proxy.inbound("/"))
        .header("connection", "x-hop-secret")
        .header("x-hop-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .body(full(""))
        .expect("request");
    let seen = send(&client(), req).await;
    for gone in ["x-hop-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            !seen.body.contains(&format!("{gone}:")),
            "{gone} leaked:\n{}",
            seen.body
        );
    }
    assert!(seen.body.contains(&format!("traceparent: {traceparent}\n")));
    assert!(seen.body.contains("tracestate: vendor=1\n"));
    assert!(
        seen.body
            .contains("x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\n")
    );
    assert!(
        !seen.body.contains("x-request-id"),
        "a traced request needs no extra id:\n{}",
        seen.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_share_the_inbound_port_and_http2_stays_http2() {
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let h1 = get(&client(), &proxy.inbound("/one")).await;
    assert!(h1.body.contains("HTTP/1.1"), "{}", h1.body);
    let h2 = get(&h2_client(), &proxy.inbound("/two")).await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.version, http::Version::HTTP_2);
    // :authority is the name the client used, with no Host beside it (nginx
    // refuses both).
    let first_line = format!("GET http://{}/two HTTP/2.0", proxy.addrs.inbound);
    assert!(h2.body.starts_with(&first_line), "{}", h2.body);
    assert!(!h2.body.contains("\nhost: "), "{}", h2.body);
    assert!(
        h2.body.contains("HTTP/2.0"),
        "gRPC needs HTTP/2 end to end:\n{}",
        h2.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_takes_absolute_form_targets_like_an_http_proxy() {
    let upstream = spawn_echo().await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    // What curl or any client does with HTTP_PROXY set.
    let target = upstream.url("/v1/pay?x=1");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        upstream.addr
    );
    let (text, _) =
        raw_exchange(proxy.outbound(), request.as_bytes(), Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("GET /v1/pay?x=1 HTTP/1.1"),
        "origin-form upstream:\n{text}"
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_routes_by_host_and_pools_connections() {
    let upstream = spawn_echo().await;
    // The app is another server: its health probes must not count here.
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();
    for _ in 0..10 {
        let seen = get_via(&c, &proxy, &upstream.addr.to_string(), "/ping").await;
        assert_eq!(seen.status, 200);
        assert!(seen.body.contains(&format!("host: {}\n", upstream.addr)));
    }
    assert_eq!(upstream.hits(), 10);
    assert_eq!(
        upstream.connections(),
        1,
        "keep-alive pool reuses one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_resolves_dns_names() {
    let upstream = spawn_echo().await;
    let proxy = spawn_proxy(upstream.addr, |_| {}).await;
    let host = format!("localhost:{}", upstream.addr.port());
    let seen = get_via(&client(), &proxy, &host, "/").await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(seen.body.contains(&format!("host: {host}\n")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_protocol_h2_speaks_http2_to_that_upstream() {
    let upstream = spawn_echo().await;
    let spec = format!("127.0.0.1:{},protocol=h2", upstream.addr.port());
    let proxy = spawn_proxy(upstream.addr, |c| c.routes = vec![route(&spec)]).await;
    let seen = get_via(&client(), &proxy, &upstream.addr.to_string(), "/h2").await;
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("HTTP/2.0"), "{}", seen.body);
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the app still speaks HTTP/1.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_to_an_http1_upstream_keep_their_host() {
    let upstream = spawn_echo().await;
    let spec = format!("127.0.0.1:{},protocol=h1", upstream.addr.port());
    let proxy = spawn_proxy(upstream.addr, |c| c.routes = vec![route(&spec)]).await;
    // HTTP/2 names its target in :authority.
    let req = Request::get(upstream.url("/x"))
        .body(full(""))
        .expect("request");
    let seen = h2_send_to(proxy.outbound(), req).await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(seen.body.contains("HTTP/1.1"), "{}", seen.body);
    assert!(
        seen.body.contains(&format!("host: {}\n", upstream.addr)),
        "{}",
        seen.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodyless_responses_keep_the_upstream_connection_pooled() {
    let upstream = spawn_upstream(|_| async { text_response(204, "") }).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |_| {}).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            get_via(&c, &proxy, &upstream.addr.to_string(), "/")
                .await
                .status,
            204
        );
        let head = Request::head(format!("http://{}/", proxy.outbound()))
            .header(http::header::HOST, upstream.addr.to_string())
            .body(full(""))
            .expect("request");
        assert_eq!(send(&c, head).await.status, 204);
    }
    assert_eq!(upstream.connections(), 1);
}
