//! `--route HOST[:PORT],key=value,...`: per-destination overrides of the global flags.
//!
//! A route names a destination and overrides some of the policy flags for it; the
//! first route that matches a destination wins. Keys are the flag names without `--`.

use std::time::Duration;

use serde::Serialize;

use crate::addr::Destination;
use crate::policy::breaker::BreakerConfig;
use crate::policy::limits::{BulkheadPolicy, ConcurrencyLimit, LimitError};
use crate::policy::retry::{RetryOn, RetryOnError, RetryPolicy};
use crate::units::{
    UnitError, parse_bytes, parse_duration, parse_per_second, parse_percent,
    parse_positive_duration, serialize_opt_duration,
};

/// Why a `--route` flag cannot be parsed; the message names the offending part.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("a route starts with HOST[:PORT], e.g. payments:8080,timeout=2s")]
    NoTarget,
    #[error("'{0}' names no host: HOST[:PORT], e.g. payments:8080")]
    NoHost(String),
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("route key '{key}': {error}")]
    Key { key: String, error: KeyError },
    #[error("'{0}': unclosed '['")]
    UnclosedBracket(String),
    #[error("'{0}' is not HOST[:PORT]")]
    NotHostPort(String),
    #[error("'{0}' is not a port (1-65535)")]
    NotAPort(String),
    #[error("port 0 cannot be routed")]
    PortZero,
}

/// Why one `key=value` of a route is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error(transparent)]
    RetryOn(#[from] RetryOnError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("'{0}' is not a count")]
    NotACount(String),
    #[error("'{0}' is not a percentage from 0 to 100")]
    NotARate(String),
    #[error("must be at least 1")]
    AtLeastOne,
    #[error("'{0}' is not one of auto, h1, h2")]
    NotAProtocol(String),
    #[error("'{0}' is not true or false")]
    NotABool(String),
    #[error("unknown key (known: {KEYS})")]
    Unknown,
}

/// Which HTTP version breakwater speaks to an upstream or the app.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Learned per endpoint: HTTP/1.1 stays HTTP/1.1; HTTP/2 stays HTTP/2 where the
    /// endpoint speaks it (ALPN, or its answer to a prior-knowledge preface), else
    /// goes as HTTP/1.1. gRPC needs HTTP/2 and is refused toward HTTP/1.1 only.
    #[default]
    Auto,
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

/// One `--route` flag, parsed: every key it names overrides that flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteOverride {
    pub host: String,
    pub port: Option<u16>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub connect_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `tls=true`: speak TLS to this upstream (SNI, ALPN, verification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub retry_backoff: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub retry_backoff_max: Option<Duration>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget_min: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_body_limit: Option<usize>,
    #[serde(flatten)]
    pub limits: LimitOverrides,
}

/// The breaker and bulkhead keys of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_failure_rate: Option<u8>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub breaker_window: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_min_requests: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub breaker_open_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_half_open_requests: Option<u32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub breaker_slow_call: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_slow_call_rate: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<ConcurrencyLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_min: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub queue_timeout: Option<Duration>,
}

impl LimitOverrides {
    /// Sets `key`; `Ok(false)` when the key is not one of these.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, KeyError> {
        let count = |v: &str| v.parse::<u32>().map_err(|_| KeyError::NotACount(v.into()));
        let size = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| KeyError::NotACount(v.into()))
        };
        let rate = |v: &str| match v.trim_end_matches('%').parse::<u8>() {
            Ok(n) if n <= 100 => Ok(n),
            _ => Err(KeyError::NotARate(v.into())),
        };
        match key {
            "breaker-consecutive-failures" => {
                self.breaker_consecutive_failures = Some(count(value)?)
            }
            "breaker-failure-rate" => self.breaker_failure_rate = Some(rate(value)?),
            "breaker-window" => self.breaker_window = Some(parse_positive_duration(value)?),
            "breaker-min-requests" => self.breaker_min_requests = Some(count(value)?),
            "breaker-open-duration" => {
                self.breaker_open_duration = Some(parse_positive_duration(value)?)
            }
            // As the flag: a half-open circuit closes after this many probes succeed.
            "breaker-half-open-requests" => match count(value)? {
                0 => return Err(KeyError::AtLeastOne),
                n => self.breaker_half_open_requests = Some(n),
            },
            "breaker-slow-call" => self.breaker_slow_call = Some(parse_positive_duration(value)?),
            "breaker-slow-call-rate" => self.breaker_slow_call_rate = Some(rate(value)?),
            "max-ejection-percent" => self.max_ejection_percent = Some(rate(value)?),
            "max-concurrent" => self.max_concurrent = Some(ConcurrencyLimit::parse(value)?),
            "max-concurrent-min" => self.max_concurrent_min = Some(size(value)?),
            "max-concurrent-max" => self.max_concurrent_max = Some(size(value)?),
            "max-queue" => self.max_queue = Some(size(value)?),
            "queue-timeout" => self.queue_timeout = Some(parse_positive_duration(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// These overrides applied to a destination's breaker and bulkhead policy.
    pub fn apply(
        &self,
        breaker: &mut BreakerConfig,
        bulkhead: &mut BulkheadPolicy,
        ejection: &mut u8,
    ) {
        let b = breaker;
        b.consecutive_failures = self
            .breaker_consecutive_failures
            .unwrap_or(b.consecutive_failures);
        b.failure_rate = self.breaker_failure_rate.unwrap_or(b.failure_rate);
        b.window = self.breaker_window.unwrap_or(b.window);
        b.min_requests = self.breaker_min_requests.unwrap_or(b.min_requests);
        b.open_duration = self.breaker_open_duration.unwrap_or(b.open_duration);
        b.half_open_requests = self
            .breaker_half_open_requests
            .unwrap_or(b.half_open_requests);
        b.slow_call = self.breaker_slow_call.or(b.slow_call);
        b.slow_call_rate = self.breaker_slow_call_rate.unwrap_or(b.slow_call_rate);
        *ejection = self.max_ejection_percent.unwrap_or(*ejection);
        let q = bulkhead;
        q.max_concurrent = self.max_concurrent.unwrap_or(q.max_concurrent);
        q.min = self.max_concurrent_min.unwrap_or(q.min);
        q.max = self.max_concurrent_max.unwrap_or(q.max);
        q.max_queue = self.max_queue.unwrap_or(q.max_queue);
        q.queue_timeout = self.queue_timeout.unwrap_or(q.queue_timeout);
    }
}

/// The keys a route may set, for error messages.
const KEYS: &str = "timeout, connect-timeout, protocol, tls, retries, retry-on, retry-backoff, \
                    retry-backoff-max, per-try-timeout, retry-budget, retry-budget-min, \
                    retry-body-limit, breaker-consecutive-failures, breaker-failure-rate, \
                    breaker-window, breaker-min-requests, breaker-open-duration, \
                    breaker-half-open-requests, breaker-slow-call, breaker-slow-call-rate, \
                    max-ejection-percent, max-concurrent, max-concurrent-min, \
                    max-concurrent-max, max-queue, queue-timeout";

impl RouteOverride {
    /// Parses `HOST[:PORT],key=value,...`; errors name the offending key.
    pub fn parse(s: &str) -> Result<Self, RouteError> {
        let mut parts = s.split(',');
        let target = parts.next().unwrap_or_default().trim();
        if target.is_empty() {
            return Err(RouteError::NoTarget);
        }
        let (host, port) = split_host_port(target)?;
        if host.is_empty() {
            // `:8080` or `[]` would match no destination, silently.
            return Err(RouteError::NoHost(target.into()));
        }
        let mut route = RouteOverride {
            host,
            port,
            ..RouteOverride::default()
        };
        for pair in parts {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| RouteError::NotKeyValue(pair.into()))?;
            let (key, value) = (key.trim(), value.trim());
            route.set(key, value).map_err(|error| RouteError::Key {
                key: key.into(),
                error,
            })?;
        }
        Ok(route)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), KeyError> {
        match key {
            "timeout" => self.timeout = Some(parse_positive_duration(value)?),
            "connect-timeout" => self.connect_timeout = Some(parse_positive_duration(value)?),
            "protocol" => {
                self.protocol = Some(
                    <Protocol as clap::ValueEnum>::from_str(value, true)
                        .map_err(|_| KeyError::NotAProtocol(value.into()))?,
                )
            }
            "tls" => {
                self.tls = Some(match value {
                    "true" | "on" | "yes" | "1" => true,
                    "false" | "off" | "no" | "0" => false,
                    _ => return Err(KeyError::NotABool(value.into())),
                })
            }
            "retries" => {
                self.retries = Some(
                    value
                        .parse()
                        .map_err(|_| KeyError::NotACount(value.into()))?,
                )
            }
            // A comma list inside a comma list: route values use '+' between conditions.
            "retry-on" => self.retry_on = Some(RetryOn::parse(&value.replace('+', ","))?),
            "retry-backoff" => self.retry_backoff = Some(parse_duration(value)?),
            "retry-backoff-max" => self.retry_backoff_max = Some(parse_duration(value)?),
            "per-try-timeout" => self.per_try_timeout = Some(parse_positive_duration(value)?),
            "retry-budget" => self.retry_budget = Some(parse_percent(value)?),
            "retry-budget-min" => self.retry_budget_min = Some(parse_per_second(value)?),
            "retry-body-limit" => self.retry_body_limit = Some(parse_bytes(value)?),
            other => {
                if !self.limits.set(other, value)? {
                    return Err(KeyError::Unknown);
                }
            }
        }
        Ok(())
    }

    /// This route's overrides applied to `policy`.
    pub fn apply(&self, policy: &mut RetryPolicy) {
        policy.retries = self.retries.unwrap_or(policy.retries);
        if let Some(on) = &self.retry_on {
            policy.retry_on = on.clone();
        }
        policy.backoff = self.retry_backoff.unwrap_or(policy.backoff);
        policy.backoff_max = self.retry_backoff_max.unwrap_or(policy.backoff_max);
        policy.per_try_timeout = self.per_try_timeout.or(policy.per_try_timeout);
        policy.budget_percent = self.retry_budget.unwrap_or(policy.budget_percent);
        policy.budget_min_per_sec = self.retry_budget_min.unwrap_or(policy.budget_min_per_sec);
        policy.body_limit = self.retry_body_limit.unwrap_or(policy.body_limit);
    }

    /// Whether this route applies to `dest`: same host (case-insensitive) and, when the
    /// route names a port, the same port.
    pub fn matches(&self, dest: &Destination) -> bool {
        self.host.eq_ignore_ascii_case(dest.host()) && self.port.is_none_or(|p| p == dest.port())
    }
}

fn split_host_port(target: &str) -> Result<(String, Option<u16>), RouteError> {
    // Bracketed IPv6: [::1]:8080 or [::1].
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| RouteError::UnclosedBracket(target.into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err(RouteError::NotHostPort(target.into())),
        };
        return Ok((host.to_ascii_lowercase(), port));
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Ok((host.to_ascii_lowercase(), Some(parse_port(port)?)))
        }
        _ => Ok((target.to_ascii_lowercase(), None)),
    }
}

fn parse_port(p: &str) -> Result<u16, RouteError> {
    p.parse()
        .map_err(|_| RouteError::NotAPort(p.into()))
        .and_then(|n: u16| {
            if n == 0 {
                Err(RouteError::PortZero)
            } else {
                Ok(n)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example_keys() {
        for nameless in [":8080", "[]", "[]:80"] {
            let e = RouteOverride::parse(nameless)
                .expect_err(nameless)
                .to_string();
            assert!(e.contains("names no host"), "{e}");
        }
        let r = RouteOverride::parse("payments:8080,timeout=2s,protocol=h2").unwrap();
        assert_eq!(r.host, "payments");
        assert_eq!(r.port, Some(8080));
        assert_eq!(r.timeout, Some(Duration::from_secs(2)));
        assert_eq!(r.protocol, Some(Protocol::H2));
        let r = RouteOverride::parse("payments,retries=0,retry-on=5xx+429,per-try-timeout=300ms")
            .unwrap();
        assert_eq!(r.retries, Some(0));
        assert_eq!(
            r.retry_on.map(|o| o.to_string()).as_deref(),
            Some("5xx,429")
        );
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(300)));
        assert_eq!(
            RouteOverride::parse("api:443,tls=true").unwrap().tls,
            Some(true)
        );
        assert!(RouteOverride::parse("api,tls=maybe").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = RouteOverride::parse("payments,timeout=soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        let e = RouteOverride::parse("payments,colour=blue")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = RouteOverride::parse("payments,retry-on=sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry-on"), "{e}");
        let e = RouteOverride::parse("payments,retry-budget=-5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry-budget"), "{e}");
        assert!(RouteOverride::parse(",timeout=1s").is_err());
        assert!(RouteOverride::parse("payments:http").is_err());
    }

    #[test]
    fn matches_host_and_optional_port() {
        let any_port = RouteOverride::parse("Payments").unwrap();
        let one_port = RouteOverride::parse("payments:8080").unwrap();
        let d80 = Destination::new("payments", 80);
        let d8080 = Destination::new("payments", 8080);
        assert!(any_port.matches(&d80) && any_port.matches(&d8080));
        assert!(!one_port.matches(&d80) && one_port.matches(&d8080));
        let v6 = RouteOverride::parse("[::1]:9000").unwrap();
        assert!(v6.matches(&Destination::new("::1", 9000)));
    }
}
