//! Writing documents back: kubectl's layout, and quoting decided for YAML 1.1
//! readers (see the parent module).

use super::{Node, Scalar, ScalarKind};

/// Writes one document (no `---`), in kubectl's layout: two-space indentation,
/// sequence items at their key's indentation.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(entries) if !entries.is_empty() => emit_map(&mut out, entries, 0),
        Node::Seq(items) if !items.is_empty() => emit_seq(&mut out, items, 0),
        other => {
            out.push_str(&inline(other, 0));
            out.push('\n');
        }
    }
    out
}

fn emit_map(out: &mut String, entries: &[(Scalar, Node)], indent: usize) {
    for (i, (key, value)) in entries.iter().enumerate() {
        // The first entry of a mapping that is a sequence item follows its "- ".
        if i > 0 || !out.ends_with("- ") {
            push_indent(out, indent);
        }
        out.push_str(&scalar_text(key, indent));
        out.push(':');
        match value {
            Node::Map(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_map(out, inner, indent + 2);
            }
            Node::Seq(items) if !items.is_empty() => {
                out.push('\n');
                emit_seq(out, items, indent);
            }
            other => {
                out.push(' ');
                out.push_str(&inline(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn emit_seq(out: &mut String, items: &[Node], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Node::Map(entries) if !entries.is_empty() => emit_map(out, entries, indent + 2),
            Node::Seq(inner) if !inner.is_empty() => emit_seq(out, inner, indent + 2),
            other => {
                out.push_str(&inline(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar or an empty collection, on the current line (a literal block continues
/// on the next lines, at `indent`).
fn inline(node: &Node, indent: usize) -> String {
    match node {
        Node::Scalar(s) => scalar_text(s, indent),
        Node::Seq(_) => "[]".into(),
        Node::Map(_) => "{}".into(),
    }
}

fn scalar_text(s: &Scalar, indent: usize) -> String {
    match &s.kind {
        ScalarKind::Plain if plain_safe(&s.text) => s.text.clone(),
        ScalarKind::Plain | ScalarKind::Str => string_text(&s.text, indent),
        ScalarKind::Tagged(tag) if plain_safe(&s.text) => format!("{tag} {}", s.text),
        ScalarKind::Tagged(tag) => format!("{tag} {}", double_quoted(&s.text)),
    }
}

/// A string: plain when no YAML 1.1 reader can mistake it, a literal block when it
/// has several lines, else double-quoted.
fn string_text(text: &str, indent: usize) -> String {
    if plain_safe(text) && !may_resolve_to_non_string(text) {
        return text.to_string();
    }
    if let Some(block) = literal_block(text, indent) {
        return block;
    }
    double_quoted(text)
}

/// Whether `text`, written plain in block context, reads back as this same text.
fn plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let second = text.chars().nth(1);
    let starts_ok = match first {
        '-' | '?' | ':' => second.is_some_and(|c| !c.is_whitespace()),
        ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
        | '@' | '`' => false,
        c => !c.is_whitespace(),
    };
    starts_ok
        && !text.ends_with(char::is_whitespace)
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains(":\t")
        && text.chars().all(|c| {
            !c.is_control() && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
        && text != "---"
        && text != "..."
}

/// Whether a YAML 1.1 or 1.2 reader could resolve this plain text to a null, bool,
/// number, timestamp or merge key. Errs on the side of quoting: text that starts like
/// a number and holds only digits, hex digits, signs, `.`, `:`, `_` and radix letters
/// is quoted (`8080`, `0x1F`, `2024-01-01`, `1e3`); `50m`, `32Mi`, `15s` are not.
fn may_resolve_to_non_string(text: &str) -> bool {
    const WORDS: [&str; 14] = [
        "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", "<<", "=", ".inf", ".nan",
    ];
    let lower = text.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if WORDS.contains(&lower.as_str()) || WORDS.contains(&unsigned) {
        return true;
    }
    lower.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
        && lower.chars().any(|c| c.is_ascii_digit())
        && lower.chars().all(|c| {
            c.is_ascii_hexdigit()
                || matches!(
                    c,
                    '+' | '-' | '.' | ':' | '_' | 'x' | 'o' | 'p' | ' ' | 't' | 'z'
                )
        })
}

impl Scalar {
    /// Whether kubectl (a YAML 1.1 reader) reads this scalar as a string; plain text
    /// that might be a number counts as one.
    pub fn reads_as_string(&self) -> bool {
        match &self.kind {
            ScalarKind::Str => true,
            ScalarKind::Plain => !may_resolve_to_non_string(&self.text),
            ScalarKind::Tagged(_) => false,
        }
    }
}

/// `|` or `|-` with the lines at `indent`, when the text can be written that way.
fn literal_block(text: &str, indent: usize) -> Option<String> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let chomp = if text.ends_with('\n') { "|" } else { "|-" };
    let fits = text.contains('\n')
        && !body.ends_with('\n')
        && !body.starts_with([' ', '\t'])
        && !body.is_empty()
        && body.lines().all(|l| !l.ends_with([' ', '\t']))
        && body.chars().all(|c| {
            c == '\n'
                || (!c.is_control()
                    && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'))
        });
    if !fits {
        return None;
    }
    let mut out = String::from(chomp);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', indent));
            out.push_str(line);
        }
    }
    Some(out)
}

fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
