//! Client-facing listeners: accept with a connection cap, serve HTTP/1.1 and HTTP/2
//! (prior knowledge) on one port with request-head limits, close slow and idle
//! connections, and wind down on drain.

pub mod activity;
mod woken;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::drain::DrainWatch;
use crate::executor::BoxingExecutor;
use crate::interception::{self, detect, relay};
use crate::metrics::{ListenerMetrics, OpaqueMetrics};
use crate::tls::ServerTls;
use activity::{ActivityIo, ConnActivity, Expiry};
use woken::PollWhenWoken;

/// Most concurrent HTTP/2 streams per client connection (Envoy's edge guidance: 100).
const MAX_CONCURRENT_STREAMS: u32 = 100;

pin_project_lite::pin_project! {
    /// A handler's response in the `Result` that hyper's service contract asks for.
    /// An `async` block would do the same but hold the handler's future twice (as
    /// its argument and as what it awaits), and that future is moved per request.
    struct NeverFails<F> {
        #[pin]
        response: F,
    }
}

impl<F: Future> Future for NeverFails<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().response.poll(cx).map(Ok)
    }
}

/// What a listener hands each request to. The listener is mechanism: what the
/// handler answers with and keeps per connection are its own types.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static;
    /// What the handler keeps for each connection (a cache of its last
    /// destination, say), made when the connection is accepted.
    type ConnState: Default + Send + Sync + 'static;

    fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn<Self::ConnState>>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;

    /// Where an opaque (non-HTTP) redirected connection is relayed, given where it
    /// was headed.
    fn relay_target(&self, orig_dst: SocketAddr) -> SocketAddr;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One accepted client connection, as its requests see it; `S` is what the
/// handler keeps for it.
pub struct ClientConn<S = ()> {
    /// The peer's IP as a header value, made once for `X-Forwarded-For`.
    pub peer_ip: http::HeaderValue,
    /// Where the connection was headed before iptables redirected it here.
    pub orig_dst: Option<SocketAddr>,
    /// `orig_dst`'s IP as text, made once for destination lookups.
    pub orig_dst_host: Option<String>,
    pub activity: Arc<ConnActivity>,
    /// The handler's own state for this connection ([`Handler::ConnState`]).
    pub state: S,
    /// The connection is TLS (terminated here).
    pub tls: bool,
    /// The identity in the client's verified certificate (mutual TLS).
    pub identity: Option<http::HeaderValue>,
}

/// What a listener does with redirected connections (transparent mode).
#[derive(Clone)]
pub struct Interception {
    /// How long to wait for a client's first bytes before relaying it as opaque TCP.
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// breakwater's own listener ports: a redirected connection headed for one
    /// of them would loop.
    pub own_ports: Arc<[u16]>,
    pub opaque: OpaqueMetrics,
    pub breakers: Arc<relay::ConnectBreakers>,
}

/// A bound listener ready to serve.
pub struct Listener<H> {
    pub name: &'static str,
    tcp: TcpListener,
    shared: Arc<Shared<H>>,
    tls: Option<Arc<ServerTls>>,
}

/// What every connection of a listener shares: one `Arc` per connection.
struct Shared<H> {
    name: &'static str,
    builder: auto::Builder<BoxingExecutor>,
    handler: Arc<H>,
    limits: Limits,
    metrics: ListenerMetrics,
    interception: Interception,
}

impl<H: Handler> Listener<H> {
    pub fn new(
        name: &'static str,
        tcp: TcpListener,
        handler: Arc<H>,
        limits: Limits,
        metrics: ListenerMetrics,
        interception: Interception,
    ) -> Self {
        let shared = Arc::new(Shared {
            name,
            builder: http_builder(&limits),
            handler,
            limits,
            metrics,
            interception,
        });
        Listener {
            name,
            tcp,
            shared,
            tls: None,
        }
    }

    /// Terminates TLS on this listener's connections.
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Accepts until a drain starts, then drops the listening socket; each
    /// connection keeps its own drain watch until it has finished.
    pub async fn serve(self, mut drain: DrainWatch) {
        let slots = Arc::new(Semaphore::new(self.shared.limits.max_connections));
        let metrics = &self.shared.metrics;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                accepted = self.tcp.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.refused.inc();
                debug!(listener = self.name, %peer, "connection refused: --max-connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            metrics.accepted.inc();
            let conn = Connection {
                stream,
                peer,
                shared: self.shared.clone(),
                drain: drain.clone(),
                tls: self.tls.clone(),
            };
            tokio::spawn(async move {
                conn.serve().await;
                drop(slot);
            });
        }
        debug!(listener = self.name, "stopped accepting");
    }
}

fn http_builder(limits: &Limits) -> auto::Builder<BoxingExecutor> {
    let mut builder = auto::Builder::new(BoxingExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own header timer starts at the first byte; see `activity`.
        .header_read_timeout(None)
        .max_buf_size(limits.max_request_header_bytes)
        .max_headers(limits.max_request_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .adaptive_window(true);
    builder
}

struct Connection<H> {
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<H>>,
    drain: DrainWatch,
    tls: Option<Arc<ServerTls>>,
}

/// The first byte of a TLS record that opens a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// TLS records start with 0x16 (handshake): a redirected connection that opens
/// with one is terminated here rather than relayed as opaque TCP.
async fn starts_with_tls(stream: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == TLS_HANDSHAKE
}

/// Tells a plain HTTP client of a TLS port what went wrong, then closes.
async fn refuse_plaintext(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "this port speaks HTTPS (TLS): a plain HTTP request was sent to it\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-breakwater-reason: bad-request\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

impl<H: Handler> Connection<H> {
    async fn serve(self) {
        let metrics = self.shared.metrics.clone();
        metrics.active.inc();
        self.serve_inner().await;
        metrics.active.dec();
    }

    async fn serve_inner(self) {
        let Connection {
            stream,
            peer,
            shared,
            drain,
            tls,
        } = self;
        let orig_dst = interception::original_dst(&stream);
        let mut use_tls = tls.is_some();
        if let Some(orig) = orig_dst {
            let interception = &shared.interception;
            let local = stream.local_addr().unwrap_or(orig);
            if interception::is_own_listener(orig, local, &interception.own_ports) {
                warn!(listener = shared.name, %peer, %orig, "refused a redirected connection to breakwater's own listener: it would loop");
                return;
            }
            use_tls = use_tls && starts_with_tls(&stream, interception.detect_timeout).await;
            if !use_tls
                && detect::detect(&stream, interception.detect_timeout).await
                    == detect::Protocol::Opaque
            {
                let target = shared.handler.relay_target(orig);
                debug!(listener = shared.name, %peer, %orig, %target, "relaying opaque TCP");
                relay::relay(
                    stream,
                    target,
                    interception.connect_timeout,
                    &interception.breakers,
                    interception.opaque.clone(),
                )
                .await;
                return;
            }
            if let (Some(tls), false) = (&tls, use_tls) {
                // Plain HTTP must not get past a TLS (maybe mutual TLS) listener.
                tls.count_failure();
                debug!(listener = shared.name, %peer, %orig, "plain HTTP sent to the TLS port: refused");
                refuse_plaintext(stream).await;
                return;
            }
        }
        match tls {
            Some(tls) if use_tls => {
                if orig_dst.is_none() {
                    // A redirected connection was peeked at already.
                    let mut first = [0u8; 1];
                    let wait = shared.limits.header_read_timeout;
                    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
                        Ok(Ok(1)) => {
                            tls.count_failure();
                            debug!(listener = shared.name, %peer, "plain HTTP sent to the TLS port: refused");
                            refuse_plaintext(stream).await;
                            return;
                        }
                        _ => return, // silent or gone before a byte
                    }
                }
                match tls.accept(stream, shared.limits.header_read_timeout).await {
                    Ok((stream, identity)) => {
                        let identity = identity.map(|id| {
                            http::HeaderValue::try_from(id)
                                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
                        });
                        serve_http(shared, stream, peer, orig_dst, drain, Some(identity)).await
                    }
                    Err(e) => {
                        debug!(listener = shared.name, %peer, error = %e, "TLS handshake failed");
                    }
                }
            }
            _ => serve_http(shared, stream, peer, orig_dst, drain, None).await,
        }
    }
}

/// Serves HTTP on an accepted connection, plain or TLS. `tls` is `Some` on a TLS
/// connection, with the client certificate's identity if it sent one.
async fn serve_http<H: Handler, I>(
    shared: Arc<Shared<H>>,
    stream: I,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
    mut drain: DrainWatch,
    tls: Option<Option<http::HeaderValue>>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limits = &shared.limits;
    let activity = Arc::new(ConnActivity::new());
    let peer_ip = http::HeaderValue::try_from(peer.ip().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
    let client = Arc::new(ClientConn {
        peer_ip,
        orig_dst,
        orig_dst_host: orig_dst.map(|o| o.ip().to_string()),
        activity: activity.clone(),
        state: H::ConnState::default(),
        tls: tls.is_some(),
        identity: tls.flatten(),
    });
    let handler = shared.handler.clone();
    let io = TokioIo::new(ActivityIo::new(stream, activity.clone()));
    let service = service_fn(move |req| NeverFails {
        response: handler.clone().handle(client.clone(), req),
    });
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    // Beside the connection, polled only when their own event comes (see `woken`).
    let watchdog =
        PollWhenWoken::new(activity.expired(limits.header_read_timeout, limits.idle_timeout));
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = PollWhenWoken::new(drain.signaled()), if !closing => {
                // HTTP/1: `Connection: close` on the current response, or close now
                // if idle. HTTP/2: GOAWAY, then in-flight streams finish.
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            expiry = &mut watchdog, if !closing => {
                debug!(%peer, ?expiry, "closing client connection");
                if expiry == Expiry::HeaderRead {
                    break; // a slow head gets no more of our time
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
