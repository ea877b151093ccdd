//! `breakwater status` against a running proxy whose upstream fails: the table a
//! service owner reads, the JSON passed through, and one clear line when no
//! breakwater answers or an older one lacks the fields.

use std::process::Command;

use crate::support::*;

fn status(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .arg("status")
        .args(args)
        .output()
        .expect("breakwater status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_failing_destination_with_its_circuit_open() {
    let (app, proxy) = circuit_opened_by_503s().await;
    let host = app.addr.to_string();
    let admin = proxy.admin("");
    let out = status(&["--admin", &admin]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let widest = table.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 100, "{widest} columns:\n{table}");
    assert!(table.contains(&format!("-> {host}")), "{table}");
    assert!(table.contains("0.0%"), "every request failed:\n{table}");
    assert!(table.contains("open "), "the circuit is open:\n{table}");
    assert!(table.contains("failures: circuit-open 7, 5xx 3"), "{table}");
    assert!(!table.contains('\x1b'), "no escapes when not a terminal");

    let out = status(&["--admin", &admin, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let dest = json
        .as_array()
        .and_then(|l| l.iter().find(|d| d["destination"] == host.as_str()))
        .expect("the destination");
    assert_eq!(dest["recent"]["requests"], 10, "{dest}");
    assert_eq!(dest["endpoints"][0]["circuit"]["state"], "open");
    assert!(dest["retry_budget_left"].as_u64().is_some(), "{dest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_in_one_line_when_no_breakwater_answers() {
    let closed = free_ports(1).await[0];
    let out = status(&["--admin", &format!("http://{closed}")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no breakwater answers"), "{stderr}");

    // Something else on the port: JSON without breakwater's fields.
    let other = spawn_upstream(|_req| async {
        text_response(200, r#"[{"destination": "a:80", "endpoints": []}]"#)
    })
    .await;
    let out = status(&["--admin", &format!("http://{}", other.addr)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("older"), "{stderr}");
}
