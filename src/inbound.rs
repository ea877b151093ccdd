//! The inbound stack: traffic into the pod, handed to the app at `--app-addr`.
//! Request limits → request id and `X-Forwarded-*` → deadline → the app.

use std::sync::Arc;

use http::{Method, Request, Response};
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
use crate::health::{AppHealth, HealthState};
use crate::listener::{ClientConn, Handler};
use crate::metrics::{Direction, Metrics};
use crate::trace::{Kind, Tracer};
use crate::transport::headers;
use crate::upstream::traffic::RouteTraffic;
use crate::upstream::{Caps, DestinationState, LastDestination, Registry, RouteTable};

pub struct Inbound {
    forwarder: Forwarder,
    /// The app, per port (redirected connections keep the port they targeted)
    /// and per inbound route.
    ports: Arc<Registry>,
    metrics: Arc<Metrics>,
    app_ip: String,
    access_log: bool,
    max_uri_bytes: usize,
    drain: DrainWatch,
    health: Arc<AppHealth>,
    app_addr: std::net::SocketAddr,
    /// `--app-health-interval`: an app failing its probes is asked again then.
    probe_interval: std::time::Duration,
    /// `--inbound-tls-identity-header`: carries the client certificate's identity.
    identity_header: Option<http::HeaderName>,
    /// `--otlp-endpoint`: `None`, tracing off.
    tracer: Option<Arc<Tracer>>,
}

impl Inbound {
    pub fn new(
        config: &Config,
        forwarder: Forwarder,
        metrics: &Arc<Metrics>,
        health: Arc<AppHealth>,
        drain: DrainWatch,
        settings: crate::upstream::EndpointSettings,
    ) -> Self {
        let ports = Arc::new(Registry::new(
            Direction::Inbound,
            Arc::new(RouteTable::inbound(config)),
            metrics.clone(),
            Caps::from_config(config),
            settings,
        ));
        let app_ip = config.app_addr.ip().to_string();
        Inbound {
            forwarder,
            ports,
            metrics: metrics.clone(),
            app_ip,
            access_log: config.access_log,
            max_uri_bytes: config.limits.max_uri_bytes,
            drain,
            health,
            app_addr: config.app_addr,
            probe_interval: config.app_health.interval,
            identity_header: config
                .inbound_tls
                .as_ref()
                .and_then(|t| t.identity_header.as_deref())
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            tracer: None,
        }
    }

    /// Traces requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The app on the port the client targeted (`--app-addr`, or for a
    /// connection redirected by iptables, the app's address with the original
    /// port), under the first inbound route that matches the request.
    fn target(
        &self,
        conn: &ClientConn<LastDestination>,
        req: &Request<Incoming>,
    ) -> (Arc<DestinationState>, Option<Arc<RouteTraffic>>) {
        let port = match conn.orig_dst {
            Some(orig) => orig.port(),
            None => self.app_addr.port(),
        };
        let table = self.ports.routes();
        // The Host header is looked at only when a route may match on it.
        let host = if table.has_routes() {
            // As outbound names a destination: absolute target, else `Host`.
            destination::target_of(req).map_or("", |(host, _)| host)
        } else {
            ""
        };
        let route = table.select(&RequestFacts::of(req, host, port));
        let state = conn.state.get_or(
            // Every state here is the app's: its port and route tell them apart.
            |last| last.dest.port() == port && last.is_route(route.name),
            || self.ports.get(&self.app_ip, port, route),
        );
        (state, route.traffic.cloned())
    }

    /// The app's destinations, for `/upstreams`.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.ports
    }

    /// The request's way in: limits, id and `X-Forwarded-*`, then
    /// `exchange::send` to the app. One async fn from the listener to there,
    /// since each layer of future would be another copy of it per request.
    async fn serve(
        self: Arc<Self>,
        conn: Arc<ClientConn<LastDestination>>,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let (app, traffic) = self.target(&conn, &req);
        let mut in_flight = InFlight::start(app.metrics.clone(), conn.activity.clone(), started);
        in_flight.set_recent(app.recent.clone());
        exchange::note_grpc(&req, &mut in_flight);
        headers::ensure_request_id(req.headers_mut());
        if self.access_log {
            in_flight.set_access(exchange::access_entry(Direction::Inbound, &req));
        }
        if self.tracer.is_some() {
            exchange::start_trace(
                self.tracer.as_deref(),
                &req,
                Kind::Server,
                Some(&app),
                &mut in_flight,
            );
        }
        if let Err(e) = exchange::check_request(&req, self.max_uri_bytes) {
            let unread = exchange::body_unread(&req);
            return exchange::fail(e, in_flight, unread);
        }
        if self.health.state() == HealthState::Unhealthy {
            // Kubernetes takes the pod out of rotation soon; until then a quick
            // answer beats queueing for an app that cannot serve.
            let unread = exchange::body_unread(&req);
            let e = ProxyError::AppNotReady {
                app: self.app_addr,
                retry_after: self.probe_interval,
            };
            return exchange::fail(e, in_flight, unread);
        }
        if req.method() == Method::CONNECT {
            let e = ProxyError::BadRequest("CONNECT is served on the outbound listener");
            return exchange::fail(e, in_flight, false);
        }
        if let Err(e) = exchange::admit_rate(&app, &req, conn.identity.as_ref()) {
            let unread = exchange::body_unread(&req);
            return exchange::fail(e, in_flight, unread);
        }
        if let Some(traffic) = &traffic
            && let Err(e) = {
                let deadline = exchange::fault_deadline(&req, &app, &in_flight);
                fault::inject(
                    traffic,
                    Direction::Inbound,
                    &self.metrics,
                    &mut in_flight,
                    deadline,
                )
                .await
            }
        {
            let unread = exchange::body_unread(&req);
            return exchange::fail(e, in_flight, unread);
        }
        let upgrade = exchange::prepare(&mut req);
        if let Some(name) = &self.identity_header {
            // Only breakwater vouches for an identity: a client's own is dropped.
            req.headers_mut().remove(name);
            if let Some(id) = &conn.identity {
                req.headers_mut().insert(name.clone(), id.clone());
            }
        }
        let proto = if conn.tls { "https" } else { "http" };
        headers::append_forwarded(req.headers_mut(), &conn.peer_ip, proto);
        exchange::send(
            &self.forwarder,
            &app,
            req,
            upgrade,
            in_flight,
            &self.drain,
            None,
        )
        .await
    }
}

impl Handler for Inbound {
    type Body = ProxyBody;
    type ConnState = LastDestination;

    fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn<LastDestination>>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        self.serve(conn, req)
    }

    /// Opaque TCP goes to the app, on the port the client targeted.
    fn relay_target(&self, orig_dst: std::net::SocketAddr) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.app_addr.ip(), orig_dst.port())
    }
}
