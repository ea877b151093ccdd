//! `ProxyError`, every way breakwater can fail a request, with its status and
//! `x-breakwater-reason`. The vocabulary only: [`crate::rescue`] turns one into
//! the response the client sees. A leaf: it imports nothing of breakwater's.

use http::StatusCode;

/// The header that marks a response breakwater made itself, and says why.
pub const REASON_HEADER: &str = "x-breakwater-reason";

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
        /// Answered the gRPC way: HTTP 200, `grpc-status` 14 and the reason.
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
    #[error("the app at {0} is failing its health probes")]
    AppNotReady(std::net::SocketAddr),
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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Protocol { grpc: true, .. } => StatusCode::OK,
            ProxyError::ConnectFailure { .. }
            | ProxyError::Reset { .. }
            | ProxyError::Protocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoRoute(_)
            | ProxyError::AppNotReady(_)
            | ProxyError::CircuitOpen { .. }
            | ProxyError::BulkheadFull(_)
            | ProxyError::QueueTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_)
            | ProxyError::MalformedBody(_)
            | ProxyError::ClientGone(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
        }
    }

    /// The client's doing, not the upstream's (every 4xx of breakwater's own):
    /// counted in `breakwater_client_errors_total`, never against an upstream.
    pub fn is_client_fault(&self) -> bool {
        self.status().is_client_error()
    }

    /// The `x-breakwater-reason` value, a stable token users alert and grep on.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::ConnectFailure { .. } => "connect-failure",
            ProxyError::Reset { .. } => "reset",
            ProxyError::Protocol { .. } => "protocol",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::AppNotReady(_) => "app-not-ready",
            ProxyError::CircuitOpen { .. } => "circuit-open",
            ProxyError::BulkheadFull(_) => "bulkhead-full",
            ProxyError::QueueTimeout(_) => "queue-timeout",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::MalformedBody(_) => "malformed-body",
            ProxyError::ClientGone(_) => "client-gone",
            ProxyError::ClientTimeout(_) => "client-timeout",
            ProxyError::UriTooLong(_) => "uri-too-long",
        }
    }
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
        assert_eq!(retry_after_secs(std::time::Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(std::time::Duration::ZERO), 1);
    }
}
