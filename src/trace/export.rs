//! Export over OTLP/HTTP with protobuf. Requests append their finished
//! spans, already encoded, to one pending buffer without waiting (past
//! [`QUEUE`] spans they are dropped, counted), and one task sends what is
//! pending in one export request. A collector that is slow or down costs the
//! requests nothing: they never wait on the export, only on a lock held for
//! a copy of a few hundred bytes.
//!
//! The task wakes once per batch, not once per span: when the first spans
//! land in an empty buffer, then after the batch interval or as soon as
//! [`BATCH`] spans are pending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::Notify;

use super::otlp;
use super::span::Finished;

/// Spans waiting for export; past this, new ones are dropped.
pub const QUEUE: usize = 2048;
/// Encoded bytes waiting for export, whatever the spans' count: a bound for
/// spans made large by long paths.
const QUEUE_BYTES: usize = 4 << 20;
/// Pending spans that make a batch worth sending before the interval ends.
const BATCH: usize = 512;
/// The longest a span waits for a batch to fill.
const INTERVAL: Duration = Duration::from_secs(1);
/// The longest one export may take; a collector slower than this loses the batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The export counters.
#[derive(Clone)]
pub struct ExportMetrics {
    pub exported: IntCounter,
    pub queue_full: IntCounter,
    pub export_failed: IntCounter,
}

/// Where spans go and what the process is, for the export's resource.
pub struct Destination {
    pub endpoint: Uri,
    pub resource: Vec<(&'static str, String)>,
}

/// Spans waiting for the exporter: the export request they will be sent in.
struct Pending {
    spans: usize,
    export: otlp::Export,
}

struct Shared {
    pending: Mutex<Pending>,
    /// What the process is, at the head of every export.
    resource: Vec<(&'static str, String)>,
    /// The exporter's wake-up: spans in an empty buffer, a batch, or closing.
    wake: Notify,
    closed: AtomicBool,
    metrics: ExportMetrics,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A push never leaves the buffer half-written: a panic elsewhere
        // while it was held does not make it unusable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue's sending side: what requests hand finished spans to.
#[derive(Clone)]
pub struct Queue(Arc<Shared>);

impl Queue {
    /// Hands `finished` to the exporter, or drops (and counts) it when the
    /// queue is full.
    pub fn push(&self, finished: Finished) {
        let n = finished.spans;
        let wake = {
            let mut p = self.0.pending();
            if p.spans + n > QUEUE || p.export.spans_len() + finished.encoded.len() > QUEUE_BYTES {
                drop(p);
                self.0.metrics.queue_full.inc_by(n as u64);
                return;
            }
            let before = p.spans;
            p.spans += n;
            p.export.push(&finished.encoded);
            before == 0 || (before < BATCH && p.spans >= BATCH)
        };
        if wake {
            self.0.wake.notify_one();
        }
    }

    /// Tells the exporter to send what is pending and stop.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// Starts the exporter task; spans pushed into the queue it returns are sent
/// to `to.endpoint`.
pub fn spawn(to: Destination, metrics: ExportMetrics) -> Queue {
    let queue = Queue::new(to.resource, metrics);
    tokio::spawn(run(to.endpoint, queue.0.clone()));
    queue
}

impl Queue {
    fn new(resource: Vec<(&'static str, String)>, metrics: ExportMetrics) -> Self {
        Queue(Arc::new(Shared {
            pending: Mutex::new(Pending {
                spans: 0,
                export: otlp::Export::new(&resource, 0),
            }),
            resource,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            metrics,
        }))
    }
}

async fn run(endpoint: Uri, shared: Arc<Shared>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut failing = false;
    // Room for as many bytes as the last batch had, so that requests
    // appending to the next one rarely grow it.
    let mut last_len = 0;
    loop {
        // The first spans of a batch: wait for them as long as it takes.
        shared.wake.notified().await;
        let closed = shared.closed.load(Ordering::Acquire);
        if !closed && shared.pending().spans < BATCH {
            // Then the rest, without a wake-up per span.
            let _ = tokio::time::timeout(INTERVAL, shared.wake.notified()).await;
        }
        let fresh = otlp::Export::new(&shared.resource, last_len);
        let (n, batch) = {
            let mut p = shared.pending();
            let batch = std::mem::replace(&mut p.export, fresh);
            (std::mem::take(&mut p.spans), batch)
        };
        if n > 0 {
            last_len = batch.spans_len();
            match export(&client, &endpoint, batch.finish().into()).await {
                Ok(()) => {
                    shared.metrics.exported.inc_by(n as u64);
                    if failing {
                        tracing::info!(%endpoint, "span export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    shared.metrics.export_failed.inc_by(n as u64);
                    if !failing {
                        // Once per outage, not once per batch.
                        tracing::warn!(%endpoint, error = %e, "span export failed; spans are dropped until it works");
                        failing = true;
                    }
                }
            }
        }
        if closed || shared.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

async fn export(
    client: &Client<HttpConnector, Full<Bytes>>,
    endpoint: &Uri,
    body: Bytes,
) -> Result<(), String> {
    let req = Request::post(endpoint.clone())
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let sent = tokio::time::timeout(EXPORT_TIMEOUT, async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to the end, so the connection is reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    })
    .await;
    match sent {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", EXPORT_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ExportMetrics {
        let counter = |name: &str| IntCounter::new(name, name).expect("counter");
        ExportMetrics {
            exported: counter("exported"),
            queue_full: counter("queue_full"),
            export_failed: counter("export_failed"),
        }
    }

    fn finished(spans: usize, bytes: usize) -> Finished {
        Finished {
            spans,
            encoded: vec![7; bytes],
        }
    }

    #[test]
    fn a_full_queue_drops_whole_requests_and_counts_their_spans() {
        let m = metrics();
        let queue = Queue::new(Vec::new(), m.clone());
        for _ in 0..QUEUE / 2 {
            queue.push(finished(2, 100));
        }
        queue.push(finished(3, 100));
        assert_eq!(m.queue_full.get(), 3);
        let p = queue.0.pending();
        assert_eq!((p.spans, p.export.spans_len()), (QUEUE, QUEUE / 2 * 100));
    }

    #[test]
    fn large_spans_are_bounded_by_bytes_too() {
        let m = metrics();
        let queue = Queue::new(Vec::new(), m.clone());
        queue.push(finished(1, QUEUE_BYTES - 10));
        queue.push(finished(1, 11));
        queue.push(finished(1, 10));
        assert_eq!(m.queue_full.get(), 1);
        assert_eq!(queue.0.pending().export.spans_len(), QUEUE_BYTES);
    }
}
