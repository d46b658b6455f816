//! Answers in the order their fields were asked. The engine resolves the
//! fields of an object concurrently and keeps them in the order they
//! finish: on PostgreSQL, where resolvers wait on the database, the same
//! query's root fields came back in another order at each request. The
//! GraphQL specification has a result map keep the order of its selection
//! set ("Serialized Map Ordering"); clients and snapshot tests rely on it.

use std::collections::HashMap;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Value};

/// Most fragments spread within one another that are followed (the shape
/// check refuses deeper documents before they run).
const MAX_SPREADS: usize = 32;

/// Puts the fields of `data`, at every level, in the order `doc`'s
/// operation (`operation_name`, or its only one) selects them. An
/// operation the document does not hold leaves `data` as it is.
pub fn as_asked(doc: &ExecutableDocument, operation_name: Option<&str>, data: &mut Value) {
    if !matches!(data, Value::Object(m) if !m.is_empty()) {
        return;
    }
    let Some(set) = operation(doc, operation_name) else {
        return;
    };
    order(&[set], &doc.fragments, data);
}

fn operation<'a>(doc: &'a ExecutableDocument, name: Option<&str>) -> Option<&'a SelectionSet> {
    let op = match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name)?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        (DocumentOperations::Multiple(_), None) => return None,
    };
    Some(&op.node.selection_set.node)
}

type Fragments = HashMap<Name, Positioned<FragmentDefinition>>;

/// Orders `value` (an object, or a list of them at any depth) by the
/// fields `sets` select, then each field's value by its own selections.
/// Keys no selection names (none, normally) stay, after the others.
fn order(sets: &[&SelectionSet], fragments: &Fragments, value: &mut Value) {
    match value {
        Value::List(items) => {
            for item in items {
                order(sets, fragments, item);
            }
        }
        Value::Object(map) => {
            let mut fields = Fields::default();
            for set in sets {
                fields.collect(set, fragments, 0);
            }
            let mut rest = std::mem::take(map);
            for (key, subs) in fields.keys {
                if let Some((name, mut v)) = rest.shift_remove_entry(key) {
                    if !subs.is_empty() {
                        order(&subs, fragments, &mut v);
                    }
                    map.insert(name, v);
                }
            }
            map.extend(rest);
        }
        _ => {}
    }
}

/// The response keys of a selection, in order, each with the selection
/// sets of every field answering to it (fields of one key are merged).
#[derive(Default)]
struct Fields<'a> {
    keys: Vec<(&'a str, Vec<&'a SelectionSet>)>,
    at: HashMap<&'a str, usize>,
}

impl<'a> Fields<'a> {
    fn collect(&mut self, set: &'a SelectionSet, fragments: &'a Fragments, spreads: usize) {
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    let key = f.node.response_key().node.as_str();
                    let i = *self.at.entry(key).or_insert_with(|| {
                        self.keys.push((key, Vec::new()));
                        self.keys.len() - 1
                    });
                    let sub = &f.node.selection_set.node;
                    if !sub.items.is_empty() {
                        self.keys[i].1.push(sub);
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.collect(&inline.node.selection_set.node, fragments, spreads);
                }
                Selection::FragmentSpread(spread) if spreads < MAX_SPREADS => {
                    if let Some(def) = fragments.get(&spread.node.fragment_name.node) {
                        self.collect(&def.node.selection_set.node, fragments, spreads + 1);
                    }
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).expect("a document")
    }

    fn keys(v: &Value) -> Vec<String> {
        match v {
            Value::Object(m) => m.keys().map(|k| k.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// An answer as the engine may give it (read as written: the engine's
    /// maps keep their order, `serde_json`'s sort theirs).
    fn answer(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    #[test]
    fn fields_come_back_in_the_order_asked_at_every_level() {
        // As the engine may give them: in the order they finished.
        let mut data = answer(
            r#"{"m": {"b": 1, "a": 2}, "a": [{"y": 1, "x": 2}, {"x": 3, "y": 4}],
                "z": 0, "__typename": "Query"}"#,
        );
        let query = "query Q { z: settings { signUpEnabled } ...F m: me { a b } \
                     ... on Query { __typename } } \
                     fragment F on Query { a: devices { x y } }";
        as_asked(&parsed(query), Some("Q"), &mut data);
        assert_eq!(keys(&data), ["z", "a", "m", "__typename"]);
        let Value::Object(m) = &data else {
            panic!("an object")
        };
        assert_eq!(keys(&m["m"]), ["a", "b"]);
        let Value::List(items) = &m["a"] else {
            panic!("a list")
        };
        for item in items {
            assert_eq!(keys(item), ["x", "y"]);
        }
    }

    #[test]
    fn what_cannot_be_matched_is_left_as_it_is() {
        let given = answer(r#"{"b": 1, "a": 2}"#);
        for (query, name) in [
            ("query A { a b } query B { b a }", None),
            ("query A { a b }", Some("Missing")),
        ] {
            let mut data = given.clone();
            as_asked(&parsed(query), name, &mut data);
            assert_eq!(keys(&data), ["b", "a"], "{query}");
        }
        // A key no selection names stays, after the others.
        let mut data = answer(r#"{"extra": 0, "b": 1, "a": 2}"#);
        as_asked(&parsed("{ a b }"), None, &mut data);
        assert_eq!(keys(&data), ["a", "b", "extra"]);
    }
}
