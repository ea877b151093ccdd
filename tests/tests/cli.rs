//! The binary's command line: `run --check`, bad values that must fail at start-up
//! naming their flag, the `BREAKWATER_*` environment form, the README's flag
//! table kept in step with `breakwater run --help`, and text logs in a pipe.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{self, Outcome};

/// The effective configuration `run --check` prints, parsed.
fn checked_config(outcome: &Outcome) -> serde_json::Value {
    assert!(outcome.succeeded(), "--check failed: {}", outcome.stderr);
    serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("--check did not print JSON ({e}):\n{}", outcome.stdout))
}

/// Asserts the binary refused to start and said which flag was wrong.
fn assert_fails_naming(outcome: &Outcome, flag: &str, what: &str) {
    assert!(
        !outcome.succeeded(),
        "{what}: exited 0; stdout:\n{}",
        outcome.stdout
    );
    assert!(
        outcome.code.is_some(),
        "{what}: killed by a signal (a panic abort?)"
    );
    assert!(
        outcome.stderr.contains(flag),
        "{what}: the error does not name {flag}:\n{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("panicked"),
        "{what}: panicked:\n{}",
        outcome.stderr
    );
}

/// The `--flags` in a clap help text (`--help`/`--version` left out), each with the
/// text of its description joined onto one line.
fn flags_in_help(help: &str) -> Vec<(String, String)> {
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Flag lines are indented by 2 (`-h, --help`) or 6 (`--check`); their
        // descriptions by more.
        let is_flag_line = trimmed.starts_with('-') && line.len() - trimmed.len() <= 6;
        match trimmed.find("--").filter(|_| is_flag_line) {
            Some(at) => {
                let name: String = trimmed[at + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.push((name, String::new()));
            }
            None => {
                if let Some((_, text)) = flags.last_mut() {
                    text.push(' ');
                    text.push_str(trimmed);
                }
            }
        }
    }
    flags.retain(|(name, _)| name != "help" && name != "version");
    flags
}

fn help_of(args: &[&str]) -> String {
    let outcome = support::run_to_end(args);
    assert!(outcome.succeeded(), "{args:?} failed: {}", outcome.stderr);
    outcome.stdout
}

/// The subcommands `breakwater --help` lists (not `help` itself).
fn subcommands() -> Vec<String> {
    let help = help_of(&["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn check_with_defaults_prints_the_effective_config_and_exits_0() {
    let outcome = support::run_to_end(&["run", "--check"]);
    let config = checked_config(&outcome);
    assert_eq!(config["timeout"], "15s");
    assert_eq!(config["connect_timeout"], "1s");
    assert_eq!(config["drain_timeout"], "30s");
    assert_eq!(config["inbound_addr"], "0.0.0.0:15006");
    assert_eq!(config["outbound_addr"], "127.0.0.1:15001");
    assert_eq!(config["admin_addr"], "0.0.0.0:15000");
    assert_eq!(config["app_addr"], "127.0.0.1:8080");
    assert!(
        config["threads"].as_u64().is_some_and(|n| n >= 1),
        "threads: {}",
        config["threads"]
    );
}

#[test]
fn check_reflects_the_flags_given() {
    let outcome = support::run_to_end(&[
        "run",
        "--check",
        "--timeout=4s",
        "--app-addr=127.0.0.1:9000",
        "--route=payments:8080,timeout=2s",
        "--threads=3",
    ]);
    let config = checked_config(&outcome);
    assert_eq!(config["timeout"], "4s");
    assert_eq!(config["app_addr"], "127.0.0.1:9000");
    assert_eq!(config["threads"], 3);
    assert_eq!(config["routes"][0]["host"], "payments");
    assert_eq!(config["routes"][0]["port"], 8080);
    assert_eq!(config["routes"][0]["timeout"], "2s");
}

#[test]
fn bad_flag_values_fail_at_start_up_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--timeout", "soon"], "--timeout"),
        (&["--timeout", "0s"], "--timeout"),
        (&["--connect-timeout", "0ms"], "--connect-timeout"),
        (&["--inbound-addr", "nowhere"], "--inbound-addr"),
        (&["--admin-addr", "127.0.0.1:99999"], "--admin-addr"),
        (&["--route", "a,retries=x"], "--route"),
        (&["--route", "a,timeout=soon"], "--route"),
        (
            &["--max-request-header-bytes", "10"],
            "--max-request-header-bytes",
        ),
        (&["--max-request-headers", "0"], "--max-request-headers"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--threads", "0"], "--threads"),
        (&["--max-destinations", "0"], "--max-destinations"),
        (&["--max-destinations", "lots"], "--max-destinations"),
        (&["--threads", "many"], "--threads"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--rate-limit", "fast"], "--rate-limit"),
        (&["--hedge-after", "soon"], "--hedge-after"),
        (&["--hedge-after", "p101"], "--hedge-after"),
        (&["--hedge-budget", "150"], "--hedge-budget"),
        (
            &["--stream-idle-timeout", "forever"],
            "--stream-idle-timeout",
        ),
        (&["--route", "a,hedge-after=p42"], "hedge-after"),
        (
            &["--route", "*,direction=inbound,hedge-after=50ms"],
            "hedge-after",
        ),
        (&["--rate-limit", "0"], "--rate-limit"),
        (&["--rate-limit", "100/0"], "--rate-limit"),
        (&["--inbound-rate-limit", "10/x"], "--inbound-rate-limit"),
        (&["--rate-limit-mode", "maybe"], "--rate-limit-mode"),
        (&["--route", "a,rate-limit=-5"], "rate-limit"),
        (
            &["--route", "a,rate-limit-key=not a header"],
            "rate-limit-key",
        ),
        (
            &["--route", "a,rate-limit=5,rate-limit-key=identity"],
            "rate-limit-key",
        ),
        (
            &[
                "--app-addr",
                "127.0.0.1:15006",
                "--inbound-addr",
                "127.0.0.1:15006",
            ],
            "--app-addr",
        ),
        (
            &[
                "--admin-addr",
                "127.0.0.1:15001",
                "--outbound-addr",
                "127.0.0.1:15001",
            ],
            "--admin-addr",
        ),
    ];
    for (flags, named) in cases {
        for check in [true, false] {
            let mut args = vec!["run"];
            if check {
                args.push("--check");
            } else {
                // If the bad value were accepted, serve on free ports, not the defaults.
                for listener in ["--inbound-addr", "--outbound-addr", "--admin-addr"] {
                    if !flags.contains(&listener) {
                        args.extend([listener, "127.0.0.1:0"]);
                    }
                }
            }
            args.extend_from_slice(flags);
            let outcome = support::run_to_end(&args);
            assert_fails_naming(&outcome, named, &format!("{args:?}"));
        }
    }
}

/// Values valid one by one that the proxy cannot serve together: `run` and
/// `run --check` both refuse them, naming the route (its host) and both keys.
#[test]
fn conflicting_values_fail_naming_the_route_and_both_keys() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--route=api,max-concurrent=auto,max-concurrent-min=2000"],
            &[
                "--route api:",
                "max-concurrent-min (2000)",
                "max-concurrent-max (1024",
            ],
        ),
        (
            &["--max-concurrent-min=8", "--max-concurrent-max=4"],
            &["--max-concurrent-min (8)", "--max-concurrent-max (4)"],
        ),
        (
            &["--route=api:8080,max-concurrent-max=2"],
            &[
                "--route api:8080:",
                "max-concurrent-min (4",
                "max-concurrent-max (2)",
            ],
        ),
        (
            &["--route=api,max-concurrent-min=0"],
            &["--route api:", "max-concurrent-min (0)"],
        ),
        (
            &["--retry-backoff=1s", "--retry-backoff-max=500ms"],
            &["--retry-backoff (1s)", "--retry-backoff-max (500ms)"],
        ),
        (
            &["--route=payments,retry-backoff=2s"],
            &[
                "--route payments:",
                "retry-backoff (2s)",
                "retry-backoff-max (250ms",
            ],
        ),
        (
            &["--route=api,breaker-half-open-requests=0"],
            &["--route", "breaker-half-open-requests"],
        ),
        (
            &["--route=api,breaker-failure-rate=101"],
            &["--route", "breaker-failure-rate"],
        ),
        (&["--max-ejection-percent=150"], &["--max-ejection-percent"]),
        (
            &["--route=api,timeout=400d"],
            &["--route", "timeout", "365 days"],
        ),
        (&["--drain-timeout=99999999999s"], &["--drain-timeout"]),
    ];
    for (flags, named) in cases {
        for check in [true, false] {
            let mut args = vec!["run"];
            if check {
                args.push("--check");
            } else {
                args.extend([
                    "--inbound-addr=127.0.0.1:0",
                    "--outbound-addr=127.0.0.1:0",
                    "--admin-addr=127.0.0.1:0",
                ]);
            }
            args.extend_from_slice(flags);
            let outcome = support::run_to_end(&args);
            for name in *named {
                assert_fails_naming(&outcome, name, &format!("{args:?}"));
            }
        }
    }
}

/// A per-try timeout longer than the overall one is harmless but never fires:
/// accepted, as Envoy does, with a warning that names both keys.
#[test]
fn a_per_try_timeout_beyond_the_timeout_is_accepted_with_a_warning() {
    let outcome = support::run_to_end(&[
        "run",
        "--check",
        "--route=api,timeout=1s,per-try-timeout=2s",
    ]);
    checked_config(&outcome);
    assert!(
        outcome
            .stderr
            .contains("warning: --route api: per-try-timeout (2s) is longer than timeout (1s)"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn env_vars_set_flags() {
    let mut cmd = support::clean_command(&["run", "--check"]);
    cmd.env("BREAKWATER_TIMEOUT", "2s")
        .env("BREAKWATER_MAX_CONNECTIONS", "7")
        .env("BREAKWATER_ROUTE", "a:81,timeout=1s;b,protocol=h2");
    let config = checked_config(&support::finish(cmd, Duration::from_secs(20)));
    assert_eq!(config["timeout"], "2s");
    assert_eq!(config["limits"]["max_connections"], 7);
    assert_eq!(config["routes"][0]["host"], "a");
    assert_eq!(config["routes"][1]["protocol"], "h2");
}

#[test]
fn a_flag_beats_its_env_var() {
    let mut cmd = support::clean_command(&["run", "--check", "--timeout=3s"]);
    cmd.env("BREAKWATER_TIMEOUT", "2s");
    let config = checked_config(&support::finish(cmd, Duration::from_secs(20)));
    assert_eq!(config["timeout"], "3s");
}

#[test]
fn a_bad_env_var_fails_naming_its_flag() {
    for (var, value, flag) in [
        ("BREAKWATER_CONNECT_TIMEOUT", "never", "--connect-timeout"),
        ("BREAKWATER_THREADS", "0", "--threads"),
        ("BREAKWATER_ROUTE", "a,colour=blue", "--route"),
    ] {
        let mut cmd = support::clean_command(&["run", "--check"]);
        cmd.env(var, value);
        let outcome = support::finish(cmd, Duration::from_secs(20));
        assert_fails_naming(&outcome, flag, &format!("{var}={value}"));
    }
}

#[test]
fn every_run_flag_has_its_breakwater_env_var() {
    let help = help_of(&["run", "--help"]);
    let flags = flags_in_help(&help);
    assert!(
        flags.len() >= 10,
        "too few flags parsed from run --help:\n{help}"
    );
    for (name, text) in flags {
        let var = format!("BREAKWATER_{}", name.to_ascii_uppercase().replace('-', "_"));
        assert!(
            text.contains(&format!("[env: {var}=")),
            "--{name} does not document {var}: {text}"
        );
    }
}

#[test]
fn an_address_in_use_fails_naming_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to occupy");
    let addr = taken.local_addr().expect("occupied address").to_string();
    let outcome = support::run_to_end(&[
        "run",
        "--inbound-addr=127.0.0.1:0",
        "--outbound-addr=127.0.0.1:0",
        "--app-addr=127.0.0.1:9",
        "--log-level=warn",
        "--admin-addr",
        &addr,
    ]);
    assert_fails_naming(&outcome, "--admin-addr", "admin address in use");
    assert!(
        outcome.stderr.contains(&addr),
        "the error does not say which address:\n{}",
        outcome.stderr
    );
    drop(taken);
}

#[test]
fn readme_flag_table_matches_run_help() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} must document every flag: {e}", path.display()));
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("| `--"))
        .filter_map(|rest| rest.split_once("` |").map(|(name, _)| name.to_string()))
        .collect();

    let run_flags: BTreeSet<String> = flags_in_help(&help_of(&["run", "--help"]))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let missing: Vec<_> = run_flags.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "flags of `breakwater run` with no \"| `--flag` |\" row in README.md: {missing:?}"
    );

    // A README row may document another subcommand's flag, but it must be real.
    let mut real = run_flags;
    for sub in subcommands() {
        real.extend(
            flags_in_help(&help_of(&[&sub, "--help"]))
                .into_iter()
                .map(|(name, _)| name),
        );
    }
    let unknown: Vec<_> = documented.difference(&real).collect();
    assert!(
        unknown.is_empty(),
        "README.md documents flags the binary does not have: {unknown:?}"
    );
}

/// `run --check` loads the certificate files as start-up does: it refuses what
/// `run` would refuse, naming the flag and the file, and takes a good set.
#[test]
fn check_loads_tls_files_as_start_up_does() {
    let certs = support::test_certs();
    let dir = support::TestDir::new("check-tls");
    let not_pem = dir.write("not-pem.crt", "this is not a certificate\n");
    let missing = dir.0.join("missing.crt");
    let arg = |flag: &str, path: &std::path::Path| format!("--{flag}={}", path.display());
    let inbound = |cert: &std::path::Path, key: &std::path::Path| {
        vec![arg("inbound-tls-cert", cert), arg("inbound-tls-key", key)]
    };
    let tls_route = "--route=payments:443,tls=true".to_string();
    let outbound_ca = |ca: &std::path::Path| vec![tls_route.clone(), arg("outbound-tls-ca", ca)];
    let outbound_client = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            tls_route.clone(),
            arg("outbound-tls-ca", &certs.ca),
            arg("outbound-tls-cert", cert),
            arg("outbound-tls-key", key),
        ]
    };
    let check = |args: &[String]| {
        let mut all = vec!["run".to_string(), "--check".to_string()];
        all.extend_from_slice(args);
        support::run_to_end(&all)
    };

    let mut mutual = inbound(&certs.cert, &certs.key);
    mutual.push(arg("inbound-tls-client-ca", &certs.ca));
    for good in [
        inbound(&certs.cert, &certs.key),
        mutual,
        outbound_ca(&certs.ca),
        outbound_client(&certs.cert, &certs.key),
        // No route speaks TLS and no policy file may add one: run loads none.
        vec![arg("outbound-tls-ca", &not_pem)],
    ] {
        checked_config(&check(&good));
    }

    let mut bad_client_ca = inbound(&certs.cert, &certs.key);
    bad_client_ca.push(arg("inbound-tls-client-ca", &not_pem));
    for (args, flag, file, why) in [
        (
            inbound(&not_pem, &certs.key),
            "--inbound-tls-cert",
            &not_pem,
            "no PEM certificate",
        ),
        (
            inbound(&missing, &certs.key),
            "--inbound-tls-cert",
            &missing,
            "No such file",
        ),
        (
            inbound(&certs.cert, &not_pem),
            "--inbound-tls-key",
            &not_pem,
            "no PEM private key",
        ),
        (
            inbound(&certs.cert, &certs.other_key),
            "--inbound-tls-key",
            &certs.other_key,
            "",
        ),
        (
            bad_client_ca,
            "--inbound-tls-client-ca",
            &not_pem,
            "no PEM certificate",
        ),
        (
            outbound_ca(&not_pem),
            "--outbound-tls-ca",
            &not_pem,
            "no PEM certificate",
        ),
        (
            outbound_ca(&certs.key),
            "--outbound-tls-ca",
            &certs.key,
            "no PEM certificate",
        ),
        (
            outbound_client(&not_pem, &certs.key),
            "--outbound-tls-cert",
            &not_pem,
            "no PEM certificate",
        ),
        (
            outbound_client(&certs.cert, &certs.other_key),
            "--outbound-tls-key",
            &certs.other_key,
            "",
        ),
    ] {
        let what = format!("run --check {}", args.join(" "));
        let outcome = check(&args);
        assert_fails_naming(&outcome, flag, &what);
        assert_eq!(outcome.code, Some(2), "{what}");
        assert!(
            outcome.stderr.contains(&file.display().to_string()) && outcome.stderr.contains(why),
            "{what}: the error should name {} ({why}):\n{}",
            file.display(),
            outcome.stderr
        );
        // And run itself refuses them the same way.
        let mut run = vec![
            "run".to_string(),
            "--inbound-addr=127.0.0.1:0".into(),
            "--outbound-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
        ];
        run.extend(args);
        let started = support::run_to_end(&run);
        assert_eq!(
            started.stderr.lines().last(),
            outcome.stderr.lines().last(),
            "{what}: run and run --check disagree"
        );
    }
}

#[test]
fn an_unknown_log_level_fails_naming_the_flag() {
    for bad in ["verbose", "breakwater", "info,", "breakwater=loud", ""] {
        let outcome = support::run_to_end(&["run", "--check", &format!("--log-level={bad}")]);
        assert_fails_naming(&outcome, "--log-level", bad);
        assert!(
            outcome.stderr.contains("is not a log level"),
            "{bad}: {}",
            outcome.stderr
        );
    }
    for good in ["debug", "WARN", "info,breakwater::listener=debug", "off"] {
        let config = checked_config(&support::run_to_end(&[
            "run",
            "--check",
            &format!("--log-level={good}"),
        ]));
        assert_eq!(config["log_level"], good);
    }
    // The environment variable is held to the same grammar.
    let mut cmd = support::clean_command(&["run", "--check"]);
    cmd.env("BREAKWATER_LOG_LEVEL", "verbose");
    let outcome = support::finish(cmd, Duration::from_secs(20));
    assert_fails_naming(&outcome, "--log-level", "BREAKWATER_LOG_LEVEL=verbose");
}

/// `--log-format text` colours its lines for a terminal only: in a pipe or a
/// log file the escape codes would be noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_into_a_pipe_have_no_colour() {
    let app = support::spawn_echo().await;
    // A per-try timeout beyond the timeout is logged as a warning at start-up.
    let mut proxy = support::spawn_binary_with(
        app.addr,
        &["--log-format=text", "--per-try-timeout=20s"],
        std::process::Stdio::piped(),
    )
    .await;
    let stdout = proxy.child.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .find(|l| l.contains("WARN"))
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("a warning within 10 s")
        .expect("join")
        .expect("a WARN line");
    assert!(!line.contains('\x1b'), "colour in a pipe: {line:?}");
}
