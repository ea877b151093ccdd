//! Per-destination state: the route policy that applies to a destination and its
//! cached metric handles, in a registry capped so that a scan of many hosts cannot
//! grow memory or metric cardinality without bound.

pub mod endpoint;
pub mod reconnect;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::Authority;

use crate::addr::Destination;
use crate::config::{BreakerConfig, BulkheadPolicy, Config, Protocol, RetryPolicy, RouteOverride};
use crate::metrics::{DestinationMetrics, Direction, Metrics};
use crate::policy::adaptive::AdaptiveLimit;
use crate::policy::budget::RetryBudget;
use crate::policy::bulkhead::Bulkhead;
use crate::policy::limits::ConcurrencyLimit;
use endpoint::{EndpointConfig, Endpoints};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

/// The policy in force for one destination: the global flags, overridden by the
/// first matching `--route`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoutePolicy {
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub connect_timeout: Duration,
    pub protocol: Protocol,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    pub max_ejection_percent: u8,
    /// `None`: no limit (the app without `--inbound-max-concurrent`).
    pub bulkhead: Option<BulkheadPolicy>,
    /// Speak TLS to the upstream (`--route HOST,tls=true`).
    pub tls: bool,
}

/// The `--route` flags in order, with the global defaults they override.
pub struct RouteTable {
    defaults: RoutePolicy,
    routes: Vec<RouteOverride>,
}

impl RouteTable {
    pub fn new(config: &Config) -> Self {
        RouteTable {
            defaults: RoutePolicy {
                timeout: config.timeout,
                connect_timeout: config.connect_timeout,
                protocol: Protocol::Auto,
                retry: config.retry.clone(),
                breaker: config.breaker,
                max_ejection_percent: config.max_ejection_percent,
                bulkhead: Some(config.bulkhead),
                tls: false,
            },
            routes: config.routes.clone(),
        }
    }

    /// A table with no `--route`s: every destination gets `defaults`.
    pub fn with_defaults(defaults: RoutePolicy) -> Self {
        RouteTable {
            defaults,
            routes: Vec::new(),
        }
    }

    fn defaults_bulkhead(&self) -> BulkheadPolicy {
        self.defaults.bulkhead.unwrap_or(BulkheadPolicy {
            max_concurrent: ConcurrencyLimit::Fixed(1024),
            min: 4,
            max: 1024,
            max_queue: 0,
            queue_timeout: Duration::from_secs(1),
        })
    }

    pub fn defaults(&self) -> &RoutePolicy {
        &self.defaults
    }

    /// Each `--route` with the policy it results in, for `/config`.
    pub fn describe(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                let dest = Destination::new(&r.host, r.port.unwrap_or(80));
                let mut policy = self.defaults.clone();
                if let Some(first) = self.routes.iter().find(|other| other.matches(&dest)) {
                    // An earlier route with the same host shadows this one.
                    if std::ptr::eq(first, r) {
                        policy = self.policy_for(&dest);
                    }
                }
                let target = match r.port {
                    Some(p) => format!("{}:{p}", r.host),
                    None => r.host.clone(),
                };
                serde_json::json!({ "route": target, "policy": policy })
            })
            .collect();
        serde_json::json!({ "default": self.defaults, "routes": routes })
    }

    pub fn policy_for(&self, dest: &Destination) -> RoutePolicy {
        let mut policy = self.defaults.clone();
        if let Some(route) = self.routes.iter().find(|r| r.matches(dest)) {
            policy.timeout = route.timeout.unwrap_or(policy.timeout);
            policy.connect_timeout = route.connect_timeout.unwrap_or(policy.connect_timeout);
            policy.protocol = route.protocol.unwrap_or(policy.protocol);
            policy.tls = route.tls.unwrap_or(policy.tls);
            route.apply(&mut policy.retry);
            let mut bulkhead = policy.bulkhead.unwrap_or(self.defaults_bulkhead());
            route.limits.apply(
                &mut policy.breaker,
                &mut bulkhead,
                &mut policy.max_ejection_percent,
            );
            policy.bulkhead = Some(bulkhead);
        }
        policy
    }
}

/// The last destination a client connection's requests went to: most
/// connections talk to one, so this spares the shared registry a lookup per
/// request. Kept by the listener for each connection ([`crate::listener::Handler::ConnState`]).
#[derive(Default)]
pub struct LastDestination(Mutex<Option<Arc<DestinationState>>>);

impl LastDestination {
    /// The last destination if `is_it` says it is the one wanted, else the one
    /// `find` gives, remembered for the next request.
    pub fn get_or(
        &self,
        is_it: impl FnOnce(&DestinationState) -> bool,
        find: impl FnOnce() -> Arc<DestinationState>,
    ) -> Arc<DestinationState> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = last.as_ref()
            && is_it(state)
        {
            return state.clone();
        }
        let state = find();
        *last = Some(state.clone());
        state
    }
}

/// Everything the outbound pipeline needs about one destination, built once.
pub struct DestinationState {
    pub dest: Destination,
    pub authority: Authority,
    pub policy: RoutePolicy,
    pub metrics: Arc<DestinationMetrics>,
    pub budget: Arc<RetryBudget>,
    pub endpoints: Endpoints,
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// Moves the bulkhead's limit with `--max-concurrent auto`.
    pub adaptive: Option<Mutex<AdaptiveLimit>>,
    /// Endpoints whose circuit is open or half-open, for `--max-ejection-percent`.
    pub ejected: AtomicUsize,
}

impl DestinationState {
    /// What `/upstreams` shows of this destination.
    pub fn snapshot(&self, direction: Direction) -> serde_json::Value {
        let now = tokio::time::Instant::now();
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .known()
            .map(|list| list.iter().map(|e| e.snapshot(now)).collect())
            .unwrap_or_default();
        serde_json::json!({
            "destination": self.dest.to_string(),
            "direction": direction.as_str(),
            "bulkhead": self.bulkhead.as_ref().map(|b| b.snapshot()),
            "adaptive_limit": self.adaptive.as_ref().map(|a| a.lock().unwrap_or_else(|p| p.into_inner()).snapshot()),
            "ejected": self.ejected.load(std::sync::atomic::Ordering::Relaxed),
            "endpoints": endpoints,
        })
    }
}

/// How endpoints of every destination are kept: `--upstream-idle-timeout` for
/// pooled connections, `--dns-ttl` for resolutions.
#[derive(Clone)]
pub struct EndpointSettings {
    pub idle_timeout: Duration,
    pub dns_ttl: Duration,
    /// Outbound TLS, for routes with `tls=true`.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl EndpointSettings {
    /// What the flags say; outbound adds its TLS client.
    pub fn from_config(config: &Config) -> Self {
        EndpointSettings {
            idle_timeout: config.upstream_idle_timeout,
            dns_ttl: config.dns_ttl,
            tls: None,
        }
    }
}

impl DestinationState {
    pub fn new(
        dest: Destination,
        policy: RoutePolicy,
        metrics: Arc<DestinationMetrics>,
        settings: EndpointSettings,
    ) -> Self {
        let budget = RetryBudget::new(policy.retry.budget_percent, policy.retry.budget_min_per_sec);
        let endpoints = Endpoints::new(
            dest.host(),
            dest.port(),
            EndpointConfig {
                connect_timeout: policy.connect_timeout,
                idle_timeout: settings.idle_timeout,
                breaker: policy.breaker,
                metrics: metrics.clone(),
                tls: match (&settings.tls, policy.tls) {
                    (Some(client), true) => {
                        Some(crate::tls::Origin::new(client.clone(), dest.host()))
                    }
                    _ => None,
                },
            },
            settings.dns_ttl,
        );
        let bulkhead = policy.bulkhead.map(|b| {
            let limit = b.initial_limit();
            metrics.limit.set(limit as i64);
            Arc::new(Bulkhead::new(limit, b.max_queue, b.queue_timeout))
        });
        let adaptive = policy
            .bulkhead
            .filter(|b| b.max_concurrent == ConcurrencyLimit::Auto)
            .map(|b| Mutex::new(AdaptiveLimit::new(b.min, b.max, b.initial_limit())));
        DestinationState {
            endpoints,
            bulkhead,
            adaptive,
            ejected: AtomicUsize::new(0),
            authority: dest.authority(),
            dest,
            policy,
            metrics,
            budget: Arc::new(budget),
        }
    }
}

/// Destinations seen so far. The first `--metrics-max-destinations` get a state of
/// their own; later ones are built per request and share the `other` label.
pub struct Registry {
    direction: Direction,
    routes: Arc<RouteTable>,
    metrics: Arc<Metrics>,
    entries: RwLock<HashMap<Destination, Arc<DestinationState>>>,
    max_entries: usize,
    overflow: Arc<DestinationMetrics>,
    settings: EndpointSettings,
}

impl Registry {
    pub fn new(
        direction: Direction,
        routes: Arc<RouteTable>,
        metrics: Arc<Metrics>,
        max_entries: usize,
        settings: EndpointSettings,
    ) -> Self {
        let overflow = Arc::new(metrics.destination(direction, "other"));
        Registry {
            direction,
            routes,
            metrics,
            entries: RwLock::new(HashMap::new()),
            max_entries,
            overflow,
            settings,
        }
    }

    pub fn routes(&self) -> &Arc<RouteTable> {
        &self.routes
    }

    /// The state for `host:port`.
    pub fn get(&self, host: &str, port: u16) -> Arc<DestinationState> {
        let dest = Destination::new(host, port);
        if let Some(found) = self.read().get(&dest) {
            return found.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = entries.get(&dest) {
            return found.clone();
        }
        let labeled = entries.len() < self.max_entries;
        let metrics = if labeled {
            Arc::new(self.metrics.destination(self.direction, &dest.to_string()))
        } else {
            self.overflow.clone()
        };
        let policy = self.routes.policy_for(&dest);
        let state = Arc::new(DestinationState::new(
            dest.clone(),
            policy,
            metrics,
            self.settings.clone(),
        ));
        if labeled {
            entries.insert(dest, state.clone());
        }
        state
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Destination, Arc<DestinationState>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every destination with a state of its own, for `/upstreams`.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let entries: Vec<Arc<DestinationState>> = self.read().values().cloned().collect();
        entries.iter().map(|s| s.snapshot(self.direction)).collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize, routes: &[&str]) -> Registry {
        let mut config = Config::loopback();
        config.routes = routes
            .iter()
            .filter_map(|r| RouteOverride::parse(r).ok())
            .collect();
        Registry::new(
            Direction::Outbound,
            Arc::new(RouteTable::new(&config)),
            Arc::new(Metrics::new()),
            max,
            EndpointSettings::from_config(&config),
        )
    }

    #[test]
    fn first_matching_route_overrides_the_defaults() {
        let r = registry(
            10,
            &[
                "payments:8080,timeout=2s",
                "payments,timeout=3s,protocol=h2",
            ],
        );
        assert_eq!(
            r.get("payments", 8080).policy.timeout,
            Duration::from_secs(2)
        );
        let other_port = r.get("PAYMENTS", 9090);
        assert_eq!(other_port.policy.timeout, Duration::from_secs(3));
        assert_eq!(other_port.policy.protocol, Protocol::H2);
        assert_eq!(r.get("search", 80).policy.timeout, Duration::from_secs(15));
    }

    #[test]
    fn a_scan_of_hosts_is_capped() {
        let r = registry(3, &[]);
        for i in 0..1000 {
            let state = r.get(&format!("host-{i}"), 80);
            if i >= 3 {
                assert_eq!(state.metrics.label(), "other");
            }
        }
        assert_eq!(r.len(), 3);
        assert!(Arc::ptr_eq(&r.get("host-1", 80), &r.get("host-1", 80)));
    }
}
