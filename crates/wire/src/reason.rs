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
}

impl Reason {
    /// Every reason, for tables and tests.
    pub const ALL: [Reason; 6] = [
        Reason::DeviceUnknown,
        Reason::DeviceRevoked,
        Reason::UserDisabled,
        Reason::NoSubscription,
        Reason::SubscriptionExpired,
        Reason::QuotaExceeded,
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
        }
    }

    /// The session end reason this verdict implies.
    pub fn end_reason(self) -> &'static str {
        match self {
            Reason::DeviceUnknown | Reason::DeviceRevoked => "device_revoked",
            Reason::UserDisabled => "user_disabled",
            Reason::NoSubscription | Reason::SubscriptionExpired => "subscription_ended",
            Reason::QuotaExceeded => "quota_exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn codes_round_trip_through_serde_and_parse() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("nope"), None);
    }
}
