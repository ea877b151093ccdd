//! Export over OTLP/HTTP with protobuf: finished spans go into a bounded
//! queue without waiting (a full queue drops them, counted), and one task
//! sends them in batches. A collector that is slow or down costs the
//! requests nothing: they never wait on the queue or the export.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus::IntCounter;
use prost::Message;
use tokio::sync::mpsc;

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
    tx: mpsc::Sender<Span>,
    metrics: ExportMetrics,
}

impl Queue {
    /// Hands `spans` to the exporter, dropping (and counting) what does not fit.
    pub fn push(&self, spans: Vec<Span>) {
        for span in spans {
            if self.tx.try_send(span).is_err() {
                self.metrics.queue_full.inc();
            }
        }
    }
}

/// Starts the exporter task; spans pushed into the queue it returns are sent
/// to `to.endpoint`.
pub fn spawn(to: Destination, metrics: ExportMetrics) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(to, rx, metrics.clone()));
    Queue { tx, metrics }
}

async fn run(to: Destination, mut rx: mpsc::Receiver<Span>, metrics: ExportMetrics) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resource = Resource {
        attributes: to
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
                ..KeyValue::default()
            })
            .collect(),
        ..Resource::default()
    };
    let mut failing_since_log = false;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        // The first span of a batch: wait for it as long as it takes.
        match rx.recv().await {
            Some(span) => batch.push(span),
            None => return,
        }
        let until = tokio::time::Instant::now() + INTERVAL;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&resource, batch);
        match export(&client, &to.endpoint, body).await {
            Ok(()) => {
                metrics.exported.inc_by(n);
                if failing_since_log {
                    tracing::info!(endpoint = %to.endpoint, "span export works again");
                    failing_since_log = false;
                }
            }
            Err(e) => {
                metrics.export_failed.inc_by(n);
                if !failing_since_log {
                    // Once per outage, not once per batch.
                    tracing::warn!(endpoint = %to.endpoint, error = %e, "span export failed; spans are dropped until it works");
                    failing_since_log = true;
                }
            }
        }
    }
}

fn encode(resource: &Resource, spans: Vec<Span>) -> Bytes {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "breakwater".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(request.encode_to_vec())
}

async fn export(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
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
