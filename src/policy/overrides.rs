//! Admin overrides for incidents (`PUT /override`): force a destination's
//! circuit open or closed, or put a policy in observe mode, for a bounded time.
//! Each one expires by itself, so an override forgotten after an incident does
//! not outlive it. The request path pays one atomic load while none is set.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::mode::Observable;
use crate::addr::Destination;

/// What an override does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Every request to the destination is refused as if its circuits were open.
    CircuitOpen,
    /// The breakers are not asked: every request goes to an endpoint, and its
    /// outcome is not recorded (nothing learned while forced is trusted later).
    CircuitClosed,
    /// The policy lets everything through and counts what it would have done.
    Observe(Observable),
}

impl Action {
    /// `circuit=open|closed` or `observe=breaker|bulkhead|retry-budget`.
    pub fn parse(key: &str, value: &str) -> Option<Self> {
        match (key, value) {
            ("circuit", "open") => Some(Action::CircuitOpen),
            ("circuit", "closed") => Some(Action::CircuitClosed),
            ("observe", p) => Observable::parse(p).map(Action::Observe),
            _ => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Action::CircuitOpen => "circuit=open".into(),
            Action::CircuitClosed => "circuit=closed".into(),
            Action::Observe(p) => format!("observe={}", p.as_str()),
        }
    }
}

/// A circuit an override forces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced {
    /// Open for this much longer: the `Retry-After` of the refusal.
    Open(Duration),
    Closed,
}

/// Which requests an override applies to: a destination, a route, or both;
/// neither is every destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub destination: Option<Destination>,
    pub route: Option<String>,
}

impl Target {
    fn covers(&self, dest: &Destination, route: &str) -> bool {
        self.destination.as_ref().is_none_or(|d| d == dest)
            && self.route.as_deref().is_none_or(|r| r == route)
    }
}

#[derive(Clone, Debug)]
struct Override {
    id: u64,
    target: Target,
    action: Action,
    until: Instant,
}

/// One override as `/config` and `/upstreams` show it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OverrideView {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub action: String,
    /// Seconds until it expires, rounded up.
    pub expires_in_s: u64,
}

/// The overrides in force, shared by every destination.
#[derive(Debug, Default)]
pub struct Overrides {
    /// How many are set: zero is the request path's fast way out.
    count: AtomicUsize,
    next_id: AtomicU64,
    list: RwLock<Vec<Override>>,
}

impl Overrides {
    /// Sets an override for `ttl`; one with the same target and kind of action
    /// is replaced. Returns its id.
    pub fn set(&self, target: Target, action: Action, ttl: Duration) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let until = Instant::now() + ttl;
        let mut list = self.write();
        let same_kind = |a: Action, b: Action| match (a, b) {
            (Action::Observe(x), Action::Observe(y)) => x == y,
            (Action::Observe(_), _) | (_, Action::Observe(_)) => false,
            _ => true,
        };
        list.retain(|o| !(o.target == target && same_kind(o.action, action)));
        list.push(Override {
            id,
            target,
            action,
            until,
        });
        self.count.store(list.len(), Ordering::Release);
        id
    }

    /// Removes the override `id`; whether there was one.
    pub fn remove(&self, id: u64) -> bool {
        let mut list = self.write();
        let before = list.len();
        list.retain(|o| o.id != id);
        self.count.store(list.len(), Ordering::Release);
        list.len() != before
    }

    /// Whether an override puts `policy` in observe mode for this request.
    pub fn observes(&self, dest: &Destination, route: &str, policy: Observable) -> bool {
        self.find(dest, route, |a| a == Action::Observe(policy))
            .is_some()
    }

    /// The circuit an override forces for this request, if any.
    pub fn circuit(&self, dest: &Destination, route: &str) -> Option<Forced> {
        let (action, until) = self.find(dest, route, |a| {
            matches!(a, Action::CircuitOpen | Action::CircuitClosed)
        })?;
        Some(match action {
            Action::CircuitOpen => Forced::Open(until.saturating_duration_since(Instant::now())),
            _ => Forced::Closed,
        })
    }

    fn find(
        &self,
        dest: &Destination,
        route: &str,
        wanted: impl Fn(Action) -> bool,
    ) -> Option<(Action, Instant)> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let now = Instant::now();
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        let found = list
            .iter()
            .filter(|o| o.until > now && wanted(o.action) && o.target.covers(dest, route))
            // The one set last wins: forcing closed after open means closed.
            .max_by_key(|o| o.id)
            .map(|o| (o.action, o.until));
        let expired = list.iter().any(|o| o.until <= now);
        drop(list);
        if expired {
            self.expire(now);
        }
        found
    }

    fn expire(&self, now: Instant) {
        let mut list = self.write();
        list.retain(|o| o.until > now);
        self.count.store(list.len(), Ordering::Release);
    }

    /// Every override in force.
    pub fn describe(&self) -> Vec<OverrideView> {
        let now = Instant::now();
        self.expire(now);
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|o| view(o, now)).collect()
    }

    /// The overrides in force for one route to one destination.
    pub fn describe_for(&self, dest: &Destination, route: &str) -> Vec<OverrideView> {
        let now = Instant::now();
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|o| o.until > now && o.target.covers(dest, route))
            .map(|o| view(o, now))
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Override>> {
        self.list.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn view(o: &Override, now: Instant) -> OverrideView {
    let left = o.until.saturating_duration_since(now);
    OverrideView {
        id: o.id,
        destination: o.target.destination.as_ref().map(|d| d.to_string()),
        route: o.target.route.clone(),
        action: o.action.describe(),
        expires_in_s: left.as_secs() + u64::from(left.subsec_nanos() > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn overrides_apply_to_their_target_and_expire() {
        let o = Overrides::default();
        let pay = Destination::new("payments", 80);
        let search = Destination::new("search", 80);
        assert_eq!(o.circuit(&pay, "default"), None);
        let target = Target {
            destination: Some(pay.clone()),
            route: None,
        };
        o.set(target.clone(), Action::CircuitOpen, Duration::from_secs(30));
        assert!(matches!(o.circuit(&pay, "default"), Some(Forced::Open(_))));
        assert_eq!(o.circuit(&search, "default"), None);
        // The same kind of override on the same target replaces the first.
        o.set(target, Action::CircuitClosed, Duration::from_secs(30));
        assert_eq!(o.circuit(&pay, "default"), Some(Forced::Closed));
        assert_eq!(o.describe().len(), 1);
        o.set(
            Target::default(),
            Action::Observe(Observable::Bulkhead),
            Duration::from_secs(10),
        );
        assert!(o.observes(&search, "x", Observable::Bulkhead));
        assert!(!o.observes(&search, "x", Observable::Breaker));
        assert_eq!(o.describe()[1].expires_in_s, 10);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!o.observes(&search, "x", Observable::Bulkhead));
        assert_eq!(o.circuit(&pay, "default"), Some(Forced::Closed));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(o.circuit(&pay, "default"), None);
        assert!(o.describe().is_empty());
    }
}
