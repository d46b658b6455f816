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
/// ("Go\u{200e}ld" looks like "Gold"), in NFKC, lower case, NFKC again
/// (lower-casing can undo the normal form). Kept where they change what
/// is shown: joiners between letters of scripts and emoji that use them
/// (Persian with and without a non-joiner, a family emoji and its three
/// people), and the tags of a subdivision flag (Scotland's, England's).
fn folded(name: &str) -> String {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let normal: Vec<char> = nfkc.normalize(name).chars().collect();
    let flag = normal.contains(&'\u{1F3F4}');
    let seen: String = normal
        .iter()
        .enumerate()
        .filter(|&(i, &c)| {
            let joiner = matches!(c, '\u{200C}' | '\u{200D}');
            let tag = ('\u{E0020}'..='\u{E007F}').contains(&c);
            let shown = if joiner {
                // Beside ASCII or at an end, a joiner joins nothing.
                let before = i.checked_sub(1).and_then(|j| normal.get(j));
                let after = normal.get(i + 1);
                before
                    .zip(after)
                    .is_some_and(|(b, a)| !b.is_ascii() && !a.is_ascii())
            } else {
                tag && flag
            };
            shown || !crate::validate::invisible(c)
        })
        .map(|(_, &c)| c)
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
        assert!(
            same_name("Go\u{200d}ld", "Gold"),
            "a joiner between Latin letters"
        );
        assert!(
            same_name("Plan0\u{13430}", "Plan0"),
            "a hieroglyph format control"
        );
        // What joiners and tags change is shown, and kept.
        let (scotland, england) = (
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        );
        assert!(!same_name(scotland, england), "two flags");
        assert!(
            !same_name(
                "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}",
                "\u{645}\u{6CC}\u{62E}\u{648}\u{627}\u{647}\u{645}"
            ),
            "Persian"
        );
        assert!(
            !same_name(
                "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
                "\u{1F468}\u{1F469}\u{1F467}"
            ),
            "a family"
        );
        assert!(!same_name("Pro", "Pro2"));
        assert!(!same_name("\u{d6}l", "Ol"));
    }
}
