//! The endpoints of a destination: each address its name resolves to, with its
//! own connection pool and load figures. Re-resolved when the DNS TTL passes;
//! an address that stays keeps its endpoint (and its state).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::connect::Connector;
use crate::discovery::kubernetes::KubeDiscovery;
use crate::discovery::{Lookup, Watched};
use crate::error::ProxyError;
use crate::metrics::recent::RecentTraffic;
use crate::metrics::{CircuitSeries, DestinationMetrics};
use crate::policy::balance::{Load, PeakEwma, pick_p2c};
use crate::policy::breaker::{Breaker, BreakerConfig};
use crate::transport::pool::EndpointPool;

/// One address of a destination.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
    pub breaker: Arc<Breaker>,
    /// `breakwater_circuit_state` for this endpoint; its series goes with it.
    pub circuit_gauge: CircuitSeries,
    in_flight: AtomicUsize,
    latency: Mutex<PeakEwma>,
    /// When it joined its destination's set: slow start may ramp from it.
    created: Instant,
    /// `--slow-start`; zero: off.
    slow_start: Duration,
    /// The destination's: its metrics, its count of ejected endpoints and
    /// `max-ejection-percent`, for a verdict a response body gives late.
    pub metrics: Arc<DestinationMetrics>,
    pub ejected: Arc<AtomicUsize>,
    pub max_ejection_percent: u8,
    /// Its attempts of the last half minute to minute, for `breakwater status`.
    pub recent: RecentTraffic,
}

/// Latency assumed for an endpoint that has not answered yet, and how fast old
/// samples fade (linkerd2-proxy's defaults).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);

impl Endpoint {
    fn new(addr: SocketAddr, settings: &EndpointConfig) -> Arc<Self> {
        let circuit_gauge = settings.metrics.circuit_gauge(&addr.to_string());
        let now = Instant::now();
        Arc::new(Endpoint {
            addr,
            pool: EndpointPool::with_options(
                addr,
                crate::transport::pool::PoolOptions {
                    connect_timeout: settings.connect_timeout,
                    idle_timeout: settings.idle_timeout,
                    tls: settings.tls.clone(),
                    h2_connections: settings.h2_connections,
                    max_age: settings.max_connection_age,
                },
            ),
            breaker: Arc::new(Breaker::new(settings.breaker, now)),
            circuit_gauge,
            in_flight: AtomicUsize::new(0),
            latency: Mutex::new(PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, now)),
            created: now,
            slow_start: settings.slow_start,
            metrics: settings.metrics.clone(),
            ejected: settings.ejected.clone(),
            max_ejection_percent: settings.max_ejection_percent,
            recent: RecentTraffic::new(),
        })
    }

    /// Counts an attempt on this endpoint until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> EndpointGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        EndpointGuard(self.clone())
    }

    /// Feeds the latency estimate with the time to a response head.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let mut ewma = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        ewma.observe(rtt, now);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What the balancer weighs; `first_created`: when the oldest endpoint of
    /// the set it is picked from was made (see [`set_start`]).
    fn load(&self, now: Instant, first_created: Instant) -> Load {
        use crate::policy::balance::{FULL_WEIGHT, ramp_start, slow_start_weight};
        let ewma = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate(now);
        let (eligible, recovered) = self.breaker.eligibility(now);
        let weight = if self.slow_start.is_zero() {
            FULL_WEIGHT
        } else {
            let since = ramp_start(self.created, recovered, first_created);
            slow_start_weight(self.slow_start, since, now)
        };
        Load {
            in_flight: self.in_flight(),
            ewma,
            eligible,
            weight,
        }
    }
}

impl Endpoint {
    /// What `/upstreams` shows of this endpoint.
    pub fn snapshot(&self, now: Instant) -> serde_json::Value {
        let ewma = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate(now);
        serde_json::json!({
            "address": self.addr.to_string(),
            "circuit": self.breaker.snapshot(now),
            "in_flight": self.in_flight(),
            "latency_ewma_ms": ewma.as_secs_f64() * 1000.0,
            "speaks": self.pool.speaks().snapshot(),
            "h2_connections": self.pool.h2_connections(),
            "recent": self.recent.read(now),
        })
    }
}

/// Keeps an endpoint's in-flight count up while an attempt uses it.
pub struct EndpointGuard(Arc<Endpoint>);

impl EndpointGuard {
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination's endpoints and when its name was resolved to them.
type Resolved = (Arc<[Arc<Endpoint>]>, Instant);

/// What every endpoint of a destination is made with.
#[derive(Clone)]
pub struct EndpointConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub breaker: BreakerConfig,
    pub metrics: Arc<DestinationMetrics>,
    /// The destination's ejected endpoints, and the cap on them.
    pub ejected: Arc<AtomicUsize>,
    pub max_ejection_percent: u8,
    /// TLS to the upstream (`--route HOST,tls=true`).
    pub tls: Option<crate::tls::Origin>,
    /// `--h2-connections-per-endpoint` for an endpoint that may stand for many
    /// pods (a ClusterIP); 1 for one that is a pod (discovered).
    pub h2_connections: usize,
    /// `--upstream-max-connection-age`.
    pub max_connection_age: Option<Duration>,
    /// `--slow-start`; zero: off.
    pub slow_start: Duration,
}

impl EndpointConfig {
    /// The same, for an endpoint that is one pod (discovered): one HTTP/2
    /// connection, since nothing behind it chooses per connection.
    fn for_a_pod(&self) -> EndpointConfig {
        EndpointConfig {
            h2_connections: 1,
            ..self.clone()
        }
    }
}

/// Where a destination's endpoints come from, with `--discovery kubernetes`.
enum Source {
    /// Discovery not asked yet, or its answer is due again.
    Unasked,
    /// Not a Service: DNS (or the address literal).
    Dns,
    /// A Service's pods, as of the cell's `version`.
    Discovered(Arc<Watched>, u64),
    /// A Service that discovery cannot serve now: DNS meanwhile.
    Fallback(String),
}

/// The resolved endpoints of one destination.
pub struct Endpoints {
    host: Box<str>,
    port: u16,
    config: EndpointConfig,
    /// How long a resolution is used; `None` for an address literal.
    ttl: Option<Duration>,
    current: RwLock<Option<Resolved>>,
    /// One resolution at a time; the others use what is there.
    resolving: tokio::sync::Mutex<()>,
    /// Only read when the connector has discovery.
    source: RwLock<Source>,
}

impl Endpoints {
    pub fn new(host: &str, port: u16, config: EndpointConfig, ttl: Duration) -> Self {
        let literal = host.parse::<IpAddr>().ok();
        let endpoints = Endpoints {
            host: host.into(),
            port,
            ttl: if literal.is_some() { None } else { Some(ttl) },
            current: RwLock::new(None),
            resolving: tokio::sync::Mutex::new(()),
            source: RwLock::new(Source::Unasked),
            config,
        };
        if let Some(ip) = literal {
            let list: Arc<[Arc<Endpoint>]> =
                Arc::new([Endpoint::new(SocketAddr::new(ip, port), &endpoints.config)]);
            *endpoints.current.write().unwrap_or_else(|p| p.into_inner()) =
                Some((list, Instant::now()));
        }
        endpoints
    }

    /// The endpoints as last resolved, without resolving.
    pub fn known(&self) -> Option<Arc<[Arc<Endpoint>]>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(list, _)| list.clone())
    }

    fn fresh(&self) -> Option<Arc<[Arc<Endpoint>]>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let (list, at) = current.as_ref()?;
        match self.ttl {
            Some(ttl) if at.elapsed() >= ttl => None,
            _ => Some(list.clone()),
        }
    }

    /// The endpoints now: with discovery, a Service's ready pods (one atomic
    /// load tells they are current); otherwise, or for anything that is not a
    /// Service, the name resolved when its TTL has passed. A failed
    /// re-resolution keeps the endpoints it had.
    pub async fn current(&self, connector: &Connector) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        if let Some(discovery) = connector.discovery() {
            return self.current_discovered(connector, discovery).await;
        }
        if let Some(list) = self.fresh() {
            return Ok(list);
        }
        let _one = self.resolving.lock().await;
        if let Some(list) = self.fresh() {
            return Ok(list);
        }
        self.resolve(connector).await
    }

    /// The list as it stands, if its source says it is current.
    fn discovered_fresh(&self) -> Option<Result<Arc<[Arc<Endpoint>]>, ProxyError>> {
        let source = self.source.read().unwrap_or_else(|p| p.into_inner());
        match &*source {
            Source::Discovered(cell, version) if cell.version() == *version => Some(
                self.known()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| self.no_pods(cell)),
            ),
            Source::Dns | Source::Fallback(_) => self.fresh().map(Ok),
            _ => None,
        }
    }

    async fn current_discovered(
        &self,
        connector: &Connector,
        discovery: &KubeDiscovery,
    ) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        if let Some(list) = self.discovered_fresh() {
            return list;
        }
        let _one = self.resolving.lock().await;
        if let Some(list) = self.discovered_fresh() {
            return list;
        }
        let known = match &*self.source.read().unwrap_or_else(|p| p.into_inner()) {
            Source::Discovered(cell, _) => Some(cell.clone()),
            _ => None,
        };
        let cell = match known {
            Some(cell) => cell,
            None => match discovery.lookup(&self.host, self.port).await {
                Lookup::Found(cell) => cell,
                Lookup::NotMine => {
                    *self.source.write().unwrap_or_else(|p| p.into_inner()) = Source::Dns;
                    return self.resolve_or_keep(connector).await;
                }
                Lookup::Unavailable(why) => {
                    *self.source.write().unwrap_or_else(|p| p.into_inner()) = Source::Fallback(why);
                    return self.resolve_or_keep(connector).await;
                }
            },
        };
        let list = self.follow(cell.clone());
        if list.is_empty() {
            return Err(self.no_pods(&cell));
        }
        Ok(list)
    }

    /// Rebuilds the list from the cell's set: endpoints still there are kept
    /// (their breakers and pools), new ones made, gone ones dropped (requests
    /// in flight on them finish, then their series go with them).
    fn follow(&self, cell: Arc<Watched>) -> Arc<[Arc<Endpoint>]> {
        let (addrs, version) = cell.addrs();
        // A Service may have thousands of pods: find the kept ones by address.
        let previous: HashMap<SocketAddr, Arc<Endpoint>> = self
            .known()
            .map(|list| list.iter().map(|e| (e.addr, e.clone())).collect())
            .unwrap_or_default();
        let pod = self.config.for_a_pod();
        // Each pod is one endpoint: one HTTP/2 connection reaches it.
        let list: Arc<[Arc<Endpoint>]> = addrs
            .iter()
            .map(|addr| {
                previous
                    .get(addr)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(*addr, &pod))
            })
            .collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Some((list.clone(), Instant::now()));
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Source::Discovered(cell, version);
        list
    }

    /// The endpoints as `/upstreams` shows them: a discovered set as it is
    /// now, even before a request has asked for it.
    pub fn snapshot_list(&self) -> Option<Arc<[Arc<Endpoint>]>> {
        let stale = match &*self.source.read().unwrap_or_else(|p| p.into_inner()) {
            Source::Discovered(cell, version) if cell.version() != *version => Some(cell.clone()),
            _ => None,
        };
        match stale {
            Some(cell) => Some(self.follow(cell)),
            None => self.known(),
        }
    }

    /// DNS for a destination discovery does not serve: a fresh answer if one
    /// is due, else the one there is.
    async fn resolve_or_keep(
        &self,
        connector: &Connector,
    ) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        match self.fresh() {
            Some(list) => Ok(list),
            None => self.resolve(connector).await,
        }
    }

    fn no_pods(&self, cell: &Watched) -> ProxyError {
        ProxyError::ConnectFailure {
            dest: format!("{}:{}", self.host, self.port),
            cause: format!("Service {} has no ready endpoints", cell.service),
        }
    }

    /// Where the endpoints come from, for `/upstreams`: `(discovery, service,
    /// fallback reason)`.
    pub fn source(&self) -> (&'static str, Option<String>, Option<String>) {
        match &*self.source.read().unwrap_or_else(|p| p.into_inner()) {
            Source::Discovered(cell, _) => ("kubernetes", Some(cell.service.clone()), None),
            Source::Fallback(why) => ("dns", None, Some(why.clone())),
            Source::Unasked | Source::Dns => ("dns", None, None),
        }
    }

    /// Resolves the name by DNS; the caller holds `resolving`.
    async fn resolve(&self, connector: &Connector) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        let resolved = connector.resolve(&self.host).await;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let ips = match resolved {
            Ok(ips) => ips,
            Err(e) => {
                if let Some((list, at)) = current.as_mut() {
                    *at = Instant::now();
                    return Ok(list.clone());
                }
                return Err(ProxyError::ConnectFailure {
                    dest: format!("{}:{}", self.host, self.port),
                    cause: e.to_string(),
                });
            }
        };
        let previous = current.as_ref().map(|(l, _)| l.clone());
        let list: Arc<[Arc<Endpoint>]> = ips
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, self.port);
                previous
                    .as_ref()
                    .and_then(|p| p.iter().find(|e| e.addr == addr).cloned())
                    .unwrap_or_else(|| Endpoint::new(addr, &self.config))
            })
            .collect();
        *current = Some((list.clone(), Instant::now()));
        Ok(list)
    }
}

/// Picks an endpoint whose circuit admits requests, by power of two choices on
/// in-flight count and latency; `None` when every circuit is open.
pub fn pick(endpoints: &[Arc<Endpoint>], now: Instant) -> Option<&Arc<Endpoint>> {
    if let [only] = endpoints {
        // The breaker's admit decides for a lone endpoint; asking twice costs a lock.
        return Some(only);
    }
    let first = set_start(endpoints, now);
    let loads: Vec<Load> = endpoints.iter().map(|e| e.load(now, first)).collect();
    pick_p2c(&loads, |n| fastrand::usize(..n)).and_then(|i| endpoints.get(i))
}

/// When the oldest of a set's endpoints was made: those made with it came
/// with the destination's first resolution and do not ramp up in slow start
/// (`now` when slow start is off: nothing asks).
fn set_start(endpoints: &[Arc<Endpoint>], now: Instant) -> Instant {
    if endpoints.first().is_none_or(|e| e.slow_start.is_zero()) {
        return now;
    }
    endpoints.iter().map(|e| e.created).min().unwrap_or(now)
}

/// Picks an endpoint whatever its circuit, by the same load rule: for a
/// breaker that does not decide (observed, or forced closed).
pub fn pick_any(endpoints: &[Arc<Endpoint>], now: Instant) -> Option<&Arc<Endpoint>> {
    if let [only] = endpoints {
        return Some(only);
    }
    let first = set_start(endpoints, now);
    let loads: Vec<Load> = endpoints
        .iter()
        .map(|e| Load {
            eligible: true,
            ..e.load(now, first)
        })
        .collect();
    pick_p2c(&loads, |n| fastrand::usize(..n)).and_then(|i| endpoints.get(i))
}

/// The soonest an open endpoint of these will take a probe.
pub fn next_probe(endpoints: &[Arc<Endpoint>], now: Instant) -> Duration {
    endpoints
        .iter()
        .filter_map(|e| e.breaker.snapshot(now).next_probe_in_us)
        .min()
        .map_or(Duration::ZERO, Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_departed_pod_takes_its_circuit_series_with_it() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let dest = crate::metrics::Direction::Outbound;
        let config = EndpointConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            breaker: crate::config::Config::loopback().breaker,
            metrics: Arc::new(metrics.destination(dest, "orders.shop:80", "default")),
            ejected: Arc::new(AtomicUsize::new(0)),
            max_ejection_percent: 50,
            tls: None,
            h2_connections: 4,
            max_connection_age: None,
            slow_start: Duration::ZERO,
        };
        let endpoints = Endpoints::new("orders.shop", 80, config, Duration::from_secs(5));
        let cell = Arc::new(Watched::new("orders.shop:80".into()));
        let pod = |last: u8| SocketAddr::from(([10, 0, 0, last], 8080));
        let text = || String::from_utf8(metrics.encode()).unwrap_or_default();
        cell.set(vec![pod(1), pod(2)]);
        let first = endpoints.follow(cell.clone());
        assert!(text().contains("10.0.0.2:8080"), "{}", text());
        cell.set(vec![pod(1), pod(3)]);
        let second = endpoints.follow(cell.clone());
        assert!(
            Arc::ptr_eq(&first[0], &second[0]),
            "a pod that stays is kept"
        );
        assert!(
            text().contains("10.0.0.2:8080"),
            "a request in flight may still hold the pod that left"
        );
        drop(first);
        let text = text();
        assert!(!text.contains("10.0.0.2:8080"), "{text}");
        assert!(
            text.contains("10.0.0.1:8080") && text.contains("10.0.0.3:8080"),
            "{text}"
        );
    }
}
