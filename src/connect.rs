//! Opening TCP connections to upstreams for CONNECT tunnels, and name
//! resolution (cached) for every destination's endpoints.

pub mod dns;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

    /// The addresses of `host` (an address literal is its own answer).
    pub async fn resolve(&self, host: &str) -> Result<Arc<[std::net::IpAddr]>, ConnectError> {
        self.dns
            .resolve(host)
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host.to_string(),
                source,
            })
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
