//! One request, several attempts: the retry loop.
//!
//! Each attempt gets what is left of the deadline (capped by `--per-try-timeout`),
//! carries `x-breakwater-attempt` and the time left, and its outcome is judged by
//! the destination's retry policy. A retry happens only when the outcome meets a
//! `--retry-on` condition, the request is safe to repeat (idempotent, or it never
//! reached the upstream), its body can be replayed, the wait fits the deadline, and
//! the destination's budget has a retry to spare — checked in that order, so a
//! retry that would not happen never spends budget.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::debug;

use crate::context::RequestCtx;
use crate::error::ProxyError;
use crate::forward::{AttemptError, Failed, Forwarder, Hold, Seen, Sent};
use crate::policy::deadline;
use crate::policy::mode::{Mode, Observable};
use crate::policy::retry::{self, Outcome, RetryPolicy};
use crate::trace::{AttemptEnd, Traced, Value};
use crate::transport::client_body::ClientBody;
use crate::transport::replay::ReplayBody;

/// Which attempt this is, on every request sent upstream (1 for the first).
pub const ATTEMPT_HEADER: HeaderName = HeaderName::from_static("x-breakwater-attempt");

/// On the hedge of an attempt (`hedge-after`): the upstream can tell the copy
/// from the first.
pub const HEDGE_HEADER: HeaderName = HeaderName::from_static("x-breakwater-hedge");

/// How long a gRPC response's first body frame is awaited to see whether it is
/// the trailers (a failing server sends headers, then trailers at once). Longer
/// would hold up streaming responses whose first message is slow.
const GRPC_PEEK: Duration = Duration::from_millis(10);

/// The final attempt's response, what it holds until its body ends, and the
/// first body frame if it was peeked at.
pub struct Answer {
    pub response: Response<Incoming>,
    pub hold: Hold,
    pub first_frame: Option<Result<Frame<Bytes>, hyper::Error>>,
}

/// A request whose body is kept as far as its retries need, and whether it
/// is safe to repeat.
pub struct Kept {
    pub req: Request<ReplayBody>,
    pub idempotent: bool,
    /// A gRPC call that is not idempotent, kept anyway under `--retry-on
    /// …,unavailable`: an upstream breakwater's refusal of it may be retried
    /// ([`retry::refused_before_the_app`]).
    pub refusable: bool,
}

/// Wraps the client's body so that it is kept as far as the retry policy
/// needs, or whole up to `retry-body-limit` when `copied` (a mirror's copy).
pub fn keep_body(req: Request<ClientBody>, policy: &RetryPolicy, copied: bool) -> Kept {
    let idempotent = retry::is_idempotent(req.method(), req.headers());
    let refusable = !idempotent
        && policy.retries > 0
        && policy.retry_on.unavailable
        && crate::forward::is_grpc(req.headers());
    let req = req.map(|body| {
        if copied {
            ReplayBody::replayable(body, policy.body_limit)
        } else if policy.retries == 0 {
            ReplayBody::once(body)
        } else {
            // A request that is not safe to repeat keeps nothing: only a body that
            // was never sent (a connect failure) goes out again.
            let keep = idempotent || refusable;
            ReplayBody::replayable(body, if keep { policy.body_limit } else { 0 })
        }
    });
    Kept {
        req,
        idempotent,
        refusable,
    }
}

/// Sends the request until an attempt's outcome is final or nothing allows
/// another; returns the last outcome.
pub async fn send(
    forwarder: &Forwarder,
    ctx: &RequestCtx<'_>,
    kept: Kept,
    mut trace: Option<&mut Traced>,
) -> Result<Answer, ProxyError> {
    let state = ctx.state;
    let deadline = ctx.deadline;
    let policy = &state.policy.retry;
    let Kept {
        mut req,
        idempotent,
        refusable,
    } = kept;
    // A retry after the upstream has seen the request needs a copy made before
    // it leaves; a request that never left comes back from the forwarder.
    let copies = (idempotent || refusable) && policy.retries_sent();
    // The slot's clock reading serves the first attempt: one read fewer.
    let mut now = ctx.slot_granted;
    state.budget.deposit_at(now);
    // Hedged: a request both copies can send at once (no body) that is safe
    // to send twice.
    let mut hedging = state
        .hedging
        .as_ref()
        .filter(|_| idempotent && http_body::Body::is_end_stream(req.body()));
    if let Some(h) = hedging {
        h.deposit_at(now);
    }
    let mut attempt: u32 = 1;
    // For the next attempt's span: the wait before it, and the budget's say.
    let mut waited: Option<(Duration, &'static str)> = None;
    loop {
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(ctx.timed_out(ctx.budget()));
        }
        let per_try = policy.per_try_timeout.map_or(left, |t| t.min(left));
        let copy = if copies && attempt <= policy.retries {
            copy_of(&req)
        } else {
            None
        };
        req.headers_mut()
            .insert(ATTEMPT_HEADER, attempt_value(attempt));
        deadline::announce(req.headers_mut(), left);
        if let Some(t) = trace.as_deref_mut() {
            let span = t.span.begin_attempt(attempt, waited.take());
            t.inject(req.headers_mut(), span);
        }
        let hedge = hedging
            .take()
            .and_then(|h| Some((h, h.delay(now)?)))
            .filter(|(_, delay)| *delay < per_try);
        let sent = match hedge {
            Some((h, delay)) => {
                let (sent, hedged) =
                    Box::pin(send_hedged(forwarder, ctx, req, per_try, delay, h)).await;
                if let (Some(t), Some(won)) = (trace.as_deref_mut(), hedged) {
                    t.span.event(
                        "hedge",
                        &[
                            (
                                "breakwater.hedge_after_ms",
                                Value::Int(delay.as_millis() as i64),
                            ),
                            (
                                "breakwater.hedge_winner",
                                Value::Str(if won { "hedge" } else { "first" }),
                            ),
                        ],
                    );
                }
                sent
            }
            None => forwarder.send(ctx, req, per_try).await,
        };
        let (result, unsent, seen) = match sent {
            Ok(sent) if policy.retry_on.unavailable && awaits_grpc_status(&sent.response) => {
                let seen = sent.seen;
                // Rare, so boxed: the common path's future stays small.
                (Ok(Box::pin(peek_grpc_trailers(sent)).await), None, seen)
            }
            Ok(Sent {
                response,
                hold,
                seen,
            }) => (
                Ok(Answer {
                    response,
                    hold,
                    first_frame: None,
                }),
                None,
                seen,
            ),
            // The attempt ran out of time: the per-try timeout when it was the
            // shorter, else the request's deadline.
            Err(Failed {
                error: AttemptError::TimedOut,
                unsent,
                seen,
            }) => {
                let after = if per_try < left {
                    per_try
                } else {
                    ctx.budget()
                };
                (Err(ctx.timed_out(after)), unsent, seen)
            }
            Err(Failed {
                error: AttemptError::Failed(error),
                unsent,
                seen,
            }) => (Err(error), unsent, seen),
        };
        if let Some(t) = trace.as_deref_mut() {
            record_attempt(t, &result, seen);
        }

        let outcome = match &result {
            Ok(answer) => Outcome::Answered {
                status: answer.response.status(),
                // Only `unavailable` reads it: most answers are spared the lookup.
                grpc_status: if policy.retry_on.unavailable {
                    answer.grpc_status()
                } else {
                    None
                },
                refused: refusable && retry::refused_before_the_app(answer.response.headers()),
            },
            Err(e) => Outcome::Failed(e),
        };
        let Some(reason) = policy.reason(&outcome) else {
            return result;
        };
        if attempt > policy.retries || !(reason.unsent || idempotent) {
            return result;
        }
        let next = match unsent.map(|r| *r).or(copy) {
            Some(r) if r.body().too_large() => {
                state.metrics.count_retry_skipped("body-too-large");
                state.recent.record_retry(false, Instant::now());
                return result;
            }
            Some(r) => r,
            None => return result,
        };
        let wait = match &result {
            Ok(a) => retry::retry_after(a.response.status(), a.response.headers()),
            Err(_) => None,
        }
        .unwrap_or_else(|| policy.backoff(attempt, fastrand::f64()));
        // A `Retry-After` from the upstream may be any number of seconds.
        if Instant::now()
            .checked_add(wait)
            .is_none_or(|at| at >= deadline)
        {
            // The caller would be gone before the retry answered.
            return result;
        }
        let mut budget = "allowed";
        if !state.budget.withdraw() {
            if state.mode(Observable::RetryBudget) == Mode::Observe {
                // Observed: the retry goes, counted as one the budget would skip.
                state.observe(Observable::RetryBudget, Observable::RetryBudget.action());
                budget = "observed";
            } else {
                state.metrics.count_retry_skipped("budget-exhausted");
                state.recent.record_retry(false, Instant::now());
                debug!(dest = %state.dest, reason = reason.label, "retry budget exhausted");
                return result;
            }
        }
        state.metrics.count_retry(reason.label);
        state.recent.record_retry(true, Instant::now());
        debug!(dest = %state.dest, attempt, reason = reason.label, wait_ms = wait.as_millis() as u64, "retrying");
        drop(result);
        waited = Some((wait, budget));
        tokio::time::sleep(wait).await;
        req = next;
        attempt += 1;
        now = Instant::now();
    }
}

/// The first attempt, hedged: when it has no response head after `delay`, a
/// copy goes too (budget allowing) and the first good answer — a response
/// that is not a 5xx — wins; when the first to end is not good, the other is
/// awaited. The loser's future is dropped, which cancels its exchange: its
/// HTTP/2 stream is reset, its HTTP/1.1 connection closed, its breaker permit
/// released unrecorded. Says whether a hedge went and, if so, whether it won.
async fn send_hedged(
    forwarder: &Forwarder,
    ctx: &RequestCtx<'_>,
    req: Request<ReplayBody>,
    per_try: Duration,
    delay: Duration,
    hedging: &crate::policy::hedge::Hedging,
) -> (Result<Sent, Failed>, Option<bool>) {
    let state = ctx.state;
    let copy = copy_of(&req);
    let first = forwarder.send(ctx, req, per_try);
    tokio::pin!(first);
    tokio::select! {
        biased;
        sent = &mut first => return (sent, None),
        () = tokio::time::sleep(delay) => {}
    }
    let Some(mut copy) = copy else {
        return (first.await, None);
    };
    if !hedging.withdraw() {
        state.metrics.count_hedge("skipped");
        return (first.await, None);
    }
    copy.headers_mut()
        .insert(HEDGE_HEADER, HeaderValue::from_static("1"));
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    deadline::announce(copy.headers_mut(), left);
    let hedge_per_try = per_try.min(left);
    let second = forwarder.send(ctx, copy, hedge_per_try);
    tokio::pin!(second);
    let good = |sent: &Result<Sent, Failed>| matches!(sent, Ok(s) if !s.response.status().is_server_error());
    let (sent, won) = tokio::select! {
        sent = &mut first => (sent, false),
        sent = &mut second => (sent, true),
    };
    let (sent, won) = if good(&sent) {
        (sent, won)
    } else if won {
        (first.await, false)
    } else {
        (second.await, true)
    };
    state.metrics.count_hedge(if won { "won" } else { "lost" });
    debug!(dest = %state.dest, won, delay_ms = delay.as_millis() as u64, "hedged");
    (sent, Some(won))
}

impl Answer {
    /// `grpc-status` from the headers (trailers-only) or from peeked trailers.
    fn grpc_status(&self) -> Option<u32> {
        retry::grpc_status(self.response.headers()).or_else(|| {
            self.first_frame
                .as_ref()
                .and_then(|f| f.as_ref().ok())
                .and_then(Frame::trailers_ref)
                .and_then(retry::grpc_status)
        })
    }
}

/// An attempt's end in its span: the status that came or why none did, the
/// endpoint, and what the breaker did about it.
fn record_attempt(t: &mut Traced, result: &Result<Answer, ProxyError>, seen: Seen) {
    let end = match result {
        Ok(answer) => AttemptEnd::Answered(answer.response.status().as_u16()),
        Err(e) => AttemptEnd::Failed(e.reason()),
    };
    t.span.end_attempt(end, seen.peer);
    if let Err(ProxyError::CircuitOpen { .. }) = result {
        t.span.event("breaker.refused", &[]);
    }
    if let (Some(to), Some(peer)) = (seen.circuit, seen.peer) {
        t.span.event(
            "breaker.transition",
            &[
                ("breakwater.endpoint", Value::Addr(peer)),
                ("breakwater.to", Value::Str(to.as_str())),
            ],
        );
    }
}

/// A gRPC response without a status in its headers: its status is in trailers.
fn awaits_grpc_status(response: &Response<Incoming>) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        && !response.headers().contains_key(retry::GRPC_STATUS)
}

/// For a gRPC response without a status in its headers, reads the first body
/// frame if it comes within [`GRPC_PEEK`]: when it is the trailers, their
/// `grpc-status` can still make the attempt retryable. Envoy cannot do this
/// (envoyproxy/envoy#11049); linkerd2-proxy does.
async fn peek_grpc_trailers(sent: Sent) -> Answer {
    let Sent {
        mut response,
        hold,
        seen: _,
    } = sent;
    let first_frame = match tokio::time::timeout(GRPC_PEEK, response.body_mut().frame()).await {
        // A frame or an error, handed on to the client as they came.
        Ok(Some(frame)) => Some(frame),
        // The end, or nothing yet: the body goes on as it is.
        Ok(None) | Err(_) => None,
    };
    Answer {
        response,
        hold,
        first_frame,
    }
}

/// Another attempt's request: the same head, and the body replayed (none when
/// it cannot be).
pub fn copy_of(req: &Request<ReplayBody>) -> Option<Request<ReplayBody>> {
    let mut copy = Request::new(req.body().try_clone()?);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

fn attempt_value(attempt: u32) -> HeaderValue {
    const SMALL: [&str; 4] = ["1", "2", "3", "4"];
    match SMALL.get(attempt as usize - 1) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(attempt),
    }
}
