//! Newtype ids, one per table, so that one kind of id can never be passed
//! where another is expected. Each wraps a UUID, is stored as TEXT (the
//! hyphenated lower-case form) on both backends, and is made from a
//! client's text only by [`parse`](UserId::parse) at the edge.

use std::fmt;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;
use uuid::Uuid;

use crate::error::{AppError, AppResult};

/// A string that is not an id in its hyphenated form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an id (expected the hyphenated form, 8-4-4-4-12 hex digits)")]
pub struct NotAnId;

macro_rules! ids {
    ($($(#[doc = $doc:literal])* $name:ident;)*) => {$(
        $(#[doc = $doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                $name(Uuid::new_v4())
            }

            /// A new id that sorts after the ids made before it (UUIDv7:
            /// a millisecond timestamp, then random bits). New rows of a
            /// busy table then go to the right edge of its primary key's
            /// index instead of a random page of it.
            pub fn ordered() -> Self {
                $name(Uuid::now_v7())
            }

            /// Parses an id a client sent; the error names `field`.
            pub fn parse(field: &str, value: &str) -> AppResult<Self> {
                value
                    .trim()
                    .parse()
                    .map_err(|_| AppError::bad(format!("{field} is not a valid id")))
            }

            /// The UUID inside (what GraphQL shows).
            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                $name(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        /// Only the hyphenated form (either case), as the API documents
        /// it (`format: uuid`): braces, `urn:uuid:` and bare hex are
        /// refused, so an id always comes back in its one canonical form.
        impl FromStr for $name {
            type Err = NotAnId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 36 {
                    return Err(NotAnId);
                }
                Uuid::try_parse(s).map($name).map_err(|_| NotAnId)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                std::io::Write::write_all(out, self.0.hyphenated().encode_lower(&mut buf).as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl ToSql<Text, Sqlite> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
                out.set_value(self.to_string());
                Ok(IsNull::No)
            }
        }

        impl<DB: diesel::backend::Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let text = String::from_sql(bytes)?;
                Ok(text.parse()?)
            }
        }
    )*};
}

ids! {
    /// An account's id.
    UserId;
    /// A plan's id.
    PlanId;
    /// A region's id.
    RegionId;
    /// A subscription's id.
    SubscriptionId;
    /// A device's id.
    DeviceId;
    /// An Outline (Shadowsocks) node's id.
    OutlineNodeId;
    /// A gateway's id.
    GatewayNodeId;
    /// A session's id.
    SessionId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_normalises_and_names_the_field() {
        let id = UserId::parse("userId", " 6F9619FF-8B86-D011-B42D-00C04FC964FF ").expect("valid");
        assert_eq!(id.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        let err = DeviceId::parse("id", "nope").expect_err("invalid");
        assert_eq!(err.to_string(), "id is not a valid id");
    }

    #[test]
    fn serde_is_the_plain_string() {
        let id = SessionId::random();
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<SessionId>(&json).expect("back"), id);
    }
}
