//! Input checks shared by GraphQL and REST: clear messages naming the field.
//! Ids are parsed by their own types (see [`crate::ids`]).

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
    if v.chars().any(char::is_control) {
        return Err(AppError::bad(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
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
