//! The value grammars the chart's values.schema.json shares with the binary:
//! durations, sizes and log levels. One list of values, good and bad, goes
//! through `helm template` (the schema) and through the binary (`run --check`,
//! and clap's parser for every flag of the kind), and both must give the
//! verdict the list expects, on every chart value of that kind: a value the
//! chart lets through is one the pod starts with, not a crash loop.
//!
//! The chart values of a kind are those whose schema is `$ref` to its
//! definition; which flag each one renders to is read from `helm template`;
//! and which flags are of the kind is asked of the binary, so a new flag or
//! chart value cannot slip past the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use breakwater::config::cli::parse_run_args;
use serde_json::{Value, json};

use crate::kubernetes as k8s;
use crate::support;

/// The grammar a value or flag takes, by the name of its schema definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `definitions.duration`: zero allowed (`--slow-start`, `--drain-delay`).
    Duration,
    /// `definitions.positiveDuration` (`--timeout`).
    Positive,
    /// `definitions.hedgeAfter`: a positive duration or `pNN`.
    Hedge,
    /// `definitions.size` (`--retry-body-limit`).
    Size,
    /// `definitions.logLevel` (`--log-level`).
    LogLevel,
}

impl Kind {
    fn of_definition(name: &str) -> Option<Kind> {
        Some(match name {
            "duration" => Kind::Duration,
            "positiveDuration" => Kind::Positive,
            "hedgeAfter" => Kind::Hedge,
            "size" => Kind::Size,
            "logLevel" => Kind::LogLevel,
            _ => return None,
        })
    }

    /// The flag the real binary is run with for this kind.
    fn probe_flag(self) -> &'static str {
        match self {
            Kind::Duration => "slow-start",
            Kind::Positive => "timeout",
            Kind::Hedge => "hedge-after",
            Kind::Size => "retry-body-limit",
            Kind::LogLevel => "log-level",
        }
    }
}

/// What a duration-list value is, so what each duration kind makes of it.
#[derive(Clone, Copy, Debug)]
enum Is {
    /// A duration greater than zero: every kind takes it.
    Positive,
    /// A zero duration: only where zero is allowed.
    Zero,
    /// `pNN`: only `hedge-after`.
    Quantile,
    /// Nothing any kind takes.
    Bad,
}

impl Is {
    fn taken_by(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Is::Positive, Kind::Duration | Kind::Positive | Kind::Hedge)
                | (Is::Zero, Kind::Duration)
                | (Is::Quantile, Kind::Hedge)
        )
    }
}

/// Durations, with the edge cases of the grammar (src/units.rs). Each unit
/// name is added by [`durations`].
const DURATIONS: &[(&str, Is)] = &[
    ("250ms", Is::Positive),
    ("500ms", Is::Positive),
    ("2s", Is::Positive),
    ("1m", Is::Positive),
    ("1.5s", Is::Positive),
    ("1h30m", Is::Positive),
    ("1h 30m", Is::Positive),
    ("1h 30m 15s 250ms", Is::Positive),
    ("5 min", Is::Positive),
    ("1.5 s", Is::Positive),
    ("2 hours", Is::Positive),
    ("01s", Is::Positive),
    ("0s 1ns", Is::Positive),
    (" 2s ", Is::Positive),
    ("2s\n", Is::Positive),
    ("\t2s", Is::Positive),
    ("0.000000001s", Is::Positive),
    ("1.999us", Is::Positive),
    ("1.000001ms", Is::Positive),
    ("1.5M", Is::Positive),
    ("0.5y", Is::Positive),
    ("365d", Is::Positive),
    ("0", Is::Zero),
    ("0s", Is::Zero),
    ("0.0s", Is::Zero),
    ("0ms 0s", Is::Zero),
    (" 0 ", Is::Zero),
    ("p95", Is::Quantile),
    ("p99.9", Is::Quantile),
    ("P50", Is::Quantile),
    (" p90 ", Is::Quantile),
    ("2x", Is::Bad),
    ("", Is::Bad),
    (" ", Is::Bad),
    ("fast", Is::Bad),
    ("10", Is::Bad),
    ("00", Is::Bad),
    ("1h30", Is::Bad),
    ("1 0s", Is::Bad),
    ("-1s", Is::Bad),
    ("+1s", Is::Bad),
    ("1.s", Is::Bad),
    (".5s", Is::Bad),
    ("1,5s", Is::Bad),
    ("1s,", Is::Bad),
    ("1h\t30m", Is::Bad),
    ("1S", Is::Bad),
    ("1 Sec", Is::Bad),
    ("s", Is::Bad),
    ("1e3ms", Is::Bad),
    ("1_000ms", Is::Bad),
    ("7\u{3bc}s", Is::Bad),
    ("\u{a0}2s", Is::Bad),
    ("1.5ns", Is::Bad),
    ("1.0001us", Is::Bad),
    ("1.0000001ms", Is::Bad),
    ("1.0000000001s", Is::Bad),
    ("1.0000000001h", Is::Bad),
    ("p49", Is::Bad),
    ("p100", Is::Bad),
    ("p99.95", Is::Bad),
    ("p5e1", Is::Bad),
    ("p095", Is::Bad),
    ("p 95", Is::Bad),
    ("p95ms", Is::Bad),
];

/// [`DURATIONS`], and each unit the binary knows, whole and with a decimal
/// (which nanoseconds cannot take): one value per unit, its names summed
/// (`1ns 1nsec 1nanos`), each value being a `helm template`.
fn durations() -> Vec<(String, Is)> {
    let mut all: Vec<(String, Is)> = DURATIONS
        .iter()
        .map(|(v, is)| (v.to_string(), *is))
        .collect();
    let cap = breakwater::units::MAX_DURATION.as_nanos();
    for (names, nanos) in breakwater::units::DURATION_UNITS {
        let each = |number: &str| {
            let parts: Vec<String> = names.iter().map(|n| format!("{number}{n}")).collect();
            parts.join(" ")
        };
        // Three years are past the cap: see BEYOND_THE_PATTERNS.
        if *nanos * names.len() as u128 <= cap {
            all.push((each("1"), Is::Positive));
        }
        let decimal = if *nanos == 1 { Is::Bad } else { Is::Positive };
        all.push((each("0.1"), decimal));
    }
    all
}

/// Sizes (src/units.rs `parse_bytes`).
const SIZES: &[(&str, bool)] = &[
    ("8192", true),
    ("0", true),
    ("64KiB", true),
    ("64kib", true),
    ("64KIB", true),
    ("64 KiB", true),
    ("16k", true),
    ("2KB", true),
    ("1MiB", true),
    ("1m", true),
    ("1mb", true),
    ("5b", true),
    ("5B", true),
    (" 64KiB ", true),
    ("64KiB\n", true),
    ("", false),
    ("KiB", false),
    ("1GiB", false),
    ("1.5KiB", false),
    ("-1", false),
    ("+1", false),
    ("64\tKiB", false),
    ("64KiBs", false),
    ("64 K iB", false),
    ("1e3", false),
    ("0x10", false),
    ("1 000", false),
    ("64 KiB!", false),
];

/// Log filters (src/telemetry.rs `parse_log_level`).
const LOG_LEVELS: &[(&str, bool)] = &[
    ("info", true),
    ("INFO", true),
    ("Debug", true),
    ("off", true),
    ("error", true),
    ("warn", true),
    ("trace", true),
    ("0", true),
    ("5", true),
    ("info,breakwater::listener=debug", true),
    ("breakwater=trace", true),
    ("warn,hyper=info,h2=error", true),
    ("my-crate=DEBUG", true),
    ("verbose", false),
    ("", false),
    ("breakwater", false),
    ("info,", false),
    (",info", false),
    ("breakwater=loud", false),
    ("=debug", false),
    ("debug=", false),
    ("6", false),
    ("+3", false),
    ("info;debug", false),
    ("warn, hyper=info", false),
    (" info", false),
    ("info ", false),
    ("a b=info", false),
    ("breakwater[span]=debug", false),
    ("a=b=info", false),
];

/// Values the patterns take but the binary refuses: bounds a regular
/// expression cannot sum or compare. Listed so that the gap is known, and
/// each refused naming its flag.
const BEYOND_THE_PATTERNS: &[(Kind, &str, &str)] = &[
    (Kind::Positive, "366d", "longer than 365 days"),
    (Kind::Positive, "1y", "longer than 365 days"),
    (Kind::Positive, "364d 48h", "longer than 365 days"),
    (
        Kind::Duration,
        "18446744073709551616s",
        "longer than 365 days",
    ),
    (Kind::Size, "18446744073709551616", "too large"),
    (Kind::Size, "18446744073709551615MiB", "too large"),
];

fn schema() -> Value {
    serde_json::from_str(&k8s::read(&k8s::chart().join("values.schema.json")))
        .expect("values.schema.json is JSON")
}

/// The definition a property's schema refers to, if it is one of ours.
fn kind_of(property: &Value) -> Option<Kind> {
    property
        .get("$ref")?
        .as_str()?
        .strip_prefix("#/definitions/")
        .and_then(Kind::of_definition)
}

/// Every chart value (`section.key`, routes aside) whose schema is a grammar's.
fn chart_values() -> BTreeMap<String, Kind> {
    let schema = schema();
    let mut out = BTreeMap::new();
    for (section, s) in schema["properties"].as_object().expect("properties") {
        if let Some(kind) = kind_of(s) {
            out.insert(section.clone(), kind);
        }
        for (key, p) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(kind) = kind_of(p) {
                out.insert(format!("{section}.{key}"), kind);
            }
        }
    }
    out
}

/// A values file that sets each of `values`.
fn values_file(values: &BTreeMap<&str, Value>) -> PathBuf {
    let mut root = json!({});
    for (path, value) in values {
        let mut node = &mut root;
        let mut keys = path.split('.').peekable();
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                node[key] = value.clone();
            } else {
                node = &mut node[key];
            }
        }
    }
    k8s::temp_file(
        &format!("grammar-{}.json", k8s::unique()),
        &root.to_string(),
    )
}

/// `helm template` with `values` set: the chart values the schema refused.
fn chart_refuses(values: &BTreeMap<&str, Value>) -> BTreeSet<String> {
    let file = values_file(values);
    let out = k8s::helm_template(std::slice::from_ref(&file), &[], k8s::KUBE_VERSION);
    let _ = std::fs::remove_file(&file);
    if out.status.success() {
        return BTreeSet::new();
    }
    let stderr = k8s::text(&out.stderr);
    let refused: BTreeSet<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .filter_map(|l| l.split_once(':'))
        .map(|(path, _)| path.to_string())
        .collect();
    let unknown: Vec<_> = refused
        .iter()
        .filter(|p| !values.contains_key(p.as_str()))
        .collect();
    assert!(
        !refused.is_empty() && unknown.is_empty(),
        "helm template failed, not on the values set ({values:?}): {stderr}"
    );
    refused
}

/// The flag each chart value renders to: each set to a value of its own,
/// found again in the sidecar's args.
fn flags_of(values: &BTreeMap<String, Kind>) -> BTreeMap<String, String> {
    let samples: BTreeMap<&str, Value> = values
        .iter()
        .enumerate()
        .map(|(i, (path, kind))| {
            let sample = match kind {
                Kind::Size => format!("{}", 70_001 + i),
                Kind::LogLevel => format!("breakwater{i}=debug"),
                _ => format!("{}ms", 1_001 + i),
            };
            (path.as_str(), Value::String(sample))
        })
        .collect();
    let file = values_file(&samples);
    let docs = k8s::parse(&k8s::render(std::slice::from_ref(&file)));
    let _ = std::fs::remove_file(&file);
    let (side, _) = k8s::sidecar(k8s::deployment_pod(&docs));
    let args = k8s::strings(side.get("args"));
    samples
        .iter()
        .map(|(path, sample)| {
            let tail = format!("={}", sample.as_str().unwrap_or_default());
            let flag = args
                .iter()
                .find_map(|a| a.strip_suffix(&tail)?.strip_prefix("--"))
                .unwrap_or_else(|| panic!("{path} ({sample}) is in no arg: {args:?}"));
            (path.to_string(), flag.to_string())
        })
        .collect()
}

/// Whether clap takes `--flag=value`: the parser `run` and `run --check` use.
fn flag_takes(flag: &str, value: &str) -> bool {
    parse_run_args([format!("--{flag}={value}")]).is_ok()
}

/// The kind of each flag of `breakwater run`, asked of its parser.
fn flag_kinds() -> BTreeMap<String, Kind> {
    let help = support::run_to_end(&["run", "--help"]).stdout;
    let flags: BTreeSet<&str> = help
        .lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("--"))
        .filter_map(|l| l.split([' ', '=', '<']).next())
        .filter(|f| !matches!(*f, "help" | "check"))
        .collect();
    assert!(flags.len() > 40, "parsed {flags:?}");
    flags
        .into_iter()
        .filter_map(|flag| {
            let takes = |v| flag_takes(flag, v);
            let kind = if takes("1ms") && !takes("2x") {
                if takes("p95") {
                    Kind::Hedge
                } else if takes("0s") {
                    Kind::Duration
                } else {
                    Kind::Positive
                }
            } else if takes("1KiB") && !takes("2x") {
                Kind::Size
            } else if takes("debug") && !takes("verbose") {
                Kind::LogLevel
            } else {
                return None;
            };
            Some((flag.to_string(), kind))
        })
        .collect()
}

/// The real binary: whether `run --check --flag=value` starts, and if it
/// does not, that it names the flag.
fn binary_takes(flag: &str, value: &str) -> bool {
    let o = support::run_to_end(&["run".into(), "--check".into(), format!("--{flag}={value}")]);
    if !o.succeeded() {
        assert!(
            o.code == Some(2) && o.stderr.contains(&format!("--{flag}")),
            "run --check --{flag}={value:?}: exit {:?}, not naming the flag: {}",
            o.code,
            o.stderr
        );
    }
    o.succeeded()
}

/// A value, and the kinds that take it.
type Case = (String, BTreeSet<Kind>);

/// Feeds each case to every chart value of `kinds` at once, one `helm
/// template` per value, and to the binary: clap's parser for each of their
/// flags, and `run --check` for each kind's probe flag. Returns the
/// disagreements with the case.
fn disagreements(kinds: &[Kind], cases: &[Case]) -> Vec<String> {
    let values: BTreeMap<String, Kind> = chart_values()
        .into_iter()
        .filter(|(_, k)| kinds.contains(k))
        .collect();
    let flags = flags_of(&values);
    let check = |(value, takes): &Case| {
        let mut wrong = Vec::new();
        let set: BTreeMap<&str, Value> = values
            .keys()
            .map(|p| (p.as_str(), Value::String(value.clone())))
            .collect();
        let refused = chart_refuses(&set);
        for (path, kind) in &values {
            let want = takes.contains(kind);
            let chart = !refused.contains(path);
            let flag = &flags[path];
            let parser = flag_takes(flag, value);
            if chart != want || parser != want {
                wrong.push(format!(
                    "{value:?}: expected {}, chart value {path} {}, --{flag} {}",
                    verdict(want),
                    verdict(chart),
                    verdict(parser)
                ));
            }
        }
        for kind in kinds {
            let flag = kind.probe_flag();
            let want = takes.contains(kind);
            if binary_takes(flag, value) != want {
                wrong.push(format!(
                    "{value:?}: expected {}, run --check --{flag} did not",
                    verdict(want)
                ));
            }
        }
        wrong
    };
    // Two at a time: helm and the binary are processes, the machine is shared.
    let (a, b) = cases.split_at(cases.len() / 2);
    std::thread::scope(|s| {
        let first = s.spawn(|| a.iter().flat_map(check).collect::<Vec<_>>());
        let mut wrong: Vec<String> = b.iter().flat_map(check).collect();
        wrong.extend(first.join().expect("the first half"));
        wrong
    })
}

/// Cases that are taken by `kind` when `ok`, by nothing else.
fn cases_of(kind: Kind, list: &[(&str, bool)]) -> Vec<Case> {
    list.iter()
        .map(|(v, ok)| (v.to_string(), ok.then_some(kind).into_iter().collect()))
        .collect()
}

fn verdict(taken: bool) -> &'static str {
    if taken { "taken" } else { "refused" }
}

#[test]
fn chart_and_binary_take_the_same_durations() {
    if !k8s::have_helm() {
        return;
    }
    let all = [Kind::Duration, Kind::Positive, Kind::Hedge];
    let cases: Vec<Case> = durations()
        .into_iter()
        .map(|(v, is)| (v, all.into_iter().filter(|k| is.taken_by(*k)).collect()))
        .collect();
    let wrong = disagreements(&all, &cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A YAML 0 is a number, not a string: the chart renders it as `0`.
    let values = chart_values();
    let zero: BTreeMap<&str, Value> = values
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Duration | Kind::Positive))
        .map(|(p, _)| (p.as_str(), json!(0)))
        .collect();
    let refused = chart_refuses(&zero);
    for path in zero.keys() {
        let want = values[*path] == Kind::Duration;
        assert_eq!(!refused.contains(*path), want, "{path}: 0 (a number)");
    }
}

#[test]
fn chart_and_binary_take_the_same_sizes() {
    if !k8s::have_helm() {
        return;
    }
    let wrong = disagreements(&[Kind::Size], &cases_of(Kind::Size, SIZES));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn chart_and_binary_take_the_same_log_levels() {
    if !k8s::have_helm() {
        return;
    }
    let cases = cases_of(Kind::LogLevel, LOG_LEVELS);
    let wrong = disagreements(&[Kind::LogLevel], &cases);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn bounds_beyond_the_patterns_are_refused_by_the_binary_naming_the_flag() {
    let values = chart_values();
    for (kind, value, why) in BEYOND_THE_PATTERNS {
        let flag = kind.probe_flag();
        let o = support::run_to_end(&["run".into(), "--check".into(), format!("--{flag}={value}")]);
        assert_eq!(o.code, Some(2), "--{flag}={value}: {}", o.stderr);
        assert!(
            o.stderr.contains(&format!("--{flag}")) && o.stderr.contains(why),
            "--{flag}={value}: {}",
            o.stderr
        );
        if !k8s::have_helm() {
            continue;
        }
        let (path, _) = values
            .iter()
            .find(|(_, k)| *k == kind)
            .expect("a chart value of the kind");
        let set = BTreeMap::from([(path.as_str(), Value::String(value.to_string()))]);
        assert!(
            chart_refuses(&set).is_empty(),
            "{path}: {value} is refused by the schema now; move it to the lists"
        );
    }
}

#[test]
fn every_flag_of_a_grammar_has_a_chart_value_of_that_grammar() {
    if !k8s::have_helm() {
        return;
    }
    let kinds = flag_kinds();
    assert_eq!(kinds.get("timeout"), Some(&Kind::Positive), "{kinds:?}");
    assert_eq!(kinds.get("slow-start"), Some(&Kind::Duration), "{kinds:?}");
    assert_eq!(kinds.get("hedge-after"), Some(&Kind::Hedge), "{kinds:?}");
    assert_eq!(kinds.get("max-uri-bytes"), Some(&Kind::Size), "{kinds:?}");
    assert_eq!(kinds.get("log-level"), Some(&Kind::LogLevel), "{kinds:?}");
    let values = chart_values();
    let flags = flags_of(&values);
    let charted: BTreeMap<String, Kind> = flags
        .iter()
        .map(|(path, flag)| (flag.clone(), values[path]))
        .collect();
    assert_eq!(
        charted, kinds,
        "the flags of each grammar (right) and the chart values that $ref its \
         definition (left, by the flag they render to)"
    );
}

/// Each grammar's pattern is in `definitions` alone: every route key of a
/// grammar refers to it, and `faultDelay` (DURATION@PERCENT) embeds it whole.
#[test]
fn the_grammars_live_in_one_place_in_the_schema() {
    let schema = schema();
    let text = k8s::read(&k8s::chart().join("values.schema.json"));
    let defs = &schema["definitions"];
    let pattern = |name: &str| {
        defs[name]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("definitions.{name}.pattern"))
            .to_string()
    };
    // The pattern, as the file spells it (JSON-escaped, anchors aside).
    let spelled = |p: &str| {
        let inner = p.trim_start_matches('^').trim_end_matches('$');
        serde_json::to_string(inner)
            .expect("a JSON string")
            .trim_matches('"')
            .to_string()
    };
    for name in ["duration", "size", "logLevel"] {
        let copies = text.matches(&spelled(&pattern(name))).count();
        // definitions.duration's is embedded in routes[].faultDelay, checked below.
        let embedded = usize::from(name == "duration");
        assert_eq!(
            copies,
            1 + embedded,
            "definitions.{name}'s pattern is copied in the schema"
        );
    }
    let duration = pattern("duration");
    let core = duration
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .expect("an anchored pattern");
    let routes = &schema["properties"]["routes"]["items"]["properties"];
    let fault = routes["faultDelay"]["pattern"].as_str().unwrap_or_default();
    assert!(
        fault.starts_with(&format!("^{core}@")),
        "faultDelay's duration is not definitions.duration's: {fault}"
    );

    // No other pattern spells a unit or a level: each such value refers to a
    // definition. (serviceMonitor, podMonitor and prometheusRule take
    // Prometheus's durations, a grammar of their own.)
    let mut stack = vec![(String::new(), &schema["properties"])];
    while let Some((at, node)) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(p)) = map.get("pattern")
                    && !at.ends_with(".faultDelay")
                {
                    assert!(
                        !["ms", "KiB", "kKmM", "µ", "trace"]
                            .iter()
                            .any(|u| p.contains(u)),
                        "{at}: a pattern of its own ({p}), not a $ref to definitions"
                    );
                }
                for (k, v) in map {
                    if !matches!(
                        k.as_str(),
                        "serviceMonitor" | "podMonitor" | "prometheusRule"
                    ) {
                        stack.push((format!("{at}.{k}"), v));
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter().map(|v| (at.clone(), v))),
            _ => {}
        }
    }

    // A route key is a flag's name in camelCase: it takes that flag's grammar.
    let kinds = flag_kinds();
    for (key, property) in routes.as_object().expect("route keys") {
        let flag: String = key
            .chars()
            .flat_map(|c| {
                let dash = c.is_ascii_uppercase().then_some('-');
                dash.into_iter()
                    .chain(std::iter::once(c.to_ascii_lowercase()))
            })
            .collect();
        assert_eq!(
            kind_of(property),
            kinds.get(&flag).copied(),
            "routes[].{key}: its schema, and --{flag}'s grammar"
        );
    }
}
