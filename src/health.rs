//! The app's health: a probe on an interval (HTTP GET on `--app-health-path`, or a
//! TCP connect to `--app-addr`), thresholds that turn results into a state, and
//! the state that `/ready` and the inbound gate read.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::AppHealthConfig;
use crate::metrics::AppHealthMetrics;

/// What breakwater believes about the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not enough probes yet: not ready, but requests are not refused either.
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive probe results that move the state (no I/O, no clock).
#[derive(Debug)]
pub struct HealthTracker {
    state: HealthState,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthTracker {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            state: HealthState::Unknown,
            successes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<HealthState> {
        let next = if ok {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= self.healthy_threshold).then_some(HealthState::Healthy)
        } else {
            self.failures += 1;
            self.successes = 0;
            (self.failures >= self.unhealthy_threshold).then_some(HealthState::Unhealthy)
        };
        match next {
            Some(next) if next != self.state => {
                self.state = next;
                Some(next)
            }
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> HealthState {
        self.state
    }
}

/// The outcome of one probe, as `/ready?verbose` and `/app-health` show it.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// The app's status code, for an HTTP probe that got an answer.
    pub status: Option<u16>,
    /// What the probe saw: the start of the app's body, or the error.
    pub detail: String,
    pub latency_ms: f64,
}

/// The shared, lock-free view of the app's health for the data path.
pub struct AppHealth {
    state: AtomicU8,
    last: Mutex<Option<ProbeResult>>,
}

impl AppHealth {
    pub fn new() -> Self {
        AppHealth {
            state: AtomicU8::new(HealthState::Unknown as u8),
            last: Mutex::new(None),
        }
    }

    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Acquire) {
            s if s == HealthState::Healthy as u8 => HealthState::Healthy,
            s if s == HealthState::Unhealthy as u8 => HealthState::Unhealthy,
            _ => HealthState::Unknown,
        }
    }

    fn set(&self, state: HealthState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn last_probe(&self) -> Option<ProbeResult> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for AppHealth {
    fn default() -> Self {
        Self::new()
    }
}

/// The most of the app's health answer kept for `/app-health` and logs.
const MAX_DETAIL: usize = 1024;

/// Probes the app.
pub struct Prober {
    config: AppHealthConfig,
    app: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Prober {
    pub fn new(config: AppHealthConfig, app: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.interval.saturating_mul(2))
            .build(connector);
        Prober {
            config,
            app,
            client,
        }
    }

    /// One probe, within `--app-health-timeout`; a failure's text is its detail.
    pub async fn probe(&self) -> ProbeResult {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.timeout, self.attempt()).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Ok(Ok((status, detail))) => ProbeResult {
                ok: status.is_none_or(|s| s.is_success() || s.is_redirection()),
                status: status.map(|s| s.as_u16()),
                detail,
                latency_ms,
            },
            Ok(Err(e)) => ProbeResult {
                ok: false,
                status: None,
                detail: e.to_string(),
                latency_ms,
            },
            Err(_) => ProbeResult {
                ok: false,
                status: None,
                detail: format!("no answer within {:?}", self.config.timeout),
                latency_ms,
            },
        }
    }

    async fn attempt(&self) -> Result<(Option<StatusCode>, String), ProbeError> {
        let Some(path) = &self.config.path else {
            tokio::net::TcpStream::connect(self.app)
                .await
                .map_err(|source| ProbeError::Tcp {
                    app: self.app,
                    source,
                })?;
            return Ok((None, format!("TCP connect to {} succeeded", self.app)));
        };
        let req = Request::get(format!("http://{}{}", self.app, path))
            .header(header::USER_AGENT, "breakwater-health")
            .body(Empty::new())
            .map_err(ProbeError::Request)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|source| ProbeError::Get {
                path: path.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let detail = String::from_utf8_lossy(&body[..body.len().min(MAX_DETAIL)]).into_owned();
        Ok((Some(status), detail))
    }

    /// Probes every `--app-health-interval` until dropped, moving `health` through
    /// its states. The first probe runs at once.
    pub async fn run(
        self: std::sync::Arc<Self>,
        health: std::sync::Arc<AppHealth>,
        metrics: AppHealthMetrics,
    ) {
        let mut tracker = HealthTracker::new(
            self.config.healthy_threshold,
            self.config.unhealthy_threshold,
        );
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = self.probe().await;
            metrics.observe(result.ok, result.latency_ms / 1000.0);
            if let Some(state) = tracker.record(result.ok) {
                metrics.transition(state.as_str(), state == HealthState::Healthy);
                // The status, when the app answered, and the detail: its body,
                // or why there was no answer (refused, no answer within the timeout).
                let status = result.status.unwrap_or(0);
                if state == HealthState::Healthy {
                    info!(app = %self.app, status, detail = %result.detail, "app is healthy");
                } else {
                    warn!(app = %self.app, status, detail = %result.detail, "app is unhealthy");
                }
                health.set(state);
            }
            *health.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        }
    }
}

/// Why a probe got no answer from the app.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("TCP connect to {app}: {source}")]
    Tcp {
        app: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Request(http::Error),
    #[error("GET {path}: {}", with_causes(source))]
    Get {
        path: String,
        source: hyper_util::client::legacy::Error,
    },
}

/// An error and what caused it, down to the root: hyper's own text alone
/// ("client error (Connect)") does not say that the connection was refused.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_move_the_state() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.record(true), None, "one success of two");
        assert_eq!(t.record(true), Some(HealthState::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(HealthState::Unhealthy));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(HealthState::Healthy));
        assert_eq!(t.state(), HealthState::Healthy);
    }

    #[test]
    fn an_app_that_never_answers_goes_from_unknown_to_unhealthy() {
        let mut t = HealthTracker::new(1, 2);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(HealthState::Unhealthy));
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use std::time::Duration;

    fn config(path: Option<&str>) -> AppHealthConfig {
        AppHealthConfig {
            path: path.map(str::to_string),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        }
    }

    #[tokio::test]
    async fn a_failed_probe_says_why_down_to_the_cause() {
        // A port nothing listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        for path in [Some("/healthz"), None] {
            let result = Prober::new(config(path), closed).probe().await;
            assert!(!result.ok);
            assert!(
                result.detail.to_lowercase().contains("connection refused"),
                "{path:?}: {}",
                result.detail
            );
        }
        // An app that answers 503 is unhealthy with its status.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let app = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown")
                    .await;
            }
        });
        let result = Prober::new(config(Some("/healthz")), app).probe().await;
        assert!(!result.ok);
        assert_eq!(result.status, Some(503), "{}", result.detail);
    }
}
