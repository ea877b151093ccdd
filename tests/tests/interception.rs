//! Transparent interception, end to end: a "pod" made of a network namespace
//! with an app, breakwater under its own uid and the rules of `init-iptables`,
//! and a second namespace with another service. Traffic stays inside the two
//! namespaces (198.18.0.0/15, the benchmarking range).

use std::process::Command;

use crate::support::*;

const POD_IP: &str = "198.18.9.1";
const SVC_IP: &str = "198.18.9.2";
const PROXY_UID: &str = "1717";

/// Two namespaces joined by a veth pair; processes started in them are killed
/// and the namespaces removed on drop.
struct Pod {
    pod: String,
    svc: String,
    children: Children,
    dir: std::path::PathBuf,
}

impl Pod {
    fn create() -> Result<Pod, String> {
        Pod::create_tagged("")
    }

    /// `suffix` keeps pods of concurrent tests apart (names of at most 15 bytes).
    fn create_tagged(suffix: &str) -> Result<Pod, String> {
        let tag = format!("{}{suffix}", std::process::id() % 100_000);
        let pod = Pod {
            pod: format!("bwpod{tag}"),
            svc: format!("bwsvc{tag}"),
            children: Children::default(),
            dir: std::env::temp_dir().join(format!("breakwater-netns-{tag}")),
        };
        let (p, s) = (pod.pod.as_str(), pod.svc.as_str());
        let (pv, sv) = (format!("bwp{tag}x"), format!("bws{tag}x"));
        run(&["ip", "netns", "add", p])?;
        run(&["ip", "netns", "add", s])?;
        run(&[
            "ip", "link", "add", &pv, "netns", p, "type", "veth", "peer", "name", &sv, "netns", s,
        ])?;
        for (ns, dev, ip) in [(p, &pv, POD_IP), (s, &sv, SVC_IP)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pod)
    }

    fn spawn(&mut self, ns: &str, cmd: &[&str]) -> Result<(), String> {
        self.children.spawn(ns, cmd);
        Ok(())
    }

    fn exec(&self, ns: &str, cmd: &[&str]) -> Result<String, String> {
        ns_exec(ns, cmd)
    }

    fn curl(&self, ns: &str, url: &str) -> String {
        self.exec(ns, &["curl", "-s", "--max-time", "10", url])
            .unwrap_or_else(|e| panic!("curl {url} in {ns}: {e}"))
    }

    fn metrics(&self) -> String {
        self.curl(&self.pod, "http://127.0.0.1:15000/metrics")
    }

    /// Applies `init-iptables` in the pod and starts breakwater there under its
    /// own uid (which the rules leave alone), in front of the app on :8080, with
    /// `extra` run flags; returns once it is live.
    fn intercept_with(&mut self, bin: &str, extra: &[&str]) {
        let p = self.pod.clone();
        self.exec(&p, &[bin, "init-iptables"])
            .expect("init-iptables");
        let mut cmd = vec![
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            bin,
            "run",
            "--app-addr=127.0.0.1:8080",
            "--log-level=warn",
            "--drain-delay=0s",
        ];
        cmd.extend_from_slice(extra);
        self.spawn(&p, &cmd).expect("breakwater");
        self.wait_for(&p, "http://127.0.0.1:15000/live");
    }

    fn wait_for(&self, ns: &str, url: &str) {
        ns_wait_for(ns, url);
    }

    fn nat_rules(&self) -> String {
        let saved = self
            .exec(&self.pod, &["iptables-save", "-t", "nat"])
            .expect("iptables-save");
        // Counters and the dump's comments change between runs; the rules must not.
        saved
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Processes first, then their namespaces.
        self.children = Children::default();
        let _ = run(&["ip", "netns", "delete", &self.pod]);
        let _ = run(&["ip", "netns", "delete", &self.svc]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn capable() -> bool {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    TestNetns::available()
        && have("iptables-restore")
        && have("setpriv")
        && have("curl")
        && have("python3")
}

#[test]
fn a_pod_in_network_namespaces_is_intercepted_transparently() {
    if skip_unless(
        capable(),
        "root, iproute2, iptables, setpriv, curl and python3",
    ) {
        return;
    }
    let mut pod = Pod::create().expect("namespaces");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/netns_server.py"
    );
    // breakwater runs as its own user, from a copy it may execute.
    std::fs::create_dir_all(&pod.dir).expect("temp dir");
    let bin = pod.dir.join("breakwater");
    std::fs::copy(binary(), &bin).expect("copy the binary");
    run(&[
        "chmod",
        "755",
        pod.dir.to_str().expect("path"),
        bin.to_str().expect("path"),
    ])
    .expect("chmod");
    let bin = bin.to_str().expect("path").to_string();

    let (p, s) = (pod.pod.clone(), pod.svc.clone());
    pod.spawn(
        &s,
        &[
            "python3",
            fixture,
            "--http",
            &format!("{SVC_IP}:8080"),
            "--fail-first",
            "1",
            "--tcp-echo",
            &format!("{SVC_IP}:9000"),
        ],
    )
    .expect("service");
    pod.spawn(&p, &["python3", fixture, "--http", "127.0.0.1:8080"])
        .expect("app");
    pod.intercept_with(&bin, &["--app-health-interval=200ms"]);
    pod.wait_for(&s, &format!("http://{SVC_IP}:8080/warm"));

    // The app calls the other service by address, with no proxy settings: the
    // call goes through breakwater, which retries the service's first 503.
    let answer = pod.curl(&p, &format!("http://{SVC_IP}:8080/orders"));
    assert!(
        answer.starts_with("GET /orders from 198.18.9.1 at "),
        "{answer}"
    );
    assert!(
        answer.contains("x-breakwater-attempt: 2"),
        "retried through breakwater:\n{answer}"
    );
    let m = pod.metrics();
    let outbound = format!(
        r#"breakwater_requests_total{{code="200",destination="{SVC_IP}:8080",direction="outbound",route="default"}}"#
    );
    assert_eq!(sample(&m, &outbound), 1.0, "{m}");
    assert_eq!(
        sample(
            &m,
            r#"breakwater_retries_total{destination="198.18.9.2:8080",direction="outbound",reason="gateway-error",route="default"}"#
        ),
        1.0
    );

    // A client in the other namespace reaches the app through the inbound path,
    // once the pod is ready, as the kubelet would wait (on a loaded machine the
    // app's first probes may fail while it starts).
    ns_wait_for_ok(&p, "http://127.0.0.1:15000/ready");
    let inbound = pod.curl(&s, &format!("http://{POD_IP}:8080/hello"));
    assert!(
        inbound.starts_with("GET /hello from 127.0.0.1 at "),
        "{inbound}"
    );
    assert!(
        inbound.contains(&format!("x-forwarded-for: {SVC_IP}")),
        "{inbound}"
    );
    let m = pod.metrics();
    assert!(
        sample(
            &m,
            r#"breakwater_requests_total{code="200",destination="127.0.0.1:8080",direction="inbound",route="default"}"#
        ) >= 1.0,
        "{m}"
    );

    // Not HTTP: relayed byte for byte.
    let echo = format!(
        "import socket,sys\ndata=bytes(range(256))*64\ns=socket.create_connection(('{SVC_IP}',9000),timeout=10)\n\
         s.sendall(b'\\x16\\x03\\x01'+data)\ns.shutdown(socket.SHUT_WR)\nback=b''\n\
         while True:\n    c=s.recv(65536)\n    if not c: break\n    back+=c\n\
         sys.stdout.write('same' if back==b'\\x16\\x03\\x01'+data else 'differs %d' % len(back))\n"
    );
    assert_eq!(
        pod.exec(&p, &["python3", "-c", &echo])
            .expect("opaque client"),
        "same"
    );
    let m = pod.metrics();
    assert_eq!(
        sample(
            &m,
            r#"breakwater_opaque_connections_total{listener="outbound"}"#
        ),
        1.0,
        "{m}"
    );

    // breakwater's own upstream connections left the pod directly.
    let own = pod
        .exec(
            &p,
            &[
                "iptables",
                "-t",
                "nat",
                "-L",
                "BREAKWATER_OUTBOUND",
                "-v",
                "-n",
                "-x",
            ],
        )
        .expect("iptables -L");
    let returned: u64 = own
        .lines()
        .find(|l| l.contains("owner UID match 1717"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        returned > 0,
        "breakwater's own connections matched the uid rule:\n{own}"
    );

    // The breaker applies to intercepted traffic too: five 500s in a row open
    // the service's circuit, and the app's next call fails fast.
    for _ in 0..5 {
        let code = pod.exec(
            &p,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{SVC_IP}:8080/broken"),
            ],
        );
        assert_eq!(code.as_deref(), Ok("500"));
    }
    let refused = pod
        .exec(
            &p,
            &["curl", "-s", "-i", &format!("http://{SVC_IP}:8080/orders")],
        )
        .expect("curl");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("x-breakwater-reason: circuit-open"),
        "{refused}"
    );

    // Rerunning changes nothing; --clean leaves nothing.
    let before = pod.nat_rules();
    pod.exec(&p, &[&bin, "init-iptables"])
        .expect("init-iptables again");
    assert_eq!(pod.nat_rules(), before, "init-iptables is idempotent");
    pod.exec(&p, &[&bin, "init-iptables", "--clean"])
        .expect("clean");
    let after = pod.nat_rules();
    assert!(
        !after.contains("BREAKWATER"),
        "--clean left rules behind:\n{after}"
    );
}

/// The interop matrix's transparent path: real clients (curl, Python requests)
/// in the pod call a service by address with no proxy settings, and iptables
/// sends them through breakwater: 1 MiB each way, SSE, a retried 503 and an
/// open circuit, as the client sees them (tests/interop/intercepted.py).
#[test]
fn real_clients_are_intercepted_transparently() {
    let requests = Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if skip_unless(
        capable() && requests,
        "root, iproute2, iptables, setpriv, curl, python3 and python requests",
    ) {
        return;
    }
    let mut pod = Pod::create_tagged("i").expect("namespaces");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
    let (servers, clients) = (format!("{dir}/servers.py"), format!("{dir}/intercepted.py"));
    std::fs::create_dir_all(&pod.dir).expect("temp dir");
    let bin = pod.dir.join("breakwater");
    std::fs::copy(binary(), &bin).expect("copy the binary");
    run(&[
        "chmod",
        "755",
        pod.dir.to_str().expect("path"),
        bin.to_str().expect("path"),
    ])
    .expect("chmod");
    let bin = bin.to_str().expect("path").to_string();
    let (p, s) = (pod.pod.clone(), pod.svc.clone());
    let seed = "7";
    for (port, mode) in [("8080", "app"), ("8081", "flaky"), ("8082", "broken")] {
        pod.spawn(&s, &["python3", &servers, SVC_IP, port, mode, seed])
            .expect("service");
    }
    pod.intercept_with(&bin, &[]);
    pod.wait_for(&s, &format!("http://{SVC_IP}:8080/hello"));
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &p, "python3", &clients])
        .args([SVC_IP, "8080", "8081", "8082", seed])
        .output()
        .expect("run intercepted.py");
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "intercepted cells failed:\n{table}");
    let m = pod.metrics();
    assert!(
        sample(
            &m,
            &format!(
                r#"breakwater_requests_total{{code="200",destination="{SVC_IP}:8080",direction="outbound",route="default"}}"#
            )
        ) >= 6.0,
        "the clients' calls went through breakwater:\n{m}"
    );
}
