//! One attempt at an upstream: pick the pooled HTTP/1.1 or HTTP/2 client, send, and
//! classify what went wrong in the terms of `x-breakwater-reason`.

pub mod headers;
pub mod replay;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Protocol;
use crate::connect::{Connector, HttpConnector};
use crate::destination::Destination;
use crate::error::ProxyError;
use replay::ReplayBody;

/// Pooled keep-alive clients: one speaking HTTP/1.1, one HTTP/2 (prior knowledge).
/// Each pools per `scheme://authority`, so per destination.
pub struct Forwarder {
    h1: Client<HttpConnector, ReplayBody>,
    h2: Client<HttpConnector, ReplayBody>,
    connector: Arc<Connector>,
}

impl Forwarder {
    pub fn new(connector: Arc<Connector>, idle_timeout: Duration) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .http2_adaptive_window(true);
        let h1 = builder.build(HttpConnector(connector.clone()));
        let h2 = builder
            .http2_only(true)
            .build(HttpConnector(connector.clone()));
        Forwarder { h1, h2, connector }
    }

    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Sends `req` (its URI absolute: `http://authority/path`) and returns the
    /// upstream's response head; the body streams on.
    pub async fn send(
        &self,
        protocol: Protocol,
        mut req: Request<ReplayBody>,
        dest: &Destination,
    ) -> Result<Response<Incoming>, ProxyError> {
        let use_h2 = match protocol {
            Protocol::H2 => true,
            Protocol::H1 => false,
            Protocol::Auto => req.version() == Version::HTTP_2,
        };
        let client = if use_h2 {
            *req.version_mut() = Version::HTTP_2;
            &self.h2
        } else {
            if req.version() == Version::HTTP_2 {
                *req.version_mut() = Version::HTTP_11;
            }
            &self.h1
        };
        client.request(req).await.map_err(|e| classify(e, dest))
    }
}

/// Maps a client error to a reason: a failed connect is `connect-failure`, anything
/// after the connection existed is `reset`. Uses hyper's predicates, not strings.
fn classify(err: hyper_util::client::legacy::Error, dest: &Destination) -> ProxyError {
    let cause = causes(&err);
    if err.is_connect() {
        ProxyError::ConnectFailure {
            dest: dest.to_string(),
            cause,
        }
    } else {
        ProxyError::Reset {
            dest: dest.to_string(),
            cause,
        }
    }
}

/// The innermost useful error messages, joined: "connection refused (os error 111)".
fn causes(err: &hyper_util::client::legacy::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        parts.push(err.to_string());
    }
    parts.join(": ")
}
