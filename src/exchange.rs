//! The part of proxying a request that both directions share: header hygiene,
//! the upstream URI, the deadline, the destination's bulkhead slot, protocol
//! upgrades, and turning the outcome into the client's response with its
//! [`InFlight`] guard attached.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::accounting::{AccessEntry, InFlight};
use crate::attempts;
use crate::body::ProxyBody;
use crate::context::RequestCtx;
use crate::drain::DrainWatch;
use crate::error::{Counted, ProxyError};
use crate::forward::Forwarder;
use crate::metrics::Direction;
use crate::mirror;
use crate::policy::bulkhead::Refusal;
use crate::policy::deadline;
use crate::policy::mode::{Mode, Observable};
use crate::policy::rate_limit::LimitKey;
use crate::rescue::rescue;
use crate::trace::{Kind, Tracer, Value};
use crate::transport::client_body::ClientBody;
use crate::transport::headers;
use crate::tunnel;
use crate::upstream::DestinationState;

/// Strips hop-by-hop headers and, for an upgrade request, takes the client side of
/// the upgrade before the request is handed on. Call before adding this hop's own
/// headers, so a `Connection` list cannot remove them.
pub fn prepare(req: &mut Request<Incoming>) -> Option<OnUpgrade> {
    let upgrade = headers::is_upgrade(req);
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    upgrade.then(|| hyper::upgrade::on(req))
}

/// Starts the access-log entry for a request, when the access log is on.
pub fn access_entry(direction: Direction, req: &Request<Incoming>) -> AccessEntry {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    AccessEntry {
        direction,
        method: req.method().clone(),
        authority,
        path: req.uri().path().to_string(),
        request_id: headers::request_id(req.headers())
            .map(|id| String::from_utf8_lossy(id).into_owned())
            .unwrap_or_default(),
        reason: None,
        broken_body: false,
        fault: None,
    }
}

/// Marks a gRPC request (HTTP/2 and `content-type: application/grpc…`), so that
/// breakwater's own answers to it are `grpc-status` and `grpc-message`. An
/// HTTP/1 request cannot be gRPC: it is spared the header lookup.
pub fn note_grpc<B>(req: &Request<B>, in_flight: &mut InFlight) {
    if req.version() == http::Version::HTTP_2 && crate::forward::is_grpc(req.headers()) {
        in_flight.mark_grpc();
    }
}

/// Rejects what the HTTP parser lets through but a proxy must not forward: a
/// request target longer than `max` bytes (`--max-uri-bytes`), an HTTP/1.1
/// request without `Host` or with more than one (RFC 9112 §3.2: a server MUST
/// answer 400; with two, the app and breakwater could each pick another).
pub fn check_request<B>(req: &Request<B>, max: usize) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if req.version() == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest(
                "an HTTP/1.1 request needs a Host header",
            ));
        }
        _ => {}
    }
    let uri = req.uri();
    let len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if len > max {
        return Err(ProxyError::UriTooLong(max));
    }
    Ok(())
}

/// Sends the request to `state`'s destination within its deadline, retrying as
/// its policy allows, and answers the client: the upstream's response as it came
/// (less hop-by-hop headers), or why there is none. The stages, in order:
/// upstream URI → deadline → bulkhead slot → the retry loop ([`attempts::send`];
/// per attempt [`Forwarder::send`]: pick → admit → per-try timeout(send) →
/// record) → adaptive limit → respond.
pub async fn send(
    forwarder: &Forwarder,
    state: &DestinationState,
    mut req: Request<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    mut in_flight: InFlight,
    drain: &DrainWatch,
    mirror: Option<mirror::Pending>,
) -> Response<ProxyBody> {
    let started = in_flight.started();
    let http1 = req.version() < http::Version::HTTP_2;
    let point = point_at(&mut req, &state.authority);
    let budget = budget(req.headers(), state);
    if budget < state.policy.timeout
        && let Some(t) = in_flight.trace_mut()
    {
        let ms = i64::try_from(budget.as_millis()).unwrap_or(i64::MAX);
        t.span.event(
            "deadline.adopted",
            &[("breakwater.deadline_ms", Value::Int(ms))],
        );
    }
    let slot = match point {
        Ok(()) => take_slot(state, &mut in_flight).await,
        Err(e) => Err(e),
    };
    if let Err(e) = slot {
        if let Some(mirror) = mirror {
            mirror.refused(forwarder, &req, e.status());
        }
        let unread = body_unread(&req);
        return fail(e, in_flight, unread);
    }
    let in_flight_at_start = state.bulkhead.as_ref().map_or(0, |b| b.in_flight());
    // The limiter judges the upstream, so its clock starts once a slot is held:
    // time in breakwater's own queue is not the upstream's latency. Without a
    // bulkhead there was no wait.
    let slot_granted = match state.bulkhead {
        Some(_) => Instant::now(),
        None => started,
    };
    let (req, watch) = {
        let (parts, body) = req.into_parts();
        let (body, watch) = ClientBody::new(body, forwarder.stream_idle());
        (Request::from_parts(parts, body), watch)
    };
    let ctx = RequestCtx {
        state,
        started,
        deadline: started + budget,
        slot_granted,
        body: watch.as_deref(),
    };
    let kept = attempts::keep_body(req, &state.policy.retry, mirror.is_some());
    // A mirror's copy: the head as it is now, the body as it will have been read.
    let held = mirror.as_ref().and_then(|_| attempts::copy_of(&kept.req));
    // The retry loop: per attempt pick → admit → per-try timeout(send) → record.
    let sent = attempts::send(forwarder, &ctx, kept, in_flight.trace_mut()).await;
    adapt_limit(&ctx, &sent, in_flight_at_start);
    if let Some(mirror) = mirror {
        let status = match &sent {
            Ok(answer) => answer.response.status(),
            Err(e) => e.status(),
        };
        mirror.launch(forwarder, held, status);
    }
    let (mut resp, first, hold) = match sent {
        Ok(answer) => (answer.response, answer.first_frame, answer.hold),
        Err(e) => {
            let unread = http1 && watch.as_ref().is_some_and(|w| !w.ended());
            return fail(e, in_flight, unread);
        }
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client) = client_upgrade {
        let upstream = hyper::upgrade::on(&mut resp);
        tunnel::relay_upgrade(client, upstream, drain.clone(), forwarder.stream_idle());
    }
    headers::strip_hop_by_hop(resp.headers_mut(), switching);
    in_flight.set_status(resp.status().as_u16());
    let idle = forwarder.stream_idle();
    resp.map(|body| ProxyBody::upstream(body, first, hold, idle).with_in_flight(in_flight))
}

/// The request's time: the route's `timeout`, or the caller's shorter
/// deadline (a caller that announced one will not wait for ours).
pub fn budget(headers: &http::HeaderMap, state: &DestinationState) -> std::time::Duration {
    match deadline::incoming(headers) {
        Some(theirs) => theirs.min(state.policy.timeout),
        None => state.policy.timeout,
    }
}

/// Starts the request's trace, when tracing is on and the request is to be
/// kept: its span, named by the method, with what the request is and where
/// it goes.
pub fn start_trace<B>(
    tracer: Option<&Tracer>,
    req: &Request<B>,
    kind: Kind,
    state: Option<&DestinationState>,
    in_flight: &mut InFlight,
) {
    let Some(tracer) = tracer else { return };
    let Some(mut t) = tracer.start(req.headers(), kind, req.method(), in_flight.started()) else {
        return;
    };
    let span = &mut t.span;
    span.set("http.request.method", req.method().as_str());
    span.set("url.path", req.uri().path());
    let version = match req.version() {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    span.set("network.protocol.version", version);
    // Inbound or outbound is the span's kind (SERVER, CLIENT): no attribute.
    if let Some(state) = state {
        span.set("server.address", &*state.host_name);
        span.set("server.port", i64::from(state.dest.port()));
        span.set("breakwater.destination", &*state.dest_name);
        span.set("breakwater.route", &*state.route);
    }
    in_flight.set_trace(t);
}

/// The deadline a fault's delay must not outlast.
pub fn fault_deadline<'a>(
    req: &Request<Incoming>,
    state: &'a DestinationState,
    in_flight: &InFlight,
) -> crate::fault::Deadline<'a> {
    let budget = budget(req.headers(), state);
    crate::fault::Deadline {
        at: in_flight.started() + budget,
        budget,
        dest: &state.dest,
    }
}

/// Takes a token from the destination's rate limit, if it has one: from the
/// bucket of the request's `rate-limit-key` (a header's value, or the
/// client's verified `identity`; without one, the bucket of requests with
/// none). Spent, it refuses with the wait for the next token, unless the
/// limit is observed.
pub fn admit_rate<B>(
    state: &DestinationState,
    req: &Request<B>,
    identity: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(());
    };
    let key: &[u8] = match limiter.key() {
        LimitKey::Shared => b"",
        LimitKey::Header(name) => req.headers().get(name).map_or(b"", HeaderValue::as_bytes),
        LimitKey::Identity => identity.map_or(b"", HeaderValue::as_bytes),
    };
    let Err(wait) = limiter.try_take(key, std::time::Instant::now()) else {
        return Ok(());
    };
    if state.mode(Observable::RateLimit) == Mode::Observe {
        state.observe(Observable::RateLimit, Observable::RateLimit.action());
        return Ok(());
    }
    let scope = if &*state.route == crate::upstream::DEFAULT_ROUTE {
        state.dest.to_string()
    } else {
        format!("{} (route {})", state.dest, state.route)
    };
    Err(ProxyError::RateLimited {
        scope,
        limit: format!("{}/s", limiter.limit().per_second),
        retry_after: wait,
    })
}

/// Takes a slot in the destination's bulkhead (if it has one), waiting in its
/// queue if allowed; the refusal says which limit was hit.
pub async fn take_slot(
    state: &DestinationState,
    in_flight: &mut InFlight,
) -> Result<(), ProxyError> {
    let Some(bulkhead) = &state.bulkhead else {
        return Ok(());
    };
    if state.mode(Observable::Bulkhead) == Mode::Observe {
        // Observed: a free slot is taken (the limit still sees the load), but
        // no request waits or is refused for want of one.
        match bulkhead.try_acquire() {
            Some(slot) => in_flight.hold_slot(slot),
            None => {
                let action = if bulkhead.queues() { "queue" } else { "reject" };
                state.observe(Observable::Bulkhead, action);
            }
        }
        return Ok(());
    }
    let traced = in_flight.trace_mut().is_some();
    let waited = if traced {
        // The same first step as `acquire`: a free slot now, else the queue.
        if let Some(slot) = bulkhead.try_acquire() {
            in_flight.hold_slot(slot);
            return Ok(());
        }
        Some(Instant::now())
    } else {
        None
    };
    if let (Some(_), Some(t)) = (waited, in_flight.trace_mut())
        && bulkhead.queues()
    {
        t.span.event("bulkhead.queued", &[]);
    }
    let slot = bulkhead.acquire().await;
    // Sampled as requests pass: the gauge lags, /upstreams is exact.
    state.metrics.queued.set(bulkhead.queued() as i64);
    if let (Some(since), Some(t)) = (waited, in_flight.trace_mut()) {
        let ms = i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX);
        let event = match &slot {
            Ok(_) => "bulkhead.granted",
            Err(Refusal::Full) => "bulkhead.full",
            Err(Refusal::QueueTimeout) => "bulkhead.timed-out",
        };
        t.span
            .event(event, &[("breakwater.wait_ms", Value::Int(ms))]);
    }
    match slot {
        Ok(slot) => {
            in_flight.hold_slot(slot);
            Ok(())
        }
        Err(Refusal::Full) => Err(ProxyError::BulkheadFull(state.dest.to_string())),
        Err(Refusal::QueueTimeout) => Err(ProxyError::QueueTimeout(state.dest.to_string())),
    }
}

/// Feeds `--max-concurrent auto`: the time to the response head from the held
/// slot, the load it was sent under, and whether the upstream shed it
/// (timeout, 503, 429).
fn adapt_limit(
    ctx: &RequestCtx<'_>,
    sent: &Result<attempts::Answer, ProxyError>,
    in_flight: usize,
) {
    let state = ctx.state;
    let (Some(adaptive), Some(bulkhead)) = (&state.adaptive, &state.bulkhead) else {
        return;
    };
    let dropped = match sent {
        Ok(a) => matches!(a.response.status().as_u16(), 429 | 503),
        Err(e) => matches!(e, ProxyError::Timeout { .. }),
    };
    let now = Instant::now();
    let mut limit = adaptive.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(new) = limit.on_sample(now - ctx.slot_granted, in_flight, dropped, now) {
        bulkhead.set_limit(new);
        state.metrics.limit.set(new as i64);
        tracing::debug!(dest = %state.dest, limit = new, "concurrency limit moved");
    }
}

/// Whether an HTTP/1 client may still be sending a body that breakwater will
/// not read, when breakwater answers before forwarding the request.
pub fn body_unread<B: http_body::Body>(req: &Request<B>) -> bool {
    req.version() < http::Version::HTTP_2 && !req.body().is_end_stream()
}

/// The answer for a request breakwater could not complete, counted as such:
/// to a gRPC client, HTTP 200 with the `grpc-status` that says why (recorded
/// as status 200, as gRPC counts it). With `body_unread` (HTTP/1 only: a client still sending a body that nobody
/// will read), the answer says `Connection: close` and the connection closes
/// after it: the bytes left cannot be told from the next request, and a client
/// that was not told would send that next request into a closed connection.
pub fn fail(err: ProxyError, mut in_flight: InFlight, body_unread: bool) -> Response<ProxyBody> {
    tracing::debug!(reason = err.reason(), error = %err, "request failed");
    // Whose doing it was decides where it is counted (`error::Counted`).
    let metrics = in_flight.metrics();
    match err.kind().counted_as() {
        Counted::ClientError => metrics.count_client_error(err.reason()),
        Counted::Rejection => metrics.count_rejected(err.reason()),
        Counted::UpstreamFailure => metrics.count_failure(err.reason()),
    }
    let grpc = in_flight.is_grpc();
    in_flight.set_status(if grpc { 200 } else { err.status().as_u16() });
    in_flight.set_failure(err.reason());
    if let Some(a) = in_flight.access_mut() {
        a.reason = Some(err.reason());
    }
    if let Some(t) = in_flight.trace_mut() {
        t.fail(err.reason());
    }
    let mut resp = rescue(&err, grpc);
    if body_unread {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|b| b.with_in_flight(in_flight))
}

/// Rewrites the URI to `http://authority/path?query`, what the pooled client needs
/// to pick the connection; `Host` keeps the name the client used.
fn point_at(req: &mut Request<Incoming>, authority: &Authority) -> Result<(), ProxyError> {
    if !req.headers().contains_key(header::HOST) {
        // HTTP/2 carries the host in :authority; an HTTP/1 upstream needs Host.
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("the request target cannot be proxied"))?;
    Ok(())
}
