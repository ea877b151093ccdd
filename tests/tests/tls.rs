//! TLS: inbound termination (HTTP/1.1 and HTTP/2 over ALPN), mutual TLS and the
//! identity header, outbound origination, rotation by a `..data` symlink swap,
//! and plaintext sent to a TLS port. Certificates are made by the test (rcgen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use breakwater::tls::{InboundTlsConfig, OutboundTlsConfig};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::support::*;

const IDENTITY: &str = "x-client-identity";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// A test certificate authority.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IPs), optionally with a URI
    /// SAN first: (certificate PEM, key PEM).
    pub(crate) fn leaf(&self, cn: &str, names: &[&str], uri: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .insert(0, SanType::URI(uri.try_into().expect("uri")));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// A fresh directory for a test's files.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "breakwater-tls-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn client_config(ca_pem: &str, client: Option<(&str, &str)>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca_pem)).expect("root");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![der(cert)],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    config
}

async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 connection over TLS.
async fn h1_conn(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, hyper::Error> {
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await?;
    let resp = sender
        .send_request(req.body(full("")).expect("request"))
        .await?;
    Ok(answer(resp).await)
}

/// The inbound TLS flags for files written to `dir`.
fn inbound_tls(dir: &Path, ca: &Ca, client_ca: Option<&Ca>, identity: bool) -> InboundTlsConfig {
    let (cert, key) = ca.leaf("breakwater", &["localhost", "127.0.0.1"], None);
    InboundTlsConfig {
        cert: write(dir, "cert.pem", &cert),
        key: write(dir, "key.pem", &key),
        client_ca: client_ca.map(|c| write(dir, "client-ca.pem", &c.pem)),
        identity_header: identity.then(|| IDENTITY.to_string()),
    }
}

#[tokio::test]
async fn https_inbound_serves_http1_and_http2_and_exports_expiry() {
    let app = spawn_echo().await;
    let ca = Ca::new("test-ca");
    let dir = temp_dir("inbound");
    let tls = inbound_tls(&dir, &ca, None, false);
    let proxy = spawn_proxy(app.addr, |c| c.inbound_tls = Some(tls)).await;

    // HTTP/1.1 over ALPN.
    let stream = tls_connect(
        proxy.addrs.inbound,
        client_config(&ca.pem, None, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_conn(stream).await;
    let a = h1_get(&mut h1, "/hello", &[]).await.expect("response");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.starts_with("GET /hello"), "{}", a.body);
    assert!(a.body.contains("x-forwarded-proto: https"), "{}", a.body);

    // HTTP/2 over ALPN.
    let stream = tls_connect(
        proxy.addrs.inbound,
        client_config(&ca.pem, None, &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("https://localhost/two")
        .body(full(""))
        .expect("request");
    let a = answer(h2.send_request(req).await.expect("h2 response")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.version, http::Version::HTTP_2);
    assert!(a.body.contains("/two"), "{}", a.body);

    let metrics = get(&client(), &proxy.admin("/metrics")).await.body;
    assert!(
        metrics.contains("breakwater_tls_cert_expiry_timestamp_seconds{cert=\"inbound\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakwater_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn plaintext_to_a_tls_port_fails_cleanly() {
    let app = spawn_echo().await;
    let ca = Ca::new("test-ca");
    let dir = temp_dir("plain");
    let tls = inbound_tls(&dir, &ca, None, false);
    let proxy = spawn_proxy(app.addr, |c| c.inbound_tls = Some(tls)).await;
    let (text, closed) = raw_exchange(
        proxy.addrs.inbound,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed, "the connection is closed");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("speaks HTTPS"), "{text}");
    assert_eq!(app.hits(), 0);
    // Still serving.
    let stream = tls_connect(proxy.addrs.inbound, client_config(&ca.pem, None, &[]))
        .await
        .expect("TLS handshake");
    let mut h1 = h1_conn(stream).await;
    assert_eq!(
        h1_get(&mut h1, "/", &[]).await.expect("response").status,
        200
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A request on a mutual-TLS connection made with `client`: `Err` when the
/// handshake or the request failed.
async fn mtls_get(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let stream = tls_connect(addr, client_config(&ca.pem, client, &[]))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    h1_get(&mut sender, "/", headers)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn mutual_tls_checks_clients_and_passes_their_identity() {
    let app = spawn_echo().await;
    let server_ca = Ca::new("server-ca");
    let client_ca = Ca::new("client-ca");
    let other_ca = Ca::new("other-ca");
    let dir = temp_dir("mtls");
    let tls = inbound_tls(&dir, &server_ca, Some(&client_ca), true);
    let proxy = spawn_proxy(app.addr, |c| c.inbound_tls = Some(tls)).await;
    let addr = proxy.addrs.inbound;

    let (cert, key) = client_ca.leaf("frontend", &["frontend.shop"], Some(CLIENT_ID));
    let a = mtls_get(
        addr,
        &server_ca,
        Some((&cert, &key)),
        &[(IDENTITY, "admin")],
    )
    .await
    .expect("a good client certificate is accepted");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains(&format!("{IDENTITY}: {CLIENT_ID}\n")),
        "{}",
        a.body
    );
    assert!(
        !a.body.contains("admin"),
        "the forged identity is stripped: {}",
        a.body
    );

    assert!(
        mtls_get(addr, &server_ca, None, &[]).await.is_err(),
        "no client certificate"
    );
    let (cert, key) = other_ca.leaf("intruder", &["intruder"], None);
    assert!(
        mtls_get(addr, &server_ca, Some((&cert, &key)), &[])
            .await
            .is_err(),
        "a certificate from another CA"
    );
    assert_eq!(app.hits(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

/// `rate-limit-key=identity`: each verified client certificate has a bucket of
/// its own, and a header the client sends cannot pick another's.
#[tokio::test]
async fn an_inbound_rate_limit_keyed_by_identity_gives_each_client_its_own_bucket() {
    let app = spawn_echo().await;
    let server_ca = Ca::new("server-ca");
    let client_ca = Ca::new("client-ca");
    let dir = temp_dir("mtls-rate");
    let tls = inbound_tls(&dir, &server_ca, Some(&client_ca), true);
    let proxy = spawn_proxy(app.addr, |c| {
        c.inbound_tls = Some(tls);
        c.routes.push(route(
            "*,direction=inbound,inbound-rate-limit=0.1/2,rate-limit-key=identity",
        ));
    })
    .await;
    let addr = proxy.addrs.inbound;
    let frontend = client_ca.leaf("frontend", &["frontend"], Some(CLIENT_ID));
    let batch = client_ca.leaf(
        "batch",
        &["batch"],
        Some("spiffe://cluster.local/ns/shop/sa/batch"),
    );
    let mut seen = Vec::new();
    for (cert, forged) in [
        (&frontend, None),
        (&frontend, None),
        (&frontend, None),
        (&batch, Some("spiffe://cluster.local/ns/shop/sa/frontend")),
        (&batch, None),
        (&batch, None),
    ] {
        let headers: Vec<(&str, &str)> = forged.map(|f| (IDENTITY, f)).into_iter().collect();
        let a = mtls_get(addr, &server_ca, Some((&cert.0, &cert.1)), &headers)
            .await
            .expect("a good client certificate is accepted");
        if a.status == 429 {
            assert_eq!(a.reason(), Some("rate-limited"), "{}", a.body);
        }
        seen.push(a.status);
    }
    assert_eq!(
        seen,
        [200, 200, 429, 200, 200, 429],
        "two each, whatever identity header the client sends"
    );
    assert_eq!(app.hits(), 4);
    let _ = std::fs::remove_dir_all(dir);
}

/// An HTTPS upstream (HTTP/1.1 and HTTP/2 by ALPN) that echoes the version and
/// headers it saw.
async fn spawn_tls_upstream(ca: &Ca, client_ca: Option<&Ca>) -> SocketAddr {
    let (cert, key) = ca.leaf("upstream", &["localhost", "127.0.0.1"], None);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(der(&client_ca.pem)).expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            vec![der(&cert)],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut out = format!("{:?} {}\n", req.version(), req.uri().path());
                    for (k, v) in req.headers() {
                        out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                    }
                    Ok::<_, std::convert::Infallible>(text_response(200, &out))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn outbound_originates_tls_and_refuses_a_wrong_ca() {
    let ca = Ca::new("upstream-ca");
    let upstream = spawn_tls_upstream(&ca, None).await;
    let dir = temp_dir("outbound");
    let ca_file = write(&dir, "ca.pem", &ca.pem);
    let host = format!("127.0.0.1:{}", upstream.port());
    let spec = format!("{host},tls=true");
    let proxy = spawn_proxy(([127, 0, 0, 1], 9).into(), |c| {
        c.routes.push(route(&spec));
        c.outbound_tls = OutboundTlsConfig {
            ca: Some(ca_file),
            ..OutboundTlsConfig::default()
        };
    })
    .await;
    let http = client();
    let a = get_via(&http, &proxy, &host, "/secure").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.starts_with("HTTP/2.0 /secure"),
        "ALPN picked h2: {}",
        a.body
    );
    let a = get_via(&http, &proxy, &host, "/again").await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Verified against a CA that did not sign the upstream's certificate.
    let other = Ca::new("other-ca");
    let wrong = write(&dir, "wrong-ca.pem", &other.pem);
    let proxy = spawn_proxy(([127, 0, 0, 1], 9).into(), |c| {
        c.routes.push(route(&spec));
        c.outbound_tls = OutboundTlsConfig {
            ca: Some(wrong),
            ..OutboundTlsConfig::default()
        };
    })
    .await;
    let a = get_via(&http, &proxy, &host, "/secure").await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(a.reason(), Some("connect-failure"));
    assert!(a.body.contains("certificate"), "{}", a.body);
    let metrics = get(&http, &proxy.admin("/metrics")).await.body;
    assert!(
        metrics.contains("direction=\"outbound\",result=\"certificate-error\""),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Lays out `dir` as a Kubernetes secret volume: `..<version>/` with the files,
/// `..data` pointing at it (swapped atomically), and `cert.pem`/`key.pem`
/// pointing through `..data`.
fn publish(dir: &Path, version: &str, cert: &str, key: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir_all(&versioned).expect("version dir");
    write(&versioned, "cert.pem", cert);
    write(&versioned, "key.pem", key);
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for name in ["cert.pem", "key.pem"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("symlink");
        }
    }
}

#[tokio::test]
async fn rotation_by_symlink_swap_keeps_open_connections() {
    let app = spawn_echo().await;
    let ca = Ca::new("test-ca");
    let dir = temp_dir("rotate");
    let (cert1, key1) = ca.leaf("first", &["localhost"], None);
    publish(&dir, "..2026_01", &cert1, &key1);
    let tls = InboundTlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
        identity_header: None,
    };
    let proxy = spawn_proxy(app.addr, |c| c.inbound_tls = Some(tls)).await;
    let addr = proxy.addrs.inbound;
    let config = || client_config(&ca.pem, None, &[]);

    let stream = tls_connect(addr, config()).await.expect("handshake");
    let presented = |s: &TlsStream<TcpStream>| {
        s.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .expect("a server certificate")
    };
    assert_eq!(presented(&stream), der(&cert1));
    let mut old = h1_conn(stream).await;
    assert_eq!(
        h1_get(&mut old, "/", &[]).await.expect("response").status,
        200
    );

    // A broken update is ignored, then a good one is picked up.
    publish(&dir, "..2026_02", "not a certificate", "nor a key");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = tls_connect(addr, config())
        .await
        .expect("old material kept");
    assert_eq!(presented(&s), der(&cert1));

    let (cert2, key2) = ca.leaf("second", &["localhost"], None);
    publish(&dir, "..2026_03", &cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = tls_connect(addr, config()).await.expect("handshake");
        if presented(&s) == der(&cert2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection made before the swap still serves.
    let a = h1_get(&mut old, "/after", &[])
        .await
        .expect("old connection");
    assert_eq!(a.status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn outbound_mutual_tls_presents_the_client_certificate() {
    let ca = Ca::new("upstream-ca");
    let client_ca = Ca::new("client-ca");
    let upstream = spawn_tls_upstream(&ca, Some(&client_ca)).await;
    let dir = temp_dir("outbound-mtls");
    let (cert, key) = client_ca.leaf("sidecar", &["sidecar"], None);
    let host = format!("127.0.0.1:{}", upstream.port());
    let spec = format!("{host},tls=true");
    let tls = OutboundTlsConfig {
        ca: Some(write(&dir, "ca.pem", &ca.pem)),
        cert: Some(write(&dir, "cert.pem", &cert)),
        key: Some(write(&dir, "key.pem", &key)),
    };
    let proxy = spawn_proxy(([127, 0, 0, 1], 9).into(), |c| {
        c.routes.push(route(&spec));
        c.outbound_tls = tls;
    })
    .await;
    let a = get_via(&client(), &proxy, &host, "/mtls").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let metrics = get(&client(), &proxy.admin("/metrics")).await.body;
    assert!(
        metrics.contains("breakwater_tls_cert_expiry_timestamp_seconds{cert=\"outbound-client\"}"),
        "{metrics}"
    );

    // Without the client certificate the upstream refuses.
    let ca_only = OutboundTlsConfig {
        ca: Some(dir.join("ca.pem")),
        ..OutboundTlsConfig::default()
    };
    let proxy = spawn_proxy(([127, 0, 0, 1], 9).into(), |c| {
        c.routes.push(route(&spec));
        c.outbound_tls = ca_only;
    })
    .await;
    let a = get_via(&client(), &proxy, &host, "/mtls").await;
    assert_eq!(a.status, 502, "{}", a.body);
    let _ = std::fs::remove_dir_all(dir);
}

/// A certificate file that cannot be loaded stops start-up with a message that
/// names its flag and file, not as a listener that could not be bound.
#[tokio::test]
async fn a_bad_certificate_file_is_named_by_its_flag() {
    let ca = Ca::new("test-ca");
    let dir = temp_dir("bad-files");
    let mut tls = inbound_tls(&dir, &ca, None, false);
    tls.key = write(&dir, "empty-key.pem", "");
    let mut config = breakwater::Config::loopback();
    config.inbound_tls = Some(tls.clone());
    let Err(e) = breakwater::Proxy::bind(config).await else {
        panic!("a key file without a key was taken");
    };
    let text = e.to_string();
    assert!(
        matches!(
            e,
            breakwater::app::BindError::Tls {
                flag: "--inbound-tls-key",
                ..
            }
        ),
        "{text}"
    );
    assert_eq!(
        text,
        format!(
            "cannot load --inbound-tls-key: {}: no PEM private key found",
            tls.key.display()
        )
    );
    assert!(!text.contains("cannot listen"), "{text}");

    let mut config = breakwater::Config::loopback();
    config.routes = vec![breakwater::config::RouteOverride::parse("api:443,tls=true").unwrap()];
    config.outbound_tls = OutboundTlsConfig {
        ca: Some(dir.join("missing-ca.pem")),
        ..OutboundTlsConfig::default()
    };
    let Err(e) = breakwater::Proxy::bind(config).await else {
        panic!("a missing CA file was taken");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("cannot load --outbound-tls-ca: "),
        "{text}"
    );
    assert!(text.contains("missing-ca.pem"), "{text}");
}
