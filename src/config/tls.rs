//! The TLS settings of both listeners' flags, as files to load: what
//! [`crate::tls`] loads and watches.

use std::path::PathBuf;

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

/// `--outbound-tls-*`: how breakwater originates TLS (`--route HOST,tls=true`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutboundTlsConfig {
    /// Verify upstreams against this CA instead of the system roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and key for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}
