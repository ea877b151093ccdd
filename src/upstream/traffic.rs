//! What a route does with its traffic besides sending it (`to`, `split`,
//! `mirror`, faults), compiled once per route table with the state the
//! decisions keep: samplers, and the shadow's policy and counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

use super::RoutePolicy;
use crate::addr::Destination;
use crate::config::traffic::TrafficKeys;
use crate::policy::limits::{BulkheadPolicy, ConcurrencyLimit};
use crate::policy::traffic::{Compared, Faults, Mirror, Skip, Split};

/// Copies in flight to one shadow when its route sets no `max-concurrent`:
/// the flag's default (1024) of copies hanging on a stalled shadow cost the
/// real path 15-40 % more CPU per request on one worker (benches/mirror.sh);
/// 64 copies in flight carry thousands per second at a few milliseconds each.
pub const MIRROR_IN_FLIGHT: usize = 64;

/// One route's traffic decisions.
pub struct RouteTraffic {
    /// The route's label.
    pub route: Arc<str>,
    /// `to` (one destination at 100 %) or `split`.
    pub moves: Option<Split<Destination>>,
    /// Keep the client's `Host` on a moved or mirrored request.
    pub keep_host: bool,
    pub mirror: Option<Shadow>,
    pub faults: Option<Faults>,
    /// The keys as written, for `/config`.
    pub keys: TrafficKeys,
}

/// Where a route's copies go, under which policy, and what became of them.
pub struct Shadow {
    pub plan: Mirror<Destination>,
    /// The `route` label of the shadow's state: `mirror:<route>`, so that its
    /// breakers, pool and bulkhead are its own and the real path never
    /// shares them.
    pub label: Arc<str>,
    /// The shadow destination's own policy, sent once: no retries, no queue.
    pub policy: RoutePolicy,
    outcomes: [AtomicU64; 4],
    skipped: [AtomicU64; 3],
}

/// What became of one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Compared(Compared),
    /// No answer from the shadow: refused, reset, timed out.
    Error,
    Skipped(Skip),
}

impl Outcome {
    /// The `outcome` label of `breakwater_mirror_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Compared(Compared::Match) => "match",
            Outcome::Compared(Compared::Mismatch) => "mismatch",
            Outcome::Error => "error",
            Outcome::Skipped(_) => "skipped",
        }
    }

    pub const LABELS: [&'static str; 4] = ["match", "mismatch", "error", "skipped"];

    const fn index(self) -> usize {
        match self {
            Outcome::Compared(Compared::Match) => 0,
            Outcome::Compared(Compared::Mismatch) => 1,
            Outcome::Error => 2,
            Outcome::Skipped(_) => 3,
        }
    }
}

impl Shadow {
    /// A shadow for `route`'s copies to `plan.target`, under `policy` (the
    /// policy requests to that destination get from the table; `own_limit`:
    /// its route sets `max-concurrent` itself).
    pub fn new(
        route: &str,
        plan: Mirror<Destination>,
        mut policy: RoutePolicy,
        own_limit: bool,
    ) -> Self {
        policy.retry.retries = 0;
        // No breaker: a shadow that fails is what the comparison is for, and
        // an open circuit would hide its answers as errors. The cap below is
        // what protects it, and the real path.
        policy.breaker.consecutive_failures = 0;
        policy.breaker.failure_rate = 0;
        policy.breaker.slow_call = None;
        // At most the shadow's own max-concurrent copies in flight, and
        // MIRROR_IN_FLIGHT unless its route sets one; never a queue, so a
        // copy either goes at once or is skipped.
        let cap = match policy.bulkhead {
            Some(b) => match b.max_concurrent {
                ConcurrencyLimit::Fixed(n) => n,
                ConcurrencyLimit::Auto => b.max,
            },
            None => usize::MAX,
        };
        let cap = if own_limit {
            cap
        } else {
            cap.min(MIRROR_IN_FLIGHT)
        };
        let queue_timeout = policy
            .bulkhead
            .map_or_else(Default::default, |b| b.queue_timeout);
        policy.bulkhead = Some(BulkheadPolicy::fixed(cap as u64, 0, queue_timeout));
        Shadow {
            plan,
            label: format!("mirror:{route}").into(),
            policy,
            outcomes: Default::default(),
            skipped: Default::default(),
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if let Outcome::Skipped(why) = outcome {
            let i = Skip::ALL.iter().position(|s| *s == why).unwrap_or(0);
            self.skipped[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What `/upstreams` shows of the shadow of `route`.
    pub fn describe(&self, route: &str) -> serde_json::Value {
        let mut about = self.counts();
        about["of_route"] = route.into();
        about["percent"] = self.plan.share.percent().into();
        about["unsafe"] = self.plan.unsafe_methods.into();
        about["in_flight"] = 0.into();
        about["limit"] = self.policy.bulkhead.map(|b| b.initial_limit()).into();
        about
    }

    /// The counts of each outcome, and of each reason to skip.
    fn counts(&self) -> serde_json::Value {
        let mut outcomes = serde_json::Map::new();
        for (label, n) in Outcome::LABELS.iter().zip(&self.outcomes) {
            outcomes.insert((*label).into(), n.load(Ordering::Relaxed).into());
        }
        let mut skipped = serde_json::Map::new();
        for (why, n) in Skip::ALL.iter().zip(&self.skipped) {
            skipped.insert(why.as_str().into(), n.load(Ordering::Relaxed).into());
        }
        serde_json::json!({ "outcomes": outcomes, "skipped": skipped })
    }
}

impl RouteTraffic {
    /// `None` for a route without traffic keys (most of them). The shadow's
    /// policy is `shadow_policy` of the mirror's destination.
    pub fn compile(
        route: &Arc<str>,
        keys: &TrafficKeys,
        shadow_policy: impl FnOnce(&Destination) -> (RoutePolicy, bool),
    ) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        let moves = match (&keys.to, keys.split.as_slice()) {
            (Some(to), _) => Some(Split::new(
                vec![(to.clone(), crate::policy::traffic::Share::ALL)],
                None,
            )),
            (None, []) => None,
            (None, split) => Some(Split::new(
                split
                    .iter()
                    .map(|s| (s.destination.clone(), s.percent))
                    .collect(),
                keys.split_key.clone(),
            )),
        };
        let mirror = keys.mirror.as_ref().map(|m| {
            let plan = Mirror::new(m.destination.clone(), m.percent, m.unsafe_methods);
            let (policy, own_limit) = shadow_policy(&m.destination);
            Shadow::new(route, plan, policy, own_limit)
        });
        let faults = (!keys.faults.is_empty()).then(|| {
            Faults::new(
                keys.faults.abort.map(|a| (a.status, a.percent)),
                keys.faults.delay.map(|d| (d.duration, d.percent)),
            )
        });
        Some(RouteTraffic {
            route: route.clone(),
            moves,
            keep_host: keys.keep_host.unwrap_or(false),
            mirror,
            faults,
            keys: keys.clone(),
        })
    }

    /// Where a request of this route goes instead, if anywhere.
    pub fn moved_to(&self, headers: &HeaderMap) -> Option<&Destination> {
        let split = self.moves.as_ref()?;
        split.pick(headers).map(|i| &split.targets()[i].0)
    }
}
