//! TLS with rustls (the `ring` provider): inbound termination, outbound
//! origination, and certificate material that follows its files on disk.
//!
//! Every certificate, key and CA file is re-read every [`RELOAD_INTERVAL`]; when
//! the bytes changed (an edit, or Kubernetes swapping a secret volume's `..data`
//! symlink) a new rustls config is built and swapped in. Connections already
//! open keep the config they were made with; new handshakes use the new one. A
//! file that does not parse is logged and the old material kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

mod client;
mod server;

pub use client::{Alpn, ClientTls, Origin, UpstreamIo};
pub use server::ServerTls;

/// How often certificate files are re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

const ALPN_H2: &[u8] = b"h2";
const ALPN_H1: &[u8] = b"http/1.1";

pub use crate::config::tls::{InboundTlsConfig, OutboundTlsConfig};

/// How a handshake ended, the `result` label of `breakwater_tls_handshakes_total`.
const HANDSHAKE_RESULTS: [&str; 3] = ["ok", "failed", "certificate-error"];

/// `breakwater_tls_*` families.
#[derive(Clone)]
pub struct TlsMetrics {
    handshakes: IntCounterVec,
    expiry: GaugeVec,
}

impl TlsMetrics {
    pub fn register(registry: &Registry) -> Self {
        let handshakes = crate::metrics::register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "breakwater_tls_handshakes_total",
                    "TLS handshakes, by direction and outcome (ok, failed, certificate-error).",
                ),
                &["direction", "result"],
            ),
        );
        let expiry = crate::metrics::register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "breakwater_tls_cert_expiry_timestamp_seconds",
                    "When a loaded certificate expires (notAfter), as a Unix timestamp.",
                ),
                &["cert"],
            ),
        );
        // At zero from start-up, as every closed label set (see metrics.rs).
        for direction in ["inbound", "outbound"] {
            for result in HANDSHAKE_RESULTS {
                handshakes.with_label_values(&[direction, result]);
            }
        }
        TlsMetrics { handshakes, expiry }
    }

    fn handshake(&self, direction: &str, result: &str) {
        self.handshakes
            .with_label_values(&[direction, result])
            .inc();
    }

    fn expiry(&self, label: &str, certs: &[CertificateDer<'_>], earliest: bool) {
        let times = certs.iter().filter_map(not_after);
        let when = if earliest {
            times.min()
        } else {
            certs.first().and_then(not_after)
        };
        if let Some(t) = when {
            self.expiry.with_label_values(&[label]).set(t as f64);
        }
    }
}

/// A certificate's notAfter, as a Unix timestamp.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Who a client certificate names: its first URI SAN (SPIFFE), else its first DNS
/// SAN, else its subject.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        if let Some(name) = uri.or(dns) {
            return Some(name);
        }
    }
    let subject = parsed.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why certificate material could not be loaded: at start-up, or on a reload
/// (then logged, and the old material kept). Names the file where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: no usable CA certificate", path.display())]
    NoCa { path: PathBuf },
    /// rustls refused the material: a key that does not match its certificate.
    #[error("{}: {source}", path.display())]
    Rejected {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// The crypto provider cannot do the protocol versions asked for.
    #[error("{0}")]
    Provider(rustls::Error),
    #[error("--outbound-tls-cert and --outbound-tls-key go together")]
    CertWithoutKey,
}

impl TlsError {
    /// The file to blame, if one is.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::NoKey { path }
            | TlsError::NoCa { path }
            | TlsError::Rejected { path, .. }
            | TlsError::Verifier { path, .. } => Some(path),
            TlsError::Provider(_) | TlsError::CertWithoutKey => None,
        }
    }
}

/// Why a handshake failed, classified by rustls' own error, not its message.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's certificate did not verify, or none was presented.
    #[error("TLS certificate verification failed: {0}")]
    Certificate(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    #[error("TLS handshake timed out after {0:?}")]
    TimedOut(Duration),
}

impl HandshakeError {
    /// Classifies the error of a tokio-rustls handshake: the io::Error carries
    /// the `rustls::Error` inside.
    pub fn classify(e: std::io::Error) -> Self {
        let certificate = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .is_some_and(is_certificate_error);
        if certificate {
            HandshakeError::Certificate(e)
        } else {
            HandshakeError::Failed(e)
        }
    }

    pub fn is_certificate(&self) -> bool {
        matches!(self, HandshakeError::Certificate(_))
    }

    /// The `result` label of `breakwater_tls_handshakes_total`.
    fn result(&self) -> &'static str {
        if self.is_certificate() {
            "certificate-error"
        } else {
            "failed"
        }
    }
}

/// A rustls error about the peer's certificate: one that did not verify, or
/// none where one was required.
pub fn is_certificate_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
}

fn parse_certs(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn parse_key(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: path.into() },
        source => TlsError::Pem {
            path: path.into(),
            source,
        },
    })
}

fn roots(certs: Vec<CertificateDer<'static>>, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::NoCa { path: path.into() });
    }
    Ok(store)
}

/// Builds material from the bytes of its files, in order.
type Build<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync>;

/// Material built from a set of files, rebuilt when their bytes change.
struct Reloadable<T> {
    name: &'static str,
    paths: Vec<PathBuf>,
    current: RwLock<Arc<T>>,
    last: Mutex<Vec<Vec<u8>>>,
    build: Build<T>,
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    fn load(name: &'static str, paths: Vec<PathBuf>, build: Build<T>) -> Result<Self, TlsError> {
        let bytes = read_all(&paths)?;
        let value = build(&bytes)?;
        Ok(Reloadable {
            name,
            paths,
            current: RwLock::new(Arc::new(value)),
            last: Mutex::new(bytes),
            build,
        })
    }

    fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files; swaps in new material if they changed and parse.
    fn reload(&self) {
        let bytes = match read_all(&self.paths) {
            Ok(b) => b,
            // Mid-swap or deleted: try again next round, keep what we have.
            Err(e) => {
                tracing::debug!(tls = self.name, error = %e, "TLS files not readable now");
                return;
            }
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == bytes {
            return;
        }
        match (self.build)(&bytes) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                info!(tls = self.name, "TLS material reloaded");
            }
            Err(e) => {
                warn!(tls = self.name, error = %e, "new TLS material rejected; keeping the old");
            }
        }
        *last = bytes;
    }
}

/// Re-reads `r` every [`RELOAD_INTERVAL`] while anything else holds it.
fn watch<T: Send + Sync + 'static, H: Send + Sync + 'static>(
    holder: &Arc<H>,
    get: fn(&H) -> &Reloadable<T>,
) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let weak: Weak<H> = Arc::downgrade(holder);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            let Some(h) = weak.upgrade() else { break };
            let r = get(&h);
            if r.paths.is_empty() {
                break;
            }
            // File reads block: keep them off the async workers.
            let h2 = h.clone();
            let _ = tokio::task::spawn_blocking(move || get(&h2).reload()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(uri: Option<&str>, dns: &[&str], cn: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(dns).unwrap();
        if let Some(u) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_subject() {
        let c = cert(Some("spiffe://td/ns/a/sa/b"), &["b.a.svc"], "b");
        assert_eq!(identity(&c).as_deref(), Some("spiffe://td/ns/a/sa/b"));
        let c = cert(None, &["b.a.svc"], "b");
        assert_eq!(identity(&c).as_deref(), Some("b.a.svc"));
        let c = cert(None, &[], "just-a-name");
        assert_eq!(identity(&c).as_deref(), Some("CN=just-a-name"));
        assert!(not_after(&c).is_some_and(|t| t > 1_700_000_000));
    }

    #[test]
    fn certificate_errors_are_told_by_rustls_type() {
        use rustls::{CertificateError, Error};
        let io = |e: Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        for cert in [
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Error::InvalidCertificate(CertificateError::Expired),
            Error::InvalidCertificate(CertificateError::NotValidForName),
            Error::NoCertificatesPresented,
        ] {
            let e = HandshakeError::classify(io(cert));
            assert!(e.is_certificate(), "{e}");
            assert_eq!(e.result(), "certificate-error");
            assert!(
                e.to_string()
                    .starts_with("TLS certificate verification failed: ")
            );
        }
        for other in [
            io(Error::NoApplicationProtocol),
            io(Error::DecryptError),
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer"),
            // A message that mentions certificates is not a certificate error.
            std::io::Error::other("certificate"),
        ] {
            let e = HandshakeError::classify(other);
            assert!(!e.is_certificate(), "{e}");
            assert_eq!(e.result(), "failed");
            assert!(e.to_string().starts_with("TLS handshake failed: "));
        }
        assert_eq!(
            HandshakeError::TimedOut(Duration::from_secs(1)).result(),
            "failed"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let path = PathBuf::from("/etc/tls/cert.pem");
        let e = parse_certs(b"", &path).unwrap_err();
        assert_eq!(e.to_string(), "/etc/tls/cert.pem: no PEM certificate found");
        assert_eq!(e.path(), Some(path.as_path()));
        let e = parse_key(b"", &path).unwrap_err();
        assert_eq!(e.to_string(), "/etc/tls/cert.pem: no PEM private key found");
        assert_eq!(TlsError::CertWithoutKey.path(), None);
    }

    #[test]
    fn a_bad_update_keeps_the_old_material() {
        let dir = std::env::temp_dir().join(format!("breakwater-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("value");
        std::fs::write(&path, "1").unwrap();
        let r = Reloadable::load(
            "test",
            vec![path.clone()],
            Box::new(|b: &[Vec<u8>]| {
                std::str::from_utf8(&b[0])
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or(TlsError::NoCertificate {
                        path: "value".into(),
                    })
            }),
        )
        .unwrap();
        std::fs::write(&path, "x").unwrap();
        r.reload();
        assert_eq!(*r.current(), 1);
        std::fs::write(&path, "2").unwrap();
        r.reload();
        assert_eq!(*r.current(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
