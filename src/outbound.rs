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

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::accounting::InFlight;
use crate::body::ProxyBody;
use crate::config::{Config, RequestFacts};
use crate::destination;
use crate::drain::DrainWatch;
use crate::error::ProxyError;
use crate::exchange;
use crate::fault;
use crate::forward::Forwarder;
use crate::listener::{ClientConn, Handler};
use crate::metrics::{DestinationMetrics, Direction, Metrics};
use crate::mirror;
use crate::trace::{Kind, Tracer, Value};
use crate::transport::headers;
use crate::tunnel;
use crate::upstream::traffic::RouteTraffic;
use crate::upstream::{DestinationState, LastDestination, Registry, Selected};

/// Where a request goes and what its route does with it.
struct Routed {
    state: Arc<DestinationState>,
    /// The traffic keys of the route it matched, if it has any.
    traffic: Option<Arc<RouteTraffic>>,
    /// Set when `to` or `split` moved it to `state`'s destination.
    moved: Option<Moved>,
}

/// A request moved to another destination, and that destination's route's
/// traffic keys (whose faults apply too).
struct Moved {
    traffic: Option<Arc<RouteTraffic>>,
}

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
    /// `--otlp-endpoint`: `None`, tracing off.
    tracer: Option<Arc<Tracer>>,
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
            tracer: None,
        }
    }

    /// Traces requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
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
        let routed = exchange::check_request(&req, self.max_uri_bytes)
            .and_then(|()| self.destination(&conn, &req));
        let metrics = match &routed {
            Ok(r) => r.state.metrics.clone(),
            Err(_) => self.unrouted.clone(),
        };
        let mut in_flight = InFlight::start(metrics, conn.activity.clone(), started);
        if let Ok(r) = &routed {
            in_flight.set_recent(r.state.recent.clone());
        }
        exchange::note_grpc(&req, &mut in_flight);
        headers::ensure_request_id(req.headers_mut());
        if self.access_log {
            in_flight.set_access(exchange::access_entry(Direction::Outbound, &req));
        }
        if self.tracer.is_some() {
            let state = routed.as_ref().ok().map(|r| &*r.state);
            exchange::start_trace(
                self.tracer.as_deref(),
                &req,
                Kind::Client,
                state,
                &mut in_flight,
            );
        }
        let Routed {
            state,
            traffic,
            moved,
        } = match routed {
            Ok(routed) => routed,
            Err(e) => {
                let unread = exchange::body_unread(&req);
                return exchange::fail(e, in_flight, unread);
            }
        };
        if req.method() == Method::CONNECT {
            return self.connect(&state, req, in_flight).await;
        }
        let upgrade = exchange::prepare(&mut req);
        let mut mirror = None;
        if let Some(traffic) = &traffic {
            if let Err(e) = self
                .steer(traffic, moved.as_ref(), &state, &mut req, &mut in_flight)
                .await
            {
                let unread = exchange::body_unread(&req);
                return exchange::fail(e, in_flight, unread);
            }
            mirror = mirror::plan(
                traffic,
                &req,
                &state.dest,
                state.policy.retry.body_limit,
                &self.registry,
                &self.metrics,
            );
            if let (Some(t), Some(shadow)) = (in_flight.trace_mut(), &traffic.mirror) {
                let copied = if mirror.is_some() {
                    "copied"
                } else {
                    "not copied"
                };
                t.span.event(
                    "mirror",
                    &[
                        (
                            "breakwater.shadow",
                            Value::Str(&shadow.plan.target.to_string()),
                        ),
                        ("breakwater.mirror", Value::Str(copied)),
                    ],
                );
            }
        }
        if let Err(e) = exchange::admit_rate(&state, &req, None) {
            if let Some(mirror) = mirror {
                mirror.refused(&self.forwarder, &req, e.status());
            }
            let unread = exchange::body_unread(&req);
            return exchange::fail(e, in_flight, unread);
        }
        exchange::send(
            &self.forwarder,
            &state,
            req,
            upgrade,
            in_flight,
            &self.drain,
            mirror,
        )
        .await
    }

    /// What a route with traffic keys does before the request is sent: count
    /// where a split sent it and name its new destination in `Host`, then
    /// the faults of the route it matched and of the route it was moved to.
    async fn steer(
        &self,
        traffic: &RouteTraffic,
        moved: Option<&Moved>,
        state: &DestinationState,
        req: &mut Request<Incoming>,
        in_flight: &mut InFlight,
    ) -> Result<(), ProxyError> {
        if traffic.moves.is_some() {
            self.metrics
                .count_split(&traffic.route, state.metrics.label());
        }
        if let (Some(_), Some(t)) = (moved, in_flight.trace_mut()) {
            t.span.event(
                "split",
                &[(
                    "breakwater.destination",
                    Value::Str(&state.dest.to_string()),
                )],
            );
        }
        if moved.is_some() && !traffic.keep_host {
            let host = HeaderValue::from_str(state.authority.as_str())
                .map_err(|_| ProxyError::BadRequest("the new destination is not a valid Host"))?;
            req.headers_mut().insert(header::HOST, host);
        }
        let there = moved.and_then(|m| m.traffic.as_deref());
        let with_faults = [Some(traffic), there]
            .into_iter()
            .flatten()
            .filter(|t| t.faults.is_some());
        // The deadline (a header lookup) only for a route that has faults.
        let mut deadline = None;
        for t in with_faults {
            let d =
                *deadline.get_or_insert_with(|| exchange::fault_deadline(req, state, in_flight));
            fault::inject(t, Direction::Outbound, &self.metrics, in_flight, d).await?;
        }
        Ok(())
    }

    /// Finds the destination's state, from the connection's last one when it
    /// is the same; a route's `to` or `split` may send the request elsewhere.
    fn destination(
        &self,
        conn: &ClientConn<LastDestination>,
        req: &Request<Incoming>,
    ) -> Result<Routed, ProxyError> {
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
        let facts = RequestFacts::of(req, host, port);
        let route = table.select(&facts);
        let state_of = |host: &str, port: u16, route: Selected<'_>| {
            conn.state.get_or(
                |last| last.is(host, port, route.name),
                || self.registry.get(host, port, route),
            )
        };
        let Some(traffic) = route.traffic else {
            return Ok(Routed {
                state: state_of(host, port, route),
                traffic: None,
                moved: None,
            });
        };
        let Some(to) = traffic.moved_to(req.headers()) else {
            return Ok(Routed {
                state: state_of(host, port, route),
                traffic: Some(traffic.clone()),
                moved: None,
            });
        };
        if self.is_own_listener(to.host(), to.port()) {
            return Err(ProxyError::NoRoute(
                "a route's to= or split= names breakwater's own outbound listener",
            ));
        }
        // Moved once: the new destination's route lends its policy, state and
        // faults; its own `to` and `split` are not followed.
        let there = table.select(&RequestFacts {
            host: to.host(),
            port: to.port(),
            ..facts
        });
        Ok(Routed {
            state: state_of(to.host(), to.port(), there),
            traffic: Some(traffic.clone()),
            moved: Some(Moved {
                traffic: there.traffic.cloned(),
            }),
        })
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
                tunnel::relay_connect(
                    client,
                    upstream,
                    self.drain.clone(),
                    self.forwarder.stream_idle(),
                );
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
