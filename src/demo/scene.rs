//! What every scene does the same way: the real proxy started from `run` flags,
//! load run side by side with a progress line, and the before/after table.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use super::load::{self, Pace, Results, Route};
use super::scrape;
use crate::config::cli::parse_run_args;
use crate::{Config, Proxy};

/// How the demo writes: a progress line redrawn with `\r`, and bold titles,
/// only where someone watches a terminal. In a file or a pipe each `\r` would
/// pile up on one line and each escape code would be noise.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub progress: bool,
    pub colour: bool,
}

impl Style {
    pub fn detect() -> Style {
        let stdout = std::io::stdout().is_terminal();
        // https://no-color.org: set and not empty turns colour off.
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            progress: stdout && std::io::stderr().is_terminal(),
            colour: stdout && !no_colour,
        }
    }

    /// The scene's name and its one-line explanation.
    pub fn title(&self, name: &str, line: &str) {
        println!();
        if self.colour {
            println!("\x1b[1m{name}\x1b[0m: {line}");
        } else {
            println!("{name}: {line}");
        }
    }
}

/// What the command line gives every scene.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub style: Style,
    /// `--concurrency`: clients per scene (the overload scene has four times as many).
    pub clients: usize,
    /// `--duration`: each side's load time, instead of the scene's own.
    pub duration: Option<Duration>,
}

impl Setup {
    /// The scene's pace: `clients` (times `scale`), each a request `every`, for
    /// `duration` unless the command line says otherwise.
    pub fn pace(&self, scale: usize, every: Duration, duration: Duration) -> Pace {
        Pace {
            clients: self.clients.max(1) * scale,
            every,
            duration: self.duration.unwrap_or(duration),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// `breakwater run`'s flags that put all three listeners on loopback port 0,
/// as [`Config::loopback`] does; a scene adds its own after them.
const LOOPBACK: [&str; 5] = [
    "--inbound-addr=127.0.0.1:0",
    "--outbound-addr=127.0.0.1:0",
    "--admin-addr=127.0.0.1:0",
    "--threads=1",
    "--drain-delay=0s",
];

/// breakwater, running in this process with a scene's flags.
pub struct Proxied {
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub config: Config,
    stop: crate::drain::ShutdownHandle,
    task: tokio::task::JoinHandle<crate::RunReport>,
}

impl Proxied {
    /// Starts the proxy on the flags a user would give `breakwater run`.
    pub async fn start(flags: &[&str]) -> Result<Proxied, Box<dyn std::error::Error>> {
        let args = parse_run_args(LOOPBACK.iter().chain(flags))?;
        let mut config = Config::from_args(args)?;
        config.warnings = config.validate()?;
        let proxy = Proxy::bind(config.clone()).await?;
        let (outbound, admin) = (proxy.addrs().outbound, proxy.addrs().admin);
        let stop = proxy.shutdown_handle();
        let task = tokio::spawn(proxy.run());
        Ok(Proxied {
            outbound,
            admin,
            config,
            stop,
            task,
        })
    }

    pub async fn metrics(&self) -> String {
        scrape::fetch(self.admin, "/metrics")
            .await
            .unwrap_or_default()
    }

    pub async fn stop(self) {
        self.stop.request();
        let _ = self.task.await;
    }
}

/// The load straight at `service`.
pub fn direct(service: SocketAddr) -> Route {
    Route {
        connect_to: service,
        host: service,
    }
}

/// The load at `service` through breakwater's outbound listener.
pub fn through(proxy: &Proxied, service: SocketAddr) -> Route {
    Route {
        connect_to: proxy.outbound,
        host: service,
    }
}

/// Runs one side of a scene, with a progress line on a terminal.
pub async fn side(style: Style, name: &str, route: Route, pace: Pace) -> Results {
    let results = load::run(route, pace, |elapsed, n| {
        if style.progress {
            eprint!(
                "\r  {name:<24} {:>4.1}s / {:.1}s {n:>7} requests",
                elapsed.as_secs_f64(),
                pace.duration.as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    })
    .await;
    if style.progress {
        // Clear the progress line: the table is what stays.
        eprint!("\r{:60}\r", "");
        let _ = std::io::stderr().flush();
    }
    results
}

/// A latency as people read it: µs below a millisecond, then ms.
pub fn latency(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "—".into();
    };
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.0} ms", us / 1000.0)
    }
}

/// `n` and its share of `whole`.
pub fn share(n: u64, whole: u64) -> String {
    if whole == 0 {
        return n.to_string();
    }
    format!("{n} ({:.1}%)", n as f64 * 100.0 / whole as f64)
}

/// A before/after table: a label column and one column per side.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(sides: &[&str]) -> Table {
        let mut header = vec![String::new()];
        header.extend(sides.iter().map(|s| s.to_string()));
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// A row: its label, then one cell per side.
    pub fn row(&mut self, label: &str, cells: impl IntoIterator<Item = String>) {
        let mut row = vec![label.to_string()];
        row.extend(cells);
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    /// The rows every scene has: what was sent and what came back, for each
    /// side's results.
    pub fn common_rows(&mut self, sides: &[&Results]) {
        let each = |f: &dyn Fn(&Results) -> String| sides.iter().map(|r| f(r)).collect::<Vec<_>>();
        self.row("requests sent", each(&|r| r.sent().to_string()));
        self.row(
            "  answered (any status)",
            each(&|r| r.answered().to_string()),
        );
        self.row("  answered 2xx", each(&|r| share(r.ok(), r.sent())));
        self.row("p50 latency", each(&|r| latency(r.percentile(50.0))));
        self.row("p99 latency", each(&|r| latency(r.percentile(99.0))));
    }

    pub fn lines(&self) -> Vec<String> {
        let columns = self.header.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .chain(std::iter::once(&self.header))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    let pad = w - cell.chars().count();
                    if i == 0 {
                        format!(" {cell}{} ", " ".repeat(pad))
                    } else {
                        format!(" {}{cell} ", " ".repeat(pad))
                    }
                })
                .collect();
            format!("|{}|", cells.join("|"))
        };
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        let mut lines = vec![line(&self.header), format!("|{}|", rule.join("|"))];
        lines.extend(self.rows.iter().map(|r| line(r)));
        lines
    }

    pub fn print(&self) {
        println!();
        for line in self.lines() {
            println!("{line}");
        }
        println!();
    }
}

/// The sentence under a table about the requests row. The clients are paced,
/// so a side sends fewer only when its clients were kept waiting: `fewer` says
/// why they waited, `more` why the other side's did.
pub fn requests_sentence(
    direct: &Results,
    others: &[(&str, &Results)],
    more: &str,
    fewer: &str,
) -> String {
    let base = direct.sent() as f64;
    let changes: Vec<(String, f64)> = others
        .iter()
        .map(|(name, r)| {
            let change = if base > 0.0 {
                (r.sent() as f64 - base) * 100.0 / base
            } else {
                0.0
            };
            (format!("{change:+.0}% {name}"), change)
        })
        .collect();
    let said: Vec<&str> = changes.iter().map(|(s, _)| s.as_str()).collect();
    let said = said.join(", ");
    if changes.iter().all(|(_, c)| c.abs() < 3.0) {
        format!(
            "requests: about the same on each side ({said}): the clients are paced, and \
             whatever breakwater did fit within their pace."
        )
    } else if changes.iter().all(|(_, c)| *c >= 0.0) {
        format!("requests: {said}: {more}")
    } else {
        format!("requests: {said}: {fewer}")
    }
}

/// Requests the service got, against those the clients sent: what retries
/// and hedges add.
pub fn got_of(got: u64, sent: u64) -> String {
    if sent == 0 {
        return got.to_string();
    }
    let extra = (got as f64 - sent as f64) * 100.0 / sent as f64;
    format!("{got} ({extra:+.0}%)")
}

/// "breakwater answered N itself: 5 × 503 circuit-open, ...", or that it did not.
pub fn reasons_line(results: &Results) -> String {
    let reasons = results.reasons();
    if reasons.is_empty() {
        return "breakwater answered nothing itself: every answer came from the service.".into();
    }
    let said: Vec<String> = reasons
        .iter()
        .map(|(reason, n)| format!("{n} × {reason}"))
        .collect();
    format!(
        "breakwater answered itself, saying why in x-breakwater-reason: {}.",
        said.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_in_their_unit() {
        let d = |us| Some(Duration::from_micros(us));
        assert_eq!(latency(d(42)), "42 µs");
        assert_eq!(latency(d(1_500)), "1.5 ms");
        assert_eq!(latency(d(801_000)), "801 ms");
        assert_eq!(latency(None), "—");
    }

    #[test]
    fn a_table_lines_up_its_columns() {
        let mut t = Table::new(&["direct", "through breakwater"]);
        t.row("requests sent", ["10".to_string(), "1000".to_string()]);
        t.row("p50 latency", ["801 ms".to_string(), "42 µs".to_string()]);
        let lines = t.lines();
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{lines:#?}");
        assert!(
            lines[2].ends_with(&format!(" {:>18} |", "1000")),
            "{lines:#?}"
        );
    }
}
