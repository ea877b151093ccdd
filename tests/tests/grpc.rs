//! gRPC-native behaviour: a real grpcio client (`tests/interop/grpc_call.py`)
//! and a real grpcio server (`tests/interop/grpc_server.py`) with the real
//! binary between them. breakwater's own answers to a gRPC call are gRPC
//! statuses that say why; a client's `grpc-timeout` is the request's deadline;
//! an upstream breakwater's refusal is retried without an `Idempotency-Key`,
//! the app's own `UNAVAILABLE` is not. Without grpcio a test skips, except
//! under `CI=true`, where it fails naming what is missing.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use serde_json::Value;

use crate::support::{
    BinaryProxy, client, full, get, h2_send_to, sample_sum, skip_without_python, spawn_binary,
    spawn_upstream,
};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_server.py");
const CALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_call.py");

/// `grpc_server.py` as a child process; killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start() -> Option<GrpcServer> {
        if skip_without_python(&["grpc"]) {
            return None;
        }
        let mut child = Command::new("python3")
            .arg(SERVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/interop/grpc_server.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("grpc_server.py printed {line:?}, not a port"));
        Some(GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// How many calls `Flaky` and `Counted` had with this body.
    async fn hits(&self, key: &str) -> u64 {
        let out = call(self.addr, "Hits", &["--body", key]).await;
        out[0]["reply"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("Hits answered {:?}", out[0]))
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `interop.Echo/METHOD` at `target` with grpcio; one JSON object per
/// call (`--repeat`): code, details, initial and trailing metadata, reply,
/// elapsed seconds.
async fn call(target: SocketAddr, method: &str, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(CALL)
        .arg(target.to_string())
        .arg(format!("/interop.Echo/{method}"))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run tests/interop/grpc_call.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "grpc_call.py failed: {stdout}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A metadata value of the call, from its head or its trailers (a
/// trailers-only answer has both in one).
fn meta<'a>(call: &'a Value, key: &str) -> Option<&'a str> {
    call["initial"][key]
        .as_str()
        .or_else(|| call["trailing"][key].as_str())
}

async fn metric(proxy: &BinaryProxy, name: &str, label: &str) -> f64 {
    let text = get(&client(), &format!("http://{}/metrics", proxy.addrs.admin))
        .await
        .body;
    sample_sum(&text, name, label)
}

#[tokio::test]
async fn a_grpc_client_sees_connect_failure_and_circuit_open_as_unavailable_with_the_reason() {
    let Some(server) = GrpcServer::start() else {
        return;
    };
    // Nothing listens on `dead`: connect failures open the circuit.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let proxy = spawn_binary(server.addr, &["--retries=0"]).await;
    let authority = dead.to_string();
    let calls = call(
        proxy.addrs.outbound,
        "Unary",
        &["--authority", &authority, "--timeout", "5", "--repeat", "8"],
    )
    .await;
    let first = &calls[0];
    assert_eq!(first["code"], "UNAVAILABLE", "{first}");
    assert_eq!(meta(first, "x-breakwater-reason"), Some("connect-failure"));
    let details = first["details"].as_str().unwrap_or_default();
    assert!(
        details.starts_with("breakwater: could not connect to"),
        "{details}"
    );
    let open = calls
        .iter()
        .find(|c| meta(c, "x-breakwater-reason") == Some("circuit-open"))
        .unwrap_or_else(|| panic!("the circuit never opened: {calls:?}"));
    assert_eq!(open["code"], "UNAVAILABLE", "{open}");
    assert!(
        open["details"]
            .as_str()
            .is_some_and(|d| d.contains("circuit open")),
        "{open}"
    );
    let pushback: u64 = meta(open, "grpc-retry-pushback-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {open}"));
    assert!((1..=5_000).contains(&pushback), "{pushback}");
    assert!(open["elapsed"].as_f64().is_some_and(|s| s < 1.0), "{open}");
}

#[tokio::test]
async fn a_timeout_breakwater_enforces_is_deadline_exceeded_and_a_full_bulkhead_unavailable() {
    let Some(server) = GrpcServer::start() else {
        return;
    };
    let proxy = spawn_binary(
        server.addr,
        &["--timeout=400ms", "--inbound-max-concurrent=1"],
    )
    .await;
    // The client sets no deadline: the one that fires is breakwater's.
    let slow = call(proxy.addrs.inbound, "Slow", &[]).await;
    let slow = &slow[0];
    assert_eq!(slow["code"], "DEADLINE_EXCEEDED", "{slow}");
    assert_eq!(meta(slow, "x-breakwater-reason"), Some("timeout"));
    assert!(
        slow["details"]
            .as_str()
            .is_some_and(|d| d.contains("no response from") && d.contains("400ms")),
        "{slow}"
    );
    let took = slow["elapsed"].as_f64().unwrap_or(f64::MAX);
    assert!((0.35..1.5).contains(&took), "took {took:.2}s");

    // One slot in front of the app, held by a slow call: the next is refused.
    let inbound = proxy.addrs.inbound;
    let holder = tokio::spawn(async move { call(inbound, "Slow", &[]).await });
    let refused = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = call(inbound, "Unary", &["--timeout", "5"]).await.remove(0);
        if c["code"] != "OK" || holder.is_finished() {
            break c;
        }
    };
    assert_eq!(refused["code"], "UNAVAILABLE", "{refused}");
    assert_eq!(meta(&refused, "x-breakwater-reason"), Some("bulkhead-full"));
    assert!(
        refused["details"]
            .as_str()
            .is_some_and(|d| d.contains("too many requests in flight")),
        "{refused}"
    );
    assert_eq!(meta(&refused, "grpc-retry-pushback-ms"), Some("1000"));
    let _ = holder.await;
    assert!(metric(&proxy, "breakwater_rejected_total", "bulkhead-full").await >= 1.0);
}

#[tokio::test]
async fn a_grpc_timeout_is_adopted_as_the_deadline_and_a_malformed_one_is_ignored() {
    let Some(server) = GrpcServer::start() else {
        return;
    };
    let proxy = spawn_binary(server.addr, &["--timeout=30s"]).await;
    // grpcio sends its 600 ms deadline as grpc-timeout; the app is told
    // what is left of it, not the route's 30 s.
    let seen = call(proxy.addrs.inbound, "Seen", &["--timeout", "0.6"]).await;
    let seen: Value = serde_json::from_str(seen[0]["reply"].as_str().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{e}: {:?}", seen[0]));
    let ms: u64 = seen["x-breakwater-deadline-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deadline reached the app: {seen}"));
    assert!((1..=600).contains(&ms), "{ms} ms");

    // A raw HTTP/2 client, so the upstream's answer and breakwater's own are
    // both seen as sent: the upstream waits `x-wait-ms` and says what it got.
    let upstream = spawn_upstream(|req: Request<hyper::body::Incoming>| async move {
        let wait = req
            .headers()
            .get("x-wait-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let got = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .header("x-got-grpc-timeout", got("grpc-timeout"))
            .header("x-got-deadline-ms", got("x-breakwater-deadline-ms"))
            .body(full(""))
            .expect("response")
    })
    .await;
    let ask = |timeout: &'static str, wait: &'static str| {
        Request::post(format!("http://{}/interop.Echo/Unary", upstream.addr))
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("grpc-timeout", timeout)
            .header("x-wait-ms", wait)
            .body(full(&b"\0\0\0\0\x01x"[..]))
            .expect("request")
    };
    let t0 = Instant::now();
    let cut = h2_send_to(proxy.addrs.outbound, ask("300m", "2000")).await;
    let took = t0.elapsed();
    assert_eq!(cut.status, 200, "{:?}", cut.headers);
    assert_eq!(cut.headers["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(cut.reason(), Some("timeout"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    for junk in ["300x", "123456789m", "-3S", "S", "1.5S"] {
        let ok = h2_send_to(proxy.addrs.outbound, ask(junk, "50")).await;
        assert_eq!(ok.status, 200, "{junk}: {:?}", ok.headers);
        assert_eq!(
            ok.headers["grpc-status"], "0",
            "{junk}: the upstream's answer"
        );
        assert_eq!(ok.reason(), None, "{junk}");
        // The route's 30 s deadline, announced both ways.
        let ms: u64 = ok.headers["x-got-deadline-ms"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(ms > 20_000, "{junk}: deadline {ms} ms");
        let grpc = ok.headers["x-got-grpc-timeout"].to_str().unwrap_or("");
        assert!(grpc.ends_with('m') && grpc.len() == 6, "{junk}: {grpc}");
    }
}

#[tokio::test]
async fn unavailable_from_an_upstream_breakwater_that_never_forwarded_is_retried_without_a_key() {
    let Some(server) = GrpcServer::start() else {
        return;
    };
    // The callee's sidecar refuses half its inbound calls before the app.
    let callee = spawn_binary(
        server.addr,
        &["--route=*,direction=inbound,fault-abort=503@50"],
    )
    .await;
    let caller = spawn_binary(
        server.addr,
        &[
            "--retry-on=connect-failure,unavailable",
            "--retries=3",
            "--retry-backoff=1ms",
        ],
    )
    .await;
    let authority = callee.addrs.inbound.to_string();
    let calls = call(
        caller.addrs.outbound,
        "Counted",
        &[
            "--authority",
            &authority,
            "--body",
            "refused",
            "--timeout",
            "5",
            "--repeat",
            "10",
        ],
    )
    .await;
    for c in &calls {
        assert_eq!(c["code"], "OK", "{c}");
    }
    assert_eq!(
        server.hits("refused").await,
        10,
        "each call reached the app once"
    );
    let retried = metric(&caller, "breakwater_retries_total", "unavailable").await;
    let faults = metric(&callee, "breakwater_faults_injected_total", "abort").await;
    assert!(faults >= 3.0, "{faults} refusals");
    assert_eq!(retried, faults, "every refusal was retried, nothing else");

    // The app's own UNAVAILABLE may come after it acted: no key, no retry.
    let direct = server.addr.to_string();
    let own = call(
        caller.addrs.outbound,
        "Flaky",
        &["--authority", &direct, "--body", "own", "--timeout", "5"],
    )
    .await;
    assert_eq!(own[0]["code"], "UNAVAILABLE", "{}", own[0]);
    assert_eq!(own[0]["details"], "try again");
    assert_eq!(meta(&own[0], "x-breakwater-reason"), None);
    assert_eq!(server.hits("own").await, 1, "not retried");
}
