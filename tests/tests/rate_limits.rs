//! Local rate limits with the real binary between a real client and a real
//! upstream: outbound per destination, inbound per route and per header
//! value, observe mode, the gRPC answer, and a client that invents 100,000
//! keys. (Per mTLS identity: `tls.rs`.)

use std::time::Duration;

use http::Request;

use crate::support::{
    client, full, get, h2_send_to, memory_kib, sample_sum, send, spawn_binary, spawn_upstream,
    text_response,
};

/// `n` GETs to `url` one after another, with `header` set if given: the statuses.
async fn statuses(url: &str, header: Option<(&str, &str)>, n: usize) -> Vec<u16> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut req = Request::get(url);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        out.push(send(&c, req.body(full("")).expect("request")).await.status);
    }
    out
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    get(&client(), &format!("http://{admin}/metrics"))
        .await
        .body
}

#[tokio::test]
async fn an_outbound_limit_answers_429_with_retry_after_and_lets_tokens_refill() {
    let app = spawn_upstream(|_req| async { text_response(200, "ok") }).await;
    let upstream = spawn_upstream(|_req| async { text_response(200, "ok") }).await;
    // Two at once, then one every 200 ms.
    let proxy = spawn_binary(app.addr, &["--rate-limit=5/2"]).await;
    let url = format!("http://{}/", upstream.addr);
    let via = |path: &str| {
        Request::get(format!("http://{}{path}", proxy.addrs.outbound))
            .header(http::header::HOST, upstream.addr.to_string())
            .body(full(""))
            .expect("request")
    };
    let c = client();
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(send(&c, via("/")).await);
    }
    let passed = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(passed, 2, "the burst of 2 passes, the rest is refused");
    let refused = answers.last().expect("six answers");
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.reason(), Some("rate-limited"));
    assert_eq!(
        refused.headers.get("retry-after").map(|v| v.to_str().ok()),
        Some(Some("1")),
        "a token within the second: Retry-After rounds up to 1"
    );
    assert!(
        refused.body.contains(&upstream.addr.to_string()) && refused.body.contains("5/s"),
        "the body names the destination and the limit: {}",
        refused.body
    );
    assert_eq!(
        upstream.hits(),
        2,
        "refused requests never reach the upstream"
    );

    // 200 ms later a token is back: exactly one more passes.
    tokio::time::sleep(Duration::from_millis(260)).await;
    let again = [send(&c, via("/")).await, send(&c, via("/")).await];
    assert_eq!(
        again.map(|a| a.status),
        [200, 429],
        "one token refilled after 200 ms"
    );
    assert_eq!(upstream.hits(), 3);

    let text = metrics(proxy.addrs.admin).await;
    assert_eq!(
        sample_sum(
            &text,
            "breakwater_rejected_total",
            "reason=\"rate-limited\""
        ),
        5.0,
        "every refusal is counted: {url}"
    );
    let snapshot = get(&c, &format!("http://{}/upstreams", proxy.addrs.admin)).await;
    let json: serde_json::Value = serde_json::from_str(&snapshot.body).expect("JSON");
    let limits: Vec<&serde_json::Value> = json
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| &d["rate_limit"]["limit"])
        .filter(|l| !l.is_null())
        .collect();
    assert_eq!(
        limits,
        ["5/2"],
        "/upstreams shows the limit: {}",
        snapshot.body
    );
}

#[tokio::test]
async fn an_inbound_route_limit_keyed_by_a_header_gives_each_caller_its_own_bucket() {
    let app = spawn_upstream(|_req| async { text_response(200, "ok") }).await;
    let proxy = spawn_binary(
        app.addr,
        &["--route=*,direction=inbound,path-prefix=/api,inbound-rate-limit=1/2,rate-limit-key=x-user"],
    )
    .await;
    let api = format!("http://{}/api/orders", proxy.addrs.inbound);
    assert_eq!(
        statuses(&api, Some(("x-user", "alice")), 3).await,
        [200, 200, 429],
        "alice's burst of two, then refused"
    );
    assert_eq!(
        statuses(&api, Some(("x-user", "bob")), 2).await,
        [200, 200],
        "bob has a bucket of his own"
    );
    assert_eq!(
        statuses(&api, None, 3).await,
        [200, 200, 429],
        "callers without the header share one bucket"
    );
    let other = format!("http://{}/health", proxy.addrs.inbound);
    assert_eq!(
        statuses(&other, Some(("x-user", "alice")), 4).await,
        [200; 4],
        "paths the route does not match are not limited"
    );
    assert_eq!(app.hits(), 4 + 2 + 4);
    let text = metrics(proxy.addrs.admin).await;
    assert_eq!(
        sample_sum(
            &text,
            "breakwater_rejected_total",
            "direction=\"inbound\",reason=\"rate-limited\""
        ),
        2.0
    );
}

#[tokio::test]
async fn observe_mode_lets_requests_over_the_limit_through_and_counts_them() {
    let app = spawn_upstream(|_req| async { text_response(200, "ok") }).await;
    let proxy = spawn_binary(
        app.addr,
        &["--inbound-rate-limit=1/1", "--rate-limit-mode=observe"],
    )
    .await;
    let url = format!("http://{}/", proxy.addrs.inbound);
    assert_eq!(statuses(&url, None, 4).await, [200; 4]);
    assert_eq!(app.hits(), 4);
    let text = metrics(proxy.addrs.admin).await;
    assert_eq!(
        sample_sum(&text, "breakwater_observed_total", "policy=\"rate-limit\""),
        3.0,
        "three would have been refused"
    );
    assert_eq!(
        sample_sum(&text, "breakwater_rejected_total", "rate-limited"),
        0.0
    );
}

#[tokio::test]
async fn a_grpc_call_over_the_limit_gets_resource_exhausted_with_pushback() {
    let app = spawn_upstream(|_req| async {
        let mut resp = text_response(200, "");
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        resp.headers_mut()
            .insert("grpc-status", "0".parse().expect("value"));
        resp
    })
    .await;
    let proxy = spawn_binary(app.addr, &["--inbound-rate-limit=0.5/1"]).await;
    let call = || {
        Request::post(format!("http://{}/shop.Orders/Get", proxy.addrs.inbound))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\0"[..]))
            .expect("request")
    };
    let first = h2_send_to(proxy.addrs.inbound, call()).await;
    assert_eq!(first.status, 200);
    let refused = h2_send_to(proxy.addrs.inbound, call()).await;
    assert_eq!(refused.status, 200, "gRPC answers ride on HTTP 200");
    let header = |name: &str| {
        refused
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("grpc-status"), "8", "RESOURCE_EXHAUSTED");
    assert_eq!(header("x-breakwater-reason"), "rate-limited");
    assert!(
        header("grpc-message").contains("rate"),
        "{}",
        header("grpc-message")
    );
    let pushback: u64 = header("grpc-retry-pushback-ms")
        .parse()
        .expect("pushback ms");
    assert!(
        (1_000..=2_000).contains(&pushback),
        "the next token comes in about two seconds: {pushback} ms"
    );
    assert_eq!(app.hits(), 1);
}

/// Counts `needle` in a byte stream read in pieces (`tail` carries the
/// bytes that may start a match across reads).
fn count_across(tail: &mut Vec<u8>, chunk: &[u8], needle: &[u8]) -> usize {
    tail.extend_from_slice(chunk);
    let n = tail.windows(needle.len()).filter(|w| *w == needle).count();
    let keep = tail.len().min(needle.len() - 1);
    tail.drain(..tail.len() - keep);
    n
}

/// An HTTP/1.1 app that answers every request head it reads with a 200, as
/// fast as a loopback socket goes: the test measures the proxy, not the app.
async fn spawn_fast_app() -> crate::support::Upstream {
    crate::support::spawn_raw(|mut stream| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (mut buf, mut tail) = (vec![0u8; 64 * 1024], Vec::new());
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let heads = count_across(&mut tail, &buf[..n], b"\r\n\r\n");
            if stream.write_all(&OK.repeat(heads)).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// GETs with `x-key: client-K` for every K in `keys`, pipelined on four
/// connections: how many were answered 200.
async fn pipelined_keys(addr: std::net::SocketAddr, keys: std::ops::Range<usize>) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let all: Vec<usize> = keys.collect();
    let lanes = all.chunks(all.len().div_ceil(4)).map(|lane| {
        let lane = lane.to_vec();
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let want = lane.len();
            let writer = tokio::spawn(async move {
                for batch in lane.chunks(256) {
                    let mut bytes = Vec::new();
                    for k in batch {
                        bytes.extend_from_slice(
                            format!("GET / HTTP/1.1\r\nhost: app\r\nx-key: client-{k:08}\r\n\r\n")
                                .as_bytes(),
                        );
                    }
                    write.write_all(&bytes).await.expect("write requests");
                }
                write
            });
            let (mut buf, mut answers, mut oks) = (vec![0u8; 64 * 1024], Vec::new(), Vec::new());
            let (mut answered, mut ok) = (0, 0);
            while answered < want {
                let n = tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf))
                    .await
                    .expect("answers keep coming")
                    .expect("read answers");
                assert!(n > 0, "the proxy closed after {answered} of {want} answers");
                answered += count_across(&mut answers, &buf[..n], b"HTTP/1.1 ");
                ok += count_across(&mut oks, &buf[..n], b"HTTP/1.1 200");
            }
            drop(writer.await.expect("writer"));
            ok
        }
    });
    futures_util::future::join_all(lanes)
        .await
        .into_iter()
        .sum()
}

/// A client that sends a new key with every request cannot grow the proxy's
/// memory: the keyed limit keeps the 10,000 most recent keys.
#[tokio::test]
async fn one_hundred_thousand_distinct_keys_stay_bounded() {
    let app = spawn_fast_app().await;
    let proxy = spawn_binary(
        app.addr,
        &["--route=*,direction=inbound,inbound-rate-limit=0.01/1,rate-limit-key=x-key"],
    )
    .await;
    let pid = proxy.child.id();
    assert_eq!(
        pipelined_keys(proxy.addrs.inbound, 0..20_000).await,
        20_000,
        "every new key has a token"
    );
    let (_, rss_at_20k) = memory_kib(pid);
    assert_eq!(
        pipelined_keys(proxy.addrs.inbound, 20_000..100_000).await,
        80_000
    );
    let (_, rss_at_100k) = memory_kib(pid);

    let snapshot = get(
        &client(),
        &format!("http://{}/upstreams", proxy.addrs.admin),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&snapshot.body).expect("JSON");
    let keys: Vec<u64> = json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["rate_limit"]["keys"].as_u64())
        .collect();
    assert_eq!(keys, [10_000], "the LRU holds the cap, no more: {keys:?}");
    assert!(
        rss_at_100k <= rss_at_20k + 4 * 1024,
        "80,000 more keys grew RSS from {rss_at_20k} KiB to {rss_at_100k} KiB"
    );
    let url = format!("http://{}/", proxy.addrs.inbound);
    // The oldest keys were evicted: client-00000000 has a fresh bucket again.
    assert_eq!(
        statuses(&url, Some(("x-key", "client-00000000")), 1).await,
        [200]
    );
    // The newest is remembered: its one token is spent.
    assert_eq!(
        statuses(&url, Some(("x-key", "client-00099999")), 1).await,
        [429]
    );
}
