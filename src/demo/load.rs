//! The demo's load: concurrent clients for a fixed time, each result recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the load goes: straight at the service, or through a proxy that is
/// told the service's address in `Host`.
#[derive(Clone, Copy)]
pub struct Route {
    pub connect_to: SocketAddr,
    pub host: SocketAddr,
}

/// What one run measured.
#[derive(Default)]
pub struct Results {
    pub latencies: Vec<Duration>,
    pub ok: u64,
    /// Responses breakwater made itself, by `x-breakwater-reason`.
    pub reasons: BTreeMap<String, u64>,
}

impl Results {
    pub fn total(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub fn success_rate(&self) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.ok as f64 * 100.0 / self.total() as f64
    }

    /// The `p`th percentile latency (0-100); the list is sorted by `finish`.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    fn finish(&mut self) {
        self.latencies.sort_unstable();
    }
}

/// A GET's body as text, for reading the admin endpoint.
pub async fn fetch(addr: SocketAddr, path: &str) -> Option<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}");
    let resp = client.get(uri.parse().ok()?).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// Drives `concurrency` clients against `route` for `duration`, calling
/// `progress(elapsed, requests)` about twice a second.
pub async fn run(
    route: Route,
    concurrency: usize,
    duration: Duration,
    progress: impl Fn(Duration, u64),
) -> Results {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let results = Arc::new(Mutex::new(Results::default()));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, results, count) = (client.clone(), results.clone(), count.clone());
            tokio::spawn(async move {
                let uri = format!("http://{}/", route.connect_to);
                let host = route.host.to_string();
                while Instant::now() < deadline {
                    let Ok(req) = Request::get(&uri)
                        .header(header::HOST, &host)
                        .body(Empty::<Bytes>::new())
                    else {
                        return;
                    };
                    let sent = Instant::now();
                    let outcome = client.request(req).await;
                    let (ok, reason) = match outcome {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            let reason = resp
                                .headers()
                                .get("x-breakwater-reason")
                                .and_then(|v| v.to_str().ok())
                                .map(|r| format!("{} {r}", resp.status().as_u16()));
                            let complete = resp.into_body().collect().await.is_ok();
                            (ok && complete, reason)
                        }
                        Err(_) => (false, None),
                    };
                    let took = sent.elapsed();
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                    r.latencies.push(took);
                    r.ok += u64::from(ok);
                    if let Some(reason) = reason {
                        *r.reasons.entry(reason).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        progress(started.elapsed(), count.load(Ordering::Relaxed));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    results.finish();
    results
}
