//! Pods as JSON, for the admission webhook: the API server sends a pod as JSON, and
//! injection works on the [`Node`] tree that `inject` reads from YAML, so that both
//! go through one implementation.

use serde_json::Value;

use super::yaml::{Node, Scalar, ScalarKind};

/// A JSON value as a tree: numbers, bools and null plain, strings as strings.
pub fn to_node(value: &Value) -> Node {
    match value {
        Value::Null => Node::Scalar(Scalar::plain("null")),
        Value::Bool(b) => Node::plain(b),
        Value::Number(n) => Node::plain(n),
        Value::String(s) => Node::str(s.as_str()),
        Value::Array(items) => Node::Seq(items.iter().map(to_node).collect()),
        Value::Object(entries) => Node::Map(
            entries
                .iter()
                .map(|(k, v)| (Scalar::str(k.as_str()), to_node(v)))
                .collect(),
        ),
    }
}

/// The tree back as JSON. A plain scalar is the JSON literal it spells (injection
/// writes numbers and bools plain), else a string.
pub fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(Scalar {
            text,
            kind: ScalarKind::Plain,
        }) => match serde_json::from_str::<Value>(text) {
            Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_))) => v,
            _ => Value::String(text.clone()),
        },
        Node::Scalar(s) => Value::String(s.text.clone()),
        Node::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.text.clone(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_goes_through_the_tree_unchanged() {
        let pod = serde_json::json!({
            "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"a": "true"}},
            "spec": {
                "hostNetwork": false,
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "web", "ports": [{"containerPort": 8080}], "args": ["8080", "null"]}],
                "x": null,
                "ratio": 0.5,
            }
        });
        assert_eq!(to_json(&to_node(&pod)), pod);
    }

    #[test]
    fn plain_scalars_become_json_literals() {
        let node = Node::map([
            ("port", Node::plain(15000)),
            ("on", Node::plain(true)),
            ("name", Node::str("15000")),
        ]);
        assert_eq!(
            to_json(&node),
            serde_json::json!({"port": 15000, "on": true, "name": "15000"})
        );
    }
}
