//! The concurrency policy of a destination as the flags give it: a fixed
//! bulkhead limit or `auto` (adaptive), the queue in front of it.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// `--max-concurrent`: a number, or `auto` to let observed latency decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcurrencyLimit {
    Fixed(usize),
    Auto,
}

/// A `--max-concurrent` value that is neither a positive count nor `auto`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is neither a count of at least 1 nor auto")]
pub struct LimitError(pub String);

impl ConcurrencyLimit {
    pub fn parse(s: &str) -> Result<Self, LimitError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ConcurrencyLimit::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(ConcurrencyLimit::Fixed(n)),
            _ => Err(LimitError(s.into())),
        }
    }
}

impl fmt::Display for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConcurrencyLimit::Fixed(n) => write!(f, "{n}"),
            ConcurrencyLimit::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for ConcurrencyLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The bulkhead of one destination.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BulkheadPolicy {
    pub max_concurrent: ConcurrencyLimit,
    /// Bounds of an `auto` limit.
    pub min: usize,
    pub max: usize,
    pub max_queue: usize,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub queue_timeout: Duration,
}

impl BulkheadPolicy {
    /// A fixed limit of `n` with its queue: the bulkhead in front of the app
    /// (`--inbound-max-concurrent`, an inbound route's), which never adapts.
    pub fn fixed(n: u64, max_queue: usize, queue_timeout: Duration) -> Self {
        BulkheadPolicy {
            max_concurrent: ConcurrencyLimit::Fixed(usize::try_from(n).unwrap_or(usize::MAX)),
            min: 1,
            max: usize::MAX,
            max_queue,
            queue_timeout,
        }
    }
}

impl BulkheadPolicy {
    /// The limit to start with: the fixed one, or for `auto` a modest start
    /// within its bounds (20, as Netflix's limiters start). Start-up refuses
    /// `min > max`; were it to get here, `min` wins (as in the adaptive limit)
    /// rather than `clamp` panicking.
    pub fn initial_limit(&self) -> usize {
        match self.max_concurrent {
            ConcurrencyLimit::Fixed(n) => n,
            ConcurrencyLimit::Auto => {
                let min = self.min.max(1);
                20.min(self.max).max(min)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(ConcurrencyLimit::parse("auto"), Ok(ConcurrencyLimit::Auto));
        assert_eq!(
            ConcurrencyLimit::parse("50"),
            Ok(ConcurrencyLimit::Fixed(50))
        );
        assert!(ConcurrencyLimit::parse("0").is_err());
        assert!(ConcurrencyLimit::parse("lots").is_err());
    }

    #[test]
    fn inverted_bounds_do_not_panic() {
        let policy = |min, max| BulkheadPolicy {
            max_concurrent: ConcurrencyLimit::Auto,
            min,
            max,
            max_queue: 0,
            queue_timeout: Duration::from_secs(1),
        };
        assert_eq!(policy(4, 1024).initial_limit(), 20);
        assert_eq!(policy(2000, 1024).initial_limit(), 2000);
        assert_eq!(policy(0, 0).initial_limit(), 1);
        assert_eq!(policy(1, 5).initial_limit(), 5);
    }
}
