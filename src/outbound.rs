//! The outbound stack: traffic from the app to its dependencies. This is the
//! pipeline, in order:
//!
//! 1. destination: absolute-form target, else `Host` (`destination::target_of`),
//!    else the original destination of a redirected connection
//! 2. route: the first route (`--route`, the policy file) that matches host,
//!    port, path, method and headers; its policy is the global flags overridden
//!    by the route's keys, and its learned state is kept per route and
//!    destination (`upstream`)
//! 3. `exchange`: deadline (`timeout`, until the response headers), the
//!    destination's bulkhead slot
//! 4. `attempts`: the retry loop, with the destination's retry budget
//! 5. `forward`: per attempt, an endpoint whose breaker admits it, over a pooled
//!    HTTP/1.1 or HTTP/2 connection (`transport`)
//!
//! `CONNECT host:port` skips the HTTP steps and becomes a TCP tunnel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::accounting::InFlight;
use crate::body::ProxyBody;
use crate::config::{Config, RequestFacts};
use crate::destination;
use crate::drain::DrainWatch;
use crate::error::ProxyError;
use crate::exchange;
use crate::forward::Forwarder;
use crate::listener::{ClientConn, Handler};
use crate::metrics::{DestinationMetrics, Direction, Metrics};
use crate::transport::headers;
use crate::tunnel;
use crate::upstream::{DestinationState, LastDestination, Registry};

pub struct Outbound {
    forwarder: Forwarder,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Requests that never found a destination are counted under this label.
    unrouted: Arc<DestinationMetrics>,
    /// Our own listener: a request addressed to it would loop forever.
    listen_addr: SocketAddr,
    access_log: bool,
    max_uri_bytes: usize,
    drain: DrainWatch,
}

impl Outbound {
    pub fn new(
        config: &Config,
        forwarder: Forwarder,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        listen_addr: SocketAddr,
        drain: DrainWatch,
    ) -> Self {
        let unrouted = Arc::new(metrics.destination(
            Direction::Outbound,
            "none",
            crate::upstream::DEFAULT_ROUTE,
        ));
        Outbound {
            forwarder,
            registry,
            metrics,
            unrouted,
            listen_addr,
            access_log: config.access_log,
            max_uri_bytes: config.limits.max_uri_bytes,
            drain,
        }
    }

    /// Every outbound destination, for `/upstreams`.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The request's way out: its destination, then `CONNECT` to a tunnel or the
    /// rest to `exchange::send`. One async fn from the listener to there, since
    /// each layer of future would be another copy of it per request.
    async fn serve(
        self: Arc<Self>,
        conn: Arc<ClientConn<LastDestination>>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let destination = exchange::check_request(&req, self.max_uri_bytes)
            .and_then(|()| self.destination(&conn, &req));
        let metrics = match &destination {
            Ok(state) => state.metrics.clone(),
            Err(_) => self.unrouted.clone(),
        };
        let mut in_flight = InFlight::start(metrics, conn.activity.clone(), started);
        headers::ensure_request_id(req.headers_mut());
        if self.access_log {
            in_flight.set_access(exchange::access_entry(Direction::Outbound, &req));
        }
        let state = match destination {
            Ok(state) => state,
            Err(e) => {
                let unread = exchange::body_unread(&req);
                return exchange::fail(e, in_flight, unread);
            }
        };
        if req.method() == Method::CONNECT {
            return self.connect(&state, req, in_flight).await;
        }
        let upgrade = exchange::prepare(&mut req);
        exchange::send(
            &self.forwarder,
            &state,
            req,
            upgrade,
            in_flight,
            started,
            &self.drain,
        )
        .await
    }

    /// Finds the destination's state, from the connection's last one when it is the same.
    fn destination(
        &self,
        conn: &ClientConn<LastDestination>,
        req: &Request<Incoming>,
    ) -> Result<Arc<DestinationState>, ProxyError> {
        // A redirected connection goes where the app sent it, unless the request
        // names an absolute target (an HTTP proxy client behind iptables).
        let (host, port) = match (&conn.orig_dst, &conn.orig_dst_host) {
            (Some(orig), Some(host)) if req.uri().authority().is_none() => {
                (host.as_str(), orig.port())
            }
            _ => destination::target_of(req)?,
        };
        if self.is_own_listener(host, port) {
            return Err(ProxyError::NoRoute(
                "the destination is breakwater's own outbound listener",
            ));
        }
        // The route: first match on host, port, path, method and headers, in
        // the table in force now (one atomic load).
        let table = self.registry.routes();
        let route = table.select(&RequestFacts::of(req, host, port));
        Ok(conn.state.get_or(
            |last| last.is(host, port, route.name),
            || self.registry.get(host, port, route),
        ))
    }

    fn is_own_listener(&self, host: &str, port: u16) -> bool {
        if port != self.listen_addr.port() {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => ip == self.listen_addr.ip() || ip.is_loopback() || ip.is_unspecified(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// `CONNECT host:port`: connect first, so a failure is a proper 502; then answer
    /// 200 and relay bytes once the client's connection is upgraded.
    async fn connect(
        &self,
        state: &DestinationState,
        mut req: Request<Incoming>,
        mut in_flight: InFlight,
    ) -> Response<ProxyBody> {
        if req.uri().authority().and_then(|a| a.port_u16()).is_none() {
            let e = ProxyError::BadRequest("CONNECT needs host:port");
            return exchange::fail(e, in_flight, false);
        }
        let connector = self.forwarder.connector();
        match connector
            .connect(
                state.dest.host(),
                state.dest.port(),
                state.policy.connect_timeout,
            )
            .await
        {
            Ok(upstream) => {
                self.metrics.tunnel(Direction::Outbound, "connect");
                let client = hyper::upgrade::on(&mut req);
                tunnel::relay_connect(client, upstream, self.drain.clone());
                in_flight.set_status(200);
                let mut resp = Response::new(ProxyBody::empty().with_in_flight(in_flight));
                *resp.status_mut() = StatusCode::OK;
                resp
            }
            Err(e) => exchange::fail(
                ProxyError::ConnectFailure {
                    dest: state.dest.to_string(),
                    cause: e.to_string(),
                },
                in_flight,
                false,
            ),
        }
    }
}

impl Handler for Outbound {
    type Body = ProxyBody;
    type ConnState = LastDestination;

    fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn<LastDestination>>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        self.serve(conn, req)
    }

    /// Opaque TCP goes where the app sent it.
    fn relay_target(&self, orig_dst: SocketAddr) -> SocketAddr {
        orig_dst
    }
}
