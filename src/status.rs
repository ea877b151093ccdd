//! `breakwater status`: one pod's destinations and endpoints as a table, read from
//! a running breakwater's `/upstreams` (`kubectl port-forward pod 15000`, then
//! `breakwater status`). The figures are the proxy's own recent-traffic windows
//! (`metrics::recent`); this module only fetches and lays them out.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The table fits a terminal this wide.
pub const WIDTH: usize = 100;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `breakwater status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The admin endpoint of the breakwater to read.
    #[arg(long, default_value = "http://127.0.0.1:15000", value_name = "URL")]
    pub admin: String,

    /// Redraw every second, like top.
    #[arg(long)]
    pub watch: bool,

    /// Print `/upstreams` as it came (JSON) instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(run(args))
}

async fn run(args: StatusArgs) -> ExitCode {
    let url = format!("{}/upstreams", args.admin.trim_end_matches('/'));
    let terminal = std::io::stdout().is_terminal();
    loop {
        let upstreams = match fetch(&url).await {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
        let out = if args.json {
            serde_json::to_string_pretty(&upstreams).unwrap_or_default() + "\n"
        } else {
            match render(&upstreams) {
                Ok(table) => table,
                Err(e) => return fail(&format!("{url}: {e}")),
            }
        };
        let mut stdout = std::io::stdout().lock();
        if args.watch && terminal {
            // Home and clear, as top redraws.
            let _ = stdout.write_all(b"\x1b[H\x1b[2J");
        }
        if stdout.write_all(out.as_bytes()).is_err() || stdout.flush().is_err() {
            return ExitCode::FAILURE;
        }
        drop(stdout);
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("breakwater status: {message}");
    ExitCode::FAILURE
}

async fn fetch(url: &str) -> Result<Value, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("--admin {url}: not a URL: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let got = tokio::time::timeout(FETCH_TIMEOUT, async {
        let resp = client.get(uri).await.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("no breakwater answers at {url} ({e}{cause})")
        })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: the answer broke off: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: is it a breakwater admin port?"
            ));
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|_| format!("{url} did not answer JSON: is it a breakwater admin port?"))
    })
    .await;
    got.unwrap_or_else(|_| Err(format!("no answer from {url} within {FETCH_TIMEOUT:?}")))
}

/// The table for `/upstreams`; an error when the data is not what this version
/// reads (an older breakwater without recent traffic).
pub fn render(upstreams: &Value) -> Result<String, String> {
    let list = upstreams
        .as_array()
        .ok_or("/upstreams is not a list: not a breakwater admin endpoint")?;
    let mut out = String::new();
    let header = format!(
        "{:<28} {:>6} {:>6} {:>7} {:>7} {:>4} {:>5} {:>5}  {:<11} {}",
        "DESTINATION / ENDPOINT",
        "RPS",
        "OK",
        "P50",
        "P99",
        "INFL",
        "QUEUE",
        "LIMIT",
        "CIRCUIT",
        "RETRIES"
    );
    let _ = writeln!(out, "{}", header.trim_end());
    if list.is_empty() {
        out.push_str("(no destinations yet: nothing has gone through this breakwater)\n");
    }
    for dest in list {
        if dest.get("shadow").is_some() && dest.get("recent").is_none() {
            continue;
        }
        let recent = dest.get("recent").ok_or(
            "/upstreams has no recent traffic: this breakwater is older than this `status`",
        )?;
        // null: no request yet.
        let name = format!(
            "{} {}",
            arrow(dest["direction"].as_str().unwrap_or("")),
            dest["destination"].as_str().unwrap_or("?")
        );
        let route = dest["route"].as_str().filter(|r| *r != "default");
        let name = match route {
            Some(r) => format!("{name} [{r}]"),
            None => name,
        };
        let bulkhead = &dest["bulkhead"];
        let endpoints = dest["endpoints"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let in_flight: u64 = endpoints
            .iter()
            .filter_map(|e| e["in_flight"].as_u64())
            .sum();
        let left = dest["retry_budget_left"]
            .as_u64()
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into());
        let retries = format!(
            "{}/{}/{left}",
            recent["retries"].as_u64().unwrap_or(0),
            recent["retries_skipped"].as_u64().unwrap_or(0),
        );
        row(
            &mut out,
            &name,
            recent,
            bulkhead["in_flight"].as_u64().unwrap_or(in_flight),
            bulkhead["queued"].as_u64(),
            bulkhead["limit"].as_u64(),
            &circuits(endpoints),
            &retries,
        );
        if let Some(failures) = failures(recent) {
            let _ = writeln!(out, "    failures: {failures}");
        }
        for e in endpoints {
            let recent = e.get("recent").unwrap_or(&Value::Null);
            let name = format!("  {}", e["address"].as_str().unwrap_or("?"));
            row(
                &mut out,
                &name,
                recent,
                e["in_flight"].as_u64().unwrap_or(0),
                None,
                None,
                &circuit(&e["circuit"]),
                "",
            );
            if let Some(failures) = failures(recent) {
                let _ = writeln!(out, "      failures: {failures}");
            }
        }
    }
    let _ = writeln!(
        out,
        "RPS, OK (success), P50, P99 over the last 30-60 s; RETRIES: made/skipped then, budget left now."
    );
    Ok(out)
}

fn arrow(direction: &str) -> &'static str {
    match direction {
        "inbound" => "<-",
        _ => "->",
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    out: &mut String,
    name: &str,
    recent: &Value,
    in_flight: u64,
    queued: Option<u64>,
    limit: Option<u64>,
    circuit: &str,
    retries: &str,
) {
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let ms = |key: &str| match recent[key].as_f64() {
        Some(v) if v >= 1000.0 => format!("{:.1}s", v / 1000.0),
        Some(v) if v >= 10.0 => format!("{v:.0}ms"),
        Some(v) => format!("{v:.1}ms"),
        None => "-".into(),
    };
    let ok = recent["success_rate"]
        .as_f64()
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into());
    let rps = recent["requests_per_second"].as_f64().unwrap_or(0.0);
    let line = format!(
        "{:<28} {:>6} {:>6} {:>7} {:>7} {:>4} {:>5} {:>5}  {:<11} {}",
        clip(name, 28),
        format!("{rps:.1}"),
        ok,
        ms("p50_ms"),
        ms("p99_ms"),
        in_flight,
        num(queued),
        num(limit),
        clip(circuit, 11),
        retries
    );
    out.push_str(clip(line.trim_end(), WIDTH));
    out.push('\n');
}

/// `text` cut to `width` characters.
fn clip(text: &str, width: usize) -> &str {
    match text.char_indices().nth(width) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The destination's circuits in a word: `closed`, or how many are not.
fn circuits(endpoints: &[Value]) -> String {
    let open = endpoints
        .iter()
        .filter(|e| e["circuit"]["state"] != "closed")
        .count();
    match (open, endpoints.len()) {
        (_, 0) => "-".into(),
        (0, _) => "closed".into(),
        (1, 1) => circuit(&endpoints[0]["circuit"]),
        (n, all) => format!("{n}/{all} open"),
    }
}

/// One endpoint's circuit, with the time to its next probe while open.
fn circuit(c: &Value) -> String {
    let state = c["state"].as_str().unwrap_or("-");
    match c["next_probe_in_us"].as_u64() {
        Some(us) if state == "open" => format!("open {:.1}s", us as f64 / 1e6),
        _ => state.to_string(),
    }
}

/// `reset 3, 5xx 2`: failures by reason, most first.
fn failures(recent: &Value) -> Option<String> {
    let list = recent["failures"].as_array()?;
    let parts: Vec<String> = list
        .iter()
        .filter_map(|f| Some(format!("{} {}", f.get(0)?.as_str()?, f.get(1)?.as_u64()?)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_fits_and_shows_what_failed() {
        let upstreams = json!([{
            "destination": "payments.shop.svc.cluster.local:8080",
            "direction": "outbound",
            "route": "default",
            "bulkhead": {"limit": 64, "in_flight": 3, "queued": 1},
            "retry_budget_left": 98,
            "recent": {"seconds": 42.0, "requests": 420, "requests_per_second": 10.0,
                "success_rate": 0.75, "p50_ms": 3.2, "p99_ms": 1250.0,
                "retries": 12, "retries_skipped": 4,
                "failures": [["connect-failure", 80], ["5xx", 25]]},
            "endpoints": [
                {"address": "10.1.2.3:8080", "in_flight": 2,
                 "circuit": {"state": "open", "next_probe_in_us": 2_500_000},
                 "recent": {"requests_per_second": 4.0, "success_rate": 0.1,
                    "p50_ms": 0.8, "p99_ms": 3.0, "failures": [["connect-failure", 80]]}},
                {"address": "10.1.2.4:8080", "in_flight": 1,
                 "circuit": {"state": "closed"},
                 "recent": {"requests_per_second": 6.0, "success_rate": 1.0,
                    "p50_ms": 12.0, "p99_ms": 40.0, "failures": []}}
            ]
        }]);
        let table = render(&upstreams).expect("renders");
        assert!(table.lines().all(|l| l.chars().count() <= WIDTH), "{table}");
        for expected in [
            "-> payments.shop.svc.cluster",
            "75.0%",
            "1.2s",
            "1/2 open",
            "12/4/98",
            "failures: connect-failure 80, 5xx 25",
            "10.1.2.3:8080",
            "open 2.5s",
        ] {
            assert!(table.contains(expected), "{expected} in\n{table}");
        }
    }

    #[test]
    fn an_older_breakwater_is_named_as_such() {
        let old = json!([{"destination": "a:80", "direction": "outbound", "endpoints": []}]);
        let err = render(&old).expect_err("no recent traffic");
        assert!(err.contains("older"), "{err}");
        assert!(render(&json!({"x": 1})).is_err());
    }
}
