//! Opening TCP connections to upstreams for CONNECT tunnels, and name
//! resolution (cached) for every destination's endpoints.

pub mod dns;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::discovery::kubernetes::KubeDiscovery;
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

/// Resolves and connects; shared by the pooled clients and CONNECT tunnels. It
/// knows no routes: each caller says how long a connect may take.
pub struct Connector {
    dns: DnsCache,
    /// `--discovery kubernetes`: Services become their pods.
    discovery: Option<Arc<KubeDiscovery>>,
}

impl Connector {
    pub fn new(dns_ttl: Duration) -> Self {
        Connector {
            dns: DnsCache::new(dns_ttl),
            discovery: None,
        }
    }

    /// Asks `discovery` before DNS for each destination.
    pub fn with_discovery(mut self, discovery: Option<Arc<KubeDiscovery>>) -> Self {
        self.discovery = discovery;
        self
    }

    pub fn discovery(&self) -> Option<&Arc<KubeDiscovery>> {
        self.discovery.as_ref()
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

    /// Connects to `host:port`, trying each resolved address in turn within
    /// `timeout` in all.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
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
