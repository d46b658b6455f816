//! Raw SQL that the connection keeps prepared. diesel's `sql_query` marks
//! itself unsafe to cache, so PostgreSQL parses and plans it on every call;
//! a [`Prepared`] statement is cached by its text like a query built with
//! the DSL, which matters on the hot routes (a usage report runs two raw
//! statements per request).
//!
//! The text is a [`Statement`]'s, with numbered placeholders (`$1` on
//! PostgreSQL, `?1` on SQLite); each placeholder is handed to diesel as a
//! bind of the value with that number, in the order the placeholders
//! appear, so a number used twice binds its value twice.

use std::borrow::Cow;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Integer, Nullable, Text, Timestamp, Untyped};
use diesel::{QueryResult, result::Error};

use super::{Dialect, Statement};

/// One bound value.
#[derive(Debug, Clone)]
pub enum Param<'a> {
    /// `TEXT`.
    Text(Cow<'a, str>),
    /// `TEXT`, possibly `NULL`.
    OptText(Option<Cow<'a, str>>),
    /// `BIGINT`.
    BigInt(i64),
    /// `INTEGER`.
    Integer(i32),
    /// `TIMESTAMP`.
    Timestamp(NaiveDateTime),
    /// `TIMESTAMP`, possibly `NULL`.
    OptTimestamp(Option<NaiveDateTime>),
}

/// A statement's text for one dialect with its bound values; run it with
/// diesel-async's `RunQueryDsl` like `sql_query`.
#[derive(Debug, Clone)]
#[must_use = "a statement does nothing until it is run"]
pub struct Prepared<'a> {
    text: &'static str,
    params: Vec<Param<'a>>,
}

impl Statement {
    /// This statement for the dialect of `conn`, ready to take its values
    /// (see [`Prepared`]).
    pub fn prepared<'a, C: Dialect + ?Sized>(&self, conn: &C) -> Prepared<'a> {
        Prepared {
            text: self.text(conn),
            params: Vec::new(),
        }
    }
}

impl<'a> Prepared<'a> {
    /// Binds the next value as `TEXT`.
    pub fn text(mut self, v: impl Into<Cow<'a, str>>) -> Self {
        self.params.push(Param::Text(v.into()));
        self
    }

    /// Binds the next value as `TEXT` or `NULL`.
    pub fn opt_text(mut self, v: Option<impl Into<Cow<'a, str>>>) -> Self {
        self.params.push(Param::OptText(v.map(Into::into)));
        self
    }

    /// Binds the next value as `BIGINT`.
    pub fn bigint(mut self, v: i64) -> Self {
        self.params.push(Param::BigInt(v));
        self
    }

    /// Binds the next value as `INTEGER`.
    pub fn integer(mut self, v: i32) -> Self {
        self.params.push(Param::Integer(v));
        self
    }

    /// Binds `v` encoded as JSON as the next value, as `TEXT` (cast it in
    /// the statement: `$1::json`).
    pub fn json(self, v: &impl serde::Serialize) -> QueryResult<Self> {
        let json = serde_json::to_string(v).map_err(|e| Error::SerializationError(Box::new(e)))?;
        Ok(self.text(json))
    }

    /// Binds the next value as `TIMESTAMP`.
    pub fn timestamp(mut self, v: NaiveDateTime) -> Self {
        self.params.push(Param::Timestamp(v));
        self
    }

    /// Binds the next value as `TIMESTAMP` or `NULL`.
    pub fn opt_timestamp(mut self, v: Option<NaiveDateTime>) -> Self {
        self.params.push(Param::OptTimestamp(v));
        self
    }
}

/// The pieces of `text` around its numbered placeholders: the text before
/// each placeholder with the placeholder's number, and the tail. A `$` or
/// `?` not followed by a digit (a JSON path such as `'$.id'`) is text.
fn pieces(text: &str) -> (Vec<(&str, usize)>, &str) {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if matches!(bytes[i], b'$' | b'?') {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 {
                let n = text[i + 1..i + 1 + digits].parse().unwrap_or(0);
                out.push((&text[start..i], n));
                i += 1 + digits;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    (out, &text[start..])
}

impl<'a, DB> QueryFragment<DB> for Prepared<'a>
where
    DB: Backend
        + HasSqlType<Text>
        + HasSqlType<BigInt>
        + HasSqlType<Integer>
        + HasSqlType<Timestamp>,
    str: ToSql<Text, DB>,
    i32: ToSql<Integer, DB>,
    Option<Cow<'a, str>>: ToSql<Nullable<Text>, DB>,
    i64: ToSql<BigInt, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
    Option<NaiveDateTime>: ToSql<Nullable<Timestamp>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let (pieces, tail) = pieces(self.text);
        for (before, n) in pieces {
            out.push_sql(before);
            let param = n
                .checked_sub(1)
                .and_then(|i| self.params.get(i))
                .ok_or_else(|| {
                    Error::QueryBuilderError(
                        format!("placeholder {n} has no bound value in: {}", self.text).into(),
                    )
                })?;
            match param {
                Param::Text(v) => out.push_bind_param::<Text, str>(v.as_ref())?,
                Param::OptText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                Param::BigInt(v) => out.push_bind_param::<BigInt, _>(v)?,
                Param::Integer(v) => out.push_bind_param::<Integer, _>(v)?,
                Param::Timestamp(v) => out.push_bind_param::<Timestamp, _>(v)?,
                Param::OptTimestamp(v) => out.push_bind_param::<Nullable<Timestamp>, _>(v)?,
            }
        }
        out.push_sql(tail);
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    // Cached by its text (and bind types), like any query without a static
    // id that is safe to cache.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_split_the_text_and_json_paths_do_not() {
        let (p, tail) =
            pieces("SELECT json_extract(value, '$.id') FROM t WHERE a = ?1 AND b = ?12");
        assert_eq!(
            p,
            vec![
                ("SELECT json_extract(value, '$.id') FROM t WHERE a = ", 1),
                (" AND b = ", 12)
            ]
        );
        assert_eq!(tail, "");
        let (p, tail) = pieces("x = $2::json, y = $1 $");
        assert_eq!(p, vec![("x = ", 2), ("::json, y = ", 1)]);
        assert_eq!(tail, " $");
    }
}
