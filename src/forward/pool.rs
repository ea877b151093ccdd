//! Connections to one endpoint (one resolved address): idle HTTP/1.1
//! connections reused most-recent-first, and one shared HTTP/2 connection.
//!
//! Pooling per endpoint rather than per host name is what lets breakers and
//! load balancing act on each address, while the request keeps its host name
//! in `Host` and `:authority`. No lock is shared between endpoints.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::replay::ReplayBody;

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
        Arc::new(EndpointPool {
            addr,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends over HTTP/1.1: a pooled connection if one is ready, else a new one.
    /// A request that a pooled connection closed on before sending goes on to the
    /// next connection: nothing reached the upstream.
    pub async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<ReplayBody>,
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
        let mut sender = self.connect_h1().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(sender))),
            Err(e) => Err(SendError::Broken(e)),
        }
    }

    /// Sends over the endpoint's HTTP/2 connection, opening it when there is none.
    pub async fn send_h2(&self, req: Request<ReplayBody>) -> Result<Response<Incoming>, SendError> {
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
        if idle.first().is_some_and(|(_, since)| since.elapsed() >= timeout) {
            idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < timeout);
        }
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, SendError> {
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
        Ok(TokioIo::new(stream))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<ReplayBody>, SendError> {
        let io = self.connect().await?;
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Broken)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ReplayBody>, SendError> {
        let io = self.connect().await?;
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
