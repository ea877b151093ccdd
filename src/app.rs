//! Wiring: binds the listeners, builds the inbound and outbound stacks around
//! shared state, serves until told to stop, then drains.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{Admin, ProxyState};
use crate::config::Config;
use crate::connect::Connector;
use crate::drain::Drain;
use crate::forward::Forwarder;
use crate::inbound::Inbound;
use crate::listener::Listener;
use crate::metrics::{Direction, Metrics};
use crate::outbound::Outbound;
use crate::upstream::{Registry, RouteTable};

/// A listener that could not be bound; names the flag that chose the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {flag} {addr}: {source}")]
pub struct BindError {
    pub flag: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// The addresses the listeners actually bound (port 0 becomes a real port).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// Connections and tunnels still open when `--drain-timeout` ran out.
    pub abandoned: usize,
}

/// The effective configuration as JSON, for `/config` and `run --check`: the
/// flags, and under `policies` the policy each `--route` results in.
pub fn describe(config: &Config) -> String {
    let mut described = serde_json::to_value(config).unwrap_or_default();
    if let Some(map) = described.as_object_mut() {
        map.insert("policies".into(), RouteTable::new(config).describe());
    }
    serde_json::to_string_pretty(&described).unwrap_or_default()
}

/// A proxy with its listeners bound, ready to [`run`](Proxy::run).
pub struct Proxy {
    config: Config,
    inbound: TcpListener,
    outbound: TcpListener,
    admin: TcpListener,
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub async fn bind(config: Config) -> Result<Proxy, BindError> {
        let bind = |flag, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { flag, addr, source })
        };
        // Outbound first: the app must never start before its proxy accepts.
        let outbound = bind("--outbound-addr", config.outbound_addr).await?;
        let inbound = bind("--inbound-addr", config.inbound_addr).await?;
        let admin = bind("--admin-addr", config.admin_addr).await?;
        Ok(Proxy {
            config,
            inbound,
            outbound,
            admin,
            metrics: Arc::new(Metrics::new()),
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        BoundAddrs {
            inbound: addr(&self.inbound),
            outbound: addr(&self.outbound),
            admin: addr(&self.admin),
        }
    }

    /// Serves until `shutdown` resolves, then drains: `/ready` turns 503, listeners
    /// stop accepting, open connections finish their requests (HTTP/1 answers with
    /// `Connection: close`, HTTP/2 gets a GOAWAY), all within `--drain-timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> RunReport {
        let addrs = self.addrs();
        let Proxy {
            config,
            inbound,
            outbound,
            admin,
            metrics,
        } = self;
        let (drain, watch) = Drain::new();
        let state = Arc::new(ProxyState::default());

        let routes = Arc::new(RouteTable::new(&config));
        let out_connector =
            Connector::new(config.dns_ttl, config.connect_timeout, Some(routes.clone()));
        let out_stack = Arc::new(Outbound::new(
            &config,
            Forwarder::new(Arc::new(out_connector), config.upstream_idle_timeout),
            Registry::new(
                Direction::Outbound,
                routes.clone(),
                metrics.clone(),
                config.metrics_max_destinations,
            ),
            metrics.clone(),
            addrs.outbound,
            watch.clone(),
        ));
        let in_connector = Connector::new(config.dns_ttl, config.connect_timeout, None);
        let in_stack = Arc::new(Inbound::new(
            &config,
            Forwarder::new(Arc::new(in_connector), config.upstream_idle_timeout),
            &metrics,
            watch.clone(),
        ));

        let limits = config.limits.clone();
        let outbound = Listener::new(
            "outbound",
            outbound,
            out_stack,
            limits.clone(),
            metrics.listener("outbound"),
        );
        let inbound = Listener::new(
            "inbound",
            inbound,
            in_stack,
            limits,
            metrics.listener("inbound"),
        );
        tokio::spawn(outbound.serve(watch.clone()));
        tokio::spawn(inbound.serve(watch));

        let config_json = describe(&config);
        let admin_endpoint = Arc::new(Admin::new(metrics, state.clone(), config_json));
        let admin_task = tokio::spawn(admin_endpoint.serve(admin));
        state.set_listening();
        info!(
            inbound = %addrs.inbound,
            outbound = %addrs.outbound,
            admin = %addrs.admin,
            app = %config.app_addr,
            "breakwater is serving"
        );

        shutdown.await;
        state.set_draining();
        drain.start();
        info!(open = drain.remaining(), timeout = ?config.drain_timeout, "draining");
        let abandoned = if drain.finished(config.drain_timeout).await {
            info!("drained");
            0
        } else {
            let abandoned = drain.remaining();
            warn!(abandoned, "drain timeout: closing what is still open");
            abandoned
        };
        admin_task.abort();
        RunReport { abandoned }
    }
}
