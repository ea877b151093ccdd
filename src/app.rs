//! Wiring: binds the listeners, builds the inbound and outbound stacks around
//! shared state, serves until told to stop, then drains.

use crate::trace::Tracer;
use crate::trace::export::ExportMetrics;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admin::{Admin, ProxyState};
use crate::config::{Config, DiscoveryMode};
use crate::connect::Connector;
use crate::discovery::kubernetes::KubeDiscovery;
use crate::drain::{Drain, ShutdownHandle, ShutdownRequests, shutdown_channel};
use crate::forward::Forwarder;
use crate::health::{AppHealth, Prober};
use crate::inbound::Inbound;
use crate::interception::relay::ConnectBreakers;
use crate::listener::{Interception, Listener};
use crate::metrics::{Direction, Metrics};
use crate::outbound::Outbound;
use crate::policy::overrides::Overrides;
use crate::reload::{Initial, LivePolicy};
use crate::upstream::{Caps, EndpointSettings, Registry, RouteTable};

/// Why the proxy could not start; names the flag that chose the address or file.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A listener could not be bound.
    #[error("cannot listen on {flag} {addr}: {source}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Certificate material could not be loaded (the message names the file).
    #[error("cannot load {flag}: {source}")]
    Tls {
        flag: &'static str,
        source: crate::tls::TlsError,
    },
    /// `--policy-file` cannot be read or applied (the message names the file,
    /// and where known the line, column and key).
    #[error("--policy-file: {0}")]
    Policy(#[from] crate::config::layered::PolicyError),
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
    /// Requests still in flight when the drain was cut short.
    pub abandoned: usize,
}

/// The effective configuration as JSON, for `run --check`: the flags (with the
/// policy file over them), and under `policies` the policy each route results in.
pub fn describe(config: &Config) -> String {
    serde_json::to_string_pretty(&crate::reload::describe_value(config)).unwrap_or_default()
}

/// What `run --check` checks: everything [`Proxy::bind`] loads before it
/// serves (the policy file over the flags, the certificate material) except
/// the listeners, whose ports the check has no business taking. Returns the
/// effective configuration.
pub fn check(flags: &Config) -> Result<Config, BindError> {
    let mut config = Initial::load(flags)?.config;
    let registry = prometheus::Registry::new();
    let tls = StartTls::load(&config, &crate::tls::TlsMetrics::register(&registry))?;
    if let Some(why) = tls.unavailable {
        config.warnings.push(format!(
            "outbound TLS unavailable ({why}): a policy file that adds a tls=true route will be refused"
        ));
    }
    Ok(config)
}

/// The certificate material loaded at start-up, by [`Proxy::bind`] and [`check`] alike.
struct StartTls {
    inbound: Option<Arc<crate::tls::ServerTls>>,
    outbound: Option<Arc<crate::tls::ClientTls>>,
    /// Why outbound TLS did not load, when only a later policy file could need it.
    unavailable: Option<String>,
}

impl StartTls {
    fn load(config: &Config, metrics: &crate::tls::TlsMetrics) -> Result<StartTls, BindError> {
        let inbound =
            match &config.inbound_tls {
                Some(t) => Some(crate::tls::ServerTls::load(t, metrics).map_err(|source| {
                    BindError::Tls {
                        flag: t.flag_of(source.path()),
                        source,
                    }
                })?),
                None => None,
            };
        // A policy file may add a `tls=true` route later: its client is ready.
        let mut unavailable = None;
        let needs_tls = config.routes.iter().any(|r| r.tls == Some(true));
        let outbound = if needs_tls || config.policy_file.is_some() {
            let t = &config.outbound_tls;
            match crate::tls::ClientTls::load(t, metrics) {
                Ok(client) => Some(client),
                Err(source) if needs_tls => {
                    return Err(BindError::Tls {
                        flag: t.flag_of(source.path()),
                        source,
                    });
                }
                Err(e) => {
                    warn!(error = %e, "outbound TLS unavailable: a policy file that adds a tls=true route will be refused");
                    unavailable = Some(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        Ok(StartTls {
            inbound,
            outbound,
            unavailable,
        })
    }
}

/// A proxy with its listeners bound, ready to [`run`](Proxy::run).
pub struct Proxy {
    /// The flags alone: the policy file is re-applied over these on a change.
    flags: Config,
    initial: Initial,
    inbound: TcpListener,
    outbound: TcpListener,
    admin: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: ShutdownHandle,
    requests: ShutdownRequests,
    inbound_tls: Option<Arc<crate::tls::ServerTls>>,
    outbound_tls: Option<Arc<crate::tls::ClientTls>>,
    /// Why outbound TLS did not load, when only a later policy file could need it.
    tls_unavailable: Option<String>,
}

impl Proxy {
    pub async fn bind(flags: Config) -> Result<Proxy, BindError> {
        let initial = Initial::load(&flags)?;
        let config = &initial.config;
        let bind = |flag, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Listen { flag, addr, source })
        };
        // Outbound first, admin last: the kernel accepts on a bound listener
        // before its accept loop runs, so by the time /live answers, the app's
        // outbound calls are already taken.
        let outbound = bind("--outbound-addr", config.outbound_addr).await?;
        let inbound = bind("--inbound-addr", config.inbound_addr).await?;
        let admin = bind("--admin-addr", config.admin_addr).await?;
        let (shutdown, requests) = shutdown_channel();
        let metrics = Arc::new(Metrics::with_max_endpoints(config.metrics_max_endpoints));
        let tls_metrics = crate::tls::TlsMetrics::register(metrics.registry());
        let tls = StartTls::load(config, &tls_metrics)?;
        Ok(Proxy {
            flags,
            initial,
            inbound,
            outbound,
            admin,
            metrics,
            shutdown,
            requests,
            inbound_tls: tls.inbound,
            outbound_tls: tls.outbound,
            tls_unavailable: tls.unavailable,
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

    /// Starts a drain when requested (SIGTERM, SIGINT, `POST /shutdown`); a
    /// second request ends it at once.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until a shutdown is requested, then drains in Kubernetes order:
    ///
    /// 1. `/ready` turns 503 at once;
    /// 2. listeners keep accepting for `--drain-delay`, while endpoint
    ///    controllers and kube-proxy stop sending;
    /// 3. inbound stops accepting; its HTTP/1 connections close after their
    ///    current response, HTTP/2 ones get a GOAWAY;
    /// 4. outbound keeps serving until the app's connections to it have closed
    ///    (the app's own shutdown calls succeed), then stops;
    ///
    /// all within `--drain-timeout` of the request. A second request, or the
    /// deadline, ends it with the abandoned requests counted.
    pub async fn run(self) -> RunReport {
        let addrs = self.addrs();
        let Proxy {
            flags,
            initial,
            inbound,
            outbound,
            admin,
            metrics,
            shutdown,
            mut requests,
            inbound_tls,
            outbound_tls,
            tls_unavailable,
        } = self;
        let config = initial.config.clone();
        let (inbound_drain, inbound_watch) = Drain::new();
        let (outbound_drain, outbound_watch) = Drain::new();
        let state = Arc::new(ProxyState::default());
        let health = Arc::new(AppHealth::new());

        let routes = Arc::new(RouteTable::new(&config));
        let overrides = Arc::new(Overrides::default());
        let discovery = match config.discovery.mode {
            DiscoveryMode::Dns => None,
            DiscoveryMode::Kubernetes => match KubeDiscovery::start(&config.discovery) {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(error = %e, "Kubernetes discovery unavailable: every destination goes by DNS");
                    None
                }
            },
        };
        let tracer = config.tracing.as_ref().map(|t| {
            Arc::new(Tracer::new(
                t,
                ExportMetrics {
                    exported: metrics.spans_exported.clone(),
                    queue_full: metrics.spans_dropped("queue-full"),
                    export_failed: metrics.spans_dropped("export-failed"),
                },
            ))
        });
        let out_connector = Connector::new(config.dns_ttl).with_discovery(discovery);
        let out_stack = Arc::new(
            Outbound::new(
                &config,
                Forwarder::new(Arc::new(out_connector), config.limits.stream_idle_timeout),
                Arc::new(Registry::new(
                    Direction::Outbound,
                    routes,
                    metrics.clone(),
                    Caps::from_config(&config),
                    EndpointSettings {
                        tls: outbound_tls,
                        overrides: overrides.clone(),
                        ..EndpointSettings::from_config(&config)
                    },
                )),
                metrics.clone(),
                addrs.outbound,
                outbound_watch.clone(),
            )
            .with_tracer(tracer.clone()),
        );
        let in_connector = Connector::new(config.dns_ttl);
        let in_stack = Arc::new(
            Inbound::new(
                &config,
                Forwarder::new(Arc::new(in_connector), config.limits.stream_idle_timeout),
                &metrics,
                health.clone(),
                inbound_watch.clone(),
                EndpointSettings {
                    overrides: overrides.clone(),
                    // The app is one process: one HTTP/2 connection carries it all.
                    h2_connections: 1,
                    ..EndpointSettings::from_config(&config)
                },
            )
            .with_tracer(tracer),
        );

        let out_registry = out_stack.registry().clone();
        let in_registry = in_stack.registry().clone();
        // Outbound only: inbound, the destination is the app, always in use.
        if let Some(idle) = config.destination_idle_timeout {
            tokio::spawn(out_registry.clone().expire_idle_every(idle));
        }
        let live = Arc::new(LivePolicy::new(
            flags,
            initial,
            out_registry.clone(),
            in_registry.clone(),
            metrics.policy_reloads.clone(),
            overrides,
            tls_unavailable,
        ));
        let watching = live.watch();
        let limits = config.limits.clone();
        let outbound_metrics = metrics.listener("outbound");
        let connect_breakers = Arc::new(ConnectBreakers::new(config.breaker));
        let own_ports: Arc<[u16]> = Arc::new([
            addrs.inbound.port(),
            addrs.outbound.port(),
            addrs.admin.port(),
        ]);
        let interception = |listener| Interception {
            detect_timeout: config.protocol_detect_timeout,
            connect_timeout: config.connect_timeout,
            own_ports: own_ports.clone(),
            opaque: metrics.opaque(listener),
            breakers: connect_breakers.clone(),
        };
        let outbound = Listener::new(
            "outbound",
            outbound,
            out_stack,
            limits.clone(),
            outbound_metrics.clone(),
            interception("outbound"),
        );
        let inbound = Listener::new(
            "inbound",
            inbound,
            in_stack,
            limits,
            metrics.listener("inbound"),
            interception("inbound"),
        )
        .with_tls(inbound_tls);
        tokio::spawn(outbound.serve(outbound_watch));
        tokio::spawn(inbound.serve(inbound_watch));

        // One prober for the interval loop and for GET /app-health: one client pool.
        let prober = Arc::new(Prober::new(config.app_health.clone(), config.app_addr));
        let probing = tokio::spawn(prober.clone().run(health.clone(), metrics.app_health()));
        let admin_endpoint = Arc::new(Admin {
            metrics: metrics.clone(),
            state: state.clone(),
            health,
            prober,
            shutdown,
            live,
            registries: vec![out_registry, in_registry],
        });
        let admin_task = tokio::spawn(admin_endpoint.serve(admin));
        state.set_listening();
        info!(
            inbound = %addrs.inbound,
            outbound = %addrs.outbound,
            admin = %addrs.admin,
            app = %config.app_addr,
            "breakwater is serving"
        );

        requests.next().await;
        let deadline = Instant::now() + config.drain_timeout;
        state.set_draining();
        metrics.draining.set(1);
        info!(
            delay = ?config.drain_delay,
            timeout = ?config.drain_timeout,
            inflight = metrics.inflight_total(),
            "drain started: /ready is 503"
        );
        let ended = async {
            tokio::time::sleep(config.drain_delay).await;
            inbound_drain.start();
            info!("inbound stopped accepting");
            inbound_drain.finished().await;
            // The app's connections to outbound close when it exits or lets go.
            while outbound_metrics.active.get() > 0 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            outbound_drain.start();
            outbound_drain.finished().await;
        };
        let abandoned = tokio::select! {
            _ = ended => 0,
            _ = tokio::time::sleep_until(deadline) => {
                let abandoned = metrics.inflight_total().max(0) as usize;
                warn!(abandoned, open_outbound = outbound_metrics.active.get(), "drain timeout: abandoning what is still open");
                abandoned
            }
            _ = requests.next() => {
                let abandoned = metrics.inflight_total().max(0) as usize;
                warn!(abandoned, "second shutdown request: exiting now");
                abandoned
            }
        };
        if abandoned == 0 {
            info!("drained");
        }
        probing.abort();
        if let Some(w) = watching {
            w.abort();
        }
        admin_task.abort();
        RunReport { abandoned }
    }
}
