//! Opening TCP connections to upstreams: resolve (cached), connect with the
//! destination's connect timeout, set socket options. Also the connector the pooled
//! HTTP clients use, so a new pooled connection goes through the same path.

pub mod dns;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream::RouteTable;
use dns::DnsCache;

/// Why a TCP connection to an upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the request URI has no host")]
    NoHost,
}

/// Resolves and connects; shared by the pooled clients and CONNECT tunnels.
pub struct Connector {
    dns: DnsCache,
    routes: Option<Arc<RouteTable>>,
    connect_timeout: Duration,
}

impl Connector {
    /// `routes` gives per-destination connect timeouts (outbound); without it, every
    /// connection uses `connect_timeout` (inbound, to the app).
    pub fn new(
        dns_ttl: Duration,
        connect_timeout: Duration,
        routes: Option<Arc<RouteTable>>,
    ) -> Self {
        Connector {
            dns: DnsCache::new(dns_ttl),
            routes,
            connect_timeout,
        }
    }

    fn timeout_for(&self, host: &str, port: u16) -> Duration {
        self.routes
            .as_ref()
            .and_then(|r| r.connect_timeout_for(host, port))
            .unwrap_or(self.connect_timeout)
    }

    /// Connects to `host:port`, trying each resolved address in turn within one
    /// connect timeout.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let timeout = self.timeout_for(host, port);
        let attempt = async {
            let addrs = self
                .dns
                .resolve(host)
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: host.to_string(),
                    source,
                })?;
            let mut last = None;
            for ip in addrs.iter() {
                match TcpStream::connect(SocketAddr::new(*ip, port)).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(ConnectError::Io(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
            })))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }
}

/// The `tower::Service<Uri>` face of a [`Connector`], for hyper-util's pooled client.
#[derive(Clone)]
pub struct HttpConnector(pub Arc<Connector>);

impl tower_service::Service<Uri> for HttpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            connector.connect(host, port).await.map(TokioIo::new)
        })
    }
}
