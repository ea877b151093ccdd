//! `--discovery kubernetes` against the fake API server of `kube_api.rs`: the
//! Service `orders` in namespace `shop` (ClusterIP 10.96.0.10, port 80 named
//! `http`, targetPort `http`) and its EndpointSlice, whose pods are real servers
//! on their own loopback addresses (127.0.0.2-4, one port for all; Linux routes
//! all of 127/8 to lo). The app sends to breakwater's outbound listener with
//! `Host: orders.shop:80`; the ClusterIP routes nowhere here, so a pod answering a
//! request for `10.96.0.10:80` proves discovery mapped it.
//!
//! What `/upstreams` is read for: the destination (`"destination"` as the Host
//! said it) has `"discovery": "kubernetes"`, or `"dns"` with a
//! `"discovery_fallback"` reason while the API cannot be used; its `endpoints`
//! are the ready pods, each `"address": "ip:port"` with a circuit of its own.
//!
//! Times from a slice change to traffic following it are printed (`eprintln`),
//! as is the memory a 10,000-endpoint Service costs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use breakwater::Config;
use breakwater::config::DiscoveryMode;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::kube_api::{Ep, FakeApi, SERVICES, SLICES};
use crate::support::*;

const NS: &str = "shop";
const SERVICE: &str = "orders";
const SLICE: &str = "orders-x7k2p";
const CLUSTER_IP: &str = "10.96.0.10";
const HOST: &str = "orders.shop:80";
const PODS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// What a pod does with a request.
const SERVE: u8 = 0;
/// Answers 500.
const FAIL: u8 = 1;
/// Reads the request head and resets the connection.
const RESET: u8 = 2;

/// A pod: a real server on its own loopback address, answering with that address.
struct Pod {
    ip: &'static str,
    hits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    /// Bumped to close every open connection (idle keep-alive ones too).
    close: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Pod {
    /// Requests seen (a reset one counts when its head was read).
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// From now on; [`RESET`] also closes the connections open, so that every
    /// request after comes on a new one and is reset.
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == RESET {
            self.close.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
        self.close.send_modify(|n| *n += 1);
    }
}

fn pod_on(listener: TcpListener, ip: &'static str) -> Pod {
    let hits = Arc::new(AtomicUsize::new(0));
    let mode = Arc::new(AtomicU8::new(SERVE));
    let (close, _) = tokio::sync::watch::channel(0u64);
    let (h, m, c) = (hits.clone(), mode.clone(), close.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let (hits, mode) = (h.clone(), m.clone());
            if mode.load(Ordering::SeqCst) == RESET {
                tokio::spawn(async move {
                    let _ = read_head(&mut stream).await;
                    hits.fetch_add(1, Ordering::SeqCst);
                    reset(stream);
                });
                continue;
            }
            let mut closed = c.subscribe();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let resp = if mode.load(Ordering::SeqCst) == FAIL {
                        text_response(500, &format!("{ip} failing"))
                    } else {
                        text_response(200, ip)
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = closed.changed() => {}
                }
            });
        }
    });
    Pod {
        ip,
        hits,
        mode,
        close,
        task,
    }
}

/// Pods on `ips`, all on one port (as pods of a Deployment are).
async fn pods(ips: &[&'static str]) -> (u16, Vec<Pod>) {
    for _ in 0..50 {
        let first = TcpListener::bind(format!("{}:0", ips[0]))
            .await
            .expect("bind a pod");
        let port = first.local_addr().expect("pod addr").port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(format!("{ip}:{port}")).await {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() == ips.len() {
            let pods = listeners
                .into_iter()
                .zip(ips)
                .map(|(l, ip)| pod_on(l, ip))
                .collect();
            return (port, pods);
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

fn discover(c: &mut Config, api: &str) {
    c.discovery.mode = DiscoveryMode::Kubernetes;
    c.discovery.api = Some(api.to_string());
    c.discovery.namespaces = vec![NS.into()];
}

/// Ready endpoints, as `put_slice` takes them.
fn ready(ips: &[&'static str]) -> Vec<(&'static str, bool, bool)> {
    ips.iter().map(|&ip| (ip, true, false)).collect()
}

fn request(outbound: SocketAddr, host: &str) -> Request<TestBody> {
    Request::get(format!("http://{outbound}/"))
        .header(http::header::HOST, host)
        .body(full(""))
        .expect("request")
}

/// Who answered: the pod's address for a 200, else the status and reason.
fn who(a: &Answer) -> String {
    if a.status == 200 {
        a.body.clone()
    } else {
        format!("{} {}", a.status, a.reason().unwrap_or(""))
    }
}

/// `n` requests to `host`, `concurrency` at a time; who answered how often.
async fn tally(
    client: &HttpClient,
    outbound: SocketAddr,
    host: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let (client, host) = (client.clone(), host.to_string());
        set.spawn(async move {
            let a = send(&client, request(outbound, &host)).await;
            drop(permit);
            who(&a)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(who) = set.join_next().await {
        *out.entry(who.expect("request task")).or_insert(0) += 1;
    }
    out
}

fn all_ok(t: &BTreeMap<String, usize>) -> bool {
    t.keys().all(|k| PODS.contains(&k.as_str()))
}

/// The destination `host` in a `/upstreams` answer.
fn destination<'a>(upstreams: &'a Value, host: &str) -> Option<&'a Value> {
    upstreams
        .as_array()?
        .iter()
        .find(|d| d["destination"] == host)
}

/// A destination's endpoint addresses, sorted.
fn addresses(dest: &Value) -> Vec<String> {
    let mut out: Vec<String> = dest["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn upstreams_at(client: &HttpClient, url: &str) -> Value {
    let a = get(client, url).await;
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("/upstreams is JSON: {e}: {}", a.body))
}

/// The API, the pods, the Service and breakwater in this process.
struct Cluster {
    api: FakeApi,
    pods: Vec<Pod>,
    port: u16,
    proxy: TestProxy,
    client: HttpClient,
}

impl Cluster {
    /// Pods on `running`; the Service and one slice with `listed` ready.
    async fn start(running: &[&'static str], listed: &[&'static str]) -> Cluster {
        let listed = ready(listed);
        Cluster::start_with(
            running,
            |api, port| {
                api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
                api.put_slice(NS, SLICE, SERVICE, &listed, &[("http", port)]);
            },
            |_| {},
        )
        .await
    }

    async fn start_with(
        running: &[&'static str],
        publish: impl FnOnce(&FakeApi, u16),
        tune: impl FnOnce(&mut Config),
    ) -> Cluster {
        let api = FakeApi::start().await;
        let (port, pods) = pods(running).await;
        publish(&api, port);
        let url = api.url();
        let proxy = spawn_proxy("127.0.0.1:9".parse().expect("addr"), |c| {
            discover(c, &url);
            tune(c);
        })
        .await;
        Cluster {
            api,
            pods,
            port,
            proxy,
            client: client(),
        }
    }

    fn pod(&self, ip: &str) -> &Pod {
        self.pods.iter().find(|p| p.ip == ip).expect("a pod")
    }

    fn addr(&self, ip: &str) -> String {
        format!("{ip}:{}", self.port)
    }

    fn addrs(&self, ips: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = ips.iter().map(|ip| self.addr(ip)).collect();
        out.sort();
        out
    }

    /// Replaces the Service's slice.
    fn set_slice(&self, endpoints: &[(&str, bool, bool)]) {
        self.api
            .put_slice(NS, SLICE, SERVICE, endpoints, &[("http", self.port)]);
    }

    async fn call(&self, host: &str) -> Answer {
        get_via(&self.client, &self.proxy, host, "/").await
    }

    async fn tally(&self, host: &str, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
        tally(&self.client, self.proxy.outbound(), host, n, concurrency).await
    }

    /// Until a pod answers for `host` (discovery has listed): at most 10 s.
    async fn warm(&self, host: &str) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = self.call(host).await;
            if a.status == 200 || Instant::now() > deadline {
                assert_eq!(
                    a.status,
                    200,
                    "{host} never reached a pod: {} {:?}; /upstreams: {}",
                    a.body,
                    a.reason(),
                    self.upstreams().await
                );
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn upstreams(&self) -> Value {
        upstreams_at(&self.client, &self.proxy.admin("/upstreams")).await
    }

    /// `host` in `/upstreams`; panics, showing it all, when it is not there.
    async fn destination(&self, host: &str) -> Value {
        let all = self.upstreams().await;
        destination(&all, host)
            .cloned()
            .unwrap_or_else(|| panic!("{host} in /upstreams: {all}"))
    }

    /// Waits until `host`'s endpoints are `want`; how long that took.
    async fn wait_for_endpoints(&self, host: &str, want: &[String], wait: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let all = self.upstreams().await;
            let now = destination(&all, host).map(addresses).unwrap_or_default();
            if now == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < wait,
                "{host}'s endpoints became {want:?} within {wait:?}: they are {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Asserts `host` is discovered from Kubernetes with endpoints `want`, each with a
/// circuit of its own.
fn assert_discovered(dest: &Value, want: &[String]) {
    assert_eq!(dest["discovery"], "kubernetes", "{dest}");
    assert_eq!(addresses(dest), want, "{dest}");
    for e in dest["endpoints"].as_array().expect("endpoints") {
        assert!(e["circuit"]["state"].is_string(), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_the_ready_pods() {
    // Two Service ports; only `http` (80) is asked for, and the slice names it
    // second: the port follows the name, not the order.
    let c = Cluster::start_with(
        &PODS,
        |api, port| {
            api.put_service(
                NS,
                SERVICE,
                CLUSTER_IP,
                &[("metrics", 9090, "metrics"), ("http", 80, "http")],
            );
            api.put_slice(
                NS,
                SLICE,
                SERVICE,
                &ready(&PODS),
                &[("metrics", port.wrapping_add(1)), ("http", port)],
            );
        },
        |_| {},
    )
    .await;
    c.warm(HOST).await;
    let t = c.tally(HOST, 150, 8).await;
    eprintln!("150 requests to {HOST}, 8 at a time: {t:?}");
    assert!(all_ok(&t), "{t:?}");
    for ip in PODS {
        assert!(
            t.get(ip).copied().unwrap_or(0) >= 8,
            "{ip} has a share: {t:?}"
        );
    }
    assert_discovered(&c.destination(HOST).await, &c.addrs(&PODS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_of_the_service_reaches_its_pods() {
    let c = Cluster::start(&PODS, &PODS).await;
    for host in [
        HOST,
        "orders.shop.svc.cluster.local:80",
        &format!("{CLUSTER_IP}:80"),
    ] {
        let a = c.warm(host).await;
        assert!(PODS.contains(&a.body.as_str()), "{host}: {}", a.body);
        let t = c.tally(host, 30, 4).await;
        assert!(all_ok(&t), "{host}: {t:?}");
        assert_discovered(&c.destination(host).await, &c.addrs(&PODS));
    }
    assert!(
        c.api.lists(SERVICES) >= 1,
        "the ClusterIP was found in the Services of {NS}"
    );
}

/// Sends to `host` one at a time until `pod`'s circuit is open in `/upstreams`
/// (at most 200 requests); the non-200 answers clients saw.
async fn until_ejected(c: &Cluster, host: &str, pod: &str) -> usize {
    let mut failed = 0;
    for _ in 0..200 {
        if c.call(host).await.status != 200 {
            failed += 1;
        }
        let dest = c.destination(host).await;
        let open = dest["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["address"] == c.addr(pod) && e["circuit"]["state"] == "open");
        if open {
            return failed;
        }
    }
    panic!(
        "{pod} was never ejected: {}",
        c.destination(host).await["endpoints"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_answering_500_is_ejected_while_the_others_serve() {
    let c = Cluster::start_with(
        &PODS,
        |api, port| {
            api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
            api.put_slice(NS, SLICE, SERVICE, &ready(&PODS), &[("http", port)]);
        },
        |config| config.breaker.open_duration = Duration::from_secs(60),
    )
    .await;
    c.warm(HOST).await;
    let bad = c.pod("127.0.0.4");
    let before = bad.hits();
    bad.set(FAIL);
    let failed = until_ejected(&c, HOST, bad.ip).await;
    // 500 is not retried by default: each failure reached a client.
    assert_eq!(
        bad.hits() - before,
        5,
        "five consecutive failures eject it (default breaker)"
    );
    assert_eq!(failed, 5, "clients saw exactly its five 500s");
    let t = c.tally(HOST, 40, 4).await;
    assert!(all_ok(&t), "only 200s once it is out: {t:?}");
    assert_eq!(bad.hits() - before, 5, "no request reached it once ejected");
    assert!(
        t.contains_key("127.0.0.2") && t.contains_key("127.0.0.3"),
        "the other two serve: {t:?}"
    );
    let dest = c.destination(HOST).await;
    assert_discovered(&dest, &c.addrs(&PODS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_resetting_connections_is_ejected_and_retries_hide_it() {
    let c = Cluster::start_with(
        &PODS,
        |api, port| {
            api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
            api.put_slice(NS, SLICE, SERVICE, &ready(&PODS), &[("http", port)]);
        },
        |config| config.breaker.open_duration = Duration::from_secs(60),
    )
    .await;
    c.warm(HOST).await;
    let bad = c.pod("127.0.0.4");
    bad.set(RESET);
    // Breakwater's pool sees its idle connections to the pod closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = bad.hits();
    let failed = until_ejected(&c, HOST, bad.ip).await;
    eprintln!(
        "resetting pod ejected after {} resets; clients saw {failed} failures (retries hide the rest)",
        bad.hits() - before
    );
    assert_eq!(bad.hits() - before, 5, "five consecutive resets eject it");
    let t = c.tally(HOST, 40, 4).await;
    assert!(all_ok(&t), "only 200s once it is out: {t:?}");
    assert_eq!(bad.hits() - before, 5, "no request reached it once ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_turning_not_ready_stops_getting_requests_within_a_second() {
    let c = Cluster::start(&PODS, &PODS).await;
    c.warm(HOST).await;
    let _ = c.tally(HOST, 30, 4).await;
    let gone = c.pod("127.0.0.4");
    let changed = Instant::now();
    c.set_slice(&[
        ("127.0.0.2", true, false),
        ("127.0.0.3", true, false),
        ("127.0.0.4", false, false),
    ]);
    // Traffic goes on; when did the not-ready pod last get a request?
    let mut last_hit = None;
    let mut seen = gone.hits();
    while changed.elapsed() < Duration::from_secs(1) {
        let t = c.tally(HOST, 4, 4).await;
        assert!(all_ok(&t), "no failures while it leaves: {t:?}");
        if gone.hits() > seen {
            seen = gone.hits();
            last_hit = Some(changed.elapsed());
        }
    }
    eprintln!("not-ready pod: its last request came {last_hit:?} after the slice change");
    c.wait_for_endpoints(
        HOST,
        &c.addrs(&["127.0.0.2", "127.0.0.3"]),
        Duration::from_millis(10),
    )
    .await;
    let t = c.tally(HOST, 40, 4).await;
    assert!(all_ok(&t), "{t:?}");
    assert_eq!(
        gone.hits(),
        seen,
        "no request for a not-ready pod after 1 s"
    );

    // A terminating pod (still serving) gets no new requests either.
    let draining = c.pod("127.0.0.3");
    let changed = Instant::now();
    c.set_slice(&[
        ("127.0.0.2", true, false),
        ("127.0.0.3", false, true),
        ("127.0.0.4", false, false),
    ]);
    let took = c
        .wait_for_endpoints(HOST, &c.addrs(&["127.0.0.2"]), Duration::from_secs(1))
        .await;
    eprintln!("terminating pod: out of /upstreams {took:?} after the slice change");
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(changed.elapsed())).await;
    let before = draining.hits();
    let t = c.tally(HOST, 30, 4).await;
    assert_eq!(t.get("127.0.0.2"), Some(&30), "{t:?}");
    assert_eq!(draining.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_gets_traffic_within_a_second() {
    let c = Cluster::start(&PODS, &["127.0.0.2", "127.0.0.3"]).await;
    c.warm(HOST).await;
    let t = c.tally(HOST, 40, 4).await;
    assert!(all_ok(&t) && !t.contains_key("127.0.0.4"), "{t:?}");
    let new = c.pod("127.0.0.4");
    assert_eq!(new.hits(), 0);
    let changed = Instant::now();
    c.set_slice(&ready(&PODS));
    let mut first = None;
    while changed.elapsed() < Duration::from_secs(1) {
        let t = c.tally(HOST, 8, 8).await;
        assert!(all_ok(&t), "{t:?}");
        if new.hits() > 0 {
            first = Some(changed.elapsed());
            break;
        }
    }
    eprintln!("new pod: first request {first:?} after the slice change");
    assert!(first.is_some(), "the new pod got a request within 1 s");
    assert_discovered(&c.destination(HOST).await, &c.addrs(&PODS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_the_last_known_set_serving() {
    let c = Cluster::start(&PODS, &PODS).await;
    c.warm(HOST).await;
    c.api.set_down(true);
    // The watch is cut and relisting fails for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = c.tally(HOST, 60, 4).await;
    assert!(all_ok(&t), "the pods still serve: {t:?}");
    let dest = c.destination(HOST).await;
    assert_discovered(&dest, &c.addrs(&PODS));
    eprintln!(
        "during the outage: {t:?}; /upstreams says {}",
        dest["discovery_fallback"]
    );
    // Back: the next change is followed.
    c.api.set_down(false);
    let back = Instant::now();
    c.set_slice(&ready(&["127.0.0.2", "127.0.0.3"]));
    c.wait_for_endpoints(
        HOST,
        &c.addrs(&["127.0.0.2", "127.0.0.3"]),
        Duration::from_secs(40),
    )
    .await;
    eprintln!(
        "after the outage: a change followed {:?} after the API came back",
        back.elapsed()
    );
    let t = c.tally(HOST, 30, 4).await;
    assert!(all_ok(&t) && !t.contains_key("127.0.0.4"), "{t:?}");
}

/// Requests go on (each a 200) until `done` holds; at most `wait`.
async fn serve_until(c: &Cluster, wait: Duration, what: &str, done: impl Fn(&FakeApi) -> bool) {
    let started = Instant::now();
    while !done(&c.api) {
        assert!(started.elapsed() < wait, "{what} within {wait:?}");
        let a = c.call(HOST).await;
        assert_eq!(
            a.status,
            200,
            "{what}: the set is kept meanwhile: {}",
            who(&a)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_the_set() {
    let c = Cluster::start(&PODS, &PODS).await;
    c.warm(HOST).await;
    c.api.wait_for_watch(SLICES, Duration::from_secs(5)).await;
    let lists = c.api.lists(SLICES);
    c.api.expire_watches();
    // A change the old watch never carries: the relist must bring it.
    let changed = Instant::now();
    c.set_slice(&ready(&["127.0.0.2", "127.0.0.3"]));
    serve_until(&c, Duration::from_secs(10), "a relist", |api| {
        api.lists(SLICES) > lists
    })
    .await;
    c.wait_for_endpoints(
        HOST,
        &c.addrs(&["127.0.0.2", "127.0.0.3"]),
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "410: relisted; the change made meanwhile followed {:?} after it",
        changed.elapsed()
    );
    let gone = c.pod("127.0.0.4").hits();
    let t = c.tally(HOST, 30, 4).await;
    assert!(all_ok(&t), "{t:?}");
    assert_eq!(c.pod("127.0.0.4").hits(), gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_resumes_without_losing_the_set() {
    let c = Cluster::start(&PODS, &PODS).await;
    c.warm(HOST).await;
    c.api.wait_for_watch(SLICES, Duration::from_secs(5)).await;
    let watches = c.api.watches(SLICES);
    c.api.break_watches();
    serve_until(&c, Duration::from_secs(10), "a new watch", |api| {
        api.watches(SLICES) > watches && api.open_watches(SLICES) > 0
    })
    .await;
    let t = c.tally(HOST, 30, 4).await;
    assert!(all_ok(&t), "{t:?}");
    assert_discovered(&c.destination(HOST).await, &c.addrs(&PODS));
    let changed = Instant::now();
    c.set_slice(&[
        ("127.0.0.2", true, false),
        ("127.0.0.3", true, false),
        ("127.0.0.4", false, false),
    ]);
    c.wait_for_endpoints(
        HOST,
        &c.addrs(&["127.0.0.2", "127.0.0.3"]),
        Duration::from_secs(1),
    )
    .await;
    eprintln!(
        "after a cut watch: a change followed in {:?}",
        changed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_line_on_the_watch_loses_nothing() {
    let c = Cluster::start(&PODS, &PODS).await;
    c.warm(HOST).await;
    c.api.wait_for_watch(SLICES, Duration::from_secs(5)).await;
    c.api.send_garbage();
    let t = c.tally(HOST, 30, 4).await;
    assert!(all_ok(&t), "{t:?}");
    assert_discovered(&c.destination(HOST).await, &c.addrs(&PODS));
    let changed = Instant::now();
    c.set_slice(&ready(&["127.0.0.2", "127.0.0.3"]));
    c.wait_for_endpoints(
        HOST,
        &c.addrs(&["127.0.0.2", "127.0.0.3"]),
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "after a garbage line: a change followed in {:?}",
        changed.elapsed()
    );
}

/// Asks for `orders.shop:80` until `/upstreams` reports the DNS fallback; the
/// last answer and the destination.
async fn until_fallback(c: &Cluster) -> (Answer, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = c.call(HOST).await;
        let all = c.upstreams().await;
        if let Some(dest) = destination(&all, HOST)
            && dest["discovery"] == "dns"
            && dest["discovery_fallback"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        {
            return (a, dest.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no DNS fallback reported: {}",
            destination(&all, HOST).cloned().unwrap_or(all.clone())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denial_from_the_start_falls_back_to_dns_and_says_why() {
    let other = spawn_echo().await;
    let c = Cluster::start_with(
        &PODS,
        |api, port| {
            api.set_forbidden(true);
            api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
            api.put_slice(NS, SLICE, SERVICE, &ready(&PODS), &[("http", port)]);
        },
        |_| {},
    )
    .await;
    let (a, dest) = until_fallback(&c).await;
    let reason = dest["discovery_fallback"].as_str().unwrap_or_default();
    eprintln!(
        "RBAC denied: {HOST} answered {}; fallback: {reason}",
        who(&a)
    );
    assert_eq!(a.status, 502, "orders.shop does not resolve here");
    assert!(
        reason.to_lowercase().contains("forbidden") || reason.contains("403"),
        "the reason names the denial: {reason}"
    );
    assert!(PODS.iter().all(|p| c.pod(p).hits() == 0));
    // Other destinations are served as ever.
    let host = other.addr.to_string();
    assert_eq!(c.call(&host).await.status, 200);
    // RBAC fixed: the Service's pods, once the watch is retried.
    c.api.set_forbidden(false);
    let fixed = Instant::now();
    let deadline = fixed + Duration::from_secs(40);
    loop {
        let a = c.call(HOST).await;
        if a.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "discovery never recovered: {}",
            c.destination(HOST).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("RBAC fixed: served by pods after {:?}", fixed.elapsed());
    assert_discovered(&c.destination(HOST).await, &c.addrs(&PODS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_falls_back_to_dns_and_says_why() {
    let other = spawn_echo().await;
    let nowhere = format!("http://127.0.0.1:{}", closed_port().await);
    let c = Cluster::start_with(
        &PODS,
        |_, _| {},
        |config| {
            config.discovery.api = Some(nowhere.clone());
        },
    )
    .await;
    let (a, dest) = until_fallback(&c).await;
    eprintln!(
        "API unreachable: {HOST} answered {}; fallback: {}",
        who(&a),
        dest["discovery_fallback"]
    );
    assert_eq!(a.status, 502, "orders.shop does not resolve here");
    let host = other.addr.to_string();
    assert_eq!(c.call(&host).await.status, 200);
}

/// `big`: 10,000 endpoints in ten slices of 1,000, as the EndpointSlice
/// controller caps them; on loopback addresses where nothing listens.
fn big_slices() -> Vec<(String, Vec<Ep>)> {
    (0..10u32)
        .map(|s| {
            let eps = (0..1000u32)
                .map(|i| Ep::ready(&format!("127.{}.{}.{}", 20 + s, i / 250, i % 250 + 1)))
                .collect();
            (format!("big-{s:05}"), eps)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_endpoints_fit_in_bounded_memory() {
    let api = FakeApi::start().await;
    let (port, _pods) = pods(&PODS).await;
    api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
    api.put_slice(NS, SLICE, SERVICE, &ready(&PODS), &[("http", port)]);
    api.put_service(NS, "big", "10.96.0.20", &[("http", 80, "http")]);
    let app = spawn_echo().await;
    // The binary, alone in its process: its memory is its own.
    let url = api.url();
    let proxy = spawn_binary(
        app.addr,
        &[
            "--discovery=kubernetes",
            &format!("--kubernetes-api={url}"),
            &format!("--discovery-namespaces={NS}"),
        ],
    )
    .await;
    let c = client();
    let outbound = proxy.addrs.outbound;
    let admin = format!("http://{}/upstreams", proxy.addrs.admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&c, request(outbound, HOST)).await.status != 200 {
        assert!(Instant::now() < deadline, "{HOST} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tally(&c, outbound, HOST, 100, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = proxy.child.id();
    let (hwm_before, rss_before) = memory_kib(pid);

    let dead = closed_port().await;
    let slices = big_slices();
    api.put_slices(NS, "big", &slices, &[("http", dead)]);
    let started = Instant::now();
    // The first request makes the destination (its pods refuse: no matter).
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        send(&c, request(outbound, "big.shop:80")),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = |all: &Value| {
        destination(all, "big.shop:80")
            .and_then(|d| d["endpoints"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    loop {
        let all = upstreams_at(&c, &admin).await;
        if count(&all) == 10_000 {
            assert_eq!(
                destination(&all, "big.shop:80").unwrap()["discovery"],
                "kubernetes"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "big.shop:80 has {} endpoints",
            count(&all)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let learned = started.elapsed();
    let (hwm_after, rss_after) = memory_kib(pid);
    let growth_kib = rss_after.saturating_sub(rss_before);
    eprintln!(
        "10,000 endpoints: learned in {learned:?}; RSS {rss_before} -> {rss_after} KiB (+{} MiB), peak {hwm_before} -> {hwm_after} KiB",
        growth_kib / 1024
    );
    assert!(
        growth_kib < 64 * 1024,
        "10,000 endpoints cost {growth_kib} KiB"
    );
    // One slice of the ten goes: followed in?
    let changed = Instant::now();
    api.delete_slice(NS, &slices[9].0);
    loop {
        let all = upstreams_at(&c, &admin).await;
        if count(&all) == 9_000 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "big.shop:80 has {} endpoints",
            count(&all)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "10,000 endpoints: a slice deletion reached /upstreams in {:?}",
        changed.elapsed()
    );
    // orders still served.
    let t = tally(&c, outbound, HOST, 30, 4).await;
    assert!(all_ok(&t), "{t:?}");
}

/// Three grpcio servers on 127.0.0.2-4 (one port for all), each answering its
/// address, and a grpcio client with one channel to breakwater's outbound
/// listener, `:authority` naming the Service. Prints the port, reads the
/// outbound address and the authority, makes 120 unary calls, 8 at a time, and
/// prints the count of each answer.
const GRPC_PODS: &str = r#"
import sys, json, collections
from concurrent import futures
import grpc

def pods():
    for _ in range(50):
        servers, port = [], 0
        for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            handler = grpc.method_handlers_generic_handler("spread.Who", {
                "Am": grpc.unary_unary_rpc_method_handler(lambda req, ctx, n=ip: n.encode()),
            })
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=(handler,))
            got = server.add_insecure_port(f"{ip}:{port}")
            if got == 0:
                break
            port = got
            servers.append(server)
        if len(servers) == 3:
            return servers, port
    sys.exit("no port free on all three addresses")

servers, port = pods()
for server in servers:
    server.start()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_from_one_channel_spread_over_the_discovered_pods() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if skip_unless(has_grpc, "python3 with grpcio") {
        return;
    }
    let mut python = Command::new("python3")
        .args(["-c", GRPC_PODS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(python.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the pods' port");
    let port: u16 = line.trim().parse().expect("a port number");

    let api = FakeApi::start().await;
    api.put_service(NS, SERVICE, CLUSTER_IP, &[("grpc", 80, "grpc")]);
    api.put_slice(NS, SLICE, SERVICE, &ready(&PODS), &[("grpc", port)]);
    let url = api.url();
    // One connection per endpoint: any spread comes from discovery, not from
    // several connections to one address.
    let proxy = spawn_proxy("127.0.0.1:9".parse().expect("addr"), |c| {
        discover(c, &url);
        c.h2_connections_per_endpoint = 1;
    })
    .await;
    let mut stdin = python.stdin.take().expect("stdin");
    writeln!(stdin, "{} {HOST}", proxy.outbound()).expect("write");
    let result = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).expect("the counts");
        line
    })
    .await
    .expect("read");
    let _ = python.wait();
    let counts: BTreeMap<String, usize> =
        serde_json::from_str(result.trim()).unwrap_or_else(|e| panic!("{e}: {result}"));
    eprintln!("gRPC (grpcio), one channel, 120 calls at concurrency 8, discovered: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 120, "{counts:?}");
    assert_eq!(counts.len(), 3, "every pod answered: {counts:?}");
    assert!(
        counts.values().all(|&n| n >= 15),
        "balanced per request: {counts:?}"
    );
    let dest = destination(
        &upstreams_at(&client(), &proxy.admin("/upstreams")).await,
        HOST,
    )
    .cloned()
    .unwrap_or_default();
    assert_eq!(dest["discovery"], "kubernetes", "{dest}");
}

/// The `breakwater_circuit_state` lines of `host`, by their `endpoint` label.
fn circuit_endpoints(metrics: &str, host: &str) -> Vec<String> {
    let dest = format!(r#"destination="{host}""#);
    let mut out: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("breakwater_circuit_state{") && l.contains(&dest))
        .filter_map(|l| l.split(r#"endpoint=""#).nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_series_stay_at_the_endpoint_cap_and_leave_with_their_pods() {
    const MANY: [&str; 10] = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "127.0.0.8",
        "127.0.0.9",
        "127.0.0.10",
        "127.0.0.11",
    ];
    let c = Cluster::start_with(
        &MANY,
        |api, port| {
            api.put_service(NS, SERVICE, CLUSTER_IP, &[("http", 80, "http")]);
            api.put_slice(NS, SLICE, SERVICE, &ready(&MANY), &[("http", port)]);
        },
        |c| c.metrics_max_endpoints = 4,
    )
    .await;
    c.warm(HOST).await;
    c.wait_for_endpoints(HOST, &c.addrs(&MANY), Duration::from_secs(5))
        .await;
    let metrics = get(&c.client, &c.proxy.admin("/metrics")).await.body;
    let shown = circuit_endpoints(&metrics, HOST);
    assert_eq!(shown.len(), 5, "4 pods of their own and other: {shown:?}");
    assert!(shown.contains(&"other".to_string()), "{shown:?}");

    // Eight pods leave: their series go with them, and the folded one with
    // the last of its members.
    let staying = ["127.0.0.2", "127.0.0.3"];
    c.set_slice(&ready(&staying));
    c.wait_for_endpoints(HOST, &c.addrs(&staying), Duration::from_secs(5))
        .await;
    let _ = c.tally(HOST, 10, 2).await;
    let metrics = get(&c.client, &c.proxy.admin("/metrics")).await.body;
    let shown = circuit_endpoints(&metrics, HOST);
    assert_eq!(shown.len(), 2, "{shown:?}");
    for gone in &MANY[2..] {
        let addr = c.addr(gone);
        assert!(
            !metrics.contains(&addr),
            "{addr} left, its series too:\n{metrics}"
        );
    }
}
