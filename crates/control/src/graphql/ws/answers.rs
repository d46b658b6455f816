//! The engine's messages on their way to the client: each answer's data in
//! the order its operation asked for the fields (the engine keeps them in
//! the order they finish), and every error the engine raised itself
//! (parse, validation, limits, input coercion) with the code
//! `BAD_REQUEST`, at most [`MAX_ERRORS`] of them, as on HTTP. Read and
//! written as the engine's own values, whose maps keep their order
//! (`serde_json`'s sort theirs).

use std::collections::HashMap;

use async_graphql::{Name, Value};

use async_graphql::parser::types::ExecutableDocument;

use crate::graphql::{MAX_ERRORS, as_asked};

/// An operation running on the socket, by id: what it asked, parsed once
/// (a live operation answers many times).
#[derive(Debug, Default)]
pub(super) struct Asked {
    /// The document (none: it did not parse, and the engine refuses it).
    pub doc: Option<ExecutableDocument>,
    /// The operation it names, if any.
    pub operation: Option<String>,
}

impl Asked {
    /// What a `subscribe`/`start` asks: its document as the shape check
    /// parsed it, and the operation it names. A subscription keeps no
    /// document: it selects one root field (the shape check sees to it),
    /// and its events' fields are read, not awaited, so they come in the
    /// order asked; its many answers then go as the engine wrote them.
    pub fn of(doc: Option<ExecutableDocument>, operation: Option<&str>) -> Self {
        Asked {
            doc: doc.filter(|doc| !subscribes(doc, operation)),
            operation: operation.map(str::to_owned),
        }
    }
}

/// Whether the operation `name` (or the only one) of `doc` is a
/// subscription.
fn subscribes(doc: &ExecutableDocument, name: Option<&str>) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let ty = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(n)) => ops.get(n).map(|op| op.node.ty),
        (DocumentOperations::Multiple(ops), None) => ops.values().next().map(|op| op.node.ty),
    };
    ty == Some(OperationType::Subscription)
}

/// A message's type and id, read without building the rest.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
}

/// A message of the engine, as it goes out.
#[derive(Debug)]
pub(super) struct Answer {
    /// Its `type`.
    pub kind: Option<String>,
    /// Its `id`.
    pub id: Option<String>,
    /// Its text, rewritten when its data or errors needed it.
    pub text: String,
}

/// `text` (a message of the engine) with its data in the order `asked`
/// says for its id, and its errors coded.
pub(super) fn answer(text: String, asked: &HashMap<String, Asked>) -> Answer {
    let Ok(Head { kind, id }) = serde_json::from_str::<Head>(&text) else {
        return Answer {
            kind: None,
            id: None,
            text,
        };
    };
    let to_order = matches!(kind.as_deref(), Some("next" | "data"))
        && id
            .as_deref()
            .and_then(|id| asked.get(id))
            .is_some_and(|a| a.doc.is_some());
    // `"errors"` anywhere may be a field's value, not the message's
    // errors: then it is read and written for nothing.
    let errors = kind.as_deref() == Some("error") || text.contains("\"errors\"");
    if !to_order && !errors {
        return Answer { kind, id, text };
    }
    let mut msg = match serde_json::from_str::<Value>(&text) {
        Ok(msg @ Value::Object(_)) => msg,
        _ => return Answer { kind, id, text },
    };
    let Value::Object(m) = &mut msg else {
        return Answer { kind, id, text };
    };
    let mut changed = false;
    match (kind.as_deref(), m.get_mut("payload")) {
        // The legacy protocol's error: one error object.
        (Some("error"), Some(p @ Value::Object(_))) => {
            let mut one = Value::List(vec![std::mem::take(p)]);
            changed |= coded(&mut one);
            if let Value::List(mut v) = one {
                *p = v.pop().unwrap_or(Value::Null);
            }
        }
        (Some("error"), Some(errors)) => changed |= coded(errors),
        (Some("next" | "data"), Some(Value::Object(p))) => {
            if let (Some(a), Some(data)) = (
                id.as_deref().and_then(|id| asked.get(id)),
                p.get_mut("data"),
            ) && let Some(doc) = &a.doc
                && matches!(data, Value::Object(d) if d.len() > 1 || d.values().any(nested))
            {
                as_asked(doc, a.operation.as_deref(), data);
                changed = true;
            }
            if let Some(errors) = p.get_mut("errors") {
                changed |= coded(errors);
            }
        }
        _ => {}
    }
    let text = if changed {
        serde_json::to_string(&msg).unwrap_or(text)
    } else {
        text
    };
    Answer { kind, id, text }
}

/// Whether a value holds fields of its own to order.
fn nested(v: &Value) -> bool {
    match v {
        Value::Object(_) => true,
        Value::List(items) => items.iter().any(nested),
        _ => false,
    }
}

/// Codes `errors` (a list) and bounds it; whether there was one.
fn coded(errors: &mut Value) -> bool {
    let Value::List(list) = errors else {
        return false;
    };
    if list.len() > MAX_ERRORS {
        let more = list.len() - MAX_ERRORS;
        list.truncate(MAX_ERRORS);
        let mut note = Value::Object(Default::default());
        if let Value::Object(n) = &mut note {
            n.insert(
                Name::new("message"),
                Value::String(format!("{more} more errors left out")),
            );
        }
        list.push(note);
    }
    for e in list.iter_mut() {
        if let Value::Object(obj) = e {
            let ext = obj
                .entry(Name::new("extensions"))
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(ext) = ext {
                ext.entry(Name::new("code"))
                    .or_insert_with(|| Value::String("BAD_REQUEST".into()));
            }
        }
    }
    !list.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(query: &str) -> HashMap<String, Asked> {
        HashMap::from([(
            "1".to_owned(),
            Asked {
                doc: async_graphql::parser::parse_query(query).ok(),
                operation: None,
            },
        )])
    }

    #[test]
    fn data_comes_in_the_order_asked_and_errors_are_coded() {
        let engine = r#"{"type":"next","id":"1","payload":{"data":{"a":1,"z":{"y":2,"b":3}},"errors":[{"message":"x"},{"message":"y","extensions":{"code":"FORBIDDEN"}}]}}"#;
        let a = answer(engine.into(), &asked("{ z { b y } a }"));
        assert_eq!(a.kind.as_deref(), Some("next"));
        assert_eq!(a.id.as_deref(), Some("1"));
        assert!(
            a.text.contains(r#""data":{"z":{"b":3,"y":2},"a":1}"#),
            "{}",
            a.text
        );
        assert!(
            a.text
                .contains(r#"{"message":"x","extensions":{"code":"BAD_REQUEST"}}"#),
            "{}",
            a.text
        );
        assert!(a.text.contains(r#""code":"FORBIDDEN""#), "{}", a.text);
    }

    #[test]
    fn errors_are_bounded_and_the_legacy_error_is_coded() {
        let many: Vec<String> = (0..MAX_ERRORS + 5)
            .map(|i| format!(r#"{{"message":"e{i}"}}"#))
            .collect();
        let engine = format!(
            r#"{{"type":"error","id":"9","payload":[{}]}}"#,
            many.join(",")
        );
        let a = answer(engine, &HashMap::new());
        assert!(a.text.contains("5 more errors left out"), "{}", a.text);
        assert_eq!(a.text.matches("BAD_REQUEST").count(), MAX_ERRORS + 1);
        let legacy = r#"{"type":"error","id":"2","payload":{"message":"bad"}}"#;
        let a = answer(legacy.into(), &HashMap::new());
        assert!(
            a.text
                .contains(r#""payload":{"message":"bad","extensions":{"code":"BAD_REQUEST"}}"#),
            "{}",
            a.text
        );
    }

    #[test]
    fn what_needs_nothing_goes_as_it_came() {
        for text in [
            r#"{"type":"connection_ack"}"#,
            r#"{"type":"next","id":"1","payload":{"data":{"z":1}}}"#,
            r#"{"type":"complete","id":"1"}"#,
            "not json",
        ] {
            assert_eq!(answer(text.into(), &asked("{ z }")).text, text);
        }
    }
}
