//! Per-destination state: the route policy that applies to a destination and its
//! cached metric handles, in a registry capped so that a scan of many hosts cannot
//! grow memory or metric cardinality without bound.

pub mod endpoint;
pub mod reconnect;
pub mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::uri::Authority;

use crate::addr::Destination;
use crate::config::{
    BreakerConfig, BulkheadPolicy, Config, Modes, Protocol, RequestFacts, RetryPolicy,
    RouteDirection, RouteOverride,
};
use crate::metrics::recent::RecentTraffic;
use crate::metrics::{DestinationMetrics, Direction, Metrics, RegistryCounts, TrafficSeries};
use crate::policy::adaptive::AdaptiveLimit;
use crate::policy::budget::RetryBudget;
use crate::policy::bulkhead::Bulkhead;
use crate::policy::hedge::{HedgePolicy, Hedging};
use crate::policy::limits::ConcurrencyLimit;
use crate::policy::mode::{Mode, ModeCell, Observable};
use crate::policy::overrides::{Forced, Overrides};
use crate::policy::rate_limit::{LimitKey, RateLimit, RateLimiter};
use crate::policy::retry::RetryOn;
use arc_swap::ArcSwap;
use endpoint::{EndpointConfig, Endpoints};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use traffic::{RouteTraffic, Shadow};

/// The policy in force for the requests of one route to one destination: the
/// global flags (and the policy file's defaults), overridden by the route.
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
    /// `--hedge-after` or a route's; `None`: no hedging (always inbound).
    pub hedge: Option<HedgePolicy>,
    /// `--hedge-budget`: the budget of a route that sets `hedge-after` alone.
    pub hedge_budget: f32,
    /// `--rate-limit` or a route's (inbound: `inbound-rate-limit`).
    pub rate_limit: Option<RateLimit>,
    /// What a rate limit's buckets are per: `rate-limit-key`.
    pub rate_limit_key: LimitKey,
    /// Enforce or observe, per policy. Flipped in place on a reload: what the
    /// policies learned stays.
    pub modes: Modes,
}

impl RoutePolicy {
    /// Whether a state built for `self` can serve `other` as it is, once its
    /// modes are flipped: every other key the same.
    fn same_but_modes(&self, other: &RoutePolicy) -> bool {
        let mut other = other.clone();
        other.modes = self.modes;
        *self == other
    }
}

/// The `route` label of requests no route matched.
pub const DEFAULT_ROUTE: &str = "default";

/// One route of a table, with the label and the policy it results in.
struct CompiledRoute {
    route: RouteOverride,
    name: Arc<str>,
    policy: RoutePolicy,
    /// `to`, `split`, `mirror` and faults; `None` on most routes.
    traffic: Option<Arc<RouteTraffic>>,
}

/// The routes a request is matched against, first match wins, and what
/// applies to a request no route matched. One per listener; replaced whole
/// on a reload.
pub struct RouteTable {
    default_name: Arc<str>,
    defaults: RoutePolicy,
    routes: Vec<CompiledRoute>,
}

/// A request's route: its label and policy.
#[derive(Clone, Copy)]
pub struct Selected<'a> {
    pub name: &'a Arc<str>,
    pub policy: &'a RoutePolicy,
    pub traffic: Option<&'a Arc<RouteTraffic>>,
}

impl RouteTable {
    /// The outbound table: the flags, and the outbound routes.
    pub fn new(config: &Config) -> Self {
        let defaults = RoutePolicy {
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            protocol: Protocol::Auto,
            retry: config.retry.clone(),
            breaker: config.breaker,
            max_ejection_percent: config.max_ejection_percent,
            bulkhead: Some(config.bulkhead),
            tls: false,
            hedge: config.hedge,
            hedge_budget: config.hedge_budget,
            rate_limit: config.rate_limit,
            rate_limit_key: LimitKey::Shared,
            modes: config.modes,
        };
        Self::compile(config, defaults, RouteDirection::Outbound)
    }

    /// The inbound table: toward the app, whose policy is fixed where an
    /// outbound one is not (below), and the inbound routes.
    pub fn inbound(config: &Config) -> Self {
        // Inbound retries only what never reached the app: a connect failure
        // while it restarts. Anything else may have had effects.
        let mut retry = config.retry.clone();
        retry.retry_on = RetryOn {
            connect_failure: true,
            ..RetryOn::default()
        };
        retry.per_try_timeout = None;
        let defaults = RoutePolicy {
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            protocol: config.app_protocol,
            retry,
            // The app is one endpoint that breakwater must not eject: its health
            // is the readiness probe's business. Without a bulkhead, no limit.
            breaker: BreakerConfig {
                consecutive_failures: 0,
                failure_rate: 0,
                slow_call: None,
                ..config.breaker
            },
            max_ejection_percent: 0,
            bulkhead: config.inbound_bulkhead,
            tls: false,
            // The app is one endpoint: a hedge would only double its load.
            hedge: None,
            hedge_budget: config.hedge_budget,
            rate_limit: config.inbound_rate_limit,
            rate_limit_key: LimitKey::Shared,
            modes: Modes {
                bulkhead: config.modes.bulkhead,
                rate_limit: config.modes.rate_limit,
                ..Modes::default()
            },
        };
        Self::compile(config, defaults, RouteDirection::Inbound)
    }

    /// A table with no routes: every request gets `defaults`.
    pub fn with_defaults(defaults: RoutePolicy) -> Self {
        RouteTable {
            default_name: DEFAULT_ROUTE.into(),
            defaults,
            routes: Vec::new(),
        }
    }

    fn compile(config: &Config, defaults: RoutePolicy, direction: RouteDirection) -> Self {
        let mut routes: Vec<CompiledRoute> = Vec::new();
        for route in config.routes.iter().filter(|r| r.direction == direction) {
            let mut name = route.label();
            // Unnamed routes that read alike still get labels of their own.
            let mut n = 1;
            while name == DEFAULT_ROUTE || routes.iter().any(|r| *r.name == *name) {
                n += 1;
                name = format!("{}#{n}", route.label());
            }
            let policy = match direction {
                RouteDirection::Outbound => outbound_policy(&defaults, route),
                RouteDirection::Inbound => inbound_policy(&defaults, route, config),
            };
            routes.push(CompiledRoute {
                route: route.clone(),
                name: name.into(),
                policy,
                traffic: None,
            });
        }
        // Second pass: a mirror's shadow takes the policy its destination
        // gets from this table.
        let traffic: Vec<Option<Arc<RouteTraffic>>> = routes
            .iter()
            .map(|r| {
                RouteTraffic::compile(&r.name, &r.route.traffic, |shadow| {
                    let (policy, own_limit) = destination_policy(&routes, &defaults, shadow);
                    (policy.clone(), own_limit)
                })
                .map(Arc::new)
            })
            .collect();
        for (r, t) in routes.iter_mut().zip(traffic) {
            r.traffic = t;
        }
        RouteTable {
            default_name: DEFAULT_ROUTE.into(),
            defaults,
            routes,
        }
    }

    pub fn defaults(&self) -> &RoutePolicy {
        &self.defaults
    }

    /// The first route that matches the request, else the defaults.
    pub fn select(&self, request: &RequestFacts<'_>) -> Selected<'_> {
        if self.routes.is_empty() {
            return self.default_route();
        }
        for r in &self.routes {
            if r.route.matches(request) {
                return Selected {
                    name: &r.name,
                    policy: &r.policy,
                    traffic: r.traffic.as_ref(),
                };
            }
        }
        self.default_route()
    }

    fn default_route(&self) -> Selected<'_> {
        Selected {
            name: &self.default_name,
            policy: &self.defaults,
            traffic: None,
        }
    }

    /// The policy of the route (or a route's shadow) labelled `name` in this table.
    pub fn named(&self, name: &str) -> Option<&RoutePolicy> {
        if *name == *self.default_name {
            return Some(&self.defaults);
        }
        self.routes.iter().find_map(|r| {
            if *r.name == *name {
                return Some(&r.policy);
            }
            let shadow = r.traffic.as_ref()?.mirror.as_ref()?;
            (*shadow.label == *name).then_some(&shadow.policy)
        })
    }

    /// The series the routes' traffic keys count under, to make them at zero.
    pub fn traffic_series(&self) -> Vec<TrafficSeries<'_>> {
        self.routes
            .iter()
            .filter_map(|r| {
                let t = r.traffic.as_ref()?;
                let mut destinations: Vec<String> = Vec::new();
                if let Some(split) = &t.moves {
                    if let (Some(host), Some(port)) = (&r.route.host, r.route.port) {
                        destinations.push(Destination::new(host, port).to_string());
                    }
                    destinations.extend(split.targets().iter().map(|(d, _)| d.to_string()));
                }
                let faults = t.faults.as_ref().map_or(Vec::new(), |f| {
                    let abort = f.abort.map(|_| "abort");
                    let delay = f.delay.map(|_| "delay");
                    abort.into_iter().chain(delay).collect()
                });
                Some(TrafficSeries {
                    route: &r.name,
                    destinations,
                    shadow: t.mirror.as_ref().map(|m| m.plan.target.to_string()),
                    faults,
                })
            })
            .collect()
    }

    /// Every route that mirrors, with its shadow, for `/upstreams`.
    pub fn shadows(&self) -> impl Iterator<Item = (&Arc<RouteTraffic>, &Shadow)> {
        self.routes.iter().filter_map(|r| {
            let t = r.traffic.as_ref()?;
            Some((t, t.mirror.as_ref()?))
        })
    }

    /// Whether the table has routes: without any, a request needs no facts
    /// to be matched against.
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Whether any route names `tls=true`.
    pub fn any_tls(&self) -> bool {
        self.routes.iter().any(|r| r.policy.tls)
    }

    /// Each route with its label and the policy it results in, for `/config`.
    pub fn describe(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut route = serde_json::json!({
                    "route": r.name.as_ref(),
                    "match": &r.route,
                    "policy": &r.policy,
                });
                if let Some(t) = &r.traffic {
                    route["traffic"] = serde_json::json!(t.keys);
                }
                route
            })
            .collect();
        serde_json::json!({ "default": self.defaults, "routes": routes })
    }
}

/// The policy requests to `dest` get when no path, method or header narrows
/// them: the first route for its host and port that names nothing else.
///
/// Also whether that route sets `max-concurrent` itself.
fn destination_policy<'a>(
    routes: &'a [CompiledRoute],
    defaults: &'a RoutePolicy,
    dest: &Destination,
) -> (&'a RoutePolicy, bool) {
    routes
        .iter()
        .find(|r| {
            let m = &r.route;
            m.host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(dest.host()))
                && m.port.is_none_or(|p| p == dest.port())
                && m.path.is_none()
                && m.path_prefix.is_none()
                && m.method.is_none()
                && m.headers.is_empty()
        })
        .map_or((defaults, false), |r| {
            (&r.policy, r.route.sets("max-concurrent"))
        })
}

/// An outbound route's keys over the defaults.
fn outbound_policy(defaults: &RoutePolicy, route: &RouteOverride) -> RoutePolicy {
    let mut policy = defaults.clone();
    policy.timeout = route.timeout.unwrap_or(policy.timeout);
    policy.connect_timeout = route.connect_timeout.unwrap_or(policy.connect_timeout);
    policy.protocol = route.protocol.unwrap_or(policy.protocol);
    policy.tls = route.tls.unwrap_or(policy.tls);
    policy.rate_limit = route.rate.rate_limit.or(policy.rate_limit);
    if let Some(key) = &route.rate.rate_limit_key {
        policy.rate_limit_key = key.clone();
    }
    policy.hedge = HedgePolicy::layered(
        policy.hedge,
        route.hedge_after,
        route.hedge_budget,
        policy.hedge_budget,
    );
    route.apply(&mut policy.retry);
    route.apply_modes(&mut policy.modes);
    route.limits.apply(
        &mut policy.breaker,
        policy.bulkhead.as_mut(),
        &mut policy.max_ejection_percent,
    );
    policy
}

/// An inbound route's keys over the app's policy: its deadline, and the
/// bulkhead in front of the app.
fn inbound_policy(defaults: &RoutePolicy, route: &RouteOverride, config: &Config) -> RoutePolicy {
    let mut policy = defaults.clone();
    policy.timeout = route.timeout.unwrap_or(policy.timeout);
    policy.connect_timeout = route.connect_timeout.unwrap_or(policy.connect_timeout);
    policy.modes.bulkhead = route.bulkhead_mode.unwrap_or(policy.modes.bulkhead);
    policy.modes.rate_limit = route
        .rate
        .rate_limit_mode
        .unwrap_or(policy.modes.rate_limit);
    policy.rate_limit = route.rate.inbound_rate_limit.or(policy.rate_limit);
    if let Some(key) = &route.rate.rate_limit_key {
        policy.rate_limit_key = key.clone();
    }
    // The queue: the route's, else the app's bulkhead's, else the flags'.
    let base = policy.bulkhead;
    let (max_queue, queue_timeout) = base.map_or(
        (
            config.inbound_queue.max_queue,
            config.inbound_queue.queue_timeout,
        ),
        |b| (b.max_queue, b.queue_timeout),
    );
    let max_queue = route.inbound_max_queue.unwrap_or(max_queue);
    let queue_timeout = route.inbound_queue_timeout.unwrap_or(queue_timeout);
    policy.bulkhead = match (route.inbound_max_concurrent, base) {
        (Some(n), _) => Some(BulkheadPolicy::fixed(n, max_queue, queue_timeout)),
        (None, Some(b)) => Some(BulkheadPolicy {
            max_queue,
            queue_timeout,
            ..b
        }),
        (None, None) => None,
    };
    policy
}

/// The last destination a client connection's requests went to: most
/// connections talk to one, so this spares the shared registry a lookup per
/// request. Kept by the listener for each connection ([`crate::listener::Handler::ConnState`]).
#[derive(Default)]
pub struct LastDestination(Mutex<Last>);

/// A state the registry keeps is only pointed at, so that an idle
/// connection does not hold one the registry expired (and its series); one
/// made per request past the cap has no other owner, and is held.
#[derive(Default)]
enum Last {
    #[default]
    None,
    Kept(Weak<DestinationState>),
    Held(Arc<DestinationState>),
}

impl LastDestination {
    /// The last destination if `is_it` says it is the one wanted, else the one
    /// `find` gives, remembered for the next request.
    pub fn get_or(
        &self,
        is_it: impl FnOnce(&DestinationState) -> bool,
        find: impl FnOnce() -> Arc<DestinationState>,
    ) -> Arc<DestinationState> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let state = match &*last {
            Last::None => None,
            Last::Kept(weak) => weak.upgrade(),
            Last::Held(state) => Some(state.clone()),
        };
        if let Some(state) = state
            && is_it(&state)
        {
            return state;
        }
        let state = find();
        *last = if state.kept.load(Ordering::Relaxed) {
            Last::Kept(Arc::downgrade(&state))
        } else {
            Last::Held(state.clone())
        };
        state
    }
}

/// Everything the pipeline needs about one route to one destination, built
/// once: learned state (breakers, budget, limits) is kept per route, since
/// each route has its own policy.
pub struct DestinationState {
    pub dest: Destination,
    pub authority: Authority,
    /// The host and `host:port`, made once for the spans that name them.
    pub host_name: Arc<str>,
    pub dest_name: Arc<str>,
    /// The route's label.
    pub route: Arc<str>,
    pub policy: RoutePolicy,
    pub metrics: Arc<DestinationMetrics>,
    pub budget: Arc<RetryBudget>,
    pub endpoints: Endpoints,
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// Moves the bulkhead's limit with `--max-concurrent auto`.
    /// (Boxed, as the two below: most destinations have none, and a state is
    /// kept for each of up to `--max-destinations`.)
    pub adaptive: Option<Box<Mutex<AdaptiveLimit>>>,
    /// `rate-limit` (outbound) or `inbound-rate-limit`: tokens per second.
    pub rate_limiter: Option<Box<RateLimiter>>,
    /// `hedge-after`: its budget and, for `pNN`, the latency it follows
    /// (1.3 KB inline).
    pub hedging: Option<Box<Hedging>>,
    /// Endpoints whose circuit is open or half-open, for `--max-ejection-percent`.
    pub ejected: Arc<AtomicUsize>,
    /// The last half minute to minute of requests, for `breakwater status`.
    pub recent: Arc<RecentTraffic>,
    /// The modes as configured now (a reload flips them in place).
    pub modes: ModeCell,
    /// The admin endpoint's overrides, shared by every destination.
    pub overrides: Arc<Overrides>,
    /// Set when a reload replaced this state: connections that remembered it
    /// look it up again; requests in flight finish under it.
    retired: AtomicBool,
    /// What each observed policy let through that it would have refused.
    observed: [AtomicU64; Observable::ALL.len()],
    /// Set once the registry keeps it (not past the cap).
    kept: AtomicBool,
    /// Counted under a `destination` label of its own, not `other`.
    labeled: bool,
    /// Requests ended as of the last idle sweep, and how many sweeps in a
    /// row have found no change ([`Registry::expire_idle`]).
    swept: AtomicU64,
    idle_sweeps: AtomicU8,
}

impl DestinationState {
    /// Whether this is the live state of `route` to `host:port`.
    pub fn is(&self, host: &str, port: u16, route: &Arc<str>) -> bool {
        self.is_route(route) && self.dest.is(host, port)
    }

    /// Whether this is the live state of `route` (to whichever destination).
    pub fn is_route(&self, route: &Arc<str>) -> bool {
        // A table's labels are shared: the pointer decides unless a reload
        // rebuilt the table, and then the text.
        !self.retired.load(Ordering::Relaxed)
            && (Arc::ptr_eq(&self.route, route) || *self.route == **route)
    }

    /// The mode `policy` runs in for this request: an admin override to
    /// observe wins, else the configured mode.
    pub fn mode(&self, policy: Observable) -> Mode {
        if self.overrides.observes(&self.dest, &self.route, policy) {
            return Mode::Observe;
        }
        self.modes.get(policy)
    }

    /// A circuit forced open or closed by an admin override, if one is in force.
    pub fn forced_circuit(&self) -> Option<Forced> {
        self.overrides.circuit(&self.dest, &self.route)
    }

    /// Whether this sweep finds the state idle for the second time in a row.
    fn sweep(&self) -> bool {
        let usage = self.recent.usage();
        let ended = usage.ended();
        let before = self.swept.swap(ended, Ordering::Relaxed);
        if ended != before || usage.in_flight() {
            self.idle_sweeps.store(0, Ordering::Relaxed);
            return false;
        }
        self.idle_sweeps.fetch_add(1, Ordering::Relaxed) + 1 >= 2
    }

    /// Counts a decision an observed policy did not carry out.
    pub fn observe(&self, policy: Observable, action: &'static str) {
        self.observed[policy.index()].fetch_add(1, Ordering::Relaxed);
        self.metrics.count_observed(policy.as_str(), action);
    }

    /// What `/upstreams` shows of this destination.
    pub fn snapshot(&self, direction: Direction) -> serde_json::Value {
        let now = tokio::time::Instant::now();
        let endpoints: Vec<serde_json::Value> = self
            .endpoints
            .snapshot_list()
            .map(|list| list.iter().map(|e| e.snapshot(now)).collect())
            .unwrap_or_default();
        let mut observed = serde_json::Map::new();
        for p in Observable::ALL {
            observed.insert(
                p.as_str().into(),
                self.observed[p.index()].load(Ordering::Relaxed).into(),
            );
        }
        let effective = Modes {
            breaker: self.mode(Observable::Breaker),
            bulkhead: self.mode(Observable::Bulkhead),
            retry_budget: self.mode(Observable::RetryBudget),
            rate_limit: self.mode(Observable::RateLimit),
        };
        let dest = self.dest.to_string();
        let (discovery, service, fallback) = self.endpoints.source();
        serde_json::json!({
            "destination": dest,
            "discovery": discovery,
            "service": service,
            "discovery_fallback": fallback,
            "direction": direction.as_str(),
            "route": self.route.as_ref(),
            "modes": effective,
            "observed": observed,
            "overrides": self.overrides.describe_for(&self.dest, &self.route),
            "bulkhead": self.bulkhead.as_ref().map(|b| b.snapshot()),
            "hedge": self.hedging.as_ref().map(|h| h.snapshot(now)),
            "rate_limit": self.rate_limiter.as_ref().map(|l| serde_json::json!({
                "limit": l.limit(),
                "key": l.key(),
                "keys": l.keys(),
            })),
            "adaptive_limit": self.adaptive.as_ref().map(|a| a.lock().unwrap_or_else(|p| p.into_inner()).snapshot()),
            "ejected": self.ejected.load(Ordering::Relaxed),
            "recent": self.recent.read(now),
            "retry_budget_left": self.budget.left(now),
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
    /// The admin endpoint's overrides.
    pub overrides: Arc<Overrides>,
    /// `--h2-connections-per-endpoint`.
    pub h2_connections: usize,
    /// `--upstream-max-connection-age`.
    pub max_connection_age: Option<Duration>,
    /// `--slow-start`.
    pub slow_start: Duration,
}

impl EndpointSettings {
    /// What the flags say; outbound adds its TLS client.
    pub fn from_config(config: &Config) -> Self {
        EndpointSettings {
            idle_timeout: config.upstream_idle_timeout,
            dns_ttl: config.dns_ttl,
            tls: None,
            overrides: Arc::new(Overrides::default()),
            h2_connections: config.h2_connections_per_endpoint,
            max_connection_age: config.upstream_max_connection_age,
            slow_start: config.slow_start,
        }
    }
}

impl DestinationState {
    pub fn new(
        dest: Destination,
        route: Arc<str>,
        policy: RoutePolicy,
        metrics: Arc<DestinationMetrics>,
        settings: EndpointSettings,
    ) -> Self {
        let budget = RetryBudget::new(policy.retry.budget_percent, policy.retry.budget_min_per_sec);
        let ejected = Arc::new(AtomicUsize::new(0));
        let endpoints = Endpoints::new(
            dest.host(),
            dest.port(),
            EndpointConfig {
                connect_timeout: policy.connect_timeout,
                idle_timeout: settings.idle_timeout,
                breaker: policy.breaker,
                metrics: metrics.clone(),
                ejected: ejected.clone(),
                max_ejection_percent: policy.max_ejection_percent,
                tls: match (&settings.tls, policy.tls) {
                    (Some(client), true) => {
                        Some(crate::tls::Origin::new(client.clone(), dest.host()))
                    }
                    _ => None,
                },
                h2_connections: settings.h2_connections,
                max_connection_age: settings.max_connection_age,
                slow_start: settings.slow_start,
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
            .map(|b| {
                Box::new(Mutex::new(AdaptiveLimit::new(
                    b.min,
                    b.max,
                    b.initial_limit(),
                )))
            });
        let rate_limiter = policy
            .rate_limit
            .map(|l| Box::new(RateLimiter::new(l, policy.rate_limit_key.clone())));
        let hedging = policy.hedge.map(|h| Box::new(Hedging::new(h)));
        if hedging.is_some() {
            metrics.hedge_series();
        }
        DestinationState {
            endpoints,
            bulkhead,
            adaptive,
            rate_limiter,
            hedging,
            ejected,
            authority: dest.authority(),
            host_name: dest.host().into(),
            dest_name: dest.to_string().into(),
            dest,
            route,
            modes: ModeCell::new(policy.modes),
            policy,
            metrics,
            budget: Arc::new(budget),
            recent: Arc::new(RecentTraffic::new()),
            overrides: settings.overrides,
            retired: AtomicBool::new(false),
            observed: Default::default(),
            kept: AtomicBool::new(false),
            labeled: false,
            swept: AtomicU64::new(0),
            idle_sweeps: AtomicU8::new(0),
        }
    }
}

/// What a reload did to the learned state of one registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replaced {
    /// States whose policy did not change (modes may have flipped in place).
    pub kept: usize,
    /// States dropped: their route changed or is gone; rebuilt on next use.
    pub rebuilt: usize,
}

type Key = (Destination, Arc<str>);

/// How many destinations a registry keeps, and how many of them count under a
/// `destination` label of their own.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `--max-destinations`: states kept (breakers, budget, pools, limits).
    pub states: usize,
    /// `--metrics-max-destinations`: the rest share `destination="other"`.
    pub labels: usize,
}

impl Caps {
    /// What the flags say.
    pub fn from_config(config: &Config) -> Self {
        Caps {
            states: config.max_destinations,
            labels: config.metrics_max_destinations,
        }
    }
}

/// The kept states, and how many of them have a label of their own.
#[derive(Default)]
struct Entries {
    map: HashMap<Key, Arc<DestinationState>>,
    labeled: usize,
}

impl Entries {
    /// Takes a state out of the registry: retired, so that connections which
    /// remembered it look again, and its label freed. Its series are
    /// expired with it unless they are the shared overflow's.
    fn forget(&mut self, state: &DestinationState, expire_series: bool) {
        state.retired.store(true, Ordering::Relaxed);
        if state.labeled {
            self.labeled -= 1;
            if expire_series {
                state.metrics.expire();
            }
        }
    }
}

/// Destinations seen so far, per route. Up to `--max-destinations` are kept,
/// the first `--metrics-max-destinations` of them under a label of their own
/// and the rest under `other`; past the cap the least recently used idle ones
/// make room (a scan of hosts cannot grow memory without bound).
pub struct Registry {
    direction: Direction,
    routes: ArcSwap<RouteTable>,
    metrics: Arc<Metrics>,
    entries: RwLock<Entries>,
    caps: Caps,
    overflow: Arc<DestinationMetrics>,
    counts: RegistryCounts,
    settings: EndpointSettings,
}

impl Registry {
    pub fn new(
        direction: Direction,
        routes: Arc<RouteTable>,
        metrics: Arc<Metrics>,
        caps: Caps,
        settings: EndpointSettings,
    ) -> Self {
        let overflow = Arc::new(metrics.destination(direction, "other", DEFAULT_ROUTE));
        metrics.traffic_series(direction, routes.traffic_series());
        let counts = metrics.registry_counts(direction);
        Registry {
            direction,
            routes: ArcSwap::new(routes),
            metrics,
            entries: RwLock::new(Entries::default()),
            caps,
            overflow,
            counts,
            settings,
        }
    }

    /// The route table in force now: one atomic load.
    pub fn routes(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.routes.load()
    }

    /// The state for `route` to `host:port`.
    pub fn get(&self, host: &str, port: u16, route: Selected<'_>) -> Arc<DestinationState> {
        let key = (Destination::new(host, port), route.name.clone());
        if let Some(found) = self.read().map.get(&key) {
            return found.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = entries.map.get(&key) {
            return found.clone();
        }
        // Under the lock a reload also takes: a state is kept only if its policy
        // is the current table's, so none built from a replaced table lingers.
        let table = self.routes.load();
        let current = table.named(route.name).filter(|p| *p == route.policy);
        if current.is_some() && entries.map.len() >= self.caps.states {
            self.evict_least_recently_used(&mut entries);
        }
        let kept = current.is_some() && entries.map.len() < self.caps.states;
        let labeled = kept && entries.labeled < self.caps.labels;
        let metrics = if labeled {
            Arc::new(
                self.metrics
                    .destination(self.direction, &key.0.to_string(), route.name),
            )
        } else {
            self.overflow.clone()
        };
        let mut state = DestinationState::new(
            key.0.clone(),
            route.name.clone(),
            route.policy.clone(),
            metrics,
            self.settings.clone(),
        );
        state.labeled = labeled;
        let state = Arc::new(state);
        if kept {
            state.kept.store(true, Ordering::Relaxed);
            entries.labeled += usize::from(labeled);
            entries.map.insert(key, state.clone());
            self.counts.kept.set(entries.map.len() as i64);
        }
        state
    }

    /// At `--max-destinations`: drops the sixteenth of the states that ended
    /// their last request longest ago, among those with nothing in flight, so
    /// that the next destinations find room without a scan each. When every
    /// state is busy, none goes, and a new destination is served by a state
    /// of its own request's.
    fn evict_least_recently_used(&self, entries: &mut Entries) {
        let mut idle: Vec<(u64, Key)> = entries
            .map
            .iter()
            .filter(|(_, s)| !s.recent.usage().in_flight())
            .map(|(k, s)| (s.recent.usage().last_ended(), k.clone()))
            .collect();
        let n = (self.caps.states / 16).clamp(1, idle.len().max(1));
        if idle.len() > n {
            idle.select_nth_unstable_by_key(n - 1, |(at, _)| *at);
            idle.truncate(n);
        }
        for (_, key) in idle {
            if let Some(state) = entries.map.remove(&key) {
                entries.forget(&state, true);
                self.counts.evicted.inc();
            }
        }
        self.counts.kept.set(entries.map.len() as i64);
    }

    /// The state a route's copies to its shadow go through: the shadow
    /// destination under the route's `mirror:` label, apart from real traffic.
    pub fn shadow(&self, shadow: &Shadow) -> Arc<DestinationState> {
        let dest = &shadow.plan.target;
        self.get(
            dest.host(),
            dest.port(),
            Selected {
                name: &shadow.label,
                policy: &shadow.policy,
                traffic: None,
            },
        )
    }

    /// Puts `table` in force for new requests. Learned state survives for each
    /// route whose policy is the same (its modes flipped in place); the rest is
    /// retired, so the next request builds it anew, while requests in flight
    /// finish under the state they hold.
    pub fn replace_routes(&self, table: Arc<RouteTable>) -> Replaced {
        self.metrics
            .traffic_series(self.direction, table.traffic_series());
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut replaced = Replaced::default();
        let mut gone = Vec::new();
        entries
            .map
            .retain(|(_, route), state| match table.named(route) {
                Some(policy) if state.policy.same_but_modes(policy) => {
                    state.modes.set(policy.modes);
                    replaced.kept += 1;
                    true
                }
                found => {
                    // A route that is gone: nothing counts under its label again.
                    gone.push((state.clone(), found.is_none()));
                    replaced.rebuilt += 1;
                    false
                }
            });
        for (state, route_gone) in &gone {
            entries.forget(state, *route_gone);
        }
        self.counts.kept.set(entries.map.len() as i64);
        self.routes.store(table);
        replaced
    }

    /// One sweep of `--destination-idle-timeout`, run every half of it: a
    /// state with nothing in flight and no request ended since the last two
    /// sweeps is dropped with its series, so that its label goes to a
    /// destination in use and no stale value (an open circuit) lingers. A
    /// connection that last used it looks it up again. Returns how many went.
    pub fn expire_idle(&self) -> usize {
        let mut gone = Vec::new();
        {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            entries.map.retain(|_, state| {
                if !state.sweep() {
                    return true;
                }
                gone.push(state.clone());
                false
            });
            for state in &gone {
                entries.forget(state, true);
            }
            self.counts.idle.inc_by(gone.len() as u64);
            self.counts.kept.set(entries.map.len() as i64);
        }
        // Dropped outside the lock: removing series reads whole families.
        let n = gone.len();
        drop(gone);
        n
    }

    /// Runs [`expire_idle`](Self::expire_idle) every half of `idle` for as
    /// long as the registry lives.
    pub async fn expire_idle_every(self: Arc<Self>, idle: Duration) {
        let registry = Arc::downgrade(&self);
        drop(self);
        let mut tick = tokio::time::interval((idle / 2).max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(r) = registry.upgrade() else {
                return;
            };
            let n = r.expire_idle();
            if n > 0 {
                tracing::debug!(expired = n, left = r.len(), "idle destinations dropped");
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every destination with a state of its own, for `/upstreams`.
    /// A route's shadow is listed with what became of its copies, before
    /// the first copy too.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let entries: Vec<Arc<DestinationState>> = self.read().map.values().cloned().collect();
        let mut all: Vec<serde_json::Value> =
            entries.iter().map(|s| s.snapshot(self.direction)).collect();
        let table = self.routes();
        for (traffic, shadow) in table.shadows() {
            let about = shadow.describe(&traffic.route);
            let dest = &shadow.plan.target;
            let state = entries
                .iter()
                .position(|s| s.dest == *dest && *s.route == *shadow.label);
            match state {
                Some(i) => {
                    let mut about = about;
                    if let Some(b) = &entries[i].bulkhead {
                        about["in_flight"] = b.in_flight().into();
                        about["limit"] = b.limit().into();
                    }
                    all[i]["shadow"] = about;
                }
                None => all.push(serde_json::json!({
                    "destination": dest.to_string(),
                    "direction": self.direction.as_str(),
                    "route": shadow.label.as_ref(),
                    "shadow": about,
                    "endpoints": [],
                })),
            }
        }
        all
    }

    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    fn config(routes: &[&str]) -> Config {
        let mut config = Config::loopback();
        config.routes = routes
            .iter()
            .map(|r| RouteOverride::parse(r).unwrap())
            .collect();
        config
    }

    fn registry(labels: usize, routes: &[&str]) -> Registry {
        capped(10_000, labels, routes)
    }

    fn capped(states: usize, labels: usize, routes: &[&str]) -> Registry {
        let config = config(routes);
        Registry::new(
            Direction::Outbound,
            Arc::new(RouteTable::new(&config)),
            Arc::new(Metrics::new()),
            Caps { states, labels },
            EndpointSettings::from_config(&config),
        )
    }

    /// One request through `state`, ended at `now`.
    fn request(state: &DestinationState, now: tokio::time::Instant) {
        state.recent.usage().begin();
        state.recent.usage().end(now);
    }

    fn get(r: &Registry, host: &str, port: u16, path: &str) -> Arc<DestinationState> {
        let table = r.routes();
        let headers = HeaderMap::new();
        let route = table.select(&RequestFacts {
            host,
            port,
            method: &Method::GET,
            path,
            headers: &headers,
        });
        r.get(host, port, route)
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
            get(&r, "payments", 8080, "/").policy.timeout,
            Duration::from_secs(2)
        );
        let other_port = get(&r, "PAYMENTS", 9090, "/");
        assert_eq!(other_port.policy.timeout, Duration::from_secs(3));
        assert_eq!(other_port.policy.protocol, Protocol::H2);
        assert_eq!(&*other_port.route, "payments");
        let search = get(&r, "search", 80, "/");
        assert_eq!(search.policy.timeout, Duration::from_secs(15));
        assert_eq!(&*search.route, DEFAULT_ROUTE);
    }

    #[test]
    fn each_route_to_a_destination_has_its_own_state() {
        let r = registry(10, &["reports,path-prefix=/slow,timeout=30s"]);
        let slow = get(&r, "reports", 80, "/slow/x");
        let fast = get(&r, "reports", 80, "/fast");
        assert!(!Arc::ptr_eq(&slow, &fast));
        assert_eq!(slow.policy.timeout, Duration::from_secs(30));
        assert_eq!(fast.policy.timeout, Duration::from_secs(15));
        assert!(Arc::ptr_eq(&slow, &get(&r, "reports", 80, "/slow/y")));
    }

    #[test]
    fn a_reload_keeps_what_did_not_change_and_flips_modes_in_place() {
        let r = registry(10, &["a,timeout=2s", "b,timeout=2s"]);
        let a = get(&r, "a", 80, "/");
        let b = get(&r, "b", 80, "/");
        let d = get(&r, "c", 80, "/");
        let next = config(&["a,timeout=2s,breaker-mode=observe", "b,timeout=5s"]);
        let replaced = r.replace_routes(Arc::new(RouteTable::new(&next)));
        assert_eq!(
            replaced,
            Replaced {
                kept: 2,
                rebuilt: 1
            }
        );
        // a: the same state, its breaker now observed.
        assert!(Arc::ptr_eq(&a, &get(&r, "a", 80, "/")));
        assert_eq!(a.mode(Observable::Breaker), Mode::Observe);
        assert!(a.is("a", 80, &"a".into()));
        // b: retired, rebuilt under the new timeout.
        assert!(!b.is("b", 80, &"b".into()));
        let b2 = get(&r, "b", 80, "/");
        assert_eq!(b2.policy.timeout, Duration::from_secs(5));
        assert!(Arc::ptr_eq(&d, &get(&r, "c", 80, "/")));
    }

    #[test]
    fn an_idle_destination_expires_with_its_series_and_frees_its_label() {
        let r = registry(2, &[]);
        let text = || String::from_utf8(r.metrics.encode()).unwrap_or_default();
        let idle = get(&r, "idle", 80, "/");
        let busy = get(&r, "busy", 80, "/");
        idle.metrics.count_response(200);
        assert_eq!(r.expire_idle(), 0, "idle once is not enough");
        busy.recent.usage().begin();
        assert_eq!(r.expire_idle(), 1, "idle twice in a row goes");
        assert!(
            !idle.is("idle", 80, &idle.route),
            "a connection that holds it looks again"
        );
        assert!(text().contains("idle:80"), "still held here");
        drop(idle);
        assert!(!text().contains("idle:80"), "{}", text());
        assert_eq!(get(&r, "next", 80, "/").metrics.label(), "next:80");
        busy.recent.usage().end(tokio::time::Instant::now());
        assert_eq!(r.expire_idle(), 0, "busy: a request was in flight");
        assert_eq!(r.len(), 2);
        assert!(text().contains(
            r#"breakwater_destinations_forgotten_total{direction="outbound",reason="idle"} 1"#
        ));
    }

    #[test]
    fn destinations_past_the_label_cap_keep_their_own_state() {
        let r = registry(3, &[]);
        for i in 0..1000 {
            let state = get(&r, &format!("host-{i}"), 80, "/");
            if i >= 3 {
                assert_eq!(state.metrics.label(), "other");
            }
        }
        assert_eq!(r.len(), 1000);
        let late = get(&r, "host-900", 80, "/");
        assert!(
            Arc::ptr_eq(&late, &get(&r, "host-900", 80, "/")),
            "the same breakers, budget and pool for each request"
        );
        assert_eq!(late.metrics.label(), "other");
    }

    #[test]
    fn an_unlabeled_destination_expires_without_taking_the_shared_series() {
        let r = registry(1, &[]);
        let text = || String::from_utf8(r.metrics.encode()).unwrap_or_default();
        let own = get(&r, "own", 80, "/");
        let shared = get(&r, "shared", 80, "/");
        shared.metrics.count_response(200);
        drop((own, shared));
        assert_eq!(r.expire_idle(), 0);
        assert_eq!(r.expire_idle(), 2);
        assert!(
            text().contains(r#"destination="other""#),
            "the overflow series stay for the destinations still sharing them"
        );
        // The label freed by the first goes to the next destination.
        assert_eq!(get(&r, "next", 80, "/").metrics.label(), "next:80");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_least_recently_used_idle_destinations_make_room() {
        let r = capped(32, 32, &[]);
        let start = tokio::time::Instant::now();
        let states: Vec<_> = (0..32)
            .map(|i| {
                let s = get(&r, &format!("host-{i}"), 80, "/");
                request(&s, start + Duration::from_secs(100 - i));
                s
            })
            .collect();
        // The oldest two by their last request: host-31 and host-30; host-31
        // has a request in flight, so host-29 goes in its place.
        states[31].recent.usage().begin();
        get(&r, "new", 80, "/");
        assert_eq!(r.len(), 31, "32/16 = 2 made room for one");
        for (i, s) in states.iter().enumerate() {
            let kept = s.is(&format!("host-{i}"), 80, &s.route);
            assert_eq!(kept, !(i == 30 || i == 29), "host-{i}");
        }
        assert_eq!(get(&r, "new", 80, "/").metrics.label(), "new:80");
        assert!(
            String::from_utf8(r.metrics.encode())
                .unwrap_or_default()
                .contains(r#"reason="evicted"} 2"#)
        );
    }

    #[test]
    fn when_every_destination_is_busy_a_new_one_is_served_but_not_kept() {
        let r = capped(2, 2, &[]);
        let a = get(&r, "a", 80, "/");
        let b = get(&r, "b", 80, "/");
        a.recent.usage().begin();
        b.recent.usage().begin();
        let c = get(&r, "c", 80, "/");
        assert_eq!(r.len(), 2);
        assert!(!Arc::ptr_eq(&c, &get(&r, "c", 80, "/")));
        assert_eq!(c.metrics.label(), "other");
        assert!(a.is("a", 80, &a.route) && b.is("b", 80, &b.route));
    }

    /// A state is kept for each of up to `--max-destinations` (10,000)
    /// destinations: what most of them do not use stays out of line.
    #[test]
    fn a_destination_state_stays_under_a_kilobyte() {
        let size = size_of::<DestinationState>();
        assert!(size <= 1024, "DestinationState is {size} bytes");
    }
}
