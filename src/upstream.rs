//! Per-destination state: the route policy that applies to a destination and its
//! cached metric handles, in a registry capped so that a scan of many hosts cannot
//! grow memory or metric cardinality without bound.

pub mod endpoint;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::Authority;

use crate::config::{Config, Protocol, RetryPolicy, RouteOverride};
use crate::destination::Destination;
use crate::metrics::{DestinationMetrics, Direction, Metrics};
use crate::policy::budget::RetryBudget;
use endpoint::Endpoints;

/// The policy in force for one destination: the global flags, overridden by the
/// first matching `--route`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoutePolicy {
    #[serde(serialize_with = "crate::config::units::serialize_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "crate::config::units::serialize_duration")]
    pub connect_timeout: Duration,
    pub protocol: Protocol,
    pub retry: RetryPolicy,
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
            route.apply(&mut policy.retry);
        }
        policy
    }

    /// Only the connect timeout, for a connector that knows host and port.
    pub fn connect_timeout_for(&self, host: &str, port: u16) -> Option<Duration> {
        let dest = Destination::new(host, port);
        self.routes
            .iter()
            .find(|r| r.matches(&dest))
            .and_then(|r| r.connect_timeout)
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
}

/// How endpoints of every destination are kept: `--upstream-idle-timeout` for
/// pooled connections, `--dns-ttl` for resolutions.
#[derive(Clone, Copy, Debug)]
pub struct EndpointSettings {
    pub idle_timeout: Duration,
    pub dns_ttl: Duration,
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
            policy.connect_timeout,
            settings.idle_timeout,
            settings.dns_ttl,
        );
        DestinationState {
            endpoints,
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
            self.settings,
        ));
        if labeled {
            entries.insert(dest, state.clone());
        }
        state
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Destination, Arc<DestinationState>>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
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
            crate::app::endpoint_settings(&config),
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
