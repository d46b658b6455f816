//! One check on every input value of every operation, on every transport:
//! a schema extension that looks at the parsed document and its variables
//! before anything runs. Strings no column can hold (a NUL character:
//! PostgreSQL refuses it in `text`) are refused as `BAD_REQUEST` here, so
//! no resolver has to remember them. Ranges, lengths and shapes are checked
//! by the scalars and by [`crate::validate`].

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, Value, Variables};

use crate::validate;

/// The extension factory installed on the schema; `introspection`:
/// whether the schema answers `__schema` and `__type` (debug mode).
pub struct InputCheck {
    /// The schema answers introspection.
    pub introspection: bool,
}

impl ExtensionFactory for InputCheck {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(InputCheckExtension {
            introspection: self.introspection,
        })
    }
}

struct InputCheckExtension {
    introspection: bool,
}

#[async_graphql::async_trait::async_trait]
impl Extension for InputCheckExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        for (name, value) in variables.iter() {
            check_value(value).map_err(|m| bad(format!("variable ${name}: {m}")))?;
        }
        for (_, op) in doc.operations.iter() {
            for var in &op.node.variable_definitions {
                if let Some(default) = &var.node.default_value {
                    check_value(&default.node).map_err(bad)?;
                }
            }
            check_set(&op.node.selection_set.node)?;
        }
        for frag in doc.fragments.values() {
            check_set(&frag.node.selection_set.node)?;
        }
        if !self.introspection {
            for (_, op) in doc.operations.iter() {
                if introspects(&doc, &op.node.selection_set.node, 0) {
                    // The engine would answer `null` for a non-null field,
                    // with no error to say why.
                    return Err(coded(
                        "introspection is disabled on this server".into(),
                        "FORBIDDEN",
                    ));
                }
            }
        }
        Ok(doc)
    }
}

/// Whether the root selection `set` of an operation of `doc` asks for
/// `__schema` or `__type` (through fragments too, to a bounded depth:
/// the document's own checks refuse cycles).
fn introspects(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> bool {
    depth < 16
        && set.items.iter().any(|item| match &item.node {
            Selection::Field(f) => matches!(f.node.name.node.as_str(), "__schema" | "__type"),
            Selection::InlineFragment(i) => introspects(doc, &i.node.selection_set.node, depth + 1),
            Selection::FragmentSpread(s) => doc
                .fragments
                .get(&s.node.fragment_name.node)
                .is_some_and(|f| introspects(doc, &f.node.selection_set.node, depth + 1)),
        })
}

fn bad(message: String) -> ServerError {
    coded(message, "BAD_REQUEST")
}

fn coded(message: String, code: &str) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", code);
    err.extensions = Some(ext);
    err
}

fn check_set(set: &SelectionSet) -> ServerResult<()> {
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                for (name, value) in &f.node.arguments {
                    // Variables stand for themselves: their values are
                    // checked on their own.
                    let literal = value
                        .node
                        .clone()
                        .into_const_with(|_| Ok::<_, std::convert::Infallible>(Value::Null));
                    let Ok(literal) = literal;
                    check_value(&literal)
                        .map_err(|m| bad(format!("argument {}: {m}", name.node)))?;
                }
                check_set(&f.node.selection_set.node)?;
            }
            Selection::InlineFragment(i) => check_set(&i.node.selection_set.node)?,
            Selection::FragmentSpread(_) => {}
        }
    }
    Ok(())
}

/// Checks every string inside a value (keys included).
pub fn check_value(value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) => validate::storable(s),
        Value::List(items) => items.iter().try_for_each(check_value),
        Value::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            validate::storable(k.as_str())?;
            check_value(v)
        }),
        _ => Ok(()),
    }
}
/// A field an update may change but not clear: left out, it stays as it
/// is; given, it changes; an explicit `null` is refused (`BAD_REQUEST`):
/// it read as left out, so a client could not tell that its null was
/// dropped (beside `trafficLimitBytes`, whose null means unlimited).
pub fn kept<T>(
    field: &str,
    value: async_graphql::MaybeUndefined<T>,
) -> async_graphql::Result<Option<T>> {
    match value {
        async_graphql::MaybeUndefined::Undefined => Ok(None),
        async_graphql::MaybeUndefined::Value(v) => Ok(Some(v)),
        async_graphql::MaybeUndefined::Null => Err(crate::error::AppError::bad(format!(
            "{field} cannot be null: leave it out to keep it as it is"
        ))
        .into_graphql()),
    }
}
