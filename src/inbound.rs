//! The inbound stack: traffic into the pod, handed to the app at `--app-addr`.
//! Request limits → request id and `X-Forwarded-*` → deadline → the app.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::accounting::InFlight;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::drain::DrainWatch;
use crate::error::ProxyError;
use crate::exchange;
use crate::forward::{Forwarder, headers};
use crate::health::{AppHealth, HealthState};
use crate::listener::{ClientConn, Handler};
use crate::metrics::{Direction, Metrics};
use crate::policy::retry::RetryOn;
use crate::upstream::{DestinationState, RoutePolicy};

pub struct Inbound {
    forwarder: Forwarder,
    app: DestinationState,
    access_log: bool,
    max_uri_bytes: usize,
    drain: DrainWatch,
    health: Arc<AppHealth>,
    app_addr: std::net::SocketAddr,
}

impl Inbound {
    pub fn new(
        config: &Config,
        forwarder: Forwarder,
        metrics: &Metrics,
        health: Arc<AppHealth>,
        drain: DrainWatch,
    ) -> Self {
        let app = crate::destination::Destination::new(
            &config.app_addr.ip().to_string(),
            config.app_addr.port(),
        );
        // Inbound retries only what never reached the app: a connect failure while
        // it restarts. Anything else may have had effects.
        let mut retry = config.retry.clone();
        retry.retry_on = RetryOn {
            connect_failure: true,
            ..RetryOn::default()
        };
        retry.per_try_timeout = None;
        let policy = RoutePolicy {
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            protocol: crate::config::Protocol::Auto,
            retry,
        };
        let metrics = Arc::new(metrics.destination(Direction::Inbound, &app.to_string()));
        let app = DestinationState::new(app, policy, metrics);
        Inbound {
            forwarder,
            app,
            access_log: config.access_log,
            max_uri_bytes: config.limits.max_uri_bytes,
            drain,
            health,
            app_addr: config.app_addr,
        }
    }

    async fn serve(&self, conn: &ClientConn, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut in_flight = InFlight::start(
            self.app.metrics.clone(),
            conn.activity.clone(),
            started.into_std(),
        );
        let id = headers::request_id(req.headers_mut());
        if self.access_log {
            in_flight.set_access(exchange::access_entry(Direction::Inbound, &req, &id));
        }
        if let Err(e) = exchange::check_request(&req, self.max_uri_bytes) {
            return exchange::fail(e, in_flight);
        }
        if self.health.state() == HealthState::Unhealthy {
            // Kubernetes takes the pod out of rotation soon; until then a quick
            // answer beats queueing for an app that cannot serve.
            return exchange::fail(ProxyError::AppNotReady(self.app_addr), in_flight);
        }
        if req.method() == Method::CONNECT {
            let e = ProxyError::BadRequest("CONNECT is served on the outbound listener");
            return exchange::fail(e, in_flight);
        }
        let upgrade = exchange::prepare(&mut req);
        headers::append_forwarded(req.headers_mut(), &conn.peer_ip, "http");
        exchange::send(
            &self.forwarder,
            &self.app,
            req,
            upgrade,
            in_flight,
            started,
            &self.drain,
        )
        .await
    }
}

impl Handler for Inbound {
    async fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        self.serve(&conn, req).await
    }
}
