//! `.ci/programs` lists every program the tests execute, so that `.ci/run`
//! installs them all: a test that starts using a new tool fails here, naming
//! it, instead of skipping itself quietly on a machine without it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `breakwater`'s own subcommands: the first word of its argument lists, not programs.
const SUBCOMMANDS: [&str; 4] = ["run", "demo", "init-iptables", "inject"];

/// The first column of `.ci/programs`.
fn listed() -> BTreeSet<String> {
    let path = Path::new(ROOT).join(".ci/programs");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Files under `dir` whose name ends with one of `exts`, dependencies left out.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "node_modules" | "__pycache__" | "target") {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The string literal at the start of `s` (after blanks), if there is one.
fn literal(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let quote = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &s[1..];
    rest.find(quote).map(|end| &rest[..end])
}

/// Every `marker` in `text` that starts a call (not the tail of a longer
/// name), with the text after it.
fn calls<'a>(text: &'a str, marker: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(marker).filter_map(move |(at, _)| {
        let before = text[..at].chars().next_back();
        let joined = before.is_some_and(|c| c.is_alphanumeric() || c == '_');
        (!joined).then(|| &text[at + marker.len()..])
    })
}

/// The program of an argument list passed as `&["prog", ...]`, first or after
/// one plain argument (`ns_exec(ns, &["curl", ...])`, `pod.spawn(&p, &[...])`).
fn argv_program(after_paren: &str) -> Option<&str> {
    let s = after_paren.trim_start();
    let s = match s.strip_prefix("&[") {
        Some(rest) => rest,
        None => {
            let comma = s.find(',')?;
            let first = &s[..comma];
            if first.contains(['(', '[', ';', ')', '"']) {
                return None;
            }
            s[comma + 1..].trim_start().strip_prefix("&[")?
        }
    };
    literal(s)
}

/// Programs a Rust test source executes.
fn rust_programs(text: &str, found: &mut BTreeSet<String>) {
    for marker in ["Command::new(", "have(", "which("] {
        found.extend(calls(text, marker).filter_map(literal).map(str::to_string));
    }
    for marker in ["run(", "exec(", "ns_exec(", "spawn("] {
        found.extend(
            calls(text, marker)
                .filter_map(argv_program)
                .map(str::to_string),
        );
    }
}

/// Programs a Python, Node or Java driver executes: the first element of a
/// command list given to subprocess (or held in `cmd = [...]`), `which`/`have`,
/// Node's child_process calls, Java's ProcessBuilder.
fn script_programs(text: &str, found: &mut BTreeSet<String>) {
    for marker in [
        "have(",
        "which(",
        "spawn(",
        "spawnSync(",
        "execFile(",
        "execFileSync(",
    ] {
        found.extend(calls(text, marker).filter_map(literal).map(str::to_string));
    }
    found.extend(
        calls(text, "ProcessBuilder(")
            .filter_map(literal)
            .map(str::to_string),
    );
    for marker in [
        "subprocess.run(",
        "subprocess.Popen(",
        "subprocess.check_output(",
        "subprocess.call(",
        "run_external(",
        "cmd = ",
        "argv = ",
    ] {
        for after in calls(text, marker) {
            // The list may follow another argument: look a little way on.
            let window: String = after.chars().take(200).collect();
            let stop = window.find(')').unwrap_or(window.len());
            if let Some(open) = window[..stop].find('[') {
                found.extend(literal(&window[open + 1..]).map(str::to_string));
            }
        }
    }
}

/// What `init-iptables`, which the interception tests run, executes itself.
fn iptables_programs(text: &str, found: &mut BTreeSet<String>) {
    found.extend(
        calls(text, "Family::V4 => ")
            .filter_map(literal)
            .map(str::to_string),
    );
}

fn executed() -> BTreeSet<String> {
    let root = Path::new(ROOT);
    let mut found = BTreeSet::new();
    let mut rust = Vec::new();
    files(&root.join("tests"), &[".rs"], &mut rust);
    for path in rust {
        if path.ends_with("ci_programs.rs") {
            continue;
        }
        rust_programs(
            &std::fs::read_to_string(&path).unwrap_or_default(),
            &mut found,
        );
    }
    let mut scripts = Vec::new();
    files(
        &root.join("tests/interop"),
        &[".py", ".js", ".mjs", ".java"],
        &mut scripts,
    );
    for path in scripts {
        script_programs(
            &std::fs::read_to_string(&path).unwrap_or_default(),
            &mut found,
        );
    }
    let iptables = root.join("src/interception/iptables.rs");
    iptables_programs(
        &std::fs::read_to_string(iptables).unwrap_or_default(),
        &mut found,
    );
    found.retain(|p| {
        !p.is_empty()
            && !p.starts_with('-')
            && !p.contains(['/', '{', ' ', '$'])
            && !SUBCOMMANDS.contains(&p.as_str())
    });
    found
}

#[test]
fn every_program_the_tests_execute_is_installed_by_ci() {
    let found = executed();
    // The scanner itself: these are run in ways each of its patterns covers.
    for known in [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "setpriv",
        "curl",
    ] {
        assert!(
            found.contains(known),
            "the scan no longer sees {known}; found {found:?}"
        );
    }
    let listed = listed();
    let missing: Vec<&String> = found.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "programs the tests execute but .ci/programs does not list (add each with its \
         Debian package, so .ci/run installs it): {missing:?}"
    );
}

#[test]
fn the_scan_reads_each_way_of_running_a_program() {
    let mut found = BTreeSet::new();
    rust_programs(
        r#"Command::new("kill"); run(&["ip", "netns"]); ns_exec(ns, &[
            "curl", "-s"]); pod.spawn(&p, &["python3", x]); run(&["run", "--check"]);
            runner.run(&pairs(), f); have("setpriv")"#,
        &mut found,
    );
    script_programs(
        r#"cmd = ["curl", "-sS"]; subprocess.Popen(
            ["nginx", "-p"]); run_external(m, ["node", x]); servers.have("java")
            msgs = ["hello", "x"]"#,
        &mut found,
    );
    let mut found: Vec<&str> = found.iter().map(String::as_str).collect();
    found.retain(|p| !SUBCOMMANDS.contains(p));
    assert_eq!(
        found,
        [
            "curl", "ip", "java", "kill", "nginx", "node", "python3", "setpriv"
        ]
    );
}
