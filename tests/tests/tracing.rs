//! Distributed tracing: the real binary with `--otlp-endpoint` pointed at a real
//! OTLP/HTTP receiver (`tests/interop/otlp_receiver.py`, which decodes the
//! exports with the official protobuf definitions of `opentelemetry-proto`),
//! real upstreams that record the trace headers they were sent, and an app
//! instrumented with the OpenTelemetry Python SDK (`tests/interop/otel_app.py`).
//! Exports come in batches, at least once a second: tests poll the receiver
//! with a deadline. "Nothing was exported" is shown with a marker: a sampled
//! request sent after the one under test, whose spans arriving means the
//! earlier ones would have arrived too. A missing Python package skips a test,
//! except under `CI=true`, where it fails naming what is missing.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request};
use hyper::body::Incoming;
use serde_json::Value;

use crate::support::{
    Answer, BinaryProxy, HttpClient, Upstream, client, full, run_to_end, sample_sum, send,
    skip_without_python, spawn_binary, spawn_binary_env, spawn_upstream, text_response,
};

const RECEIVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/otlp_receiver.py"
);
const OTEL_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/otel_app.py");

/// The Python modules the receiver imports.
const RECEIVER_MODULES: [&str; 1] = ["opentelemetry.proto.collector.trace.v1.trace_service_pb2"];
/// And those of the instrumented app.
const APP_MODULES: [&str; 4] = [
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.propagate",
    "requests",
];

/// How long a span may take to reach the receiver: the batch interval is 1 s.
const ARRIVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The OTLP receiver

/// `otlp_receiver.py` as a child process; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    http: HttpClient,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts the receiver with `args` (`--hang`, `--status 503`); `None`
    /// when its Python packages are missing (and CI is not set).
    fn start(args: &[&str]) -> Option<Receiver> {
        if skip_without_python(&RECEIVER_MODULES) {
            return None;
        }
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/interop/otlp_receiver.py");
        let stdout = child.stdout.take().expect("receiver stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("otlp_receiver.py printed no port within 30 s");
            }
        };
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("otlp_receiver.py printed {line:?}, not a port"));
        Some(Receiver {
            child,
            port,
            http: client(),
        })
    }

    /// The receiver as `--otlp-endpoint` (no path: breakwater adds `/v1/traces`).
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn json(&self, path: &str) -> Vec<Value> {
        let req = Request::get(format!("http://127.0.0.1:{}{path}", self.port))
            .body(full(""))
            .expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(10), send(&self.http, req))
            .await
            .unwrap_or_else(|_| panic!("the receiver did not answer GET {path}"));
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", answer.body))
    }

    /// Every span received so far.
    async fn spans(&self) -> Vec<Value> {
        self.json("/spans").await
    }

    /// Every export POST seen so far: path, content type, span count, answer.
    async fn exports(&self) -> Vec<Value> {
        self.json("/exports").await
    }

    /// Polls until `done` holds for the spans received, within `within`;
    /// panics with what did arrive otherwise.
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans().await;
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not there after {within:?}; the receiver has {} spans:\n{}\nexports: {:?}",
                    spans.len(),
                    summary(&spans),
                    self.exports().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `trace` has at least `n` spans.
    async fn wait_trace(&self, trace: &str, n: usize) -> Vec<Value> {
        let spans = self
            .wait_for(&format!("{n} spans of trace {trace}"), ARRIVAL, |s| {
                in_trace(s, trace).len() >= n
            })
            .await;
        in_trace(&spans, trace).into_iter().cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// Spans as the receiver gives them

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].get(key)
}

fn attr_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key).and_then(Value::as_str)
}

fn attr_i64(span: &Value, key: &str) -> Option<i64> {
    attr(span, key).and_then(Value::as_i64)
}

fn attr_num(span: &Value, key: &str) -> Option<f64> {
    attr(span, key).and_then(Value::as_f64)
}

fn id<'a>(span: &'a Value, field: &str) -> &'a str {
    span[field].as_str().unwrap_or("")
}

fn span_id(span: &Value) -> &str {
    id(span, "span_id")
}

fn parent_id(span: &Value) -> &str {
    id(span, "parent_span_id")
}

fn trace_id(span: &Value) -> &str {
    id(span, "trace_id")
}

fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("")
}

fn status_code(span: &Value) -> i64 {
    span["status"]["code"].as_i64().unwrap_or(-1)
}

fn is_attempt(span: &Value) -> bool {
    attr(span, "breakwater.attempt").is_some()
}

fn in_trace<'a>(spans: &'a [Value], trace: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| trace_id(s) == trace).collect()
}

fn children<'a>(spans: &[&'a Value], parent: &str) -> Vec<&'a Value> {
    let mut out: Vec<&Value> = spans
        .iter()
        .copied()
        .filter(|s| parent_id(s) == parent)
        .collect();
    out.sort_by_key(|s| attr_i64(s, "breakwater.attempt").unwrap_or(0));
    out
}

fn event<'a>(span: &'a Value, name: &str) -> Option<&'a Value> {
    span["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["name"] == name))
}

fn event_names(span: &Value) -> Vec<String> {
    span["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One line per span, for failure messages.
fn summary(spans: &[Value]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} {} trace={} span={} parent={} attrs={} events={:?} status={}",
                s["name"].as_str().unwrap_or("?"),
                kind(s),
                trace_id(s),
                span_id(s),
                parent_id(s),
                s["attributes"],
                event_names(s),
                s["status"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary_of(spans: &[&Value]) -> String {
    summary(&spans.iter().map(|s| (*s).clone()).collect::<Vec<_>>())
}

/// The one request span (not an attempt) among `spans`, with its attempts.
fn request_and_attempts<'a>(spans: &[&'a Value]) -> (&'a Value, Vec<&'a Value>) {
    let requests: Vec<&Value> = spans.iter().copied().filter(|s| !is_attempt(s)).collect();
    assert_eq!(
        requests.len(),
        1,
        "one request span, besides its attempts:\n{}",
        summary_of(spans)
    );
    let request = requests[0];
    (request, children(spans, span_id(request)))
}

// ---------------------------------------------------------------------------
// Trace headers

/// A fresh trace id, span id pair for `tag`: distinct per test and per run.
fn ids(tag: u8) -> (String, String) {
    static N: AtomicUsize = AtomicUsize::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst) as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let mix = nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (
        format!(
            "4bf92f3577b34da6{:014x}{tag:02x}",
            mix & 0x00ff_ffff_ffff_ffff
        ),
        format!("00f067aa{:06x}{tag:02x}", (mix >> 8) & 0xff_ffff),
    )
}

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A traceparent split into (trace id, parent id, flags) when it is valid.
fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() != 4 || parts[0] != "00" || !hex(parts[1], 32) || !hex(parts[2], 16) {
        return None;
    }
    if !hex(parts[3], 2) || parts[1].bytes().all(|b| b == b'0') {
        return None;
    }
    if parts[2].bytes().all(|b| b == b'0') {
        return None;
    }
    Some((parts[1].into(), parts[2].into(), parts[3].into()))
}

// ---------------------------------------------------------------------------
// Upstreams, the proxy and requests

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// An upstream that answers the nth request with `statuses[n]` (the last one
/// after that), after `delay`, and keeps the headers of every request.
async fn recording(statuses: &[u16], delay: Duration) -> (Upstream, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let statuses: Arc<Vec<u16>> = Arc::new(statuses.to_vec());
    let count = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let up = spawn_upstream(move |req: Request<Incoming>| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        s.lock().unwrap().push(req.headers().clone());
        let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            text_response(status, "from the upstream\n")
        }
    })
    .await;
    (up, seen)
}

fn seen(seen: &Seen) -> Vec<HeaderMap> {
    seen.lock().unwrap().clone()
}

/// A loopback port with nothing listening on it.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `breakwater run` with tracing to `endpoint` and `extra` flags.
async fn traced(app: SocketAddr, endpoint: &str, extra: &[&str]) -> BinaryProxy {
    let mut flags = vec![format!("--otlp-endpoint={endpoint}")];
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_binary(app, &flags).await
}

/// A GET to the outbound listener for `host` (Host routing), with `headers`.
async fn outbound(
    c: &HttpClient,
    proxy: &BinaryProxy,
    host: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(format!("http://{}{path}", proxy.addrs.outbound))
        .header(http::header::HOST, host.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    timed(send(c, req.body(full("")).expect("request"))).await
}

/// A GET to the inbound listener, with `headers`.
async fn inbound(
    c: &HttpClient,
    proxy: &BinaryProxy,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(format!("http://{}{path}", proxy.addrs.inbound));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    timed(send(c, req.body(full("")).expect("request"))).await
}

async fn timed<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("an answer from the proxy within 20 s")
}

/// The admin endpoint's /metrics text.
async fn metrics_text(c: &HttpClient, proxy: &BinaryProxy) -> String {
    let req = Request::get(format!("http://{}/metrics", proxy.addrs.admin))
        .body(full(""))
        .expect("request");
    let answer = timed(send(c, req)).await;
    assert_eq!(answer.status, 200, "/metrics: {}", answer.body);
    answer.body
}

/// [`sample_sum`] of a fresh /metrics.
async fn metric(c: &HttpClient, proxy: &BinaryProxy, name: &str, label: &str) -> f64 {
    sample_sum(&metrics_text(c, proxy).await, name, label)
}

/// Polls metric `name{label}` until it reaches `at_least`, within `within`;
/// returns the whole /metrics text of that moment.
async fn wait_metric(
    c: &HttpClient,
    proxy: &BinaryProxy,
    name: &str,
    label: &str,
    at_least: f64,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics_text(c, proxy).await;
        let v = sample_sum(&text, name, label);
        if v >= at_least {
            return text;
        }
        if Instant::now() > deadline {
            let spans: Vec<&str> = text.lines().filter(|l| l.contains("spans")).collect();
            panic!(
                "{name} {label} is {v}, not {at_least}, after {within:?}; span metrics:\n{}",
                spans.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a sampled request through the outbound listener to `host` and waits
/// for its trace to arrive: every span recorded before it has arrived too.
/// Returns the marker's trace id.
async fn marker(
    c: &HttpClient,
    proxy: &BinaryProxy,
    receiver: &Receiver,
    host: SocketAddr,
) -> String {
    // The request before it has had its answer; let its spans end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (trace, span) = ids(0xee);
    let answer = outbound(
        c,
        proxy,
        host,
        "/marker",
        &[("traceparent", &traceparent(&trace, &span, "01"))],
    )
    .await;
    assert_eq!(answer.status, 200, "the marker request: {}", answer.body);
    receiver.wait_trace(&trace, 2).await;
    trace
}

// ---------------------------------------------------------------------------
// Tests

/// Retries: one CLIENT span for the request under the app's span, one child per
/// attempt (`breakwater.attempt` 1, 2, 3), and each attempt's traceparent names
/// that attempt's span, so the upstream's spans would nest under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_client_span_with_an_attempt_span_per_try() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, headers) = recording(&[503, 503, 200], Duration::ZERO).await;
    let proxy = traced(
        up.addr,
        &receiver.endpoint(),
        &["--retry-on=5xx", "--retry-backoff=1ms", "--retries=2"],
    )
    .await;
    let c = client();
    let (trace, parent) = ids(1);
    let answer = outbound(
        &c,
        &proxy,
        up.addr,
        "/flaky",
        &[("traceparent", &traceparent(&trace, &parent, "01"))],
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "the third attempt's 200: {}",
        answer.body
    );

    let spans = receiver.wait_trace(&trace, 4).await;
    let spans: Vec<&Value> = spans.iter().collect();
    let (request, attempts) = request_and_attempts(&spans);
    let all = summary_of(&spans);
    assert_eq!(
        parent_id(request),
        parent,
        "the request span's parent is the app's span:\n{all}"
    );
    assert_eq!(kind(request), "CLIENT", "{all}");
    assert_eq!(request["name"], "GET", "{all}");
    assert_eq!(
        request["scope"], "breakwater",
        "instrumentation scope:\n{all}"
    );
    assert_eq!(
        attr_str(request, "http.request.method"),
        Some("GET"),
        "{all}"
    );
    assert_eq!(attr_str(request, "url.path"), Some("/flaky"), "{all}");
    assert_eq!(
        attr_str(request, "server.address"),
        Some("127.0.0.1"),
        "{all}"
    );
    assert_eq!(
        attr_i64(request, "server.port"),
        Some(i64::from(up.addr.port())),
        "{all}"
    );
    assert_eq!(
        attr_str(request, "network.protocol.version"),
        Some("1.1"),
        "{all}"
    );
    assert_eq!(
        attr_i64(request, "http.response.status_code"),
        Some(200),
        "{all}"
    );
    assert_eq!(kind(request), "CLIENT", "{all}");
    let destination = up.addr.to_string();
    assert_eq!(
        attr_str(request, "breakwater.destination"),
        Some(destination.as_str()),
        "{all}"
    );
    assert_eq!(
        attr_str(request, "breakwater.route"),
        Some("default"),
        "{all}"
    );
    assert_eq!(
        status_code(request),
        0,
        "a request that ended in 200 has status unset:\n{all}"
    );
    assert!(
        attr(request, "error.type").is_none(),
        "no error.type on a 200:\n{all}"
    );

    assert_eq!(
        attempts.len(),
        3,
        "three attempt spans under the request span:\n{all}"
    );
    assert_eq!(
        spans.len(),
        4,
        "nothing but the request and its attempts:\n{all}"
    );
    for (i, attempt) in attempts.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(attr_i64(attempt, "breakwater.attempt"), Some(n), "{all}");
        assert_eq!(kind(attempt), "CLIENT", "attempt {n}:\n{all}");
        assert_eq!(
            attempt["name"], "GET",
            "attempt spans are named like the method:\n{all}"
        );
        assert_eq!(
            attr_str(attempt, "network.peer.address"),
            Some("127.0.0.1"),
            "attempt {n}:\n{all}"
        );
        assert_eq!(
            attr_i64(attempt, "network.peer.port"),
            Some(i64::from(up.addr.port())),
            "attempt {n}:\n{all}"
        );
        let start = attempt["start_unix_nano"].as_u64().unwrap_or(0);
        let end = attempt["end_unix_nano"].as_u64().unwrap_or(0);
        assert!(
            request["start_unix_nano"].as_u64().unwrap_or(u64::MAX) <= start
                && end <= request["end_unix_nano"].as_u64().unwrap_or(0)
                && start <= end,
            "attempt {n} lies within the request span:\n{all}"
        );
        if n >= 2 {
            assert_eq!(
                attr_i64(attempt, "http.request.resend_count"),
                Some(n - 1),
                "attempt {n}:\n{all}"
            );
            assert!(
                attr_num(attempt, "breakwater.retry.wait_ms").is_some_and(|w| w >= 0.0),
                "attempt {n} carries its backoff:\n{all}"
            );
            assert_eq!(
                attr_str(attempt, "breakwater.retry.budget"),
                Some("allowed"),
                "attempt {n}:\n{all}"
            );
            let before = attempts[i - 1]["end_unix_nano"]
                .as_u64()
                .unwrap_or(u64::MAX);
            assert!(
                before <= start,
                "attempt {n} starts after attempt {} ended:\n{all}",
                n - 1
            );
        } else {
            assert!(
                attr(attempt, "http.request.resend_count").is_none(),
                "attempt 1:\n{all}"
            );
        }
        if n <= 2 {
            assert_eq!(
                attr_i64(attempt, "http.response.status_code"),
                Some(503),
                "attempt {n}:\n{all}"
            );
            assert_eq!(
                status_code(attempt),
                2,
                "attempt {n}'s 503 is an ERROR:\n{all}"
            );
            assert!(
                !attempt["status"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty(),
                "attempt {n}'s ERROR status has a message:\n{all}"
            );
            if let Some(e) = attr_str(attempt, "error.type") {
                assert_eq!(
                    e, "503",
                    "attempt {n}'s error.type is the status code:\n{all}"
                );
            }
        } else {
            assert_eq!(
                attr_i64(attempt, "http.response.status_code"),
                Some(200),
                "attempt 3:\n{all}"
            );
            assert_eq!(
                status_code(attempt),
                0,
                "attempt 3's 200 has status unset:\n{all}"
            );
            assert!(attr(attempt, "error.type").is_none(), "attempt 3:\n{all}");
        }
    }

    let sent = seen(&headers);
    assert_eq!(sent.len(), 3, "the upstream saw three attempts");
    for (i, (h, attempt)) in sent.iter().zip(&attempts).enumerate() {
        let expected = traceparent(&trace, span_id(attempt), "01");
        assert_eq!(
            header(h, "traceparent"),
            Some(expected.as_str()),
            "attempt {} carries its own span id as the parent:\n{all}",
            i + 1
        );
    }
    // The four acknowledged spans are counted (the panic says what it is).
    wait_metric(
        &c,
        &proxy,
        "breakwater_spans_exported_total",
        "",
        4.0,
        ARRIVAL,
    )
    .await;
}

/// Inbound: the caller's sampled traceparent is the SERVER span's parent; the
/// attempt to the app is its child, and the app gets that attempt's context
/// with the tracestate unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_sampled_traceparent_gives_a_server_span_under_the_caller() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (app, headers) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(app.addr, &receiver.endpoint(), &[]).await;
    let c = client();
    let (trace, parent) = ids(2);
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let answer = inbound(
        &c,
        &proxy,
        "/orders/7",
        &[
            ("traceparent", &traceparent(&trace, &parent, "01")),
            ("tracestate", state),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let spans = receiver.wait_trace(&trace, 2).await;
    let spans: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&spans);
    let (server, attempts) = request_and_attempts(&spans);
    assert_eq!(kind(server), "SERVER", "{all}");
    assert_eq!(server["name"], "GET", "{all}");
    assert_eq!(
        parent_id(server),
        parent,
        "the SERVER span's parent is the caller's span:\n{all}"
    );
    assert_eq!(kind(server), "SERVER", "{all}");
    assert_eq!(attr_str(server, "url.path"), Some("/orders/7"), "{all}");
    assert_eq!(
        attr_i64(server, "http.response.status_code"),
        Some(200),
        "{all}"
    );
    assert_eq!(attempts.len(), 1, "one attempt to the app:\n{all}");
    assert_eq!(kind(attempts[0]), "CLIENT", "{all}");
    assert_eq!(
        attr_i64(attempts[0], "breakwater.attempt"),
        Some(1),
        "{all}"
    );

    let sent = seen(&headers);
    assert_eq!(sent.len(), 1);
    let expected = traceparent(&trace, span_id(attempts[0]), "01");
    assert_eq!(
        header(&sent[0], "traceparent"),
        Some(expected.as_str()),
        "{all}"
    );
    assert_eq!(
        header(&sent[0], "tracestate"),
        Some(state),
        "tracestate unchanged"
    );
}

/// A caller that said "not sampled" is followed even at ratio 1: no span, and
/// its headers reach the app unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_traceparent_is_not_recorded_and_passes_through_unchanged() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (app, headers) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(app.addr, &receiver.endpoint(), &["--trace-sample-ratio=1"]).await;
    let c = client();
    let (trace, parent) = ids(3);
    let sent_tp = traceparent(&trace, &parent, "00");
    let state = "rojo=00f067aa0ba902b7";
    let answer = inbound(
        &c,
        &proxy,
        "/quiet",
        &[("traceparent", &sent_tp), ("tracestate", state)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = seen(&headers);
    assert_eq!(
        header(&got[0], "traceparent"),
        Some(sent_tp.as_str()),
        "the app gets the caller's traceparent"
    );
    assert_eq!(header(&got[0], "tracestate"), Some(state));

    let mark = marker(&c, &proxy, &receiver, app.addr).await;
    let spans = receiver.spans().await;
    let others: Vec<&Value> = spans.iter().filter(|s| trace_id(s) != mark).collect();
    assert!(
        others.is_empty(),
        "an unsampled request was recorded:\n{}",
        summary_of(&others)
    );
}

/// No context: ratio 1 starts a new root (no parent) whose attempt context the
/// upstream gets; ratio 0 records nothing and adds no header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_context_is_a_root_at_ratio_1_and_nothing_at_ratio_0() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, headers) = recording(&[200], Duration::ZERO).await;
    let c = client();
    {
        let proxy = traced(up.addr, &receiver.endpoint(), &["--trace-sample-ratio=1"]).await;
        let answer = outbound(&c, &proxy, up.addr, "/root", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let spans = receiver
            .wait_for("a root span and its attempt", ARRIVAL, |s| s.len() >= 2)
            .await;
        let all = summary(&spans);
        let refs: Vec<&Value> = spans.iter().collect();
        let (root, attempts) = request_and_attempts(&refs);
        assert_eq!(parent_id(root), "", "a new root has no parent:\n{all}");
        assert_eq!(kind(root), "CLIENT", "{all}");
        assert_eq!(attr_str(root, "url.path"), Some("/root"), "{all}");
        assert_eq!(trace_id(root).len(), 32, "{all}");
        assert!(trace_id(root).bytes().any(|b| b != b'0'), "{all}");
        assert_eq!(attempts.len(), 1, "{all}");
        assert!(
            spans.iter().all(|s| trace_id(s) == trace_id(root)),
            "one trace:\n{all}"
        );
        let got = seen(&headers);
        let expected = traceparent(trace_id(root), span_id(attempts[0]), "01");
        assert_eq!(
            header(&got[0], "traceparent"),
            Some(expected.as_str()),
            "{all}"
        );
    }
    {
        let proxy = traced(up.addr, &receiver.endpoint(), &["--trace-sample-ratio=0"]).await;
        let before = receiver.spans().await.len();
        let answer = outbound(&c, &proxy, up.addr, "/unsampled-root", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let got = seen(&headers);
        assert_eq!(got.len(), 2);
        assert!(
            header(&got[1], "traceparent").is_none(),
            "a request not recorded gets no traceparent: {:?}",
            got[1]
        );
        let mark = marker(&c, &proxy, &receiver, up.addr).await;
        let spans = receiver.spans().await;
        let others: Vec<&Value> = spans[before..]
            .iter()
            .filter(|s| trace_id(s) != mark)
            .collect();
        assert!(
            others.is_empty(),
            "ratio 0 recorded a request without context:\n{}",
            summary_of(&others)
        );
    }
}

/// B3, single and multi-header, on the inbound listener (and single outbound):
/// the span continues the B3 trace under the B3 span, and the app gets the B3
/// headers rewritten in the form they came in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_contexts_are_continued_and_rewritten_in_their_own_form() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (app, headers) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(app.addr, &receiver.endpoint(), &[]).await;
    let c = client();

    // Single header, inbound.
    let (trace, parent) = ids(4);
    let b3 = format!("{trace}-{parent}-1");
    let answer = inbound(&c, &proxy, "/b3-single", &[("b3", &b3)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let spans = receiver.wait_trace(&trace, 2).await;
    let refs: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&refs);
    let (server, attempts) = request_and_attempts(&refs);
    assert_eq!(kind(server), "SERVER", "{all}");
    assert_eq!(
        parent_id(server),
        parent,
        "the B3 span is the parent:\n{all}"
    );
    assert_eq!(attempts.len(), 1, "{all}");
    let got = seen(&headers);
    let rewritten =
        header(&got[0], "b3").unwrap_or_else(|| panic!("the app got no b3 header: {:?}", got[0]));
    let parts: Vec<&str> = rewritten.split('-').collect();
    assert_eq!(
        parts,
        [trace.as_str(), span_id(attempts[0]), "1", span_id(server)],
        "b3 = TRACE-ATTEMPTSPAN-1-REQUESTSPAN, got {rewritten}:\n{all}"
    );
    assert!(
        header(&got[0], "x-b3-traceid").is_none(),
        "single stays single: {:?}",
        got[0]
    );
    let expected = traceparent(&trace, span_id(attempts[0]), "01");
    assert_eq!(
        header(&got[0], "traceparent"),
        Some(expected.as_str()),
        "{all}"
    );

    // Multi-header, inbound.
    let (trace, parent) = ids(5);
    let answer = inbound(
        &c,
        &proxy,
        "/b3-multi",
        &[
            ("x-b3-traceid", &trace),
            ("x-b3-spanid", &parent),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let spans = receiver.wait_trace(&trace, 2).await;
    let refs: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&refs);
    let (server, attempts) = request_and_attempts(&refs);
    assert_eq!(
        parent_id(server),
        parent,
        "the x-b3-spanid is the parent:\n{all}"
    );
    assert_eq!(attempts.len(), 1, "{all}");
    let got = seen(&headers);
    let h = &got[1];
    assert_eq!(header(h, "x-b3-traceid"), Some(trace.as_str()), "{h:?}");
    assert_eq!(
        header(h, "x-b3-spanid"),
        Some(span_id(attempts[0])),
        "{h:?}\n{all}"
    );
    assert_eq!(
        header(h, "x-b3-parentspanid"),
        Some(span_id(server)),
        "{h:?}\n{all}"
    );
    assert_eq!(header(h, "x-b3-sampled"), Some("1"), "{h:?}");
    assert!(header(h, "b3").is_none(), "multi stays multi: {h:?}");

    // Single header, outbound: read on both listeners.
    let (trace, parent) = ids(6);
    let b3 = format!("{trace}-{parent}-1");
    let answer = outbound(&c, &proxy, app.addr, "/b3-out", &[("b3", &b3)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let spans = receiver.wait_trace(&trace, 2).await;
    let refs: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&refs);
    let (client_span, attempts) = request_and_attempts(&refs);
    assert_eq!(kind(client_span), "CLIENT", "{all}");
    assert_eq!(parent_id(client_span), parent, "{all}");
    let got = seen(&headers);
    let expected = format!(
        "{trace}-{}-1-{}",
        span_id(attempts[0]),
        span_id(client_span)
    );
    assert_eq!(header(&got[2], "b3"), Some(expected.as_str()), "{all}");
}

/// A malformed traceparent is never forwarded as it came, and never fails the
/// request: unrecorded, it is removed; sampled by ratio, a new root replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_never_forwarded_as_is() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, headers) = recording(&[200], Duration::ZERO).await;
    let c = client();
    let bad = "00-xyz-abc-01";
    // Kept to the end: a proxy killed before its batch went out exports nothing.
    let mut proxies = Vec::new();
    for ratio in ["0", "1"] {
        let proxy = traced(
            up.addr,
            &receiver.endpoint(),
            &[&format!("--trace-sample-ratio={ratio}")],
        )
        .await;
        let answer = outbound(
            &c,
            &proxy,
            up.addr,
            &format!("/bad-{ratio}"),
            &[("traceparent", bad)],
        )
        .await;
        assert_eq!(answer.status, 200, "ratio {ratio}: {}", answer.body);
        let answer = inbound(
            &c,
            &proxy,
            &format!("/bad-in-{ratio}"),
            &[("traceparent", bad)],
        )
        .await;
        assert_eq!(
            answer.status, 200,
            "ratio {ratio}, inbound: {}",
            answer.body
        );
        proxies.push(proxy);
    }
    let got = seen(&headers);
    assert_eq!(got.len(), 4);
    for (i, h) in got.iter().enumerate() {
        let tp: Vec<&str> = h
            .get_all("traceparent")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            tp.len() <= 1,
            "request {i}: one traceparent at most: {tp:?}"
        );
        if let Some(tp) = tp.first() {
            assert_ne!(*tp, bad, "request {i}: forwarded broken");
            assert!(
                parse_traceparent(tp).is_some(),
                "request {i}: not a valid traceparent: {tp}"
            );
        }
    }
    // Ratio 0: no context, not sampled, nothing to send.
    assert!(
        header(&got[0], "traceparent").is_none(),
        "ratio 0 outbound: {:?}",
        got[0]
    );
    assert!(
        header(&got[1], "traceparent").is_none(),
        "ratio 0 inbound: {:?}",
        got[1]
    );
    // Ratio 1: a new root, whose attempt the upstream's header names.
    let spans = receiver
        .wait_for("the two new roots of ratio 1", ARRIVAL, |s| {
            s.iter().filter(|x| !is_attempt(x)).count() >= 2
        })
        .await;
    let all = summary(&spans);
    for (h, path) in [(&got[2], "/bad-1"), (&got[3], "/bad-in-1")] {
        let root = spans
            .iter()
            .find(|s| attr_str(s, "url.path") == Some(path) && !is_attempt(s))
            .unwrap_or_else(|| panic!("no span for {path}:\n{all}"));
        assert_eq!(parent_id(root), "", "{path} is a new root:\n{all}");
        let (t, p, _) = parse_traceparent(header(h, "traceparent").unwrap_or(""))
            .unwrap_or_else(|| panic!("{path}: the upstream got no valid traceparent: {h:?}"));
        assert_eq!(t, trace_id(root), "{path}:\n{all}");
        let attempt = spans
            .iter()
            .find(|s| parent_id(s) == span_id(root))
            .unwrap_or_else(|| panic!("{path} has no attempt span:\n{all}"));
        assert_eq!(p, span_id(attempt), "{path}:\n{all}");
    }
}

/// A request that waits in the bulkhead's queue says so on its span:
/// `bulkhead.queued` then `bulkhead.granted`, with the wait in `breakwater.wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulkhead_wait_is_events_on_the_request_span() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let slow = Duration::from_millis(600);
    let (up, _) = recording(&[200], slow).await;
    let proxy = traced(
        up.addr,
        &receiver.endpoint(),
        &["--max-concurrent=1", "--max-queue=4", "--queue-timeout=5s"],
    )
    .await;
    let c = client();
    let (first_trace, first_parent) = ids(7);
    let (second_trace, second_parent) = ids(8);
    let tp1 = traceparent(&first_trace, &first_parent, "01");
    let tp2 = traceparent(&second_trace, &second_parent, "01");
    let started = Instant::now();
    let h1 = [("traceparent", tp1.as_str())];
    let h2 = [("traceparent", tp2.as_str())];
    let (a, b) = tokio::join!(outbound(&c, &proxy, up.addr, "/slow/1", &h1), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        outbound(&c, &proxy, up.addr, "/slow/2", &h2).await
    });
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.body, b.body);
    assert!(
        started.elapsed() >= slow * 2,
        "the second waited for the first"
    );

    let first = receiver.wait_trace(&first_trace, 2).await;
    let second = receiver.wait_trace(&second_trace, 2).await;
    let first: Vec<&Value> = first.iter().collect();
    let second: Vec<&Value> = second.iter().collect();
    let all = format!("{}\n{}", summary_of(&first), summary_of(&second));
    let (first_span, _) = request_and_attempts(&first);
    let (second_span, _) = request_and_attempts(&second);
    assert!(
        event(first_span, "bulkhead.queued").is_none(),
        "the first never queued:\n{all}"
    );
    let queued = event(second_span, "bulkhead.queued")
        .unwrap_or_else(|| panic!("no bulkhead.queued on the second request's span:\n{all}"));
    let granted = event(second_span, "bulkhead.granted")
        .unwrap_or_else(|| panic!("no bulkhead.granted on the second request's span:\n{all}"));
    assert!(
        queued["time_unix_nano"].as_u64() <= granted["time_unix_nano"].as_u64(),
        "queued before granted:\n{all}"
    );
    let wait = granted["attributes"]["breakwater.wait_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("bulkhead.granted has no numeric breakwater.wait_ms:\n{all}"));
    // The first held the slot for ~600 ms and the second came 100 ms in.
    assert!(
        (250.0..=2000.0).contains(&wait),
        "waited about 500 ms, says {wait}:\n{all}"
    );
}

/// `--trace-errors` exports a request breakwater answered itself with an error
/// although it was not sampled: one span, `error.type` = the reason; not when
/// the caller said not sampled, and not at all without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_errors_exports_unsampled_failures_with_their_attempts() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let c = client();
    {
        let proxy = traced(
            up.addr,
            &receiver.endpoint(),
            &["--trace-sample-ratio=0", "--trace-errors"],
        )
        .await;
        let closed = closed_port();
        let answer = outbound(&c, &proxy, closed, "/gone", &[]).await;
        assert_eq!(
            (answer.status, answer.reason()),
            (502, Some("connect-failure")),
            "{}",
            answer.body
        );
        // A caller that said "not sampled" is obeyed, error or not.
        let (trace, parent) = ids(9);
        let other = closed_port();
        let answer = outbound(
            &c,
            &proxy,
            other,
            "/gone-too",
            &[("traceparent", &traceparent(&trace, &parent, "00"))],
        )
        .await;
        assert_eq!(answer.status, 502, "{}", answer.body);

        let mark = marker(&c, &proxy, &receiver, up.addr).await;
        let spans = receiver.spans().await;
        let errors: Vec<&Value> = spans.iter().filter(|s| trace_id(s) != mark).collect();
        let all = summary_of(&errors);
        assert!(
            errors.iter().all(|s| trace_id(s) != trace),
            "the caller said not sampled: nothing of its trace is exported:\n{all}"
        );
        let requests: Vec<&Value> = errors.iter().copied().filter(|s| !is_attempt(s)).collect();
        assert_eq!(requests.len(), 1, "one request span, for /gone:\n{all}");
        let span = requests[0];
        assert_eq!(kind(span), "CLIENT", "{all}");
        assert_eq!(attr_str(span, "url.path"), Some("/gone"), "{all}");
        assert_eq!(
            attr_str(span, "error.type"),
            Some("connect-failure"),
            "{all}"
        );
        assert_eq!(
            attr_str(span, "breakwater.reason"),
            Some("connect-failure"),
            "{all}"
        );
        assert_eq!(
            attr_i64(span, "http.response.status_code"),
            Some(502),
            "{all}"
        );
        assert_eq!(status_code(span), 2, "{all}");
        // With its attempts (connect-failure is retried): each a child of it,
        // each with the reason.
        let attempts: Vec<&Value> = errors.iter().copied().filter(|s| is_attempt(s)).collect();
        assert_eq!(
            attempts.len(),
            3,
            "the request span and its 3 attempts:\n{all}"
        );
        for a in attempts {
            assert_eq!(a["parent_span_id"], span["span_id"], "{all}");
            assert_eq!(
                attr_str(a, "breakwater.reason"),
                Some("connect-failure"),
                "{all}"
            );
        }
    }
    {
        let proxy = traced(up.addr, &receiver.endpoint(), &["--trace-sample-ratio=0"]).await;
        let before = receiver.spans().await.len();
        let answer = outbound(&c, &proxy, closed_port(), "/gone-quietly", &[]).await;
        assert_eq!(answer.status, 502, "{}", answer.body);
        let mark = marker(&c, &proxy, &receiver, up.addr).await;
        let spans = receiver.spans().await;
        let others: Vec<&Value> = spans[before..]
            .iter()
            .filter(|s| trace_id(s) != mark)
            .collect();
        assert!(
            others.is_empty(),
            "without --trace-errors nothing is exported:\n{}",
            summary_of(&others)
        );
    }
}

/// The OpenTelemetry Python SDK's app through breakwater: one connected trace,
/// app span → breakwater's CLIENT span → attempt span → the upstream's parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_instrumented_app_gets_one_connected_trace() {
    if skip_without_python(&APP_MODULES) {
        return;
    }
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, headers) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(up.addr, &receiver.endpoint(), &[]).await;
    let args = [
        OTEL_APP.to_string(),
        format!("--proxy={}", proxy.addrs.outbound),
        format!("--target={}", up.addr),
        format!("--otlp={}/v1/traces", receiver.endpoint()),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/interop/otel_app.py")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "otel_app.py failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("otel_app.py printed no JSON ({e}): {stdout}"));
    assert_eq!(printed["status"], 200, "{printed}");
    let trace = printed["trace_id"].as_str().expect("trace_id").to_string();
    let app_span = printed["span_id"].as_str().expect("span_id").to_string();

    let spans = receiver.wait_trace(&trace, 3).await;
    let refs: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&refs);
    let app = refs
        .iter()
        .find(|s| span_id(s) == app_span)
        .unwrap_or_else(|| panic!("the app's own span did not arrive:\n{all}"));
    assert_eq!(app["resource"]["service.name"], "otel-app", "{all}");
    let ours: Vec<&Value> = refs
        .iter()
        .copied()
        .filter(|s| s["scope"] == "breakwater")
        .collect();
    let (request, attempts) = request_and_attempts(&ours);
    assert_eq!(
        parent_id(request),
        app_span,
        "breakwater's span is under the app's:\n{all}"
    );
    assert_eq!(kind(request), "CLIENT", "{all}");
    assert_eq!(
        request["resource"]["service.name"], "breakwater",
        "the default service.name:\n{all}"
    );
    assert_eq!(attempts.len(), 1, "{all}");
    let got = seen(&headers);
    assert_eq!(got.len(), 1);
    let (t, p, flags) = parse_traceparent(header(&got[0], "traceparent").unwrap_or(""))
        .unwrap_or_else(|| panic!("the upstream got no valid traceparent: {:?}", got[0]));
    assert_eq!(t, trace, "{all}");
    assert_eq!(
        p,
        span_id(attempts[0]),
        "the upstream's parent is the attempt span:\n{all}"
    );
    let sampled = u8::from_str_radix(&flags, 16).is_ok_and(|f| f & 1 == 1);
    assert!(sampled, "sampled flag: {flags}");
}

/// Many requests, each answered quickly, and the drops counted: a collector
/// that accepts and never answers changes nothing for traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_never_slows_traffic_and_drops_are_counted() {
    let Some(receiver) = Receiver::start(&["--hang"]) else {
        return;
    };
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(up.addr, &receiver.endpoint(), &["--trace-sample-ratio=1"]).await;
    let c = client();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let t = Instant::now();
        let answer = outbound(&c, &proxy, up.addr, &format!("/hang/{i}"), &[]).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        slowest = slowest.max(t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    // More, concurrently, than the queue of 2048 spans and a batch in flight hold
    // (two spans a request): so the queue fills while the export hangs.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        let (outbound_addr, host) = (proxy.addrs.outbound, up.addr);
        tasks.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for i in 0..90 {
                let req = Request::get(format!("http://{outbound_addr}/fill/{t}/{i}"))
                    .header(http::header::HOST, host.to_string())
                    .body(full(""))
                    .expect("request");
                let at = Instant::now();
                let answer = timed(send(&c, req)).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                worst = worst.max(at.elapsed());
            }
            worst
        }));
    }
    for task in tasks {
        slowest = slowest.max(task.await.expect("a sender"));
    }
    eprintln!(
        "1540 requests with a hanging collector; slowest {slowest:?}; the burst took {:?}",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    let text = wait_metric(
        &c,
        &proxy,
        "breakwater_spans_dropped_total",
        "",
        1.0,
        Duration::from_secs(15),
    )
    .await;
    let dropped = sample_sum(&text, "breakwater_spans_dropped_total", "");
    let full_queue = sample_sum(
        &text,
        "breakwater_spans_dropped_total",
        "reason=\"queue-full\"",
    );
    let failed = sample_sum(
        &text,
        "breakwater_spans_dropped_total",
        "reason=\"export-failed\"",
    );
    eprintln!("dropped {dropped}: queue-full {full_queue}, export-failed {failed}");
    assert_eq!(
        full_queue + failed,
        dropped,
        "every drop has a reason of the two"
    );
    let exported = metric(&c, &proxy, "breakwater_spans_exported_total", "").await;
    assert_eq!(
        exported, 0.0,
        "a collector that never answers acknowledged nothing"
    );
    assert!(
        !receiver.exports().await.is_empty(),
        "breakwater did try to export"
    );
}

/// A collector that is down (nothing listens) changes nothing for traffic, and
/// the failed exports are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_never_slows_traffic_and_drops_are_counted() {
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let down = format!("http://{}", closed_port());
    let proxy = traced(up.addr, &down, &["--trace-sample-ratio=1"]).await;
    let c = client();
    for i in 0..100 {
        let t = Instant::now();
        let answer = outbound(&c, &proxy, up.addr, &format!("/down/{i}"), &[]).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    let text = wait_metric(
        &c,
        &proxy,
        "breakwater_spans_dropped_total",
        "reason=\"export-failed\"",
        1.0,
        Duration::from_secs(12),
    )
    .await;
    assert_eq!(
        sample_sum(&text, "breakwater_spans_exported_total", ""),
        0.0,
        "nothing acknowledged by a collector that is down"
    );
    // And traffic still flows after the failed exports.
    let answer = outbound(&c, &proxy, up.addr, "/down/after", &[]).await;
    assert_eq!(answer.status, 200);
}

/// The resource: `service.name` from `--service-name`, the pod and namespace
/// from the downward API's variables, no `service.namespace`; a healthy
/// collector's acknowledged spans are counted as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_the_service_and_pod_as_resource_attributes() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let endpoint = format!("--otlp-endpoint={}", receiver.endpoint());
    let proxy = spawn_binary_env(
        up.addr,
        &[
            &endpoint,
            "--service-name=orders-sidecar",
            "--trace-sample-ratio=1",
        ],
        Stdio::null(),
        &[
            ("BREAKWATER_POD_NAME", "orders-7d9f8b-x2x4q"),
            ("BREAKWATER_POD_NAMESPACE", "shop"),
        ],
    )
    .await;
    let c = client();
    for path in ["/one", "/two"] {
        let answer = outbound(&c, &proxy, up.addr, path, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let answer = inbound(&c, &proxy, "/three", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let spans = receiver
        .wait_for("six spans", ARRIVAL, |s| s.len() >= 6)
        .await;
    let all = summary(&spans);
    for s in &spans {
        let r = &s["resource"];
        assert_eq!(r["service.name"], "orders-sidecar", "{r}");
        assert_eq!(r["k8s.pod.name"], "orders-7d9f8b-x2x4q", "{r}");
        assert_eq!(r["k8s.namespace.name"], "shop", "{r}");
        assert!(
            r.get("service.namespace").is_none(),
            "service.namespace stays unset: {r}"
        );
        assert_eq!(s["scope"], "breakwater", "{all}");
    }
    let exports = receiver.exports().await;
    for e in &exports {
        assert_eq!(
            e["path"], "/v1/traces",
            "an endpoint without a path gets /v1/traces: {e}"
        );
        assert_eq!(e["content_type"], "application/x-protobuf", "{e}");
    }
    let received = receiver.spans().await.len() as f64;
    let text = wait_metric(
        &c,
        &proxy,
        "breakwater_spans_exported_total",
        "",
        6.0,
        ARRIVAL,
    )
    .await;
    let exported = sample_sum(&text, "breakwater_spans_exported_total", "");
    assert!(
        exported >= 6.0 && exported <= received,
        "exported {exported}, received {received}"
    );
    let dropped = sample_sum(&text, "breakwater_spans_dropped_total", "");
    assert_eq!(dropped, 0.0, "nothing dropped with a healthy collector");
}

/// An endpoint's path is kept when it has one; `/` gets `/v1/traces`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_path_is_the_urls_or_v1_traces() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let c = client();
    for (endpoint, path) in [
        (format!("{}/", receiver.endpoint()), "/v1/traces"),
        (
            format!("{}/otlp/custom", receiver.endpoint()),
            "/otlp/custom",
        ),
    ] {
        let proxy = traced(up.addr, &endpoint, &["--trace-sample-ratio=1"]).await;
        let answer = outbound(&c, &proxy, up.addr, path, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let spans = receiver
            .wait_for(&format!("the spans of {endpoint}"), ARRIVAL, |s| {
                s.iter().any(|x| attr_str(x, "url.path") == Some(path))
            })
            .await;
        let span = spans
            .iter()
            .find(|x| attr_str(x, "url.path") == Some(path))
            .expect("found");
        assert_eq!(span["export_path"], path, "{endpoint} exports to {path}");
    }
}

/// `breakwater` with `args` to its end: (exit code, stderr).
fn start_up(args: &[&str]) -> (Option<i32>, String) {
    let out = run_to_end(args);
    (out.code, out.stderr)
}

/// A malformed (or https) `--otlp-endpoint`, or a ratio outside 0..=1, fails
/// start-up naming its flag; an unreachable endpoint starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tracing_flags_fail_start_up_and_an_unreachable_collector_does_not() {
    let bad: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        (
            "--otlp-endpoint",
            vec!["not a url", "ftp://x", "https://127.0.0.1:4318", "http://"],
        ),
        ("--trace-sample-ratio", vec!["1.5", "-0.1", "abc"]),
    ]);
    for (flag, values) in &bad {
        for value in values {
            let arg = format!("{flag}={value}");
            // The ratio is checked with tracing on; the endpoint is given once.
            let mut args = vec!["run", "--check", arg.as_str()];
            if *flag != "--otlp-endpoint" {
                args.push("--otlp-endpoint=http://127.0.0.1:4318");
            }
            let (code, stderr) = start_up(&args);
            assert!(
                code.is_some_and(|c| c != 0),
                "{arg} was accepted (exit {code:?}): {stderr}"
            );
            assert!(
                stderr.contains(flag),
                "{arg}: the error does not name {flag}:\n{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{arg}: panicked:\n{stderr}");
        }
    }
    // Not only --check: `run` itself refuses to start.
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", closed_port().port()))
        .collect();
    let (code, stderr) = start_up(&[
        "run",
        &format!("--inbound-addr={}", addrs[0]),
        &format!("--outbound-addr={}", addrs[1]),
        &format!("--admin-addr={}", addrs[2]),
        "--otlp-endpoint=not a url",
    ]);
    assert!(
        code.is_some_and(|c| c != 0),
        "run accepted a malformed endpoint: {stderr}"
    );
    assert!(stderr.contains("--otlp-endpoint"), "{stderr}");

    // Unreachable is fine: it starts, serves, and counts what it could not send.
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let unreachable = format!("http://{}", closed_port());
    let (code, stderr) = start_up(&["run", "--check", &format!("--otlp-endpoint={unreachable}")]);
    assert_eq!(
        code,
        Some(0),
        "--check with an unreachable endpoint: {stderr}"
    );
    let proxy = traced(up.addr, &unreachable, &[]).await;
    let c = client();
    let answer = outbound(&c, &proxy, up.addr, "/fine", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = inbound(&c, &proxy, "/fine", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// The breaker on the request span: the request whose failure opens the
/// circuit records `breaker.transition` (to `open`), the one refused after it
/// `breaker.refused`, and its span says `circuit-open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_transitions_and_refusals_are_events_on_the_request_span() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, _) = recording(&[503], Duration::ZERO).await;
    let proxy = traced(
        up.addr,
        &receiver.endpoint(),
        &[
            "--breaker-consecutive-failures=1",
            "--breaker-open-duration=30s",
            "--retries=0",
        ],
    )
    .await;
    let c = client();
    let (first_trace, first_parent) = ids(10);
    let (second_trace, second_parent) = ids(11);
    let tp1 = traceparent(&first_trace, &first_parent, "01");
    let answer = outbound(&c, &proxy, up.addr, "/trip", &[("traceparent", &tp1)]).await;
    assert_eq!(
        answer.status, 503,
        "the upstream's own 503: {}",
        answer.body
    );
    assert_eq!(answer.reason(), None, "{:?}", answer.headers);
    let tp2 = traceparent(&second_trace, &second_parent, "01");
    let answer = outbound(&c, &proxy, up.addr, "/refused", &[("traceparent", &tp2)]).await;
    assert_eq!(
        (answer.status, answer.reason()),
        (503, Some("circuit-open")),
        "{}",
        answer.body
    );

    let first = receiver.wait_trace(&first_trace, 2).await;
    let second = receiver.wait_trace(&second_trace, 1).await;
    let first: Vec<&Value> = first.iter().collect();
    let second: Vec<&Value> = second.iter().collect();
    let all = format!("{}\n{}", summary_of(&first), summary_of(&second));
    let tripped = first
        .iter()
        .find(|s| !is_attempt(s))
        .unwrap_or_else(|| panic!("no request span for /trip:\n{all}"));
    assert_eq!(
        attr_i64(tripped, "http.response.status_code"),
        Some(503),
        "{all}"
    );
    assert_eq!(
        attr_str(tripped, "error.type"),
        Some("503"),
        "a 5xx's error.type is its code:\n{all}"
    );
    assert_eq!(status_code(tripped), 2, "{all}");
    let transition = event(tripped, "breaker.transition")
        .unwrap_or_else(|| panic!("no breaker.transition on /trip's span:\n{all}"));
    assert_eq!(transition["attributes"]["breakwater.to"], "open", "{all}");
    let endpoint = up.addr.to_string();
    assert_eq!(
        transition["attributes"]["breakwater.endpoint"].as_str(),
        Some(endpoint.as_str()),
        "{all}"
    );

    let refused = second
        .iter()
        .find(|s| !is_attempt(s))
        .unwrap_or_else(|| panic!("no request span for /refused:\n{all}"));
    let event = event(refused, "breaker.refused")
        .unwrap_or_else(|| panic!("no breaker.refused on /refused's span:\n{all}"));
    if let Some(peer) = event["attributes"].get("network.peer.address") {
        assert_eq!(peer, "127.0.0.1", "{all}");
    }
    assert_eq!(
        attr_str(refused, "breakwater.reason"),
        Some("circuit-open"),
        "{all}"
    );
    assert_eq!(
        attr_str(refused, "error.type"),
        Some("circuit-open"),
        "{all}"
    );
    assert_eq!(
        attr_i64(refused, "http.response.status_code"),
        Some(503),
        "{all}"
    );
    assert_eq!(status_code(refused), 2, "{all}");
    assert!(
        !refused["status"]["message"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "an ERROR status has a message:\n{all}"
    );
}

/// A caller's shorter deadline (`x-breakwater-deadline-ms`) is adopted, and the
/// span says so with `deadline.adopted`; our own longer one adds no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_caller_deadline_is_an_event() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (up, _) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(up.addr, &receiver.endpoint(), &["--timeout=15s"]).await;
    let c = client();
    let (trace, parent) = ids(12);
    let tp = traceparent(&trace, &parent, "01");
    let answer = outbound(
        &c,
        &proxy,
        up.addr,
        "/short",
        &[("traceparent", &tp), ("x-breakwater-deadline-ms", "300")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (plain_trace, plain_parent) = ids(13);
    let tp = traceparent(&plain_trace, &plain_parent, "01");
    let answer = outbound(&c, &proxy, up.addr, "/plain", &[("traceparent", &tp)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let spans = receiver.wait_trace(&trace, 2).await;
    let spans: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&spans);
    let (request, _) = request_and_attempts(&spans);
    let adopted = event(request, "deadline.adopted")
        .unwrap_or_else(|| panic!("no deadline.adopted on the request span:\n{all}"));
    let ms = adopted["attributes"]["breakwater.deadline_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric breakwater.deadline_ms:\n{all}"));
    assert!(
        (100.0..=300.0).contains(&ms),
        "the caller's 300 ms, less what passed: {ms}\n{all}"
    );
    let plain = receiver.wait_trace(&plain_trace, 2).await;
    let plain: Vec<&Value> = plain.iter().collect();
    let (request, _) = request_and_attempts(&plain);
    assert!(
        event(request, "deadline.adopted").is_none(),
        "no caller deadline, no event:\n{}",
        summary_of(&plain)
    );
}

/// `network.protocol.version` is the client's: "2" for an h2c request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_is_protocol_version_2() {
    let Some(receiver) = Receiver::start(&[]) else {
        return;
    };
    let (app, _) = recording(&[200], Duration::ZERO).await;
    let proxy = traced(app.addr, &receiver.endpoint(), &[]).await;
    let (trace, parent) = ids(14);
    let req = Request::get(format!("http://{}/h2", proxy.addrs.inbound))
        .header("traceparent", traceparent(&trace, &parent, "01"))
        .body(full(""))
        .expect("request");
    let answer = timed(crate::support::h2_send_to(proxy.addrs.inbound, req)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.version, http::Version::HTTP_2);
    let spans = receiver.wait_trace(&trace, 2).await;
    let spans: Vec<&Value> = spans.iter().collect();
    let all = summary_of(&spans);
    let (server, _) = request_and_attempts(&spans);
    assert_eq!(kind(server), "SERVER", "{all}");
    assert_eq!(
        attr_str(server, "network.protocol.version"),
        Some("2"),
        "{all}"
    );
}
