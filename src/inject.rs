//! `breakwater inject`: Kubernetes YAML from files or stdin, the same YAML with
//! breakwater added to every pod spec on stdout, as the Helm chart would add it
//! (`kubectl get deploy web -o yaml | breakwater inject | kubectl apply -f -`);
//! `breakwater uninject` takes it out again.
//!
//! This module owns the command: splitting the stream into documents, finding pod
//! specs by kind, and all-or-nothing output. [`flags`] checks the flags, [`pod`]
//! changes one pod spec, [`yaml`] reads and writes the documents.

pub mod flags;
pub mod json;
pub mod pod;
pub mod yaml;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

pub use flags::{InjectArgs, Mode, Plan, PolicyConfigMap, SidecarArgs, SidecarForm};
use pod::Outcome;
use yaml::Node;

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
        let is_marker = bare
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
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

/// A document of a stream that is not YAML (as [`documents`] reads it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    /// 1-based line in the whole stream.
    pub line: usize,
    pub message: String,
}

/// Why a document's pod template could not be injected; names the object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum DocumentError {
    #[error("items[{index}]: {source}")]
    Item {
        index: usize,
        source: Box<DocumentError>,
    },
    #[error("{what}: {path} is missing or not a mapping")]
    NoTemplate { what: String, path: String },
    #[error("{what}: {source}")]
    Pod { what: String, source: pod::PodError },
}

/// What is done to each pod spec of a stream.
#[derive(Clone, Copy)]
enum Op<'a> {
    Inject(&'a Plan),
    Uninject,
}

/// Injects every pod spec in `input`. Documents without one come out as they went in,
/// byte for byte; documents with one are written anew.
pub fn inject_stream(input: &str, plan: &Plan) -> Result<Injected, InjectError> {
    let mut injected = process_stream(input, Op::Inject(plan))?;
    let notes = &mut injected.notes;
    let injected_any = notes.iter().any(|n| n.starts_with("injected"));
    if let Some(policy) = plan.policy.as_ref().filter(|_| injected_any) {
        notes.push(format!(
            "ConfigMap {name} must exist in the pods' namespace, with the policy file \
             under key {key}, before they can start (kubectl create configmap {name} \
             --from-file={key}=policy.yaml); editing it changes the policy live, \
             without a restart",
            name = policy.name,
            key = policy.key,
        ));
    }
    if plan.mode == Mode::Explicit && injected_any {
        notes.push(format!(
            "explicit mode: point each Service's targetPort at {} (breakwater's inbound \
             port) so that inbound traffic passes through breakwater",
            pod::INBOUND_PORT
        ));
    }
    Ok(injected)
}

/// Takes breakwater out of every pod spec in `input` that has it, restoring what
/// [`inject_stream`] changed; everything else comes out byte for byte.
pub fn uninject_stream(input: &str) -> Result<Injected, InjectError> {
    process_stream(input, Op::Uninject)
}

fn process_stream(input: &str, op: Op<'_>) -> Result<Injected, InjectError> {
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
            changed =
                process_document(root, op, &mut notes).map_err(|e| fail(1, None, e.to_string()))?;
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
    Ok(Injected { output, notes })
}

/// Parses a stream into its documents (empty ones left out), as inject reads it: for
/// tools and tests that look at manifests, e.g. those `helm template` renders.
pub fn documents(input: &str) -> Result<Vec<Node>, YamlError> {
    let mut docs = Vec::new();
    for chunk in split_documents(input) {
        match yaml::parse(chunk.text) {
            Ok(Some(node)) => docs.push(node),
            Ok(None) => {}
            Err(e) => {
                let line = chunk.first_line + e.line - 1;
                return Err(YamlError {
                    line,
                    message: e.message,
                });
            }
        }
    }
    Ok(docs)
}

/// Where a kind keeps its pod template (the Pod itself for a Pod).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects (or uninjects) one document and the items of a `List`; whether anything
/// changed.
fn process_document(
    doc: &mut Node,
    op: Op<'_>,
    notes: &mut Vec<String>,
) -> Result<bool, DocumentError> {
    let kind = doc
        .get("kind")
        .and_then(Node::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" {
        let mut changed = false;
        if let Some(Node::Seq(items)) = doc.get_mut("items") {
            for (i, item) in items.iter_mut().enumerate() {
                changed |= process_document(item, op, notes).map_err(|e| DocumentError::Item {
                    index: i,
                    source: Box::new(e),
                })?;
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
            _ => {
                return Err(DocumentError::NoTemplate {
                    what,
                    path: path.join("."),
                });
            }
        };
    }
    let plan = match op {
        Op::Inject(plan) => plan,
        Op::Uninject => {
            let outcome = pod::uninject(template).map_err(|source| DocumentError::Pod {
                what: what.clone(),
                source,
            })?;
            return Ok(match outcome {
                Outcome::Skipped(why) => {
                    notes.push(format!("left {what} alone: {why}"));
                    false
                }
                Outcome::Injected => {
                    notes.push(format!("uninjected {what}"));
                    true
                }
            });
        }
    };
    let injected = pod::inject(template, plan).map_err(|source| DocumentError::Pod {
        what: what.clone(),
        source,
    })?;
    match injected {
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

/// Runs `inject`: reads every input whole, then writes all of stdout or nothing.
pub fn main(args: InjectArgs) -> ExitCode {
    let program = "breakwater inject";
    if let Some(first) = args.sidecar.run_flags.first()
        && !first.starts_with('-')
    {
        return fail(
            program,
            &format!("{first} is not a flag: to inject a file, use -f {first}"),
        );
    }
    let plan = match Plan::from_args(args.sidecar) {
        Ok(plan) => plan,
        Err(e) => return fail(program, &e.to_string()),
    };
    let example = "kubectl get deploy web -o yaml | breakwater inject | kubectl apply -f -";
    run_on_inputs(program, &args.files, example, |text| {
        inject_stream(text, &plan)
    })
}

/// Flags of `breakwater uninject`.
#[derive(clap::Args, Debug, Clone)]
pub struct UninjectArgs {
    /// A YAML file to take breakwater out of (repeatable; `-` is stdin) [default: stdin].
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
}

/// Runs `uninject`, as [`main`] runs `inject`.
pub fn uninject_main(args: UninjectArgs) -> ExitCode {
    let example = "kubectl get deploy web -o yaml | breakwater uninject | kubectl apply -f -";
    run_on_inputs("breakwater uninject", &args.files, example, uninject_stream)
}

/// Reads each input (stdin when none is named, or for `-`), processes it, and writes
/// the results to stdout, one stream after the other; an error in any input writes
/// nothing.
fn run_on_inputs(
    program: &str,
    files: &[std::path::PathBuf],
    example: &str,
    process: impl Fn(&str) -> Result<Injected, InjectError>,
) -> ExitCode {
    let stdin_only = [std::path::PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    let mut output = String::new();
    let mut notes = Vec::new();
    for file in files {
        let (name, input) = if file.as_os_str() == "-" {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("{program}: reading YAML from stdin (e.g. {example})");
            }
            let mut input = String::new();
            if let Err(e) = stdin.read_to_string(&mut input) {
                return fail(program, &format!("cannot read stdin: {e}"));
            }
            ("stdin".to_string(), input)
        } else {
            match std::fs::read_to_string(file) {
                Ok(input) => (file.display().to_string(), input),
                Err(e) => return fail(program, &format!("{}: {e}", file.display())),
            }
        };
        let done = match process(&input) {
            Ok(done) => done,
            Err(e) if files.len() > 1 => return fail(program, &format!("{name}: {e}")),
            Err(e) => return fail(program, &e.to_string()),
        };
        if !output.is_empty() && !done.output.is_empty() {
            // The next file's documents, as `kubectl apply -f a -f b` reads them.
            if !output.ends_with('\n') {
                output.push('\n');
            }
            if !done.output.starts_with("---") {
                output.push_str("---\n");
            }
        }
        output.push_str(&done.output);
        notes.extend(done.notes);
    }
    for note in &notes {
        eprintln!("{program}: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        return fail(program, &format!("cannot write stdout: {e}"));
    }
    ExitCode::SUCCESS
}

fn fail(program: &str, message: &str) -> ExitCode {
    eprintln!("{program}: {message}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests;
