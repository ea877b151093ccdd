//! The layers of `src/`, enforced: every `crate::` path in a module points to
//! its own layer or one below, and no modules import each other in a circle.
//! The layers, lowest first (README, "Architecture"):
//!
//! 0. leaves: the vocabulary every layer shares, importing nothing of ours
//!    (not even each other)
//! 1. metrics: the metric families, whose label sets come from the leaves'
//!    vocabulary (`error::Reason`)
//! 2. policies: pure state machines and rules
//! 3. configuration: flags become a validated `Config`
//! 4. mechanism: sockets, pools, bodies, headers, TLS, listeners, probes —
//!    no destination state, no pipeline
//! 5. per-destination state: the registry, endpoints, their breakers
//! 6. the request pipeline: inbound/outbound → exchange → attempts → forward
//! 7. wiring: the process, the admin endpoint, the demo, `inject`, `injector`, the CLI

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's layer, by its path under `src/` (the longest prefix wins).
const LAYERS: &[(&str, usize)] = &[
    ("addr", 0),
    ("error", 0),
    ("units", 0),
    ("drain", 0),
    ("executor", 0),
    ("telemetry", 0),
    ("metrics", 1),
    ("policy", 2),
    ("config", 3),
    ("connect", 4),
    ("transport", 4),
    ("tls", 4),
    ("trace", 4),
    ("listener", 4),
    ("interception", 4),
    ("tunnel", 4),
    ("health", 4),
    ("destination", 4),
    ("discovery", 4),
    ("upstream", 5),
    ("inbound", 6),
    ("outbound", 6),
    ("context", 6),
    ("exchange", 6),
    ("attempts", 6),
    ("forward", 6),
    ("body", 6),
    ("accounting", 6),
    ("rescue", 6),
    ("fault", 6),
    ("mirror", 6),
    ("app", 7),
    ("admin", 7),
    ("reload", 7),
    ("demo", 7),
    ("inject", 7),
    ("injector", 7),
    ("status", 7),
    ("cli", 7),
    ("lib", 7),
    ("main", 7),
];

const NAMES: [&str; 8] = [
    "leaves",
    "metrics",
    "policies",
    "configuration",
    "mechanism",
    "per-destination state",
    "pipeline",
    "wiring",
];

/// What `lib.rs` re-exports at the crate root, and the module it comes from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("Proxy", "app"),
    ("BoundAddrs", "app"),
    ("RunReport", "app"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}/")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, layer)| *layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that the build sees outside tests: comments and the
/// `#[cfg(test)]` module (at the end of a file, by this code base's habit) go.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// The modules a `crate::` path names: `crate::a::b::C` is `a/b` when that is a
/// module, else `a`; `crate::{x, y}` names each.
fn targets(code: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let preceded_ok = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = after;
        if !preceded_ok {
            continue;
        }
        let paths: Vec<String> = if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            vec![after[..end].to_string()]
        };
        for path in paths {
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let Some(first) = segments.first() else {
                continue;
            };
            if let Some((_, module)) = ROOT_REEXPORTS.iter().find(|(name, _)| name == first) {
                found.push(module.to_string());
                continue;
            }
            let mut best = None;
            for n in 1..=segments.len() {
                let candidate = segments[..n].join("/");
                if modules.contains(&candidate) {
                    best = Some(candidate);
                }
            }
            if let Some(module) = best {
                found.push(module);
            }
        }
    }
    found
}

struct Graph {
    modules: BTreeSet<String>,
    /// module → (imported module, line)
    edges: BTreeMap<String, Vec<(String, usize)>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |path: &Path| {
        let rel = path.strip_prefix(&src).expect("under src");
        rel.with_extension("").to_string_lossy().replace('\\', "/")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, code) in code_lines(&text) {
            for target in targets(&code, &modules) {
                let within = target == module || module.starts_with(&format!("{target}/"));
                if !within {
                    edges
                        .entry(module.clone())
                        .or_default()
                        .push((target, line));
                }
            }
        }
    }
    Graph { modules, edges }
}

#[test]
fn every_module_has_a_layer() {
    let g = graph();
    let unplaced: Vec<&String> = g.modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer (add them to LAYERS in tests/tests/layers.rs): {unplaced:?}"
    );
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let g = graph();
    let mut upward = Vec::new();
    for (module, targets) in &g.edges {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for (target, line) in targets {
            let Some(theirs) = layer_of(target) else {
                continue;
            };
            if theirs > own {
                upward.push(format!(
                    "src/{module}.rs:{line}: {} imports {target} ({})",
                    NAMES[own], NAMES[theirs]
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn leaves_import_nothing_of_ours() {
    let g = graph();
    let mut found = Vec::new();
    for (module, targets) in &g.edges {
        if layer_of(module) != Some(0) {
            continue;
        }
        for (target, line) in targets {
            found.push(format!("src/{module}.rs:{line}: a leaf imports {target}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let g = graph();
    // Depth-first search; a back edge closes a cycle.
    fn visit<'a>(
        m: &'a str,
        g: &'a Graph,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut cycle: Vec<&str> = path[at..].to_vec();
            cycle.push(m);
            cycles.push(cycle.join(" -> "));
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m);
        for (target, _) in g.edges.get(m).map(Vec::as_slice).unwrap_or_default() {
            visit(target, g, path, done, cycles);
        }
        path.pop();
        done.insert(m);
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for m in &g.modules {
        visit(m, &g, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_path_reader_sees_uses_groups_and_reexports() {
    let modules: BTreeSet<String> = ["config", "config/cli", "error", "app", "upstream"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        targets("use crate::config::cli::RunArgs;", &modules),
        ["config/cli"]
    );
    assert_eq!(
        targets("use crate::{Config, Proxy};", &modules),
        ["config", "app"]
    );
    assert_eq!(
        targets(
            "let x = crate::upstream::X::new(crate::error::E);",
            &modules
        ),
        ["upstream", "error"]
    );
    assert!(targets("use notcrate::config;", &modules).is_empty());
    let code = code_lines("use a;\n// crate::app\n#[cfg(test)]\nuse crate::app;");
    assert_eq!(code.len(), 1);
}
