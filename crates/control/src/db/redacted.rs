//! [`SecretText`]: a secret (node and pool keys, tokens shown once) or a
//! hash of one (passwords, device, machine and refresh tokens) as a row
//! column or a GraphQL field. It wraps [`httvps_wire::Secret`] (`secrecy`),
//! so `Debug` and `Display` print `[redacted]` and a row or a payload in a
//! log line or a panic message leaks nothing, while the database stores
//! plain TEXT and GraphQL shows a plain `String`, as before.

use std::borrow::Cow;
use std::fmt;

use async_graphql::parser::types::Field;
use async_graphql::registry::Registry;
use async_graphql::{
    ContextSelectionSet, InputType, InputValueError, InputValueResult, OutputType, Positioned,
    ServerResult, Value,
};
use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use httvps_wire::Secret;

/// A secret string: `[redacted]` when formatted, TEXT in the database, a
/// `String` in GraphQL. Reading it takes an explicit [`expose`](Self::expose).
#[derive(Clone, Default, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct SecretText(Secret);

impl SecretText {
    /// The value itself, for the one place that needs it (a comparison, a
    /// cipher, a link sent to its owner).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl From<String> for SecretText {
    fn from(value: String) -> Self {
        SecretText(Secret::from(value))
    }
}

impl From<&str> for SecretText {
    fn from(value: &str) -> Self {
        SecretText(Secret::from(value))
    }
}

impl From<Secret> for SecretText {
    fn from(value: Secret) -> Self {
        SecretText(value)
    }
}

impl From<SecretText> for Secret {
    fn from(value: SecretText) -> Self {
        value.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<DB: Backend> ToSql<Text, DB> for SecretText
where
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        self.expose().to_sql(out)
    }
}

impl<DB: Backend> FromSql<Text, DB> for SecretText
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        String::from_sql(bytes).map(SecretText::from)
    }
}

/// Shown as GraphQL's `String`: the schema is the same as with a `String`.
impl OutputType for SecretText {
    fn type_name() -> Cow<'static, str> {
        <String as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <String as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        _: &ContextSelectionSet<'_>,
        _: &Positioned<Field>,
    ) -> ServerResult<Value> {
        Ok(Value::String(self.expose().to_owned()))
    }
}

/// Read as GraphQL's `String`.
impl InputType for SecretText {
    type RawValueType = Self;

    fn type_name() -> Cow<'static, str> {
        <String as InputType>::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <String as InputType>::create_type_info(registry)
    }

    fn parse(value: Option<Value>) -> InputValueResult<Self> {
        match value.unwrap_or_default() {
            Value::String(s) => Ok(SecretText::from(s)),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.expose().to_owned())
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "s3cr3t-pool-key";

    #[test]
    fn formatting_never_shows_the_value() {
        let s = SecretText::from(VALUE);
        for shown in [format!("{s:?}"), format!("{s:#?}"), format!("{s}")] {
            assert!(!shown.contains(VALUE), "{shown}");
            assert!(shown.contains(httvps_wire::secret::REDACTED), "{shown}");
        }
        assert_eq!(s.expose(), VALUE);
        assert_eq!(Secret::from(s.clone()).expose(), VALUE);
        assert_eq!(SecretText::from(Secret::from(VALUE)).expose(), VALUE);
    }

    #[test]
    fn graphql_reads_a_plain_string() {
        let parsed = <SecretText as InputType>::parse(Some(Value::String(VALUE.into())));
        assert_eq!(
            parsed.map(|s| s.expose().to_owned()).ok(),
            Some(VALUE.into())
        );
        assert!(<SecretText as InputType>::parse(Some(Value::Null)).is_err());
        assert_eq!(<SecretText as OutputType>::type_name(), "String");
    }
}
