//! The YAML that `breakwater inject` reads and writes: a document tree that keeps
//! what kubectl needs to read a manifest back the same way, and an emitter.
//!
//! kubectl reads YAML 1.1 (go-yaml v2): a plain `yes`, `on` or `0755` is a bool or
//! a number there, while YAML 1.2 libraries call them strings. So the tree keeps,
//! for each scalar, whether it was plain (its text is written back plain, and means
//! to kubectl what it meant before) or a string (written quoted whenever a YAML 1.1
//! reader could take its text for something else). Parsing is yaml-rust2's event
//! parser; the tree is built here so that scalar styles survive.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

mod emit;
pub use emit::emit;

/// One YAML node.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in document order; keys are scalars.
    Map(Vec<(Scalar, Node)>),
}

/// A scalar and how it must be written back.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScalarKind {
    /// Written plain: a number, bool or null keeps its meaning for every reader.
    Plain,
    /// A string: quoted when a YAML 1.1 reader could take it for anything else.
    Str,
    /// An explicit tag other than `!!str`, kept as written (`!!binary`, `!custom`).
    Tagged(String),
}

/// Where parsing failed, inside one document's text.
#[derive(Debug, PartialEq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    pub message: String,
}

impl Scalar {
    pub fn str(text: impl Into<String>) -> Scalar {
        Scalar {
            text: text.into(),
            kind: ScalarKind::Str,
        }
    }

    pub fn plain(text: impl Into<String>) -> Scalar {
        Scalar {
            text: text.into(),
            kind: ScalarKind::Plain,
        }
    }
}

impl Node {
    /// A string.
    pub fn str(text: impl Into<String>) -> Node {
        Node::Scalar(Scalar::str(text))
    }

    /// A number or bool, written plain.
    pub fn plain(value: impl ToString) -> Node {
        Node::Scalar(Scalar::plain(value.to_string()))
    }

    /// A mapping from string keys, in the order given.
    pub fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Scalar::str(k), v))
                .collect(),
        )
    }

    /// The scalar's text, for a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// The value under `key`, for a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.text == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.text == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows `path` through mappings.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    /// Sets `key` in a mapping, in place when it exists, else at the end.
    /// Does nothing on a node that is not a mapping.
    pub fn set(&mut self, key: &str, value: Node) {
        if let Node::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k.text == key) {
                Some((_, v)) => *v = value,
                None => entries.push((Scalar::str(key), value)),
            }
        }
    }

    /// Removes `key` from a mapping.
    pub fn remove(&mut self, key: &str) {
        if let Node::Map(entries) = self {
            entries.retain(|(k, _)| k.text != key);
        }
    }

    /// The mapping under `key`, made (or replaced, if it is null) when missing.
    /// `None` when the value there is something else.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Node> {
        let missing = !matches!(self.get(key), Some(Node::Map(_)));
        if missing {
            match self.get(key) {
                None => self.set(key, Node::Map(Vec::new())),
                Some(v) if v.is_null() => self.set(key, Node::Map(Vec::new())),
                Some(_) => return None,
            }
        }
        self.get_mut(key)
    }

    /// The sequence under `key`, made when missing or null. `None` when the value there
    /// is something else.
    pub fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Node>> {
        let missing = !matches!(self.get(key), Some(Node::Seq(_)));
        if missing {
            match self.get(key) {
                None => self.set(key, Node::Seq(Vec::new())),
                Some(v) if v.is_null() => self.set(key, Node::Seq(Vec::new())),
                Some(_) => return None,
            }
        }
        match self.get_mut(key) {
            Some(Node::Seq(items)) => Some(items),
            _ => None,
        }
    }

    /// Whether a YAML 1.1 reader (kubectl's go-yaml) takes this scalar for `true`:
    /// `true`, `yes`, `on`, `y` in any of their spellings. Quoted, the API server
    /// would refuse it for a bool field; it counts too, to err on the safe side.
    pub fn is_true(&self) -> bool {
        const TRUE: [&str; 11] = [
            "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
        ];
        matches!(self, Node::Scalar(s) if TRUE.contains(&s.text.as_str()))
    }

    /// A plain null (`null`, `~` or nothing).
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar(Scalar { text, kind: ScalarKind::Plain })
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn size(&self) -> usize {
        match self {
            Node::Scalar(_) => 1,
            Node::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Node::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.size()).sum::<usize>(),
        }
    }
}

/// Nodes that alias expansion may create in one document: enough for any manifest,
/// and a bound on a "billion laughs" input.
const MAX_ALIAS_NODES: usize = 1_000_000;

/// Parses one document's text: `Ok(None)` when it holds no node (empty, comments).
pub fn parse(text: &str) -> Result<Option<Node>, ParseError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(at(e.marker(), e.info()));
    }
    if let Some((mark, message)) = builder.error {
        return Err(at(&mark, &message));
    }
    if let Some(mark) = builder.second_doc {
        return Err(at(
            &mark,
            "a second document without a `---` line before it",
        ));
    }
    Ok(builder.docs.pop().flatten())
}

fn at(mark: &Marker, message: &str) -> ParseError {
    ParseError {
        line: mark.line().max(1),
        column: mark.col() + 1,
        message: message.to_string(),
    }
}

enum Frame {
    Seq(Vec<Node>, usize),
    Map(Vec<(Scalar, Node)>, Option<Scalar>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    docs: Vec<Option<Node>>,
    expanded: usize,
    error: Option<(Marker, String)>,
    second_doc: Option<Marker>,
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: &str) {
        self.error.get_or_insert((mark, message.to_string()));
    }

    fn insert(&mut self, node: Node, mark: Marker) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, key, _)) => match (key.take(), node) {
                (Some(k), v) => entries.push((k, v)),
                (None, Node::Scalar(k)) => *key = Some(k),
                (None, _) => self.fail(mark, "a mapping key that is not a scalar"),
            },
        }
    }

    fn anchor(&mut self, id: usize, node: &Node) {
        if id > 0 {
            self.anchors.insert(id, node.clone());
        }
    }
}

fn scalar(text: String, style: TScalarStyle, tag: Option<Tag>) -> Scalar {
    let kind = match tag {
        Some(t) if t.handle == "tag:yaml.org,2002:" && t.suffix == "str" => ScalarKind::Str,
        Some(t) if t.handle == "tag:yaml.org,2002:" => {
            ScalarKind::Tagged(format!("!!{}", t.suffix))
        }
        Some(t) if t.handle == "!" || t.handle.is_empty() => {
            ScalarKind::Tagged(format!("!{}", t.suffix.trim_start_matches('!')))
        }
        Some(t) => ScalarKind::Tagged(format!("!<{}{}>", t.handle, t.suffix)),
        None if style == TScalarStyle::Plain => ScalarKind::Plain,
        None => ScalarKind::Str,
    };
    Scalar { text, kind }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                if !self.docs.is_empty() {
                    self.second_doc.get_or_insert(mark);
                }
            }
            Event::DocumentEnd => {
                let root = self.root.take();
                self.docs.push(root);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node::Scalar(scalar(text, style, tag));
                self.anchor(anchor, &node);
                self.insert(node, mark);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, anchor)) => (Node::Seq(items), anchor),
                    Some(Frame::Map(entries, _, anchor)) => (Node::Map(entries), anchor),
                    None => return self.fail(mark, "unbalanced collection"),
                };
                self.anchor(anchor, &node);
                self.insert(node, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    self.expanded += node.size();
                    if self.expanded > MAX_ALIAS_NODES {
                        return self.fail(mark, "aliases expand to too many nodes");
                    }
                    self.insert(node, mark);
                }
                None => self.fail(mark, "an alias to an anchor that is not complete"),
            },
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        emit(&parse(text).expect("parses").expect("a node"))
    }

    #[test]
    fn plain_scalars_keep_their_yaml_1_1_meaning() {
        // A plain `yes` or `0755` means true or 493 to kubectl: written back plain.
        let out = roundtrip("a: yes\nb: 0755\nc: 1.5\nd: null\ne: ~\n");
        assert_eq!(out, "a: yes\nb: 0755\nc: 1.5\nd: null\ne: ~\n");
    }

    #[test]
    fn strings_that_look_like_other_things_are_quoted() {
        let out = roundtrip(
            "a: 'yes'\nb: \"8080\"\nc: 'on'\nd: ''\ne: 'y'\nf: '2024-01-01'\ng: 'plain'\nh: '.5'\ni: '- x'\nj: 'a: b'\n",
        );
        assert_eq!(
            out,
            "a: \"yes\"\nb: \"8080\"\nc: \"on\"\nd: \"\"\ne: \"y\"\nf: \"2024-01-01\"\ng: plain\nh: \".5\"\ni: \"- x\"\nj: \"a: b\"\n"
        );
    }

    #[test]
    fn layout_is_kubectls() {
        let text = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: app\n    args:\n    - --x=1\n    - - nested\n      - seq\n    env: []\n    ports: {}\n";
        assert_eq!(roundtrip(text), text);
    }

    #[test]
    fn multi_line_strings_become_literal_blocks() {
        let out = roundtrip(
            "data:\n  script: \"echo a\\necho b\\n\"\n  two: \"x\\ny\"\n  spaced: \" lead\\nx\"\n",
        );
        assert_eq!(
            out,
            "data:\n  script: |\n    echo a\n    echo b\n  two: |-\n    x\n    y\n  spaced: \" lead\\nx\"\n"
        );
        assert_eq!(roundtrip(&out), out);
    }

    #[test]
    fn aliases_are_expanded_and_tags_kept() {
        let out = roundtrip("a: &x {k: v}\nb: *x\nc: !!binary aGk=\nd: !!str 12\n");
        assert_eq!(out, "a:\n  k: v\nb:\n  k: v\nc: !!binary aGk=\nd: \"12\"\n");
    }

    #[test]
    fn errors_carry_line_and_column() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").expect_err("unclosed flow sequence");
        assert!(err.line >= 2, "{err:?}");
        let err = parse("a: 1\n  b: 2\n").expect_err("bad indentation");
        assert_eq!(err.line, 2, "{err:?}");
        let err = parse("a: 1\n...\nb: 2\n").expect_err("two documents");
        assert!(err.message.contains("second document"), "{err:?}");
    }

    #[test]
    fn empty_documents_hold_no_node() {
        assert_eq!(parse("").expect("parses"), None);
        assert_eq!(parse("# only a comment\n").expect("parses"), None);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text).expect_err("too large");
        assert!(err.message.contains("too many"), "{err:?}");
    }
}
