//! Local rate limits (`rate-limit=RPS[/BURST]`): a token bucket per
//! destination or route, or one per client key (`rate-limit-key`), kept for
//! the most recently seen keys only.
//!
//! The bucket is GCRA, the generic cell rate algorithm: one number per
//! bucket, the time at which it would be full again, so taking a token is a
//! single compare-and-swap and a refusal knows to the nanosecond when the
//! next token comes (the `Retry-After`). It admits exactly a token bucket's
//! traffic: `BURST` at once, then one per `1/RPS`.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Keys a keyed limit remembers; the least recently seen is forgotten first,
/// so clients that invent keys cannot grow memory (about 64 bytes a key).
pub const MAX_KEYS: usize = 10_000;

/// The highest rate accepted: beyond it a limit is no limit.
const MAX_PER_SECOND: f64 = 1_000_000.0;

/// `RPS[/BURST]`: requests per second (fractions allowed: `0.5` is one every
/// two seconds) and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// A `rate-limit` value that is not `RPS[/BURST]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error(
        "'{0}' is not RPS[/BURST] (e.g. 100 or 100/20): RPS a number above 0 and at most 1000000"
    )]
    Rate(String),
    #[error("'{0}': the burst after '/' must be a whole number from 1 to 1000000")]
    Burst(String),
}

impl RateLimit {
    pub fn parse(s: &str) -> Result<Self, RateLimitError> {
        let (rate, burst) = match s.split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: f64 = rate
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= MAX_PER_SECOND)
            .ok_or_else(|| RateLimitError::Rate(s.into()))?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|b| (1..=1_000_000).contains(b))
                .ok_or_else(|| RateLimitError::Burst(s.into()))?,
            None => Self::default_burst(per_second),
        };
        Ok(RateLimit { per_second, burst })
    }

    /// A tenth of a second's worth, at least one: enough for a client that
    /// keeps the rate with some jitter, small enough that the rate holds
    /// within 1 % over ten seconds (a second's worth would let 10 % more
    /// through in the first second).
    fn default_burst(per_second: f64) -> u32 {
        ((per_second / 10.0).ceil() as u32).max(1)
    }

    /// The time between tokens, in nanoseconds (at least one).
    fn interval_ns(&self) -> u64 {
        ((1e9 / self.per_second) as u64).max(1)
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a limit's key is, per request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// One bucket for the destination or route.
    Shared,
    /// A bucket per value of this request header (a missing header is one
    /// more key of its own).
    #[serde(serialize_with = "serialize_header")]
    Header(http::HeaderName),
    /// A bucket per verified client identity (inbound mutual TLS); clients
    /// without one share a bucket.
    Identity,
}

fn serialize_header<S: serde::Serializer>(h: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

impl LimitKey {
    /// `HEADER` or `identity`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("identity") {
            return Ok(LimitKey::Identity);
        }
        http::HeaderName::from_bytes(s.as_bytes())
            .map(LimitKey::Header)
            .map_err(|_| format!("'{s}' is neither a header name nor 'identity'"))
    }
}

/// One GCRA step: with the bucket full again at `tat` (nanoseconds on the
/// limiter's clock), a request at `now` is admitted, giving the new `tat`,
/// or refused with the wait until a token comes.
fn step(tat: u64, now: u64, interval: u64, tolerance: u64) -> Result<u64, Duration> {
    let start = tat.max(now);
    let ahead = start - now;
    if ahead > tolerance {
        return Err(Duration::from_nanos(ahead - tolerance));
    }
    Ok(start.saturating_add(interval))
}

/// A rate limit in force: one bucket, or a bucket per key.
pub struct RateLimiter {
    limit: RateLimit,
    key: LimitKey,
    interval: u64,
    /// `(burst - 1)` intervals: how far ahead of now the bucket may be.
    tolerance: u64,
    epoch: Instant,
    shared: AtomicU64,
    keyed: Option<Mutex<lru::LruCache<u64, u64>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, key: LimitKey) -> Self {
        let interval = limit.interval_ns();
        let keyed = (key != LimitKey::Shared).then(|| {
            Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            ))
        });
        RateLimiter {
            limit,
            key,
            interval,
            tolerance: interval.saturating_mul(u64::from(limit.burst - 1)),
            epoch: Instant::now(),
            shared: AtomicU64::new(0),
            keyed,
            hasher: Default::default(),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    pub fn key(&self) -> &LimitKey {
        &self.key
    }

    /// Takes a token for a request whose key (per [`key`](Self::key)) is
    /// `key`, or says how long until one comes. The key is hashed with a
    /// per-process random seed: a client cannot aim two keys at one bucket.
    pub fn try_take(&self, key: &[u8], now: Instant) -> Result<(), Duration> {
        let t =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let Some(keyed) = &self.keyed else {
            let mut tat = self.shared.load(Ordering::Relaxed);
            loop {
                let next = step(tat, t, self.interval, self.tolerance)?;
                match self.shared.compare_exchange_weak(
                    tat,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(()),
                    Err(current) => tat = current,
                }
            }
        };
        let hash = self.hasher.hash_one(key);
        let mut keys = keyed.lock().unwrap_or_else(|p| p.into_inner());
        let tat = keys.get_or_insert_mut(hash, || 0);
        *tat = step(*tat, t, self.interval, self.tolerance)?;
        Ok(())
    }

    /// Keys remembered now.
    pub fn keys(&self) -> usize {
        self.keyed
            .as_ref()
            .map_or(0, |k| k.lock().unwrap_or_else(|p| p.into_inner()).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_what_is_wrong() {
        let l = RateLimit::parse("100/20").unwrap();
        assert_eq!((l.per_second, l.burst), (100.0, 20));
        assert_eq!(RateLimit::parse("100").unwrap().burst, 10);
        assert_eq!(RateLimit::parse("0.5").unwrap().burst, 1);
        for bad in ["", "0", "-1", "fast", "1e9", "NaN", "inf", "10/"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        for bad in ["10/0", "10/x", "10/-2", "10/2.5"] {
            assert_eq!(
                RateLimit::parse(bad),
                Err(RateLimitError::Burst(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(LimitKey::parse("identity"), Ok(LimitKey::Identity));
        assert!(matches!(LimitKey::parse("x-user"), Ok(LimitKey::Header(_))));
        assert!(LimitKey::parse("bad header").is_err());
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let l = RateLimiter::new(RateLimit::parse("10/3").unwrap(), LimitKey::Shared);
        let t0 = l.epoch;
        for _ in 0..3 {
            assert!(l.try_take(b"", t0).is_ok());
        }
        let wait = l.try_take(b"", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "the next token");
        assert!(l.try_take(b"", t0 + Duration::from_millis(99)).is_err());
        assert!(l.try_take(b"", t0 + Duration::from_millis(100)).is_ok());
        // Idle for a long time: the bucket is full, not fuller.
        let later = t0 + Duration::from_secs(60);
        let admitted = (0..10).filter(|_| l.try_take(b"", later).is_ok()).count();
        assert_eq!(admitted, 3);
    }

    /// 1,000 requests a second offered for 10 s at a 100/s limit: what gets
    /// through is the rate plus the burst, within 1 %.
    #[test]
    fn the_rate_holds_over_ten_seconds() {
        let l = RateLimiter::new(RateLimit::parse("100").unwrap(), LimitKey::Shared);
        let t0 = l.epoch;
        let admitted = (0..10_000u64)
            .filter(|i| l.try_take(b"", t0 + Duration::from_millis(*i)).is_ok())
            .count();
        assert!((1000..=1010).contains(&admitted), "{admitted}");
    }

    #[test]
    fn keys_have_buckets_of_their_own_and_memory_is_bounded() {
        let l = RateLimiter::new(
            RateLimit::parse("1/1").unwrap(),
            LimitKey::Header(http::HeaderName::from_static("x-user")),
        );
        let now = l.epoch;
        assert!(l.try_take(b"alice", now).is_ok());
        assert!(l.try_take(b"alice", now).is_err());
        assert!(l.try_take(b"bob", now).is_ok(), "a bucket of bob's own");
        for i in 0..100_000u32 {
            let _ = l.try_take(&i.to_le_bytes(), now);
        }
        assert_eq!(l.keys(), MAX_KEYS);
    }
}
