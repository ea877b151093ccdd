//! `breakwater demo`: a flaky service on loopback, load straight at it and load
//! through breakwater (outbound, on built-in defaults), and a table of what each
//! client saw. It measures for real; as policies land, the second column shows them.
//!
//! `breakwater demo --strangler` is the other scene (`demo/strangler.rs`): an
//! old and a new service, part of the old one's traffic split and the rest
//! mirrored to the new one, and a table of where requests went by breakwater's
//! counters and by the services' own.

mod flaky;
mod load;
mod strangler;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::cli::DemoArgs;
use crate::units::format_duration;
use crate::{Config, Proxy};
use load::{Results, Route};

pub fn main(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::config::available_cpus().clamp(1, 4))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("breakwater demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let scene = async {
        if args.strangler {
            strangler::run(args).await
        } else {
            run(args).await
        }
    };
    match runtime.block_on(scene) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("breakwater demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let faults = flaky::Faults {
        unavailable: 10,
        reset: 5,
        slow: 2,
        slow_for: Duration::from_millis(800),
    };
    println!(
        "breakwater demo: a flaky service with {}",
        faults.describe()
    );
    let (service, _service_task) = flaky::spawn(faults).await?;

    let mut config = Config::loopback();
    config.app_addr = service;
    let proxy = Proxy::bind(config.clone()).await?;
    let outbound = proxy.addrs().outbound;
    let admin = proxy.addrs().admin;
    let stop = proxy.shutdown_handle();
    let proxy_task = tokio::spawn(proxy.run());
    println!(
        "service on {service}, breakwater outbound on {outbound} (timeout {}, connect-timeout {})",
        format_duration(config.timeout),
        format_duration(config.connect_timeout),
    );

    let half = args.duration / 2;
    let concurrency = args.concurrency.max(1);
    let direct = phase(
        "direct",
        Route {
            connect_to: service,
            host: service,
        },
        concurrency,
        half,
    )
    .await;
    let through = phase(
        "through breakwater",
        Route {
            connect_to: outbound,
            host: service,
        },
        concurrency,
        half,
    )
    .await;
    let metrics = load::fetch(admin, "/metrics").await.unwrap_or_default();
    stop.request();
    let _ = proxy_task.await;
    print_table(&direct, &through);
    let retried = sum_of(&metrics, "breakwater_retries_total{");
    let skipped = sum_of(&metrics, "breakwater_retries_skipped_total{");
    println!(
        "breakwater retried {retried:.0} attempts (retry budget {}% + {}/s); {skipped:.0} retries were skipped.",
        config.retry.budget_percent, config.retry.budget_min_per_sec
    );
    Ok(())
}

async fn phase(name: &str, route: Route, concurrency: usize, duration: Duration) -> Results {
    let results = load::run(route, concurrency, duration, |elapsed, n| {
        eprint!(
            "\r  {name:<20} {:>4.1}s / {:.0}s  {n:>8} requests",
            elapsed.as_secs_f64(),
            duration.as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    })
    .await;
    eprintln!();
    results
}

/// Sums every sample of one metric family in Prometheus text.
fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn print_table(direct: &Results, through: &Results) {
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    let rows = [
        (
            "requests",
            direct.total().to_string(),
            through.total().to_string(),
        ),
        (
            "success rate",
            format!("{:.1}%", direct.success_rate()),
            format!("{:.1}%", through.success_rate()),
        ),
        (
            "p50 latency",
            ms(direct.percentile(50.0)),
            ms(through.percentile(50.0)),
        ),
        (
            "p99 latency",
            ms(direct.percentile(99.0)),
            ms(through.percentile(99.0)),
        ),
    ];
    println!();
    println!(
        "| {:<14} | {:>12} | {:>20} |",
        "", "direct", "through breakwater"
    );
    println!("|{:-<16}|{:-<14}|{:-<22}|", "", "", "");
    for (name, a, b) in rows {
        println!("| {name:<14} | {a:>12} | {b:>20} |");
    }
    if through.reasons.is_empty() {
        println!("\nbreakwater answered nothing itself: every response came from the service.");
    } else {
        let said: Vec<String> = through
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect();
        println!(
            "\nbreakwater answered itself, saying why in x-breakwater-reason: {}",
            said.join(", ")
        );
    }
}
