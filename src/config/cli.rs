//! The flags of `breakwater run` (and `demo`, `init-iptables`), as clap reads them;
//! the command itself is in [`crate::cli`].
//!
//! Flag names are a contract (see DESIGN.md): the Helm chart, the README and users
//! rely on them. Each flag of `run` can also be set by `BREAKWATER_<FLAG>`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser};

use super::route::RouteOverride;
use crate::addr::Cidr;
use crate::policy::hedge::{self, HedgeAfter};
use crate::policy::limits::ConcurrencyLimit;
use crate::policy::mode::Mode;
use crate::policy::rate_limit::RateLimit;
use crate::policy::retry::RetryOn;
use crate::units::{
    parse_bytes, parse_duration, parse_per_second, parse_percent, parse_positive_duration,
};

pub use crate::telemetry::LogFormat;

/// Flags of `breakwater run`, as typed; [`super::Config`] is what they mean once validated.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Validate the flags, print the effective configuration and exit.
    #[arg(long, env = "BREAKWATER_CHECK")]
    pub check: bool,

    /// Listener for traffic into the pod.
    #[arg(long, env = "BREAKWATER_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,

    /// The local application that inbound traffic is handed to.
    #[arg(long, env = "BREAKWATER_APP_ADDR", default_value = "127.0.0.1:8080")]
    pub app_addr: SocketAddr,

    /// The HTTP version spoken to the app: auto (HTTP/1.1 requests as HTTP/1.1; HTTP/2
    /// requests as HTTP/2 once the app has shown it speaks it, else translated to
    /// HTTP/1.1), h1, or h2 (prior knowledge, e.g. a gRPC-only app).
    #[arg(
        long,
        value_enum,
        env = "BREAKWATER_APP_PROTOCOL",
        default_value = "auto"
    )]
    pub app_protocol: crate::config::Protocol,

    /// Listener for traffic out of the app (point HTTP_PROXY here).
    #[arg(
        long,
        env = "BREAKWATER_OUTBOUND_ADDR",
        default_value = "127.0.0.1:15001"
    )]
    pub outbound_addr: SocketAddr,

    /// Admin endpoint: /live, /ready, /metrics, /config.
    #[arg(long, env = "BREAKWATER_ADMIN_ADDR", default_value = "0.0.0.0:15000")]
    pub admin_addr: SocketAddr,

    /// Overall deadline of a request, until the response headers arrive.
    #[arg(long, env = "BREAKWATER_TIMEOUT", default_value = "15s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// TCP connect timeout to an upstream (and to the app).
    #[arg(long, env = "BREAKWATER_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// On SIGTERM: how long listeners keep accepting after /ready turns 503, so that
    /// endpoint controllers and kube-proxy stop sending before breakwater stops listening.
    #[arg(long, env = "BREAKWATER_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// HTTP path probed on the app with GET (2xx and 3xx are healthy) [default: none, a
    /// TCP connect to --app-addr].
    #[arg(long, env = "BREAKWATER_APP_HEALTH_PATH", value_parser = parse_health_path)]
    pub app_health_path: Option<String>,

    /// Time between app health probes.
    #[arg(long, env = "BREAKWATER_APP_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub app_health_interval: Duration,

    /// Time one probe may take before it counts as a failure.
    #[arg(long, env = "BREAKWATER_APP_HEALTH_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub app_health_timeout: Duration,

    /// Successful probes in a row that make the app healthy.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_APP_HEALTH_HEALTHY_THRESHOLD", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub app_health_healthy_threshold: u32,

    /// Failed probes in a row that make the app unhealthy.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_APP_HEALTH_UNHEALTHY_THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub app_health_unhealthy_threshold: u32,

    /// On SIGTERM or SIGINT: everything ends within this time, the drain delay included.
    #[arg(long, env = "BREAKWATER_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Retries after the first attempt (0 turns retries off).
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_RETRIES",
        default_value_t = 2
    )]
    pub retries: u32,

    /// What is worth a retry: connect-failure, reset, gateway-error (502, 503, 504), 5xx,
    /// 429, unavailable (gRPC status 14), or status codes; a comma list.
    #[arg(long, env = "BREAKWATER_RETRY_ON", default_value = "connect-failure,reset,gateway-error", value_parser = RetryOn::parse)]
    pub retry_on: RetryOn,

    /// Base of the exponential backoff between attempts (full jitter).
    #[arg(long, env = "BREAKWATER_RETRY_BACKOFF", default_value = "25ms", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Longest backoff between attempts.
    #[arg(long, env = "BREAKWATER_RETRY_BACKOFF_MAX", default_value = "250ms", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Deadline of one attempt; a per-try timeout counts as a retryable failure [default: none].
    #[arg(long, env = "BREAKWATER_PER_TRY_TIMEOUT", value_parser = parse_positive_duration)]
    pub per_try_timeout: Option<Duration>,

    /// Retries allowed as a percentage of requests, per destination, over 10 s.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_RETRY_BUDGET", default_value = "20", value_parser = parse_percent)]
    pub retry_budget: f32,

    /// Retries per second always allowed, per destination.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_RETRY_BUDGET_MIN", default_value = "10", value_parser = parse_per_second)]
    pub retry_budget_min: u32,

    /// Largest request body kept for replay; a larger body is not retried once sent.
    #[arg(long, env = "BREAKWATER_RETRY_BODY_LIMIT", default_value = "64KiB", value_parser = parse_bytes)]
    pub retry_body_limit: usize,

    /// What the retry budget does when spent: enforce (skip the retry) or observe
    /// (retry anyway, count breakwater_observed_total).
    #[arg(long, env = "BREAKWATER_RETRY_BUDGET_MODE", default_value = "enforce", value_parser = Mode::parse)]
    pub retry_budget_mode: Mode,

    /// Hedge an idempotent request without a body: when its first attempt has no
    /// response head after this long (a duration, or pNN: the destination's own
    /// recent latency quantile), a second copy goes and the first good answer wins
    /// [default: none, no hedging].
    #[arg(long, env = "BREAKWATER_HEDGE_AFTER", value_parser = HedgeAfter::parse)]
    pub hedge_after: Option<HedgeAfter>,

    /// Hedges allowed as a percentage of requests, per destination, over 10 s
    /// (plus one a second).
    #[arg(long, env = "BREAKWATER_HEDGE_BUDGET", default_value = "10", value_parser = hedge::parse_budget)]
    pub hedge_budget: f32,

    /// A YAML policy file (a mounted ConfigMap): defaults and routes, re-read when it
    /// changes; its keys win over the flags (see /config).
    #[arg(long, env = "BREAKWATER_POLICY_FILE")]
    pub policy_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub breaker: BreakerArgs,

    #[command(flatten)]
    pub bulkhead: BulkheadArgs,

    #[command(flatten)]
    pub rate_limit: RateLimitArgs,

    /// A route: HOST[:PORT],key=value,... (repeatable; HOST * for any host); the first
    /// that matches a request wins. Keys: what it matches (direction=outbound|inbound,
    /// path, path-prefix, method, header=NAME or NAME:VALUE, name = the `route` label),
    /// and any policy flag's name without `--` (the README's "Policy keys" table), plus
    /// protocol=auto|h1|h2 and tls=true. retry-on conditions are joined by '+'. In the
    /// env var, separate routes with ';'.
    #[arg(long = "route", env = "BREAKWATER_ROUTE", value_delimiter = ';', value_parser = RouteOverride::parse)]
    pub routes: Vec<RouteOverride>,

    /// Worker threads [default: the CPUs this container may use, cgroup quota included].
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_THREADS")]
    pub threads: Option<usize>,

    /// Log line format.
    #[arg(
        long,
        env = "BREAKWATER_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// Log filter: a level (off, error, warn, info, debug, trace), or a comma list of
    /// levels and TARGET=LEVEL directives (info,breakwater::listener=debug).
    #[arg(long, env = "BREAKWATER_LOG_LEVEL", default_value = "info", value_parser = crate::telemetry::parse_log_level)]
    pub log_level: String,

    /// Log one line per request (target breakwater::access), with its trace or request id.
    #[arg(long, env = "BREAKWATER_ACCESS_LOG")]
    pub access_log: bool,

    /// Largest request head (request line and headers) a client may send; larger gets 431.
    #[arg(long, env = "BREAKWATER_MAX_REQUEST_HEADER_BYTES", default_value = "60KiB", value_parser = parse_bytes)]
    pub max_request_header_bytes: usize,

    /// Most header fields in one request; more gets 431.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_MAX_REQUEST_HEADERS",
        default_value_t = 100
    )]
    pub max_request_headers: usize,

    /// Longest request target (URI); longer gets 414.
    #[arg(long, env = "BREAKWATER_MAX_URI_BYTES", default_value = "8KiB", value_parser = parse_bytes)]
    pub max_uri_bytes: usize,

    /// A client that started a request must finish sending its headers within this time.
    #[arg(long, env = "BREAKWATER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// A client connection with no request in flight is closed after this time.
    #[arg(long, env = "BREAKWATER_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// A request or response body, CONNECT tunnel or upgraded connection that
    /// moves no bytes for this long is cut (a stalled upstream body counts as the
    /// endpoint's failure); 0s turns it off. Long streams that move are never cut.
    #[arg(long, env = "BREAKWATER_STREAM_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,

    /// Client connections accepted at once, per listener; more are closed at accept.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// On a connection redirected by iptables: how long to wait for the client's
    /// first bytes to tell HTTP from other TCP. A client that says nothing (a
    /// server-first protocol) is relayed as opaque TCP after this; exclude such
    /// ports in init-iptables to skip the wait.
    #[arg(long, env = "BREAKWATER_PROTOCOL_DETECT_TIMEOUT", default_value = "500ms", value_parser = parse_positive_duration)]
    pub protocol_detect_timeout: Duration,

    /// Inbound TLS: the listener's certificate chain (PEM); with --inbound-tls-key,
    /// the inbound listener speaks HTTPS (ALPN h2 and http/1.1). Re-read on change.
    #[arg(long, env = "BREAKWATER_INBOUND_TLS_CERT")]
    pub inbound_tls_cert: Option<std::path::PathBuf>,

    /// Inbound TLS: the private key of --inbound-tls-cert (PEM).
    #[arg(long, env = "BREAKWATER_INBOUND_TLS_KEY")]
    pub inbound_tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS inbound: clients must present a certificate signed by this CA (PEM).
    #[arg(long, env = "BREAKWATER_INBOUND_TLS_CLIENT_CA")]
    pub inbound_tls_client_ca: Option<std::path::PathBuf>,

    /// Header that carries the verified client certificate's identity (URI SAN,
    /// else DNS SAN, else subject) to the app; stripped from incoming requests.
    #[arg(long, env = "BREAKWATER_INBOUND_TLS_IDENTITY_HEADER")]
    pub inbound_tls_identity_header: Option<String>,

    /// Outbound TLS (`--route HOST,tls=true`): verify upstreams against this CA
    /// (PEM) instead of the system roots.
    #[arg(long, env = "BREAKWATER_OUTBOUND_TLS_CA")]
    pub outbound_tls_ca: Option<std::path::PathBuf>,

    /// Outbound mutual TLS: the client certificate chain presented to upstreams (PEM).
    #[arg(long, env = "BREAKWATER_OUTBOUND_TLS_CERT")]
    pub outbound_tls_cert: Option<std::path::PathBuf>,

    /// Outbound mutual TLS: the private key of --outbound-tls-cert (PEM).
    #[arg(long, env = "BREAKWATER_OUTBOUND_TLS_KEY")]
    pub outbound_tls_key: Option<std::path::PathBuf>,

    /// Pooled upstream connections idle longer than this are closed.
    #[arg(long, env = "BREAKWATER_UPSTREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub upstream_idle_timeout: Duration,

    /// How long a resolved DNS name is reused before it is looked up again.
    #[arg(long, env = "BREAKWATER_DNS_TTL", default_value = "5s", value_parser = parse_duration)]
    pub dns_ttl: Duration,

    /// Where an outbound destination's endpoints come from: dns (its addresses; a
    /// Kubernetes Service is then one ClusterIP) or kubernetes (the ready pods of its
    /// Service, watched in EndpointSlices; DNS for anything else, or while the API
    /// cannot be used).
    #[arg(long, value_enum, env = "BREAKWATER_DISCOVERY", default_value = "dns")]
    pub discovery: crate::config::DiscoveryMode,

    /// With --discovery kubernetes: namespaces whose Services are watched so that a
    /// ClusterIP maps to its pods (comma list) [default: the pod's own namespace].
    #[arg(long, env = "BREAKWATER_DISCOVERY_NAMESPACES", value_delimiter = ',')]
    pub discovery_namespaces: Vec<String>,

    /// With --discovery kubernetes: the API server's URL [default: in-cluster, from
    /// the pod's service account].
    #[arg(long, env = "BREAKWATER_KUBERNETES_API")]
    pub kubernetes_api: Option<String>,

    /// HTTP/2 connections opened to one endpoint, requests spread over them: behind a
    /// ClusterIP, kube-proxy picks a pod per connection, so more than one spreads
    /// HTTP/2 and gRPC calls over pods.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_H2_CONNECTIONS_PER_ENDPOINT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub h2_connections_per_endpoint: u64,

    /// Pooled upstream connections are replaced after this age (up to 10 % sooner, at
    /// random), so new pods behind a ClusterIP get traffic after a scale-up; 0s: never.
    #[arg(long, env = "BREAKWATER_UPSTREAM_MAX_CONNECTION_AGE", default_value = "5m", value_parser = parse_duration)]
    pub upstream_max_connection_age: Duration,

    /// A new or recovered endpoint's share of requests ramps up over this time, so
    /// a cold pod is not flooded the moment it turns ready: linearly from 10 %, for
    /// an endpoint that joins a destination's endpoints after their first resolution
    /// or whose circuit closes again. 0s: off, the default, since pods added to
    /// relieve an overload are wanted at once and most servers need no warm-up; set
    /// it for JIT-compiled or cache-warming apps.
    #[arg(long, env = "BREAKWATER_SLOW_START", default_value = "0s", value_parser = parse_duration)]
    pub slow_start: Duration,

    /// Distinct `destination` label values in metrics; further destinations share "other".
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_METRICS_MAX_DESTINATIONS",
        default_value_t = 100
    )]
    pub metrics_max_destinations: usize,

    /// Destinations whose state (breakers, retry budget, pooled connections,
    /// limits) is kept; past it, the least recently used idle ones make room.
    #[arg(
        long,
        env = "BREAKWATER_MAX_DESTINATIONS",
        default_value_t = 10_000,
        value_parser = parse_max_destinations
    )]
    pub max_destinations: usize,

    /// Distinct `endpoint` label values of breakwater_circuit_state; further
    /// endpoints share "other" under their destination.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_METRICS_MAX_ENDPOINTS",
        default_value_t = crate::metrics::DEFAULT_MAX_ENDPOINTS
    )]
    pub metrics_max_endpoints: usize,

    /// An outbound destination with no request for this long is forgotten
    /// (its breakers, pools and metric series); `0s`: never.
    #[arg(long, env = "BREAKWATER_DESTINATION_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub destination_idle_timeout: Duration,

    /// Export spans over OTLP/HTTP (protobuf) to this collector URL
    /// (`http://HOST:PORT`; `/v1/traces` is added to an empty path) [default:
    /// none, tracing off].
    #[arg(long, env = "BREAKWATER_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<http::Uri>,

    /// Share of requests without a trace context that start a trace (0 to 1).
    /// Requests with a context follow its sampled flag. 0 by default: a sidecar
    /// on every pod would otherwise start traces nobody asked for, at every hop.
    #[arg(long, env = "BREAKWATER_TRACE_SAMPLE_RATIO", default_value = "0", value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,

    /// Also export requests that breakwater answered itself with an error, when
    /// they were not sampled (unless their caller said not to sample them).
    #[arg(long, env = "BREAKWATER_TRACE_ERRORS")]
    pub trace_errors: bool,

    /// The `service.name` of breakwater's spans.
    #[arg(long, env = "BREAKWATER_SERVICE_NAME", default_value = "breakwater")]
    pub service_name: String,

    /// The pod's name, for the spans' `k8s.pod.name` (the chart sets it from the
    /// downward API).
    #[arg(long, env = "BREAKWATER_POD_NAME")]
    pub pod_name: Option<String>,

    /// The pod's namespace, for the spans' `k8s.namespace.name`.
    #[arg(long, env = "BREAKWATER_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
}

/// An OTLP/HTTP collector URL: `http://HOST[:PORT][/PATH]`; an empty path
/// becomes `/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` does.
fn parse_otlp_endpoint(s: &str) -> Result<http::Uri, FlagValueError> {
    let bad = |why: &'static str| FlagValueError::NotAnEndpoint(s.into(), why);
    let uri: http::Uri = s.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported yet: use the collector's http port",
            ));
        }
        _ => return Err(bad("the scheme must be http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    let path = uri.path();
    if path.is_empty() || path == "/" {
        let authority = uri.authority().map_or("", |a| a.as_str());
        return format!("http://{authority}/v1/traces")
            .parse()
            .map_err(|_| bad("not a URL"));
    }
    Ok(uri)
}

/// A ratio from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, FlagValueError> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(FlagValueError::NotARatio(s.into())),
    }
}

/// `--max-destinations`: at least one, or no destination would keep the
/// breaker memory and budget it learns.
fn parse_max_destinations(s: &str) -> Result<usize, FlagValueError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(FlagValueError::NotACount(s.into())),
    }
}

/// A health path is an absolute path: `/healthz`.
fn parse_health_path(s: &str) -> Result<String, FlagValueError> {
    if !s.starts_with('/') || s.contains(char::is_whitespace) {
        return Err(FlagValueError::NotAPath(s.into()));
    }
    s.parse::<http::uri::PathAndQuery>()
        .map_err(|error| FlagValueError::BadPath {
            path: s.into(),
            error,
        })?;
    Ok(s.to_string())
}

/// Why a value of one of the flags parsed here (not in `units`) is refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagValueError {
    #[error("'{0}' is not an absolute path like /healthz")]
    NotAPath(String),
    #[error("'{path}': {error}")]
    BadPath {
        path: String,
        error: http::uri::InvalidUri,
    },
    #[error("'{0}' is not a percentage from 0 to 100")]
    NotARate(String),
    #[error("'{0}': {1} (e.g. http://otel-collector:4318)")]
    NotAnEndpoint(String, &'static str),
    #[error("'{0}' is not a ratio from 0 to 1")]
    NotARatio(String),
    #[error("'{0}' is not a count of at least 1")]
    NotACount(String),
}

/// Circuit breaker flags (per endpoint of each destination).
#[derive(Args, Debug, Clone)]
pub struct BreakerArgs {
    /// Failures in a row that open an endpoint's circuit (0 turns the rule off).
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_BREAKER_CONSECUTIVE_FAILURES",
        default_value_t = 5
    )]
    pub breaker_consecutive_failures: u32,

    /// Percentage of failures in the window that opens it (0 turns the rule off).
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_BREAKER_FAILURE_RATE", default_value = "50", value_parser = parse_rate)]
    pub breaker_failure_rate: u8,

    /// Sliding window for the failure rate.
    #[arg(long, env = "BREAKWATER_BREAKER_WINDOW", default_value = "10s", value_parser = parse_positive_duration)]
    pub breaker_window: Duration,

    /// Requests in the window before the rates count.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_BREAKER_MIN_REQUESTS",
        default_value_t = 20
    )]
    pub breaker_min_requests: u32,

    /// Time open before a half-open probe; doubles on repeated trips, up to 10x.
    #[arg(long, env = "BREAKWATER_BREAKER_OPEN_DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    pub breaker_open_duration: Duration,

    /// Probes let through while half-open.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_BREAKER_HALF_OPEN_REQUESTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_half_open_requests: u32,

    /// A call at least this slow counts as slow [default: none, no slow-call rule].
    #[arg(long, env = "BREAKWATER_BREAKER_SLOW_CALL", value_parser = parse_positive_duration)]
    pub breaker_slow_call: Option<Duration>,

    /// Percentage of slow calls in the window that opens the circuit.
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_BREAKER_SLOW_CALL_RATE", default_value = "100", value_parser = parse_rate)]
    pub breaker_slow_call_rate: u8,

    /// Most endpoints of a destination ejected at once, in percent (one always may be).
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_MAX_EJECTION_PERCENT", default_value = "50", value_parser = parse_rate)]
    pub max_ejection_percent: u8,

    /// What an open circuit does: enforce (refuse with 503 circuit-open) or observe
    /// (let the request through, count breakwater_observed_total).
    #[arg(long, env = "BREAKWATER_BREAKER_MODE", default_value = "enforce", value_parser = Mode::parse)]
    pub breaker_mode: Mode,
}

/// Bulkhead flags.
#[derive(Args, Debug, Clone)]
pub struct BulkheadArgs {
    /// Requests in flight per destination, or `auto` to find the limit from latency.
    #[arg(long, env = "BREAKWATER_MAX_CONCURRENT", default_value = "1024", value_parser = ConcurrencyLimit::parse)]
    pub max_concurrent: ConcurrencyLimit,

    /// Lowest limit `--max-concurrent auto` may set.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_MAX_CONCURRENT_MIN",
        default_value_t = 4
    )]
    pub max_concurrent_min: usize,

    /// Highest limit `--max-concurrent auto` may set.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_MAX_CONCURRENT_MAX",
        default_value_t = 1024
    )]
    pub max_concurrent_max: usize,

    /// Requests waiting for a bulkhead slot (FIFO); 0 refuses at once when full.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_MAX_QUEUE",
        default_value_t = 0
    )]
    pub max_queue: usize,

    /// Longest wait in that queue.
    #[arg(long, env = "BREAKWATER_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub queue_timeout: Duration,

    /// What a full bulkhead (outbound, and in front of the app) does: enforce (refuse
    /// with 503) or observe (let the request through, count breakwater_observed_total).
    #[arg(long, env = "BREAKWATER_BULKHEAD_MODE", default_value = "enforce", value_parser = Mode::parse)]
    pub bulkhead_mode: Mode,

    /// Bulkhead in front of the app: requests in flight [default: none, no limit].
    #[arg(long, allow_negative_numbers = true, env = "BREAKWATER_INBOUND_MAX_CONCURRENT", value_parser = clap::value_parser!(u64).range(1..))]
    pub inbound_max_concurrent: Option<u64>,

    /// Requests waiting for a slot in front of the app.
    #[arg(
        long,
        allow_negative_numbers = true,
        env = "BREAKWATER_INBOUND_MAX_QUEUE",
        default_value_t = 0
    )]
    pub inbound_max_queue: usize,

    /// Longest wait in that queue.
    #[arg(long, env = "BREAKWATER_INBOUND_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub inbound_queue_timeout: Duration,
}

/// Rate-limit flags.
#[derive(Args, Debug, Clone)]
pub struct RateLimitArgs {
    /// Requests per second each outbound destination may get, RPS[/BURST] (BURST:
    /// how many at once; default a tenth of a second's worth); over it, 429
    /// rate-limited [default: none, no limit].
    #[arg(long, env = "BREAKWATER_RATE_LIMIT", value_parser = RateLimit::parse)]
    pub rate_limit: Option<RateLimit>,

    /// Requests per second the app may get, RPS[/BURST] [default: none, no limit].
    #[arg(long, env = "BREAKWATER_INBOUND_RATE_LIMIT", value_parser = RateLimit::parse)]
    pub inbound_rate_limit: Option<RateLimit>,

    /// What a spent rate limit does: enforce (answer 429) or observe (let the
    /// request through, count breakwater_observed_total).
    #[arg(long, env = "BREAKWATER_RATE_LIMIT_MODE", default_value = "enforce", value_parser = Mode::parse)]
    pub rate_limit_mode: Mode,
}

/// A percentage from 0 to 100.
fn parse_rate(s: &str) -> Result<u8, FlagValueError> {
    match s.trim().trim_end_matches('%').parse::<u8>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(FlagValueError::NotARate(s.into())),
    }
}

/// Flags of `breakwater init-iptables`.
#[derive(Args, Debug, Clone)]
pub struct InitIptablesArgs {
    /// Where inbound TCP to the pod is redirected (breakwater's inbound listener).
    #[arg(long, env = "BREAKWATER_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Where outbound TCP from the pod is redirected (breakwater's outbound listener).
    #[arg(long, env = "BREAKWATER_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// The admin port: never redirected, so probes and scrapes reach breakwater itself.
    #[arg(long, env = "BREAKWATER_ADMIN_PORT", default_value_t = 15000)]
    pub admin_port: u16,

    /// breakwater's own user id: its connections are not redirected back to it.
    #[arg(long, env = "BREAKWATER_PROXY_UID", default_value_t = 1717)]
    pub proxy_uid: u32,

    /// Inbound ports left alone (comma list).
    #[arg(long, env = "BREAKWATER_EXCLUDE_INBOUND_PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,

    /// Outbound destination ports left alone (comma list), e.g. server-first protocols.
    #[arg(long, env = "BREAKWATER_EXCLUDE_OUTBOUND_PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,

    /// Outbound destination ranges left alone (comma list of address/prefix).
    #[arg(long, env = "BREAKWATER_EXCLUDE_OUTBOUND_CIDRS", value_delimiter = ',', value_parser = Cidr::parse)]
    pub exclude_outbound_cidrs: Vec<Cidr>,

    /// Print the rules and commands instead of applying them.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove every rule and chain init-iptables added.
    #[arg(long)]
    pub clean: bool,
}

/// The scenes of `breakwater demo`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scene {
    /// flaky, outage, slow-tail and overload, one after the other.
    All,
    /// 503s and dropped connections: retries.
    Flaky,
    /// The service goes down hard and returns: the circuit breaker.
    Outage,
    /// A few answers stall: the per-try timeout and hedging.
    SlowTail,
    /// More load than the service can take: the adaptive concurrency limit.
    Overload,
    /// A migration: a traffic split and a mirror.
    Strangler,
}

/// Flags of `breakwater demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// The scene to run; all runs every one but strangler, in about 30 s.
    #[arg(long, value_enum, default_value = "all")]
    pub scene: Scene,

    /// Load time of each side of a scene (direct, through breakwater) [default:
    /// the scene's own, 2-4.5 s; outage takes at least its 4.5 s]; for strangler,
    /// the whole run, through breakwater [default: 10s].
    #[arg(long, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,

    /// Concurrent clients driving load (the overload scene has four times as many).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// The same as --scene strangler: an old and a new service, 10 % of the old
    /// one's /orders split to the new one and the rest mirrored to it, and a table
    /// of where requests went and how often the new one answered like the old one.
    #[arg(long, conflicts_with = "scene")]
    pub strangler: bool,
}

impl DemoArgs {
    /// `--scene`, with `--strangler` as the alias it is.
    pub fn scene(&self) -> Scene {
        if self.strangler {
            Scene::Strangler
        } else {
            self.scene
        }
    }
}

/// `breakwater run`'s flags alone, for callers that hold them without the rest
/// of the command line (the loopback defaults, tests).
#[derive(Parser, Debug)]
#[command(name = "breakwater run")]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

/// Parses `run` flags (`args` without the program or subcommand name).
pub fn parse_run_args<I, T>(args: I) -> Result<RunArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("breakwater-run"))
        .chain(args.into_iter().map(Into::into));
    RunOnly::try_parse_from(argv).map(|r| r.args)
}
