//! Custom scalars: 64-bit byte counters must survive JavaScript clients.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};

/// A 64-bit signed integer, serialised as a decimal string so no client
/// loses precision; accepted as such a string (digits with an optional
/// leading `-`, nothing around them) or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BigInt(pub i64);

#[Scalar(name = "BigInt")]
impl ScalarType for BigInt {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => decimal(s)
                .map(BigInt)
                .ok_or_else(|| InputValueError::custom("BigInt must be a 64-bit integer")),
            Value::Number(n) => n
                .as_i64()
                .map(BigInt)
                .ok_or_else(|| InputValueError::custom("BigInt must be a 64-bit integer")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// `s` read as a decimal integer written the way this scalar writes one:
/// no sign but `-`, no spaces, no empty digits (Rust's parser also takes
/// a leading `+`).
fn decimal(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decimals_are_read() {
        for (text, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("007", Some(7)),
            ("9223372036854775808", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("--1", None),
            ("1e3", None),
            ("1_000", None),
            ("\u{0661}", None),
        ] {
            assert_eq!(decimal(text), want, "{text:?}");
            let parsed = BigInt::parse(Value::String(text.to_owned())).ok();
            assert_eq!(parsed.map(|b| b.0), want, "{text:?}");
        }
    }

    #[test]
    fn integers_are_taken_and_fractions_are_not() {
        assert_eq!(BigInt::parse(Value::from(5)).ok(), Some(BigInt(5)));
        let fraction = Value::Number(async_graphql::Number::from_f64(1.5).expect("finite"));
        assert!(BigInt::parse(fraction).is_err());
        assert!(BigInt::parse(Value::Boolean(true)).is_err());
    }
}
