//! Names an operator tells apart: a plan, node or gateway name, or a
//! gateway's public URL, is refused (CONFLICT) when another row holds it
//! in another case ("Pro" beside "pro"), which the schema's `UNIQUE`,
//! comparing as written, lets through.

diesel::define_sql_function! {
    /// SQL `lower()`: ASCII letters on SQLite, the database's collation on
    /// PostgreSQL; both sides of a comparison go through it, so each
    /// backend compares consistently.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Inside a transaction on `$conn`: refuses with CONFLICT `$what` when a
/// row of `$table` other than `$except` holds `$value` in `$column`, in
/// any case.
#[macro_export]
macro_rules! refuse_taken {
    ($conn:expr, $table:ident, $column:ident, $value:expr, $except:expr, $what:expr) => {{
        let taken: i64 = $table::table
            .filter($crate::names::lower($table::$column).eq($crate::names::lower($value)))
            .filter($table::id.ne($except))
            .count()
            .get_result($conn)
            .await?;
        if taken > 0 {
            return Err($crate::error::AppError::Conflict($what.into()));
        }
    }};
}
