//! Connections to one endpoint (one resolved address): idle HTTP/1.1
//! connections reused most-recent-first, and one shared HTTP/2 connection.
//!
//! Pooling per endpoint rather than per host name is what lets breakers and
//! load balancing act on each address, while the request keeps its host name
//! in `Host` and `:authority`. No lock is shared between endpoints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

mod connect_error;

pub use connect_error::ConnectError;

use super::replay::ReplayBody;
use super::speaks::{ServerPreface, Speaks};
use crate::tls::{Alpn, Origin, UpstreamIo};

/// Idle HTTP/1.1 connections kept per endpoint at most.
const MAX_IDLE: usize = 512;
/// Most bytes an upstream HTTP/1.1 connection buffers each way (hyper's floor is
/// 8 KiB): a response head must fit, as in Envoy's 60 KiB default, and a flat
/// write buffer keeps no more than this.
const UPSTREAM_MAX_BUF: usize = 64 * 1024;
/// Tries on pooled connections that turn out closed before a fresh one.
const STALE_RETRIES: usize = 3;

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
    Ready(http2::SendRequest<ReplayBody>),
    /// The endpoint answered, but not in HTTP/2.
    Refused,
    /// It could not be reached.
    Failed(ConnectError),
}

pub struct EndpointPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(http1::SendRequest<ReplayBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<ReplayBody>>>,
    /// TLS to this endpoint (`--route HOST,tls=true`).
    tls: Option<Origin>,
    /// What the endpoint was learned to speak.
    speaks: Speaks,
}

/// A new connection, in the protocol the upstream agreed to.
enum Fresh {
    H1(http1::SendRequest<ReplayBody>),
    H2(http2::SendRequest<ReplayBody>),
}

/// An HTTP/1.1 connection lent to one exchange; handed back when the response
/// body has ended, dropped (and closed once idle) otherwise.
pub struct Lease {
    pool: Arc<EndpointPool>,
    sender: Option<http1::SendRequest<ReplayBody>>,
}

impl Lease {
    /// The response was read to its end: the connection may serve another.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.give_back(sender);
        }
    }
}

impl EndpointPool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Self::with_tls(addr, connect_timeout, idle_timeout, None)
    }

    /// A pool whose connections speak TLS when `tls` is given.
    pub fn with_tls(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<Origin>,
    ) -> Arc<Self> {
        Arc::new(EndpointPool {
            addr,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            tls,
            speaks: Speaks::default(),
        })
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
            let Some(mut sender) = self.checkout(now) else {
                break;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.speaks.learned_http1();
                    return Ok((resp, self.lease(sender)));
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
        let mut sender = match fresh {
            Ok(Fresh::H1(sender)) => sender,
            Err(cause) => {
                as_given.restore(&mut req);
                return Err(SendError::Connect(cause, Box::new(req)));
            }
            Ok(Fresh::H2(sender)) => {
                *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
                as_given.restore(&mut req);
                let resp = Box::pin(self.send_h2(req)).await?;
                return Ok((
                    resp,
                    Lease {
                        pool: self.clone(),
                        sender: None,
                    },
                ));
            }
        };
        match sender.send_request(req).await {
            Ok(resp) => {
                self.speaks.learned_http1();
                Ok((resp, self.lease(sender)))
            }
            Err(e) => Err(SendError::Broken(e)),
        }
    }

    /// Sends over the endpoint's HTTP/2 connection, opening it when there is none.
    /// `req` comes with an absolute URI. An endpoint that turns out not to speak
    /// HTTP/2 gives the request back unsent ([`SendError::Refused`]).
    pub async fn send_h2(
        &self,
        mut req: Request<ReplayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let existing = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| !s.is_closed());
        let mut sender = match existing {
            Some(s) => s,
            None => match Box::pin(self.connect_h2()).await {
                H2Connect::Ready(s) => {
                    *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                    s
                }
                H2Connect::Refused => return Err(SendError::Refused(Box::new(req))),
                H2Connect::Failed(cause) => return Err(SendError::Connect(cause, Box::new(req))),
            },
        };
        sender.ready().await.map_err(SendError::Broken)?;
        h2_wire_form(&mut req, self.tls.is_some());
        sender.send_request(req).await.map_err(SendError::Broken)
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<ReplayBody>) -> Lease {
        Lease {
            pool: self.clone(),
            sender: Some(sender),
        }
    }

    /// The most recently used idle connection still open and young enough.
    fn checkout(&self, now: Instant) -> Option<http1::SendRequest<ReplayBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && now.saturating_duration_since(since) < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<ReplayBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let fresh = |since: Instant| now.saturating_duration_since(since) < self.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the bottom: when it is past its time, sweep.
        if idle.first().is_some_and(|(_, since)| !fresh(*since)) {
            idle.retain(|(s, since)| !s.is_closed() && fresh(*since));
        }
        if idle.len() < MAX_IDLE {
            idle.push((sender, now));
        }
    }

    /// A new connection, TLS when the endpoint asks for it, and whether it speaks
    /// HTTP/2 (ALPN); or why there is none.
    async fn connect(&self, alpn: Alpn) -> Result<(UpstreamIo, bool), ConnectError> {
        let connected = self.connect_io(alpn).await;
        if connected.is_err() {
            // It may come back as another build, speaking something else.
            self.speaks.forget();
        }
        connected
    }

    async fn connect_io(&self, alpn: Alpn) -> Result<(UpstreamIo, bool), ConnectError> {
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
        if alpn != Alpn::H1 {
            self.speaks.learned_h2(h2);
        }
        Ok((UpstreamIo::Tls(Box::new(tls)), h2))
    }

    /// A new connection with its HTTP handshake done: nothing has been sent on it
    /// yet, so a failure here is a connect failure.
    async fn connect_fresh(&self, alpn: Alpn) -> Result<Fresh, ConnectError> {
        let (io, h2) = self.connect(alpn).await?;
        let io = TokioIo::new(io);
        if h2 {
            return self.handshake_h2(io).await.map(Fresh::H2);
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
        Ok(Fresh::H1(sender))
    }

    /// A new HTTP/2 connection, once the endpoint has shown it speaks HTTP/2:
    /// over TLS by ALPN, in plaintext by the SETTINGS frame that opens a
    /// server's side (see [`super::speaks`]). No request is sent before.
    async fn connect_h2(&self) -> H2Connect {
        let (io, h2) = match self.connect(Alpn::H2).await {
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
            Ok(Ok(false)) | Ok(Err(_)) => {
                debug!(addr = %self.addr, "endpoint refused HTTP/2 prior knowledge; HTTP/1.1 from now on");
                self.speaks.learned_h2(false);
                H2Connect::Refused
            }
            Err(_) => H2Connect::Failed(ConnectError::NoSettings(self.connect_timeout)),
        }
    }

    async fn handshake_h2<I>(&self, io: I) -> Result<http2::SendRequest<ReplayBody>, ConnectError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
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
