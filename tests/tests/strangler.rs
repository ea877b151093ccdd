//! Strangler-fig route keys: `to=` and `split=` move requests to a new
//! destination (whose own route then applies), `mirror=` copies them to a
//! shadow in the background, `fault-abort=`/`fault-delay=` inject failures.
//! Every test runs real upstreams on loopback and looks at what a user sees:
//! statuses, `x-breakwater-reason`, where requests landed with which `Host`,
//! the admin `/metrics`, `/config` and `/upstreams`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::support::*;

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// The `Host` header, else the URI's authority (HTTP/2).
    host: String,
    /// `x-breakwater-mirror`, if the request carried it.
    mirror: Option<String>,
    body: Vec<u8>,
}

/// An upstream that answers naming itself (`x-upstream: NAME`, body `NAME`),
/// keeping what it saw.
struct Named {
    up: Upstream,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Named {
    fn addr(&self) -> String {
        self.up.addr.to_string()
    }

    fn port(&self) -> u16 {
        self.up.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until it has seen at least `n` requests, or `within` passed;
    /// returns how many it saw.
    async fn wait_for(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.count()
    }
}

/// A named upstream that answers 200, or `?status=N`, after `?ms=N`.
async fn named(name: &'static str) -> Named {
    named_with(name, None, Duration::ZERO).await
}

/// A named upstream; `fixed` makes it answer that status whatever the query
/// says, and it waits `hang` before answering (counted when the request arrives).
async fn named_with(name: &'static str, fixed: Option<u16>, hang: Duration) -> Named {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let up = spawn_upstream(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let query = parts.uri.query().unwrap_or("").to_string();
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let host = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let mirror = parts
                .headers
                .get("x-breakwater-mirror")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let (ms, status) = (param("ms"), param("status"));
            let seen_now = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                host,
                mirror,
                body: Vec::new(),
            };
            // Counted on arrival, so that a hanging upstream is seen at once.
            let at = {
                let mut log = log.lock().unwrap();
                log.push(seen_now);
                log.len() - 1
            };
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            log.lock().unwrap()[at].body = body;
            tokio::time::sleep(hang).await;
            if let Some(ms) = ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let status = fixed.unwrap_or_else(|| status.map_or(200, |s| s as u16));
            let mut resp = text_response(status, &format!("{name}\n"));
            resp.headers_mut()
                .insert("x-upstream", http::HeaderValue::from_static(name));
            resp
        }
    })
    .await;
    Named { up, seen }
}

/// A loopback address nothing listens on.
fn closed_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A request to the outbound listener at `outbound` with `Host: host`.
fn via(outbound: SocketAddr, method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{outbound}{path}"))
        .header(http::header::HOST, host)
}

/// Which named upstream answered.
fn side(a: &Answer) -> String {
    a.headers
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

/// Answers counted by the upstream that gave them.
fn tally<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for a in answers {
        *t.entry(side(a)).or_default() += 1;
    }
    t
}

/// Sends `n` requests made by `make(i)`, `workers` at a time; the answers in
/// order of `i`, each with how long it took.
async fn fire<F>(n: usize, workers: usize, make: F) -> Vec<(Answer, Duration)>
where
    F: Fn(usize) -> Request<TestBody> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let c = client();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (make, next, c) = (make.clone(), next.clone(), c.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let started = Instant::now();
                    let a = send(&c, make(i)).await;
                    out.push((i, a, started.elapsed()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, ..)| *i);
    all.into_iter().map(|(_, a, d)| (a, d)).collect()
}

/// `n` GETs of `path` with `Host: host`, 8 at a time.
async fn gets(proxy: &TestProxy, host: &str, path: &str, n: usize) -> Vec<Answer> {
    let (outbound, host, path) = (proxy.outbound(), host.to_string(), path.to_string());
    fire(n, 8, move |_| {
        via(outbound, "GET", &host, &path).body(full("")).unwrap()
    })
    .await
    .into_iter()
    .map(|(a, _)| a)
    .collect()
}

async fn metrics(proxy: &TestProxy) -> String {
    get(&client(), &proxy.admin("/metrics")).await.body
}

/// The proxy's metrics once no request is in flight (up to 2 s): a request
/// is counted when its response ends on the proxy's side, which may be a
/// moment after the client read the last byte (an HTTP/2 stream's end).
async fn settled_metrics(proxy: &TestProxy) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let m = metrics(proxy).await;
        let in_flight = sample_sum(&m, "breakwater_inflight_requests", &[]);
        if in_flight == 0.0 || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of the samples of `family` whose labels include all of `labels`.
fn sample_sum(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    let open = format!("{family}{{");
    let bare = format!("{family} ");
    metrics
        .lines()
        .filter(|l| l.starts_with(&open) || l.starts_with(&bare))
        .filter(|l| labels.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to 5 s) until the samples reach `want`; returns the last metrics text.
async fn wait_sample(proxy: &TestProxy, family: &str, labels: &[&str], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(proxy).await;
        if sample_sum(&m, family, labels) >= want || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dest(addr: &str) -> String {
    format!("destination=\"{addr}\"")
}

fn label(route: &str) -> String {
    format!("route=\"{route}\"")
}

async fn json(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let body = get(&client(), &proxy.admin(path)).await.body;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}):\n{body}"))
}

/// The `/config` entry of the route labelled `name` on `direction`'s listener
/// (`policies.<direction>.routes[]`, or `<direction>.routes[]`).
fn config_route(config: &serde_json::Value, direction: &str, name: &str) -> serde_json::Value {
    let routes = config["policies"][direction]["routes"]
        .as_array()
        .or_else(|| config[direction]["routes"].as_array())
        .unwrap_or_else(|| panic!("no {direction} routes in /config:\n{config:#}"));
    routes
        .iter()
        .find(|r| r["route"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {direction} route {name} in /config:\n{config:#}"))
}

/// The `shadows` of `/upstreams`: a top-level key of an object, or (the
/// answer being a list of destinations) the key of one of its elements.
/// The shadows `/upstreams` lists: each entry with a `shadow` object, that
/// object with the entry's destination and route.
fn shadows(upstreams: &serde_json::Value) -> Vec<serde_json::Value> {
    upstreams
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let mut shadow = e.get("shadow")?.clone();
            shadow["destination"] = e["destination"].clone();
            shadow["route"] = e["route"].clone();
            Some(shadow)
        })
        .collect()
}

fn percent(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

/// FNV-1a, to name a body in a message without printing it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` bytes that are not all alike.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) % 251) as u8 ^ seed)
        .collect()
}

fn within(got: usize, want: usize, margin: usize) -> bool {
    got.abs_diff(want) <= margin
}

// ---------------------------------------------------------------- to= / keep-host

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_moves_a_path_prefix_to_the_new_destination_with_its_host() {
    let old = named("old").await;
    let new = named("new").await;
    let (o, n) = (old.addr(), new.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=legacy,path-prefix=/orders,to={n}",
            old.port()
        )));
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=orders-new,retries=0",
            new.port()
        )));
    })
    .await;
    let c = client();

    let moved = get_via(&c, &proxy, &o, "/orders/1").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(side(&moved), "new", "/orders goes to the new destination");
    let other = get_via(&c, &proxy, &o, "/other").await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(side(&other), "old", "another path stays");

    let at_new = new.seen();
    assert_eq!(at_new.len(), 1, "{at_new:?}");
    assert_eq!(at_new[0].path, "/orders/1");
    assert_eq!(at_new[0].host, n, "Host becomes the new destination's");
    let at_old = old.seen();
    assert_eq!(at_old.len(), 1, "{at_old:?}");
    assert_eq!(at_old[0].path, "/other");
    assert_eq!(at_old[0].host, o, "the client's Host where nothing moved");

    // HTTP/2 from the app: `:authority` is rewritten as Host is.
    let h2 = h2_send_to(
        proxy.outbound(),
        Request::get(format!("http://{o}/orders/2"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(h2.status, 200, "{}", h2.body);
    assert_eq!(side(&h2), "new");
    let last = new.seen().last().cloned().unwrap();
    assert_eq!(last.path, "/orders/2");
    assert_eq!(last.host, n, "h2 :authority becomes the new destination's");

    // The new destination's own route labels the metrics.
    let m = settled_metrics(&proxy).await;
    let nd = dest(&n);
    assert!(
        sample_sum(
            &m,
            "breakwater_requests_total",
            &[&nd, &label("orders-new"), "code=\"200\""]
        ) >= 2.0,
        "no requests_total for {n} route orders-new:\n{m}"
    );
    assert_eq!(
        sample_sum(&m, "breakwater_requests_total", &[&dest(&o)]),
        1.0,
        "only /other counts under the old destination:\n{m}"
    );
    assert_eq!(
        sample_sum(&m, "breakwater_split_total", &[&label("legacy"), &nd]),
        2.0,
        "split_total counts the moved requests by where they went:\n{m}"
    );

    // /upstreams keeps the moved requests' state under the new destination and its route.
    let ups = json(&proxy, "/upstreams").await;
    let entries: Vec<serde_json::Value> = ups
        .as_array()
        .cloned()
        .or_else(|| ups["destinations"].as_array().cloned())
        .unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["destination"] == n.as_str() && e["route"] == "orders-new"),
        "{ups:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_host_keeps_the_clients_host() {
    let old = named("old").await;
    let new = named("new").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},path-prefix=/orders,to={},keep-host=true",
            old.port(),
            new.addr()
        )));
    })
    .await;
    let moved = get_via(&client(), &proxy, &o, "/orders/1").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(side(&moved), "new");
    let at_new = new.seen();
    assert_eq!(at_new.len(), 1);
    assert_eq!(at_new[0].host, o, "keep-host=true: the client's Host");
    assert_eq!(old.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_destinations_route_policy_applies() {
    let old = named("old").await;
    let new = named("new").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=legacy,path-prefix=/orders,to={}",
            old.port(),
            new.addr()
        )));
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=orders-new,timeout=200ms,retries=0",
            new.port()
        )));
    })
    .await;
    let c = client();
    let started = Instant::now();
    let slow = get_via(&c, &proxy, &o, "/orders/slow?ms=1500").await;
    assert_eq!(
        slow.status, 504,
        "the new route's 200ms deadline: {}",
        slow.body
    );
    assert_eq!(slow.reason(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(new.count(), 1, "retries=0 of the new route: one attempt");
    // The old destination keeps the flags' 15 s.
    let stays = get_via(&c, &proxy, &o, "/slow?ms=400").await;
    assert_eq!(stays.status, 200, "{}", stays.body);
    assert_eq!(side(&stays), "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_moved_at_most_once() {
    let old = named("old").await;
    let new = named("new").await;
    let third = named("third").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},to={}",
            old.port(),
            new.addr()
        )));
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=new-svc,to={}",
            new.port(),
            third.addr()
        )));
    })
    .await;
    let a = get_via(&client(), &proxy, &o, "/").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(side(&a), "new", "the new route's own to= is not followed");
    assert_eq!((old.count(), new.count(), third.count()), (0, 1, 0));
}

// ---------------------------------------------------------------- split=

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_sends_its_share_of_1000_requests() {
    let old = named("old").await;
    let new = named("new").await;
    let (o, n) = (old.addr(), new.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=legacy,split={n}@10",
            old.port()
        )));
    })
    .await;
    let answers = gets(&proxy, &o, "/", 1000).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let t = tally(&answers);
    let (to_new, to_old) = (
        t.get("new").copied().unwrap_or(0),
        t.get("old").copied().unwrap_or(0),
    );
    assert_eq!(to_new + to_old, 1000, "{t:?}");
    assert!(within(to_new, 100, 20), "10% of 1000 went to new: {t:?}");
    assert_eq!((new.count(), old.count()), (to_new, to_old));
    assert!(new.seen().iter().all(|s| s.host == n), "Host rewritten");
    assert!(old.seen().iter().all(|s| s.host == o), "Host kept");

    let m = metrics(&proxy).await;
    assert_eq!(
        sample_sum(&m, "breakwater_split_total", &[&label("legacy"), &dest(&n)]),
        to_new as f64,
        "{m}"
    );
    assert_eq!(
        sample_sum(&m, "breakwater_split_total", &[&label("legacy"), &dest(&o)]),
        to_old as f64,
        "the original destination is counted too:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_way_split_gives_each_destination_its_share() {
    let old = named("old").await;
    let a = named("a").await;
    let b = named("b").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=two-way,split={}@20+{}@30",
            old.port(),
            a.addr(),
            b.addr()
        )));
    })
    .await;
    let answers = gets(&proxy, &o, "/", 1000).await;
    assert!(answers.iter().all(|x| x.status == 200));
    let t = tally(&answers);
    let got = |k: &str| t.get(k).copied().unwrap_or(0);
    assert!(within(got("a"), 200, 20), "{t:?}");
    assert!(within(got("b"), 300, 20), "{t:?}");
    assert!(within(got("old"), 500, 20), "{t:?}");
    assert_eq!(got("a") + got("b") + got("old"), 1000, "{t:?}");
    let m = metrics(&proxy).await;
    for (addr, k) in [(a.addr(), "a"), (b.addr(), "b"), (o.clone(), "old")] {
        assert_eq!(
            sample_sum(
                &m,
                "breakwater_split_total",
                &[&label("two-way"), &dest(&addr)]
            ),
            got(k) as f64,
            "{k}:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_share_is_kept_too() {
    let old = named("old").await;
    let new = named("new").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},split={}@0.5",
            old.port(),
            new.addr()
        )));
    })
    .await;
    let answers = gets(&proxy, &o, "/", 1000).await;
    let t = tally(&answers);
    let to_new = t.get("new").copied().unwrap_or(0);
    assert!((2..=8).contains(&to_new), "0.5% of 1000: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_by_header_keeps_each_user_on_one_side() {
    let old = named("old").await;
    let new = named("new").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},split={}@20,split-key=x-user",
            old.port(),
            new.addr()
        )));
    })
    .await;
    let outbound = proxy.outbound();

    // 50 users, each 10 times, interleaved.
    let host = o.clone();
    let repeated = fire(500, 8, move |i| {
        via(outbound, "GET", &host, "/")
            .header("x-user", format!("user-{}", i % 50))
            .body(full(""))
            .unwrap()
    })
    .await;
    let mut sides: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, (a, _)) in repeated.iter().enumerate() {
        assert_eq!(a.status, 200);
        sides.entry(i % 50).or_default().push(side(a));
    }
    for (user, s) in &sides {
        assert!(
            s.iter().all(|x| x == &s[0]),
            "user-{user} landed on both sides: {s:?}"
        );
    }

    // 1,000 distinct users: their hashes split them near 20%.
    let host = o.clone();
    let distinct = fire(1000, 8, move |i| {
        via(outbound, "GET", &host, "/")
            .header("x-user", format!("user-{i}"))
            .body(full(""))
            .unwrap()
    })
    .await;
    let t = tally(distinct.iter().map(|(a, _)| a));
    let to_new = t.get("new").copied().unwrap_or(0);
    assert!(
        within(to_new, 200, 20),
        "1,000 distinct x-user values, 20% share: {t:?}"
    );
    // The 50 users of the first round went where their 1,000-round twin did.
    for (user, s) in &sides {
        assert_eq!(&side(&distinct[*user].0), &s[0], "user-{user}");
    }

    // Without the header: split as without split-key.
    let unkeyed = gets(&proxy, &o, "/", 100).await;
    let t = tally(&unkeyed);
    assert!(
        within(t.get("new").copied().unwrap_or(0), 20, 6),
        "requests without x-user: {t:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_by_cookie_ignores_the_other_cookies() {
    let old = named("old").await;
    let new = named("new").await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},split={}@50,split-key=cookie:session",
            old.port(),
            new.addr()
        )));
    })
    .await;
    let outbound = proxy.outbound();
    let host = o.clone();
    // 20 sessions, 5 times each, with another cookie that changes every time.
    let answers = fire(100, 8, move |i| {
        via(outbound, "GET", &host, "/")
            .header(
                http::header::COOKIE,
                format!("theme=t{i}; session=s-{}; lang=en", i % 20),
            )
            .body(full(""))
            .unwrap()
    })
    .await;
    let mut sides: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, (a, _)) in answers.iter().enumerate() {
        assert_eq!(a.status, 200);
        sides.entry(i % 20).or_default().push(side(a));
    }
    for (session, s) in &sides {
        assert!(
            s.iter().all(|x| x == &s[0]),
            "session s-{session} landed on both sides: {s:?}"
        );
    }
    let firsts: Vec<&String> = sides.values().map(|s| &s[0]).collect();
    assert!(
        firsts.iter().any(|s| *s == "new") && firsts.iter().any(|s| *s == "old"),
        "20 sessions at 50% all on one side: {firsts:?}"
    );
}

// ---------------------------------------------------------------- mirror=

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_method_and_body_to_the_shadow() {
    let old = named("old").await;
    let shadow = named_with("shadow", Some(200), Duration::ZERO).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=legacy,mirror={s}@100,mirror-unsafe=true",
            old.port()
        )));
    })
    .await;
    let c = client();
    for (i, method) in ["PUT", "POST"].into_iter().enumerate() {
        let body = payload(10 * 1024, i as u8);
        let a = send(
            &c,
            via(proxy.outbound(), method, &o, "/orders")
                .body(full(body.clone()))
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.body, "old\n",
            "the client gets the original's answer only"
        );
        assert_eq!(side(&a), "old");
        assert_eq!(shadow.wait_for(i + 1, Duration::from_secs(5)).await, i + 1);
        // Wait for the body to be read whole.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shadow.seen()[i].body.len() < body.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let copy = shadow.seen()[i].clone();
        assert_eq!(copy.method, method);
        assert_eq!(copy.path, "/orders");
        assert_eq!(copy.mirror.as_deref(), Some("1"), "x-breakwater-mirror: 1");
        assert_eq!(
            (copy.body.len(), fnv(&copy.body)),
            (body.len(), fnv(&body)),
            "the shadow got the same bytes"
        );
        assert_eq!(copy.host, s, "Host becomes the shadow's");
        let original = old.seen()[i].clone();
        assert_eq!(original.mirror, None, "the original is not marked");
        assert_eq!(fnv(&original.body), fnv(&body));
    }
    let m = wait_sample(
        &proxy,
        "breakwater_mirror_total",
        &[&dest(&s), "outcome=\"match\""],
        2.0,
    )
    .await;
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_mirror_total",
            &[&dest(&s), "outcome=\"match\""]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mirror_unsafe_only_safe_methods_are_mirrored() {
    let old = named("old").await;
    let shadow = named_with("shadow", Some(200), Duration::ZERO).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes
            .push(route(&format!("127.0.0.1:{},mirror={s}@100", old.port())));
    })
    .await;
    let c = client();
    let g = get_via(&c, &proxy, &o, "/read").await;
    assert_eq!(g.status, 200);
    assert_eq!(
        shadow.wait_for(1, Duration::from_secs(5)).await,
        1,
        "GET is mirrored"
    );
    assert_eq!(shadow.seen()[0].method, "GET");

    let p = send(
        &c,
        via(proxy.outbound(), "POST", &o, "/write")
            .body(full(payload(1024, 7)))
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(side(&p), "old");
    let m = wait_sample(
        &proxy,
        "breakwater_mirror_total",
        &[&dest(&s), "outcome=\"skipped\""],
        1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        shadow.count(),
        1,
        "POST is not mirrored: {:?}",
        shadow.seen()
    );
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_mirror_total",
            &[&dest(&s), "outcome=\"skipped\""]
        ),
        1.0,
        "the POST counts as skipped:\n{m}"
    );
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_mirror_total",
            &[&dest(&s), "outcome=\"match\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_delays_the_client() {
    let old = named("old").await;
    // Accepts, reads the request head, and holds the connection for 30 s.
    let shadow = spawn_raw(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    let o = old.addr();
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},mirror={}@100,mirror-unsafe=true",
            old.port(),
            shadow.addr
        )));
    })
    .await;
    let c = client();
    let started = Instant::now();
    for i in 0..10 {
        let t = Instant::now();
        let req = if i % 2 == 0 {
            via(proxy.outbound(), "GET", &o, "/")
                .body(full(""))
                .unwrap()
        } else {
            via(proxy.outbound(), "POST", &o, "/")
                .body(full(payload(10 * 1024, i)))
                .unwrap()
        };
        let a = send(&c, req).await;
        let took = t.elapsed();
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(side(&a), "old");
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(shadow.connections() >= 1, "the copies were sent");
    assert_eq!(old.count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadows_status_class_is_compared_with_the_clients() {
    let old = named("old").await;
    let ok = named_with("ok", Some(200), Duration::ZERO).await;
    let bad = named_with("bad", Some(500), Duration::ZERO).await;
    let closed = closed_addr().to_string();
    let o = old.addr();
    let port = old.port();
    let proxy = spawn_proxy(old.up.addr, |c| {
        for (prefix, shadow) in [
            ("/a", ok.addr()),
            ("/b", bad.addr()),
            ("/c", closed.clone()),
            ("/d", bad.addr()),
            ("/e", ok.addr()),
        ] {
            c.routes.push(route(&format!(
                "127.0.0.1:{port},path-prefix={prefix},mirror={shadow}@100"
            )));
        }
        // Keep the refused shadow a plain connect failure every time.
        c.routes.push(route(&format!(
            "{closed},retries=0,breaker-consecutive-failures=0,breaker-failure-rate=0"
        )));
    })
    .await;
    let c = client();
    for (path, want) in [
        ("/a", 200),
        ("/b", 200),
        ("/c", 200),
        ("/d?status=500", 500),
        ("/e?status=404", 404),
    ] {
        for _ in 0..3 {
            let a = get_via(&c, &proxy, &o, path).await;
            assert_eq!(a.status, want, "{path}: {}", a.body);
            assert_eq!(side(&a), "old", "{path}");
        }
    }
    let expect = [
        (ok.addr(), "match", 3.0, "/a: 200 and 200"),
        (ok.addr(), "mismatch", 3.0, "/e: 404 and 200"),
        (bad.addr(), "mismatch", 3.0, "/b: 200 and 500"),
        (bad.addr(), "match", 3.0, "/d: 500 and 500"),
        (closed.clone(), "error", 3.0, "/c: refused"),
    ];
    for (shadow, outcome, n, what) in expect {
        let o = format!("outcome=\"{outcome}\"");
        let m = wait_sample(&proxy, "breakwater_mirror_total", &[&dest(&shadow), &o], n).await;
        assert_eq!(
            sample_sum(&m, "breakwater_mirror_total", &[&dest(&shadow), &o]),
            n,
            "{what}:\n{m}"
        );
    }
    assert_eq!(ok.count(), 6);
    assert_eq!(bad.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_breakwater_refuses_is_still_copied_and_compared() {
    // The old destination takes one request at a time and holds it; the
    // second is refused (bulkhead-full) before any attempt, and its copy is
    // compared with that 503.
    let old = named_with("old", Some(200), Duration::from_millis(600)).await;
    let shadow = named_with("shadow", Some(200), Duration::ZERO).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},max-concurrent=1,mirror={s}@100",
            old.port()
        )));
    })
    .await;
    let c = client();
    let first = {
        let (c, proxy_out, o) = (c.clone(), proxy.outbound(), o.clone());
        tokio::spawn(async move {
            send(
                &c,
                via(proxy_out, "GET", &o, "/slow").body(full("")).unwrap(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = get_via(&c, &proxy, &o, "/second").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.reason(), Some("bulkhead-full"));
    let first = first.await.expect("the first request");
    assert_eq!(first.status, 200);
    let mismatch = [dest(&s), "outcome=\"mismatch\"".to_string()];
    let labels: Vec<&str> = mismatch.iter().map(String::as_str).collect();
    let m = wait_sample(&proxy, "breakwater_mirror_total", &labels, 1.0).await;
    assert_eq!(
        sample_sum(&m, "breakwater_mirror_total", &labels),
        1.0,
        "the refused request's copy: 503 against the shadow's 200\n{m}"
    );
    let matched = [dest(&s), "outcome=\"match\"".to_string()];
    let labels: Vec<&str> = matched.iter().map(String::as_str).collect();
    let m = wait_sample(&proxy, "breakwater_mirror_total", &labels, 1.0).await;
    assert_eq!(
        sample_sum(&m, "breakwater_mirror_total", &labels),
        1.0,
        "{m}"
    );
    assert_eq!(shadow.count(), 2);
}

/// A shadow that keeps failing is compared every time: no breaker opens on
/// it to turn its answers into errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_stays_a_mismatch_not_an_error() {
    let old = named("old").await;
    let bad = named_with("bad", Some(500), Duration::ZERO).await;
    let (o, b) = (old.addr(), bad.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes
            .push(route(&format!("127.0.0.1:{},mirror={b}@100", old.port())));
    })
    .await;
    let c = client();
    for i in 0..20 {
        let a = get_via(&c, &proxy, &o, &format!("/{i}")).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let labels = [dest(&b), "outcome=\"mismatch\"".to_string()];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let m = wait_sample(&proxy, "breakwater_mirror_total", &labels, 20.0).await;
    assert_eq!(
        sample_sum(&m, "breakwater_mirror_total", &labels),
        20.0,
        "{m}"
    );
    assert_eq!(bad.count(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_at_50_percent_copies_half() {
    let old = named("old").await;
    let shadow = named_with("shadow", Some(200), Duration::ZERO).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes
            .push(route(&format!("127.0.0.1:{},mirror={s}@50", old.port())));
    })
    .await;
    let answers = gets(&proxy, &o, "/", 400).await;
    assert!(answers.iter().all(|a| a.status == 200 && side(a) == "old"));
    shadow.wait_for(180, Duration::from_secs(5)).await;
    let m = wait_sample(
        &proxy,
        "breakwater_mirror_total",
        &[&dest(&s), "outcome=\"match\""],
        shadow.count() as f64,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies = shadow.count();
    assert!(within(copies, 200, 20), "50% of 400 mirrored: {copies}");
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_mirror_total",
            &[&dest(&s), "outcome=\"match\""]
        ),
        copies as f64,
        "{m}"
    );
    assert!(
        shadow
            .seen()
            .iter()
            .all(|x| x.mirror.as_deref() == Some("1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadows_max_concurrent_caps_the_copies_in_flight() {
    let old = named("old").await;
    let shadow = named_with("shadow", Some(200), Duration::from_secs(30)).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=legacy,mirror={s}@100",
            old.port()
        )));
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=shadow-route,max-concurrent=2",
            shadow.port()
        )));
    })
    .await;
    let c = client();
    for i in 0..10 {
        let t = Instant::now();
        let a = get_via(&c, &proxy, &o, "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request {i}: {:?}",
            t.elapsed()
        );
        if i < 2 {
            // Let the first copies take their slots before the rest come.
            shadow.wait_for(i + 1, Duration::from_secs(2)).await;
        }
    }
    let skipped = [dest(&s), "outcome=\"skipped\"".to_string()];
    let skipped: Vec<&str> = skipped.iter().map(String::as_str).collect();
    let m = wait_sample(&proxy, "breakwater_mirror_total", &skipped, 8.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shadow.count(), 2, "at most 2 copies at the shadow");
    assert_eq!(
        sample_sum(&m, "breakwater_mirror_total", &skipped),
        8.0,
        "the other 8 are skipped:\n{m}"
    );

    let ups = json(&proxy, "/upstreams").await;
    let all = shadows(&ups);
    let entry = all
        .iter()
        .find(|e| e["destination"] == s.as_str())
        .unwrap_or_else(|| panic!("no shadows entry for {s}:\n{ups:#}"));
    assert_eq!(entry["in_flight"], 2, "{entry:#}");
    assert_eq!(entry["limit"], 2, "{entry:#}");
    assert_eq!(entry["outcomes"]["skipped"], 8, "{entry:#}");
    for k in ["match", "mismatch", "error"] {
        assert_eq!(entry["outcomes"][k], 0, "{k}: {entry:#}");
    }
    let reasons: u64 = entry["skipped"]
        .as_object()
        .map(|r| r.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(reasons, 8, "skipped by reason: {entry:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_to_the_shadow_is_not_mirrored_to_it() {
    let old = named("old").await;
    let shadow = named_with("shadow", Some(200), Duration::ZERO).await;
    let (o, s) = (old.addr(), shadow.addr());
    let proxy = spawn_proxy(old.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},split={s}@50,mirror={s}@100",
            old.port()
        )));
    })
    .await;
    let answers = gets(&proxy, &o, "/", 100).await;
    let t = tally(&answers);
    let moved = t.get("shadow").copied().unwrap_or(0);
    let stayed = t.get("old").copied().unwrap_or(0);
    assert_eq!(moved + stayed, 100, "{t:?}");
    assert!(moved > 0 && stayed > 0, "{t:?}");
    shadow.wait_for(100, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = shadow.seen();
    let copies = seen.iter().filter(|x| x.mirror.is_some()).count();
    let plain = seen.len() - copies;
    assert_eq!(
        (plain, copies),
        (moved, stayed),
        "the shadow gets the moved requests once, and copies of the others only"
    );
}

// ---------------------------------------------------------------- faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_answers_its_share_and_never_reaches_the_upstream() {
    let up = named("up").await;
    let u = up.addr();
    let proxy = spawn_proxy(up.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=flaky,fault-abort=503@20",
            up.port()
        )));
    })
    .await;
    let answers = gets(&proxy, &u, "/", 500).await;
    let aborted: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    for a in &aborted {
        assert_eq!(a.reason(), Some("fault-injected"), "{}", a.body);
        assert_eq!(
            a.body.trim_end().lines().count(),
            1,
            "one line: {:?}",
            a.body
        );
        assert_eq!(side(a), "<none>", "breakwater answered, not the upstream");
    }
    let others: Vec<&Answer> = answers.iter().filter(|a| a.status != 503).collect();
    assert!(
        others.iter().all(|a| a.status == 200 && side(a) == "up"),
        "the rest are the upstream's 200s: {:?}",
        others
            .iter()
            .map(|a| (a.status, a.reason()))
            .collect::<Vec<_>>()
    );
    assert!(
        within(aborted.len(), 100, 10),
        "20% of 500: {}",
        aborted.len()
    );
    assert_eq!(
        up.count(),
        500 - aborted.len(),
        "aborted requests are never sent"
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_faults_injected_total",
            &[&label("flaky"), "kind=\"abort\"", "direction=\"outbound\""]
        ),
        aborted.len() as f64,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_holds_its_share_before_sending() {
    const DELAY: Duration = Duration::from_millis(400);
    let up = named("up").await;
    let u = up.addr();
    let proxy = spawn_proxy(up.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},name=sluggish,fault-delay=400ms@50",
            up.port()
        )));
    })
    .await;
    let (outbound, host) = (proxy.outbound(), u.clone());
    let answers = fire(100, 10, move |_| {
        via(outbound, "GET", &host, "/").body(full("")).unwrap()
    })
    .await;
    assert!(
        answers
            .iter()
            .all(|(a, _)| a.status == 200 && side(a) == "up"),
        "every request is answered by the upstream"
    );
    assert_eq!(up.count(), 100);
    let slow = answers.iter().filter(|(_, d)| *d >= DELAY).count();
    let m = metrics(&proxy).await;
    let delayed = sample_sum(
        &m,
        "breakwater_faults_injected_total",
        &[&label("sluggish"), "kind=\"delay\""],
    ) as usize;
    assert!(
        within(delayed, 50, 10),
        "50% of 100 delayed: {delayed}\n{m}"
    );
    // Every delayed request took the delay; a loaded machine may slow one or
    // two others that far.
    assert!(
        slow >= delayed && slow <= delayed + 2,
        "{slow} took >= {DELAY:?}, {delayed} were delayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_delay_counts_against_the_timeout() {
    let up = named("up").await;
    let u = up.addr();
    let proxy = spawn_proxy(up.up.addr, |c| {
        c.routes.push(route(&format!(
            "127.0.0.1:{},timeout=200ms,fault-delay=2s@100",
            up.port()
        )));
    })
    .await;
    let started = Instant::now();
    let a = get_via(&client(), &proxy, &u, "/").await;
    let took = started.elapsed();
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.reason(), Some("timeout"));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(up.count(), 0, "the deadline passed before it was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_fault_abort_answers_on_the_inbound_listener() {
    let app = named("app").await;
    let proxy = spawn_proxy(app.up.addr, |c| {
        c.routes.push(route(
            "*,direction=inbound,name=in-x,path-prefix=/x,fault-abort=500@100",
        ));
    })
    .await;
    let c = client();
    let a = get(&c, &proxy.inbound("/x/1")).await;
    assert_eq!(a.status, 500, "{}", a.body);
    assert_eq!(a.reason(), Some("fault-injected"));
    assert_eq!(app.count(), 0);
    let b = get(&c, &proxy.inbound("/y")).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(side(&b), "app");
    assert_eq!(app.count(), 1);
    let m = metrics(&proxy).await;
    assert_eq!(
        sample_sum(
            &m,
            "breakwater_faults_injected_total",
            &["direction=\"inbound\"", &label("in-x"), "kind=\"abort\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_marks_injected_faults() {
    let app = named("app").await;
    let up = named("up").await;
    let mut proxy = spawn_binary_with(
        app.up.addr,
        &[
            "--access-log",
            "--log-format=json",
            "--route=*,direction=inbound,path-prefix=/x,fault-abort=500@100",
            &format!("--route={},fault-delay=10ms@100", up.addr()),
        ],
        Stdio::piped(),
    )
    .await;
    let lines = access_lines(&mut proxy, 2);
    let c = client();
    let aborted = get(&c, &format!("http://{}/x/1", proxy.addrs.inbound)).await;
    assert_eq!(aborted.status, 500, "{}", aborted.body);
    assert_eq!(aborted.reason(), Some("fault-injected"));
    let delayed = send(
        &c,
        via(proxy.addrs.outbound, "GET", &up.addr(), "/slow")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(delayed.status, 200, "{}", delayed.body);
    assert_eq!(side(&delayed), "up");
    let lines = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || lines.join()),
    )
    .await
    .expect("two access log lines within 10 s")
    .unwrap()
    .unwrap();
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("access log lines are JSON"))
        .collect();
    let by_path = |p: &str| {
        entries
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("no access log entry for {p}: {lines:?}"))
    };
    assert_eq!(by_path("/x/1")["fault"], "abort", "{lines:?}");
    assert_eq!(by_path("/slow")["fault"], "delay", "{lines:?}");
}

// ---------------------------------------------------------------- /config

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_each_routes_traffic() {
    let app = named("app").await;
    let proxy = spawn_proxy(app.up.addr, |c| {
        c.routes.push(route(
            "orders-v1:8080,name=canary,split=orders-v2:8080@20+orders-v3:8080@0.5,\
             split-key=cookie:session,mirror=orders-shadow:8080@5,mirror-unsafe=true,\
             keep-host=true,fault-abort=503@1.5,fault-delay=150ms@10",
        ));
        c.routes
            .push(route("billing:8080,name=moved,to=billing-v2:9090"));
        c.routes.push(route("plain:8080,name=plain,retries=1"));
        c.routes.push(route(
            "*,direction=inbound,name=in-faults,path-prefix=/x,fault-abort=500@100",
        ));
    })
    .await;
    let config = json(&proxy, "/config").await;

    let canary = config_route(&config, "outbound", "canary");
    let t = &canary["traffic"];
    assert!(t.is_object(), "canary has no traffic: {canary:#}");
    let split = t["split"].as_array().cloned().unwrap_or_default();
    assert_eq!(split.len(), 2, "{t:#}");
    assert_eq!(split[0]["destination"], "orders-v2:8080", "{t:#}");
    assert_eq!(percent(&split[0]["percent"]), Some(20.0), "{t:#}");
    assert_eq!(split[1]["destination"], "orders-v3:8080", "{t:#}");
    assert_eq!(percent(&split[1]["percent"]), Some(0.5), "{t:#}");
    assert_eq!(t["split_key"], "cookie:session", "{t:#}");
    assert_eq!(t["keep_host"], true, "{t:#}");
    assert_eq!(t["mirror"]["destination"], "orders-shadow:8080", "{t:#}");
    assert_eq!(percent(&t["mirror"]["percent"]), Some(5.0), "{t:#}");
    assert_eq!(t["mirror"]["unsafe"], true, "{t:#}");
    assert_eq!(t["faults"]["abort"]["status"], 503, "{t:#}");
    assert_eq!(
        percent(&t["faults"]["abort"]["percent"]),
        Some(1.5),
        "{t:#}"
    );
    assert_eq!(t["faults"]["delay"]["duration"], "150ms", "{t:#}");
    assert_eq!(
        percent(&t["faults"]["delay"]["percent"]),
        Some(10.0),
        "{t:#}"
    );
    assert!(t.get("to").is_none(), "absent parts are omitted: {t:#}");

    let moved = config_route(&config, "outbound", "moved");
    let t = &moved["traffic"];
    assert_eq!(t["to"], "billing-v2:9090", "{moved:#}");
    for absent in ["split", "split_key", "mirror", "faults"] {
        assert!(t.get(absent).is_none(), "{absent} should be omitted: {t:#}");
    }
    assert!(
        t.get("keep_host").is_none() || t["keep_host"] == false,
        "{t:#}"
    );

    let plain = config_route(&config, "outbound", "plain");
    assert!(
        plain.get("traffic").is_none()
            || plain["traffic"].is_null()
            || plain["traffic"].as_object().is_some_and(|o| o.is_empty()),
        "a route without traffic keys: {plain:#}"
    );

    let inbound = config_route(&config, "inbound", "in-faults");
    let t = &inbound["traffic"];
    assert_eq!(t["faults"]["abort"]["status"], 500, "{inbound:#}");
    assert_eq!(
        percent(&t["faults"]["abort"]["percent"]),
        Some(100.0),
        "{inbound:#}"
    );
    assert!(t["faults"].get("delay").is_none(), "{inbound:#}");
}

// ---------------------------------------------------------------- bad input

/// Whether `text` names the route key `key` (as `key=`, `key (`, `` `key` ``...).
fn names_key(text: &str, key: &str) -> bool {
    [
        format!("{key}="),
        format!("{key} ("),
        format!("`{key}`"),
        format!("\"{key}\""),
        format!("'{key}'"),
        format!("{key}: "),
    ]
    .iter()
    .any(|k| text.contains(k.as_str()))
}

fn free_port() -> u16 {
    closed_addr().port()
}

#[test]
fn bad_traffic_keys_fail_at_start_up_naming_the_route_and_the_key() {
    let (inb, out, admin) = (free_port(), free_port(), free_port());
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            "api:8080,split=127.0.0.1:9@150".into(),
            vec!["split"],
            "api:8080",
        ),
        (
            "api:8080,split=a:1@60+b:2@50".into(),
            vec!["split"],
            "api:8080",
        ),
        ("api:8080,split=a:1@half".into(), vec!["split"], "api:8080"),
        ("api:8080,split=nohost@10".into(), vec!["split"], "api:8080"),
        ("api:8080,mirror=x:1@-1".into(), vec!["mirror"], "api:8080"),
        ("api:8080,mirror=x:1@101".into(), vec!["mirror"], "api:8080"),
        ("api:8080,to=nohost".into(), vec!["to"], "api:8080"),
        (
            format!("api:8080,to=127.0.0.1:{out}"),
            vec!["to"],
            "api:8080",
        ),
        (
            format!("api:8080,to=localhost:{out}"),
            vec!["to"],
            "api:8080",
        ),
        (
            format!("api:8080,split=0.0.0.0:{inb}@10"),
            vec!["split"],
            "api:8080",
        ),
        (
            format!("api:8080,mirror=127.0.0.1:{admin}@10"),
            vec!["mirror"],
            "api:8080",
        ),
        (
            "api:8080,to=a:1,split=b:2@10".into(),
            vec!["to", "split"],
            "api:8080",
        ),
        (
            "api:8080,fault-abort=200@10".into(),
            vec!["fault-abort"],
            "api:8080",
        ),
        (
            "api:8080,fault-abort=503@120".into(),
            vec!["fault-abort"],
            "api:8080",
        ),
        (
            "api:8080,fault-delay=soon@10".into(),
            vec!["fault-delay"],
            "api:8080",
        ),
        (
            "*,direction=inbound,name=legacy-in,to=a:1".into(),
            vec!["to"],
            "legacy-in",
        ),
        (
            "*,direction=inbound,name=legacy-in,mirror=a:1@10".into(),
            vec!["mirror"],
            "legacy-in",
        ),
    ];
    let mut failures = Vec::new();
    // The keys themselves are known: good values pass, so the refusals below
    // are about the values, not an unknown key.
    for spec in [
        "api:8080,split=b:2@10+c:3@0.5,split-key=x-user,mirror=d:4@5,mirror-unsafe=true,\
         keep-host=true,fault-abort=503@1,fault-delay=100ms@2",
        "api:9090,to=b:2,keep-host=false",
        "*,direction=inbound,name=in-f,fault-abort=500@100,fault-delay=1s@5",
    ] {
        let o = run_to_end(&["run".into(), "--check".into(), format!("--route={spec}")]);
        if o.code != Some(0) {
            failures.push(format!("run --check --route={spec}: refused: {}", o.stderr));
        }
    }
    for (spec, keys, route_name) in &cases {
        for check in [true, false] {
            let mut args = vec!["run".to_string()];
            if check {
                args.push("--check".into());
            }
            args.extend([
                format!("--inbound-addr=127.0.0.1:{inb}"),
                format!("--outbound-addr=127.0.0.1:{out}"),
                format!("--admin-addr=127.0.0.1:{admin}"),
                "--app-addr=127.0.0.1:9".into(),
                "--log-level=warn".into(),
                format!("--route={spec}"),
            ]);
            let o = run_to_end(&args);
            let mode = if check { "run --check" } else { "run" };
            let problem = if o.code == Some(0) {
                Some(format!("exited 0; stdout: {}", o.stdout.len()))
            } else if o.code.is_none() {
                Some("killed by a signal".into())
            } else if o.stderr.contains("panicked") {
                Some(format!("panicked: {}", o.stderr))
            } else if !o.stderr.contains(route_name) {
                Some(format!(
                    "does not name the route {route_name}: {}",
                    o.stderr
                ))
            } else if let Some(k) = keys.iter().find(|k| !names_key(&o.stderr, k)) {
                Some(format!("does not name the key {k}: {}", o.stderr))
            } else {
                None
            };
            if let Some(p) = problem {
                failures.push(format!("{mode} --route={spec}: {p}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Waits until `n` reloads ended with `result`.
async fn wait_reloads(proxy: &TestProxy, result: &str, n: f64) {
    let started = Instant::now();
    let family = "breakwater_policy_reloads_total";
    let want = format!("result=\"{result}\"");
    loop {
        let m = metrics(proxy).await;
        if sample_sum(&m, family, &[&want]) >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {result} reload within 5s:\n{}",
            get(&client(), &proxy.admin("/config")).await.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policy(port: u16, key: &str, value: &str) -> String {
    format!(
        "routes:\n  - name: legacy\n    host: 127.0.0.1\n    port: {port}\n    {key}: \"{value}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_bad_split_keeps_the_old_policy() {
    let old = named("old").await;
    let new = named("new").await;
    let third = named("third").await;
    let o = old.addr();
    let dir = TestDir::new("strangler-reload");
    let file = dir.write("policy.yaml", &policy(old.port(), "to", &new.addr()));
    let f = file.clone();
    let proxy = spawn_proxy(old.up.addr, move |c| c.policy_file = Some(f)).await;
    let c = client();
    assert_eq!(
        side(&get_via(&c, &proxy, &o, "/").await),
        "new",
        "the file's to="
    );

    dir.write(
        "policy.yaml",
        &policy(old.port(), "split", &format!("{}@150", third.addr())),
    );
    wait_reloads(&proxy, "rejected", 1.0).await;
    let config = json(&proxy, "/config").await;
    let rejected = config["policy_file"]["rejected"]
        .as_str()
        .unwrap_or_default();
    assert!(
        names_key(rejected, "split") || rejected.contains("split"),
        "the rejection names split: {rejected}"
    );
    assert!(
        rejected.contains("legacy") || rejected.contains("policy.yaml"),
        "{rejected}"
    );
    for _ in 0..5 {
        let a = get_via(&c, &proxy, &o, "/").await;
        assert_eq!(side(&a), "new", "the old policy stays in force");
    }
    assert_eq!(third.count(), 0);

    // Fixed: the new split applies.
    dir.write(
        "policy.yaml",
        &policy(old.port(), "split", &format!("{}@100", third.addr())),
    );
    wait_reloads(&proxy, "applied", 1.0).await;
    assert_eq!(side(&get_via(&c, &proxy, &o, "/").await), "third");

    // At start-up the same file fails, naming the file and the key.
    dir.write(
        "bad.yaml",
        &policy(old.port(), "split", &format!("{}@150", third.addr())),
    );
    let o = run_to_end(&[
        "run".into(),
        "--check".into(),
        format!("--policy-file={}", dir.0.join("bad.yaml").display()),
    ]);
    assert!(
        o.code.is_some_and(|c| c != 0),
        "exit {:?}: {}",
        o.code,
        o.stdout
    );
    assert!(
        o.stderr.contains("bad.yaml") && o.stderr.contains("split"),
        "{}",
        o.stderr
    );
}

/// `breakwater demo --strangler`, as the README shows it: the split share it
/// prints is the configured one, and the mirror compared copies.
#[test]
fn the_strangler_demo_prints_the_split_and_the_mirror_match_rate() {
    let out = Command::new(binary())
        .args([
            "demo",
            "--strangler",
            "--duration",
            "2s",
            "--concurrency",
            "4",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run breakwater demo --strangler");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains('\r'),
        "no progress line into a pipe:\n{stdout}"
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{stdout}"))
            .to_string()
    };
    // `|   moved to new (split)    |  140 (10.0%) | ...`: the first share.
    let share = |line: &str| -> f64 {
        let open = line.find('(').map(|i| &line[i + 1..]).unwrap_or_default();
        let open = open.find('(').map(|i| &open[i + 1..]).unwrap_or(open);
        open.split('%').next().unwrap_or("").parse().unwrap_or(-1.0)
    };
    let moved = share(&row("moved to new (split)"));
    assert!(
        (9.0..=11.0).contains(&moved),
        "split share {moved}:\n{stdout}"
    );
    let matched = share(&row("match: new as old"));
    assert!(
        (85.0..=100.0).contains(&matched),
        "match rate {matched}:\n{stdout}"
    );
}
