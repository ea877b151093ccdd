//! `breakwater demo --scene strangler` (or `--strangler`): a migration, seen through the proxy. An old
//! service and a new one on loopback; one outbound route moves 10 % of the old
//! one's `/orders` to the new one (`split`) and copies the rest to it (`mirror`),
//! where breakwater compares the new one's status class with the old one's. Load
//! goes through the outbound listener, and a table puts breakwater's own counters
//! (its admin `/metrics`) beside what each service and the clients saw.

use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::scrape::{fetch, sum};
use crate::config::RouteOverride;
use crate::{Config, Proxy};

/// The share of the old service's `/orders` that the route moves to the new one.
const SPLIT_PERCENT: u32 = 10;
/// The share of the rest that it copies to the new one.
const MIRROR_PERCENT: u32 = 100;
/// How often the new service answers 500.
const NEW_FAILS_PERCENT: u32 = 3;
/// The share of the load that asks for `/orders/N`; the rest asks for `/catalog/N`.
const ORDERS_PERCENT: u32 = 70;
/// The header each service names itself in, so that the clients can count too.
const SERVED_BY: &str = "x-served-by";
/// The header breakwater puts on a mirrored copy.
const MIRROR_HEADER: &str = "x-breakwater-mirror";

/// Which of the two services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Old,
    New,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Old => "old",
            Service::New => "new",
        }
    }

    /// The new one is a bit faster.
    fn latency(self) -> Duration {
        match self {
            Service::Old => Duration::from_millis(3),
            Service::New => Duration::from_millis(2),
        }
    }

    fn fails_percent(self) -> u32 {
        match self {
            Service::Old => 0,
            Service::New => NEW_FAILS_PERCENT,
        }
    }

    /// The old one has orders and the catalog; the new one, orders so far.
    fn serves(self, resource: Resource) -> bool {
        resource == Resource::Orders || self == Service::Old
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Orders,
    Catalog,
}

impl Resource {
    /// `/orders/N` or `/catalog/N`, and N.
    fn of(path: &str) -> Option<(Resource, u64)> {
        let (resource, rest) = if let Some(rest) = path.strip_prefix("/orders/") {
            (Resource::Orders, rest)
        } else {
            (Resource::Catalog, path.strip_prefix("/catalog/")?)
        };
        Some((resource, rest.parse().ok()?))
    }

    fn key(self) -> &'static str {
        match self {
            Resource::Orders => "order",
            Resource::Catalog => "item",
        }
    }
}

/// What one service saw, counted before it answers (so a count breakwater
/// reports is never ahead of the service's own).
#[derive(Default)]
struct Seen {
    /// `/orders/N` requests, copies left out.
    orders: AtomicU64,
    /// Of those, answered 500.
    orders_failed: AtomicU64,
    /// Mirrored copies (`x-breakwater-mirror`).
    copies: AtomicU64,
    /// Of those, answered 500.
    copies_failed: AtomicU64,
    catalog: AtomicU64,
    /// Anything else (404): a request that should not have come here.
    other: AtomicU64,
}

impl Seen {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Serves until the task is dropped.
async fn spawn(
    service: Service,
) -> std::io::Result<(SocketAddr, Arc<Seen>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = counts.clone();
            tokio::spawn(async move {
                let handler = service_fn(move |req| answer(service, seen.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    Ok((addr, seen, task))
}

async fn answer(
    service: Service,
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let copy = req.headers().contains_key(MIRROR_HEADER);
    let found = Resource::of(req.uri().path()).filter(|(r, _)| service.serves(*r));
    let (status, body) = match found {
        None => {
            seen.other.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::NOT_FOUND,
                r#"{"error":"not found"}"#.to_string(),
            )
        }
        Some((resource, id)) => {
            let failed = fastrand::u32(0..100) < service.fails_percent();
            let (count, failures) = match (resource, copy) {
                (Resource::Orders, false) => (&seen.orders, Some(&seen.orders_failed)),
                (Resource::Orders, true) => (&seen.copies, Some(&seen.copies_failed)),
                (Resource::Catalog, false) => (&seen.catalog, None),
                // The route mirrors /orders only.
                (Resource::Catalog, true) => (&seen.other, None),
            };
            count.fetch_add(1, Ordering::Relaxed);
            if let (true, Some(failures)) = (failed, failures) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(service.latency()).await;
            if failed {
                let body = r#"{"error":"internal"}"#.to_string();
                (StatusCode::INTERNAL_SERVER_ERROR, body)
            } else {
                let (key, name) = (resource.key(), service.name());
                let body = format!(r#"{{"{key}":{id},"status":"ok","service":"{name}"}}"#);
                (StatusCode::OK, body)
            }
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(SERVED_BY, HeaderValue::from_static(service.name()));
    Ok(resp)
}

/// What the clients got.
#[derive(Default)]
struct Got {
    orders: u64,
    /// `/orders` answers by the service that gave them (`x-served-by`): old, new.
    orders_from: [u64; 2],
    orders_5xx: u64,
    /// `/orders` latencies by the service that answered: old, new.
    latencies: [Vec<Duration>; 2],
    catalog: u64,
    catalog_5xx: u64,
    /// Requests that got no response at all.
    failed: u64,
}

impl Got {
    fn merge(&mut self, other: Got) {
        self.orders += other.orders;
        for i in 0..2 {
            self.orders_from[i] += other.orders_from[i];
            self.latencies[i].extend(other.latencies[i].iter().copied());
        }
        self.orders_5xx += other.orders_5xx;
        self.catalog += other.catalog;
        self.catalog_5xx += other.catalog_5xx;
        self.failed += other.failed;
    }

    /// The median `/orders` latency from one service.
    fn p50(&mut self, service: Service) -> Option<Duration> {
        let l = &mut self.latencies[service as usize];
        l.sort_unstable();
        l.get(l.len() / 2).copied()
    }
}

/// Drives `concurrency` clients through breakwater's outbound listener at the
/// old service for `duration`: `/orders/N` and `/catalog/N`, mixed.
async fn drive(
    outbound: SocketAddr,
    old: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, count) = (client.clone(), count.clone());
            tokio::spawn(async move {
                let mut got = Got::default();
                let host = old.to_string();
                while Instant::now() < deadline {
                    let resource = if fastrand::u32(0..100) < ORDERS_PERCENT {
                        Resource::Orders
                    } else {
                        Resource::Catalog
                    };
                    let path = match resource {
                        Resource::Orders => "orders",
                        Resource::Catalog => "catalog",
                    };
                    let uri = format!("http://{outbound}/{path}/{}", fastrand::u32(1..10_000));
                    let Ok(req) = Request::get(uri)
                        .header(header::HOST, &host)
                        .body(Empty::<Bytes>::new())
                    else {
                        break;
                    };
                    let sent = Instant::now();
                    let answered = match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let from = match resp.headers().get(SERVED_BY).map(|v| v.as_bytes()) {
                                Some(b"old") => Some(Service::Old),
                                Some(b"new") => Some(Service::New),
                                _ => None,
                            };
                            resp.into_body()
                                .collect()
                                .await
                                .ok()
                                .map(|_| (status, from))
                        }
                        Err(_) => None,
                    };
                    let took = sent.elapsed();
                    count.fetch_add(1, Ordering::Relaxed);
                    let Some((status, from)) = answered else {
                        got.failed += 1;
                        continue;
                    };
                    match resource {
                        Resource::Orders => {
                            got.orders += 1;
                            got.orders_5xx += u64::from(status.is_server_error());
                            if let Some(s) = from {
                                got.orders_from[s as usize] += 1;
                                got.latencies[s as usize].push(took);
                            }
                        }
                        Resource::Catalog => {
                            got.catalog += 1;
                            got.catalog_5xx += u64::from(status.is_server_error());
                        }
                    }
                }
                got
            })
        })
        .collect();
    // `\r` redraws the line on a terminal; into a file or pipe it would only
    // pile up, so the progress is shown on terminals alone.
    let live = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        if live {
            eprint!(
                "\r  {:>4.1}s / {:.0}s  {:>8} requests",
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                count.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().flush();
        }
    }
    let mut got = Got::default();
    for w in workers {
        if let Ok(g) = w.await {
            got.merge(g);
        }
    }
    if live {
        eprintln!();
    }
    got
}

/// breakwater's own counters for the scene's route.
#[derive(Default)]
struct Counted {
    /// `/orders` requests the route kept on the old service.
    kept: f64,
    /// Those it moved to the new one.
    moved: f64,
    matched: f64,
    mismatched: f64,
    errors: f64,
    skipped: f64,
    /// Requests to the old service that matched no route (`/catalog`).
    catalog: f64,
}

impl Counted {
    fn read(metrics: &str, route: &str, old: &str, new: &str) -> Counted {
        let split = |destination| {
            sum(
                metrics,
                "breakwater_split_total",
                &[("route", route), ("destination", destination)],
            )
        };
        let mirror = |outcome| {
            sum(
                metrics,
                "breakwater_mirror_total",
                &[("destination", new), ("outcome", outcome)],
            )
        };
        Counted {
            kept: split(old),
            moved: split(new),
            matched: mirror("match"),
            mismatched: mirror("mismatch"),
            errors: mirror("error"),
            skipped: mirror("skipped"),
            catalog: sum(
                metrics,
                "breakwater_requests_total",
                &[
                    ("direction", "outbound"),
                    ("destination", old),
                    ("route", "default"),
                ],
            ),
        }
    }

    /// Copies that were sent (a skipped one never was).
    fn copies(&self) -> f64 {
        self.matched + self.mismatched + self.errors
    }

    /// Whether every request kept on the old service has its mirror outcome.
    fn settled(&self) -> bool {
        self.copies() + self.skipped >= self.kept * f64::from(MIRROR_PERCENT) / 100.0
    }
}

/// The admin `/metrics` once every mirrored copy has been answered (they go in
/// the background, after the client got its response), or after a few seconds.
async fn settled_metrics(admin: SocketAddr, route: &str, old: &str, new: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = fetch(admin, "/metrics").await.unwrap_or_default();
        if Counted::read(&metrics, route, old, new).settled() || Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(concurrency: usize, duration: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let (old, old_seen, _old_task) = spawn(Service::Old).await?;
    let (new, new_seen, _new_task) = spawn(Service::New).await?;
    let spec = format!(
        "{old},path-prefix=/orders,split={new}@{SPLIT_PERCENT},mirror={new}@{MIRROR_PERCENT}"
    );
    let route = RouteOverride::parse(&spec)?;
    let label = route.label();
    let mut config = Config::loopback();
    config.routes.push(route);
    config.warnings = config.validate()?;
    let proxy = Proxy::bind(config).await?;
    let outbound = proxy.addrs().outbound;
    let admin = proxy.addrs().admin;
    let stop = proxy.shutdown_handle();
    let proxy_task = tokio::spawn(proxy.run());

    let ms = |d: Duration| d.as_millis();
    println!("breakwater demo --strangler: moving /orders from an old service to a new one");
    println!(
        "old service on {old}: /orders/N and /catalog/N, ~{} ms",
        ms(Service::Old.latency())
    );
    println!(
        "new service on {new}: /orders/N, ~{} ms, {NEW_FAILS_PERCENT}% of answers 500",
        ms(Service::New.latency())
    );
    println!("breakwater outbound on {outbound}, one route:");
    println!("  --route {spec}");
    let concurrency = concurrency.max(1);
    println!(
        "load through breakwater for {:.0}s: {concurrency} clients, {ORDERS_PERCENT}% /orders/N, \
         {}% /catalog/N",
        duration.as_secs_f64(),
        100 - ORDERS_PERCENT
    );
    let mut got = drive(outbound, old, concurrency, duration).await;

    let (old_label, new_label) = (old.to_string(), new.to_string());
    let metrics = settled_metrics(admin, &label, &old_label, &new_label).await;
    stop.request();
    let _ = proxy_task.await;
    let counted = Counted::read(&metrics, &label, &old_label, &new_label);
    let lines = table(&counted, &old_seen, &new_seen, &mut got);
    println!();
    for line in &lines {
        println!("{line}");
    }
    println!();
    for line in summary(&counted) {
        println!("{line}");
    }
    Ok(())
}

/// `n (p%)`, p of `whole`.
fn share(n: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{n:.0} ({:.1}%)", n * 100.0 / whole)
    } else {
        format!("{n:.0}")
    }
}

fn table(counted: &Counted, old: &Seen, new: &Seen, got: &mut Got) -> Vec<String> {
    let n = |c: &AtomicU64| Seen::get(c) as f64;
    let bw_orders = counted.kept + counted.moved;
    let seen_orders = n(&old.orders) + n(&new.orders);
    let got_orders = got.orders as f64;
    let bw_copies = counted.copies();
    let seen_copies = n(&new.copies);
    let dash = || "—".to_string();
    let p50 = |d: Option<Duration>| match d {
        Some(d) if d < Duration::from_millis(100) => format!("{:.1}", d.as_secs_f64() * 1000.0),
        Some(d) => format!("{:.0}", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    };
    let latency = format!(
        "{} / {} ms",
        p50(got.p50(Service::Old)),
        p50(got.p50(Service::New))
    );
    let rows: [(&str, String, String, String); 10] = [
        (
            "/orders requests",
            format!("{bw_orders:.0}"),
            format!("{seen_orders:.0}"),
            format!("{got_orders:.0}"),
        ),
        (
            "  kept on old",
            share(counted.kept, bw_orders),
            share(n(&old.orders), seen_orders),
            share(got.orders_from[0] as f64, got_orders),
        ),
        (
            "  moved to new (split)",
            share(counted.moved, bw_orders),
            share(n(&new.orders), seen_orders),
            share(got.orders_from[1] as f64, got_orders),
        ),
        (
            "  copied to new (mirror)",
            format!("{bw_copies:.0}"),
            format!("{seen_copies:.0}"),
            dash(),
        ),
        (
            "    match: new as old",
            share(counted.matched, bw_copies),
            share(seen_copies - n(&new.copies_failed), seen_copies),
            dash(),
        ),
        (
            "    mismatch: new 5xx",
            share(counted.mismatched, bw_copies),
            share(n(&new.copies_failed), seen_copies),
            dash(),
        ),
        (
            "    skipped / error",
            format!("{:.0} / {:.0}", counted.skipped, counted.errors),
            dash(),
            dash(),
        ),
        (
            "  5xx to the clients",
            String::new(),
            share(n(&new.orders_failed), seen_orders),
            share(got.orders_5xx as f64, got_orders),
        ),
        (
            "  p50 latency, old / new",
            String::new(),
            String::new(),
            latency,
        ),
        (
            "/catalog requests (old)",
            format!("{:.0}", counted.catalog),
            format!("{}", Seen::get(&old.catalog)),
            format!("{}", got.catalog),
        ),
    ];
    let row =
        |a: &str, b: &str, c: &str, d: &str| format!("| {a:<25} | {b:>19} | {c:>19} | {d:>19} |");
    let mut lines = vec![
        row(
            "",
            "breakwater counted",
            "the services saw",
            "the clients got",
        ),
        format!("|{:-<27}|{:-<21}|{:-<21}|{:-<21}|", "", "", "", ""),
    ];
    lines.extend(rows.iter().map(|(a, b, c, d)| row(a, b, c, d)));
    let strays = Seen::get(&old.other) + Seen::get(&new.other);
    if strays > 0 {
        lines.push(format!(
            "{strays} requests reached a service that does not serve them (old {}, new {}).",
            Seen::get(&old.other),
            Seen::get(&new.other)
        ));
    }
    if got.failed > 0 || got.catalog_5xx > 0 {
        lines.push(format!(
            "{} requests got no response; {} /catalog requests got a 5xx.",
            got.failed, got.catalog_5xx
        ));
    }
    lines
}

fn summary(counted: &Counted) -> Vec<String> {
    let copies = counted.copies();
    let rate = if copies > 0.0 {
        format!("{:.1}%", counted.matched * 100.0 / copies)
    } else {
        "-".into()
    };
    vec![
        "The split share is exact (a low-discrepancy sequence, not coin flips). The mirror copied"
            .to_string(),
        "the other /orders to the new service and compared its status class with what the client"
            .to_string(),
        format!(
            "got: {rate} alike. Its 500s show here, before any user depends on it; clients never wait."
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widest line the scene may print.
    const WIDTH: usize = 100;

    #[test]
    fn the_table_fits_in_100_columns() {
        // Ten million requests, and answers as slow as the default timeout.
        let big = 9_999_999.0;
        let counted = Counted {
            kept: big,
            moved: big,
            matched: big,
            mismatched: big,
            errors: big,
            skipped: big,
            catalog: big,
        };
        let seen = Seen::default();
        for c in [
            &seen.orders,
            &seen.copies,
            &seen.catalog,
            &seen.orders_failed,
        ] {
            c.store(9_999_999, Ordering::Relaxed);
        }
        let mut got = Got {
            orders: 9_999_999,
            orders_from: [9_999_999; 2],
            orders_5xx: 9_999_999,
            latencies: [vec![Duration::from_secs(15)], vec![Duration::from_secs(15)]],
            catalog: 9_999_999,
            ..Got::default()
        };
        let lines = table(&counted, &seen, &seen, &mut got);
        for line in lines.iter().chain(&summary(&counted)) {
            assert!(
                line.chars().count() <= WIDTH,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        let widths: Vec<usize> = lines[..12].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
    }
}
