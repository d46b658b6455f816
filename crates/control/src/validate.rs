//! Input checks shared by GraphQL and REST: clear messages naming the field.
//! Ids are parsed by their own types (see [`crate::ids`]).

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use crate::error::{AppError, AppResult};

/// Trims `value` and checks it has `min..=max` characters, no control,
/// invisible or line-breaking characters, and something to see.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> AppResult<String> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min || n > max {
        return Err(AppError::bad(format!(
            "{field} must have {min} to {max} characters"
        )));
    }
    if value.contains('\0') || v.chars().any(|c| c.is_control() || bidi_control(c)) {
        return Err(AppError::bad(format!(
            "{field} must not contain control characters"
        )));
    }
    if v.chars().any(hidden_or_breaking) {
        return Err(AppError::bad(format!(
            "{field} must not contain invisible or line-breaking characters"
        )));
    }
    if min > 0 && v.chars().all(|c| c.is_whitespace() || invisible_alone(c)) {
        return Err(AppError::bad(format!(
            "{field} must have visible characters"
        )));
    }
    Ok(v.to_owned())
}

/// Characters that show nothing yet are no space (zero-width space, word
/// joiner and invisible operators, byte-order mark, Hangul fillers,
/// musical format controls), or that break a line where one is shown
/// (U+2028, U+2029): a name made of them looks blank or like another, and
/// splits a log line.
fn hidden_or_breaking(c: char) -> bool {
    matches!(u32::from(c),
        0x115F..=0x1160 | 0x180E | 0x200B | 0x2028..=0x2029 | 0x2060..=0x206F
        | 0x3164 | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x13430..=0x1343F | 0x16FE4
        | 0x1D159 | 0x1D173..=0x1D17A)
}

/// Whether `c` is invisible where it stands: a default-ignorable code
/// point (zero-width spaces and joiners, bidirectional marks and controls,
/// soft hyphens, variation selectors, tags...), an interlinear annotation
/// character or the blank Braille pattern. An email address holding one
/// would look like another; names may hold some (right-to-left names and
/// emoji need marks and joiners) but are compared without them.
pub fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0x2800 | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB
        | 0x13430..=0x1343F | 0x16FE4 | 0x1BCA0..=0x1BCA3 | 0x1D159 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// Characters that names may need beside visible ones but that alone show
/// nothing: joiners, direction marks, variation and free variation
/// selectors, combining marks, the soft hyphen, tags (flag sequences),
/// Khmer's inherent vowels, the blank Braille pattern.
fn invisible_alone(c: char) -> bool {
    matches!(u32::from(c),
        0x00AD | 0x0300..=0x036F | 0x061C | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x200C..=0x200F | 0x20D0..=0x20FF | 0x2800
        | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F | 0xE0000..=0xE0FFF)
}

/// The bidirectional embeddings, overrides and isolates (U+202A to U+202E,
/// U+2066 to U+2069): a name holding one shows its characters in another
/// order than they are stored ("Trojan Source"), in the console and in
/// logs. Marks (U+200E, U+200F) and joiners stay allowed: right-to-left
/// names and emoji need them.
fn bidi_control(c: char) -> bool {
    matches!(u32::from(c), 0x202A..=0x202E | 0x2066..=0x2069)
}

/// Checks that a string can be stored in any text column of either
/// backend: PostgreSQL refuses the NUL character in `text`.
pub fn storable(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("strings must not contain the NUL character".into());
    }
    Ok(())
}

/// Earliest time accepted as input: both backends hold it, and nothing we
/// store is older.
pub const MIN_TIME: NaiveDateTime = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d.and_time(NaiveTime::MIN),
    None => NaiveDateTime::MIN,
};
/// Latest time accepted as input, the last microsecond of 9999-12-31
/// (both backends hold four-digit years and microseconds): the whole last
/// second, fractions included.
pub const MAX_TIME: NaiveDateTime = match (
    NaiveDate::from_ymd_opt(9999, 12, 31),
    NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999),
) {
    (Some(d), Some(t)) => d.and_time(t),
    _ => NaiveDateTime::MAX,
};

/// Checks a time is one both backends hold (1970-01-01 to 9999-12-31, UTC),
/// and gives it as they hold it: in whole microseconds (finer digits are
/// dropped; 9999-12-31T23:59:59.999999999Z was refused as out of range).
pub fn time(field: &str, value: NaiveDateTime) -> AppResult<NaiveDateTime> {
    use chrono::Timelike;
    let micros = value.nanosecond() / 1_000 * 1_000;
    let value = value.with_nanosecond(micros).unwrap_or(value);
    if value < MIN_TIME || value > MAX_TIME {
        return Err(AppError::bad(format!(
            "{field} must be between 1970-01-01 and 9999-12-31"
        )));
    }
    Ok(value)
}

/// Checks an integer range.
pub fn range(field: &str, value: i64, min: i64, max: i64) -> AppResult<i64> {
    if value < min || value > max {
        return Err(AppError::bad(format!(
            "{field} must be between {min} and {max}"
        )));
    }
    Ok(value)
}

/// Checks a region or similar code: lower-case letters, digits, `-` and `_`.
pub fn code(field: &str, value: &str) -> AppResult<String> {
    let v = text(field, value, 1, 32)?.to_lowercase();
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AppError::bad(format!(
            "{field} may contain only letters, digits, '-' and '_'"
        )));
    }
    Ok(v)
}

/// Checks the public URL of a gateway (what client links are built on,
/// from its host and port only): an absolute `https://` URL with a host, a
/// port from 1 if any, and nothing else (no credentials, path, query or
/// fragment); returned without a trailing `/`.
pub fn https_url(field: &str, value: &str) -> AppResult<String> {
    let v = text(field, value, 1, 2048)?;
    let bad = || {
        AppError::bad(format!(
            "{field} must be an https:// URL with a host and nothing else (no path, query, \
             fragment or credentials)"
        ))
    };
    if !v.to_ascii_lowercase().starts_with("https://") || v.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let url = url::Url::parse(&v).map_err(|_| bad())?;
    let plain = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.port() != Some(0);
    let host = url.host_str().unwrap_or_default();
    // A name ending in a dot is the same DNS name without it: two URLs
    // for one gateway, and certificates and SNI do not carry the dot.
    if url.scheme() != "https"
        || host.is_empty()
        || host.starts_with('.')
        || host.ends_with('.')
        || !plain
    {
        return Err(bad());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_control_and_bidi_override_characters_but_keep_marks_and_joiners() {
        for bad in [
            "a\u{202e}b",
            "\u{2066}x",
            "a\u{7}b",
            "a\0b",
            "\u{200b}",
            "a\u{2028}b",
            "a\u{2029}b",
            "\u{feff}bom",
            "\u{3164}",
            "\u{200d}\u{200c}",
            "\u{fe0f} \u{200e}",
            "\u{301}\u{301}",
            "\u{61c}",
            "\u{2800}",
            "\u{e0041}\u{e0042}",
            "\u{17b4}",
            "\u{180b}",
            "a\u{1d173}b",
        ] {
            assert!(text("name", bad, 1, 64).is_err(), "{bad:?}");
        }
        for ok in [
            "\u{5e9}\u{5dc}\u{5d5}\u{5dd}\u{200f}",
            "\u{1f468}\u{200d}\u{1f469} iPad",
            "e\u{301}t\u{e9}",
            "\u{1f3f4}\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f} team",
            "  plain  ",
        ] {
            assert!(text("name", ok, 1, 64).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn a_gateway_url_is_an_https_url_with_a_host_and_nothing_else() {
        for good in [
            "https://gw1.example.com",
            "https://gw1.example.com/",
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            "HTTPS://GW.example.com",
        ] {
            assert!(https_url("publicUrl", good).is_ok(), "{good}");
        }
        assert_eq!(
            https_url("publicUrl", "https://GW.example.com:443/").ok(),
            Some("https://gw.example.com".to_owned())
        );
        for bad in [
            "http://example.com",
            "https://",
            "https:",
            "https://a b.com",
            "https://x.com:65536",
            "https://%zz",
            "https://user:pw@x.com",
            "https://x.com/?q=1",
            "https://x.com/#f",
            "ftp://x.com",
            "gw.example.com",
            "https://x.com:0",
            "https://./",
            "https://gw.example.com/vpn",
            "https://gw.example.com.",
            "https://gw.example.com.:8443",
        ] {
            assert!(https_url("publicUrl", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_run_to_the_last_second_of_9999() {
        let last = NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_opt(23, 0, 0))
            .expect("time");
        assert!(time("to", last).is_ok());
        assert!(time("to", MAX_TIME + chrono::Duration::seconds(1)).is_err());
        let half_past = NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 500))
            .expect("time");
        assert!(time("to", half_past).is_ok(), "the last second is whole");
        let last_nano = NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 999_999_999))
            .expect("time");
        assert_eq!(
            time("to", last_nano).ok(),
            Some(MAX_TIME),
            "to the microsecond"
        );
        assert!(time("from", MIN_TIME - chrono::Duration::seconds(1)).is_err());
    }
}
