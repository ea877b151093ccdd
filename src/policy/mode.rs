//! Observe-only mode: a policy that records what it would have done without
//! doing it, so a new breaker or bulkhead can be turned on in production and
//! watched before it is trusted (`breaker-mode`, `bulkhead-mode`,
//! `retry-budget-mode`, `rate-limit-mode`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Whether a policy acts on its decisions or only counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Refuse, reject or skip as the policy decides.
    #[default]
    Enforce,
    /// Let the request through and count what the policy would have done.
    Observe,
}

/// `'{0}'` is neither `enforce` nor `observe`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is neither enforce nor observe")]
pub struct ModeError(pub String);

impl Mode {
    pub fn parse(s: &str) -> Result<Self, ModeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Ok(Mode::Enforce),
            "observe" => Ok(Mode::Observe),
            _ => Err(ModeError(s.into())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The policies that can be observed instead of enforced; the `policy` label
/// of `breakwater_observed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Observable {
    Breaker,
    Bulkhead,
    RetryBudget,
    RateLimit,
}

impl Observable {
    pub const ALL: [Observable; 4] = [
        Observable::Breaker,
        Observable::Bulkhead,
        Observable::RetryBudget,
        Observable::RateLimit,
    ];

    /// Its place in [`Observable::ALL`], for per-policy arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Observable::Breaker => "breaker",
            Observable::Bulkhead => "bulkhead",
            Observable::RetryBudget => "retry-budget",
            Observable::RateLimit => "rate-limit",
        }
    }

    /// What an enforced policy would have done: the `action` label.
    pub fn action(self) -> &'static str {
        match self {
            Observable::Breaker => "reject",
            Observable::Bulkhead | Observable::RateLimit => "reject",
            Observable::RetryBudget => "skip-retry",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The mode of each observable policy, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Modes {
    pub breaker: Mode,
    pub bulkhead: Mode,
    pub retry_budget: Mode,
    pub rate_limit: Mode,
}

impl Modes {
    pub fn of(&self, policy: Observable) -> Mode {
        match policy {
            Observable::Breaker => self.breaker,
            Observable::Bulkhead => self.bulkhead,
            Observable::RetryBudget => self.retry_budget,
            Observable::RateLimit => self.rate_limit,
        }
    }
}

/// [`Modes`] that a live policy change can flip in place, without rebuilding
/// the state the policies have learned: one relaxed load per decision.
#[derive(Debug, Default)]
pub struct ModeCell {
    observe: [AtomicBool; Observable::ALL.len()],
}

impl ModeCell {
    pub fn new(modes: Modes) -> Self {
        let cell = ModeCell::default();
        cell.set(modes);
        cell
    }

    pub fn set(&self, modes: Modes) {
        for p in Observable::ALL {
            self.observe[p.index()].store(modes.of(p) == Mode::Observe, Ordering::Relaxed);
        }
    }

    pub fn get(&self, policy: Observable) -> Mode {
        if self.observe[policy.index()].load(Ordering::Relaxed) {
            Mode::Observe
        } else {
            Mode::Enforce
        }
    }

    pub fn snapshot(&self) -> Modes {
        Modes {
            breaker: self.get(Observable::Breaker),
            bulkhead: self.get(Observable::Bulkhead),
            retry_budget: self.get(Observable::RetryBudget),
            rate_limit: self.get(Observable::RateLimit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_flip_in_place() {
        assert_eq!(Mode::parse("Observe").unwrap(), Mode::Observe);
        assert!(Mode::parse("watch").is_err());
        let cell = ModeCell::new(Modes::default());
        assert_eq!(cell.get(Observable::Bulkhead), Mode::Enforce);
        cell.set(Modes {
            bulkhead: Mode::Observe,
            ..Modes::default()
        });
        assert_eq!(cell.get(Observable::Bulkhead), Mode::Observe);
        assert_eq!(cell.get(Observable::Breaker), Mode::Enforce);
        assert_eq!(cell.snapshot().bulkhead, Mode::Observe);
        for (i, p) in Observable::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i, "ALL is in declaration order");
        }
    }
}
