//! `ProxyError`, every way breakwater can fail a request, and [`rescue`], the one
//! place that turns a failure into the response the client sees.
//!
//! A response breakwater makes itself always carries `x-breakwater-reason` and a
//! one-line plain-text body saying why; a response from the upstream never does.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;

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

/// `grpc-status` UNAVAILABLE: what a gRPC client's own transport reports for a
/// peer it cannot use, so client code already handles it.
const GRPC_UNAVAILABLE: HeaderValue = HeaderValue::from_static("14");

/// The response for a request breakwater could not complete.
pub fn rescue(err: &ProxyError) -> Response<ProxyBody> {
    if let ProxyError::Protocol { grpc: true, .. } = err {
        return grpc_rescue(err);
    }
    let body = format!("breakwater: {err}\n");
    let mut resp = Response::new(ProxyBody::local(body.into()));
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(REASON_HEADER, HeaderValue::from_static(err.reason()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let ProxyError::CircuitOpen { retry_after, .. } = err {
        // When the next probe may go: clients that honour it come back then.
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(*retry_after)),
        );
    }
    if err.status().is_client_error() {
        // The client sent something we will not forward; do not trust the rest of
        // its byte stream either.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A trailers-only gRPC answer (HTTP 200, no body): gRPC clients show
/// `grpc-message` to the application, where an HTTP 502 would become a bare
/// `UNAVAILABLE` that names no reason.
fn grpc_rescue(err: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    let headers = resp.headers_mut();
    headers.insert(REASON_HEADER, HeaderValue::from_static(err.reason()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", GRPC_UNAVAILABLE);
    let message = percent_encode(&format!("breakwater: {err}"));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// `grpc-message` encoding: printable ASCII but `%` as is, the rest as `%XX`
/// of its UTF-8 bytes (gRPC over HTTP/2, "Responses").
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_says_why_in_header_and_body() {
        let err = ProxyError::ConnectFailure {
            dest: "payments:8080".into(),
            cause: "connection refused".into(),
        };
        let resp = rescue(&err);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[REASON_HEADER], "connect-failure");
        let timeout = ProxyError::Timeout {
            dest: "x:80".into(),
            after: "2s".into(),
        };
        assert_eq!(rescue(&timeout).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            rescue(&ProxyError::NoRoute("none")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_grpc_client_gets_a_grpc_status_that_names_the_reason() {
        let endpoint = "127.0.0.1:9".parse().unwrap();
        let grpc = ProxyError::Protocol {
            dest: "app:8080".into(),
            endpoint,
            grpc: true,
        };
        let resp = rescue(&grpc);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()[REASON_HEADER], "protocol");
        let message = resp.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("does not speak HTTP/2"), "{message}");
        let plain = ProxyError::Protocol {
            dest: "app:8080".into(),
            endpoint,
            grpc: false,
        };
        assert_eq!(rescue(&plain).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
