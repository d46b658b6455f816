//! Why a device may not connect: stable codes shared by the control plane
//! (which decides) and gateways (which refuse and explain).

/// Why a device may not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No device has this credential.
    DeviceUnknown,
    /// The device was revoked.
    DeviceRevoked,
    /// The owner's account is disabled.
    UserDisabled,
    /// The owner has no subscription.
    NoSubscription,
    /// The subscription ran out or was cancelled.
    SubscriptionExpired,
    /// The traffic allowance is used up.
    QuotaExceeded,
    /// The account has more active devices than its subscription covers,
    /// and this is one of the newest: another must be revoked first.
    DeviceLimit,
}

impl Reason {
    /// Every reason, for tables and tests.
    pub const ALL: [Reason; 7] = [
        Reason::DeviceUnknown,
        Reason::DeviceRevoked,
        Reason::UserDisabled,
        Reason::NoSubscription,
        Reason::SubscriptionExpired,
        Reason::QuotaExceeded,
        Reason::DeviceLimit,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DeviceUnknown => "device_unknown",
            Reason::DeviceRevoked => "device_revoked",
            Reason::UserDisabled => "user_disabled",
            Reason::NoSubscription => "no_subscription",
            Reason::SubscriptionExpired => "subscription_expired",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::DeviceLimit => "device_limit",
        }
    }

    /// Parses a stable code.
    pub fn parse(code: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// A sentence for people (Outline apps show it).
    pub fn message(self) -> &'static str {
        match self {
            Reason::DeviceUnknown => "This access key is not valid.",
            Reason::DeviceRevoked => "This device was removed from the account.",
            Reason::UserDisabled => "The account is disabled.",
            Reason::NoSubscription => "The account has no subscription.",
            Reason::SubscriptionExpired => "The subscription has expired.",
            Reason::QuotaExceeded => "The traffic allowance is used up.",
            Reason::DeviceLimit => {
                "The plan covers fewer devices than the account has: remove one to use this one."
            }
        }
    }

    /// Whether the refusal is about the subscription (none, ended, used
    /// up, or covering fewer devices): the device itself is in order, and
    /// its owner can act on it. The
    /// gateway's access document tells these; the others (an unknown or
    /// revoked device, a disabled account) it answers as an unknown token.
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            Reason::NoSubscription
                | Reason::SubscriptionExpired
                | Reason::QuotaExceeded
                | Reason::DeviceLimit
        )
    }

    /// The session end reason this verdict implies.
    pub fn end_reason(self) -> &'static str {
        match self {
            Reason::DeviceUnknown | Reason::DeviceRevoked => "device_revoked",
            Reason::UserDisabled => "user_disabled",
            Reason::NoSubscription | Reason::SubscriptionExpired => "subscription_ended",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::DeviceLimit => "device_limit",
        }
    }
}

/// Why the control plane cannot answer a device's request now (HTTP 503,
/// in the error envelope's `code` and `reason`). A gateway tells them
/// apart: while the database is unavailable it keeps admitting devices it
/// saw recently (its outage cache); with no node to send a device to it
/// refuses at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// The database (or another dependency of the control plane) cannot
    /// serve now: an outage, the same as the control plane being down.
    DatabaseUnavailable,
    /// No healthy node with room serves the device's region now: a
    /// decision, not an outage.
    NoNodeAvailable,
}

impl Unavailable {
    /// Both answers, for tables and tests.
    pub const ALL: [Unavailable; 2] = [
        Unavailable::DatabaseUnavailable,
        Unavailable::NoNodeAvailable,
    ];

    /// The envelope's `code`.
    pub fn code(self) -> &'static str {
        match self {
            Unavailable::DatabaseUnavailable => "UNAVAILABLE",
            Unavailable::NoNodeAvailable => "NO_NODE",
        }
    }

    /// The envelope's `reason` (a stable code).
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::DatabaseUnavailable => "database_unavailable",
            Unavailable::NoNodeAvailable => "no_node_available",
        }
    }

    /// Parses the envelope's `reason`.
    pub fn parse(reason: &str) -> Option<Self> {
        Unavailable::ALL.into_iter().find(|u| u.as_str() == reason)
    }

    /// A sentence for people (Outline apps show it).
    pub fn message(self) -> &'static str {
        match self {
            Unavailable::DatabaseUnavailable => "The service is unavailable; try again shortly.",
            Unavailable::NoNodeAvailable => "No server is available in this region right now.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Reason, Unavailable};

    #[test]
    fn unavailability_codes_are_distinct_and_round_trip() {
        for u in Unavailable::ALL {
            let json = serde_json::to_string(&u).expect("serialize");
            assert_eq!(json, format!("\"{}\"", u.as_str()));
            assert_eq!(Unavailable::parse(u.as_str()), Some(u));
            assert_eq!(Reason::parse(u.as_str()), None, "not a device reason");
        }
        assert_ne!(
            Unavailable::DatabaseUnavailable.code(),
            Unavailable::NoNodeAvailable.code()
        );
    }

    #[test]
    fn codes_round_trip_through_serde_and_parse() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("nope"), None);
    }

    #[test]
    fn only_subscription_refusals_are_told_in_the_access_document() {
        let told: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|r| r.is_subscription())
            .collect();
        assert_eq!(
            told,
            [
                Reason::NoSubscription,
                Reason::SubscriptionExpired,
                Reason::QuotaExceeded,
                Reason::DeviceLimit
            ]
        );
    }
}
