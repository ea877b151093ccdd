//! `ProxyError`, every way breakwater can fail a request, and `Reason`, the one
//! list of `x-breakwater-reason` tokens with their status and how each is
//! counted. The vocabulary only: [`crate::rescue`] turns an error into the
//! response the client sees, and `metrics` takes its label sets from [`Reason`].
//! It imports nothing of breakwater's.

use http::StatusCode;

/// The header that marks a response breakwater made itself, and says why.
pub const REASON_HEADER: &str = "x-breakwater-reason";

/// Every `x-breakwater-reason` token breakwater answers with (README, "When
/// breakwater answers itself"; a test checks that table against [`Reason::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ConnectFailure,
    Reset,
    Protocol,
    Timeout,
    NoRoute,
    AppNotReady,
    CircuitOpen,
    BulkheadFull,
    QueueTimeout,
    BadRequest,
    UriTooLong,
    MalformedBody,
    ClientGone,
    ClientTimeout,
    FaultInjected,
    RateLimited,
}

/// Whose doing a failure was, which decides the metric family it is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// The upstream's (502, 504): `breakwater_upstream_failures_total`; these
    /// feed breakers and retries.
    UpstreamFailure,
    /// breakwater refused the request itself (503, and 429 for a rate limit):
    /// `breakwater_rejected_total`.
    Rejection,
    /// The client's (400, 408, 414): `breakwater_client_errors_total`, never
    /// against an upstream.
    ClientError,
}

impl Reason {
    /// Every reason, in the README's order of statuses.
    pub const ALL: [Reason; 16] = [
        Reason::ConnectFailure,
        Reason::Reset,
        Reason::Protocol,
        Reason::Timeout,
        Reason::NoRoute,
        Reason::AppNotReady,
        Reason::CircuitOpen,
        Reason::BulkheadFull,
        Reason::QueueTimeout,
        Reason::BadRequest,
        Reason::UriTooLong,
        Reason::MalformedBody,
        Reason::ClientGone,
        Reason::ClientTimeout,
        Reason::FaultInjected,
        Reason::RateLimited,
    ];

    /// The `x-breakwater-reason` value, a stable token users alert and grep on.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect-failure",
            Reason::Reset => "reset",
            Reason::Protocol => "protocol",
            Reason::Timeout => "timeout",
            Reason::NoRoute => "no-route",
            Reason::AppNotReady => "app-not-ready",
            Reason::CircuitOpen => "circuit-open",
            Reason::BulkheadFull => "bulkhead-full",
            Reason::QueueTimeout => "queue-timeout",
            Reason::BadRequest => "bad-request",
            Reason::UriTooLong => "uri-too-long",
            Reason::MalformedBody => "malformed-body",
            Reason::ClientGone => "client-gone",
            Reason::ClientTimeout => "client-timeout",
            Reason::FaultInjected => "fault-injected",
            Reason::RateLimited => "rate-limited",
        }
    }

    /// The reason a token names, if it is one of breakwater's.
    pub fn from_token(token: &[u8]) -> Option<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str().as_bytes() == token)
    }

    /// Whether a breakwater that answered for this reason never handed the
    /// request on: it refused it, or could not connect. An upstream
    /// breakwater's answer with such a reason means the app behind it never
    /// saw the request, so it is safe to send again whatever the method.
    pub const fn never_forwarded(self) -> bool {
        matches!(
            self,
            Reason::ConnectFailure
                | Reason::NoRoute
                | Reason::AppNotReady
                | Reason::CircuitOpen
                | Reason::BulkheadFull
                | Reason::QueueTimeout
                | Reason::FaultInjected
                | Reason::RateLimited
        )
    }

    /// The status of breakwater's answer (a gRPC client's is HTTP 200 with
    /// [`grpc_status`](Self::grpc_status), and an injected fault's is the
    /// route's: see [`ProxyError::status`]).
    pub const fn status(self) -> StatusCode {
        match self {
            Reason::ConnectFailure | Reason::Reset | Reason::Protocol => StatusCode::BAD_GATEWAY,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::NoRoute
            | Reason::AppNotReady
            | Reason::CircuitOpen
            | Reason::BulkheadFull
            | Reason::QueueTimeout
            | Reason::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            Reason::BadRequest | Reason::MalformedBody | Reason::ClientGone => {
                StatusCode::BAD_REQUEST
            }
            Reason::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::UriTooLong => StatusCode::URI_TOO_LONG,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `grpc-status` of breakwater's answer to a gRPC client: the code its
    /// own transport would report for the same trouble, so client code that
    /// handles `UNAVAILABLE` or `DEADLINE_EXCEEDED` already handles it. A
    /// fault's code follows its HTTP status ([`ProxyError::grpc_status`]).
    pub const fn grpc_status(self) -> u8 {
        match self {
            Reason::ConnectFailure
            | Reason::Reset
            | Reason::Protocol
            | Reason::NoRoute
            | Reason::AppNotReady
            | Reason::CircuitOpen
            | Reason::BulkheadFull
            | Reason::QueueTimeout
            | Reason::FaultInjected => grpc::UNAVAILABLE,
            Reason::Timeout | Reason::ClientTimeout => grpc::DEADLINE_EXCEEDED,
            Reason::RateLimited => grpc::RESOURCE_EXHAUSTED,
            // What gRPC makes of an HTTP 400: the request broke the protocol.
            Reason::BadRequest | Reason::UriTooLong | Reason::MalformedBody => grpc::INTERNAL,
            Reason::ClientGone => grpc::CANCELLED,
        }
    }

    /// Whose doing it was: the metric family it is counted in.
    pub const fn counted_as(self) -> Counted {
        match self {
            Reason::ConnectFailure | Reason::Reset | Reason::Protocol | Reason::Timeout => {
                Counted::UpstreamFailure
            }
            Reason::NoRoute
            | Reason::AppNotReady
            | Reason::CircuitOpen
            | Reason::BulkheadFull
            | Reason::QueueTimeout
            | Reason::FaultInjected
            | Reason::RateLimited => Counted::Rejection,
            Reason::BadRequest
            | Reason::UriTooLong
            | Reason::MalformedBody
            | Reason::ClientGone
            | Reason::ClientTimeout => Counted::ClientError,
        }
    }

    /// Whether it can happen to a request into the pod: no route is looked up
    /// and no breaker stands in front of the app.
    pub const fn inbound(self) -> bool {
        !matches!(self, Reason::NoRoute | Reason::CircuitOpen)
    }

    /// Whether it can happen to a request out of the pod: only the app has
    /// health probes.
    pub const fn outbound(self) -> bool {
        !matches!(self, Reason::AppNotReady)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream could not be reached: DNS, refused, unreachable, connect timeout.
    #[error("could not connect to {dest}: {cause}")]
    ConnectFailure { dest: String, cause: String },
    /// The upstream broke the exchange before a complete response head.
    #[error("{dest} closed or reset the connection before responding: {cause}")]
    Reset { dest: String, cause: String },
    /// The endpoint does not speak the HTTP version the request needs: gRPC
    /// toward an HTTP/1.1-only endpoint, or a route pinned to `protocol=h2`.
    #[error("{dest}: the endpoint {endpoint} does not speak HTTP/2{}", if *grpc { ", which gRPC needs" } else { " (protocol=h2)" })]
    Protocol {
        dest: String,
        endpoint: std::net::SocketAddr,
        /// The request was gRPC (the message says why HTTP/2 was needed).
        grpc: bool,
    },
    /// The client's request body broke the framing rules (a bad chunk size,
    /// chunk data without its CRLF): the client's fault, not the upstream's.
    #[error("the request body was malformed: {0}")]
    MalformedBody(String),
    /// The client closed or reset its connection before its body ended.
    #[error("the client went away before its request body ended: {0}")]
    ClientGone(String),
    /// The deadline passed while breakwater waited for the client's body.
    #[error("the request body did not arrive within {0}")]
    ClientTimeout(String),
    /// The request's deadline passed before the response headers arrived.
    #[error("no response from {dest} within {after}")]
    Timeout { dest: String, after: String },
    /// The app fails its health probes: inbound requests are refused at once.
    #[error("the app at {app} is failing its health probes")]
    AppNotReady {
        app: std::net::SocketAddr,
        /// The probe interval: the soonest the app can be ready again.
        retry_after: std::time::Duration,
    },
    /// Every endpoint of the destination has its circuit open.
    #[error("{dest}: circuit open, next probe in {}s", retry_after_secs(*.retry_after))]
    CircuitOpen {
        dest: String,
        retry_after: std::time::Duration,
    },
    /// The destination's bulkhead is full and its queue too (or there is none).
    #[error("{0}: too many requests in flight (--max-concurrent, --max-queue)")]
    BulkheadFull(String),
    /// The request waited in the bulkhead's queue for `--queue-timeout`.
    #[error("{0}: no slot within --queue-timeout")]
    QueueTimeout(String),
    /// breakwater does not know where the request should go.
    #[error("no route: {0}")]
    NoRoute(&'static str),
    /// The request cannot be proxied as sent.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request target is longer than `--max-uri-bytes`.
    #[error("request target longer than {0} bytes (--max-uri-bytes)")]
    UriTooLong(usize),
    /// The destination's or route's `rate-limit` has no token for it.
    #[error("{scope}: over the rate limit of {limit} (rate-limit), next token in {}ms", retry_after.as_millis().max(1))]
    RateLimited {
        scope: String,
        limit: String,
        retry_after: std::time::Duration,
    },
    /// A route's `fault-abort` answered the request, on purpose.
    #[error("fault injected by route {route} (fault-abort)")]
    FaultInjected { status: StatusCode, route: String },
}

impl ProxyError {
    /// The HTTP status of the answer: the reason's, or an injected fault's own.
    /// (A gRPC client is answered HTTP 200 with [`grpc_status`](Self::grpc_status).)
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::FaultInjected { status, .. } => *status,
            other => other.kind().status(),
        }
    }

    /// The `grpc-status` of the answer to a gRPC client: the reason's, and for
    /// an injected fault, what gRPC makes of its HTTP status
    /// (grpc/doc/http-grpc-status-mapping.md).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::FaultInjected { status, .. } => match status.as_u16() {
                400 => grpc::INTERNAL,
                401 => grpc::UNAUTHENTICATED,
                403 => grpc::PERMISSION_DENIED,
                404 => grpc::UNIMPLEMENTED,
                429 | 502..=504 => grpc::UNAVAILABLE,
                _ => grpc::UNKNOWN,
            },
            other => other.kind().grpc_status(),
        }
    }

    /// The client's doing, not the upstream's (every 4xx of breakwater's own
    /// but a rate limit's 429):
    /// counted in `breakwater_client_errors_total`, never against an upstream.
    pub fn is_client_fault(&self) -> bool {
        self.kind().counted_as() == Counted::ClientError
    }

    /// The reason, for `x-breakwater-reason` and the metrics.
    pub fn kind(&self) -> Reason {
        match self {
            ProxyError::ConnectFailure { .. } => Reason::ConnectFailure,
            ProxyError::Reset { .. } => Reason::Reset,
            ProxyError::Protocol { .. } => Reason::Protocol,
            ProxyError::Timeout { .. } => Reason::Timeout,
            ProxyError::NoRoute(_) => Reason::NoRoute,
            ProxyError::AppNotReady { .. } => Reason::AppNotReady,
            ProxyError::CircuitOpen { .. } => Reason::CircuitOpen,
            ProxyError::BulkheadFull(_) => Reason::BulkheadFull,
            ProxyError::QueueTimeout(_) => Reason::QueueTimeout,
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::MalformedBody(_) => Reason::MalformedBody,
            ProxyError::ClientGone(_) => Reason::ClientGone,
            ProxyError::ClientTimeout(_) => Reason::ClientTimeout,
            ProxyError::UriTooLong(_) => Reason::UriTooLong,
            ProxyError::FaultInjected { .. } => Reason::FaultInjected,
            ProxyError::RateLimited { .. } => Reason::RateLimited,
        }
    }

    /// The `Retry-After` a refusal of breakwater's own carries, where a useful
    /// value exists: the next probe of an open circuit, the app's probe
    /// interval, and for a full bulkhead or its queue a short hint (a slot
    /// frees within a request's time; a second is the least the header says).
    /// A request with no route or a failure of the upstream has none.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ProxyError::CircuitOpen { retry_after, .. }
            | ProxyError::AppNotReady { retry_after, .. }
            | ProxyError::RateLimited { retry_after, .. } => Some(*retry_after),
            ProxyError::BulkheadFull(_) | ProxyError::QueueTimeout(_) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// The `x-breakwater-reason` value: [`Reason::as_str`] of [`kind`](Self::kind).
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// The gRPC status codes breakwater answers with (grpc/doc/statuscodes.md).
pub mod grpc {
    pub const CANCELLED: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// The error and its causes, joined: "connection closed before message completed".
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// Whole seconds, rounded up, at least one: `Retry-After` has no fractions.
pub(crate) fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let timeout = ProxyError::Timeout {
            dest: "x:80".into(),
            after: "2s".into(),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.reason(), "timeout");
        assert!(ProxyError::MalformedBody(String::new()).is_client_fault());
        assert_eq!(
            ProxyError::NoRoute("x").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(retry_after_secs(std::time::Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(std::time::Duration::ZERO), 1);
    }

    #[test]
    fn every_reason_is_counted_by_its_status() {
        let mut tokens: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), Reason::ALL.len(), "tokens are distinct");
        for r in Reason::ALL {
            let status = r.status();
            let counted = r.counted_as();
            assert_eq!(
                counted == Counted::Rejection,
                status == StatusCode::SERVICE_UNAVAILABLE || r == Reason::RateLimited,
                "{r}"
            );
            assert_eq!(
                counted == Counted::ClientError,
                status.is_client_error() && r != Reason::RateLimited,
                "{r}"
            );
            assert_eq!(Reason::from_token(r.as_str().as_bytes()), Some(r));
            assert!(r.inbound() || r.outbound(), "{r} happens somewhere");
        }
    }
}
