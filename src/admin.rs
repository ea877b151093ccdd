//! The admin endpoint: liveness, readiness, Prometheus metrics and the effective
//! configuration. Kept off the data path: its own listener and plain HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::body::ProxyBody;
use crate::metrics::Metrics;

/// What `/ready` reports on: set by the app as listeners come up and drain starts.
#[derive(Default)]
pub struct ProxyState {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl ProxyState {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// `None` when ready, else what is missing.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if !self.listening.load(Ordering::Acquire) {
            Some("listeners not bound yet")
        } else {
            None
        }
    }
}

pub struct Admin {
    metrics: Arc<Metrics>,
    state: Arc<ProxyState>,
    config_json: Bytes,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, state: Arc<ProxyState>, config_json: String) -> Self {
        Admin {
            metrics,
            state,
            config_json: Bytes::from(config_json + "\n"),
        }
    }

    /// Serves until the task is dropped; the app stops it last, after the drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let resp = admin.route(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => match self.state.not_ready() {
                None => text(StatusCode::OK, "ready\n"),
                Some(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                let mut resp = Response::new(ProxyBody::local(self.metrics.encode().into()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            "/config" => {
                let mut resp = Response::new(ProxyBody::local(self.config_json.clone()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /config\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
