//! Retry rules: which outcomes deserve another attempt (`--retry-on`), which
//! requests are safe to send twice, and how long to wait between attempts.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, header};
use serde::Serialize;

use crate::error::{ProxyError, REASON_HEADER, Reason};

/// The conditions of `--retry-on`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    /// Any 5xx.
    pub server_error: bool,
    pub too_many_requests: bool,
    /// gRPC `grpc-status: 14` (UNAVAILABLE).
    pub unavailable: bool,
    pub statuses: Vec<u16>,
}

/// A `--retry-on` word that names no condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown condition '{0}' (known: connect-failure, reset, gateway-error, 5xx, 429, \
     unavailable, or a status code)"
)]
pub struct RetryOnError(pub String);

impl RetryOn {
    /// Parses a comma list: `connect-failure,reset,gateway-error,5xx,429,unavailable,503`.
    pub fn parse(s: &str) -> Result<Self, RetryOnError> {
        let mut on = RetryOn::default();
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "gateway-error" => on.gateway_error = true,
                "5xx" => on.server_error = true,
                "429" => on.too_many_requests = true,
                "unavailable" => on.unavailable = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.statuses.push(c),
                    _ => return Err(RetryOnError(word.into())),
                },
            }
        }
        Ok(on)
    }

    /// The condition a response meets, as a metric reason, if any.
    fn matches_response(
        &self,
        status: StatusCode,
        grpc_status: Option<u32>,
    ) -> Option<&'static str> {
        let code = status.as_u16();
        if self.unavailable && grpc_status == Some(GRPC_UNAVAILABLE) {
            return Some("unavailable");
        }
        if self.gateway_error && matches!(code, 502..=504) {
            return Some("gateway-error");
        }
        if self.server_error && status.is_server_error() {
            return Some("5xx");
        }
        if self.too_many_requests && code == 429 {
            return Some("429");
        }
        self.statuses.contains(&code).then_some("status")
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = [
            (self.connect_failure, "connect-failure"),
            (self.reset, "reset"),
            (self.gateway_error, "gateway-error"),
            (self.server_error, "5xx"),
            (self.too_many_requests, "429"),
            (self.unavailable, "unavailable"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| w.to_string())
        .collect();
        words.extend(self.statuses.iter().map(u16::to_string));
        f.write_str(&words.join(","))
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const GRPC_UNAVAILABLE: u32 = 14;

/// Everything that decides retries for one destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    pub retry_on: RetryOn,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub backoff: Duration,
    #[serde(serialize_with = "crate::units::serialize_duration")]
    pub backoff_max: Duration,
    #[serde(serialize_with = "crate::units::serialize_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Retries allowed as a percentage of requests, per destination.
    pub budget_percent: f32,
    /// Retries per second always allowed, per destination.
    pub budget_min_per_sec: u32,
    /// Largest request body kept for replay.
    pub body_limit: usize,
}

/// What one attempt came to, as far as retrying is concerned.
pub enum Outcome<'a> {
    /// breakwater could not get a response.
    Failed(&'a ProxyError),
    /// The upstream answered with this status (and gRPC status, if any).
    Answered {
        status: StatusCode,
        grpc_status: Option<u32>,
        /// The answer was an upstream breakwater's refusal: the app behind it
        /// never saw the request ([`refused_before_the_app`]).
        refused: bool,
    },
}

/// Why an attempt is worth retrying; also the `reason` label of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryReason {
    pub label: &'static str,
    /// Whether the request never reached the upstream, so repeating it is safe
    /// whatever its method.
    pub unsent: bool,
}

impl RetryPolicy {
    /// The condition this outcome meets, or `None` if it is final.
    pub fn reason(&self, outcome: &Outcome<'_>) -> Option<RetryReason> {
        let (label, unsent) = match outcome {
            Outcome::Failed(ProxyError::ConnectFailure { .. }) if self.retry_on.connect_failure => {
                ("connect-failure", true)
            }
            Outcome::Failed(ProxyError::Reset { .. }) if self.retry_on.reset => ("reset", false),
            // A per-try timeout always counts: that is what the flag is for.
            Outcome::Failed(ProxyError::Timeout { .. }) if self.per_try_timeout.is_some() => {
                ("per-try-timeout", false)
            }
            Outcome::Failed(_) => return None,
            Outcome::Answered {
                status,
                grpc_status,
                refused,
            } => {
                let label = self.retry_on.matches_response(*status, *grpc_status)?;
                (label, *refused && label == "unavailable")
            }
        };
        Some(RetryReason { label, unsent })
    }

    /// Whether a condition can retry a request the upstream has seen: a response,
    /// a reset or a per-try timeout — everything but a connect failure. Only
    /// then must an attempt keep a copy of the request before it leaves.
    pub fn retries_sent(&self) -> bool {
        let on = &self.retry_on;
        on.reset
            || on.gateway_error
            || on.server_error
            || on.too_many_requests
            || on.unavailable
            || !on.statuses.is_empty()
            || self.per_try_timeout.is_some()
    }

    /// The wait before retry number `retry` (1-based): exponential from
    /// `backoff`, capped at `backoff_max`, with full jitter (`jitter` in 0..=1, a
    /// uniform draw; tests pass 1.0 for the cap itself).
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let cap = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        cap.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Methods that mean the same when repeated (RFC 9110 §9.2.2), and requests the
/// client marked as safe to repeat with `Idempotency-Key`.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// The header a client sets to mark a request as safe to repeat.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Retry-After` on a 429 or 503, as a wait: delta-seconds or an HTTP date. A
/// value that does not parse is ignored.
pub fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Whether a gRPC answer is an upstream breakwater's refusal made before it
/// handed the request on: trailers-only `UNAVAILABLE` (the status in the
/// head, no message was streamed) with an `x-breakwater-reason` that never
/// forwards ([`Reason::never_forwarded`]: circuit-open, bulkhead-full,
/// queue-timeout, app-not-ready, connect-failure, no-route, fault-injected;
/// rate-limited never forwards either, but is `RESOURCE_EXHAUSTED`). Such a call is safe to send again without an
/// `Idempotency-Key`: the app never saw it. An `UNAVAILABLE` from the app
/// itself, or after any response bytes, is not (the app may have acted).
pub fn refused_before_the_app(headers: &HeaderMap) -> bool {
    grpc_status(headers) == Some(GRPC_UNAVAILABLE)
        && headers
            .get(REASON_HEADER)
            .and_then(|v| Reason::from_token(v.as_bytes()))
            .is_some_and(Reason::never_forwarded)
}

/// Where gRPC puts its status: trailers, or the headers of a trailers-only response.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The gRPC status in a response's headers (a trailers-only response).
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy {
            retries: 2,
            retry_on: RetryOn::parse(retry_on).unwrap_or_default(),
            backoff: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            per_try_timeout: None,
            budget_percent: 20.0,
            budget_min_per_sec: 10,
            body_limit: 64 * 1024,
        }
    }

    fn answered(code: u16) -> Outcome<'static> {
        Outcome::Answered {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            grpc_status: None,
            refused: false,
        }
    }

    /// `retries_sent` must say yes to every condition that `reason` can meet
    /// with a request the upstream has seen, or such retries lose their copy.
    #[test]
    fn retries_sent_covers_every_condition_but_connect_failure() {
        let reset = ProxyError::Reset {
            dest: "d".into(),
            cause: "c".into(),
        };
        let timeout = ProxyError::Timeout {
            dest: "d".into(),
            after: "1s".into(),
        };
        for on in [
            "connect-failure",
            "reset",
            "gateway-error",
            "5xx",
            "429",
            "unavailable",
            "418",
        ] {
            for per_try in [None, Some(Duration::from_secs(1))] {
                let mut p = policy(on);
                p.per_try_timeout = per_try;
                let outcomes = [
                    Outcome::Failed(&reset),
                    Outcome::Failed(&timeout),
                    answered(502),
                    answered(500),
                    answered(429),
                    answered(418),
                    Outcome::Answered {
                        status: StatusCode::OK,
                        grpc_status: Some(GRPC_UNAVAILABLE),
                        refused: false,
                    },
                    Outcome::Answered {
                        status: StatusCode::OK,
                        grpc_status: Some(GRPC_UNAVAILABLE),
                        refused: true,
                    },
                ];
                let sent_retry = outcomes
                    .iter()
                    .any(|o| p.reason(o).is_some_and(|r| !r.unsent));
                assert_eq!(p.retries_sent(), sent_retry, "{on}, per-try {per_try:?}");
            }
        }
    }

    #[test]
    fn default_conditions_retry_gateway_errors_but_not_500() {
        let p = policy("connect-failure,reset,gateway-error");
        for code in [502, 503, 504] {
            assert_eq!(
                p.reason(&answered(code)).map(|r| r.label),
                Some("gateway-error")
            );
        }
        assert_eq!(p.reason(&answered(500)), None);
        assert_eq!(p.reason(&answered(429)), None);
        assert_eq!(p.reason(&answered(200)), None);
        let connect = ProxyError::ConnectFailure {
            dest: "x:1".into(),
            cause: "refused".into(),
        };
        let reason = p.reason(&Outcome::Failed(&connect));
        assert_eq!(
            reason,
            Some(RetryReason {
                label: "connect-failure",
                unsent: true
            })
        );
    }

    #[test]
    fn explicit_conditions_and_codes() {
        let p = policy("5xx,429,418,unavailable");
        assert_eq!(p.reason(&answered(500)).map(|r| r.label), Some("5xx"));
        assert_eq!(p.reason(&answered(429)).map(|r| r.label), Some("429"));
        assert_eq!(p.reason(&answered(418)).map(|r| r.label), Some("status"));
        let grpc = Outcome::Answered {
            status: StatusCode::OK,
            grpc_status: Some(14),
            refused: false,
        };
        assert_eq!(p.reason(&grpc).map(|r| r.label), Some("unavailable"));
        assert!(p.reason(&grpc).is_some_and(|r| !r.unsent));
        assert!(RetryOn::parse("sometimes").is_err());
        assert!(RetryOn::parse("999").is_err());
        assert_eq!(
            RetryOn::parse("reset,5xx,503").map(|r| r.to_string()).ok(),
            Some("reset,5xx,503".to_string())
        );
    }

    #[test]
    fn only_a_breakwater_refusal_of_unavailable_never_reached_the_app() {
        let head = |status: &'static str, reason: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS, http::HeaderValue::from_static(status));
            if let Some(r) = reason {
                h.insert(REASON_HEADER, http::HeaderValue::from_static(r));
            }
            h
        };
        for r in [
            "circuit-open",
            "bulkhead-full",
            "connect-failure",
            "app-not-ready",
        ] {
            assert!(refused_before_the_app(&head("14", Some(r))), "{r}");
        }
        assert!(!refused_before_the_app(&head("14", None)), "the app's own");
        assert!(
            !refused_before_the_app(&head("14", Some("reset"))),
            "it was sent"
        );
        assert!(
            !refused_before_the_app(&head("14", Some("timeout"))),
            "it was sent"
        );
        assert!(
            !refused_before_the_app(&head("8", Some("rate-limited"))),
            "not UNAVAILABLE"
        );
        assert!(!refused_before_the_app(&head("14", Some("made-up"))));
        let p = policy("unavailable");
        let refused = Outcome::Answered {
            status: StatusCode::OK,
            grpc_status: Some(14),
            refused: true,
        };
        assert!(p.reason(&refused).is_some_and(|r| r.unsent));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        let p = policy("");
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(5, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(60, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(50));
    }

    #[test]
    fn only_idempotent_or_keyed_requests_are_repeatable() {
        let none = HeaderMap::new();
        assert!(is_idempotent(&Method::GET, &none));
        assert!(is_idempotent(&Method::PUT, &none));
        assert!(!is_idempotent(&Method::POST, &none));
        assert!(!is_idempotent(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", http::HeaderValue::from_static("abc"));
        assert!(is_idempotent(&Method::POST, &keyed));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates_and_ignores_junk() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, http::HeaderValue::from_static("3"));
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after(StatusCode::INTERNAL_SERVER_ERROR, &h), None);
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_str(&later).unwrap_or(http::HeaderValue::from_static("0")),
        );
        let wait = retry_after(StatusCode::TOO_MANY_REQUESTS, &h).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        h.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("soon-ish"),
        );
        assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &h), None);
    }
}
