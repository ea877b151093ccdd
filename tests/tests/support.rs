//! Shared helpers: upstream servers with scripted behaviour, the proxy in-process
//! or as the real binary, and small clients.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use breakwater::{BoundAddrs, Config, Proxy, RunReport};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub type TestBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn text_response(status: u16, body: &str) -> Response<TestBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::IM_A_TEAPOT);
    resp
}

/// A real HTTP server (HTTP/1.1 and h2c) run by the test, counting what it sees.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests the handler was called for.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream whose every request is answered by `handler`.
pub async fn spawn_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (h, c) = (hits.clone(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (handler, hits) = (handler.clone(), h.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        connections,
        task,
    }
}

/// An upstream that echoes what it saw: method, URI, version and headers as JSON-ish
/// lines in the body, so tests can assert on the request as it arrived.
pub async fn spawn_echo() -> Upstream {
    spawn_upstream(|req: Request<Incoming>| async move {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<bytes>")));
        }
        text_response(200, &out)
    })
    .await
}

/// A TCP server whose every connection is handled by `f` on the raw stream: for
/// faults that HTTP servers do not make (resets, silence, garbage).
pub async fn spawn_raw<F, Fut>(f: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw upstream");
    let addr = listener.local_addr().expect("raw addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let f = Arc::new(f);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(f(stream));
        }
    });
    Upstream {
        addr,
        hits: Arc::new(AtomicUsize::new(0)),
        connections,
        task,
    }
}

/// Reads one request head from `stream` (up to the blank line).
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Closes with RST instead of FIN: SO_LINGER 0, then drop.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The proxy, in this process, on loopback ephemeral ports.
pub struct TestProxy {
    pub addrs: BoundAddrs,
    pub shutdown: breakwater::drain::ShutdownHandle,
    task: Option<JoinHandle<RunReport>>,
}

impl TestProxy {
    pub fn inbound(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.inbound, path)
    }

    pub fn outbound(&self) -> SocketAddr {
        self.addrs.outbound
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.admin, path)
    }

    /// Starts the drain and waits for the run to end.
    pub async fn stop(mut self) -> RunReport {
        self.shutdown.request();
        match self.task.take() {
            Some(task) => task.await.expect("proxy task"),
            None => RunReport { abandoned: 0 },
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts the proxy with loopback defaults, the app at `app`, changed by `tune`.
pub async fn spawn_proxy(app: SocketAddr, tune: impl FnOnce(&mut Config)) -> TestProxy {
    let mut config = Config::loopback();
    config.app_addr = app;
    tune(&mut config);
    let proxy = Proxy::bind(config).await.expect("bind proxy");
    let addrs = proxy.addrs();
    let shutdown = proxy.shutdown_handle();
    let task = tokio::spawn(proxy.run());
    TestProxy {
        addrs,
        shutdown,
        task: Some(task),
    }
}

/// What the status and admin-page tests look at: an upstream that answers 503,
/// a proxy that does not retry and opens a circuit on three failures in a row
/// (for 30 s), and ten requests to it: three reach the upstream, seven are
/// refused `circuit-open`.
pub async fn circuit_opened_by_503s() -> (Upstream, TestProxy) {
    let app = spawn_upstream(|_req| async { text_response(503, "down") }).await;
    let proxy = spawn_proxy(app.addr, |c| {
        c.retry.retries = 0;
        c.breaker.consecutive_failures = 3;
        c.breaker.open_duration = Duration::from_secs(30);
    })
    .await;
    let c = client();
    let host = app.addr.to_string();
    for _ in 0..10 {
        get_via(&c, &proxy, &host, "/").await;
    }
    (app, proxy)
}

/// A route flag, parsed as the CLI would.
pub fn route(spec: &str) -> breakwater::config::RouteOverride {
    breakwater::config::RouteOverride::parse(spec).expect("valid route")
}

pub type HttpClient = Client<HttpConnector, TestBody>;

/// A pooled HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// What a test looks at in a response.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Answer {
    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get("x-breakwater-reason")
            .and_then(|v| v.to_str().ok())
    }
}

pub async fn answer(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

pub async fn send(client: &HttpClient, req: Request<TestBody>) -> Answer {
    let resp = client.request(req).await.expect("response from the proxy");
    answer(resp).await
}

pub async fn get(client: &HttpClient, url: &str) -> Answer {
    let req = Request::get(url).body(full("")).expect("request");
    send(client, req).await
}

/// A GET sent to the outbound listener with `Host: host`, as an app with a plain
/// HTTP client pointed at breakwater would.
pub async fn get_via(client: &HttpClient, proxy: &TestProxy, host: &str, path: &str) -> Answer {
    let req = Request::get(format!("http://{}{}", proxy.outbound(), path))
        .header(http::header::HOST, host)
        .body(full(""))
        .expect("request");
    send(client, req).await
}

/// Writes raw bytes to `addr` and reads until the server closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_until_close(&mut stream, wait).await
}

/// Reads until EOF (`true`) or until `wait` passes (`false`).
pub async fn read_until_close(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// The breakwater binary, started with `args`; killed on drop.
pub struct BinaryProxy {
    pub child: Child,
    pub addrs: BoundAddrs,
}

impl Drop for BinaryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_breakwater")
}

/// Picks three free loopback ports and starts `breakwater run` on them.
pub async fn spawn_binary(app: SocketAddr, extra: &[&str]) -> BinaryProxy {
    spawn_binary_with(app, extra, Stdio::null()).await
}

/// [`spawn_binary`] with the binary's stdout (its logs) sent to `stdout`.
pub async fn spawn_binary_with(app: SocketAddr, extra: &[&str], stdout: Stdio) -> BinaryProxy {
    spawn_binary_env(app, extra, stdout, &[]).await
}

/// [`spawn_binary_with`], with environment variables set for the child.
pub async fn spawn_binary_env(
    app: SocketAddr,
    extra: &[&str],
    stdout: Stdio,
    env: &[(&str, &str)],
) -> BinaryProxy {
    let ports = free_ports(3).await;
    let addrs = BoundAddrs {
        inbound: ports[0],
        outbound: ports[1],
        admin: ports[2],
    };
    let child = Command::new(binary())
        .arg("run")
        .arg(format!("--inbound-addr={}", addrs.inbound))
        .arg(format!("--outbound-addr={}", addrs.outbound))
        .arg(format!("--admin-addr={}", addrs.admin))
        .arg(format!("--app-addr={app}"))
        .arg("--log-level=warn")
        .args(extra)
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the breakwater binary");
    let proxy = BinaryProxy { child, addrs };
    wait_for_ready(&format!("http://{}/ready", addrs.admin)).await;
    proxy
}

pub async fn free_ports(n: usize) -> Vec<SocketAddr> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpListener::bind("127.0.0.1:0").await.expect("free port"));
    }
    held.iter().map(|l| l.local_addr().expect("addr")).collect()
}

pub async fn wait_for_ready(url: &str) {
    let c = client();
    for _ in 0..200 {
        if let Ok(Ok(resp)) = tokio::time::timeout(
            Duration::from_millis(200),
            c.request(Request::get(url).body(full("")).expect("request")),
        )
        .await
            && resp.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never became ready");
}

/// Peak resident memory (VmHWM) and current (VmRSS) of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Sends one request over a fresh HTTP/2 (h2c) connection to `addr`, whatever the
/// request URI's authority says: how an app speaks HTTP/2 to its sidecar.
pub async fn h2_send_to(addr: SocketAddr, req: Request<TestBody>) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("h2 response");
    answer(resp).await
}

/// Whether this test may skip for a missing capability: never in CI (`CI=true`),
/// where a missing capability is a failure.
pub fn skip_unless(capable: bool, what: &str) -> bool {
    if capable {
        return false;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "CI=true but {what} is missing: this test cannot run"
    );
    eprintln!(
        "SKIPPED: {what} is missing; run as root with iproute2 installed to include this test"
    );
    true
}

/// The sum of the samples of metric `name` in `text` whose labels contain `label`.
pub fn sample_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Whether `python3` can import `module`.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether to skip for missing Python modules: never under CI=true, where it
/// fails naming what is missing.
pub fn skip_without_python(modules: &[&str]) -> bool {
    let missing: Vec<String> = modules
        .iter()
        .filter(|m| !python_has(m))
        .map(|m| format!("python module `{m}` (pip install -r tests/interop/requirements.txt)"))
        .collect();
    if missing.is_empty() {
        return false;
    }
    let what = missing.join(", ");
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!in_ci, "CI=true but this test cannot run: missing {what}");
    eprintln!("SKIPPED: this test needs {what}");
    true
}

/// Runs a command to completion; `Err` carries its stderr.
pub fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A network namespace joined to this one by a veth pair: a second host for
/// tests of what crosses a network. Host side `198.18.N.1/30`, namespace side
/// `198.18.N.2/30` (the benchmarking range, RFC 2544). Removed on drop.
pub struct TestNetns {
    pub name: String,
    pub host_ip: std::net::Ipv4Addr,
    pub peer_ip: std::net::Ipv4Addr,
    host_if: String,
}

impl TestNetns {
    /// Whether namespaces can be made here: root and the `ip` tool.
    pub fn available() -> bool {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        root && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Creates the namespace; `n` (0-255) keeps concurrent tests apart.
    pub fn create(n: u8) -> Result<TestNetns, String> {
        let tag = format!("{}-{n}", std::process::id() % 100_000);
        let name = format!("bw{tag}");
        let host_if = format!("bwh{tag}");
        let peer_if = format!("bwp{tag}");
        let host_ip = std::net::Ipv4Addr::new(198, 18, n, 1);
        let peer_ip = std::net::Ipv4Addr::new(198, 18, n, 2);
        let ns = TestNetns {
            name: name.clone(),
            host_ip,
            peer_ip,
            host_if: host_if.clone(),
        };
        run(&["ip", "netns", "add", &name])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        run(&["ip", "link", "set", &peer_if, "netns", &name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", &peer_if, "up",
        ])?;
        run(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace; returns its stdout.
    pub fn exec(&self, cmd: &[&str]) -> Result<String, String> {
        ns_exec(&self.name, cmd)
    }
}

/// Runs `cmd` in network namespace `ns` and returns its stdout.
pub fn ns_exec(ns: &str, cmd: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `url` answers anything over HTTP inside namespace `ns`.
pub fn ns_wait_for(ns: &str, url: &str) {
    ns_wait_until(ns, url, |c| c != "000");
}

/// Waits until `url` answers 200 inside namespace `ns`: a pod that is ready.
pub fn ns_wait_for_ok(ns: &str, url: &str) {
    ns_wait_until(ns, url, |c| c == "200");
}

fn ns_wait_until(ns: &str, url: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let code = ns_exec(
            ns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "1",
                url,
            ],
        );
        last = code.unwrap_or_default();
        if !last.is_empty() && done(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered as awaited in {ns} (last: {last:?})");
}

/// Processes a test started in namespaces; killed when dropped.
#[derive(Default)]
pub struct Children(Vec<Child>);

impl Children {
    /// Starts `cmd` in namespace `ns`, in the background.
    pub fn spawn(&mut self, ns: &str, cmd: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?} in {ns}: {e}"));
        self.0.push(child);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair with it.
        let _ = run(&["ip", "netns", "delete", &self.name]);
        let _ = run(&["ip", "link", "delete", &self.host_if]);
    }
}

/// A directory of its own under the system's temp dir, removed at the end.
pub struct TestDir(pub std::path::PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "breakwater-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    /// Writes `name` whole and renames it into place, as an editor or a
    /// ConfigMap update does: a reader never sees half a file.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first `n` access-log lines a proxy's piped stdout gives, read on a
/// thread of their own.
pub fn access_lines(proxy: &mut BinaryProxy, n: usize) -> std::thread::JoinHandle<Vec<String>> {
    use std::io::BufRead;
    let stdout = proxy.child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("breakwater::access"))
            .take(n)
            .collect()
    })
}

/// What one run of the binary left behind.
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

/// `breakwater ARGS` with no `BREAKWATER_*` variable inherited from the caller.
pub fn clean_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BREAKWATER_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `cmd` to completion; kills it and fails the test if it is still running
/// after `limit` (a bad flag that is accepted would otherwise start serving).
pub fn finish(mut cmd: Command, limit: Duration) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the breakwater binary");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll the binary").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect the killed binary");
            panic!(
                "breakwater was still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .expect("collect the binary's output");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `breakwater ARGS` to its end, as [`finish`] runs it within 20 s.
pub fn run_to_end<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Outcome {
    finish(clean_command(args), Duration::from_secs(20))
}

/// Certificate files made once per test process: a CA, a leaf it signed for
/// `localhost` with its key, and a second key that matches nothing. What
/// `run --check` loads when a test names TLS files.
pub struct TestCerts {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub other_key: std::path::PathBuf,
}

pub fn test_certs() -> &'static TestCerts {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    static CERTS: std::sync::OnceLock<TestCerts> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        let ca_pem = ca.self_signed(&ca_key).expect("self-signed").pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("signed");
        let other = KeyPair::generate().expect("key");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a cert file");
            path
        };
        TestCerts {
            ca: write("ca.pem", ca_pem),
            cert: write("cert.pem", leaf.pem()),
            key: write("key.pem", key.serialize_pem()),
            other_key: write("other-key.pem", other.serialize_pem()),
        }
    })
}
