//! The per-request cost of breakwater's inbound path, against a baseline in the
//! same run: keep-alive GETs straight to a tiny hyper upstream ("direct") and the
//! same GETs through the real in-process proxy ("through"), interleaved in rounds,
//! then a few pure functions of the hot path in ns/op.
//!
//! Two set-ups for the end-to-end part:
//! - `one thread`: client, proxy and upstream share one current-thread runtime, so
//!   "added" is the CPU the proxy spends per request (parse, policy, pooled client,
//!   two more socket round trips), free of cross-thread wake-ups;
//! - `own threads`: the proxy on its own current-thread runtime (as `--threads 1`
//!   runs it), the upstream on another: the latency a caller sees, wake-ups included.
//!
//! Run: `cargo bench --bench request_path` (about 15 s after the build). Env:
//! `BENCH_REQUESTS` per batch (default 2000), `BENCH_ROUNDS` (default 7).

// A benchmark panics on what it set up itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use breakwater::metrics::{Direction, Metrics};
use breakwater::transport::headers;
use breakwater::{Config, Proxy};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::oneshot;

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let requests = env_usize("BENCH_REQUESTS", 2000);
    let rounds = env_usize("BENCH_ROUNDS", 7);
    println!(
        "request_path: {rounds} rounds x {requests} sequential keep-alive GETs per target, order alternating"
    );
    println!();
    end_to_end_one_thread(requests, rounds);
    end_to_end_own_threads(requests, rounds);
    pure_functions();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ------------------------------------------------------------------ end to end --

/// A hyper upstream answering every request with `ok\n` (nginx's `return 200`).
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Binds breakwater in front of `app` and runs it on the current runtime until
/// `stop` fires. Returns the inbound listener's address.
async fn proxy(
    app: SocketAddr,
    stop: oneshot::Receiver<()>,
) -> (SocketAddr, impl Future<Output = ()>) {
    let mut config = Config::loopback();
    config.app_addr = app;
    config.drain_timeout = Duration::from_secs(1);
    let proxy = Proxy::bind(config).await.expect("bind proxy");
    let inbound = proxy.addrs().inbound;
    let shutdown = proxy.shutdown_handle();
    tokio::spawn(async move {
        let _ = stop.await;
        shutdown.request();
    });
    let run = async move {
        proxy.run().await;
    };
    (inbound, run)
}

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(client: &BenchClient, uri: &http::Uri) {
    let resp = client.get(uri.clone()).await.expect("response");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    black_box(body);
}

/// `n` sequential GETs; each one's time in ns.
async fn batch(client: &BenchClient, uri: &http::Uri, n: usize, out: &mut Vec<u64>) {
    for _ in 0..n {
        let t = Instant::now();
        get(client, uri).await;
        out.push(t.elapsed().as_nanos() as u64);
    }
}

/// Direct and through, interleaved, on the caller's runtime; prints the summary.
async fn compare(title: &str, direct: SocketAddr, through: SocketAddr, n: usize, rounds: usize) {
    let client: BenchClient = Client::builder(TokioExecutor::new()).build_http();
    let direct_uri: http::Uri = format!("http://{direct}/").parse().expect("uri");
    let through_uri: http::Uri = format!("http://{through}/").parse().expect("uri");
    // Warm-up: connections, pools, allocator, caches.
    let mut sink = Vec::new();
    batch(&client, &direct_uri, 500, &mut sink).await;
    batch(&client, &through_uri, 500, &mut sink).await;

    let (mut d_all, mut t_all) = (Vec::new(), Vec::new());
    let (mut d_rounds, mut t_rounds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (mut d, mut t) = (Vec::with_capacity(n), Vec::with_capacity(n));
        if round % 2 == 0 {
            batch(&client, &direct_uri, n, &mut d).await;
            batch(&client, &through_uri, n, &mut t).await;
        } else {
            batch(&client, &through_uri, n, &mut t).await;
            batch(&client, &direct_uri, n, &mut d).await;
        }
        d_rounds.push(percentile(&mut d.clone(), 50.0));
        t_rounds.push(percentile(&mut t.clone(), 50.0));
        d_all.extend(d);
        t_all.extend(t);
    }
    let (d50, d90, d99) = (
        percentile(&mut d_all, 50.0),
        percentile(&mut d_all, 90.0),
        percentile(&mut d_all, 99.0),
    );
    let (t50, t90, t99) = (
        percentile(&mut t_all, 50.0),
        percentile(&mut t_all, 90.0),
        percentile(&mut t_all, 99.0),
    );
    let us = |ns: u64| ns as f64 / 1000.0;
    println!("== end to end, {title} ==");
    println!(
        "  {:<8} {:>9} {:>9} {:>9}",
        "", "p50 us", "p90 us", "p99 us"
    );
    println!(
        "  {:<8} {:>9.1} {:>9.1} {:>9.1}",
        "direct",
        us(d50),
        us(d90),
        us(d99)
    );
    println!(
        "  {:<8} {:>9.1} {:>9.1} {:>9.1}",
        "through",
        us(t50),
        us(t90),
        us(t99)
    );
    println!(
        "  added    {:>+9.1} {:>+9.1} {:>+9.1}   median ratio through/direct {:.2}",
        us(t50) - us(d50),
        us(t90) - us(d90),
        us(t99) - us(d99),
        t50 as f64 / d50 as f64
    );
    let added: Vec<String> = d_rounds
        .iter()
        .zip(&t_rounds)
        .map(|(d, t)| format!("{:+.1}", us(*t) - us(*d)))
        .collect();
    println!("  added p50 per round (us): {}", added.join(" "));
    println!();
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn end_to_end_one_thread(n: usize, rounds: usize) {
    current_thread().block_on(async {
        let app = upstream().await;
        let (stop, stopped) = oneshot::channel();
        let (inbound, run) = proxy(app, stopped).await;
        let proxy_task = tokio::spawn(run);
        compare(
            "one thread (client, proxy, upstream on one runtime)",
            app,
            inbound,
            n,
            rounds,
        )
        .await;
        let _ = stop.send(());
        let _ = proxy_task.await;
    });
}

fn end_to_end_own_threads(n: usize, rounds: usize) {
    let (app_tx, app_rx) = std::sync::mpsc::channel();
    let (app_stop, app_stopped) = oneshot::channel::<()>();
    let upstream_thread = std::thread::spawn(move || {
        current_thread().block_on(async {
            let _ = app_tx.send(upstream().await);
            let _ = app_stopped.await;
        });
    });
    let app = app_rx.recv().expect("upstream address");

    let (in_tx, in_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel();
    let proxy_thread = std::thread::spawn(move || {
        current_thread().block_on(async {
            let (inbound, run) = proxy(app, stopped).await;
            let _ = in_tx.send(inbound);
            run.await;
        });
    });
    let inbound = in_rx.recv().expect("proxy address");

    current_thread().block_on(compare(
        "own threads (proxy on its own current-thread runtime, as --threads 1)",
        app,
        inbound,
        n,
        rounds,
    ));
    let _ = stop.send(());
    let _ = proxy_thread.join();
    let _ = app_stop.send(());
    let _ = upstream_thread.join();
}

// -------------------------------------------------------------- pure functions --

/// Runs `f` in 5 batches of ~40 ms each; the median ns per call.
fn ns_per_op(mut f: impl FnMut()) -> f64 {
    // Calibrate: iterations for ~40 ms.
    let mut iters = 1_000u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let e = t.elapsed();
        if e >= Duration::from_millis(40) {
            break;
        }
        iters *= 4;
    }
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

/// The request head a typical HTTP/1.1 client sends (wrk, curl, a service's client).
fn typical_headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "payments.default.svc:8080"),
        ("user-agent", "okhttp/4.12.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("content-type", "application/json"),
        ("x-tenant", "acme"),
    ]
    .iter()
    .chain(extra)
    {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn pure_functions() {
    println!(
        "== hot-path functions (ns/op, median of 5 batches; \"net\" subtracts the clone baseline) =="
    );
    let plain = typical_headers(&[]);
    let keep_alive = typical_headers(&[("connection", "keep-alive")]);
    let traced = typical_headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let forwarded = typical_headers(&[("x-forwarded-for", "203.0.113.9")]);
    let peer_ip = HeaderValue::from_static("10.0.0.7");

    let base = ns_per_op(|| {
        black_box(black_box(&plain).clone());
    });
    let row = |name: &str, ns: f64, baseline: f64| {
        println!("  {name:<58} {ns:>8.1} ns   net {:>7.1} ns", ns - baseline);
    };
    row("HeaderMap::clone (6 headers, baseline)", base, base);

    let ns = ns_per_op(|| {
        let mut h = black_box(&plain).clone();
        headers::strip_hop_by_hop(&mut h, false);
        black_box(h);
    });
    row("strip_hop_by_hop, no Connection header", ns, base);

    let ns = ns_per_op(|| {
        let mut h = black_box(&keep_alive).clone();
        headers::strip_hop_by_hop(&mut h, false);
        black_box(h);
    });
    row("strip_hop_by_hop, Connection: keep-alive", ns, base);

    let ns = ns_per_op(|| {
        let mut h = black_box(&plain).clone();
        headers::ensure_request_id(&mut h);
        black_box(h);
    });
    row(
        "ensure_request_id, none yet (generates x-request-id)",
        ns,
        base,
    );

    let ns = ns_per_op(|| {
        let mut h = black_box(&traced).clone();
        headers::ensure_request_id(&mut h);
        black_box(headers::request_id(&h));
        black_box(h);
    });
    row("ensure_request_id + request_id, from traceparent", ns, base);

    let ns = ns_per_op(|| {
        let mut h = black_box(&plain).clone();
        headers::append_forwarded(&mut h, &peer_ip, "http");
        black_box(h);
    });
    row("append_forwarded, first hop", ns, base);

    let ns = ns_per_op(|| {
        let mut h = black_box(&forwarded).clone();
        headers::append_forwarded(&mut h, &peer_ip, "http");
        black_box(h);
    });
    row(
        "append_forwarded, second hop (joins X-Forwarded-For)",
        ns,
        base,
    );

    let ns = ns_per_op(|| {
        let mut h = black_box(&plain).clone();
        headers::ensure_request_id(&mut h);
        headers::strip_hop_by_hop(&mut h, false);
        headers::append_forwarded(&mut h, &peer_ip, "http");
        black_box(h);
    });
    row(
        "inbound header work together (id + strip + forwarded)",
        ns,
        base,
    );

    let metrics = Metrics::new();
    let dest = metrics.destination(Direction::Inbound, "127.0.0.1:8080", "default");
    let ns = ns_per_op(|| {
        dest.inflight.inc();
        dest.inflight.dec();
        dest.count_response(black_box(200));
        dest.duration.observe(black_box(0.000_25));
    });
    row(
        "metrics of one request (inflight, code 200, histogram)",
        ns,
        0.0,
    );

    let req = Request::get("/api/v1/charges?limit=10")
        .header("host", "payments.default.svc:8080")
        .body(())
        .expect("request");
    let ns = ns_per_op(|| {
        black_box(breakwater::destination::target_of(black_box(&req)).ok());
    });
    row("destination::target_of, Host header (outbound)", ns, 0.0);
    println!();
}
