//! Validated configuration: raw flags ([`cli::RunArgs`]) become a [`Config`] once,
//! at start-up, and every later stage reads only the validated form.

pub mod cli;
pub mod keys;
pub mod layered;
pub mod policy_file;
pub mod route;
pub mod tls;
pub mod traffic;
pub use crate::units;
pub mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use crate::policy::breaker::BreakerConfig;
pub use crate::policy::hedge::{HedgeAfter, HedgePolicy};
pub use crate::policy::limits::{BulkheadPolicy, ConcurrencyLimit};
pub use crate::policy::mode::{Mode, Modes};
pub use crate::policy::rate_limit::RateLimit;
pub use crate::policy::retry::RetryPolicy;
pub use cli::LogFormat;
pub use route::{Protocol, RequestFacts, RouteDirection, RouteOverride};

/// Everything `breakwater run` needs, checked. Serialized as-is by `GET /config`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub inbound_addr: SocketAddr,
    pub app_addr: SocketAddr,
    /// `--app-protocol`: the HTTP version spoken to the app.
    pub app_protocol: Protocol,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub drain_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub drain_delay: Duration,
    pub app_health: AppHealthConfig,
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    pub max_ejection_percent: u8,
    pub bulkhead: BulkheadPolicy,
    /// The bulkhead in front of the app, if any.
    pub inbound_bulkhead: Option<BulkheadPolicy>,
    /// `--inbound-max-queue` and `--inbound-queue-timeout`, for an inbound
    /// route that sets a limit where the flags set none.
    pub inbound_queue: InboundQueue,
    /// `--hedge-after` and `--hedge-budget`: each outbound destination's, if any.
    pub hedge: Option<HedgePolicy>,
    /// `--hedge-budget`, for a route that sets `hedge-after` alone.
    pub hedge_budget: f32,
    /// `--rate-limit`: each outbound destination's, if any.
    pub rate_limit: Option<RateLimit>,
    /// `--inbound-rate-limit`: the app's, if any.
    pub inbound_rate_limit: Option<RateLimit>,
    /// `--breaker-mode`, `--bulkhead-mode`, `--retry-budget-mode`,
    /// `--rate-limit-mode`.
    pub modes: Modes,
    /// `--policy-file`: defaults and routes over the flags, re-read on change.
    pub policy_file: Option<std::path::PathBuf>,
    pub routes: Vec<RouteOverride>,
    pub threads: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub access_log: bool,
    pub limits: Limits,
    #[serde(serialize_with = "units::serialize_duration")]
    pub protocol_detect_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub upstream_idle_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub dns_ttl: Duration,
    /// `--discovery`, `--discovery-namespaces`, `--kubernetes-api`.
    pub discovery: DiscoveryConfig,
    /// `--h2-connections-per-endpoint`.
    pub h2_connections_per_endpoint: usize,
    /// `--upstream-max-connection-age`; `None`: connections are kept while used.
    #[serde(serialize_with = "units::serialize_opt_duration")]
    pub upstream_max_connection_age: Option<Duration>,
    /// `--slow-start`; zero: off.
    #[serde(serialize_with = "units::serialize_duration")]
    pub slow_start: Duration,
    pub metrics_max_destinations: usize,
    /// `--max-destinations`: states kept per direction.
    pub max_destinations: usize,
    /// `--metrics-max-endpoints`.
    pub metrics_max_endpoints: usize,
    /// `--destination-idle-timeout`; `None`: destinations are kept.
    #[serde(serialize_with = "units::serialize_opt_duration")]
    pub destination_idle_timeout: Option<Duration>,
    /// `--otlp-endpoint` and the sampling flags; `None`: tracing off.
    pub tracing: Option<TracingConfig>,
    /// `--inbound-tls-*`: `None` serves plain HTTP.
    pub inbound_tls: Option<tls::InboundTlsConfig>,
    pub outbound_tls: tls::OutboundTlsConfig,
    /// Combinations that work but do not do what they seem to, logged at start-up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Tracing, on when `--otlp-endpoint` is given.
#[derive(Clone, Debug, Serialize)]
pub struct TracingConfig {
    #[serde(serialize_with = "serialize_uri")]
    pub endpoint: http::Uri,
    pub sample_ratio: f64,
    pub errors: bool,
    pub service_name: String,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

fn serialize_uri<S: serde::Serializer>(uri: &http::Uri, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(uri)
}

/// Where outbound endpoints come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// The destination's DNS addresses (an address literal as it is).
    #[default]
    Dns,
    /// A Kubernetes Service's ready endpoints, from its EndpointSlices.
    Kubernetes,
}

/// `--discovery` and what it needs.
#[derive(Clone, Debug, Serialize)]
pub struct DiscoveryConfig {
    pub mode: DiscoveryMode,
    /// Namespaces watched for ClusterIPs; empty: the pod's own.
    pub namespaces: Vec<String>,
    /// The API server; `None`: in-cluster.
    pub api: Option<String>,
}

/// The queue in front of the app's bulkhead, as the flags set it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct InboundQueue {
    pub max_queue: usize,
    #[serde(serialize_with = "units::serialize_duration")]
    pub queue_timeout: Duration,
}

/// How the app's health is probed.
#[derive(Clone, Debug, Serialize)]
pub struct AppHealthConfig {
    /// `None`: a TCP connect.
    pub path: Option<String>,
    #[serde(serialize_with = "units::serialize_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Limits that protect the proxy from its clients (slowloris, header floods, scans).
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    pub max_uri_bytes: usize,
    #[serde(serialize_with = "units::serialize_duration")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "units::serialize_duration")]
    pub idle_timeout: Duration,
    /// `--stream-idle-timeout`; `None`: `0s`, off.
    #[serde(serialize_with = "units::serialize_opt_duration")]
    pub stream_idle_timeout: Option<Duration>,
    pub max_connections: usize,
}

/// Flags that parse but make no sense; the message names the flag, or the route
/// and both keys.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One flag's value.
    #[error("invalid value for {flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    /// Values valid one by one that cannot work together (see [`validate`]).
    #[error("{0}")]
    Conflict(String),
}

/// hyper's HTTP/1 read buffer cannot be smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

impl Config {
    pub fn from_args(args: cli::RunArgs) -> Result<Self, ConfigError> {
        let err = |flag, reason: &str| ConfigError::Invalid {
            flag,
            reason: reason.to_string(),
        };
        let threads = match args.threads {
            Some(0) => return Err(err("--threads", "must be at least 1")),
            Some(n) => n,
            None => available_cpus(),
        };
        if args.max_request_header_bytes < MIN_HEADER_BYTES {
            return Err(err("--max-request-header-bytes", "must be at least 8KiB"));
        }
        if args.max_request_headers == 0 {
            return Err(err("--max-request-headers", "must be at least 1"));
        }
        if args.max_uri_bytes < 64 {
            return Err(err("--max-uri-bytes", "must be at least 64"));
        }
        if args.max_connections == 0 {
            return Err(err("--max-connections", "must be at least 1"));
        }
        if args.app_addr == args.inbound_addr {
            return Err(err(
                "--app-addr",
                "is the inbound listener itself; requests would loop",
            ));
        }
        let distinct = [
            ("--inbound-addr", args.inbound_addr),
            ("--outbound-addr", args.outbound_addr),
            ("--admin-addr", args.admin_addr),
        ];
        for (i, (flag, addr)) in distinct.iter().enumerate() {
            if addr.port() != 0 && distinct[..i].iter().any(|(_, a)| a == addr) {
                return Err(err(
                    flag,
                    &format!("{addr} is already used by another listener"),
                ));
            }
        }
        let retry = RetryPolicy {
            retries: args.retries,
            retry_on: args.retry_on,
            backoff: args.retry_backoff,
            backoff_max: args.retry_backoff_max,
            per_try_timeout: args.per_try_timeout,
            budget_percent: args.retry_budget,
            budget_min_per_sec: args.retry_budget_min,
            body_limit: args.retry_body_limit,
        };
        let (b, q) = (&args.breaker, &args.bulkhead);
        let breaker = BreakerConfig {
            consecutive_failures: b.breaker_consecutive_failures,
            failure_rate: b.breaker_failure_rate,
            window: b.breaker_window,
            min_requests: b.breaker_min_requests,
            open_duration: b.breaker_open_duration,
            half_open_requests: b.breaker_half_open_requests,
            slow_call: b.breaker_slow_call,
            slow_call_rate: b.breaker_slow_call_rate,
        };
        let bulkhead = BulkheadPolicy {
            max_concurrent: q.max_concurrent,
            min: q.max_concurrent_min,
            max: q.max_concurrent_max,
            max_queue: q.max_queue,
            queue_timeout: q.queue_timeout,
        };
        let inbound_bulkhead = q
            .inbound_max_concurrent
            .map(|n| BulkheadPolicy::fixed(n, q.inbound_max_queue, q.inbound_queue_timeout));
        let inbound_tls = match (args.inbound_tls_cert, args.inbound_tls_key) {
            (Some(cert), Some(key)) => Some(tls::InboundTlsConfig {
                cert,
                key,
                client_ca: args.inbound_tls_client_ca,
                identity_header: args.inbound_tls_identity_header,
            }),
            (None, None) => {
                if args.inbound_tls_client_ca.is_some() {
                    return Err(err(
                        "--inbound-tls-client-ca",
                        "needs --inbound-tls-cert and --inbound-tls-key",
                    ));
                }
                if args.inbound_tls_identity_header.is_some() {
                    return Err(err(
                        "--inbound-tls-identity-header",
                        "needs --inbound-tls-cert and --inbound-tls-key",
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(err(
                    "--inbound-tls-key",
                    "is required with --inbound-tls-cert",
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "--inbound-tls-cert",
                    "is required with --inbound-tls-key",
                ));
            }
        };
        if let Some(name) = inbound_tls
            .as_ref()
            .and_then(|t| t.identity_header.as_ref())
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(err(
                "--inbound-tls-identity-header",
                "is not a valid header name",
            ));
        }
        let outbound_tls = tls::OutboundTlsConfig {
            ca: args.outbound_tls_ca,
            cert: args.outbound_tls_cert,
            key: args.outbound_tls_key,
        };
        if outbound_tls.cert.is_some() != outbound_tls.key.is_some() {
            return Err(err(
                "--outbound-tls-key",
                "--outbound-tls-cert and --outbound-tls-key go together",
            ));
        }
        // A namespace is a DNS-1123 label: a typo would watch nothing, silently.
        let label = |n: &str| {
            !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !n.starts_with('-')
                && !n.ends_with('-')
        };
        if let Some(bad) = args.discovery_namespaces.iter().find(|n| !label(n)) {
            return Err(err(
                "--discovery-namespaces",
                &format!("'{bad}' is not a namespace name (lower-case letters, digits, '-')"),
            ));
        }
        if let Some(url) = &args.kubernetes_api {
            let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(err("--kubernetes-api", "is not an http:// or https:// URL"));
            }
        }
        if let Err(e) = crate::telemetry::parse_log_level(&args.log_level) {
            return Err(err("--log-level", &e.to_string()));
        }
        let mut config = Config {
            inbound_addr: args.inbound_addr,
            app_addr: args.app_addr,
            app_protocol: args.app_protocol,
            outbound_addr: args.outbound_addr,
            admin_addr: args.admin_addr,
            timeout: args.timeout,
            connect_timeout: args.connect_timeout,
            drain_timeout: args.drain_timeout,
            // The delay is part of the drain: a shorter --drain-timeout wins.
            drain_delay: args.drain_delay.min(args.drain_timeout),
            app_health: AppHealthConfig {
                path: args.app_health_path,
                interval: args.app_health_interval,
                timeout: args.app_health_timeout,
                healthy_threshold: args.app_health_healthy_threshold,
                unhealthy_threshold: args.app_health_unhealthy_threshold,
            },
            retry,
            breaker,
            max_ejection_percent: args.breaker.max_ejection_percent,
            bulkhead,
            inbound_bulkhead,
            inbound_queue: InboundQueue {
                max_queue: q.inbound_max_queue,
                queue_timeout: q.inbound_queue_timeout,
            },
            modes: Modes {
                breaker: args.breaker.breaker_mode,
                bulkhead: args.bulkhead.bulkhead_mode,
                retry_budget: args.retry_budget_mode,
                rate_limit: args.rate_limit.rate_limit_mode,
            },
            hedge: args.hedge_after.map(|after| HedgePolicy {
                after,
                budget_percent: args.hedge_budget,
            }),
            hedge_budget: args.hedge_budget,
            rate_limit: args.rate_limit.rate_limit,
            inbound_rate_limit: args.rate_limit.inbound_rate_limit,
            policy_file: args.policy_file,
            routes: args.routes,
            threads,
            log_format: args.log_format,
            log_level: args.log_level,
            access_log: args.access_log,
            limits: Limits {
                max_request_header_bytes: args.max_request_header_bytes,
                max_request_headers: args.max_request_headers,
                max_uri_bytes: args.max_uri_bytes,
                header_read_timeout: args.header_read_timeout,
                idle_timeout: args.idle_timeout,
                stream_idle_timeout: Some(args.stream_idle_timeout).filter(|d| !d.is_zero()),
                max_connections: args.max_connections,
            },
            protocol_detect_timeout: args.protocol_detect_timeout,
            upstream_idle_timeout: args.upstream_idle_timeout,
            dns_ttl: args.dns_ttl,
            discovery: DiscoveryConfig {
                mode: args.discovery,
                namespaces: args.discovery_namespaces,
                api: args.kubernetes_api,
            },
            h2_connections_per_endpoint: usize::try_from(args.h2_connections_per_endpoint)
                .unwrap_or(1),
            upstream_max_connection_age: Some(args.upstream_max_connection_age)
                .filter(|age| !age.is_zero()),
            slow_start: args.slow_start,
            metrics_max_destinations: args.metrics_max_destinations,
            max_destinations: args.max_destinations,
            metrics_max_endpoints: args.metrics_max_endpoints,
            destination_idle_timeout: Some(args.destination_idle_timeout)
                .filter(|idle| !idle.is_zero()),
            tracing: args.otlp_endpoint.map(|endpoint| TracingConfig {
                endpoint,
                sample_ratio: args.trace_sample_ratio,
                errors: args.trace_errors,
                // The chart's label lookup gives "" for a pod without the label.
                service_name: Some(args.service_name)
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "breakwater".into()),
                pod_name: args.pod_name.filter(|n| !n.is_empty()),
                pod_namespace: args.pod_namespace.filter(|n| !n.is_empty()),
            }),
            inbound_tls,
            outbound_tls,
            warnings: Vec::new(),
        };
        config.warnings = config.validate()?;
        Ok(config)
    }

    /// The cross-field rules of [`validate`] on this configuration: the warnings,
    /// or the first combination the proxy cannot serve.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        validate::check(self)
    }

    /// The defaults of every flag, with all three listeners and the app on loopback
    /// port 0: what tests and the demo start from. Constant flags: a panic here
    /// is a programming error every test would show.
    #[allow(clippy::expect_used)]
    pub fn loopback() -> Self {
        let args = cli::parse_run_args([
            "--inbound-addr=127.0.0.1:0",
            "--outbound-addr=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            "--app-addr=127.0.0.1:9",
            "--threads=1",
            // Nothing routes to a loopback proxy through endpoints: no delay.
            "--drain-delay=0s",
        ])
        .expect("the loopback flags parse");
        Config::from_args(args).expect("defaults are valid")
    }
}

/// The CPUs this process may use. Rust's `available_parallelism` honours the cgroup
/// CPU quota (cpu.max) and affinity masks, which is what a container is given.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let args = cli::parse_run_args(extra).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.inbound_addr.to_string(), "0.0.0.0:15006");
        assert_eq!(c.outbound_addr.to_string(), "127.0.0.1:15001");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:15000");
        assert_eq!(c.app_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.timeout, Duration::from_secs(15));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!(c.threads >= 1);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--timeout", "soon"][..], "--timeout"),
            (&["--connect-timeout", "0s"][..], "--connect-timeout"),
            (&["--inbound-addr", "nowhere"][..], "--inbound-addr"),
            (&["--threads", "0"][..], "--threads"),
            (
                &["--max-request-header-bytes", "1KiB"][..],
                "--max-request-header-bytes",
            ),
            (&["--route", "a,retries=many"][..], "--route"),
            (&["--log-level", "loud=[["][..], "--log-level"),
            (&["--app-addr", "0.0.0.0:15006"][..], "--app-addr"),
            (&["--retry-on", "sometimes"][..], "--retry-on"),
            (&["--retry-budget", "-5"][..], "--retry-budget"),
            (&["--retry-backoff", "1s"][..], "--retry-backoff-max"),
            (&["--route", "x,retry-backoff=2s"][..], "--route"),
            (&["--app-health-path", "healthz"][..], "--app-health-path"),
            (
                &["--app-health-unhealthy-threshold", "0"][..],
                "--app-health-unhealthy-threshold",
            ),
            (&["--drain-delay", "soon"][..], "--drain-delay"),
            (&["--inbound-tls-cert", "c.pem"][..], "--inbound-tls-key"),
            (
                &["--inbound-tls-client-ca", "ca.pem"][..],
                "--inbound-tls-client-ca",
            ),
            (
                &[
                    "--inbound-tls-cert=c.pem",
                    "--inbound-tls-key=k.pem",
                    "--inbound-tls-identity-header=bad header",
                ][..],
                "--inbound-tls-identity-header",
            ),
            (&["--outbound-tls-cert", "c.pem"][..], "--outbound-tls-key"),
            (
                &["--discovery-namespaces", "shop,Bad_NS"][..],
                "--discovery-namespaces",
            ),
            (&["--kubernetes-api", "nope"][..], "--kubernetes-api"),
            (&["--discovery", "consul"][..], "--discovery"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
