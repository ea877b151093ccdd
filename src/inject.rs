//! `breakwater inject`: Kubernetes YAML on stdin, the same YAML with breakwater added
//! to every pod spec on stdout, as the Helm chart would add it
//! (`kubectl get deploy web -o yaml | breakwater inject | kubectl apply -f -`).
//!
//! This module owns the command: its flags, splitting the stream into documents,
//! finding pod specs by kind, and all-or-nothing output. [`pod`] changes one pod spec;
//! [`yaml`] reads and writes the documents.

pub mod pod;
pub mod yaml;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, ValueEnum};

use crate::config::cli::{Cli, Command};
use pod::Outcome;
use yaml::Node;

/// Flags of `breakwater inject`. Flags after inject's own are `breakwater run` flags
/// for the sidecar, checked here as `breakwater run --check` would check them.
#[derive(Args, Debug, Clone)]
pub struct InjectArgs {
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
    /// `--flag=value` each, in the order given.
    pub run_flags: Vec<String>,
}

/// `breakwater run` flags that inject sets itself.
const OWN_RUN_FLAGS: [(&str, &str); 5] = [
    ("--inbound-addr", "the inbound port is 15006"),
    ("--outbound-addr", "the outbound port is 15001"),
    ("--admin-addr", "the admin port is 15000"),
    ("--app-addr", "use --app-port"),
    ("--check", "inject checks the flags itself"),
];

impl Plan {
    /// Checks the flags: the run flags as `breakwater run --check` does, the iptables
    /// flags as `breakwater init-iptables` parses them, so that a bad flag fails here
    /// and not in a pod.
    pub fn from_args(args: InjectArgs) -> Result<Plan, String> {
        let run_flags = normalize_run_flags(&args.run_flags);
        for flag in &run_flags {
            let name = flag.split('=').next().unwrap_or(flag);
            if let Some((_, why)) = OWN_RUN_FLAGS.iter().find(|(f, _)| *f == name) {
                return Err(format!("{name} is set by inject ({why})"));
            }
            if InjectArgs::is_own_flag(name) {
                return Err(format!(
                    "{name} is a flag of inject: put it before the run flags"
                ));
            }
        }
        let plan = Plan {
            mode: args.mode,
            sidecar: args.sidecar,
            image: args.image,
            init_image: args.init_image,
            app_port: args.app_port,
            proxy_uid: args.proxy_uid,
            exclude_inbound_ports: args.exclude_inbound_ports.iter().map(u16::to_string).collect(),
            exclude_outbound_ports: args.exclude_outbound_ports.iter().map(u16::to_string).collect(),
            exclude_outbound_cidrs: args.exclude_outbound_cidrs,
            run_flags,
        };
        let run = pod::run_args(&plan, plan.app_port.unwrap_or(pod::DEFAULT_APP_PORT));
        match parse_subcommand(&run)? {
            Command::Run(run_args) => {
                crate::Config::from_args(*run_args).map_err(|e| format!("run flags: {e}"))?;
            }
            other => return Err(format!("unexpected parse of the run flags: {other:?}")),
        }
        if plan.mode == Mode::Transparent {
            parse_subcommand(&pod::iptables_args(&plan))?;
        }
        Ok(plan)
    }
}

impl InjectArgs {
    fn is_own_flag(name: &str) -> bool {
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
fn parse_subcommand(args: &[String]) -> Result<Command, String> {
    let argv = std::iter::once("breakwater").chain(args.iter().map(String::as_str));
    Cli::try_parse_from(argv)
        .map(|cli| cli.command)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid flags");
            format!(
                "{} flags: {}",
                args.first().map_or("", String::as_str),
                first.trim_start_matches("error: ")
            )
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

/// Why a stream could not be injected: which document, where.
#[derive(Debug, PartialEq)]
pub struct InjectError {
    /// 1-based, counting documents in the stream.
    pub document: usize,
    /// 1-based line in the whole stream.
    pub line: usize,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}, line {}", self.document, self.line)?;
        if let Some(column) = self.column {
            write!(f, ", column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The injected stream and notes for the user (skipped pods, things to do by hand).
#[derive(Debug)]
pub struct Injected {
    pub output: String,
    pub notes: Vec<String>,
}

/// One document's text, from its `---` line (if any) to the next one.
struct Chunk<'a> {
    text: &'a str,
    first_line: usize,
    marked: bool,
}

/// Splits a stream at its `---` lines. At the start of a line, `---` followed by
/// nothing or a space always starts a document (inside a block scalar too), so this
/// is the parser's own split, and it keeps each document's text for passing it
/// through untouched.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut marked) = (0, 1, false);
    let mut offset = 0;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare.strip_prefix("---").is_some_and(|rest| {
            rest.is_empty() || rest.starts_with([' ', '\t'])
        });
        if is_marker && (offset > start || marked) {
            chunks.push(Chunk {
                text: &input[start..offset],
                first_line: start_line,
                marked,
            });
        }
        if is_marker {
            (start, start_line, marked) = (offset, i + 1, true);
        }
        offset += line.len();
    }
    if offset > start || marked {
        chunks.push(Chunk {
            text: &input[start..],
            first_line: start_line,
            marked,
        });
    }
    chunks
}

/// Injects every pod spec in `input`. Documents without one come out as they went in,
/// byte for byte; documents with one are written anew.
pub fn inject_stream(input: &str, plan: &Plan) -> Result<Injected, InjectError> {
    let mut output = String::with_capacity(input.len() * 2);
    let mut notes = Vec::new();
    let mut document = 0;
    for chunk in split_documents(input) {
        let parsed = yaml::parse(chunk.text);
        if !chunk.marked && matches!(parsed, Ok(None)) {
            // Comments or blank lines before the first `---`: not a document.
            output.push_str(chunk.text);
            continue;
        }
        document += 1;
        // An error at the end of the text (an unclosed bracket) is on its last line.
        let last_line = chunk.first_line + chunk.text.lines().count().max(1) - 1;
        let fail = |line: usize, column: Option<usize>, message: String| InjectError {
            document,
            line: (chunk.first_line + line - 1).min(last_line),
            column,
            message,
        };
        let node = parsed.map_err(|e| fail(e.line, Some(e.column), e.message))?;
        let mut changed = false;
        let mut node = node;
        if let Some(root) = node.as_mut() {
            changed = inject_document(root, plan, &mut notes)
                .map_err(|message| fail(1, None, message))?;
        }
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        match node {
            Some(root) if changed => {
                if chunk.marked {
                    output.push_str("---\n");
                }
                output.push_str(&yaml::emit(&root));
            }
            _ => output.push_str(chunk.text),
        }
    }
    if plan.mode == Mode::Explicit && notes.iter().any(|n| n.starts_with("injected")) {
        notes.push(format!(
            "explicit mode: point each Service's targetPort at {} (breakwater's inbound \
             port) so that inbound traffic passes through breakwater",
            pod::INBOUND_PORT
        ));
    }
    Ok(Injected { output, notes })
}

/// Where a kind keeps its pod template (the Pod itself for a Pod).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects one document (and the items of a `List`); whether anything changed.
fn inject_document(doc: &mut Node, plan: &Plan, notes: &mut Vec<String>) -> Result<bool, String> {
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or("").to_string();
    if kind == "List" {
        let mut changed = false;
        if let Some(Node::Seq(items)) = doc.get_mut("items") {
            for (i, item) in items.iter_mut().enumerate() {
                changed |= inject_document(item, plan, notes).map_err(|e| format!("items[{i}]: {e}"))?;
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let name = doc
        .at(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("(unnamed)");
    let what = format!("{kind}/{name}");
    let mut template = doc;
    for key in path {
        template = match template.get_mut(key) {
            Some(next @ Node::Map(_)) => next,
            _ => return Err(format!("{what}: {} is missing or not a mapping", path.join("."))),
        };
    }
    match pod::inject(template, plan).map_err(|e| format!("{what}: {e}"))? {
        Outcome::Skipped(why) => {
            notes.push(format!("skipped {what}: {why}"));
            Ok(false)
        }
        Outcome::Injected => {
            notes.push(format!("injected {what}"));
            if matches!(kind.as_str(), "Job" | "CronJob") && plan.sidecar == SidecarForm::Classic {
                notes.push(format!(
                    "{what}: with a classic sidecar the Job completes only when breakwater \
                     stops too: end the main container with `curl -X POST \
                     localhost:{}/shutdown` (native sidecars stop with the Job by themselves)",
                    pod::ADMIN_PORT
                ));
            }
            Ok(true)
        }
    }
}

/// Runs the subcommand: reads all of stdin, writes all of stdout or nothing.
pub fn main(args: InjectArgs) -> ExitCode {
    let plan = match Plan::from_args(args) {
        Ok(plan) => plan,
        Err(e) => return fail(&e),
    };
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "breakwater inject: reading YAML from stdin \
             (e.g. kubectl get deploy web -o yaml | breakwater inject | kubectl apply -f -)"
        );
    }
    let mut input = String::new();
    if let Err(e) = stdin.read_to_string(&mut input) {
        return fail(&format!("cannot read stdin: {e}"));
    }
    let injected = match inject_stream(&input, &plan) {
        Ok(injected) => injected,
        Err(e) => return fail(&e.to_string()),
    };
    for note in &injected.notes {
        eprintln!("breakwater inject: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(injected.output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        return fail(&format!("cannot write stdout: {e}"));
    }
    ExitCode::SUCCESS
}

fn fail(message: &str) -> ExitCode {
    eprintln!("breakwater inject: {message}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests;
