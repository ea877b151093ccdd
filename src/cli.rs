//! The command line: `breakwater run | demo | init-iptables | inject`. Wiring:
//! the flags of each subcommand live with what they configure.

use clap::{Parser, Subcommand};

use crate::config::cli::{DemoArgs, InitIptablesArgs, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "breakwater",
    version,
    about = "A sidecar resilience proxy for HTTP."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Show breakwater's policies at work, on loopback, in about 30 s.
    Demo(DemoArgs),
    /// Redirect the pod's TCP traffic to breakwater with iptables (an init container).
    ///
    /// Applies the rules idempotently; --clean removes them, --dry-run prints them.
    InitIptables(InitIptablesArgs),
    /// Add breakwater to the pods in Kubernetes YAML (-f FILE or stdin).
    Inject(crate::inject::InjectArgs),
    /// Take breakwater out of pods that inject put it in.
    Uninject(crate::inject::UninjectArgs),
    /// Show a running breakwater's destinations and endpoints, from its admin port.
    Status(crate::status::StatusArgs),
    /// Serve the admission webhook that injects breakwater into new pods.
    Injector(Box<crate::injector::InjectorArgs>),
}
