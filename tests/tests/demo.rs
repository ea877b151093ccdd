//! `breakwater demo` as the README shows it, into a pipe: no progress line, no
//! colour, a table per scene, and the outage scene's breaker failing fast.

use std::time::Duration;

use crate::support::{self, clean_command, finish};

/// Asserts what a pipe must not get: `\r` redraws and ANSI escapes.
fn assert_plain(stdout: &str, stderr: &str) {
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        assert!(!text.contains('\r'), "a progress line in {name}:\n{text}");
        assert!(!text.contains('\x1b'), "an escape code in {name}:\n{text}");
    }
}

/// The cells of the table row labelled `label`, the label left out.
fn row(stdout: &str, label: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .find(|l| l.trim_start_matches('|').trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} row:\n{stdout}"));
    line.trim_matches('|')
        .split('|')
        .skip(1)
        .map(|c| c.trim().to_string())
        .collect()
}

/// `940 µs`, `1.2 ms`, `1002 ms` (and `… later`).
fn latency(cell: &str) -> Duration {
    let mut words = cell.split_whitespace();
    let n: f64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a latency: {cell}"));
    match words.next() {
        Some("µs") => Duration::from_secs_f64(n / 1e6),
        Some("ms") => Duration::from_secs_f64(n / 1e3),
        _ => panic!("not a latency: {cell}"),
    }
}

#[test]
fn the_outage_demo_shows_the_breaker_answering_at_once_and_closing_again() {
    let mut cmd = clean_command(&["demo", "--scene", "outage"]);
    // The pipe, not NO_COLOR, must keep the escapes out.
    cmd.env_remove("NO_COLOR");
    let out = finish(cmd, Duration::from_secs(30));
    assert!(out.succeeded(), "{}\n{}", out.stdout, out.stderr);
    assert_plain(&out.stdout, &out.stderr);
    let header = row(&out.stdout, "");
    assert_eq!(header, ["direct", "through breakwater"], "{}", out.stdout);

    // Straight at it, a request while it is down waits out the connect timeout
    // (1 s); through breakwater, once the circuit is open, it is answered at once.
    let down = row(&out.stdout, "answer while down, p50");
    assert!(
        latency(&down[0]) >= Duration::from_millis(900),
        "{}",
        out.stdout
    );
    assert!(
        latency(&down[1]) < Duration::from_millis(100),
        "{}",
        out.stdout
    );
    let opened = row(&out.stdout, "circuit opened");
    assert_ne!(opened[1], "0×", "{}", out.stdout);
    assert!(
        out.stdout.contains("503 circuit-open"),
        "no circuit-open answers:\n{}",
        out.stdout
    );
    // And it closed again: requests succeed within the open duration and a
    // probe of the service's return.
    let back = row(&out.stdout, "first 2xx after its return");
    assert!(
        back[1] != "none" && latency(&back[1]) < Duration::from_millis(2500),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("requests: "), "{}", out.stdout);
}

#[test]
fn every_scene_of_the_demo_prints_its_table_into_a_pipe() {
    let out = finish(
        clean_command(&["demo", "--duration", "1s"]),
        Duration::from_secs(40),
    );
    assert!(out.succeeded(), "{}\n{}", out.stdout, out.stderr);
    assert_plain(&out.stdout, &out.stderr);
    for scene in ["flaky:", "outage:", "slow-tail:", "overload:"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(scene)),
            "no {scene} scene:\n{}",
            out.stdout
        );
    }
    let tables = out
        .stdout
        .lines()
        .filter(|l| l.split('|').nth(1).map(str::trim) == Some("requests sent"))
        .count();
    let sentences = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("requests: "))
        .count();
    assert_eq!((tables, sentences), (4, 4), "{}", out.stdout);
    assert!(
        !out.stdout.contains("strangler:"),
        "strangler is a scene of its own"
    );
}

#[test]
fn the_demo_names_its_scenes_and_keeps_strangler_as_an_alias() {
    let bad = support::run_to_end(&["demo", "--scene", "nope"]);
    assert!(!bad.succeeded());
    for scene in ["flaky", "outage", "slow-tail", "overload", "strangler"] {
        assert!(bad.stderr.contains(scene), "{}", bad.stderr);
    }
    let both = support::run_to_end(&["demo", "--strangler", "--scene", "flaky"]);
    assert!(!both.succeeded(), "--strangler with another --scene");
}
