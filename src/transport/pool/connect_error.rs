//! `ConnectError`: why no connection to an endpoint could be made, before any
//! byte of the request was sent. Its text is the cause `forward` puts in a
//! `connect-failure` answer.

use std::time::Duration;

use crate::tls::HandshakeError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not complete within `--connect-timeout`.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// Refused, unreachable, or any other error of the TCP connect.
    #[error("{0}")]
    Tcp(std::io::Error),
    /// The route asks for TLS and the host name cannot be an SNI name.
    #[error("the host is not a valid TLS server name")]
    ServerName,
    /// The TLS handshake did not complete within `--connect-timeout`.
    #[error("TLS handshake timed out after {0:?}")]
    TlsTimedOut(Duration),
    /// The TLS handshake failed: a certificate that did not verify, or else.
    #[error("{0}")]
    Tls(HandshakeError),
    /// The HTTP/1.1 or HTTP/2 handshake on the new connection failed.
    #[error("{0}")]
    Http(hyper::Error),
    /// A prior-knowledge HTTP/2 connection saw no SETTINGS frame in time.
    #[error("no HTTP/2 SETTINGS from the endpoint within {0:?}")]
    NoSettings(Duration),
}

impl ConnectError {
    /// The upstream's certificate did not verify (or none was presented).
    pub fn is_certificate(&self) -> bool {
        matches!(self, ConnectError::Tls(e) if e.is_certificate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_the_cause_and_knows_certificate_failures() {
        let unknown_issuer = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = ConnectError::Tls(HandshakeError::classify(unknown_issuer));
        assert!(e.is_certificate());
        assert!(
            e.to_string()
                .starts_with("TLS certificate verification failed: "),
            "{e}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ConnectError::Tcp(refused);
        assert!(!e.is_certificate());
        assert_eq!(e.to_string(), "connection refused");
        let e = ConnectError::TimedOut(Duration::from_secs(1));
        assert_eq!(e.to_string(), "connect timed out after 1s");
        assert!(!ConnectError::TlsTimedOut(Duration::from_secs(1)).is_certificate());
    }
}
