//! Connections to one endpoint (one resolved address): idle HTTP/1.1
//! connections reused most-recent-first, and one shared HTTP/2 connection.
//!
//! Pooling per endpoint rather than per host name is what lets breakers and
//! load balancing act on each address, while the request keeps its host name
//! in `Host` and `:authority`. No lock is shared between endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::replay::ReplayBody;
use crate::tls::{Alpn, Origin, UpstreamIo};

/// Idle HTTP/1.1 connections kept per endpoint at most.
const MAX_IDLE: usize = 512;
/// Tries on pooled connections that turn out closed before a fresh one.
const STALE_RETRIES: usize = 3;

/// Why an attempt on this endpoint got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(String),
    /// The connection broke before a complete response head.
    Broken(hyper::Error),
}

pub struct EndpointPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<(http1::SendRequest<ReplayBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<ReplayBody>>>,
    /// TLS to this endpoint (`--route HOST,tls=true`).
    tls: Option<Origin>,
    /// The upstream agreed to HTTP/2 on ALPN: later requests go over HTTP/2.
    alpn_h2: AtomicBool,
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
            alpn_h2: AtomicBool::new(false),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A TLS upstream that negotiated HTTP/2 on ALPN.
    pub fn speaks_h2(&self) -> bool {
        self.alpn_h2.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends over HTTP/1.1: a pooled connection if one is ready, else a new one.
    /// A request that a pooled connection closed on before sending goes on to the
    /// next connection: nothing reached the upstream.
    pub async fn send_h1(
        self: &Arc<Self>,
        req: Request<ReplayBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        self.send_h1_alpn(req, Alpn::H1).await
    }

    /// [`send_h1`](Self::send_h1), offering `alpn` on a new TLS connection: with
    /// [`Alpn::Any`] an upstream that picks HTTP/2 gets the request over HTTP/2.
    pub async fn send_h1_alpn(
        self: &Arc<Self>,
        mut req: Request<ReplayBody>,
        alpn: Alpn,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        for _ in 0..STALE_RETRIES {
            let Some(mut sender) = self.checkout() else {
                break;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Broken(e.into_error())),
                },
            }
        }
        let mut sender = match self.connect_fresh(alpn).await? {
            Fresh::H1(sender) => sender,
            Fresh::H2(sender) => {
                *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
                let resp = self.send_h2(req).await?;
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
            Ok(resp) => Ok((resp, self.lease(sender))),
            Err(e) => Err(SendError::Broken(e)),
        }
    }

    /// Sends over the endpoint's HTTP/2 connection, opening it when there is none.
    pub async fn send_h2(
        &self,
        mut req: Request<ReplayBody>,
    ) -> Result<Response<Incoming>, SendError> {
        if self.tls.is_some() {
            https_absolute(&mut req);
        }
        let existing = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| !s.is_closed());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = self.connect_h2().await?;
                *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                s
            }
        };
        sender.ready().await.map_err(SendError::Broken)?;
        sender.send_request(req).await.map_err(SendError::Broken)
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<ReplayBody>) -> Lease {
        Lease {
            pool: self.clone(),
            sender: Some(sender),
        }
    }

    /// The most recently used idle connection still open and young enough.
    fn checkout(&self) -> Option<http1::SendRequest<ReplayBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<ReplayBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the bottom: when it is past its time, sweep.
        let timeout = self.idle_timeout;
        if idle
            .first()
            .is_some_and(|(_, since)| since.elapsed() >= timeout)
        {
            idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < timeout);
        }
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    async fn connect(&self, alpn: Alpn) -> Result<(TokioIo<UpstreamIo>, bool), SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let Some(origin) = &self.tls else {
            return Ok((TokioIo::new(UpstreamIo::Plain(stream)), false));
        };
        let Some(name) = origin.server_name.clone() else {
            return Err(SendError::Connect(
                "the host is not a valid TLS server name".into(),
            ));
        };
        let handshake = origin.client.connect(name, stream, alpn);
        let (tls, h2) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "TLS handshake timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| {
                if e.contains("certificate") {
                    warn!(addr = %self.addr, error = %e, "upstream TLS certificate error");
                } else {
                    debug!(addr = %self.addr, error = %e, "upstream TLS handshake failed");
                }
                SendError::Connect(e)
            })?;
        if h2 {
            self.alpn_h2.store(true, Ordering::Relaxed);
        }
        Ok((TokioIo::new(UpstreamIo::Tls(Box::new(tls))), h2))
    }

    async fn connect_fresh(&self, alpn: Alpn) -> Result<Fresh, SendError> {
        let (io, h2) = self.connect(alpn).await?;
        if h2 {
            return self.handshake_h2(io).await.map(Fresh::H2);
        }
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Broken)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Fresh::H1(sender))
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ReplayBody>, SendError> {
        let (io, _) = self.connect(Alpn::H2).await?;
        self.handshake_h2(io).await
    }

    async fn handshake_h2(
        &self,
        io: TokioIo<UpstreamIo>,
    ) -> Result<http2::SendRequest<ReplayBody>, SendError> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).adaptive_window(true);
        let (sender, conn) = builder.handshake(io).await.map_err(SendError::Broken)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// An HTTP/2 request to a TLS upstream: `https` scheme, and the authority from
/// `Host` when the URI is in origin form (a request first meant for HTTP/1.1).
fn https_absolute(req: &mut Request<ReplayBody>) {
    let uri = req.uri().clone();
    let authority = match uri.authority() {
        Some(a) => Some(a.clone()),
        None => req
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok()),
    };
    let mut parts = uri.into_parts();
    if let Some(authority) = authority {
        parts.authority = Some(authority);
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = http::Version::HTTP_2;
}
