//! One attempt at an upstream: pick an endpoint of the destination, send over its
//! pooled HTTP/1.1 or HTTP/2 connection, and classify what went wrong in the
//! terms of `x-breakwater-reason`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::Protocol;
use crate::connect::Connector;
use crate::context::RequestCtx;
use crate::error::{ProxyError, causes};
use crate::policy::balance::may_eject;
use crate::policy::breaker::{BreakerPermit, CircuitState, Transition};
use crate::policy::mode::{Mode, Observable};
use crate::policy::overrides::Forced;
use crate::transport::client_body::{BodyWatch, ClientFault};
use crate::transport::pool::{Lease, SendError};
use crate::transport::replay::ReplayBody;
use crate::upstream::DestinationState;
use crate::upstream::endpoint::{self, Endpoint, EndpointGuard};
use crate::upstream::reconnect;

/// Sends attempts to destinations' endpoints.
#[derive(Clone)]
pub struct Forwarder {
    connector: Arc<Connector>,
    /// `--stream-idle-timeout`; `None`: off.
    stream_idle: Option<Duration>,
}

/// What an attempt holds until the response body ends: the endpoint's in-flight
/// count, for HTTP/1.1 the connection, handed back to the pool at the end, and
/// the breaker's verdict on a response that looked like a success.
pub struct Hold {
    lease: Option<Lease>,
    in_flight: EndpointGuard,
    verdict: Option<Verdict>,
}

impl Hold {
    /// The response body was read to its end: the connection goes back to the
    /// pool, and a success waiting on the body is one.
    pub fn release(self) {
        if let Some(v) = self.verdict {
            v.record(true, &self.in_flight);
        }
        if let Some(lease) = self.lease {
            lease.release();
        }
    }

    /// The response body broke off or stalled: the endpoint failed this
    /// request after all. The connection is closed (dropped), not reused.
    pub fn broke(self) {
        if let Some(v) = self.verdict {
            v.record(false, &self.in_flight);
        }
    }
}

/// A breaker verdict that waits for the response body: a head that looks like
/// a success is one only once its body ends, so an upstream that sends good
/// heads and then breaks off or stalls mid-body opens its circuit like one
/// that fails outright. A body the client abandons records nothing.
/// The endpoint (in the [`EndpointGuard`]) holds what the record needs of
/// its destination, so that nothing is cloned per request.
struct Verdict {
    permit: BreakerPermit,
    /// The time to the response head, as the slow-call rule judges it.
    latency: Duration,
    /// The destination's endpoints then, for `max-ejection-percent`.
    endpoints: usize,
}

impl Verdict {
    fn record(self, success: bool, guard: &EndpointGuard) {
        let endpoint = guard.endpoint();
        let (endpoints, cap) = (self.endpoints, endpoint.max_ejection_percent);
        let transition = self
            .permit
            .record_gated(success, self.latency, Instant::now(), || {
                endpoint
                    .ejected
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                        may_eject(e, endpoints, cap).then_some(e + 1)
                    })
                    .is_ok()
            });
        if let Some(t) = transition {
            let metrics = &endpoint.metrics;
            report_to(&endpoint.ejected, metrics, &metrics.label(), endpoint, t);
        }
    }
}

/// A response head from the upstream and what it holds.
pub struct Sent {
    pub response: Response<Incoming>,
    pub hold: Hold,
    pub seen: Seen,
}

/// An attempt that got no response: why, and the request itself when it never
/// left (no connection, no endpoint), for a retry to send as it is.
pub struct Failed {
    pub error: AttemptError,
    pub unsent: Option<Box<Request<ReplayBody>>>,
    pub seen: Seen,
}

/// What an attempt met on its way, for its span: the endpoint it was sent
/// to, and the circuit change its outcome caused.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub peer: Option<std::net::SocketAddr>,
    pub circuit: Option<CircuitState>,
}

/// Why an attempt got no response.
pub enum AttemptError {
    /// Its time ran out with no response head. Whose time — the per-try
    /// timeout's or the request's deadline — is the retry loop's to say.
    TimedOut,
    Failed(ProxyError),
}

impl Failed {
    /// The request left, so it is gone: a retry needs a copy made beforehand.
    fn sent(error: ProxyError) -> Self {
        Failed {
            error: AttemptError::Failed(error),
            unsent: None,
            seen: Seen::default(),
        }
    }

    /// The request never left and comes back as it was given.
    fn unsent(error: ProxyError, req: Request<ReplayBody>) -> Self {
        Failed {
            error: AttemptError::Failed(error),
            unsent: Some(Box::new(req)),
            seen: Seen::default(),
        }
    }
}

/// Picks the attempt's endpoint and asks its breaker. An admin override may
/// force the circuit open (refuse) or closed (any endpoint, no breaker asked);
/// an observed breaker lets through what it would refuse, counted, with no
/// permit, so that only the requests it admits teach it.
fn admit(
    state: &DestinationState,
    endpoints: &[Arc<Endpoint>],
    now: Instant,
) -> Result<(Arc<Endpoint>, Option<BreakerPermit>), ProxyError> {
    let open = |retry_after| ProxyError::CircuitOpen {
        dest: state.dest.to_string(),
        retry_after,
    };
    match state.forced_circuit() {
        Some(Forced::Open(left)) => return Err(open(left)),
        Some(Forced::Closed) => {
            let any = endpoint::pick_any(endpoints, now).ok_or_else(|| open(Duration::ZERO))?;
            return Ok((any.clone(), None));
        }
        None => {}
    }
    let observe = || state.mode(Observable::Breaker) == Mode::Observe;
    let Some(endpoint) = endpoint::pick(endpoints, now).cloned() else {
        if observe()
            && let Some(any) = endpoint::pick_any(endpoints, now)
        {
            state.observe(Observable::Breaker, Observable::Breaker.action());
            return Ok((any.clone(), None));
        }
        return Err(open(endpoint::next_probe(endpoints, now)));
    };
    match endpoint.breaker.admit(now) {
        Ok(permit) => Ok((endpoint, Some(permit))),
        Err(_) if observe() => {
            state.observe(Observable::Breaker, Observable::Breaker.action());
            Ok((endpoint, None))
        }
        Err(refused) => Err(open(refused.retry_after)),
    }
}

impl Forwarder {
    pub fn new(connector: Arc<Connector>, stream_idle: Option<Duration>) -> Self {
        Forwarder {
            connector,
            stream_idle,
        }
    }

    /// `--stream-idle-timeout`, for the bodies and tunnels of this listener.
    pub fn stream_idle(&self) -> Option<Duration> {
        self.stream_idle
    }

    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// One attempt: sends `req` (its URI absolute: `http://authority/path`) to an
    /// endpoint of the destination picked by load whose circuit admits it, within
    /// `per_try`, and returns the response head; the body streams on. The
    /// outcome is recorded in the endpoint's breaker: connect failures, resets,
    /// timeouts and 5xx count as failures, unless the client's body was at fault.
    pub async fn send(
        &self,
        ctx: &RequestCtx<'_>,
        req: Request<ReplayBody>,
        per_try: Duration,
    ) -> Result<Sent, Failed> {
        let state = ctx.state;
        let body = ctx.body;
        let endpoints = match state.endpoints.current(&self.connector).await {
            Ok(endpoints) => endpoints,
            Err(e) => return Err(Failed::unsent(e, req)),
        };
        let now = Instant::now();
        let (endpoint, permit) = match admit(state, &endpoints, now) {
            Ok(admitted) => admitted,
            Err(open) => return Err(Failed::unsent(open, req)),
        };
        let mut seen = Seen {
            peer: Some(endpoint.addr),
            circuit: None,
        };
        if let Some(t) = permit.as_ref().and_then(|p| p.transition()) {
            report(state, &endpoint, t);
            seen.circuit = Some(t.to);
        }
        let in_flight = endpoint.start();
        let upgrade =
            req.method() == Method::CONNECT || req.headers().contains_key(http::header::UPGRADE);
        // Only an HTTP/2 request or a TLS endpoint can be gRPC that matters here:
        // an HTTP/1.1 request to a plaintext endpoint is spared the lookup.
        let grpc =
            (req.version() == Version::HTTP_2 || endpoint.pool.is_tls()) && is_grpc(req.headers());
        let protocol = state.policy.protocol;
        let pool = &endpoint.pool;
        let h2 = pool.speaks_h2();
        if grpc && h2 == Some(false) && protocol != Protocol::H1 {
            // gRPC needs HTTP/2 end to end; sent as HTTP/1.1 it would only fail
            // further on, after the app had seen it.
            return Err(Failed::unsent(
                protocol_mismatch(state, &endpoint, true),
                req,
            ));
        }
        let use_h2 = match protocol {
            Protocol::H2 => true,
            Protocol::H1 => false,
            // HTTP/1.1 stays HTTP/1.1 unless TLS agreed to HTTP/2; HTTP/2 goes as
            // HTTP/2 where the endpoint speaks it, else as HTTP/1.1. Over TLS an
            // untried endpoint is asked by ALPN on the HTTP/1.1 path, but gRPC
            // must not end up there.
            Protocol::Auto if upgrade => false,
            Protocol::Auto if pool.is_tls() => h2 == Some(true) || grpc,
            Protocol::Auto => req.version() == Version::HTTP_2 && h2 != Some(false),
        };
        // A TLS upstream may pick HTTP/2 on ALPN unless the route pins HTTP/1.1
        // (or the request upgrades, which HTTP/2 cannot carry).
        let alpn = match protocol {
            Protocol::Auto if pool.is_tls() && !upgrade => crate::tls::Alpn::Any,
            _ => crate::tls::Alpn::H1,
        };
        // The pick's clock reading starts the attempt's clock: one read fewer.
        let started = now;
        let exchange = async {
            if !use_h2 {
                let sent = pool.send_h1(req, alpn, now).await;
                return sent.map(|(r, lease)| (r, Some(lease)));
            }
            match pool.send_h2(req).await {
                // Learned just now: this request and the next go as HTTP/1.1.
                Err(SendError::Refused(req)) if protocol == Protocol::Auto && !grpc => {
                    let sent = Box::pin(pool.send_h1(*req, crate::tls::Alpn::H1, now)).await;
                    sent.map(|(r, lease)| (r, Some(lease)))
                }
                sent => sent.map(|r| (r, None)),
            }
        };
        let sent = tokio::time::timeout_at(now + per_try, exchange).await;
        let ended = Instant::now();
        let latency = ended - started;
        // Whose fault it was: a client's broken or late body is not the
        // endpoint's failure, and neither is a refusal of HTTP/2. Neither is
        // recorded: the permit goes unused.
        let client_fault = body.and_then(|watch| client_fault(watch, &sent, per_try));
        if let Some(fault) = client_fault {
            return Err(Failed {
                seen,
                ..Failed::sent(fault)
            });
        }
        let mut verdict = None;
        if !matches!(sent, Ok(Err(SendError::Refused(_)))) {
            let unreachable = matches!(sent, Ok(Err(SendError::Connect(..))));
            let success = matches!(&sent, Ok(Ok((resp, _))) if !resp.status().is_server_error());
            endpoint
                .recent
                .record(latency, attempt_failure(&sent, unreachable), ended);
            let total = endpoints.len();
            let cap = state.policy.max_ejection_percent;
            // A success with a body to come is judged when the body ends.
            let streams =
                matches!(&sent, Ok(Ok((resp, _))) if !http_body::Body::is_end_stream(resp.body()));
            let permit = match permit {
                Some(permit) if success && streams => {
                    verdict = Some(Verdict {
                        permit,
                        latency,
                        endpoints: total,
                    });
                    None
                }
                permit => permit,
            };
            let transition = permit.and_then(|permit| {
                permit.record_gated(success, latency, ended, || {
                    state
                        .ejected
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                            may_eject(e, total, cap).then_some(e + 1)
                        })
                        .is_ok()
                })
            });
            if let Some(t) = transition {
                report(state, &endpoint, t);
                seen.circuit = Some(t.to);
                if t.to == CircuitState::Open && unreachable {
                    reconnect::watch(endpoint.clone(), endpoint.pool.connect_timeout());
                }
            }
        }
        let result = match sent {
            Ok(Ok((response, lease))) => {
                endpoint.observe(latency, ended);
                if let Some(h) = &state.hedging {
                    h.observe(latency, ended);
                }
                Ok(Sent {
                    response,
                    hold: Hold {
                        lease,
                        in_flight,
                        verdict,
                    },
                    seen,
                })
            }
            Ok(Err(SendError::Connect(cause, req))) => Err(Failed::unsent(
                ProxyError::ConnectFailure {
                    dest: state.dest.to_string(),
                    cause: format!("{}: {cause}", endpoint.addr),
                },
                *req,
            )),
            Ok(Err(SendError::Broken(e))) => Err(Failed::sent(ProxyError::Reset {
                dest: state.dest.to_string(),
                cause: causes(&e),
            })),
            Ok(Err(SendError::Refused(req))) => Err(Failed::unsent(
                protocol_mismatch(state, &endpoint, grpc),
                *req,
            )),
            Err(_) => Err(Failed {
                error: AttemptError::TimedOut,
                unsent: None,
                seen,
            }),
        };
        result.map_err(|failed| Failed { seen, ..failed })
    }
}

/// The client's part in a failed exchange, if it had one: its body broke or
/// ended early, or the deadline passed while breakwater waited for its bytes.
/// An upstream that answered was not failed by the client, whatever the body
/// does later.
fn client_fault<T>(
    watch: &BodyWatch,
    sent: &Result<Result<T, SendError>, tokio::time::error::Elapsed>,
    per_try: Duration,
) -> Option<ProxyError> {
    let waited_on_client = match sent {
        Ok(Ok(_)) | Ok(Err(SendError::Connect(..))) | Ok(Err(SendError::Refused(_))) => {
            return None;
        }
        Ok(Err(SendError::Broken(_))) => false,
        Err(_) => watch.awaiting_client(),
    };
    match watch.fault() {
        Some(ClientFault::Malformed) => Some(ProxyError::MalformedBody(watch.cause().into())),
        Some(ClientFault::Gone) => Some(ProxyError::ClientGone(watch.cause().into())),
        Some(ClientFault::Stalled) => Some(ProxyError::ClientTimeout(watch.cause().into())),
        None if waited_on_client => Some(ProxyError::ClientTimeout(crate::units::format_duration(
            per_try,
        ))),
        None => None,
    }
}

/// A gRPC request (`content-type: application/grpc`, `+proto`, `+json`, …),
/// which needs HTTP/2. gRPC-Web (`application/grpc-web…`) is made for
/// HTTP/1.1 and is not one.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

fn protocol_mismatch(state: &DestinationState, endpoint: &Endpoint, grpc: bool) -> ProxyError {
    ProxyError::Protocol {
        dest: state.dest.to_string(),
        endpoint: endpoint.addr,
        grpc,
    }
}

/// Logs and counts a circuit's change of state, and keeps the destination's
/// count of ejected endpoints.
fn report(state: &DestinationState, endpoint: &Endpoint, t: Transition) {
    report_to(&state.ejected, &state.metrics, &state.dest, endpoint, t);
}

/// [`report`], from the parts a response body holds.
fn report_to(
    ejected: &std::sync::atomic::AtomicUsize,
    metrics: &crate::metrics::DestinationMetrics,
    dest: &dyn std::fmt::Display,
    endpoint: &Endpoint,
    t: Transition,
) {
    if t.to == CircuitState::Closed && t.from != CircuitState::Closed {
        let _ = ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
    }
    endpoint.circuit_gauge.set(t.to.as_gauge());
    metrics.count_transition(t.to.as_str());
    let open_for_ms = t.open_for.map(|d| d.as_millis() as u64);
    if t.to == CircuitState::Open {
        tracing::warn!(dest = %dest, endpoint = %endpoint.addr, from = t.from.as_str(), cause = t.cause.as_str(), open_for_ms, "circuit opened");
    } else {
        tracing::info!(dest = %dest, endpoint = %endpoint.addr, from = t.from.as_str(), to = t.to.as_str(), cause = t.cause.as_str(), "circuit changed");
    }
}

/// What `breakwater status` calls a failed attempt: the failure reasons'
/// names, without building the error for it.
fn attempt_failure<T>(
    sent: &Result<Result<(Response<Incoming>, T), SendError>, tokio::time::error::Elapsed>,
    unreachable: bool,
) -> Option<&'static str> {
    match sent {
        Ok(Ok((resp, _))) if resp.status().is_server_error() => Some("5xx"),
        Ok(Ok(_)) => None,
        Ok(Err(_)) if unreachable => Some("connect-failure"),
        Ok(Err(_)) => Some("reset"),
        Err(_) => Some("timeout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_from_grpc_web_and_others() {
        let ct = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(v),
            );
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(ct("application/grpc;charset=utf-8"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/grpc-web-text+proto"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
