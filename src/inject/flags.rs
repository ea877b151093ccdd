//! The flags of `breakwater inject`, and the [`Plan`] they make once checked: the run
//! flags as `breakwater run --check` checks them, the iptables flags as
//! `breakwater init-iptables` parses them, so that a bad flag fails before any YAML
//! is read, not later in a pod.

use clap::{Args, CommandFactory, Parser, ValueEnum};

use super::pod;
use crate::cli::{Cli, Command};

/// Flags of `breakwater inject`: where the YAML comes from, and the sidecar.
#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
    /// A YAML file to inject (repeatable; `-` is stdin) [default: stdin].
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,

    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// The sidecar every injected pod gets: shared by `inject` and `injector`. Flags after
/// these are `breakwater run` flags for the sidecar, checked here as `breakwater run
/// --check` would check them.
#[derive(Args, Debug, Clone)]
pub struct SidecarArgs {
    /// How the app's traffic reaches breakwater: transparent (an init container redirects
    /// the pod's TCP with iptables; needs NET_ADMIN and NET_RAW) or explicit (HTTP_PROXY
    /// on the app containers, no privileges; point the Service's targetPort at 15006).
    #[arg(long, value_enum, default_value = "transparent")]
    pub mode: Mode,

    /// native: an init container with restartPolicy: Always (Kubernetes 1.29+), started
    /// before the app and stopped after it; classic: a plain container, for older clusters.
    #[arg(long, value_enum, default_value = "native")]
    pub sidecar: SidecarForm,

    /// The breakwater image.
    #[arg(long, default_value = concat!("breakwater:", env!("CARGO_PKG_VERSION")))]
    pub image: String,

    /// The image of the iptables init container (the Dockerfile's `init` target).
    #[arg(long, default_value = concat!("breakwater:", env!("CARGO_PKG_VERSION"), "-init"))]
    pub init_image: String,

    /// The port the app listens on [default: the first containerPort of the pod's first
    /// container, else 8080].
    #[arg(long)]
    pub app_port: Option<u16>,

    /// The user id breakwater runs as; iptables leaves its traffic alone.
    #[arg(long, default_value_t = 1717)]
    pub proxy_uid: u32,

    /// Inbound ports iptables does not redirect (comma list).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,

    /// Outbound destination ports iptables does not redirect (comma list).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,

    /// Outbound destination ranges iptables does not redirect (comma list of CIDRs).
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,

    /// A ConfigMap in the pod's namespace holding a policy file: mounted read-only as a
    /// directory at /etc/breakwater/policy (never with subPath, which gets no updates)
    /// and passed as --policy-file, so that an edit of the ConfigMap reaches breakwater
    /// live, as with the chart's policy.configMap.
    #[arg(long, value_name = "NAME")]
    pub policy_configmap: Option<String>,

    /// The key of --policy-configmap that holds the file (the chart's policy.file).
    #[arg(
        long,
        value_name = "KEY",
        default_value = "policy.yaml",
        requires = "policy_configmap"
    )]
    pub policy_configmap_key: String,

    /// `breakwater run` flags for the sidecar, e.g. `--retries 3 --route
    /// payments:8080,timeout=2s` (after inject's own flags, or after `--`).
    #[arg(
        value_name = "RUN_FLAGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub run_flags: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Transparent,
    Explicit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Transparent => "transparent",
            Mode::Explicit => "explicit",
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarForm {
    Native,
    Classic,
}

/// The policy file's ConfigMap (`--policy-configmap`), which every pod mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfigMap {
    /// The ConfigMap, in the pod's namespace.
    pub name: String,
    /// Its key holding the file: the file's name in the mounted directory.
    pub key: String,
}

/// The checked flags: what every pod gets.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub sidecar: SidecarForm,
    pub image: String,
    pub init_image: String,
    pub app_port: Option<u16>,
    pub proxy_uid: u32,
    pub exclude_inbound_ports: Vec<String>,
    pub exclude_outbound_ports: Vec<String>,
    pub exclude_outbound_cidrs: Vec<String>,
    /// The policy file's ConfigMap, if any.
    pub policy: Option<PolicyConfigMap>,
    /// `--flag=value` each, in the order given.
    pub run_flags: Vec<String>,
}

/// `breakwater run` flags that inject sets itself.
const OWN_RUN_FLAGS: [(&str, &str); 6] = [
    ("--inbound-addr", "the inbound port is 15006"),
    ("--outbound-addr", "the outbound port is 15001"),
    ("--admin-addr", "the admin port is 15000"),
    ("--app-addr", "use --app-port"),
    ("--check", "inject checks the flags itself"),
    (
        "--policy-file",
        "use --policy-configmap NAME: inject mounts the ConfigMap and points \
         --policy-file at it",
    ),
];

/// Why inject's flags cannot make a plan; as `breakwater run --check` or
/// `init-iptables` would refuse them in the pod.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{flag} is set by inject ({why})")]
    SetByInject { flag: String, why: &'static str },
    #[error("{0} is a flag of inject: put it before the run flags")]
    InjectFlag(String),
    /// A bad value of one of inject's own flags.
    #[error("invalid value '{value}' for {flag}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("run flags: {0}")]
    RunFlags(crate::config::ConfigError),
    #[error("unexpected parse of the run flags: {0}")]
    Unexpected(String),
    /// clap's message, its first line.
    #[error("{command} flags: {message}")]
    Flags { command: String, message: String },
}

impl Plan {
    /// Checks the flags: the run flags as `breakwater run --check` does, the iptables
    /// flags as `breakwater init-iptables` parses them, so that a bad flag fails here
    /// and not in a pod.
    pub fn from_args(args: SidecarArgs) -> Result<Plan, PlanError> {
        let run_flags = normalize_run_flags(&args.run_flags);
        for flag in &run_flags {
            let name = flag.split('=').next().unwrap_or(flag);
            if let Some((_, why)) = OWN_RUN_FLAGS.iter().find(|(f, _)| *f == name) {
                return Err(PlanError::SetByInject {
                    flag: name.into(),
                    why,
                });
            }
            if SidecarArgs::is_own_flag(name) {
                return Err(PlanError::InjectFlag(name.into()));
            }
        }
        let plan = Plan {
            mode: args.mode,
            sidecar: args.sidecar,
            image: args.image,
            init_image: args.init_image,
            app_port: args.app_port,
            proxy_uid: args.proxy_uid,
            exclude_inbound_ports: args
                .exclude_inbound_ports
                .iter()
                .map(u16::to_string)
                .collect(),
            exclude_outbound_ports: args
                .exclude_outbound_ports
                .iter()
                .map(u16::to_string)
                .collect(),
            exclude_outbound_cidrs: args.exclude_outbound_cidrs,
            policy: policy_configmap(args.policy_configmap, args.policy_configmap_key)?,
            run_flags,
        };
        let run = pod::run_args(&plan, plan.app_port.unwrap_or(pod::DEFAULT_APP_PORT));
        match parse_subcommand(&run)? {
            Command::Run(run_args) => {
                crate::Config::from_args(*run_args).map_err(PlanError::RunFlags)?;
            }
            other => return Err(PlanError::Unexpected(format!("{other:?}"))),
        }
        if plan.mode == Mode::Transparent {
            parse_subcommand(&pod::iptables_args(&plan))?;
        }
        Ok(plan)
    }
}

/// `--policy-configmap` and its key, checked as the API server checks a ConfigMap
/// volume's name and a ConfigMap's keys, so that a pod that could not be created
/// fails here.
fn policy_configmap(
    name: Option<String>,
    key: String,
) -> Result<Option<PolicyConfigMap>, PlanError> {
    let Some(name) = name else {
        return Ok(None);
    };
    if !is_dns_subdomain(&name) {
        return Err(PlanError::Invalid {
            flag: "--policy-configmap",
            value: name,
            reason: "a ConfigMap's name is a DNS-1123 subdomain: at most 253 lower-case \
                     letters, digits, '-' and '.', each part between dots starting and \
                     ending with a letter or digit",
        });
    }
    if !is_configmap_key(&key) {
        return Err(PlanError::Invalid {
            flag: "--policy-configmap-key",
            value: key,
            reason: "a ConfigMap key is 1 to 253 of [-._a-zA-Z0-9], not '.' and not \
                     starting with '..' (it names the file in the mounted directory)",
        });
    }
    Ok(Some(PolicyConfigMap { name, key }))
}

/// A DNS-1123 subdomain: lower-case alphanumeric labels with inner '-', joined by
/// '.', 253 bytes at most.
fn is_dns_subdomain(name: &str) -> bool {
    let label = |l: &str| {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        l.starts_with(alnum) && l.ends_with(alnum) && l.chars().all(|c| alnum(c) || c == '-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// A ConfigMap key, as Kubernetes validates it: `[-._a-zA-Z0-9]+`, 253 bytes at
/// most, and not a path to the directory or its parent.
fn is_configmap_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && key != "."
        && !key.starts_with("..")
}

impl SidecarArgs {
    /// Whether `--name` is a flag of inject's (the sidecar's or `-f`), not of `run`.
    pub fn is_own_flag(name: &str) -> bool {
        let Some(long) = name.strip_prefix("--") else {
            return false;
        };
        let cli = Cli::command();
        cli.find_subcommand("inject")
            .is_some_and(|c| c.get_arguments().any(|a| a.get_long() == Some(long)))
    }
}

/// `breakwater <args>` parsed by the real command line, the first line of clap's
/// message on error.
fn parse_subcommand(args: &[String]) -> Result<Command, PlanError> {
    let argv = std::iter::once("breakwater").chain(args.iter().map(String::as_str));
    Cli::try_parse_from(argv)
        .map(|cli| cli.command)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid flags");
            PlanError::Flags {
                command: args.first().cloned().unwrap_or_default(),
                message: first.trim_start_matches("error: ").to_string(),
            }
        })
}

/// `--retries 3` → `--retries=3`, so the sidecar's args read one flag per line, as the
/// chart renders them.
fn normalize_run_flags(flags: &[String]) -> Vec<String> {
    let cli = Cli::command();
    let takes_value = |name: &str| {
        cli.find_subcommand("run").is_some_and(|run| {
            run.get_arguments()
                .any(|a| a.get_long() == Some(name) && a.get_action().takes_values())
        })
    };
    let mut out = Vec::with_capacity(flags.len());
    let mut it = flags.iter().peekable();
    while let Some(flag) = it.next() {
        match flag.strip_prefix("--") {
            Some(name) if !name.contains('=') && takes_value(name) => match it.next() {
                Some(value) => out.push(format!("{flag}={value}")),
                None => out.push(flag.clone()),
            },
            _ => out.push(flag.clone()),
        }
    }
    out
}
