//! `breakwater demo`: the real proxy, in this process, in front of services it
//! starts on loopback, each scene showing one policy at work. A scene drives
//! the same paced load straight at its service and then through breakwater's
//! outbound listener (configured by `run` flags, printed), and prints a
//! before/after table and what explains it:
//!
//! - `flaky` (`demo/flaky.rs`): 503s and dropped connections, and retries;
//! - `outage` (`demo/outage.rs`): the service goes down hard and returns, and
//!   the circuit breaker answers at once, then closes;
//! - `slow-tail` (`demo/slow_tail.rs`): stalled answers, and the per-try timeout
//!   and hedging;
//! - `overload` (`demo/overload.rs`): more load than the service can take, and
//!   `--max-concurrent auto` shedding it.
//!
//! `demo` runs those four in about 30 s; `--scene NAME` runs one.
//! `--scene strangler` (`demo/strangler.rs`, also `--strangler`) is a scene of
//! its own, not in the four: an old and a new service, part of the old one's
//! traffic split and the rest mirrored to the new one, and a table of where
//! requests went by breakwater's counters and by the services' own.

mod flaky;
mod load;
mod outage;
mod overload;
mod scene;
mod scrape;
mod service;
mod slow_tail;
mod strangler;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::cli::{DemoArgs, Scene};
use scene::{Setup, Style};

/// The strangler scene's load time unless `--duration` says otherwise.
const STRANGLER_DURATION: Duration = Duration::from_secs(10);

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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("breakwater demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let setup = Setup {
        style: Style::detect(),
        clients: args.concurrency.max(1),
        duration: args.duration,
    };
    let started = Instant::now();
    match args.scene() {
        Scene::All => {
            let total = (flaky::load_time(&setup)
                + outage::load_time(&setup)
                + slow_tail::load_time(&setup)
                + overload::load_time(&setup))
            .as_secs_f64();
            println!(
                "breakwater demo: four scenes, about {total:.0} s of load. Each drives the same \
                 load straight at a service on loopback, then through breakwater (this process, \
                 on the flags shown). --scene NAME runs one."
            );
            flaky::run(&setup).await?;
            outage::run(&setup).await?;
            slow_tail::run(&setup).await?;
            overload::run(&setup).await?;
            println!(
                "The four scenes took {:.1} s. Also: breakwater demo --scene strangler.",
                started.elapsed().as_secs_f64()
            );
        }
        Scene::Flaky => flaky::run(&setup).await?,
        Scene::Outage => outage::run(&setup).await?,
        Scene::SlowTail => slow_tail::run(&setup).await?,
        Scene::Overload => overload::run(&setup).await?,
        Scene::Strangler => {
            let duration = args.duration.unwrap_or(STRANGLER_DURATION);
            strangler::run(setup.clients, duration).await?;
        }
    }
    Ok(())
}
