//! One attempt at an upstream: pick an endpoint of the destination, send over its
//! pooled HTTP/1.1 or HTTP/2 connection, and classify what went wrong in the
//! terms of `x-breakwater-reason`.

pub mod headers;
pub mod pool;
pub mod replay;

use std::error::Error as _;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::Protocol;
use crate::connect::Connector;
use crate::error::ProxyError;
use crate::upstream::DestinationState;
use crate::upstream::endpoint::{self, EndpointGuard};
use pool::{Lease, SendError};
use replay::ReplayBody;

/// Sends attempts to destinations' endpoints.
pub struct Forwarder {
    connector: Arc<Connector>,
}

/// What an attempt holds until the response body ends: the endpoint's in-flight
/// count, and for HTTP/1.1 the connection, handed back to the pool at the end.
pub struct Hold {
    lease: Option<Lease>,
    _in_flight: EndpointGuard,
}

impl Hold {
    /// The response body was read to its end.
    pub fn release(self) {
        if let Some(lease) = self.lease {
            lease.release();
        }
    }
}

/// A response head from the upstream and what it holds.
pub struct Sent {
    pub response: Response<Incoming>,
    pub hold: Hold,
}

impl Forwarder {
    pub fn new(connector: Arc<Connector>) -> Self {
        Forwarder { connector }
    }

    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Sends `req` (its URI absolute: `http://authority/path`) to one endpoint of
    /// `state` and returns the response head; the body streams on.
    pub async fn send(
        &self,
        state: &DestinationState,
        mut req: Request<ReplayBody>,
    ) -> Result<Sent, ProxyError> {
        let endpoints = state.endpoints.current(&self.connector).await?;
        let endpoint = endpoint::pick(&endpoints)
            .ok_or_else(|| ProxyError::ConnectFailure {
                dest: state.dest.to_string(),
                cause: "the name resolved to no address".into(),
            })?
            .clone();
        let in_flight = endpoint.start();
        let use_h2 = match state.policy.protocol {
            Protocol::H2 => true,
            Protocol::H1 => false,
            Protocol::Auto => req.version() == Version::HTTP_2,
        };
        let started = Instant::now();
        let sent = if use_h2 {
            *req.version_mut() = Version::HTTP_2;
            endpoint.pool.send_h2(req).await.map(|r| (r, None))
        } else {
            if req.version() == Version::HTTP_2 {
                *req.version_mut() = Version::HTTP_11;
            }
            if req.method() != Method::CONNECT {
                origin_form(req.uri_mut());
            }
            endpoint
                .pool
                .send_h1(req)
                .await
                .map(|(r, lease)| (r, Some(lease)))
        };
        match sent {
            Ok((response, lease)) => {
                endpoint.observe(started.elapsed());
                Ok(Sent {
                    response,
                    hold: Hold {
                        lease,
                        _in_flight: in_flight,
                    },
                })
            }
            Err(SendError::Connect(cause)) => Err(ProxyError::ConnectFailure {
                dest: state.dest.to_string(),
                cause: format!("{}: {cause}", endpoint.addr),
            }),
            Err(SendError::Broken(e)) => Err(ProxyError::Reset {
                dest: state.dest.to_string(),
                cause: causes(&e),
            }),
        }
    }
}

/// HTTP/1.1 sends the path and query only; the host is in `Host`.
fn origin_form(uri: &mut Uri) {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *uri = Uri::from(path);
}

/// The error and its causes, joined: "connection closed before message completed".
fn causes(err: &hyper::Error) -> String {
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
