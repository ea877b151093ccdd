//! `breakwater injector`: the mutating admission webhook that injects breakwater into
//! new pods, as `breakwater inject` and the chart do (the same [`crate::inject::pod`]
//! code), so that labelling a namespace `breakwater.io/inject=enabled` is enough.
//!
//! The API server POSTs an `AdmissionReview` to `/inject` over HTTPS; [`review`]
//! decides and writes the patch, [`annotations`] turns a pod's `breakwater.io/<flag>`
//! annotations into its sidecar's flags. The certificate follows its files (as the
//! proxy's TLS does). Until it loads, `/ready` on the admin port says why and the
//! webhook port refuses connections at once, so the API server falls back to its
//! `failurePolicy` instead of waiting.

pub mod annotations;
pub mod review;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::tls::InboundTlsConfig;
use crate::inject::SidecarArgs;
use crate::telemetry::LogFormat;
use crate::tls::{ServerTls, TlsMetrics};
use annotations::Defaults;
use review::Decision;

/// The API server sends objects of at most 3 MiB; a review carries one or two.
const MAX_REVIEW_BYTES: usize = 8 << 20;
/// Past [`MAX_REVIEW_BYTES`], the rest of a body is read and dropped up to here, so
/// that the client reads the answer instead of a reset stream.
const MAX_DISCARD_BYTES: usize = 64 << 20;
/// A whole request, head and body: the API server's own webhook timeout is at most 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a certificate that did not load is tried again.
const RETRY_TLS: Duration = Duration::from_secs(2);

/// Flags of `breakwater injector`. Flags after its own are the sidecar's, as for
/// `breakwater inject`: what every injected pod gets unless its annotations say
/// otherwise.
#[derive(Args, Debug, Clone)]
pub struct InjectorArgs {
    /// Where the webhook listens (HTTPS, `POST /inject`).
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR")]
    pub listen_addr: SocketAddr,

    /// The webhook's certificate chain (PEM), re-read when the file changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,

    /// The webhook's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,

    /// Plain HTTP: `/live`, `/ready` (200 once the certificate is loaded) and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9090", value_name = "ADDR")]
    pub admin_addr: SocketAddr,

    /// After SIGTERM, how long to keep answering while `/ready` says 503, so that the
    /// Service stops sending reviews here before the webhook goes.
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub drain_delay: Duration,

    /// Log format: json or text.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Check the flags and the certificate, print the sidecar's args, and exit.
    #[arg(long)]
    pub check: bool,

    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// Runs the subcommand until SIGTERM or SIGINT.
pub fn main(args: InjectorArgs) -> ExitCode {
    let defaults = match Defaults::new(args.sidecar.clone()) {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    let tls = InboundTlsConfig {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: None,
        identity_header: None,
    };
    if args.check {
        if let Err(e) = ServerTls::load(&tls, &TlsMetrics::register(&Registry::new())) {
            let flag = match e.path() {
                Some(p) if p == tls.key => "--tls-key",
                _ => "--tls-cert",
            };
            return fail(&format!("{flag}: {e}"));
        }
        let plan = defaults.plan();
        let args = crate::inject::pod::run_args(
            plan,
            plan.app_port
                .unwrap_or(crate::inject::pod::DEFAULT_APP_PORT),
        );
        println!("sidecar: breakwater {}", args.join(" "));
        eprintln!("breakwater injector: configuration ok");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = crate::telemetry::init(args.log_format, &args.log_level, false) {
        return fail(&e.to_string());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("breakwater-injector")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(serve(args, defaults, tls))
}

async fn serve(args: InjectorArgs, defaults: Defaults, tls: InboundTlsConfig) -> ExitCode {
    let webhook = match TcpListener::bind(args.listen_addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("--listen-addr {}: {e}", args.listen_addr)),
    };
    let admin = match TcpListener::bind(args.admin_addr).await {
        Ok(l) => l,
        Err(e) => return fail(&format!("--admin-addr {}: {e}", args.admin_addr)),
    };
    let registry = Registry::new();
    let injector = Arc::new(Injector {
        defaults,
        metrics: InjectorMetrics::register(&registry),
        tls_metrics: TlsMetrics::register(&registry),
        registry,
        tls: Mutex::new(None),
        not_ready: Mutex::new(Some("the certificate is not loaded yet".into())),
    });
    info!(
        listen = %args.listen_addr,
        admin = %args.admin_addr,
        "breakwater injector started"
    );
    tokio::spawn(load_tls(injector.clone(), tls));
    tokio::spawn(serve_admin(injector.clone(), admin));
    let accept = tokio::spawn(serve_webhook(injector.clone(), webhook));
    crate::drain::shutdown_signal().await;
    info!(delay = ?args.drain_delay, "stopping: /ready answers 503 until the delay is over");
    injector.set_not_ready(Some("stopping".into()));
    tokio::time::sleep(args.drain_delay).await;
    accept.abort();
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("breakwater injector: {message}");
    ExitCode::from(2)
}

/// The webhook's shared state.
struct Injector {
    defaults: Defaults,
    metrics: InjectorMetrics,
    tls_metrics: TlsMetrics,
    registry: Registry,
    /// The server certificate, once it loaded.
    tls: Mutex<Option<Arc<ServerTls>>>,
    /// Why `/ready` says 503; `None` when ready.
    not_ready: Mutex<Option<String>>,
}

impl Injector {
    fn set_not_ready(&self, why: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn not_ready(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Tries the certificate until it loads; from then on it follows its files.
async fn load_tls(injector: Arc<Injector>, cfg: InboundTlsConfig) {
    loop {
        let attempt = {
            let (cfg, metrics) = (cfg.clone(), injector.tls_metrics.clone());
            tokio::task::spawn_blocking(move || ServerTls::load(&cfg, &metrics)).await
        };
        match attempt {
            Ok(Ok(tls)) => {
                *injector.tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls);
                injector.set_not_ready(None);
                info!("webhook certificate loaded");
                return;
            }
            Ok(Err(e)) => {
                let why = format!("the certificate cannot be loaded: {e}");
                warn!(error = %e, "webhook certificate not loaded; retrying");
                injector.set_not_ready(Some(why));
            }
            Err(e) => warn!(error = %e, "certificate loading task failed"),
        }
        tokio::time::sleep(RETRY_TLS).await;
    }
}

/// The next connection; a failed accept (out of descriptors) is logged and tried
/// again shortly, not the end of the listener.
async fn accept(listener: &TcpListener, what: &str) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_webhook(injector: Arc<Injector>, listener: TcpListener) {
    loop {
        let stream = accept(&listener, "webhook").await;
        // No certificate yet: close at once, so the API server does not wait.
        let Some(tls) = injector.tls() else {
            drop(stream);
            continue;
        };
        let injector = injector.clone();
        tokio::spawn(async move {
            let stream = match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "webhook handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let injector = injector.clone();
                async move { Ok::<_, Infallible>(injector.webhook(req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "webhook connection ended with an error");
            }
        });
    }
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// The request body, whole, or why not.
async fn read_review(mut body: Incoming) -> Result<Bytes, String> {
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the review could not be read: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= MAX_REVIEW_BYTES {
            kept.extend_from_slice(&data);
        } else if seen > MAX_DISCARD_BYTES {
            break;
        }
    }
    if seen > MAX_REVIEW_BYTES {
        return Err(format!("the review is over {MAX_REVIEW_BYTES} bytes"));
    }
    Ok(kept.freeze())
}

impl Injector {
    async fn webhook(&self, req: Request<Incoming>) -> Response<Body> {
        let text = "text/plain; charset=utf-8";
        if req.uri().path() != "/inject" {
            return respond(
                StatusCode::NOT_FOUND,
                text,
                "POST AdmissionReviews to /inject\n",
            );
        }
        if req.method() != Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, text, "POST only\n");
        }
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, read_review(req.into_body())).await {
            Ok(Ok(bytes)) => self.answer(started, review::review(&bytes, &self.defaults)),
            Ok(Err(why)) => self.answer(started, review::unreadable(why)),
            Err(_) => {
                let why = format!("the review did not arrive within {REQUEST_TIMEOUT:?}");
                self.answer(started, review::unreadable(why))
            }
        }
    }

    fn answer(&self, started: Instant, answer: review::Answer) -> Response<Body> {
        let decision = answer.decision.as_str();
        self.metrics.reviews.with_label_values(&[decision]).inc();
        self.metrics
            .duration
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        match (&answer.decision, &answer.why) {
            (Decision::Injected, _) => info!(pod = %answer.pod, "injected"),
            (Decision::Denied | Decision::Invalid, Some(why)) => {
                warn!(pod = %answer.pod, decision, why = %why, "not injected")
            }
            (_, why) => {
                let why = why.as_deref().unwrap_or("");
                info!(pod = %answer.pod, decision, why, "not injected")
            }
        }
        match serde_json::to_vec(&answer.review) {
            Ok(body) => respond(StatusCode::OK, "application/json", body),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot write the review: {e}\n"),
            ),
        }
    }
}

struct InjectorMetrics {
    reviews: IntCounterVec,
    duration: HistogramVec,
}

impl InjectorMetrics {
    fn register(registry: &Registry) -> Self {
        let reviews = crate::metrics::register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_injector_reviews_total",
                    "Admission reviews answered, by outcome (injected, skipped, denied, invalid).",
                ),
                &["outcome"],
            ),
        );
        for d in Decision::ALL {
            reviews.with_label_values(&[d.as_str()]);
        }
        let duration = crate::metrics::register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "breakwater_injector_review_duration_seconds",
                    "Time to answer an admission review, from its first byte read.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0]),
                &["outcome"],
            ),
        );
        InjectorMetrics { reviews, duration }
    }
}

async fn serve_admin(injector: Arc<Injector>, listener: TcpListener) {
    loop {
        let stream = accept(&listener, "admin").await;
        let injector = injector.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let injector = injector.clone();
                async move { Ok::<_, Infallible>(injector.admin(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

impl Injector {
    fn admin(&self, req: &Request<Incoming>) -> Response<Body> {
        let text = "text/plain; charset=utf-8";
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, text, "GET only\n");
        }
        match req.uri().path() {
            "/live" => respond(StatusCode::OK, text, "live\n"),
            "/ready" => match self.not_ready() {
                None => respond(StatusCode::OK, text, "ready\n"),
                Some(why) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                let mut out = String::new();
                let _ = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    out,
                )
            }
            _ => respond(StatusCode::NOT_FOUND, text, "/live, /ready, /metrics\n"),
        }
    }
}
