//! [`rescue`]: the one place that turns a failure into the response the client
//! sees. A response breakwater makes itself always carries `x-breakwater-reason`
//! and a one-line plain-text body saying why (to a gRPC client: `grpc-status`
//! and `grpc-message`); a response from the upstream never does.

use http::{HeaderValue, Response, header};

use crate::body::ProxyBody;
use crate::error::{ProxyError, REASON_HEADER, retry_after_secs};

/// gRPC's own `Retry-After` (gRFC A6, "Pushback"): a gRPC client with a retry
/// policy waits this long, in milliseconds, before its next attempt.
const GRPC_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The response for a request breakwater could not complete; `grpc` for a gRPC
/// request, which is answered the gRPC way.
pub fn rescue(err: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    if grpc {
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
    if let Some(after) = err.retry_after() {
        // When trying again may work: clients that honour it come back then.
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(after)),
        );
    }
    if err.is_client_fault() {
        // The client sent something we will not forward; do not trust the rest of
        // its byte stream either.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A trailers-only gRPC answer (HTTP 200, no body, the status in the head):
/// gRPC clients show `grpc-message` to the application, where an HTTP 503
/// would become a bare `UNAVAILABLE` ("Received http2 header with status:
/// 503") that names no reason. `x-breakwater-reason` rides along as metadata.
fn grpc_rescue(err: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    let headers = resp.headers_mut();
    headers.insert(REASON_HEADER, HeaderValue::from_static(err.reason()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(err.grpc_status())),
    );
    let message = percent_encode(&format!("breakwater: {err}"));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
    if let Some(after) = err.retry_after() {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        headers.insert(GRPC_PUSHBACK, HeaderValue::from(ms));
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn every_failure_says_why_in_header_and_body() {
        let err = ProxyError::ConnectFailure {
            dest: "payments:8080".into(),
            cause: "connection refused".into(),
        };
        let resp = rescue(&err, false);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[REASON_HEADER], "connect-failure");
        let timeout = ProxyError::Timeout {
            dest: "x:80".into(),
            after: "2s".into(),
        };
        assert_eq!(
            rescue(&timeout, false).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            rescue(&ProxyError::NoRoute("none"), false).status(),
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
        let resp = rescue(&grpc, true);
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
        assert_eq!(rescue(&plain, false).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }

    #[test]
    fn grpc_codes_follow_the_reason() {
        let code = |e: &ProxyError| rescue(e, true).headers()["grpc-status"].clone();
        let open = ProxyError::CircuitOpen {
            dest: "d:1".into(),
            retry_after: std::time::Duration::from_millis(2500),
        };
        assert_eq!(code(&open), "14");
        assert_eq!(rescue(&open, true).headers()[GRPC_PUSHBACK], "2500");
        let timeout = ProxyError::Timeout {
            dest: "d:1".into(),
            after: "1s".into(),
        };
        assert_eq!(code(&timeout), "4");
        let limited = ProxyError::RateLimited {
            scope: "d:1".into(),
            limit: "10/s".into(),
            retry_after: std::time::Duration::from_millis(100),
        };
        assert_eq!(code(&limited), "8");
        assert_eq!(code(&ProxyError::BulkheadFull("d:1".into())), "14");
        let fault = |status: u16| ProxyError::FaultInjected {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            route: "r".into(),
        };
        assert_eq!(code(&fault(503)), "14");
        assert_eq!(code(&fault(404)), "12");
        assert_eq!(code(&fault(500)), "2");
    }
}
