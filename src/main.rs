//! The `breakwater` binary: parse flags, start logging and the runtime, run.

use std::process::ExitCode;

use breakwater::cli::{Cli, Command};
use breakwater::config::cli::RunArgs;
use breakwater::{Config, Proxy, demo, telemetry};
use clap::Parser;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Demo(args) => demo::main(args),
        Command::InitIptables(args) => breakwater::interception::iptables::main(args),
        Command::Inject(args) => breakwater::inject::main(args),
        Command::Uninject(args) => breakwater::inject::uninject_main(args),
        Command::Injector(args) => breakwater::injector::main(*args),
        Command::Status(args) => breakwater::status::main(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let check = args.check;
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if check {
        // The policy file and the certificates too: --check refuses what start-up would.
        let effective = match breakwater::app::check(&config) {
            Ok(effective) => effective,
            Err(e) => return fail(&e.to_string()),
        };
        println!("{}", breakwater::app::describe(&effective));
        for warning in &effective.warnings {
            eprintln!("breakwater: warning: {warning}");
        }
        eprintln!("breakwater: configuration ok");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = telemetry::init(config.log_format, &config.log_level, config.access_log) {
        return fail(&e.to_string());
    }
    for warning in &config.warnings {
        tracing::warn!(%warning, "configuration");
    }
    let runtime = match build_runtime(config.threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let proxy = match Proxy::bind(config).await {
            Ok(proxy) => proxy,
            Err(e) => return fail(&e.to_string()),
        };
        let shutdown = proxy.shutdown_handle();
        tokio::spawn(async move {
            loop {
                breakwater::drain::shutdown_signal().await;
                shutdown.request();
            }
        });
        let report = proxy.run().await;
        if report.abandoned > 0 {
            tracing::warn!(abandoned = report.abandoned, "exiting with work abandoned");
        }
        ExitCode::SUCCESS
    })
}

/// One worker runs on the current thread: no cross-thread wake-ups, the cheapest
/// setup for a sidecar given one CPU.
fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().thread_name("breakwater").build()
}

fn fail(message: &str) -> ExitCode {
    eprintln!("breakwater: {message}");
    ExitCode::from(2)
}
