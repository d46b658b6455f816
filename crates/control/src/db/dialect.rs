//! Raw SQL that PostgreSQL and SQLite spell differently (JSON functions,
//! placeholders, advisory locks), written once per dialect and chosen by
//! the type of the connection at hand, so a use case never tests which
//! backend it runs on.

use diesel_async::AsyncPgConnection;

use super::SqliteConn;

/// One statement, as each dialect spells it.
#[derive(Debug, Clone, Copy)]
pub struct Statement {
    /// The PostgreSQL text (`$1` placeholders).
    pub pg: &'static str,
    /// The SQLite text (`?1` placeholders); empty when SQLite needs nothing
    /// (see [`Statement::on`]).
    pub sqlite: &'static str,
}

impl Statement {
    /// The text for the dialect of `conn`; `None` when that dialect has
    /// nothing to run (a PostgreSQL-only lock, say).
    pub fn on<C: Dialect + ?Sized>(&self, _conn: &C) -> Option<&'static str> {
        Some(C::pick(self)).filter(|s| !s.is_empty())
    }

    /// Like [`Statement::on`] for statements both dialects have.
    pub fn text<C: Dialect + ?Sized>(&self, _conn: &C) -> &'static str {
        C::pick(self)
    }
}

/// A connection that knows which SQL dialect it speaks.
pub trait Dialect {
    /// The dialect's text of `s`.
    fn pick(s: &Statement) -> &'static str;
}

impl Dialect for AsyncPgConnection {
    fn pick(s: &Statement) -> &'static str {
        s.pg
    }
}

impl Dialect for SqliteConn {
    fn pick(s: &Statement) -> &'static str {
        s.sqlite
    }
}
