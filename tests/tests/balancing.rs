//! A destination with several endpoints: the balancer moves traffic off a
//! failing one, and never ejects more than the allowed share.
//!
//! A name that resolves to three addresses needs a hosts file of its own:
//! `ip netns exec` mounts `/etc/netns/<ns>/hosts` over `/etc/hosts` for the
//! commands it runs, so breakwater and its upstreams run in a namespace of the
//! test's, on its loopback addresses 127.0.0.1-3.

use std::process::Command;

use crate::support::*;

struct Namespace {
    name: String,
    children: Children,
}

impl Namespace {
    fn create(tag: &str) -> Result<Namespace, String> {
        let name = format!("bwlb{}{tag}", std::process::id() % 100_000);
        run(&["ip", "netns", "add", &name])?;
        let ns = Namespace {
            name,
            children: Children::default(),
        };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
        let dir = format!("/etc/netns/{}", ns.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
        let hosts = "127.0.0.1 localhost\n127.0.0.1 multi.test\n127.0.0.2 multi.test\n127.0.0.3 multi.test\n";
        std::fs::write(format!("{dir}/hosts"), hosts).map_err(|e| format!("{dir}/hosts: {e}"))?;
        Ok(ns)
    }

    fn spawn(&mut self, cmd: &[&str]) {
        self.children.spawn(&self.name, cmd);
    }

    fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .expect("run in the namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, url: &str) {
        ns_wait_for(&self.name, url);
    }

    /// `n` requests to multi.test through breakwater; the statuses and which
    /// endpoint served each.
    fn calls(&self, n: usize) -> Vec<(String, String)> {
        let script = format!(
            "b=$(mktemp); for i in $(seq {n}); do \
             s=$(curl -s --max-time 5 -x http://127.0.0.1:15001 -o $b -w '%{{http_code}}' http://multi.test:8080/x); \
             echo \"$s $(head -1 $b)\"; done; rm -f $b"
        );
        self.sh(&script)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let status = l.split_whitespace().next().unwrap_or("").to_string();
                let at = l
                    .split(" at ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("")
                    .to_string();
                (status, at)
            })
            .collect()
    }

    fn upstreams(&self) -> serde_json::Value {
        let body = self.sh("curl -s http://127.0.0.1:15000/upstreams");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/upstreams is JSON: {e}: {body}"))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.children = Children::default();
        let _ = run(&["ip", "netns", "delete", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

fn capable() -> bool {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    TestNetns::available() && have("curl") && have("python3")
}

/// Starts three upstreams (`failing` ones answer 500) and breakwater.
fn start(ns: &mut Namespace, failing: &[u8], extra: &[&str]) {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/netns_server.py"
    );
    for last in 1..=3u8 {
        let addr = format!("127.0.0.{last}:8080");
        let mut cmd = vec!["python3", fixture, "--http", &addr];
        if failing.contains(&last) {
            cmd.push("--fail-all");
        }
        ns.spawn(&cmd);
    }
    let mut cmd = vec![
        binary(),
        "run",
        "--outbound-addr=127.0.0.1:15001",
        "--inbound-addr=127.0.0.1:15006",
        "--admin-addr=127.0.0.1:15000",
        "--app-addr=127.0.0.1:9",
        "--log-level=warn",
        "--breaker-open-duration=60s",
    ];
    cmd.extend_from_slice(extra);
    ns.spawn(&cmd);
    for last in 1..=3 {
        ns.wait_for(&format!("http://127.0.0.{last}:8080/warm"));
    }
    ns.wait_for("http://127.0.0.1:15000/live");
}

fn endpoint_states(upstreams: &serde_json::Value) -> Vec<(String, String)> {
    let dest = upstreams
        .as_array()
        .and_then(|all| all.iter().find(|d| d["destination"] == "multi.test:8080"))
        .expect("multi.test:8080 in /upstreams");
    let mut states: Vec<(String, String)> = dest["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .map(|e| {
                    (
                        e["address"].as_str().unwrap_or("").to_string(),
                        e["circuit"]["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    states.sort();
    states
}

#[test]
fn traffic_moves_off_a_failing_endpoint() {
    if skip_unless(
        capable(),
        "root, iproute2, curl and python3 (network namespaces)",
    ) {
        return;
    }
    let mut ns = Namespace::create("a").expect("namespace");
    start(&mut ns, &[3], &[]);
    // Until the failing endpoint has been picked five times and ejected.
    let mut failed = 0;
    let mut ejected = false;
    for _ in 0..15 {
        failed += ns.calls(20).iter().filter(|(s, _)| s != "200").count();
        let states = endpoint_states(&ns.upstreams());
        if states
            .iter()
            .any(|(a, s)| a == "127.0.0.3:8080" && s == "open")
        {
            ejected = true;
            break;
        }
    }
    assert!(ejected, "the failing endpoint was ejected");
    assert_eq!(
        failed, 5,
        "exactly its five consecutive failures reached clients"
    );
    let after = ns.calls(30);
    assert!(after.iter().all(|(s, _)| s == "200"), "{after:?}");
    let served: std::collections::BTreeSet<&str> =
        after.iter().map(|(_, at)| at.as_str()).collect();
    assert_eq!(
        served,
        ["127.0.0.1", "127.0.0.2"].into_iter().collect(),
        "both healthy endpoints share the traffic"
    );
    assert_eq!(
        endpoint_states(&ns.upstreams()),
        [
            ("127.0.0.1:8080".to_string(), "closed".to_string()),
            ("127.0.0.2:8080".to_string(), "closed".to_string()),
            ("127.0.0.3:8080".to_string(), "open".to_string()),
        ]
    );
}

#[test]
fn no_more_than_the_ejection_share_is_ejected() {
    if skip_unless(
        capable(),
        "root, iproute2, curl and python3 (network namespaces)",
    ) {
        return;
    }
    let mut ns = Namespace::create("b").expect("namespace");
    // Two of three fail; at 50 % only one may be ejected at a time.
    start(&mut ns, &[2, 3], &["--max-ejection-percent=50"]);
    let _ = ns.calls(80);
    let states = endpoint_states(&ns.upstreams());
    let open = states.iter().filter(|(_, s)| s == "open").count();
    assert_eq!(open, 1, "{states:?}");
    assert!(states.contains(&("127.0.0.1:8080".to_string(), "closed".to_string())));
}
