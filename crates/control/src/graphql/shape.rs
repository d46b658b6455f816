//! The shape of a document, checked on its text before the engine sees
//! it: how many aliases it uses, and how many selections its operations
//! and fragments hold once every fragment spread is expanded. The engine's
//! own validation walks each spread again, so a chain of fragments each
//! spreading the next twice (23 of them fit in 1 KB) made it visit about
//! 2^23 selections: one anonymous request held a worker for 24 s, and the
//! listener with it. Counted here with each fragment's size remembered,
//! that document costs a few dozen steps and is refused.

use std::collections::HashMap;

use async_graphql::parser::types::{
    ExecutableDocument, FragmentDefinition, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned};

use super::MAX_ALIASES;
use crate::error::AppError;

/// Most selections (fields, inline fragments and spreads, with every
/// spread expanded) an operation or a fragment may hold: the complexity
/// limit allows about 1,000 fields, and nothing legitimate comes near.
pub const MAX_SELECTIONS: usize = 2_000;

/// Most fragments spread within one another along one path.
const MAX_SPREAD_DEPTH: usize = 32;

/// Most argument values a document may hold (every argument of a field or
/// directive, the items of its lists and objects, variables' defaults),
/// and most variables it may define. Each can cost an error of its own in
/// the engine's validation: 16,000 arguments of one field, in 64 KB, came
/// back as 4.6 MB of errors to an anonymous caller.
pub const MAX_ARGUMENTS: usize = 1_000;
/// See [`MAX_ARGUMENTS`].
pub const MAX_VARIABLES: usize = 100;
/// Most errors one answer lists, over HTTP and the WebSocket alike (then
/// one saying how many more).
pub const MAX_ERRORS: usize = 50;
/// Most brackets (`{`, `[`, `(`) a document may open within one another.
/// The parser and every walk of a document recurse once per level: 2,000
/// nested list values (4 KB) overflowed a worker's stack and aborted the
/// process. Selections are bounded to 12 levels and nothing legitimate
/// nests values deeply, so this bound is far from real documents.
pub const MAX_NESTING: usize = 64;

/// Refuses an empty document, one with more than [`MAX_ALIASES`] aliases (fragments
/// included), or whose operations or fragments hold more than
/// [`MAX_SELECTIONS`] selections once expanded, or spread fragments
/// deeper than 32, or that opens brackets more than [`MAX_NESTING`] deep
/// (checked on the text first, before anything recurses over it). A
/// document that does not parse passes (the engine answers it). Returns
/// the document parsed, when it parses, for what reads it after the engine
/// (the order of the answer's fields).
pub fn check_document(query: &str) -> Result<Option<ExecutableDocument>, AppError> {
    if query.trim().is_empty() {
        return Err(AppError::bad("the request has no query"));
    }
    if nesting(query) > MAX_NESTING {
        return Err(AppError::bad(format!(
            "the query nests selections, lists or objects more than {MAX_NESTING} deep"
        )));
    }
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return Ok(None);
    };
    let ops: usize = doc
        .operations
        .iter()
        .map(|(_, op)| aliases(&op.node.selection_set.node))
        .sum();
    let frags: usize = doc
        .fragments
        .values()
        .map(|f| aliases(&f.node.selection_set.node))
        .sum();
    if ops + frags > MAX_ALIASES {
        return Err(AppError::bad(format!(
            "the query uses more than {MAX_ALIASES} aliases"
        )));
    }
    let variables: usize = doc
        .operations
        .iter()
        .map(|(_, op)| op.node.variable_definitions.len())
        .sum();
    if variables > MAX_VARIABLES {
        return Err(AppError::bad(format!(
            "the query defines more than {MAX_VARIABLES} variables"
        )));
    }
    if arguments::in_document(&doc) > MAX_ARGUMENTS {
        return Err(AppError::bad(format!(
            "the query holds more than {MAX_ARGUMENTS} argument values"
        )));
    }
    for (_, op) in doc.operations.iter() {
        if op.node.ty == OperationType::Subscription {
            let mut keys = Vec::new();
            root_keys(&op.node.selection_set.node, &doc.fragments, 0, &mut keys);
            keys.sort_unstable();
            keys.dedup();
            if keys.len() > 1 {
                return Err(AppError::bad(
                    "a subscription selects exactly one root field",
                ));
            }
        }
    }
    let mut sizes = Sizes {
        fragments: &doc.fragments,
        known: HashMap::new(),
    };
    let within = doc
        .operations
        .iter()
        .all(|(_, op)| sizes.set(&op.node.selection_set.node, 0).is_some())
        && doc
            .fragments
            .keys()
            .all(|name| sizes.fragment(name, 0).is_some());
    if !within {
        return Err(AppError::bad(format!(
            "the query holds more than {MAX_SELECTIONS} selections once its fragments are \
             spread, or spreads fragments more than {MAX_SPREAD_DEPTH} deep"
        )));
    }
    Ok(Some(doc))
}

/// How deep the brackets of a GraphQL document nest (`{`, `[` and `(`
/// alike), read as its lexer would read it: not inside strings, block
/// strings or comments. One pass, no recursion; an unbalanced or
/// unterminated document is measured as far as it goes.
fn nesting(query: &str) -> usize {
    let b = query.as_bytes();
    let (mut i, mut depth, mut most) = (0, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(br#"""""#) => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(br#"""""#) {
                    // `\"""` is an escaped delimiter; nothing else escapes.
                    i += if b[i..].starts_with(br#"\""""#) { 4 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                most = most.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    most
}

/// The response keys (alias or name) a root selection set gives, through
/// its fragments (at most [`MAX_SPREAD_DEPTH`] deep, and no more than a
/// few: past two the answer is known).
fn root_keys<'a>(
    set: &'a SelectionSet,
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    depth: usize,
    keys: &mut Vec<&'a str>,
) {
    if depth > MAX_SPREAD_DEPTH {
        return;
    }
    for s in &set.items {
        if keys.len() > 1 {
            return;
        }
        match &s.node {
            Selection::Field(f) => keys.push(f.node.response_key().node.as_str()),
            Selection::InlineFragment(i) => {
                root_keys(&i.node.selection_set.node, fragments, depth + 1, keys);
            }
            Selection::FragmentSpread(spread) => {
                if let Some(def) = fragments.get(&spread.node.fragment_name.node) {
                    root_keys(&def.node.selection_set.node, fragments, depth + 1, keys);
                }
            }
        }
    }
}

/// The aliases in a selection set, fragments not followed.
fn aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(f) => {
                usize::from(f.node.alias.is_some()) + aliases(&f.node.selection_set.node)
            }
            Selection::InlineFragment(i) => aliases(&i.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// Argument values, counted on the document as written (fragments once).
mod arguments {
    use async_graphql::Positioned;
    use async_graphql::parser::types::{Directive, ExecutableDocument, Selection, SelectionSet};
    use async_graphql_value::{ConstValue, Value};

    /// Every argument value of `doc` (list and object items included) and
    /// its variables' defaults.
    pub(super) fn in_document(doc: &ExecutableDocument) -> usize {
        let ops: usize = doc
            .operations
            .iter()
            .map(|(_, op)| {
                let vars: usize = op
                    .node
                    .variable_definitions
                    .iter()
                    .map(|v| {
                        directives(&v.node.directives)
                            + v.node
                                .default_value
                                .as_ref()
                                .map_or(0, |d| constant(&d.node))
                    })
                    .sum();
                vars + directives(&op.node.directives) + set(&op.node.selection_set.node)
            })
            .sum();
        let frags: usize = doc
            .fragments
            .values()
            .map(|f| directives(&f.node.directives) + set(&f.node.selection_set.node))
            .sum();
        ops.saturating_add(frags)
    }

    fn set(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => {
                    let args: usize = f.node.arguments.iter().map(|(_, v)| value(&v.node)).sum();
                    args + directives(&f.node.directives) + self::set(&f.node.selection_set.node)
                }
                Selection::InlineFragment(i) => {
                    directives(&i.node.directives) + self::set(&i.node.selection_set.node)
                }
                Selection::FragmentSpread(f) => directives(&f.node.directives),
            })
            .fold(0, usize::saturating_add)
    }

    fn directives(ds: &[Positioned<Directive>]) -> usize {
        ds.iter()
            .map(|d| {
                1 + d
                    .node
                    .arguments
                    .iter()
                    .map(|(_, v)| value(&v.node))
                    .sum::<usize>()
            })
            .sum()
    }

    fn value(v: &Value) -> usize {
        1 + match v {
            Value::List(items) => items.iter().map(value).sum(),
            Value::Object(fields) => fields.values().map(value).sum(),
            _ => 0,
        }
    }

    fn constant(v: &ConstValue) -> usize {
        1 + match v {
            ConstValue::List(items) => items.iter().map(constant).sum(),
            ConstValue::Object(fields) => fields.values().map(constant).sum(),
            _ => 0,
        }
    }
}

/// Expanded sizes, each fragment's counted once.
struct Sizes<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    known: HashMap<&'a str, usize>,
}

impl<'a> Sizes<'a> {
    /// The selections of `set` with spreads expanded; `None` past the
    /// bounds. `depth`: the spreads it sits within.
    fn set(&mut self, set: &'a SelectionSet, depth: usize) -> Option<usize> {
        let mut n = 0usize;
        for s in &set.items {
            let inner = match &s.node {
                Selection::Field(f) => self.set(&f.node.selection_set.node, depth)?,
                Selection::InlineFragment(i) => self.set(&i.node.selection_set.node, depth)?,
                Selection::FragmentSpread(spread) => {
                    self.fragment(&spread.node.fragment_name.node, depth + 1)?
                }
            };
            n = n.saturating_add(1).saturating_add(inner);
            if n > MAX_SELECTIONS {
                return None;
            }
        }
        Some(n)
    }

    /// The selections of fragment `name` expanded (0 for an unknown one,
    /// and for a cycle: the engine refuses both).
    fn fragment(&mut self, name: &'a str, depth: usize) -> Option<usize> {
        if depth > MAX_SPREAD_DEPTH {
            return None;
        }
        if let Some(n) = self.known.get(name) {
            return Some(*n);
        }
        let Some(def) = self.fragments.get(name) else {
            return Some(0);
        };
        self.known.insert(name, 0);
        let n = self.set(&def.node.selection_set.node, depth)?;
        self.known.insert(name, n);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` fragments, each spreading the next twice.
    fn doubling(n: usize) -> String {
        let mut q = String::from("query{...F0} ");
        for i in 0..n {
            q.push_str(&format!(
                "fragment F{i} on Query{{...F{} ...F{}}} ",
                i + 1,
                i + 1
            ));
        }
        q.push_str(&format!("fragment F{n} on Query{{__typename}}"));
        q
    }

    #[test]
    fn arguments_and_variables_are_bounded() {
        let args = |n: usize| {
            let list = vec!["a:1"; n].join(",");
            format!("{{settings({list}){{signUpEnabled}}}}")
        };
        assert!(check_document(&args(10)).is_ok());
        assert!(check_document(&args(MAX_ARGUMENTS + 1)).is_err());
        let items = vec!["1"; MAX_ARGUMENTS + 1].join(",");
        assert!(check_document(&format!("{{settings(a:[{items}]){{signUpEnabled}}}}")).is_err());
        let vars = |n: usize| {
            let defs: Vec<String> = (0..n).map(|i| format!("$v{i}:Int")).collect();
            format!("query({}){{__typename}}", defs.join(","))
        };
        assert!(check_document(&vars(MAX_VARIABLES)).is_ok());
        assert!(check_document(&vars(MAX_VARIABLES + 1)).is_err());
        // The same name over and over is as many definitions.
        let same = vec!["$a:Int"; MAX_VARIABLES + 1].join(",");
        assert!(check_document(&format!("query({same}){{__typename}}")).is_err());
    }

    #[test]
    fn fragments_spread_twice_at_every_level_are_refused_at_once() {
        assert!(check_document(&doubling(5)).is_ok(), "63 selections");
        let started = std::time::Instant::now();
        for n in [11, 23, 30, 200] {
            assert!(check_document(&doubling(n)).is_err(), "{n} levels");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn ordinary_documents_and_what_the_engine_refuses_itself_pass() {
        for ok in [
            "{ me { id email } }",
            "query Q { me { ...U } } fragment U on User { id email role }",
            "fragment A on Query { ...B } fragment B on Query { ...A } query { ...A }",
            "query { ...Missing }",
            "not a document",
        ] {
            assert!(check_document(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_subscription_selects_one_root_field() {
        for ok in [
            "subscription { nodeEvents { kind } }",
            "subscription { a: nodeEvents { kind } a: nodeEvents { nodeId } }",
            "subscription { ...S } fragment S on Subscription { nodeEvents { kind } }",
            "{ me { id } __typename }",
        ] {
            assert!(check_document(ok).is_ok(), "{ok}");
        }
        for bad in [
            "subscription { nodeEvents { kind } quotaEvents { kind } }",
            "subscription { nodeEvents { kind } ...S } fragment S on Subscription { quotaEvents { kind } }",
            "subscription { ... on Subscription { a: nodeEvents { kind } } nodeEvents { kind } }",
        ] {
            assert!(check_document(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_anything_recurses() {
        // What aborted the process: values nested 2,000 and 3,000 deep in
        // an argument, an object argument, a variable's default.
        for n in [MAX_NESTING + 1, 2_000, 3_000, 100_000] {
            let (open, close) = ("[".repeat(n), "]".repeat(n));
            let list = format!("{{settings(x:{open}1{close}){{signUpEnabled}}}}");
            let object = format!(
                "{{settings(x:{}1{}){{signUpEnabled}}}}",
                "{a:".repeat(n),
                "}".repeat(n)
            );
            let default = format!("query($v:Int={open}1{close}){{settings{{signUpEnabled}}}}");
            let selections = format!("{}{}", "{a".repeat(n), "}".repeat(n));
            for q in [list, object, default, selections, open] {
                assert!(check_document(&q).is_err(), "{n} levels");
            }
        }
        assert_eq!(nesting("{ a(x: [[1]]) { b { c } } }"), 4);
        // Brackets in strings, block strings (an escaped delimiter too) and
        // comments are not the document's.
        let noise = "[{(".repeat(100);
        let quoted = format!(
            r#"{{ a(x: "{noise}\"{noise}", y: """{noise}\"""{noise}""") # {noise}
               {{ b }} }}"#
        );
        assert_eq!(nesting(&quoted), 2, "{quoted}");
        assert!(check_document(&quoted).is_ok());
        let (open, close) = ("[".repeat(60), "]".repeat(60));
        assert!(
            check_document(&format!("{{settings(x:{open}1{close}){{signUpEnabled}}}}")).is_ok()
        );
    }

    #[test]
    fn a_long_chain_of_fragments_is_refused() {
        let mut q = String::from("query{...F0} ");
        for i in 0..40 {
            q.push_str(&format!("fragment F{i} on Query{{...F{}}} ", i + 1));
        }
        q.push_str("fragment F40 on Query{__typename}");
        assert!(check_document(&q).is_err());
    }

    #[test]
    fn many_flat_fields_past_the_bound_are_refused() {
        let fields = "__typename ".repeat(MAX_SELECTIONS + 1);
        assert!(check_document(&format!("{{{fields}}}")).is_err());
        let fields = "__typename ".repeat(100);
        assert!(check_document(&format!("{{{fields}}}")).is_ok());
    }
}
