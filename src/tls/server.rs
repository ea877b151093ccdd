//! TLS termination on the inbound listener.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;

use super::{
    ALPN_H1, ALPN_H2, HandshakeError, InboundTlsConfig, Reloadable, TlsError, TlsMetrics, identity,
    parse_certs, parse_key, provider, roots, watch,
};

/// The inbound listener's TLS: a server config that follows its files.
pub struct ServerTls {
    config: Reloadable<ServerConfig>,
    metrics: TlsMetrics,
}

impl ServerTls {
    pub fn load(cfg: &InboundTlsConfig, metrics: &TlsMetrics) -> Result<Arc<Self>, TlsError> {
        let mut paths = vec![cfg.cert.clone(), cfg.key.clone()];
        if let Some(ca) = &cfg.client_ca {
            paths.push(ca.clone());
        }
        let m = metrics.clone();
        let p = paths.clone();
        let build = move |bytes: &[Vec<u8>]| -> Result<ServerConfig, TlsError> {
            let certs = parse_certs(&bytes[0], &p[0])?;
            let key = parse_key(&bytes[1], &p[1])?;
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Provider)?;
            let mut ca_expiry = None;
            let builder = match (bytes.get(2), p.get(2)) {
                (Some(ca), Some(path)) => {
                    let ca_certs = parse_certs(ca, path)?;
                    ca_expiry = Some(ca_certs.clone());
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots(ca_certs, path)?),
                        provider(),
                    )
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        path: path.clone(),
                        source,
                    })?;
                    builder.with_client_cert_verifier(verifier)
                }
                _ => builder.with_no_client_auth(),
            };
            let leaf = certs.clone();
            let mut config =
                builder
                    .with_single_cert(certs, key)
                    .map_err(|source| TlsError::Rejected {
                        path: p[1].clone(),
                        source,
                    })?;
            // Only material that is taken shows in the expiry gauge.
            m.expiry("inbound", &leaf, false);
            if let Some(ca) = ca_expiry {
                m.expiry("inbound-client-ca", &ca, true);
            }
            config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_H1.to_vec()];
            Ok(config)
        };
        let tls = Arc::new(ServerTls {
            config: Reloadable::load("inbound", paths, Box::new(build))?,
            metrics: metrics.clone(),
        });
        watch(&tls, |t| &t.config);
        Ok(tls)
    }

    /// Counts a connection refused before its handshake (plain HTTP).
    pub fn count_failure(&self) {
        self.metrics.handshake("inbound", "failed");
    }

    /// The TLS handshake on an accepted connection, within `timeout`; the
    /// stream and the verified client identity, if the client sent a certificate.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<String>), HandshakeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let result = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(HandshakeError::classify(e)),
            Err(_) => Err(HandshakeError::TimedOut(timeout)),
        };
        match result {
            Ok(s) => {
                self.metrics.handshake("inbound", "ok");
                let id = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(identity);
                Ok((s, id))
            }
            Err(e) => {
                self.metrics.handshake("inbound", e.result());
                Err(e)
            }
        }
    }
}
