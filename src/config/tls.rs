//! The TLS settings of both listeners' flags, as files to load: what
//! [`crate::tls`] loads and watches.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// `--inbound-tls-*`: TLS termination on the inbound listener.
#[derive(Clone, Debug, Serialize)]
pub struct InboundTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// The header that carries the verified client identity to the app.
    pub identity_header: Option<String>,
}

impl InboundTlsConfig {
    /// The flag that named `path` (the certificate's, when no file is to blame).
    pub fn flag_of(&self, path: Option<&Path>) -> &'static str {
        match path {
            Some(p) if p == self.key => "--inbound-tls-key",
            Some(p) if Some(p) == self.client_ca.as_deref() => "--inbound-tls-client-ca",
            _ => "--inbound-tls-cert",
        }
    }
}

/// `--outbound-tls-*`: how breakwater originates TLS (`--route HOST,tls=true`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutboundTlsConfig {
    /// Verify upstreams against this CA instead of the system roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and key for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl OutboundTlsConfig {
    /// The flag that named `path` (the CA's, when no file is to blame).
    pub fn flag_of(&self, path: Option<&Path>) -> &'static str {
        match path {
            Some(p) if Some(p) == self.cert.as_deref() => "--outbound-tls-cert",
            Some(p) if Some(p) == self.key.as_deref() => "--outbound-tls-key",
            _ => "--outbound-tls-ca",
        }
    }
}
