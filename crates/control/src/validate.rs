//! Input checks shared by GraphQL and REST: clear messages naming the field.
//! Ids are parsed by their own types (see [`crate::ids`]).

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use crate::error::{AppError, AppResult};

/// Trims `value` and checks it has `min..=max` characters and no control
/// characters.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> AppResult<String> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min || n > max {
        return Err(AppError::bad(format!(
            "{field} must have {min} to {max} characters"
        )));
    }
    if value.contains('\0') || v.chars().any(char::is_control) {
        return Err(AppError::bad(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
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
/// Latest time accepted as input (both backends hold four-digit years).
pub const MAX_TIME: NaiveDateTime = match NaiveDate::from_ymd_opt(9999, 12, 31) {
    Some(d) => d.and_time(NaiveTime::MIN),
    None => NaiveDateTime::MAX,
};

/// Checks a time is one both backends hold (1970-01-01 to 9999-12-31, UTC).
pub fn time(field: &str, value: NaiveDateTime) -> AppResult<NaiveDateTime> {
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
