//! The policy file (a Kubernetes ConfigMap mounted as a file), read into raw
//! `key: value` entries that remember where they were written.
//!
//! This module checks only the file's shape: two optional top-level keys,
//! `defaults` (a mapping) and `routes` (a list of mappings), whose values are
//! scalars or lists of scalars, plus the `headers` conditions of a route. Which
//! keys exist and what their values mean is the caller's business; it gets every
//! entry with its line and column so that its own messages can point at the file.
//!
//! Parsing is yaml-rust2's event parser, because its `YamlLoader` drops positions.
//! Scalars keep their text as written: `retries: 2` and `tls: true` are the
//! strings "2" and "true", and the caller parses them like the matching flags.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where in the file something is: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    /// Counted in characters, not bytes.
    pub col: usize,
}

/// The start of the file, so that a `RawRoute::default()` still points somewhere real.
impl Default for Position {
    fn default() -> Self {
        Position { line: 1, col: 1 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// yaml-rust2 0.13 counts lines from 1 but columns from 0.
fn position(mark: &Marker) -> Position {
    Position {
        line: mark.line().max(1),
        col: mark.col() + 1,
    }
}

/// A value as written: a scalar's text, or a list of scalars.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue {
    Scalar(String),
    List(Vec<String>),
}

impl RawValue {
    /// The value as a route key takes it: a list joined with ','.
    ///
    /// `retry-on: [5xx, 429]` and `retry-on: 5xx,429` then mean the same, as in `--route`.
    pub fn joined(&self) -> String {
        match self {
            RawValue::Scalar(text) => text.clone(),
            RawValue::List(items) => items.join(","),
        }
    }
}

/// One `key: value` with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: RawValue,
    /// Where the key is written, which is where a message about it should point.
    pub at: Position,
}

/// One header condition of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderEntry {
    pub name: String,
    /// `None` when only the header's presence is required.
    pub value: Option<String>,
    /// Where the condition starts (its first key).
    pub at: Position,
}

/// One element of `routes:`, in file order: its plain entries (name, host, port,
/// path-prefix, method, timeout, ... every key except `headers`) in written order,
/// and its header conditions.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RawRoute {
    pub entries: Vec<Entry>,
    pub headers: Vec<HeaderEntry>,
    /// Where the route starts (its first key), to name it in messages.
    pub at: Position,
}

/// The whole file, unvalidated: `defaults:` entries and `routes:` in file order
/// (the first matching route wins, so order matters).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RawPolicy {
    pub defaults: Vec<Entry>,
    pub routes: Vec<RawRoute>,
}

/// Why the file cannot be read, and where: the message names the key involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{at}: {message}")]
pub struct PolicyFileError {
    pub at: Position,
    pub message: String,
}

impl PolicyFileError {
    fn new(at: Position, message: impl Into<String>) -> Self {
        PolicyFileError {
            at,
            message: message.into(),
        }
    }
}

/// Parses the text of a policy file.
///
/// An empty file, or one with only comments, sets nothing.
pub fn read(text: &str) -> Result<RawPolicy, PolicyFileError> {
    let mut builder = Builder::default();
    let loaded = Parser::new_from_str(text).load(&mut builder, true);
    // The builder stops at the first problem in its events, which come before
    // wherever the parser itself gave up.
    if let Some(error) = builder.error {
        return Err(error);
    }
    if let Err(e) = loaded {
        let at = position(e.marker());
        // An alias whose anchor was never defined fails in the parser, not here.
        if e.info().contains("unknown anchor") {
            return Err(PolicyFileError::new(at, ANCHORS));
        }
        return Err(PolicyFileError::new(at, e.info()));
    }
    match builder.root {
        None => Ok(RawPolicy::default()),
        Some(root) => policy(root),
    }
}

const ANCHORS: &str = "anchors and aliases are not supported";

/// A YAML node with its position: the tree the event parser's output is built into.
#[derive(Debug)]
struct Node {
    kind: Kind,
    at: Position,
}

#[derive(Debug)]
enum Kind {
    /// `plain` tells a written `null`/`~`/nothing from a quoted `"null"` or `""`.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain null (`null`, `~` or nothing): a key with no value.
    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

/// An open collection while its events arrive.
enum Frame {
    Seq(Vec<Node>, Position),
    /// Entries so far, a key waiting for its value, and where the mapping started.
    Map(Vec<(Node, Node)>, Option<Node>, Position),
}

/// Builds the tree from events without recursion, refusing what the file format
/// has no use for (anchors, aliases, tags, a second document) where it is written.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    error: Option<PolicyFileError>,
}

impl Builder {
    fn fail(&mut self, at: Position, message: &str) {
        self.error
            .get_or_insert_with(|| PolicyFileError::new(at, message));
    }

    fn insert(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, key, _)) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let at = position(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(at, "a second YAML document: a policy file holds one");
                }
            }
            Event::Alias(_) => self.fail(at, ANCHORS),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor > 0 =>
            {
                self.fail(at, ANCHORS);
            }
            Event::Scalar(_, _, _, Some(_))
            | Event::SequenceStart(_, Some(_))
            | Event::MappingStart(_, Some(_)) => {
                self.fail(at, "YAML tags (such as !!str) are not supported");
            }
            Event::Scalar(text, style, _, None) => self.insert(Node {
                kind: Kind::Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                },
                at,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new(), at)),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Vec::new(), None, at)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(items, start)) => Node {
                        kind: Kind::Seq(items),
                        at: start,
                    },
                    // A block mapping's start mark is past its first key; the
                    // first key is where the mapping is really written.
                    Some(Frame::Map(entries, _, start)) => Node {
                        at: entries.first().map_or(start, |(k, _)| k.at),
                        kind: Kind::Map(entries),
                    },
                    None => return self.fail(at, "unbalanced YAML collection"),
                };
                self.insert(node);
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// The top level: `defaults` and `routes`, both optional.
fn policy(root: Node) -> Result<RawPolicy, PolicyFileError> {
    let mut policy = RawPolicy::default();
    let pairs = match root.kind {
        // `---` alone, or a document of only comments.
        _ if root.is_null() => return Ok(policy),
        Kind::Map(pairs) => pairs,
        Kind::Scalar { .. } | Kind::Seq(_) => {
            return Err(PolicyFileError::new(
                root.at,
                "the policy file must be a mapping with 'defaults' and/or 'routes'",
            ));
        }
    };
    for (key, at, value) in keyed(pairs)? {
        match key.as_str() {
            "defaults" => policy.defaults = defaults(&key, at, value)?,
            "routes" => policy.routes = routes(&key, at, value)?,
            _ => {
                return Err(PolicyFileError::new(
                    at,
                    format!(
                        "unknown top-level key '{key}': only 'defaults' and 'routes' are allowed"
                    ),
                ));
            }
        }
    }
    Ok(policy)
}

fn defaults(key: &str, at: Position, value: Node) -> Result<Vec<Entry>, PolicyFileError> {
    match value.kind {
        _ if value.is_null() => Err(no_value(key, at)),
        Kind::Map(pairs) => keyed(pairs)?
            .into_iter()
            .map(|(key, at, value)| entry(key, at, value))
            .collect(),
        Kind::Scalar { .. } | Kind::Seq(_) => Err(PolicyFileError::new(
            at,
            format!("key '{key}' must be a mapping of key: value"),
        )),
    }
}

fn routes(key: &str, at: Position, value: Node) -> Result<Vec<RawRoute>, PolicyFileError> {
    let items = match value.kind {
        _ if value.is_null() => return Err(no_value(key, at)),
        Kind::Seq(items) => items,
        Kind::Scalar { .. } | Kind::Map(_) => {
            return Err(PolicyFileError::new(
                at,
                format!("key '{key}' must be a list of routes (`- name: ...`)"),
            ));
        }
    };
    items.into_iter().map(route).collect()
}

fn route(node: Node) -> Result<RawRoute, PolicyFileError> {
    let Kind::Map(pairs) = node.kind else {
        return Err(PolicyFileError::new(
            node.at,
            "each element of 'routes' must be a mapping of key: value",
        ));
    };
    let mut route = RawRoute {
        at: node.at,
        ..RawRoute::default()
    };
    for (key, at, value) in keyed(pairs)? {
        if key == "headers" {
            route.headers = headers(&key, at, value)?;
        } else {
            route.entries.push(entry(key, at, value)?);
        }
    }
    Ok(route)
}

fn headers(key: &str, at: Position, value: Node) -> Result<Vec<HeaderEntry>, PolicyFileError> {
    let items = match value.kind {
        _ if value.is_null() => return Err(no_value(key, at)),
        Kind::Seq(items) => items,
        Kind::Scalar { .. } | Kind::Map(_) => {
            return Err(PolicyFileError::new(
                at,
                format!(
                    "key '{key}' must be a list of conditions (`- name: ...`, optional `value: ...`)"
                ),
            ));
        }
    };
    items.into_iter().map(header).collect()
}

fn header(node: Node) -> Result<HeaderEntry, PolicyFileError> {
    let Kind::Map(pairs) = node.kind else {
        return Err(PolicyFileError::new(
            node.at,
            "each element of 'headers' must be a mapping with 'name' and optional 'value'",
        ));
    };
    let (mut name, mut value) = (None, None);
    for (key, at, node) in keyed(pairs)? {
        let slot = match key.as_str() {
            "name" => &mut name,
            "value" => &mut value,
            _ => {
                return Err(PolicyFileError::new(
                    at,
                    format!(
                        "unknown key '{key}' in a header condition: only 'name' and 'value' are allowed"
                    ),
                ));
            }
        };
        *slot = Some(match entry(key, at, node)? {
            Entry {
                value: RawValue::Scalar(text),
                ..
            } => text,
            Entry { key, at, .. } => {
                return Err(PolicyFileError::new(
                    at,
                    format!("key '{key}' of a header condition takes one value, not a list"),
                ));
            }
        });
    }
    let Some(name) = name else {
        return Err(PolicyFileError::new(
            node.at,
            "a header condition has no 'name'",
        ));
    };
    Ok(HeaderEntry {
        name,
        value,
        at: node.at,
    })
}

/// A mapping's entries as (key text, key position, value), with keys checked:
/// scalars, not empty, each written once.
fn keyed(pairs: Vec<(Node, Node)>) -> Result<Vec<(String, Position, Node)>, PolicyFileError> {
    let mut seen: HashMap<String, Position> = HashMap::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let text = match key.kind {
            Kind::Scalar { text, .. } if !text.is_empty() => text,
            Kind::Scalar { .. } => {
                return Err(PolicyFileError::new(key.at, "a key with no name"));
            }
            Kind::Seq(_) | Kind::Map(_) => {
                return Err(PolicyFileError::new(
                    key.at,
                    "a key must be plain text, not a list or a mapping",
                ));
            }
        };
        if let Some(first) = seen.get(&text) {
            return Err(PolicyFileError::new(
                key.at,
                format!(
                    "key '{text}' is written twice: on line {} and on line {}",
                    first.line, key.at.line
                ),
            ));
        }
        seen.insert(text.clone(), key.at);
        out.push((text, key.at, value));
    }
    Ok(out)
}

/// A plain `key: value`: a scalar, or a list of scalars (flow or block).
fn entry(key: String, at: Position, value: Node) -> Result<Entry, PolicyFileError> {
    let value = match value.kind {
        _ if value.is_null() => return Err(no_value(&key, at)),
        Kind::Scalar { text, .. } => RawValue::Scalar(text),
        Kind::Seq(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let problem = match item.kind {
                    _ if item.is_null() => "an empty element",
                    Kind::Scalar { text, .. } => {
                        list.push(text);
                        continue;
                    }
                    Kind::Seq(_) => "a list inside a list",
                    Kind::Map(_) => "a mapping inside a list",
                };
                return Err(PolicyFileError::new(
                    item.at,
                    format!(
                        "key '{key}' has {problem}: only a value or a list of values is allowed"
                    ),
                ));
            }
            RawValue::List(list)
        }
        Kind::Map(_) => {
            return Err(PolicyFileError::new(
                at,
                format!(
                    "key '{key}' holds a nested mapping: only a value or a list of values is allowed"
                ),
            ));
        }
    };
    Ok(Entry { key, value, at })
}

fn no_value(key: &str, at: Position) -> PolicyFileError {
    PolicyFileError::new(at, format!("key '{key}' has no value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"defaults:
  timeout: 2s
  retries: 2
  retry-on: [5xx, 429]        # a list, or a comma string
routes:
  - name: reports-slow
    host: reports
    port: 8080
    path-prefix: /slow
    method: GET
    headers:
      - name: x-canary
        value: "1"            # value omitted: header presence only
    timeout: 30s
    breaker-mode: observe
  - name: app-uploads
    direction: inbound
    path-prefix: /upload
    inbound-max-concurrent: 4
"#;

    fn pos(line: usize, col: usize) -> Position {
        Position { line, col }
    }

    fn scalar(key: &str, value: &str, line: usize, col: usize) -> Entry {
        Entry {
            key: key.to_string(),
            value: RawValue::Scalar(value.to_string()),
            at: pos(line, col),
        }
    }

    fn error(text: &str) -> PolicyFileError {
        read(text).expect_err("the file is refused")
    }

    /// Asserts the error's line and that its message contains `part`.
    fn assert_error(text: &str, line: usize, part: &str) {
        let e = error(text);
        assert_eq!(e.at.line, line, "{e}");
        assert!(e.message.contains(part), "{e}");
    }

    #[test]
    fn the_example_parses_with_positions() {
        let policy = read(EXAMPLE).expect("parses");
        assert_eq!(
            policy.defaults,
            vec![
                scalar("timeout", "2s", 2, 3),
                scalar("retries", "2", 3, 3),
                Entry {
                    key: "retry-on".to_string(),
                    value: RawValue::List(vec!["5xx".to_string(), "429".to_string()]),
                    at: pos(4, 3),
                },
            ]
        );
        assert_eq!(
            policy.routes,
            vec![
                RawRoute {
                    entries: vec![
                        scalar("name", "reports-slow", 6, 5),
                        scalar("host", "reports", 7, 5),
                        scalar("port", "8080", 8, 5),
                        scalar("path-prefix", "/slow", 9, 5),
                        scalar("method", "GET", 10, 5),
                        scalar("timeout", "30s", 14, 5),
                        scalar("breaker-mode", "observe", 15, 5),
                    ],
                    headers: vec![HeaderEntry {
                        name: "x-canary".to_string(),
                        value: Some("1".to_string()),
                        at: pos(12, 9),
                    }],
                    at: pos(6, 5),
                },
                RawRoute {
                    entries: vec![
                        scalar("name", "app-uploads", 16, 5),
                        scalar("direction", "inbound", 17, 5),
                        scalar("path-prefix", "/upload", 18, 5),
                        scalar("inbound-max-concurrent", "4", 19, 5),
                    ],
                    headers: vec![],
                    at: pos(16, 5),
                },
            ]
        );
    }

    #[test]
    fn scalars_keep_their_text() {
        let policy = read("defaults:\n  tls: true\n  retries: 02\n  q: 'null'\n  e: \"\"\n")
            .expect("parses");
        let values: Vec<_> = policy.defaults.iter().map(|e| e.value.joined()).collect();
        assert_eq!(values, ["true", "02", "null", ""]);
    }

    #[test]
    fn lists_block_or_flow_join_with_commas() {
        let policy = read("defaults:\n  retry-on:\n    - 5xx\n    - 429\n  b: []\n  c: 5xx,429\n")
            .expect("parses");
        assert_eq!(
            policy.defaults[0].value,
            RawValue::List(vec!["5xx".to_string(), "429".to_string()])
        );
        assert_eq!(policy.defaults[0].value.joined(), "5xx,429");
        assert_eq!(policy.defaults[1].value, RawValue::List(vec![]));
        assert_eq!(policy.defaults[2].value.joined(), "5xx,429");
    }

    #[test]
    fn a_header_without_value_checks_presence() {
        let policy =
            read("routes:\n  - host: a\n    headers:\n      - name: x-debug\n").expect("parses");
        assert_eq!(
            policy.routes[0].headers,
            vec![HeaderEntry {
                name: "x-debug".to_string(),
                value: None,
                at: pos(4, 9),
            }]
        );
    }

    #[test]
    fn empty_files_set_nothing() {
        for text in [
            "",
            "\n\n",
            "# nothing yet\n  # still nothing\n",
            "---\n",
            "---\n# c\n",
        ] {
            assert_eq!(read(text), Ok(RawPolicy::default()), "{text:?}");
        }
        assert_eq!(read("defaults: {}\nroutes: []\n"), Ok(RawPolicy::default()));
    }

    #[test]
    fn missing_values_name_the_key() {
        assert_error(
            "defaults:\n  retries: 2\n  timeout:\n",
            3,
            "key 'timeout' has no value",
        );
        assert_error("defaults:\n  timeout: ~\n", 2, "key 'timeout' has no value");
        assert_error(
            "routes:\n  - host: a\n    port: null\n",
            3,
            "key 'port' has no value",
        );
        assert_error("defaults:\n", 1, "key 'defaults' has no value");
        assert_error("routes:\n", 1, "key 'routes' has no value");
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - name: x\n        value:\n",
            5,
            "key 'value' has no value",
        );
        assert_error(
            "defaults:\n  retry-on: [5xx, ~]\n",
            2,
            "key 'retry-on' has an empty element",
        );
    }

    #[test]
    fn the_top_level_has_two_keys() {
        assert_error(
            "defaults: {}\nroute:\n  - host: a\n",
            2,
            "unknown top-level key 'route'",
        );
        assert_error("- a\n- b\n", 1, "must be a mapping");
        assert_error("just text\n", 1, "must be a mapping");
        assert_error("defaults: [a]\n", 1, "key 'defaults' must be a mapping");
        assert_error("defaults: 2s\n", 1, "key 'defaults' must be a mapping");
        assert_error("routes:\n  host: a\n", 1, "key 'routes' must be a list");
        assert_error(
            "routes:\n  - a\n",
            2,
            "each element of 'routes' must be a mapping",
        );
    }

    #[test]
    fn nesting_is_refused() {
        assert_error(
            "defaults:\n  timeout:\n    connect: 1s\n",
            2,
            "key 'timeout' holds a nested mapping",
        );
        assert_error(
            "routes:\n  - host: a\n    retry: {on: 5xx}\n",
            3,
            "key 'retry' holds a nested mapping",
        );
        assert_error(
            "defaults:\n  retry-on:\n    - 5xx\n    - [429, 503]\n",
            4,
            "key 'retry-on' has a list inside a list",
        );
        assert_error(
            "defaults:\n  retry-on:\n    - 5xx\n    - code: 429\n",
            4,
            "key 'retry-on' has a mapping inside a list",
        );
        // `headers` is only special inside a route.
        assert_error(
            "defaults:\n  headers:\n    - name: x\n",
            3,
            "key 'headers' has a mapping inside a list",
        );
    }

    #[test]
    fn keys_written_twice_name_both_lines() {
        let e = error("defaults:\n  timeout: 2s\n  retries: 2\n  timeout: 3s\n");
        assert_eq!(e.at, pos(4, 3));
        assert_eq!(
            e.message,
            "key 'timeout' is written twice: on line 2 and on line 4"
        );
        assert_error(
            "routes:\n  - host: a\n    port: 1\n  - host: b\n    host: c\n",
            5,
            "key 'host' is written twice: on line 4 and on line 5",
        );
        assert_error(
            "routes: []\nroutes: []\n",
            2,
            "key 'routes' is written twice",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - name: x\n        name: y\n",
            5,
            "key 'name' is written twice",
        );
        assert_error(
            "routes:\n  - host: a\n    headers: []\n    headers: []\n",
            4,
            "key 'headers' is written twice",
        );
    }

    #[test]
    fn headers_are_name_and_value_mappings() {
        assert_error(
            "routes:\n  - host: a\n    headers: x-canary\n",
            3,
            "key 'headers' must be a list",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      name: x\n",
            3,
            "key 'headers' must be a list",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - x-canary\n",
            4,
            "each element of 'headers' must be a mapping",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - value: \"1\"\n",
            4,
            "a header condition has no 'name'",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - name: x\n        regex: y\n",
            5,
            "unknown key 'regex' in a header condition",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - name: x\n        value: [a, b]\n",
            5,
            "key 'value' of a header condition takes one value",
        );
        assert_error(
            "routes:\n  - host: a\n    headers:\n      - name:\n",
            4,
            "key 'name' has no value",
        );
    }

    #[test]
    fn anchors_and_aliases_are_refused() {
        assert_error(
            "defaults:\n  timeout: &t 2s\n",
            2,
            "aliases are not supported",
        );
        assert_error(
            "routes:\n  - host: a\n    timeout: 2s\n  - host: b\n    timeout: *t\n",
            5,
            "aliases are not supported",
        );
        assert_error(
            "defaults: &d\n  timeout: 2s\n",
            2,
            "aliases are not supported",
        );
    }

    #[test]
    fn tags_are_refused() {
        assert_error("defaults:\n  port: !!str 8080\n", 2, "tags");
    }

    #[test]
    fn keys_must_be_text() {
        assert_error("defaults:\n  \"\": 1\n", 2, "a key with no name");
        assert_error(
            "defaults:\n  ? [a, b]\n  : 1\n",
            2,
            "a key must be plain text",
        );
    }

    #[test]
    fn a_second_document_is_refused() {
        assert_error(
            "defaults: {}\n---\nroutes: []\n",
            2,
            "a second YAML document",
        );
        assert_error("---\ndefaults: {}\n---\n", 3, "a second YAML document");
    }

    #[test]
    fn syntax_errors_keep_their_position() {
        // An unclosed flow list: the scanner notices on the next line's ':'.
        let e = error("defaults:\n  retry-on: [5xx, 429\n  timeout: 2s\n");
        assert_eq!(e.at, pos(3, 10), "{e}");
        // An unclosed quote is reported where it opens.
        let e = error("defaults:\n  timeout: \"2s\n");
        assert_eq!(e.at, pos(2, 12), "{e}");
        assert!(e.message.contains("quoted scalar"), "{e}");
        let e = error("defaults:\n  timeout: 2s\n bad: 1\n");
        assert_eq!(e.at, pos(3, 5), "{e}");
        assert!(e.to_string().starts_with("line 3, column 5: "), "{e}");
    }

    #[test]
    fn positions_display_as_line_and_column() {
        assert_eq!(pos(3, 5).to_string(), "line 3, column 5");
        assert_eq!(
            PolicyFileError::new(pos(1, 2), "x").to_string(),
            "line 1, column 2: x"
        );
    }
}
