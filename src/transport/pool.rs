//! Connections to one endpoint (one resolved address): idle HTTP/1.1
//! connections reused most-recent-first, and up to
//! `--h2-connections-per-endpoint` shared HTTP/2 connections taken in turn
//! (`pool/h2_set.rs` says why).
//!
//! Pooling per endpoint rather than per host name is what lets breakers and
//! load balancing act on each address, while the request keeps its host name
//! in `Host` and `:authority`. No lock is shared between endpoints.
//!
//! A connection lives at most `--upstream-max-connection-age`, less up to 10 %
//! drawn when it is made (so connections made together do not all go
//! together): behind a ClusterIP, kube-proxy chooses a pod per connection, and
//! only new connections reach the pods a scale-up added. An HTTP/1.1
//! connection past its age is closed when its exchange ends instead of going
//! back to the pool; an HTTP/2 one takes no new streams and closes when its
//! last stream ends. No request in flight is cut.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

mod connect_error;
mod h2_set;

pub use connect_error::ConnectError;
use h2_set::{Choice, H2Set};

use super::replay::ReplayBody;
use super::speaks::{ServerPreface, Speaks};
use crate::executor::BoxingExecutor;
use crate::tls::{Alpn, Origin, UpstreamIo};

/// Idle HTTP/1.1 connections kept per endpoint at most.
const MAX_IDLE: usize = 512;
/// Most bytes an upstream HTTP/1.1 connection buffers each way (hyper's floor is
/// 8 KiB): a response head must fit, as in Envoy's 60 KiB default, and a flat
/// write buffer keeps no more than this.
const UPSTREAM_MAX_BUF: usize = 64 * 1024;
/// Tries on pooled connections that turn out closed before a fresh one.
const STALE_RETRIES: usize = 3;
/// After an HTTP/2 connection opened beside live ones failed, how long before
/// another is tried.
const H2_REOPEN_WAIT: Duration = Duration::from_secs(1);

/// Why an attempt on this endpoint got no response.
pub enum SendError {
    /// No connection could be made. The request was not sent and comes back as
    /// it was given, so a retry needs no copy of it made in advance.
    Connect(ConnectError, Box<Request<ReplayBody>>),
    /// The connection broke before a complete response head.
    Broken(hyper::Error),
    /// The endpoint does not speak HTTP/2 (ALPN, or its answer to the preface).
    /// Nothing was sent: the request comes back for HTTP/1.1.
    Refused(Box<Request<ReplayBody>>),
}

/// How an HTTP/2 connection attempt ended.
enum H2Connect {
    Ready(H2Sender),
    /// The endpoint answered, but not in HTTP/2.
    Refused,
    /// It could not be reached.
    Failed(ConnectError),
}

type H1Sender = http1::SendRequest<ReplayBody>;
type H2Sender = http2::SendRequest<ReplayBody>;

/// Why no HTTP/2 connection was opened.
enum H2Failed {
    Refused,
    Connect(ConnectError),
}

impl H2Failed {
    /// The error, with the request that was not sent.
    fn give_back(self, req: Request<ReplayBody>) -> SendError {
        match self {
            H2Failed::Refused => SendError::Refused(Box::new(req)),
            H2Failed::Connect(cause) => SendError::Connect(cause, Box::new(req)),
        }
    }
}

/// An HTTP/1.1 connection, boxed once when it is made: a lease carries one
/// pointer, so the response body that holds it is no larger than with the
/// bare sender.
struct H1Conn {
    sender: H1Sender,
    /// When it last went idle.
    since: Instant,
    /// When it is too old to be used again.
    retire_at: Option<Instant>,
}

impl H1Conn {
    /// Whether it may carry another request at `now`.
    fn usable(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < idle_timeout
            && self.retire_at.is_none_or(|at| now < at)
    }
}

/// How an endpoint's connections are made and kept.
#[derive(Clone)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// TLS to this endpoint (`--route HOST,tls=true`).
    pub tls: Option<Origin>,
    /// HTTP/2 connections kept at most (`--h2-connections-per-endpoint`).
    pub h2_connections: usize,
    /// `--upstream-max-connection-age`; `None`: kept while they work.
    pub max_age: Option<Duration>,
}

pub struct EndpointPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_age: Option<Duration>,
    /// Boxed: a connection moves between here and its leases without being
    /// copied, and a lease stays one pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<H1Conn>>>,
    h2: Mutex<H2Set<H2Sender>>,
    /// Wakes the requests that wait for an HTTP/2 connection being opened.
    h2_opened: Notify,
    /// TLS to this endpoint (`--route HOST,tls=true`).
    tls: Option<Origin>,
    /// What the endpoint was learned to speak.
    speaks: Speaks,
}

/// A new connection, in the protocol the upstream agreed to, and when it
/// retires.
enum Fresh {
    H1(Box<H1Conn>),
    H2(H2Sender, Option<Instant>),
}

/// An HTTP/1.1 connection lent to one exchange; handed back when the response
/// body has ended, dropped (and closed once idle) otherwise.
pub struct Lease {
    pool: Arc<EndpointPool>,
    conn: Option<Box<H1Conn>>,
}

impl Lease {
    /// The response was read to its end: the connection may serve another.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

/// Room kept in the HTTP/2 set for a connection being opened: given back if
/// the opening fails or its request is dropped, and either way the requests
/// waiting for it are woken.
struct Opening<'a> {
    pool: &'a EndpointPool,
    kept: bool,
}

impl Opening<'_> {
    fn opened(mut self, sender: H2Sender, retire_at: Option<Instant>) {
        self.kept = false;
        self.pool.h2_set().opened(sender, retire_at);
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.kept {
            self.pool.h2_set().abandon();
        }
        self.pool.h2_opened.notify_waiters();
    }
}

impl EndpointPool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Self::with_tls(addr, connect_timeout, idle_timeout, None)
    }

    /// A pool whose connections speak TLS when `tls` is given, one HTTP/2
    /// connection, of any age.
    pub fn with_tls(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<Origin>,
    ) -> Arc<Self> {
        Self::with_options(
            addr,
            PoolOptions {
                connect_timeout,
                idle_timeout,
                tls,
                h2_connections: 1,
                max_age: None,
            },
        )
    }

    pub fn with_options(addr: SocketAddr, options: PoolOptions) -> Arc<Self> {
        Arc::new(EndpointPool {
            addr,
            connect_timeout: options.connect_timeout,
            idle_timeout: options.idle_timeout,
            max_age: options.max_age.filter(|age| !age.is_zero()),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(H2Set::new(options.h2_connections)),
            h2_opened: Notify::new(),
            tls: options.tls,
            speaks: Speaks::default(),
        })
    }

    fn h2_set(&self) -> MutexGuard<'_, H2Set<H2Sender>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// HTTP/2 connections open now, for `/upstreams`.
    pub fn h2_connections(&self) -> usize {
        self.h2_set().len()
    }

    /// When a connection made at `now` retires: the age less up to 10 %.
    fn retire_at(&self, now: Instant) -> Option<Instant> {
        let age = self.max_age?;
        let tenth = u64::try_from(age.as_nanos() / 10).unwrap_or(u64::MAX);
        now.checked_add(age.saturating_sub(Duration::from_nanos(fastrand::u64(..=tenth))))
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the endpoint speaks HTTP/2: learned yes, learned no, or untried.
    pub fn speaks_h2(&self) -> Option<bool> {
        self.speaks.h2()
    }

    /// What the endpoint was learned to speak, for `/upstreams`.
    pub fn speaks(&self) -> &Speaks {
        &self.speaks
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends over HTTP/1.1: a pooled connection if one is ready, else a new one,
    /// offering `alpn` on a new TLS connection: with [`Alpn::Any`] an upstream that
    /// picks HTTP/2 gets the request over HTTP/2. A request that a pooled
    /// connection closed on before sending goes on to the next connection: nothing
    /// reached the upstream. `req` comes with an absolute URI; `now` is the
    /// caller's clock reading.
    pub async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<ReplayBody>,
        alpn: Alpn,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let as_given = h1_wire_form(&mut req);
        for _ in 0..STALE_RETRIES {
            let Some(mut conn) = self.checkout(now) else {
                break;
            };
            if conn.sender.ready().await.is_err() {
                continue;
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    self.speaks.learned_http1();
                    return Ok((resp, self.lease(conn)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Broken(e.into_error())),
                },
            }
        }
        // Connecting is the rare path, and its future (TCP, TLS, handshake) is
        // large: boxed, so the future of every pooled exchange stays small.
        let fresh = Box::pin(self.connect_fresh(alpn)).await;
        let mut conn = match fresh {
            Ok(Fresh::H1(conn)) => conn,
            Err(cause) => {
                as_given.restore(&mut req);
                return Err(SendError::Connect(cause, Box::new(req)));
            }
            Ok(Fresh::H2(sender, retire_at)) => {
                self.h2_set().offer(sender.clone(), retire_at);
                self.h2_opened.notify_waiters();
                as_given.restore(&mut req);
                let resp = Box::pin(self.send_on_fresh_h2(sender, req)).await?;
                return Ok((
                    resp,
                    Lease {
                        pool: self.clone(),
                        conn: None,
                    },
                ));
            }
        };
        match conn.sender.send_request(req).await {
            Ok(resp) => {
                self.speaks.learned_http1();
                Ok((resp, self.lease(conn)))
            }
            Err(e) => Err(SendError::Broken(e)),
        }
    }

    /// Sends over one of the endpoint's HTTP/2 connections, taken in turn; while
    /// there are fewer than the limit, one more is opened (beside the others, if
    /// one is open). `req` comes with an absolute URI. An endpoint that turns out
    /// not to speak HTTP/2 gives the request back unsent
    /// ([`SendError::Refused`]), as a failed connect does
    /// ([`SendError::Connect`]).
    pub async fn send_h2(
        self: &Arc<Self>,
        mut req: Request<ReplayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let choice = self.h2_set().choose(Instant::now());
        let mut sender = match choice {
            Choice::Use(sender) => sender,
            // Opening and waiting are the rare path, and their futures large:
            // boxed, so that the future of every exchange stays small.
            other => match Box::pin(self.h2_carrier(other)).await {
                Ok(sender) => sender,
                Err(failed) => return Err(failed.give_back(req)),
            },
        };
        h2_wire_form(&mut req, self.tls.is_some());
        sender.send_request(req).await.map_err(SendError::Broken)
    }

    /// The connection a request goes on, when the set had none ready for it.
    async fn h2_carrier(
        self: &Arc<Self>,
        mut choice: Choice<H2Sender>,
    ) -> Result<H2Sender, H2Failed> {
        let mut waited = false;
        loop {
            match choice {
                Choice::Use(sender) => return Ok(sender),
                Choice::Open {
                    fallback: Some(live),
                } => {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let opening = Opening {
                            pool: &pool,
                            kept: true,
                        };
                        // Beside one that works, a failure or a refusal
                        // teaches nothing (see `connect_h2`).
                        if pool.open_h2(Some(opening), false).await.is_err() {
                            pool.h2_set().back_off(Instant::now() + H2_REOPEN_WAIT);
                        }
                    });
                    return Ok(live);
                }
                Choice::Open { fallback: None } => {
                    let opening = Opening {
                        pool: self,
                        kept: true,
                    };
                    return self.open_h2(Some(opening), true).await;
                }
                // It waited once: rather than wait on openings that keep
                // failing, it opens one of its own.
                Choice::Wait if waited => return self.open_h2(None, true).await,
                Choice::Wait => {
                    let notified = {
                        let mut set = self.h2_set();
                        choice = set.choose(Instant::now());
                        if !matches!(choice, Choice::Wait) {
                            continue;
                        }
                        // Made under the lock, so that the opener's wake-up,
                        // sent after it put its connection in, is not missed.
                        self.h2_opened.notified()
                    };
                    notified.await;
                    waited = true;
                    if self.speaks.h2() == Some(false) {
                        // Learned by the opening this request waited for.
                        return Err(H2Failed::Refused);
                    }
                    choice = self.h2_set().choose(Instant::now());
                }
            }
        }
    }

    /// Sends on an HTTP/2 connection just made (TLS picked it by ALPN).
    async fn send_on_fresh_h2(
        &self,
        mut sender: H2Sender,
        mut req: Request<ReplayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        h2_wire_form(&mut req, self.tls.is_some());
        sender.send_request(req).await.map_err(SendError::Broken)
    }

    /// A new HTTP/2 connection, put in the set: in the room `opening` kept, or
    /// if there is room. `learn`: as for [`Self::connect_h2`].
    async fn open_h2(
        &self,
        opening: Option<Opening<'_>>,
        learn: bool,
    ) -> Result<H2Sender, H2Failed> {
        let sender = match self.connect_h2(learn).await {
            H2Connect::Ready(sender) => sender,
            H2Connect::Refused => return Err(H2Failed::Refused),
            H2Connect::Failed(cause) => return Err(H2Failed::Connect(cause)),
        };
        let retire_at = self.retire_at(Instant::now());
        match opening {
            Some(opening) => opening.opened(sender.clone(), retire_at),
            None => {
                self.h2_set().offer(sender.clone(), retire_at);
                self.h2_opened.notify_waiters();
            }
        }
        Ok(sender)
    }

    fn lease(self: &Arc<Self>, conn: Box<H1Conn>) -> Lease {
        Lease {
            pool: self.clone(),
            conn: Some(conn),
        }
    }

    /// The most recently used idle connection still open, young enough and not
    /// past its age.
    fn checkout(&self, now: Instant) -> Option<Box<H1Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.usable(now, self.idle_timeout) {
                return Some(conn);
            }
        }
        None
    }

    /// Takes a connection back after its exchange; one past its age is
    /// dropped, which closes it.
    fn give_back(&self, mut conn: Box<H1Conn>) {
        let now = Instant::now();
        if conn.sender.is_closed() || conn.retire_at.is_some_and(|at| now >= at) {
            return;
        }
        conn.since = now;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the bottom: when it is past its time, sweep.
        if idle
            .first()
            .is_some_and(|c| !c.usable(now, self.idle_timeout))
        {
            idle.retain(|c| !c.sender.is_closed() && c.usable(now, self.idle_timeout));
        }
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// A new connection, TLS when the endpoint asks for it, and whether it speaks
    /// HTTP/2 (ALPN); or why there is none. `learn`: what ALPN says is what the
    /// endpoint speaks, and a failure forgets it.
    async fn connect(&self, alpn: Alpn, learn: bool) -> Result<(UpstreamIo, bool), ConnectError> {
        let connected = self.connect_io(alpn, learn).await;
        if connected.is_err() && learn {
            // It may come back as another build, speaking something else.
            self.speaks.forget();
        }
        connected
    }

    async fn connect_io(
        &self,
        alpn: Alpn,
        learn: bool,
    ) -> Result<(UpstreamIo, bool), ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::TimedOut(self.connect_timeout))?
            .map_err(ConnectError::Tcp)?;
        let _ = stream.set_nodelay(true);
        let Some(origin) = &self.tls else {
            return Ok((UpstreamIo::Plain(stream), false));
        };
        let Some(name) = origin.server_name.clone() else {
            return Err(ConnectError::ServerName);
        };
        let handshake = origin.client.connect(name, stream, alpn);
        let (tls, h2) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::TlsTimedOut(self.connect_timeout))?
            .map_err(|e| {
                if e.is_certificate() {
                    warn!(addr = %self.addr, error = %e, "upstream TLS certificate error");
                } else {
                    debug!(addr = %self.addr, error = %e, "upstream TLS handshake failed");
                }
                ConnectError::Tls(e)
            })?;
        if alpn != Alpn::H1 && learn {
            self.speaks.learned_h2(h2);
        }
        Ok((UpstreamIo::Tls(Box::new(tls)), h2))
    }

    /// A new connection with its HTTP handshake done: nothing has been sent on it
    /// yet, so a failure here is a connect failure.
    async fn connect_fresh(&self, alpn: Alpn) -> Result<Fresh, ConnectError> {
        let (io, h2) = self.connect(alpn, true).await?;
        let io = TokioIo::new(io);
        if h2 {
            let sender = self.handshake_h2(io).await?;
            return Ok(Fresh::H2(sender, self.retire_at(Instant::now())));
        }
        // Requests are mostly a head alone: one flat buffer and send(2) cost less
        // than hyper's vectored queue and writev(2). Responses to clients stay
        // vectored: a flat buffer would keep, on every client connection, the
        // capacity of the largest response it carried.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .max_buf_size(UPSTREAM_MAX_BUF)
            .handshake(io)
            .await
            .map_err(ConnectError::Http)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        let now = Instant::now();
        Ok(Fresh::H1(Box::new(H1Conn {
            sender,
            since: now,
            retire_at: self.retire_at(now),
        })))
    }

    /// A new HTTP/2 connection, once the endpoint has shown it speaks HTTP/2:
    /// over TLS by ALPN, in plaintext by the SETTINGS frame that opens a
    /// server's side (see [`super::speaks`]). No request is sent before.
    ///
    /// `learn`: the answer is what the endpoint speaks. Not for a connection
    /// opened beside live HTTP/2 ones: those show the endpoint speaks it, so a
    /// close before SETTINGS there is a pod going away (or one of an older build
    /// behind the same ClusterIP), and taken as a refusal it would send every
    /// call as HTTP/1.1 and refuse gRPC; it is a failed opening, nothing more.
    async fn connect_h2(&self, learn: bool) -> H2Connect {
        let (io, h2) = match self.connect(Alpn::H2, learn).await {
            Ok(connected) => connected,
            Err(cause) => return H2Connect::Failed(cause),
        };
        if self.tls.is_some() {
            if !h2 {
                return H2Connect::Refused;
            }
            return match self.handshake_h2(TokioIo::new(io)).await {
                Ok(sender) => H2Connect::Ready(sender),
                Err(cause) => H2Connect::Failed(cause),
            };
        }
        let (watched, verdict) = ServerPreface::new(io);
        let sender = match self.handshake_h2(TokioIo::new(watched)).await {
            Ok(sender) => sender,
            Err(cause) => return H2Connect::Failed(cause),
        };
        match tokio::time::timeout(self.connect_timeout, verdict).await {
            Ok(Ok(true)) => {
                self.speaks.learned_h2(true);
                H2Connect::Ready(sender)
            }
            // A status line, a close, or a dropped watcher: no HTTP/2 here.
            Ok(Ok(false)) | Ok(Err(_)) if learn => {
                debug!(addr = %self.addr, "endpoint refused HTTP/2 prior knowledge; HTTP/1.1 from now on");
                self.speaks.learned_h2(false);
                H2Connect::Refused
            }
            Ok(Ok(false)) | Ok(Err(_)) => {
                debug!(addr = %self.addr, "a further HTTP/2 connection closed before SETTINGS");
                H2Connect::Refused
            }
            Err(_) => H2Connect::Failed(ConnectError::NoSettings(self.connect_timeout)),
        }
    }

    async fn handshake_h2<I>(&self, io: I) -> Result<H2Sender, ConnectError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(BoxingExecutor);
        builder.timer(TokioTimer::new()).adaptive_window(true);
        let (sender, conn) = builder.handshake(io).await.map_err(ConnectError::Http)?;

        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// What [`h1_wire_form`] changed, to give an unsent request back as it came.
struct AsGiven {
    uri: Option<Uri>,
    version: Version,
}

impl AsGiven {
    fn restore(self, req: &mut Request<ReplayBody>) {
        if let Some(uri) = self.uri {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = self.version;
    }
}

/// HTTP/1.1 on the wire: an HTTP/2 client's request as 1.1, and the target in
/// origin form (the path and query; the host is in `Host`), but for CONNECT's
/// authority form.
fn h1_wire_form(req: &mut Request<ReplayBody>) -> AsGiven {
    let version = req.version();
    if version == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    let uri = (req.method() != Method::CONNECT).then(|| {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        std::mem::replace(req.uri_mut(), Uri::from(path))
    });
    AsGiven { uri, version }
}

/// HTTP/2 on the wire: the host in `:authority`, taken from `Host` (the name the
/// client used, not the address breakwater connects to) and no `Host` beside it,
/// as servers such as nginx refuse a request with both; `https` to a TLS upstream.
fn h2_wire_form(req: &mut Request<ReplayBody>, tls: bool) {
    *req.version_mut() = Version::HTTP_2;
    let host = req
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = req.uri().clone().into_parts();
    if let Some(authority) = host {
        parts.authority = Some(authority);
    }
    if tls {
        parts.scheme = Some(Scheme::HTTPS);
    } else if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absolute(version: Version) -> Request<ReplayBody> {
        let mut req = Request::new(ReplayBody::empty());
        *req.uri_mut() = Uri::from_static("http://app.local:8080/path?q=1");
        *req.version_mut() = version;
        req.headers_mut()
            .insert(http::header::HOST, "app.local:8080".parse().unwrap());
        req
    }

    /// A port nothing listens on: connecting is refused at once.
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_request_that_found_no_connection_comes_back_as_given() {
        let addr = closed_port().await;
        let pool = EndpointPool::new(addr, Duration::from_secs(1), Duration::from_secs(60));
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let Err(SendError::Connect(cause, req)) = pool
                .send_h1(absolute(version), Alpn::H1, Instant::now())
                .await
            else {
                panic!("expected a connect failure");
            };
            assert!(!cause.to_string().is_empty());
            assert_eq!(req.uri(), "http://app.local:8080/path?q=1");
            assert_eq!(req.version(), version);
            assert_eq!(req.headers()[http::header::HOST], "app.local:8080");
        }
        let Err(SendError::Connect(_, req)) = pool.send_h2(absolute(Version::HTTP_2)).await else {
            panic!("expected a connect failure");
        };
        assert_eq!(req.uri(), "http://app.local:8080/path?q=1");
        assert_eq!(req.headers()[http::header::HOST], "app.local:8080");
    }

    #[test]
    fn each_connection_ages_up_to_a_tenth_sooner() {
        let options = |max_age| PoolOptions {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            tls: None,
            h2_connections: 4,
            max_age,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let pool = EndpointPool::with_options(addr, options(Some(Duration::from_secs(100))));
        let now = Instant::now();
        let ages: Vec<Duration> = (0..1000)
            .map(|_| pool.retire_at(now).expect("an age") - now)
            .collect();
        let (min, max) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(*min >= Duration::from_secs(90), "{min:?}");
        assert!(*max <= Duration::from_secs(100), "{max:?}");
        assert!(
            max.saturating_sub(*min) > Duration::from_secs(8),
            "drawn apart"
        );
        for none in [None, Some(Duration::ZERO)] {
            let pool = EndpointPool::with_options(addr, options(none));
            assert_eq!(pool.retire_at(now), None, "{none:?}: kept while it works");
        }
    }

    #[test]
    fn wire_forms() {
        let mut req = absolute(Version::HTTP_2);
        let as_given = h1_wire_form(&mut req);
        assert_eq!(req.uri(), "/path?q=1");
        assert_eq!(req.version(), Version::HTTP_11);
        as_given.restore(&mut req);
        assert_eq!(req.uri(), "http://app.local:8080/path?q=1");
        assert_eq!(req.version(), Version::HTTP_2);

        let mut req = absolute(Version::HTTP_11);
        *req.uri_mut() = Uri::from_static("http://10.0.0.1:80/x");
        h2_wire_form(&mut req, true);
        assert_eq!(req.uri(), "https://app.local:8080/x");
        assert!(!req.headers().contains_key(http::header::HOST));
        assert_eq!(req.version(), Version::HTTP_2);
    }
}
