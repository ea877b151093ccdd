//! Copies of requests to a shadow destination (`mirror=`): the new system
//! sees real requests and its answers are compared with the old one's before
//! any user depends on them.
//!
//! The real path never waits for, and never shares anything with, a copy:
//! the copy is sent from a task of its own once the original's answer (or
//! breakwater's own error) is known, through a state of its own (breakers,
//! pool, and a bulkhead of the shadow's `max-concurrent` with no queue, so a
//! copy that has no slot is skipped rather than held). Only whole bodies are
//! copied: read to their end by the original's attempt and within
//! `retry-body-limit`.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::addr::Destination;
use crate::context::RequestCtx;
use crate::forward::{Forwarder, Sent};
use crate::metrics::Metrics;
use crate::policy::bulkhead::BulkheadPermit;
use crate::policy::traffic::{Compared, Skip};
use crate::transport::replay::ReplayBody;
use crate::upstream::traffic::{Outcome, RouteTraffic, Shadow};
use crate::upstream::{DestinationState, Registry};

/// Marks a copy, so the shadow can tell it from real traffic.
pub const MIRROR_HEADER: HeaderName = HeaderName::from_static("x-breakwater-mirror");

/// A request that is due a copy, decided at its start.
pub struct Pending {
    traffic: Arc<RouteTraffic>,
    state: Arc<DestinationState>,
    metrics: Arc<Metrics>,
}

/// Whether `req`, of a route with `traffic`, going to `sent_to`, gets a copy.
/// A request outside the mirror's share is not counted; one inside it that
/// may not be copied is, as skipped.
pub fn plan(
    traffic: &Arc<RouteTraffic>,
    req: &Request<Incoming>,
    sent_to: &Destination,
    body_limit: usize,
    registry: &Registry,
    metrics: &Arc<Metrics>,
) -> Option<Pending> {
    let shadow = traffic.mirror.as_ref()?;
    if req.headers().contains_key(header::UPGRADE) {
        // A WebSocket or other upgrade is a conversation, not a request to copy.
        return None;
    }
    if shadow.plan.target == *sent_to {
        // Moved to the shadow itself (split or to): nothing to compare with.
        return None;
    }
    let skip = |why| {
        count(shadow, metrics, Outcome::Skipped(why));
        None
    };
    match shadow.plan.decide(req.method())? {
        Ok(()) => {}
        Err(why) => return skip(why),
    }
    if http_body::Body::size_hint(req.body()).lower() > body_limit as u64 {
        return skip(Skip::BodyNotReplayable);
    }
    Some(Pending {
        traffic: traffic.clone(),
        state: registry.shadow(shadow),
        metrics: metrics.clone(),
    })
}

impl Pending {
    /// Sends `held` (the request as it was before its first attempt) to the
    /// shadow in the background, to be compared with `original`, the status
    /// the client got.
    pub fn launch(
        self,
        forwarder: &Forwarder,
        held: Option<Request<ReplayBody>>,
        original: StatusCode,
    ) {
        let Some(shadow) = self.traffic.mirror.as_ref() else {
            return;
        };
        let Some(copy) = held.and_then(whole) else {
            return count(
                shadow,
                &self.metrics,
                Outcome::Skipped(Skip::BodyNotReplayable),
            );
        };
        let slot = self.state.bulkhead.as_ref().and_then(|b| b.try_acquire());
        let Some(slot) = slot else {
            return count(shadow, &self.metrics, Outcome::Skipped(Skip::ShadowBusy));
        };
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let outcome = self.send(&forwarder, copy, original, slot).await;
            if let Some(shadow) = self.traffic.mirror.as_ref() {
                count(shadow, &self.metrics, outcome);
            }
        });
    }

    /// The original never reached an attempt (breakwater refused it first):
    /// a request without a body is still copied and compared with that
    /// answer; one with a body has no whole copy to send.
    pub fn refused(self, forwarder: &Forwarder, req: &Request<Incoming>, status: StatusCode) {
        if !http_body::Body::is_end_stream(req.body()) {
            if let Some(shadow) = self.traffic.mirror.as_ref() {
                count(
                    shadow,
                    &self.metrics,
                    Outcome::Skipped(Skip::BodyNotReplayable),
                );
            }
            return;
        }
        let mut copy = Request::new(ReplayBody::empty());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        self.launch(forwarder, Some(copy), status);
    }

    async fn send(
        &self,
        forwarder: &Forwarder,
        mut req: Request<ReplayBody>,
        original: StatusCode,
        _slot: BulkheadPermit,
    ) -> Outcome {
        let state = &self.state;
        if point_at_shadow(&mut req, state, self.traffic.keep_host).is_err() {
            return Outcome::Error;
        }
        let started = Instant::now();
        let timeout = state.policy.timeout;
        let ctx = RequestCtx {
            state,
            started,
            deadline: started + timeout,
            slot_granted: started,
            body: None,
        };
        let Ok(Sent { response, hold, .. }) = forwarder.send(&ctx, req, timeout).await else {
            return Outcome::Error;
        };
        let status = response.status();
        // Read and dropped, within the same deadline: a shadow that stalls
        // its body holds its own slot, nothing of the real path's.
        let read = tokio::time::timeout_at(ctx.deadline, response.into_body().collect()).await;
        match read {
            Ok(Ok(_)) => {
                hold.release();
                Outcome::Compared(Compared::of(original, status))
            }
            _ => Outcome::Error,
        }
    }
}

/// A copy whose body is whole, to be sent again from its first byte.
fn whole(held: Request<ReplayBody>) -> Option<Request<ReplayBody>> {
    let (parts, body) = held.into_parts();
    Some(Request::from_parts(parts, body.whole()?))
}

/// Addresses the copy to the shadow: its URI, and `Host` unless the route
/// keeps the client's.
fn point_at_shadow(
    req: &mut Request<ReplayBody>,
    state: &DestinationState,
    keep_host: bool,
) -> Result<(), http::Error> {
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(state.authority.clone());
    parts.scheme.get_or_insert(http::uri::Scheme::HTTP);
    parts
        .path_and_query
        .get_or_insert(http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from_parts(parts)?;
    let headers = req.headers_mut();
    if !keep_host {
        let host = HeaderValue::from_str(state.authority.as_str())?;
        headers.insert(header::HOST, host);
    }
    headers.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    Ok(())
}

fn count(shadow: &Shadow, metrics: &Metrics, outcome: Outcome) {
    shadow.count(outcome);
    let dest = shadow.plan.target.to_string();
    metrics.count_mirror(&dest, outcome.as_str());
    if !matches!(outcome, Outcome::Compared(Compared::Match)) {
        tracing::debug!(shadow = %dest, outcome = outcome.as_str(), "mirror");
    }
}
