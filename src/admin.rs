//! The admin endpoint: its page (`GET /`), liveness, readiness, Prometheus
//! metrics, the effective configuration, a probe of the app, and the mutating
//! calls (`POST /shutdown`, `PUT /log-level`, `PUT`/`DELETE /override`), which
//! answer loopback callers only. Kept off the data path: its own listener and
//! plain HTTP/1.1.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::addr::Destination;
use crate::body::ProxyBody;
use crate::drain::ShutdownHandle;
use crate::health::{AppHealth, HealthState, Prober};
use crate::metrics::Metrics;
use crate::policy::overrides::{Action, Target};
use crate::reload::LivePolicy;
use crate::telemetry;
use crate::upstream::Registry;

mod page;

/// What `/ready` reports on besides the app: set by the app as listeners come up
/// and drain starts.
#[derive(Default)]
pub struct ProxyState {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl ProxyState {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }
}

/// The largest body `PUT /log-level` reads.
const MAX_LOG_FILTER: usize = 4096;

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub state: Arc<ProxyState>,
    pub health: Arc<AppHealth>,
    pub prober: Arc<Prober>,
    pub shutdown: ShutdownHandle,
    /// The effective configuration, the policy file's version, the overrides.
    pub live: Arc<LivePolicy>,
    /// Outbound and inbound destinations, for `/upstreams`.
    pub registries: Vec<Arc<Registry>>,
}

impl Admin {
    /// Serves until the task is dropped; the app stops it last, after the drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(peer, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }

    async fn route(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        match (req.uri().path(), read) {
            ("/", true) => page::response(),
            ("/live", true) => text(StatusCode::OK, "live\n"),
            ("/ready", true) => {
                let verbose = req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "verbose"));
                self.ready(verbose)
            }
            ("/metrics", true) => with_type(
                Response::new(ProxyBody::local(self.metrics.encode().into())),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            ("/config", true) => with_type(
                Response::new(ProxyBody::local(self.live.describe().into())),
                "application/json",
            ),
            ("/app-health", true) => self.app_health().await,
            ("/upstreams", true) => {
                let all: Vec<serde_json::Value> =
                    self.registries.iter().flat_map(|r| r.snapshot()).collect();
                let body = serde_json::to_string_pretty(&all).unwrap_or_default() + "\n";
                with_type(
                    Response::new(ProxyBody::local(body.into())),
                    "application/json",
                )
            }
            ("/shutdown", _) if req.method() == Method::POST => {
                if !is_loopback(peer.ip()) {
                    return forbidden(peer);
                }
                info!(%peer, "shutdown requested on the admin endpoint");
                self.shutdown.request();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            ("/log-level", _) if req.method() == Method::PUT => {
                if !is_loopback(peer.ip()) {
                    return forbidden(peer);
                }
                self.set_log_level(req).await
            }
            ("/override", true) => json(&self.live.overrides.describe()),
            ("/override", _) if req.method() == Method::PUT || req.method() == Method::DELETE => {
                if !is_loopback(peer.ip()) {
                    return forbidden(peer);
                }
                self.set_override(&req)
            }
            (
                "/" | "/live" | "/ready" | "/metrics" | "/config" | "/app-health" | "/upstreams",
                false,
            )
            | ("/shutdown" | "/log-level" | "/override", _) => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: GET for reads, POST /shutdown, PUT /log-level, \
                 PUT or DELETE /override\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try / (the page), /live, /ready, /metrics, /config, /app-health, \
                 /upstreams\n",
            ),
        }
    }

    /// 200 when the listeners are bound, the app is healthy and no drain has
    /// started; otherwise 503 and what is missing.
    fn ready(&self, verbose: bool) -> Response<ProxyBody> {
        let listening = self.state.is_listening();
        let draining = self.state.is_draining();
        let app = self.health.state();
        let mut missing = Vec::new();
        if !listening {
            missing.push("listeners not bound yet".to_string());
        }
        if draining {
            missing.push("draining".to_string());
        }
        if app != HealthState::Healthy {
            missing.push(format!("app {}", app.as_str()));
        }
        let status = if missing.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if verbose {
            let body = serde_json::json!({
                "ready": missing.is_empty(),
                "listening": listening,
                "draining": draining,
                "app": { "state": app, "last_probe": self.health.last_probe() },
                "missing": missing,
            });
            let mut resp = with_type(
                Response::new(ProxyBody::local(Bytes::from(body.to_string() + "\n"))),
                "application/json",
            );
            *resp.status_mut() = status;
            return resp;
        }
        if missing.is_empty() {
            text(status, "ready\n")
        } else {
            text(status, &format!("not ready: {}\n", missing.join(", ")))
        }
    }

    /// One probe of the app now, answered with the app's own status when it gave
    /// one: a kubelet probe can reach the app through breakwater.
    async fn app_health(&self) -> Response<ProxyBody> {
        let probe = self.prober.probe().await;
        let status = match probe.status {
            Some(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
            None if probe.ok => StatusCode::OK,
            None => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = probe.detail;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        text(status, &body)
    }

    /// `PUT /override?[destination=HOST:PORT][&route=NAME]&(circuit=open|closed|observe=POLICY)&for=DURATION`
    /// sets an override that expires by itself; `DELETE /override?id=N` ends one early.
    fn set_override(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let query = req.uri().query().unwrap_or_default();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if req.method() == Method::DELETE {
            return match get("id").and_then(|id| id.parse::<u64>().ok()) {
                Some(id) if self.live.overrides.remove(id) => {
                    info!(id, "admin override removed");
                    json(&self.live.overrides.describe())
                }
                Some(id) => text(StatusCode::NOT_FOUND, &format!("no override {id}\n")),
                None => text(StatusCode::BAD_REQUEST, "DELETE /override needs ?id=N\n"),
            };
        }
        // A misspelt target must not widen an override to every destination.
        const KEYS: [&str; 5] = ["destination", "route", "circuit", "observe", "for"];
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("unknown key '{k}' (known: {})\n", KEYS.join(", ")),
            );
        }
        match parse_override(&get) {
            Ok((target, action, ttl)) => {
                let id = self.live.overrides.set(target, action, ttl);
                info!(id, query, "admin override set");
                json(&self.live.overrides.describe())
            }
            Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
        }
    }

    async fn set_log_level(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let body = match Limited::new(req.into_body(), MAX_LOG_FILTER)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "log filter too long\n"),
        };
        let filter = String::from_utf8_lossy(&body).trim().to_string();
        match telemetry::set_filter(&filter) {
            Ok(()) => {
                info!(filter = %filter, "log filter changed on the admin endpoint");
                text(StatusCode::OK, &format!("log filter: {filter}\n"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        }
    }
}

/// The longest an override may be set for: an incident measure, not a policy.
const MAX_OVERRIDE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An override's target, action and time to live, from the query's keys.
fn parse_override<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
) -> Result<(Target, Action, std::time::Duration), String> {
    let action = match (get("circuit"), get("observe")) {
        (Some(c), None) => Action::parse("circuit", c)
            .ok_or_else(|| format!("circuit={c}: use circuit=open or circuit=closed"))?,
        (None, Some(p)) => Action::parse("observe", p)
            .ok_or_else(|| format!("observe={p}: use observe=breaker, bulkhead or retry-budget"))?,
        _ => {
            return Err(
                "say one of circuit=open|closed or observe=breaker|bulkhead|retry-budget".into(),
            );
        }
    };
    let ttl = get("for").ok_or("say for how long: for=10m (at most 24h)")?;
    let ttl = crate::units::parse_positive_duration(ttl).map_err(|e| format!("for: {e}"))?;
    if ttl > MAX_OVERRIDE {
        return Err("for: at most 24h; an override is for an incident".into());
    }
    let destination = match get("destination") {
        Some(d) => {
            let (host, port) = d
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("destination={d}: use HOST:PORT"))?;
            Some(Destination::new(
                host.trim_start_matches('[').trim_end_matches(']'),
                port,
            ))
        }
        None => None,
    };
    let target = Target {
        destination,
        route: get("route").map(str::to_string),
    };
    if action == Action::CircuitOpen && target == Target::default() {
        return Err(
            "circuit=open needs a destination= or route=: it would refuse everything".into(),
        );
    }
    Ok((target, action, ttl))
}

fn json<T: serde::Serialize>(value: &T) -> Response<ProxyBody> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    with_type(
        Response::new(ProxyBody::local(body.into())),
        "application/json",
    )
}

/// Mutating calls come from inside the pod only.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn forbidden(peer: SocketAddr) -> Response<ProxyBody> {
    debug!(%peer, "mutating admin call refused: not loopback");
    text(
        StatusCode::FORBIDDEN,
        "forbidden: only loopback callers may do this\n",
    )
}

fn with_type(mut resp: Response<ProxyBody>, content_type: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = with_type(
        Response::new(ProxyBody::local(Bytes::copy_from_slice(body.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_mutate() {
        assert!(is_loopback(
            "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))
        ));
        assert!(is_loopback("::1".parse().unwrap_or(IpAddr::from([0; 4]))));
        assert!(is_loopback(
            "::ffff:127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))
        ));
        assert!(!is_loopback(
            "198.18.0.2".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))
        ));
        assert!(!is_loopback(
            "::ffff:10.0.0.1"
                .parse()
                .unwrap_or(IpAddr::from([127, 0, 0, 1]))
        ));
    }
}
