//! Calls spread over the pods behind one ClusterIP. kube-proxy picks a pod per
//! TCP connection, so breakwater sees one endpoint and spreads only as far as
//! its connections do: over `--h2-connections-per-endpoint` HTTP/2
//! connections, over its pooled HTTP/1.1 ones, and to pods added later as
//! `--upstream-max-connection-age` replaces connections.
//!
//! The "kube-proxy" here is a TCP listener in the test that sends each
//! connection it accepts to the next of its backends in turn (IPVS's `rr`; the
//! iptables mode draws at random) and splices the bytes both ways. The backends
//! are real HTTP/1.1 and h2c servers (hyper), and grpcio servers for the gRPC
//! check. Each test prints the spread it measured (`--nocapture`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP balancer in front of backends that may be added to while it runs.
struct KubeProxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// The connections being spliced.
    spliced: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl KubeProxy {
    async fn start(backends: &[&Upstream]) -> KubeProxy {
        Self::start_at(backends.iter().map(|b| b.addr).collect()).await
    }

    async fn start_at(backends: Vec<SocketAddr>) -> KubeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let list = Arc::new(Mutex::new(backends));
        let chosen = list.clone();
        let spliced = Arc::new(Mutex::new(Vec::new()));
        let splices = spliced.clone();
        let task = tokio::spawn(async move {
            let mut turn = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let backend = {
                    let list = chosen.lock().unwrap();
                    turn += 1;
                    list[turn % list.len()]
                };
                let splice = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                splices.lock().unwrap().push(splice);
            }
        });
        KubeProxy {
            addr,
            backends: list,
            spliced,
            task,
        }
    }

    /// Closes every connection it carries, as a node's restart would.
    fn cut(&self) {
        for splice in self.spliced.lock().unwrap().drain(..) {
            splice.abort();
        }
    }

    /// A scale-up: one more pod behind the ClusterIP.
    fn add(&self, backend: &Upstream) {
        self.backends.lock().unwrap().push(backend.addr);
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pod: answers its name; `/slow` streams 12 chunks, 100 ms apart.
async fn pod(name: &'static str) -> Upstream {
    spawn_upstream(move |req| async move {
        if req.uri().path() != "/slow" {
            return text_response(200, name);
        }
        let chunks = futures_util::stream::unfold(0u32, |i| async move {
            if i == 12 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let chunk = Frame::data(Bytes::from_static(b"chunk;"));
            Some((Ok::<_, BoxError>(chunk), i + 1))
        });
        http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
    })
    .await
}

async fn pods(n: usize) -> Vec<Upstream> {
    const NAMES: [&str; 4] = ["pod-a", "pod-b", "pod-c", "pod-d"];
    let mut pods = Vec::new();
    for name in &NAMES[..n] {
        pods.push(pod(name).await);
    }
    pods
}

fn hits(pods: &[Upstream]) -> Vec<usize> {
    pods.iter().map(Upstream::hits).collect()
}

fn connections(pods: &[Upstream]) -> usize {
    pods.iter().map(Upstream::connections).sum()
}

/// What `/upstreams` shows as the endpoint's `h2_connections`.
async fn h2_connections_shown(proxy: &TestProxy, endpoint: SocketAddr) -> Option<usize> {
    fn find(v: &serde_json::Value, address: &str) -> Option<usize> {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("address").and_then(|a| a.as_str()) == Some(address) {
                    return map.get("h2_connections")?.as_u64().map(|n| n as usize);
                }
                map.values().find_map(|v| find(v, address))
            }
            serde_json::Value::Array(list) => list.iter().find_map(|v| find(v, address)),
            _ => None,
        }
    }
    let upstreams = get(&client(), &proxy.admin("/upstreams")).await;
    let json: serde_json::Value = serde_json::from_str(&upstreams.body).expect("JSON");
    find(&json, &endpoint.to_string())
}

/// One HTTP/2 (h2c) connection to breakwater's outbound listener, as an app's
/// gRPC channel keeps.
async fn h2_channel(proxy: &TestProxy) -> http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(proxy.outbound()).await.expect("connect");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A GET over the app's HTTP/2 connection, `:authority` naming the ClusterIP.
async fn h2_get(channel: &http2::SendRequest<TestBody>, to: SocketAddr, path: &str) -> Answer {
    let req = Request::get(format!("http://{to}{path}"))
        .version(Version::HTTP_2)
        .body(full(""))
        .expect("request");
    let resp = channel
        .clone()
        .send_request(req)
        .await
        .expect("response from the proxy");
    answer(resp).await
}

/// `n` GETs over one HTTP/2 connection, `concurrency` at a time.
async fn h2_calls(proxy: &TestProxy, to: SocketAddr, n: usize, concurrency: usize) {
    let channel = h2_channel(proxy).await;
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|_| {
            let channel = channel.clone();
            async move { h2_get(&channel, to, "/").await.status }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// `n` HTTP/1.1 GETs through the outbound listener (`Host` naming the
/// ClusterIP), `concurrency` at a time, from a pooled client.
async fn h1_calls(proxy: &TestProxy, to: SocketAddr, n: usize, concurrency: usize) {
    let c = client();
    let host = to.to_string();
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|_| {
            let (c, host) = (c.clone(), host.clone());
            async move { get_via(&c, proxy, &host, "/").await.status }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn http2_calls_spread_over_the_pods_by_connection() {
    for n in [1, 4] {
        let pods = pods(3).await;
        let cluster_ip = KubeProxy::start(&pods.iter().collect::<Vec<_>>()).await;
        // The app: no pod, so that its health probes do not count as calls.
        let app = spawn_echo().await;
        let proxy = spawn_proxy(app.addr, |c| {
            c.h2_connections_per_endpoint = n;
            c.upstream_max_connection_age = None;
        })
        .await;
        h2_calls(&proxy, cluster_ip.addr, 240, 8).await;
        let spread = hits(&pods);
        eprintln!(
            "HTTP/2, one client connection, 240 calls at concurrency 8, {n} connection(s) \
             per endpoint: pods got {spread:?} over {} connection(s)",
            connections(&pods)
        );
        assert_eq!(spread.iter().sum::<usize>(), 240);
        assert_eq!(connections(&pods), n, "opened up to the limit, no more");
        if n == 1 {
            assert_eq!(spread.iter().filter(|h| **h > 0).count(), 1, "{spread:?}");
        } else {
            // Four connections in turn over three pods: 2/4, 1/4, 1/4.
            assert!(spread.iter().all(|h| *h >= 30), "{spread:?}");
        }
        assert_eq!(
            h2_connections_shown(&proxy, cluster_ip.addr).await,
            Some(n),
            "/upstreams shows the connections"
        );
    }
    // A sequential client spreads as well: the first call opens a connection
    // and waits for it, the next ones open the others beside it, and once they
    // are open the calls take them in turn.
    let pods = pods(3).await;
    let cluster_ip = KubeProxy::start(&pods.iter().collect::<Vec<_>>()).await;
    // The app: no pod, so that its health probes do not count as calls.
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.h2_connections_per_endpoint = 3).await;
    h2_calls(&proxy, cluster_ip.addr, 3, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections(&pods), 3);
    let before = hits(&pods);
    h2_calls(&proxy, cluster_ip.addr, 30, 1).await;
    let turns: Vec<usize> = hits(&pods)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(turns, [10, 10, 10], "three connections in turn");
}

#[tokio::test]
async fn broken_http2_connections_are_replaced() {
    let pods = pods(3).await;
    let cluster_ip = KubeProxy::start(&pods.iter().collect::<Vec<_>>()).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.h2_connections_per_endpoint = 2).await;
    h2_calls(&proxy, cluster_ip.addr, 10, 2).await;
    assert_eq!(connections(&pods), 2);
    cluster_ip.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h2_calls(&proxy, cluster_ip.addr, 10, 2).await;
    assert_eq!(
        connections(&pods),
        4,
        "two new ones in place of the two cut"
    );
    assert_eq!(h2_connections_shown(&proxy, cluster_ip.addr).await, Some(2));
}

#[tokio::test]
async fn a_further_connection_closed_before_settings_teaches_nothing() {
    // Behind the ClusterIP, a pod that is going away: it accepts and closes.
    // The first connection reaches the live pod, the second the closing one.
    let closing = spawn_raw(|stream| async move { drop(stream) }).await;
    let live = pod("pod-a").await;
    let cluster_ip = KubeProxy::start(&[&closing, &live]).await;
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| c.h2_connections_per_endpoint = 2).await;
    let channel = h2_channel(&proxy).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let req = Request::post(format!("http://{}/pkg.Service/Call", cluster_ip.addr))
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(""))
            .expect("request");
        let a = answer(channel.clone().send_request(req).await.expect("response")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.reason(), None, "not refused as not speaking HTTP/2");
        assert_eq!(a.body, "pod-a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closing.connections() >= 1, "a further connection was tried");
    assert_eq!(
        live.connections(),
        2,
        "after a wait, the next try reached the live pod"
    );
    let upstreams = get(&client(), &proxy.admin("/upstreams")).await;
    assert!(
        upstreams.body.contains("\"h2\": true"),
        "still known to speak HTTP/2: {}",
        upstreams.body
    );
}

#[tokio::test]
async fn http1_calls_spread_by_connection_with_concurrency() {
    for concurrency in [1, 8] {
        let pods = pods(3).await;
        let cluster_ip = KubeProxy::start(&pods.iter().collect::<Vec<_>>()).await;
        // The app: no pod, so that its health probes do not count as calls.
        let app = spawn_echo().await;
        let proxy = spawn_proxy(app.addr, |c| c.upstream_max_connection_age = None).await;
        h1_calls(&proxy, cluster_ip.addr, 300, concurrency).await;
        let spread = hits(&pods);
        eprintln!(
            "HTTP/1.1, 300 calls at concurrency {concurrency}: pods got {spread:?} over {} \
             connection(s)",
            connections(&pods)
        );
        assert_eq!(spread.iter().sum::<usize>(), 300);
        if concurrency == 1 {
            assert_eq!(spread.iter().filter(|h| **h > 0).count(), 1, "{spread:?}");
        } else {
            assert!(spread.iter().all(|h| *h >= 20), "{spread:?}");
        }
    }
}

/// Calls one at a time for `long`, the 4th pod added after `add_after`;
/// returns how long after its addition the 4th pod got its first call.
async fn scale_up(
    age: Option<Duration>,
    http2: bool,
    add_after: Duration,
    long: Duration,
) -> Option<Duration> {
    let pods = pods(4).await;
    let cluster_ip = KubeProxy::start(&pods[..3].iter().collect::<Vec<_>>()).await;
    // The app: no pod, so that its health probes do not count as calls.
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.h2_connections_per_endpoint = 1;
        c.upstream_max_connection_age = age;
    })
    .await;
    let channel = h2_channel(&proxy).await;
    let c = client();
    let host = cluster_ip.addr.to_string();
    let start = Instant::now();
    let mut added = None;
    let mut first_call = None;
    while start.elapsed() < long {
        if added.is_none() && start.elapsed() >= add_after {
            cluster_ip.add(&pods[3]);
            added = Some(Instant::now());
        }
        let a = if http2 {
            h2_get(&channel, cluster_ip.addr, "/").await
        } else {
            get_via(&c, &proxy, &host, "/").await
        };
        assert_eq!(a.status, 200, "{}", a.body);
        if let Some(at) = added
            && first_call.is_none()
            && pods[3].hits() > 0
        {
            first_call = Some(at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "scale-up, {}, max age {age:?}: pods got {:?} over {} connections; the new pod's \
         first call {first_call:?} after it was added",
        if http2 { "HTTP/2" } else { "HTTP/1.1" },
        hits(&pods),
        connections(&pods)
    );
    first_call
}

#[tokio::test]
async fn a_pod_added_behind_the_cluster_ip_gets_calls_once_connections_age() {
    let age = Some(Duration::from_millis(300));
    let (add, long) = (Duration::from_millis(500), Duration::from_millis(3500));
    for http2 in [true, false] {
        let first = scale_up(age, http2, add, long).await;
        assert!(
            first.is_some_and(|t| t < Duration::from_millis(2500)),
            "http2 {http2}: the new pod's first call came {first:?} after it was added"
        );
        let never = scale_up(None, http2, add, long).await;
        assert_eq!(
            never, None,
            "http2 {http2}: without an age the one connection stays on its pod"
        );
    }
}

#[tokio::test]
async fn calls_in_flight_are_not_cut_by_the_age() {
    let pods = pods(3).await;
    let cluster_ip = KubeProxy::start(&pods.iter().collect::<Vec<_>>()).await;
    // The app: no pod, so that its health probes do not count as calls.
    let app = spawn_echo().await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.h2_connections_per_endpoint = 1;
        c.upstream_max_connection_age = Some(Duration::from_millis(200));
    })
    .await;
    let channel = h2_channel(&proxy).await;
    // Slow calls (1.2 s of body, six ages) over HTTP/2 and HTTP/1.1, while
    // quick calls keep coming and replace the connections they started on.
    let slow_h2 = {
        let channel = channel.clone();
        let to = cluster_ip.addr;
        tokio::spawn(async move { h2_get(&channel, to, "/slow").await })
    };
    let slow_h1 = {
        let host = cluster_ip.addr.to_string();
        let outbound = proxy.outbound();
        tokio::spawn(async move {
            let req = Request::get(format!("http://{outbound}/slow"))
                .header(http::header::HOST, host)
                .body(full(""))
                .expect("request");
            send(&client(), req).await
        })
    };
    let quick = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    while !(slow_h2.is_finished() && slow_h1.is_finished()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slow calls hang"
        );
        let a = h2_get(&channel, cluster_ip.addr, "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        quick.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, slow) in [("HTTP/2", slow_h2), ("HTTP/1.1", slow_h1)] {
        let a = slow.await.expect("slow call");
        assert_eq!(a.status, 200, "{name}: {}", a.body);
        assert_eq!(a.body, "chunk;".repeat(12), "{name}: the whole body");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1100),
        "the slow calls streamed: {took:?}"
    );
    assert!(
        connections(&pods) >= 4,
        "the quick calls went over new connections meanwhile: {} connections, {} calls",
        connections(&pods),
        quick.load(Ordering::Relaxed)
    );
}

/// Three grpcio servers, each answering its name, and a grpcio client: one
/// channel to breakwater's outbound listener, `:authority` naming the
/// ClusterIP. Prints the servers' ports, reads the outbound address and the
/// authority, makes 120 unary calls, 8 at a time, and prints the count of each
/// name.
const GRPC_SPREAD: &str = r#"
import sys, json, collections
from concurrent import futures
import grpc

servers = []
for name in ("pod-a", "pod-b", "pod-c"):
    handler = grpc.method_handlers_generic_handler("spread.Who", {
        "Am": grpc.unary_unary_rpc_method_handler(lambda req, ctx, n=name: n.encode()),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servers.append(server)
    print(port, flush=True)
outbound, authority = sys.stdin.readline().split()
channel = grpc.insecure_channel(outbound, options=[
    ("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)])
call = channel.unary_unary("/spread.Who/Am")
with futures.ThreadPoolExecutor(max_workers=8) as pool:
    names = list(pool.map(lambda _: call(b"", timeout=10).decode(), range(120)))
print(json.dumps(collections.Counter(names)), flush=True)
for server in servers:
    server.stop(0)
"#;

#[tokio::test]
async fn grpc_calls_from_one_channel_spread_over_the_pods() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if skip_unless(has_grpc, "python3 with grpcio") {
        return;
    }
    let mut spreads = Vec::new();
    for n in [1, 4] {
        let mut python = Command::new("python3")
            .args(["-c", GRPC_SPREAD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(python.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            line.clear();
            out.read_line(&mut line).expect("a port");
            let port: u16 = line.trim().parse().expect("a port number");
            ports.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let cluster_ip = KubeProxy::start_at(ports).await;
        let app = spawn_echo().await;
        let proxy = spawn_proxy(app.addr, |c| c.h2_connections_per_endpoint = n).await;
        let mut stdin = python.stdin.take().expect("stdin");
        writeln!(stdin, "{} {}", proxy.outbound(), cluster_ip.addr).expect("write");
        let result = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            out.read_line(&mut line).expect("the counts");
            line
        })
        .await
        .expect("read");
        let _ = python.wait();
        let counts: std::collections::BTreeMap<String, usize> =
            serde_json::from_str(result.trim()).unwrap_or_else(|e| panic!("{e}: {result}"));
        eprintln!(
            "gRPC (grpcio), one channel, 120 calls at concurrency 8, {n} connection(s) per \
             endpoint: {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 120, "{counts:?}");
        spreads.push(counts);
    }
    assert_eq!(
        spreads[0].len(),
        1,
        "one connection, one pod: {:?}",
        spreads[0]
    );
    assert_eq!(
        spreads[1].len(),
        3,
        "four connections, every pod: {:?}",
        spreads[1]
    );
}
