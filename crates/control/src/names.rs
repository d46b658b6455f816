//! Names an operator tells apart: a plan, node or gateway name, or a
//! gateway's public URL, is refused (CONFLICT) when another row holds it
//! in another case ("Pro" beside "pro", "Ärger" beside "ärger"), which the
//! schema's `UNIQUE`, comparing as written, lets through. Compared in
//! Unicode lower case here, the same on both backends (SQLite's `lower()`
//! folds ASCII only); the tables are the operator's few rows.

use crate::db::Statement;

/// Taken by every check of [`refuse_taken!`] on PostgreSQL, to the end of
/// its transaction: two registrations at once of "Pro" and "pro" would
/// otherwise each read a table without the other and both commit. SQLite
/// has one writer.
pub const NAMES_LOCK: Statement = Statement {
    pg: "SELECT pg_advisory_xact_lock(7352917460391)",
    sqlite: "",
};

/// Whether `a` and `b` are the same name in another case.
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// Inside a transaction on `$conn`: refuses with CONFLICT `$what` when a
/// row of `$table` other than `$except` holds `$value` in `$column`, in
/// any case (see the module).
#[macro_export]
macro_rules! refuse_taken {
    ($conn:expr, $table:ident, $column:ident, $value:expr, $except:expr, $what:expr) => {{
        if let Some(lock) = $crate::names::NAMES_LOCK.on($conn) {
            diesel::sql_query(lock).execute($conn).await?;
        }
        let held: Vec<String> = $table::table
            .filter($table::id.ne($except))
            .select($table::$column)
            .load($conn)
            .await?;
        let value: &str = $value;
        if held.iter().any(|h| $crate::names::same_name(h, value)) {
            return Err($crate::error::AppError::Conflict($what.into()));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_same_in_any_case_unicode_included() {
        assert!(same_name("Pro", "pro"));
        assert!(same_name("Ärger", "ärger"));
        assert!(same_name("KÖLN-1", "Köln-1"));
        assert!(!same_name("Pro", "Pro2"));
    }
}
