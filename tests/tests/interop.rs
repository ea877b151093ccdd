//! The interop matrix: real third-party clients (curl, Python requests and httpx,
//! grpcio, Node, Java's HttpClient) and servers (Python's http.server, nginx,
//! grpcio, Node's http2) through the real binary, run by `tests/interop/matrix.py`
//! one client family per test. The driver prints a table of its cells; see the
//! README's "Interop matrix". A missing program or package skips a family,
//! except under `CI=true`, where it fails naming what is missing.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary;

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/matrix.py");
const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/node");
/// A family's whole run, set-up included; the driver's own cells are bounded too.
const FAMILY_TIMEOUT: Duration = Duration::from_secs(150);

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a family needs, missing first: programs, Python modules, npm packages.
fn missing(programs: &[&str], modules: &[&str], node_modules: bool) -> Vec<String> {
    let mut out: Vec<String> = programs
        .iter()
        .filter(|p| !have(p))
        .map(|p| format!("program `{p}`"))
        .collect();
    if have("python3") {
        out.extend(modules.iter().filter(|m| !python_has(m)).map(|m| {
            format!("python module `{m}` (pip install -r tests/interop/requirements.txt)")
        }));
    }
    if node_modules
        && !std::path::Path::new(NODE_DIR)
            .join("node_modules/ws")
            .exists()
    {
        out.push("npm package `ws` (npm ci --prefix tests/interop/node)".into());
    }
    out
}

/// Whether to skip: never under CI=true, where anything missing fails the test.
fn skip(family: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return false;
    }
    let what = missing.join(", ");
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "CI=true but the {family} interop family cannot run: missing {what}"
    );
    eprintln!("SKIPPED: the {family} interop family needs {what}");
    true
}

/// Runs the driver for `family`, prints its table, fails on any failed cell.
fn run_family(family: &str) {
    let mut child = Command::new("python3")
        .arg(DRIVER)
        .arg("--breakwater")
        .arg(binary())
        .arg("--family")
        .arg(family)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tests/interop/matrix.py");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + FAMILY_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    println!("{out}");
    if !err.trim().is_empty() {
        eprintln!("{err}");
    }
    match status {
        None => panic!("the {family} interop family ran past {FAMILY_TIMEOUT:?}:\n{out}"),
        Some(s) => assert!(
            s.success(),
            "{family} interop cells failed ({s}); the FAIL rows above say how:\n{}",
            out.lines()
                .filter(|l| l.contains("| FAIL "))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn interop_curl() {
    let need = missing(
        &["python3", "curl", "nginx", "node"],
        &["cryptography"],
        false,
    );
    if skip("curl", &need) {
        return;
    }
    run_family("curl");
}

#[test]
fn interop_python_requests_httpx_websockets() {
    let need = missing(
        &["python3", "nginx"],
        &["requests", "httpx", "websocket", "websockets"],
        false,
    );
    if skip("python", &need) {
        return;
    }
    run_family("python");
}

#[test]
fn interop_grpcio() {
    let need = missing(&["python3"], &["grpc"], false);
    if skip("grpc", &need) {
        return;
    }
    run_family("grpc");
}

#[test]
fn interop_node() {
    let need = missing(&["python3", "node"], &[], true);
    if skip("node", &need) {
        return;
    }
    run_family("node");
}

#[test]
fn interop_java() {
    let need = missing(&["python3", "java"], &[], false);
    if skip("java", &need) {
        return;
    }
    run_family("java");
}
