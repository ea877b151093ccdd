//! Export over OTLP/HTTP with protobuf: finished spans go into a bounded
//! queue without waiting (a full queue drops them, counted), and one task
//! sends them in batches. A collector that is slow or down costs the
//! requests nothing: they never wait on the queue or the export.
//!
//! The task wakes once per batch, not once per span: it waits for the first
//! span, then for the batch interval or a signal that a batch is ready.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::{Notify, mpsc};

use super::otlp;
use super::span::SpanRecord;

/// Spans waiting for export; past this, new ones are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request.
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

/// The queue's sending side: what requests hand finished spans to.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<SpanRecord>,
    batch_ready: Arc<Notify>,
    metrics: ExportMetrics,
}

impl Queue {
    /// Hands `spans` to the exporter, dropping (and counting) what does not fit.
    pub fn push(&self, spans: Vec<SpanRecord>) {
        for span in spans {
            if self.tx.try_send(span).is_err() {
                self.metrics.queue_full.inc();
            }
        }
        if QUEUE - self.tx.capacity() >= BATCH {
            self.batch_ready.notify_one();
        }
    }
}

/// Starts the exporter task; spans pushed into the queue it returns are sent
/// to `to.endpoint`.
pub fn spawn(to: Destination, metrics: ExportMetrics) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    let batch_ready = Arc::new(Notify::new());
    tokio::spawn(run(to, rx, batch_ready.clone(), metrics.clone()));
    Queue {
        tx,
        batch_ready,
        metrics,
    }
}

async fn run(
    to: Destination,
    mut rx: mpsc::Receiver<SpanRecord>,
    batch_ready: Arc<Notify>,
    metrics: ExportMetrics,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The first span of a batch: wait for it as long as it takes.
        match rx.recv().await {
            Some(span) => batch.push(span),
            None => return,
        }
        if rx.len() + 1 < BATCH {
            // Then the rest, without a wake-up per span.
            let _ = tokio::time::timeout(INTERVAL, batch_ready.notified()).await;
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let mut body = Vec::with_capacity(batch.len() * 512);
        otlp::encode(&to.resource, &batch, &mut body);
        batch.clear();
        match export(&client, &to.endpoint, body.into()).await {
            Ok(()) => {
                metrics.exported.inc_by(n);
                if failing {
                    tracing::info!(endpoint = %to.endpoint, "span export works again");
                    failing = false;
                }
            }
            Err(e) => {
                metrics.export_failed.inc_by(n);
                if !failing {
                    // Once per outage, not once per batch.
                    tracing::warn!(endpoint = %to.endpoint, error = %e, "span export failed; spans are dropped until it works");
                    failing = true;
                }
            }
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
