//! Every policy key is defined once, in `breakwater::config::keys`; these tests hold
//! each place that names the keys to that table: the `run` flags (with their env
//! variables and defaults), `--route` and the policy file, the chart (values.yaml
//! and its comments, values.schema.json, the templates, and what `helm template`
//! renders), `inject`, and the README's "Policy keys" table. A surface that lacks a
//! key, or a default that differs from the table's, fails here naming the key.
//!
//! The chart tests need helm, as tests/tests/kubernetes.rs does (and skip without
//! it, saying so, except under CI=true).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use breakwater::cli::{Cli, Command as Subcommand};
use breakwater::config::RouteOverride;
use breakwater::config::keys::{self, Applies, MATCH_KEYS, POLICY_KEYS, PolicyKey, Scope};
use breakwater::inject::Plan;
use breakwater::inject::yaml::Node;
use clap::{CommandFactory, Parser};

use crate::kubernetes as k8s;
use crate::support;

/// The keys that are also `run` flags and policy-file defaults.
fn flag_keys() -> impl Iterator<Item = &'static PolicyKey> {
    POLICY_KEYS.iter().filter(|k| k.scope == Scope::Everywhere)
}

/// Every key a route may set: what it matches and the policy keys.
fn route_keys() -> impl Iterator<Item = &'static PolicyKey> {
    MATCH_KEYS.iter().chain(POLICY_KEYS)
}

/// `retry-budget-min` → `BREAKWATER_RETRY_BUDGET_MIN`.
fn env_name(key: &str) -> String {
    format!("BREAKWATER_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// `path-prefix` → `pathPrefix`: a route key as the chart's values spell it.
fn camel(key: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in key.chars() {
        match c {
            '-' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// The chart value path of a flag key (`resilience.timeout`), split.
fn chart_path(key: &PolicyKey) -> Vec<&'static str> {
    key.chart
        .unwrap_or_else(|| panic!("{} has a flag but no chart value", key.name))
        .split('.')
        .collect()
}

/// The subcommand `run` as clap has it.
fn run_command() -> clap::Command {
    Cli::command()
        .find_subcommand("run")
        .cloned()
        .expect("a run subcommand")
}

fn binary(args: &[String], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(support::binary());
    // Only the variables a test sets reach the binary.
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("BREAKWATER_")) {
        cmd.env_remove(name);
    }
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().expect("run the breakwater binary")
}

/// `breakwater run --check <args>`: the effective configuration it prints, as JSON.
fn check(args: &[String], env: &[(String, String)], what: &str) -> serde_json::Value {
    let mut all = vec!["run".to_string(), "--check".to_string()];
    all.extend(args.iter().cloned());
    let out = binary(&all, env);
    assert!(
        out.status.success(),
        "{what}: breakwater {} failed: {}",
        all.join(" "),
        k8s::text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: run --check printed no JSON ({e}): {}",
            k8s::text(&out.stdout)
        )
    })
}

/// A fresh file under the target dir with `text`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        TempFile(k8s::temp_file(
            &format!("keys-{}-{name}", k8s::unique()),
            text,
        ))
    }

    fn arg(&self, flag: &str) -> String {
        format!("--{flag}={}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A YAML scalar for a key's example, quoted so that the policy file reads it as written.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

// ------------------------------------------------------------------ the run flags

#[test]
fn every_flag_key_is_a_run_flag_with_its_env_variable_and_default() {
    let run = run_command();
    let flag = |name: &str| run.get_arguments().find(|a| a.get_long() == Some(name));
    for key in flag_keys() {
        let arg = flag(key.name).unwrap_or_else(|| {
            panic!(
                "`breakwater run` has no --{}: keys.rs says it is a flag",
                key.name
            )
        });
        assert!(
            arg.get_action().takes_values(),
            "--{} takes a value",
            key.name
        );
        let env = env_name(key.name);
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(env.as_str()),
            "--{}'s env variable",
            key.name
        );
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let want: Vec<String> = key.default.map(str::to_string).into_iter().collect();
        assert_eq!(
            defaults, want,
            "--{}'s default differs from keys.rs (None: no default)",
            key.name
        );
        if key.default.is_none() {
            // --help says so, since clap prints no [default: ...] of its own.
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("[default: none"),
                "--{}'s help should say [default: none...]: {help}",
                key.name
            );
        }
    }
    for name in [
        "breaker-mode",
        "bulkhead-mode",
        "retry-budget-mode",
        "policy-file",
    ] {
        let arg = flag(name).unwrap_or_else(|| panic!("`breakwater run` has no --{name}"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some(env_name(name).as_str())
        );
    }
    // A key with a flag is scope Everywhere: keys.rs may not call it route-only.
    for key in POLICY_KEYS.iter().filter(|k| k.scope == Scope::RouteOnly) {
        assert!(
            flag(key.name).is_none(),
            "--{} is a run flag, but keys.rs says the key is route-only",
            key.name
        );
    }
}

/// The JSON `run --check` prints, without the file it read.
fn without_policy_file(mut config: serde_json::Value) -> serde_json::Value {
    if let Some(map) = config.as_object_mut() {
        map.remove("policy_file");
    }
    config
}

#[test]
fn a_flag_key_means_the_same_as_flag_env_variable_and_policy_file_default() {
    let baseline = check(&[], &[], "defaults");
    for key in flag_keys() {
        let what = format!("{}={}", key.name, key.example);
        let by_flag = check(&[format!("--{what}")], &[], &what);
        assert_ne!(
            by_flag, baseline,
            "--{what} changes nothing: the example should differ from the default"
        );
        let by_env = check(
            &[],
            &[(env_name(key.name), key.example.to_string())],
            &format!("{}={}", env_name(key.name), key.example),
        );
        assert_eq!(by_env, by_flag, "{} and --{}", env_name(key.name), key.name);
        let file = TempFile::new(
            "defaults.yaml",
            &format!("defaults:\n  {}: {}\n", key.name, quoted(key.example)),
        );
        let by_file = check(
            &[file.arg("policy-file")],
            &[],
            &format!("policy file defaults: {what}"),
        );
        assert_eq!(
            without_policy_file(by_file),
            without_policy_file(by_flag),
            "the policy file's `defaults: {{{}: {}}}` and --{what}",
            key.name,
            key.example
        );
    }
}

// ------------------------------------------------------------ routes and the file

/// `--route` with `key` at its example, on a route of a direction it applies to.
fn route_spec(key: &PolicyKey) -> String {
    let with = keys::companion(key.name).map_or(String::new(), |(k, v)| format!(",{k}={v}"));
    match (key.name, key.applies) {
        ("direction", _) => format!("*,direction={}", key.example),
        (_, Applies::Inbound) => format!("*,direction=inbound,{}={}", key.name, key.example),
        _ => format!("*,{}={}{with}", key.name, key.example),
    }
}

/// `breakwater run <args>` as the binary's command line parses it.
fn parse_run(args: &[&str]) -> Result<breakwater::config::cli::RunArgs, String> {
    let argv = ["breakwater", "run"]
        .into_iter()
        .chain(args.iter().copied());
    match Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Subcommand::Run(args) => Ok(*args),
        other => Err(format!("not run: {other:?}")),
    }
}

/// A route's field in `run --check`'s JSON for `key`.
fn json_field(key: &str) -> String {
    match key {
        "header" => "headers".into(),
        // Folded into what they qualify.
        "mirror-unsafe" => "mirror".into(),
        "fault-abort" | "fault-delay" => "faults".into(),
        other => other.replace('-', "_"),
    }
}

#[test]
fn every_route_key_is_taken_by_the_route_flag_and_the_policy_file() {
    // --route, through the command line (its value parser and delimiter).
    for key in route_keys() {
        let spec = route_spec(key);
        let args = parse_run(&["--route", &spec]).unwrap_or_else(|e| panic!("--route {spec}: {e}"));
        assert_eq!(args.routes.len(), 1, "--route {spec}");
        assert!(
            args.routes[0].sets(key.name),
            "--route {spec} does not set {}",
            key.name
        );
        breakwater::Config::from_args(args).unwrap_or_else(|e| panic!("--route {spec}: {e}"));
    }

    // A key for the other listener is refused, naming it.
    for key in POLICY_KEYS.iter().filter(|k| k.applies != Applies::Both) {
        let spec = match key.applies {
            Applies::Outbound => format!("*,direction=inbound,{}={}", key.name, key.example),
            _ => format!("*,{}={}", key.name, key.example),
        };
        let e = RouteOverride::parse(&spec).expect_err(&spec).to_string();
        assert!(e.contains(key.name), "--route {spec}: {e}");
        let e = parse_run(&["--route", &spec]).expect_err(&spec);
        assert!(e.contains(key.name), "--route {spec}: {e}");
    }

    // The policy file: one route per key, and every flag key as a default.
    let mut file = String::from("defaults:\n");
    for key in flag_keys() {
        file.push_str(&format!("  {}: {}\n", key.name, quoted(key.example)));
    }
    file.push_str("routes:\n");
    let keys: Vec<&PolicyKey> = route_keys().collect();
    for (i, key) in keys.iter().enumerate() {
        // Each route its own host, so that none shadows another.
        let mut lines = Vec::new();
        if key.name != "host" {
            lines.push(format!("host: route-{i}"));
        }
        if key.applies == Applies::Inbound {
            lines.push("direction: inbound".into());
        }
        lines.push(match key.name {
            "header" => {
                let (name, value) = key.example.split_once(':').unwrap_or((key.example, ""));
                format!("headers: [{{name: {name}, value: {}}}]", quoted(value))
            }
            name => format!("{name}: {}", quoted(key.example)),
        });
        if let Some((with, value)) = keys::companion(key.name) {
            lines.push(format!("{with}: {}", quoted(value)));
        }
        for (j, line) in lines.iter().enumerate() {
            file.push_str(if j == 0 { "  - " } else { "    " });
            file.push_str(line);
            file.push('\n');
        }
    }
    let policy = TempFile::new("every-key.yaml", &file);
    let config = check(
        &[policy.arg("policy-file")],
        &[],
        "a policy file with every key",
    );
    let routes = config["routes"].as_array().expect("routes in run --check");
    assert_eq!(routes.len(), keys.len(), "{file}");
    for (route, key) in routes.iter().zip(&keys) {
        let field = &route[json_field(key.name)];
        assert!(
            !field.is_null() && field != &serde_json::json!([]),
            "the policy file's route with {} has no {}: {route}",
            key.name,
            json_field(key.name)
        );
    }

    // Route-only keys are no defaults.
    for key in route_keys().filter(|k| k.scope == Scope::RouteOnly) {
        let file = TempFile::new(
            "route-only.yaml",
            &format!("defaults:\n  {}: {}\n", key.name, quoted(key.example)),
        );
        let out = binary(
            &["run".into(), "--check".into(), file.arg("policy-file")],
            &[],
        );
        let stderr = k8s::text(&out.stderr);
        assert!(!out.status.success(), "defaults: {} accepted", key.name);
        assert!(stderr.contains(key.name), "{stderr}");
    }
}

// ------------------------------------------------------------------- the chart

/// values.yaml's `key: value  # comment` lines by their path (`resilience.timeout`).
fn values_lines(text: &str) -> BTreeMap<String, (String, String)> {
    let mut lines = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') || body.starts_with('-') {
            continue;
        }
        let indent = line.len() - body.len();
        let Some((key, rest)) = body.split_once(':') else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        let (value, comment) = match rest.split_once('#') {
            Some((v, c)) => (v.trim(), c.trim()),
            None => (rest.trim(), ""),
        };
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        lines.insert(path.join("."), (value.to_string(), comment.to_string()));
    }
    lines
}

/// Whether `comment` starts with `default` as a whole word: `10` is not `10s`.
fn starts_with_default(comment: &str, default: &str) -> bool {
    comment
        .strip_prefix(default)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
}

fn schema() -> serde_json::Value {
    serde_json::from_str(&k8s::read(&k8s::chart().join("values.schema.json")))
        .expect("values.schema.json is JSON")
}

/// The schema of the value at `path`.
fn schema_at<'a>(schema: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter()
        .try_fold(schema, |s, key| s.get("properties")?.get(*key))
}

/// A value's schema and the definitions it refers to (`$ref`), as text.
fn with_definitions(schema: &serde_json::Value, declared: &serde_json::Value) -> String {
    let mut dump = declared.to_string();
    let mut refs: Vec<String> = vec![dump.clone()];
    while let Some(text) = refs.pop() {
        for name in text
            .split("\"#/definitions/")
            .skip(1)
            .filter_map(|t| t.split('"').next())
        {
            let def = schema["definitions"][name].to_string();
            dump.push_str(&def);
            refs.push(def);
        }
    }
    dump
}

#[test]
fn chart_values_schema_and_runargs_have_every_flag_key() {
    let values_text = k8s::read(&k8s::chart().join("values.yaml"));
    let lines = values_lines(&values_text);
    let values = k8s::parse(&values_text).pop().expect("values.yaml");
    let schema = schema();
    let template = k8s::read(&k8s::chart().join("templates/_inject.tpl"));
    for key in flag_keys() {
        let path = chart_path(key);
        let name = path.join(".");
        let what = format!("--{} (chart value {name})", key.name);

        // values.yaml: null, so the binary's default applies, which the comment gives.
        let node = values
            .at(&path)
            .unwrap_or_else(|| panic!("{what}: values.yaml has no {name}"));
        assert!(node.is_null(), "{what}: null in values.yaml, not {node:?}");
        let (value, comment) = lines
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: no `{name}:` line in values.yaml"));
        assert_eq!(value, "null", "{what}");
        let default = key.default.unwrap_or("none");
        assert!(
            starts_with_default(comment, default),
            "{what}: values.yaml's comment should start with the binary's default \
             `{default}`: `# {comment}`"
        );

        // values.schema.json declares it, null allowed.
        let declared = schema_at(&schema, &path)
            .unwrap_or_else(|| panic!("{what}: values.schema.json does not declare {name}"));
        let dump = with_definitions(&schema, declared);
        assert!(
            dump.contains("null"),
            "{what}: the schema should allow null: {dump}"
        );

        // The template passes it: (list "<name>" <the value>).
        let call = format!("include \"breakwater.flag\" (list \"{}\" ", key.name);
        let at = template
            .find(&call)
            .unwrap_or_else(|| panic!("{what}: _inject.tpl has no {call}...)"));
        let rest = &template[at + call.len()..];
        let expr = rest.split(')').next().unwrap_or_default();
        let leaf = path.last().copied().unwrap_or_default();
        assert!(
            expr.ends_with(&format!(".{leaf}")),
            "{what}: _inject.tpl passes `{expr}`, not the value {name}"
        );
        assert_eq!(
            template.matches(&call).count(),
            1,
            "{what}: {call} twice in _inject.tpl"
        );
    }
}

#[test]
fn chart_schema_declares_every_route_key_and_policy_file_key() {
    let schema = schema();
    let route = schema_at(&schema, &["routes"])
        .and_then(|r| r.get("items"))
        .expect("the schema of a route");
    let declared: Vec<String> = route["properties"]
        .as_object()
        .expect("a route's properties")
        .keys()
        .cloned()
        .collect();
    let mut want: Vec<String> = route_keys()
        .map(|k| match k.name {
            "header" => "headers".to_string(),
            name => camel(name),
        })
        .collect();
    want.sort();
    let mut got = declared.clone();
    got.sort();
    assert_eq!(
        got, want,
        "values.schema.json's route keys are not the route keys of keys.rs"
    );

    // policy.inline is the file itself: its keys are the file's.
    let inline = schema_at(&schema, &["policy", "inline"]).expect("policy.inline in the schema");
    let names = |v: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = v["propertyNames"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("no propertyNames enum in {v}"))
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let mut defaults: Vec<String> = flag_keys().map(|k| k.name.to_string()).collect();
    defaults.sort();
    assert_eq!(
        names(&inline["properties"]["defaults"]),
        defaults,
        "policy.inline.defaults"
    );
    let mut route_names: Vec<String> = route_keys()
        .map(|k| match k.name {
            "header" => "headers".to_string(),
            name => name.to_string(),
        })
        .collect();
    route_names.sort();
    assert_eq!(
        names(&inline["properties"]["routes"]["items"]),
        route_names,
        "policy.inline.routes"
    );
}

/// A YAML scalar for a values file: plain, so that YAML gives numbers and booleans
/// the types the schema wants.
fn plain(value: &str) -> String {
    match value {
        "*" => "\"*\"".into(),
        v => v.to_string(),
    }
}

/// `helm template` with a values file of `text`; the manifests parsed.
fn render_values(name: &str, text: &str) -> Vec<Node> {
    let file = TempFile::new(name, text);
    let out = k8s::helm_template(std::slice::from_ref(&file.0), &[], k8s::KUBE_VERSION);
    assert!(
        out.status.success(),
        "helm template with\n{text}\nfailed: {}",
        k8s::text(&out.stderr)
    );
    k8s::parse(&k8s::text(&out.stdout))
}

#[test]
fn chart_renders_every_flag_key_as_its_flag() {
    if !k8s::have_helm() {
        return;
    }
    let mut sections: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for key in flag_keys() {
        let path = chart_path(key);
        assert_eq!(path.len(), 2, "{}: a chart path of two parts", key.name);
        sections
            .entry(path[0])
            .or_default()
            .push((path[1], key.example));
    }
    let mut values = String::new();
    for (section, entries) in &sections {
        values.push_str(&format!("{section}:\n"));
        for (leaf, example) in entries {
            values.push_str(&format!("  {leaf}: {}\n", plain(example)));
        }
    }
    let docs = render_values("every-flag-key.yaml", &values);
    let (side, _) = k8s::sidecar(k8s::deployment_pod(&docs));
    let args = k8s::assert_run_checks(side, "every flag key at its example");
    for key in flag_keys() {
        let flag = format!("--{}={}", key.name, key.example);
        assert!(
            args.contains(&flag),
            "{} = {} does not render {flag}: {args:?}",
            key.chart.unwrap_or_default(),
            key.example
        );
    }
}

/// A route of the chart's values with `keys` at their examples, plus `extra` lines.
fn values_route(extra: &[&str], keys: &[&PolicyKey]) -> String {
    let mut route = String::from("  -");
    let mut lines: Vec<String> = extra.iter().map(|l| l.to_string()).collect();
    for key in keys {
        match key.name {
            "header" => {
                let (name, value) = key.example.split_once(':').unwrap_or((key.example, ""));
                lines.push(format!(
                    "headers: [{{name: {name}, value: {}}}, {{name: x-debug}}]",
                    quoted(value)
                ));
            }
            name => lines.push(format!("{}: {}", camel(name), plain(key.example))),
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let lead = if i == 0 { " " } else { "    " };
        route.push_str(&format!("{lead}{line}\n"));
    }
    route
}

/// What the chart should render for `key` in a route: `name=value` pairs.
fn rendered_pairs(key: &PolicyKey) -> Vec<String> {
    match key.name {
        "host" | "port" => Vec::new(),
        "header" => vec![format!("header={}", key.example), "header=x-debug".into()],
        name => vec![format!("{name}={}", key.example.replace(',', "+"))],
    }
}

#[test]
fn chart_routes_render_every_route_key_as_run_takes_it() {
    if !k8s::have_helm() {
        return;
    }
    // `to` moves every request, so it cannot sit beside `split`: its own route.
    let outbound: Vec<&PolicyKey> = MATCH_KEYS
        .iter()
        .chain(POLICY_KEYS.iter().filter(|k| k.applies != Applies::Inbound))
        .filter(|k| k.name != "to")
        .collect();
    let to: Vec<&PolicyKey> = POLICY_KEYS.iter().filter(|k| k.name == "to").collect();
    let inbound: Vec<&PolicyKey> = POLICY_KEYS
        .iter()
        .filter(|k| k.applies != Applies::Outbound)
        .collect();
    let values = format!(
        "routes:\n{}{}{}{}",
        values_route(&[], &outbound),
        // No host: any host, as on an inbound route it mostly is.
        values_route(&["direction: inbound"], &inbound),
        values_route(&["host: \"*\"", "port: 9000"], &[]),
        values_route(&["host: legacy"], &to),
    );
    let docs = render_values("every-route-key.yaml", &values);
    let (side, _) = k8s::sidecar(k8s::deployment_pod(&docs));
    let args = k8s::assert_run_checks(side, "routes with every route key");
    let routes: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--route="))
        .collect();
    assert_eq!(routes.len(), 4, "{args:?}");

    let host = MATCH_KEYS.iter().find(|k| k.name == "host").expect("host");
    let port = MATCH_KEYS.iter().find(|k| k.name == "port").expect("port");
    let targets = [
        format!("{}:{}", host.example, port.example),
        "*".to_string(),
        "*:9000".to_string(),
        "legacy".to_string(),
    ];
    let none = Vec::new();
    for ((spec, keys), target) in routes
        .iter()
        .zip([&outbound, &inbound, &none, &to])
        .zip(&targets)
    {
        let parts: Vec<&str> = spec.split(',').collect();
        assert_eq!(parts[0], target, "--route={spec}");
        let route = RouteOverride::parse(spec).unwrap_or_else(|e| panic!("--route={spec}: {e}"));
        for key in keys.iter().filter(|k| !matches!(k.name, "host" | "port")) {
            assert!(
                route.sets(key.name),
                "route key {} ({}) is not rendered: --route={spec}",
                camel(key.name),
                key.name
            );
            for pair in rendered_pairs(key) {
                assert!(
                    parts.contains(&pair.as_str()),
                    "no {pair} in --route={spec}"
                );
            }
        }
    }

    // A key for the other listener fails the render, naming the value.
    for key in POLICY_KEYS.iter().filter(|k| k.applies != Applies::Both) {
        let values = match key.applies {
            Applies::Outbound => {
                format!("routes:\n{}", values_route(&["direction: inbound"], &[key]))
            }
            _ => format!("routes:\n{}", values_route(&["host: api"], &[key])),
        };
        let file = TempFile::new("wrong-direction.yaml", &values);
        let out = k8s::helm_template(std::slice::from_ref(&file.0), &[], k8s::KUBE_VERSION);
        let stderr = k8s::text(&out.stderr);
        assert!(!out.status.success(), "rendered:\n{values}");
        assert!(
            stderr.contains(&camel(key.name)),
            "{values}: the error should name {}: {stderr}",
            camel(key.name)
        );
    }
}

// ---------------------------------------------------------------------- inject

/// `breakwater inject <flags>` as the command line parses it, then checked.
fn plan(flags: &[&str]) -> Result<Plan, String> {
    let argv = ["breakwater", "inject"]
        .into_iter()
        .chain(flags.iter().copied());
    match Cli::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .command
    {
        Subcommand::Inject(args) => Plan::from_args(args.sidecar).map_err(|e| e.to_string()),
        other => Err(format!("not inject: {other:?}")),
    }
}

#[test]
fn inject_takes_every_flag_key_and_checks_it() {
    let mut all = Vec::new();
    for key in flag_keys() {
        let flag = format!("--{}", key.name);
        let p = plan(&[flag.as_str(), key.example])
            .unwrap_or_else(|e| panic!("inject {flag} {}: {e}", key.example));
        let normalized = format!("{flag}={}", key.example);
        assert_eq!(
            p.run_flags,
            std::slice::from_ref(&normalized),
            "inject {flag} {}",
            key.example
        );
        let e = plan(&[&format!("{flag}=sometimes")]).expect_err(&flag);
        assert!(
            e.contains(&flag),
            "inject {flag}=sometimes: the error should name {flag}: {e}"
        );
        all.push(normalized);
    }

    // All at once, through the binary: the sidecar gets them, and they run.
    let flags: Vec<&str> = std::iter::once("--mode=explicit")
        .chain(all.iter().map(String::as_str))
        .collect();
    let docs = k8s::parse(&k8s::injected(k8s::WORKLOADS, &flags));
    let (side, _) = k8s::sidecar(k8s::deployment_pod(&docs));
    let args = k8s::assert_run_checks(side, "inject with every flag key");
    for flag in &all {
        assert!(args.contains(flag), "inject dropped {flag}: {args:?}");
    }

    let bad = k8s::inject(k8s::WORKLOADS, &["--breaker-mode=sometimes"]);
    let stderr = k8s::text(&bad.stderr);
    assert!(!bad.status.success(), "--breaker-mode=sometimes accepted");
    assert!(bad.stdout.is_empty(), "nothing written");
    assert!(stderr.contains("--breaker-mode"), "{stderr}");
}

// ---------------------------------------------------------------------- README

/// The rows of the README's `### Policy keys` table: its key, default and routes cells.
fn readme_rows(readme: &str) -> Vec<(String, String, String)> {
    let mut lines = readme.lines();
    assert!(
        lines.any(|l| l.trim_end() == "### Policy keys"),
        "README.md has no `### Policy keys` section"
    );
    let mut fenced = false;
    let mut table = Vec::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with('#') {
            break;
        }
        if line.trim_start().starts_with('|') {
            table.push(line.trim());
        }
    }
    let cells = |row: &str| -> Vec<String> {
        row.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = table.first().map(|h| cells(h)).unwrap_or_default();
    assert_eq!(
        header,
        ["key", "default", "routes", "meaning"],
        "the table's header row is `| key | default | routes | meaning |`"
    );
    let separator = table.get(1).map(|s| cells(s)).unwrap_or_default();
    assert!(
        !separator.is_empty()
            && separator
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':'))),
        "the table's second row is its separator: {:?}",
        table.get(1)
    );
    table[2..]
        .iter()
        .map(|row| {
            let c = cells(row);
            assert!(c.len() >= 4, "a row with too few cells: {row}");
            (c[0].clone(), c[1].clone(), c[2].clone())
        })
        .collect()
}

#[test]
fn readme_policy_keys_table_lists_every_key_with_its_default() {
    let rows = readme_rows(&k8s::read(&k8s::repo().join("README.md")));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (key, default, routes) in &rows {
        let name = key
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| panic!("the key cell is the key in backticks: {key}"));
        let def = route_keys()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("the README's table names {name}, which keys.rs has not"));
        *seen.entry(name.to_string()).or_default() += 1;
        let want = match (def.scope, def.default) {
            (Scope::RouteOnly, _) => "—".to_string(),
            (Scope::Everywhere, None) => "none".to_string(),
            (Scope::Everywhere, Some(d)) => format!("`{d}`"),
        };
        assert_eq!(
            default, &want,
            "the README's default for {name} (keys.rs: {:?})",
            def.default
        );
        let applies = match def.applies {
            Applies::Both => "both",
            Applies::Outbound => "outbound",
            Applies::Inbound => "inbound",
        };
        assert_eq!(
            routes, applies,
            "the README's routes column for {name}: the routes it applies to"
        );
    }
    for key in route_keys() {
        assert_eq!(
            seen.get(key.name).copied().unwrap_or(0),
            1,
            "{} should have exactly one row in the README's Policy keys table",
            key.name
        );
    }
}
