//! Names an operator tells apart: a plan, node or gateway name, or a
//! gateway's public URL, is refused (CONFLICT) when another row holds it
//! in another case or writing ("Pro" beside "pro", "Ärger" beside "ärger",
//! a decomposed "Ä" beside a precomposed one), which the schema's
//! `UNIQUE`, comparing as written, lets through. Compared in Unicode NFKC
//! and lower case here, the same on both backends (SQLite's `lower()`
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

/// Whether `a` and `b` are the same name in another case or another
/// writing of the same characters: compared in Unicode NFKC and lower
/// case, as email addresses are ("Öl" with a precomposed Ö beside an O
/// and a combining diaeresis, full-width "Ｐｒｏ" beside "Pro": the same
/// name on screen).
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || folded(a) == folded(b)
}

/// `name` without the characters that show nothing where they stand
/// (marks, joiners, tags: "Go\u{200e}ld" looks like "Gold"), in NFKC,
/// lower case, NFKC again (lower-casing can undo the normal form).
fn folded(name: &str) -> String {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let seen: String = nfkc
        .normalize(name)
        .chars()
        .filter(|&c| !crate::validate::invisible(c))
        .collect();
    nfkc.normalize(&seen.to_lowercase()).into_owned()
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
        assert!(
            same_name("\u{d6}l", "O\u{308}l"),
            "precomposed and decomposed"
        );
        assert!(same_name("\u{ff30}\u{ff52}\u{ff4f}", "pro"), "full-width");
        assert!(same_name("Gold", "Go\u{200e}ld"), "a direction mark");
        assert!(same_name("Gold", "Gold\u{e0020}"), "a tag");
        assert!(same_name("Gold", "Go\u{ad}ld"), "a soft hyphen");
        assert!(!same_name("Pro", "Pro2"));
        assert!(!same_name("\u{d6}l", "Ol"));
    }
}
