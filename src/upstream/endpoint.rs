//! The endpoints of a destination: each address its name resolves to, with its
//! own connection pool and load figures. Re-resolved when the DNS TTL passes;
//! an address that stays keeps its endpoint (and its state).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::connect::Connector;
use crate::error::ProxyError;
use crate::metrics::DestinationMetrics;
use crate::policy::balance::{Load, PeakEwma, pick_p2c};
use crate::policy::breaker::{Breaker, BreakerConfig};
use crate::transport::pool::EndpointPool;
use prometheus::IntGauge;

/// One address of a destination.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pool: Arc<EndpointPool>,
    pub breaker: Arc<Breaker>,
    /// `breakwater_circuit_state` for this endpoint.
    pub circuit_gauge: IntGauge,
    in_flight: AtomicUsize,
    latency: Mutex<PeakEwma>,
}

/// Latency assumed for an endpoint that has not answered yet, and how fast old
/// samples fade (linkerd2-proxy's defaults).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);

impl Endpoint {
    fn new(addr: SocketAddr, settings: &EndpointConfig) -> Arc<Self> {
        let circuit_gauge = settings.metrics.circuit_gauge(&addr.to_string());
        circuit_gauge.set(0);
        Arc::new(Endpoint {
            addr,
            pool: EndpointPool::with_tls(
                addr,
                settings.connect_timeout,
                settings.idle_timeout,
                settings.tls.clone(),
            ),
            breaker: Arc::new(Breaker::new(settings.breaker, Instant::now())),
            circuit_gauge,
            in_flight: AtomicUsize::new(0),
            latency: Mutex::new(PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, Instant::now())),
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

    fn load(&self, now: Instant) -> Load {
        let ewma = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate(now);
        Load {
            in_flight: self.in_flight(),
            ewma,
            eligible: self.breaker.eligible(now),
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
        })
    }
}

/// Keeps an endpoint's in-flight count up while an attempt uses it.
pub struct EndpointGuard(Arc<Endpoint>);

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination's endpoints and when its name was resolved to them.
type Resolved = (Arc<[Arc<Endpoint>]>, Instant);

/// What every endpoint of a destination is made with.
pub struct EndpointConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub breaker: BreakerConfig,
    pub metrics: Arc<DestinationMetrics>,
    /// TLS to the upstream (`--route HOST,tls=true`).
    pub tls: Option<crate::tls::Origin>,
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

    /// The endpoints now, resolving the name when its TTL has passed. A failed
    /// re-resolution keeps the endpoints it had.
    pub async fn current(&self, connector: &Connector) -> Result<Arc<[Arc<Endpoint>]>, ProxyError> {
        if let Some(list) = self.fresh() {
            return Ok(list);
        }
        let _one = self.resolving.lock().await;
        if let Some(list) = self.fresh() {
            return Ok(list);
        }
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
    let loads: Vec<Load> = endpoints.iter().map(|e| e.load(now)).collect();
    pick_p2c(&loads, |n| fastrand::usize(..n)).and_then(|i| endpoints.get(i))
}

/// Picks an endpoint whatever its circuit, by the same load rule: for a
/// breaker that does not decide (observed, or forced closed).
pub fn pick_any(endpoints: &[Arc<Endpoint>], now: Instant) -> Option<&Arc<Endpoint>> {
    if let [only] = endpoints {
        return Some(only);
    }
    let loads: Vec<Load> = endpoints
        .iter()
        .map(|e| Load {
            eligible: true,
            ..e.load(now)
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
