//! Routes: what a request matches (host, port, path, method, headers) and the
//! policy keys it overrides for the requests it matches. From `--route
//! HOST[:PORT],key=value,...` or from the policy file; the first route that
//! matches a request wins. Keys are the flag names without `--` ([`super::keys`]).

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use serde::Serialize;

use super::keys::{self, Applies};
use super::traffic::TrafficKeys;
use crate::policy::breaker::BreakerConfig;
use crate::policy::hedge::{self, HedgeAfter, HedgeError};
use crate::policy::limits::{BulkheadPolicy, ConcurrencyLimit, LimitError};
use crate::policy::mode::{Mode, ModeError, Modes};
use crate::policy::rate_limit::{LimitKey, RateLimit, RateLimitError};
use crate::policy::retry::{RetryOn, RetryOnError, RetryPolicy};
use crate::units::{
    UnitError, parse_bytes, parse_duration, parse_per_second, parse_percent,
    parse_positive_duration, serialize_opt_duration,
};

/// Why a `--route` flag cannot be parsed; the message names the offending part.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("a route starts with HOST[:PORT] (or * for any host), e.g. payments:8080,timeout=2s")]
    NoTarget,
    #[error("'{0}' names no host: HOST[:PORT] (or * for any host), e.g. payments:8080")]
    NoHost(String),
    #[error("route key '{key}' does not apply to {direction} routes")]
    WrongDirection {
        key: &'static str,
        direction: RouteDirection,
    },
    #[error("route key '{0}' is given twice")]
    Twice(String),
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
    #[error("route key '{key}' needs {needs} on the same route")]
    Needs {
        key: &'static str,
        needs: &'static str,
    },
    #[error("route keys '{key}' and '{other}' cannot be on one route ({key} moves every request)")]
    Excludes {
        key: &'static str,
        other: &'static str,
    },
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
    #[error("'{0}' is not a port (1-65535)")]
    NotAPort(String),
    #[error("'{0}' is not outbound or inbound")]
    NotADirection(String),
    #[error("'{0}' is not an HTTP method")]
    NotAMethod(String),
    #[error("'{0}' is not an absolute path like /reports")]
    NotAPath(String),
    #[error("'{0}' is not a header name, or NAME:VALUE")]
    NotAHeader(String),
    #[error(transparent)]
    Mode(#[from] ModeError),
    #[error("'{0}' is not HOST:PORT (a destination to send to needs its port)")]
    NotATarget(String),
    #[error("'{0}' is not {1}")]
    NotAShare(String, &'static str),
    #[error("the shares add up to {0}%, more than 100")]
    SplitOver(f64),
    #[error("'{0}' is named twice")]
    SplitTwice(String),
    #[error("'{0}' is not a status from 400 to 599")]
    NotAStatus(String),
    #[error("'{0}' is neither a header name nor cookie:NAME")]
    NotASplitKey(String),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    Hedge(#[from] HedgeError),
    #[error("{0}")]
    NotALimitKey(String),
    #[error("unknown key (known: {})", keys::route_keys_list())]
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

/// Which listener's requests a route is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteDirection {
    /// From the app to its dependencies.
    #[default]
    Outbound,
    /// Into the pod, toward the app.
    Inbound,
}

impl std::fmt::Display for RouteDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteDirection::Outbound => "outbound",
            RouteDirection::Inbound => "inbound",
        })
    }
}

/// A header condition: present, or with exactly this value.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: Option<String>,
}

impl HeaderMatch {
    /// `NAME` (present) or `NAME:VALUE` (exactly that value).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| KeyError::NotAHeader(s.into()))?;
        Ok(HeaderMatch { name, value })
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut found = headers.get_all(&self.name).iter();
        match &self.value {
            None => found.next().is_some(),
            Some(want) => found.any(|v| v.as_bytes() == want.as_bytes()),
        }
    }
}

impl Serialize for HeaderMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.value {
            Some(v) => s.collect_str(&format_args!("{}:{v}", self.name)),
            None => s.serialize_str(self.name.as_str()),
        }
    }
}

/// What a route is matched against: the request as it arrives.
pub struct RequestFacts<'a> {
    /// The destination host (outbound) or the `Host` the client named (inbound).
    pub host: &'a str,
    pub port: u16,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestFacts<'a> {
    /// The facts of `req`, going to `host` and `port` as the listener decided.
    /// An IPv6 host is matched without its brackets, as routes write it.
    pub fn of<B>(req: &'a http::Request<B>, host: &'a str, port: u16) -> Self {
        RequestFacts {
            host: crate::addr::strip_brackets(host),
            port,
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        }
    }
}

/// One route, parsed: what it matches, and every key it names overrides that
/// flag for the requests it matches.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteOverride {
    /// The `route` label; `None` takes [`RouteOverride::label`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub direction: RouteDirection,
    /// `None`: any host (`*`).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The exact path (without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulkhead_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_max_concurrent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_max_queue: Option<usize>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_duration"
    )]
    pub inbound_queue_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge_after: Option<HedgeAfter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge_budget: Option<f32>,
    #[serde(flatten)]
    pub rate: RateLimitKeys,
    /// Where matched requests go instead, what is copied, and faults.
    #[serde(flatten)]
    pub traffic: TrafficKeys,
    /// Where the route was written, for messages: `--route` when `None`.
    #[serde(skip)]
    pub origin: Option<String>,
    /// The keys this route sets itself, in the order given: to name them in
    /// messages, and to refuse one given twice.
    #[serde(skip)]
    pub set_keys: Vec<&'static str>,
}

/// The rate-limit keys of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RateLimitKeys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_key: Option<LimitKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_mode: Option<Mode>,
}

impl RateLimitKeys {
    /// Sets `key`; `Ok(false)` when the key is not one of these.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, KeyError> {
        match key {
            "rate-limit" => self.rate_limit = Some(RateLimit::parse(value)?),
            "inbound-rate-limit" => self.inbound_rate_limit = Some(RateLimit::parse(value)?),
            "rate-limit-key" => {
                self.rate_limit_key = Some(LimitKey::parse(value).map_err(KeyError::NotALimitKey)?)
            }
            "rate-limit-mode" => self.rate_limit_mode = Some(Mode::parse(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
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
        bulkhead: Option<&mut BulkheadPolicy>,
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
        let Some(q) = bulkhead else { return };
        q.max_concurrent = self.max_concurrent.unwrap_or(q.max_concurrent);
        q.min = self.max_concurrent_min.unwrap_or(q.min);
        q.max = self.max_concurrent_max.unwrap_or(q.max);
        q.max_queue = self.max_queue.unwrap_or(q.max_queue);
        q.queue_timeout = self.queue_timeout.unwrap_or(q.queue_timeout);
    }
}

impl RouteOverride {
    /// Parses `HOST[:PORT],key=value,...`; errors name the offending key.
    pub fn parse(s: &str) -> Result<Self, RouteError> {
        let mut parts = s.split(',');
        let target = parts.next().unwrap_or_default().trim();
        if target.is_empty() {
            return Err(RouteError::NoTarget);
        }
        let (host, port) = match target.strip_prefix('*') {
            Some("") => (None, None),
            Some(port) => match port.strip_prefix(':') {
                Some(p) => (None, Some(parse_port(p)?)),
                None => return Err(RouteError::NotHostPort(target.into())),
            },
            None => {
                let (host, port) = split_host_port(target)?;
                (Some(host), port)
            }
        };
        if host.as_deref() == Some("") {
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
            route.set_key(key, value)?;
        }
        route.finish()?;
        Ok(route)
    }

    /// Sets one `key=value`, as the flag or the policy file gives it; errors name the key.
    pub fn set_key(&mut self, key: &str, value: &str) -> Result<(), RouteError> {
        let Some(def) = keys::policy_key(key).or_else(|| keys::match_key(key)) else {
            return Err(RouteError::Key {
                key: key.into(),
                error: KeyError::Unknown,
            });
        };
        // A header condition may be given more than once; nothing else may.
        if def.name != "header" && self.set_keys.contains(&def.name) {
            return Err(RouteError::Twice(key.into()));
        }
        self.set(def.name, value).map_err(|error| RouteError::Key {
            key: key.into(),
            error,
        })?;
        self.set_keys.push(def.name);
        Ok(())
    }

    /// Checks what only the whole route can tell: that each key it sets means
    /// something on its direction's listener.
    pub fn finish(&self) -> Result<(), RouteError> {
        let wrong = match self.direction {
            RouteDirection::Outbound => Applies::Inbound,
            RouteDirection::Inbound => Applies::Outbound,
        };
        for name in &self.set_keys {
            if keys::policy_key(name).is_some_and(|k| k.applies == wrong) {
                return Err(RouteError::WrongDirection {
                    key: keys::policy_key(name).map_or("", |k| k.name),
                    direction: self.direction,
                });
            }
        }
        self.traffic.check()
    }

    /// Whether this route sets `key` itself.
    pub fn sets(&self, key: &str) -> bool {
        self.set_keys.contains(&key)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), KeyError> {
        let mode = |v: &str| Mode::parse(v).map_err(KeyError::from);
        let path = |v: &str| {
            if v.starts_with('/') && !v.contains(char::is_whitespace) {
                Ok(v.to_string())
            } else {
                Err(KeyError::NotAPath(v.into()))
            }
        };
        match key {
            "name" => self.name = Some(value.to_string()),
            "direction" => {
                self.direction = match value.to_ascii_lowercase().as_str() {
                    "outbound" => RouteDirection::Outbound,
                    "inbound" => RouteDirection::Inbound,
                    _ => return Err(KeyError::NotADirection(value.into())),
                }
            }
            "host" => {
                self.host = match value {
                    "*" => None,
                    host => Some(host.to_ascii_lowercase()),
                }
            }
            "port" => {
                self.port = Some(parse_port(value).map_err(|_| KeyError::NotAPort(value.into()))?)
            }
            "path" => self.path = Some(path(value)?),
            "path-prefix" => self.path_prefix = Some(path(value)?),
            "method" => {
                let m = value.to_ascii_uppercase();
                if Method::from_bytes(m.as_bytes()).is_err() || m.is_empty() {
                    return Err(KeyError::NotAMethod(value.into()));
                }
                self.method = Some(m);
            }
            "header" => self.headers.push(HeaderMatch::parse(value)?),
            "breaker-mode" => self.breaker_mode = Some(mode(value)?),
            "bulkhead-mode" => self.bulkhead_mode = Some(mode(value)?),
            "retry-budget-mode" => self.retry_budget_mode = Some(mode(value)?),
            "inbound-max-concurrent" => match value.parse::<u64>() {
                Ok(0) => return Err(KeyError::AtLeastOne),
                Ok(n) => self.inbound_max_concurrent = Some(n),
                Err(_) => return Err(KeyError::NotACount(value.into())),
            },
            "inbound-max-queue" => {
                self.inbound_max_queue = Some(
                    value
                        .parse()
                        .map_err(|_| KeyError::NotACount(value.into()))?,
                )
            }
            "inbound-queue-timeout" => {
                self.inbound_queue_timeout = Some(parse_positive_duration(value)?)
            }
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
            "hedge-after" => self.hedge_after = Some(HedgeAfter::parse(value)?),
            "hedge-budget" => self.hedge_budget = Some(hedge::parse_budget(value)?),
            other => {
                if !self.limits.set(other, value)?
                    && !self.rate.set(other, value)?
                    && !self.traffic.set(other, value)?
                {
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

    /// The modes this route sets, over `modes`.
    pub fn apply_modes(&self, modes: &mut Modes) {
        modes.breaker = self.breaker_mode.unwrap_or(modes.breaker);
        modes.bulkhead = self.bulkhead_mode.unwrap_or(modes.bulkhead);
        modes.retry_budget = self.retry_budget_mode.unwrap_or(modes.retry_budget);
        modes.rate_limit = self.rate.rate_limit_mode.unwrap_or(modes.rate_limit);
    }

    /// Whether this route applies to a request: every condition it names holds
    /// (host case-insensitive; a path prefix is a plain string prefix, as Envoy's
    /// `prefix`: `/slow` also matches `/slowest`).
    pub fn matches(&self, r: &RequestFacts<'_>) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| h.eq_ignore_ascii_case(r.host))
            && self.port.is_none_or(|p| p == r.port)
            && self.path.as_deref().is_none_or(|p| p == r.path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| r.path.starts_with(p))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m == r.method.as_str())
            && self.headers.iter().all(|h| h.matches(r.headers))
    }

    /// Whether every request this route matches is matched by `self` first:
    /// `later` can never match behind it.
    pub fn shadows(&self, later: &RouteOverride) -> bool {
        let within =
            |mine: &Option<String>, theirs: &Option<String>| mine.is_none() || mine == theirs;
        let path_covered = match (&self.path, &self.path_prefix) {
            (None, None) => true,
            (Some(exact), _) => later.path.as_ref() == Some(exact),
            (None, Some(prefix)) => {
                later
                    .path
                    .as_deref()
                    .is_some_and(|p| p.starts_with(prefix.as_str()))
                    || later
                        .path_prefix
                        .as_deref()
                        .is_some_and(|p| p.starts_with(prefix.as_str()))
            }
        };
        self.direction == later.direction
            && within(&self.host, &later.host)
            && self.port.is_none_or(|p| later.port == Some(p))
            && within(&self.method, &later.method)
            && path_covered
            && self.headers.iter().all(|h| later.headers.contains(h))
    }

    /// The `route` label when no `name` is given: what the route matches, as
    /// written (`payments:8080`, `*/upload`, `reports/slow GET`).
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let mut label = self.host.clone().unwrap_or_else(|| "*".into());
        if let Some(p) = self.port {
            label = if label.contains(':') {
                format!("[{label}]:{p}")
            } else {
                format!("{label}:{p}")
            };
        }
        if let Some(p) = self.path.as_ref().or(self.path_prefix.as_ref()) {
            label.push_str(p);
        }
        if let Some(m) = &self.method {
            label.push(' ');
            label.push_str(m);
        }
        label
    }
}

pub(super) fn split_host_port(target: &str) -> Result<(String, Option<u16>), RouteError> {
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
        assert_eq!(r.host.as_deref(), Some("payments"));
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

    fn facts<'a>(
        host: &'a str,
        port: u16,
        method: &'a Method,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            host,
            port,
            method,
            path,
            headers,
        }
    }

    #[test]
    fn matches_host_port_path_method_and_headers() {
        let (get, post, none) = (Method::GET, Method::POST, HeaderMap::new());
        let any_port = RouteOverride::parse("Payments").unwrap();
        let one_port = RouteOverride::parse("payments:8080").unwrap();
        assert!(any_port.matches(&facts("payments", 80, &get, "/", &none)));
        assert!(any_port.matches(&facts("payments", 8080, &get, "/", &none)));
        assert!(!one_port.matches(&facts("payments", 80, &get, "/", &none)));
        let v6 = RouteOverride::parse("[::1]:9000").unwrap();
        assert!(v6.matches(&facts("::1", 9000, &get, "/", &none)));
        // As a request names it: `Host: [::1]:9000` gives the bracketed form.
        let req = http::Request::get("/").body(()).unwrap();
        assert!(v6.matches(&RequestFacts::of(&req, "[::1]", 9000)));
        let slow =
            RouteOverride::parse("reports,path-prefix=/slow,method=get,timeout=30s").unwrap();
        assert!(slow.matches(&facts("reports", 80, &get, "/slow/q", &none)));
        assert!(!slow.matches(&facts("reports", 80, &post, "/slow", &none)));
        assert!(!slow.matches(&facts("reports", 80, &get, "/fast", &none)));
        let exact = RouteOverride::parse("*,path=/healthz").unwrap();
        assert!(exact.matches(&facts("any", 1, &get, "/healthz", &none)));
        assert!(!exact.matches(&facts("any", 1, &get, "/healthz/x", &none)));
        let canary = RouteOverride::parse("*,header=x-canary:1,header=x-debug").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-canary", "1".parse().unwrap());
        assert!(!canary.matches(&facts("a", 1, &get, "/", &h)));
        h.insert("x-debug", "".parse().unwrap());
        assert!(canary.matches(&facts("a", 1, &get, "/", &h)));
        h.insert("x-canary", "2".parse().unwrap());
        assert!(!canary.matches(&facts("a", 1, &get, "/", &h)));
    }

    #[test]
    fn keys_that_do_not_apply_to_the_direction_are_refused() {
        let e = RouteOverride::parse("*,direction=inbound,retries=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retries") && e.contains("inbound"), "{e}");
        let e = RouteOverride::parse("api,inbound-max-concurrent=2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inbound-max-concurrent"), "{e}");
        assert!(RouteOverride::parse("*,direction=inbound,inbound-max-concurrent=2").is_ok());
        let e = RouteOverride::parse("api,timeout=1s,timeout=2s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn a_broader_earlier_route_shadows() {
        let p = |s| RouteOverride::parse(s).unwrap();
        assert!(p("api").shadows(&p("api,path-prefix=/x")));
        assert!(p("*").shadows(&p("api:80")));
        assert!(p("api,path-prefix=/x").shadows(&p("api,path=/x/y")));
        assert!(!p("api,path-prefix=/x").shadows(&p("api")));
        assert!(!p("api,method=GET").shadows(&p("api")));
        assert!(!p("api").shadows(&p("*,direction=inbound")));
        assert!(!p("api,header=x-a").shadows(&p("api")));
    }

    #[test]
    fn every_policy_and_match_key_is_a_route_key() {
        for k in keys::POLICY_KEYS.iter().chain(keys::MATCH_KEYS) {
            let direction = match k.applies {
                Applies::Inbound => ",direction=inbound",
                _ => "",
            };
            let with = keys::companion(k.name).map_or(String::new(), |(k, v)| format!(",{k}={v}"));
            let spec = format!("*{direction},{}={}{with}", k.name, k.example);
            let spec = if k.name == "direction" {
                format!("*,direction={}", k.example)
            } else {
                spec
            };
            RouteOverride::parse(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            if let Some(default) = k.default {
                let spec = format!(
                    "*{direction},{}={}{with}",
                    k.name,
                    default.replace(',', "+")
                );
                RouteOverride::parse(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            }
        }
        let e = RouteOverride::parse("api,colour=blue")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("path-prefix") && e.contains("breaker-mode"),
            "{e}"
        );
    }
}
