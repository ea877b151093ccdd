//! TLS origination to upstreams (`--route HOST,tls=true`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::warn;

use super::{
    ALPN_H1, ALPN_H2, HandshakeError, OutboundTlsConfig, Reloadable, TlsError, TlsMetrics,
    parse_certs, parse_key, provider, roots, watch,
};

/// Client configs for each set of ALPN protocols offered.
struct ClientConfigs {
    any: Arc<ClientConfig>,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

/// Which protocols a client handshake offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
    /// HTTP/2 if the upstream takes it, else HTTP/1.1.
    Any,
}

/// Outbound TLS: client configs that follow their files.
pub struct ClientTls {
    configs: Reloadable<ClientConfigs>,
    metrics: TlsMetrics,
}

impl ClientTls {
    pub fn load(cfg: &OutboundTlsConfig, metrics: &TlsMetrics) -> Result<Arc<Self>, TlsError> {
        let mut paths = Vec::new();
        let ca_at = cfg.ca.as_ref().map(|p| {
            paths.push(p.clone());
            paths.len() - 1
        });
        let cert_at = match (&cfg.cert, &cfg.key) {
            (Some(c), Some(k)) => {
                paths.push(c.clone());
                paths.push(k.clone());
                Some(paths.len() - 2)
            }
            (None, None) => None,
            _ => return Err(TlsError::CertWithoutKey),
        };
        let system = if ca_at.is_none() {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                warn!(error = %e, "a system root certificate could not be loaded");
            }
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            Some(Arc::new(store))
        } else {
            None
        };
        let m = metrics.clone();
        let p = paths.clone();
        let build = move |bytes: &[Vec<u8>]| -> Result<ClientConfigs, TlsError> {
            let mut gauges = Vec::new();
            let roots = match (&system, ca_at) {
                (Some(s), _) => s.clone(),
                (None, Some(i)) => {
                    let ca = parse_certs(&bytes[i], &p[i])?;
                    gauges.push(("outbound-ca", ca.clone(), true));
                    Arc::new(roots(ca, &p[i])?)
                }
                (None, None) => Arc::new(RootCertStore::empty()),
            };
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Provider)?
                .with_root_certificates(roots);
            let config = match cert_at {
                Some(i) => {
                    let certs = parse_certs(&bytes[i], &p[i])?;
                    let key = parse_key(&bytes[i + 1], &p[i + 1])?;
                    gauges.push(("outbound-client", certs.clone(), false));
                    builder
                        .with_client_auth_cert(certs, key)
                        .map_err(|source| TlsError::Rejected {
                            path: p[i + 1].clone(),
                            source,
                        })?
                }
                None => builder.with_no_client_auth(),
            };
            let with = |alpn: &[&[u8]]| {
                let mut c = config.clone();
                c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
                Arc::new(c)
            };
            // Only material that is taken shows in the expiry gauge.
            for (label, certs, earliest) in &gauges {
                m.expiry(label, certs, *earliest);
            }
            Ok(ClientConfigs {
                any: with(&[ALPN_H2, ALPN_H1]),
                h1: with(&[ALPN_H1]),
                h2: with(&[ALPN_H2]),
            })
        };
        let tls = Arc::new(ClientTls {
            configs: Reloadable::load("outbound", paths, Box::new(build))?,
            metrics: metrics.clone(),
        });
        watch(&tls, |t| &t.configs);
        Ok(tls)
    }

    /// The TLS handshake to an upstream; the stream, and whether it agreed to HTTP/2.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, bool), HandshakeError> {
        let configs = self.configs.current();
        let config = match alpn {
            Alpn::Any => configs.any.clone(),
            Alpn::H1 => configs.h1.clone(),
            Alpn::H2 => configs.h2.clone(),
        };
        match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(s) => {
                self.metrics.handshake("outbound", "ok");
                let h2 = s.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                Ok((s, h2))
            }
            Err(e) => {
                let e = HandshakeError::classify(e);
                self.metrics.handshake("outbound", e.result());
                Err(e)
            }
        }
    }
}

/// TLS for one upstream: the client configs and the name to verify and send as SNI.
#[derive(Clone)]
pub struct Origin {
    pub client: Arc<ClientTls>,
    /// `None` when the host is not a valid DNS name or IP address.
    pub server_name: Option<ServerName<'static>>,
}

impl Origin {
    pub fn new(client: Arc<ClientTls>, host: &str) -> Self {
        Origin {
            client,
            server_name: ServerName::try_from(host.to_string()).ok(),
        }
    }
}

/// An upstream connection: plain TCP or TLS.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
