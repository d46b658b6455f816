//! The closed sets of values the database stores as text (roles, statuses,
//! health, reset periods, why a session ended), as enums. Each maps to the
//! exact text the schema's CHECK constraints allow, on both backends; the
//! ones GraphQL shows are GraphQL enums too.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use httvps_wire::Reason;

macro_rules! stored_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $($(#[doc = $vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stored form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Parses the stored form.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        /// Compares with the stored form.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<DB: Backend> ToSql<Text, DB> for $name
        where
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl<DB: Backend> FromSql<Text, DB> for $name
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let text = String::from_sql(bytes)?;
                $name::parse(&text).ok_or_else(|| {
                    format!("{text:?} is not a stored {}", stringify!($name)).into()
                })
            }
        }
    };
}

stored_enum! {
    /// Role of an account.
    #[derive(async_graphql::Enum)]
    pub enum Role {
        /// Operator: manages everything.
        Admin = "admin",
        /// End user: manages own devices.
        User = "user",
    }
}

stored_enum! {
    /// Account status.
    #[derive(async_graphql::Enum)]
    pub enum UserStatus {
        /// May sign in and connect.
        Active = "active",
        /// Locked out: tokens refused, tunnels closed.
        Disabled = "disabled",
    }
}

stored_enum! {
    /// Whether a device may connect.
    #[derive(async_graphql::Enum)]
    pub enum DeviceStatus {
        /// Its token works.
        Active = "active",
        /// Its token was revoked.
        Revoked = "revoked",
    }
}

stored_enum! {
    /// State of a subscription.
    #[derive(async_graphql::Enum)]
    pub enum SubscriptionStatus {
        /// In force (until `expiresAt`).
        Active = "active",
        /// Ended early by an admin.
        Cancelled = "cancelled",
        /// Ran out.
        Expired = "expired",
    }
}

stored_enum! {
    /// How often a plan's traffic allowance starts over.
    #[derive(async_graphql::Enum)]
    pub enum ResetPeriod {
        /// The allowance covers the whole subscription.
        None = "none",
        /// The allowance starts over every 30 days.
        Monthly = "monthly",
    }
}

stored_enum! {
    /// Admin status of a node.
    #[derive(async_graphql::Enum)]
    pub enum NodeStatus {
        /// Takes new sessions.
        Active = "active",
        /// Keeps open sessions, takes no new ones.
        Draining = "draining",
        /// Out of service.
        Disabled = "disabled",
    }
}

stored_enum! {
    /// Whether a node answers: from its heartbeats, or from what gateways
    /// saw when they connected to it.
    pub enum Health {
        /// Never heard of since it was registered.
        Unknown = "unknown",
        /// Heartbeating, or reachable.
        Up = "up",
        /// Missed its lease, or unreachable.
        Down = "down",
    }
}

stored_enum! {
    /// Why a session ended.
    pub enum EndReason {
        /// No tunnel and no report for a while.
        Idle = "idle",
        /// The device was revoked (or its token no longer matches).
        DeviceRevoked = "device_revoked",
        /// The owner's account was disabled.
        UserDisabled = "user_disabled",
        /// The owner has no current subscription any more.
        SubscriptionEnded = "subscription_ended",
        /// The owner used up the allowance.
        QuotaExceeded = "quota_exceeded",
        /// The node went away.
        NodeDown = "node_down",
        /// An admin closed it.
        ClosedByAdmin = "closed_by_admin",
        /// The gateway shut down.
        GatewayShutdown = "gateway_shutdown",
        /// The device is beyond its owner's device limit.
        DeviceLimit = "device_limit",
    }
}

impl From<Reason> for EndReason {
    /// The end of a session whose device was refused for `reason`.
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::DeviceUnknown | Reason::DeviceRevoked => EndReason::DeviceRevoked,
            Reason::UserDisabled => EndReason::UserDisabled,
            Reason::NoSubscription | Reason::SubscriptionExpired => EndReason::SubscriptionEnded,
            Reason::QuotaExceeded => EndReason::QuotaExceeded,
            Reason::DeviceLimit => EndReason::DeviceLimit,
        }
    }
}

/// A node stops being healthy when it misses this many heartbeat intervals.
pub const MISSED_HEARTBEATS: i64 = 3;
/// Interval at which nodes and gateways are asked to heartbeat, in seconds.
pub const HEARTBEAT_INTERVAL_SECS: i64 = 5;

/// How long a heartbeat keeps a node (or a gateway) healthy.
pub fn lease() -> chrono::Duration {
    chrono::Duration::seconds(HEARTBEAT_INTERVAL_SECS * MISSED_HEARTBEATS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(*r));
        }
        for s in EndReason::ALL {
            assert_eq!(EndReason::parse(s.as_str()), Some(*s));
        }
        assert_eq!(NodeStatus::parse("Active"), None);
    }

    #[test]
    fn end_reasons_of_refusals_match_the_wire_contract() {
        for r in Reason::ALL {
            assert_eq!(EndReason::from(r).as_str(), r.end_reason());
        }
    }
}
