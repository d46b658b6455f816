//! The access rule, in one place: may this device open a tunnel now? The
//! device must be active, its owner active, the owner's subscription
//! current (stored active and `starts_at <= now < expires_at`) and within
//! its allowance, and the device within the subscription's device limit
//! (kept on the device row by [`crate::devices::limit`]). [`judge`] decides from loaded facts and the time it is
//! given (pure, tested below); [`query`] loads those facts with the one
//! query every caller shares; [`closing`] applies the rule to open sessions.
//!
//! Callers: validate-device and assign-outline (by token, device JWT or
//! device id), the WebSocket device credential, device registration (the
//! current subscription), the usage charge (its SQL predicate,
//! [`current_subscription_sql!`](crate::current_subscription_sql)),
//! gateway heartbeats (close orders) and the subscription status GraphQL
//! shows.

pub mod closing;
pub mod query;
pub mod tokens;

use chrono::NaiveDateTime;
pub use httvps_wire::Reason;

use crate::db::models::{Device, Subscription};
use crate::status::{DeviceStatus, SubscriptionStatus, UserStatus};

pub use query::{check_device, check_token};
pub use tokens::TokenChecks;

/// What the rule judges: a device, its owner's status, and the owner's
/// subscription stored as active (at most one per user), if any.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The device.
    pub device: Device,
    /// Its owner's status.
    pub user_status: UserStatus,
    /// Its owner's email (what the session feed names the owner by).
    pub user_email: String,
    /// The owner's subscription stored as active.
    pub subscription: Option<Subscription>,
}

/// The outcome of a check, with what was found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The device, when one matched.
    pub device: Option<Device>,
    /// Its owner's email, when a device matched.
    pub owner_email: Option<String>,
    /// The owner's subscription stored as active, when there is one.
    pub subscription: Option<Subscription>,
    /// Why not, when the device may not connect.
    pub reason: Option<Reason>,
}

impl Verdict {
    /// Judges `facts` (`None`: no such device) at `at`.
    pub fn of(facts: Option<Facts>, at: NaiveDateTime) -> Self {
        match facts {
            None => Verdict {
                device: None,
                owner_email: None,
                subscription: None,
                reason: Some(Reason::DeviceUnknown),
            },
            Some(f) => Verdict {
                reason: judge(&f, at),
                device: Some(f.device),
                owner_email: Some(f.user_email),
                subscription: f.subscription,
            },
        }
    }

    /// Whether the device may connect.
    pub fn valid(&self) -> bool {
        self.reason.is_none()
    }

    /// The device when it may connect, or the refusal as an error.
    pub fn admitted(self) -> Result<Device, Reason> {
        match (self.reason, self.device) {
            (None, Some(device)) => Ok(device),
            (Some(reason), _) => Err(reason),
            (None, None) => Err(Reason::DeviceUnknown),
        }
    }
}

/// The rule: `None` when the device of `facts` may open a tunnel at `at`,
/// otherwise the first reason it may not.
pub fn judge(facts: &Facts, at: NaiveDateTime) -> Option<Reason> {
    if facts.device.status != DeviceStatus::Active {
        return Some(Reason::DeviceRevoked);
    }
    if facts.user_status != UserStatus::Active {
        return Some(Reason::UserDisabled);
    }
    let Some(sub) = &facts.subscription else {
        return Some(Reason::NoSubscription);
    };
    if !is_current(sub, at) {
        return Some(Reason::SubscriptionExpired);
    }
    if quota_spent(sub.traffic_used_bytes, sub.traffic_limit_bytes) {
        return Some(Reason::QuotaExceeded);
    }
    if facts.device.over_limit {
        return Some(Reason::DeviceLimit);
    }
    None
}

/// Whether `sub` is in force at `at`: stored active, started, not expired
/// (`expires_at` is the first instant it no longer is).
pub fn is_current(sub: &Subscription, at: NaiveDateTime) -> bool {
    sub.status == SubscriptionStatus::Active && sub.starts_at <= at && at < sub.expires_at
}

/// Whether an allowance of `limit` bytes (`None`: unlimited) is used up.
pub fn quota_spent(used: i64, limit: Option<i64>) -> bool {
    limit.is_some_and(|limit| used >= limit)
}

/// The status a subscription shows at `at`: one stored active that has
/// run out shows as expired. One that has not started yet shows as active
/// (it is paid for; the API has no "pending" status), though it admits no
/// tunnel before its start.
pub fn shown_status(sub: &Subscription, at: NaiveDateTime) -> SubscriptionStatus {
    match sub.status {
        SubscriptionStatus::Active if at >= sub.expires_at => SubscriptionStatus::Expired,
        stored => stored,
    }
}

/// The current-subscription predicate of [`is_current`] for raw SQL (the
/// usage charge): `$table` names the subscriptions table or its alias,
/// `$at` the placeholder of the time. Expands to a string literal.
#[macro_export]
macro_rules! current_subscription_sql {
    ($table:literal, $at:literal) => {
        concat!(
            $table,
            ".status = 'active' AND ",
            $table,
            ".starts_at <= ",
            $at,
            " AND ",
            $at,
            " < ",
            $table,
            ".expires_at"
        )
    };
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::ids::{DeviceId, PlanId, SubscriptionId, UserId};

    fn t(minutes: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("time")
            .naive_utc()
            + Duration::minutes(minutes)
    }

    fn facts() -> Facts {
        let user_id = UserId::random();
        Facts {
            device: Device {
                id: DeviceId::random(),
                user_id,
                name: "laptop".into(),
                platform: "linux".into(),
                status: DeviceStatus::Active,
                token_hash: "h".into(),
                last_seen_at: None,
                created_at: t(-100),
                revoked_at: None,
                over_limit: false,
            },
            user_status: UserStatus::Active,
            user_email: "owner@example.test".into(),
            subscription: Some(Subscription {
                id: SubscriptionId::random(),
                user_id,
                plan_id: PlanId::random(),
                status: SubscriptionStatus::Active,
                starts_at: t(0),
                expires_at: t(60),
                traffic_limit_bytes: Some(1000),
                traffic_used_bytes: 0,
                period_start: t(0),
                created_at: t(0),
                updated_at: t(0),
                device_limit: 3,
            }),
        }
    }

    fn with_sub(f: impl FnOnce(&mut Subscription)) -> Facts {
        let mut facts = facts();
        if let Some(s) = facts.subscription.as_mut() {
            f(s);
        }
        facts
    }

    #[test]
    fn a_current_subscription_within_quota_admits() {
        assert_eq!(judge(&facts(), t(30)), None);
        assert!(Verdict::of(Some(facts()), t(30)).valid());
    }

    #[test]
    fn every_reason_in_order() {
        assert_eq!(Verdict::of(None, t(30)).reason, Some(Reason::DeviceUnknown));
        let mut f = facts();
        f.device.status = DeviceStatus::Revoked;
        f.user_status = UserStatus::Disabled;
        assert_eq!(judge(&f, t(30)), Some(Reason::DeviceRevoked));
        f.device.status = DeviceStatus::Active;
        assert_eq!(judge(&f, t(30)), Some(Reason::UserDisabled));
        f.user_status = UserStatus::Active;
        f.subscription = None;
        assert_eq!(judge(&f, t(30)), Some(Reason::NoSubscription));
        let cancelled = with_sub(|s| s.status = SubscriptionStatus::Cancelled);
        assert_eq!(judge(&cancelled, t(30)), Some(Reason::SubscriptionExpired));
        let stored_expired = with_sub(|s| s.status = SubscriptionStatus::Expired);
        assert_eq!(
            judge(&stored_expired, t(30)),
            Some(Reason::SubscriptionExpired)
        );
        let mut spent = with_sub(|s| s.traffic_used_bytes = 5000);
        spent.device.over_limit = true;
        assert_eq!(judge(&spent, t(30)), Some(Reason::QuotaExceeded));
        let mut beyond = facts();
        beyond.device.over_limit = true;
        assert_eq!(judge(&beyond, t(30)), Some(Reason::DeviceLimit));
    }

    #[test]
    fn a_subscription_that_has_not_started_admits_nothing_yet() {
        let later = with_sub(|s| s.starts_at = t(10));
        assert_eq!(judge(&later, t(9)), Some(Reason::SubscriptionExpired));
        assert_eq!(judge(&later, t(10)), None, "the start is inclusive");
        assert_eq!(
            shown_status(later.subscription.as_ref().expect("sub"), t(9)),
            SubscriptionStatus::Active
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let f = facts();
        let at_end = t(60);
        let just_before = at_end - Duration::microseconds(1);
        assert_eq!(judge(&f, just_before), None);
        assert_eq!(judge(&f, at_end), Some(Reason::SubscriptionExpired));
        let sub = f.subscription.as_ref().expect("sub");
        assert_eq!(shown_status(sub, just_before), SubscriptionStatus::Active);
        assert_eq!(shown_status(sub, at_end), SubscriptionStatus::Expired);
    }

    #[test]
    fn quota_is_spent_at_the_limit_and_unlimited_never() {
        let below = with_sub(|s| s.traffic_used_bytes = 999);
        assert_eq!(judge(&below, t(30)), None);
        let at = with_sub(|s| s.traffic_used_bytes = 1000);
        assert_eq!(judge(&at, t(30)), Some(Reason::QuotaExceeded));
        let unlimited = with_sub(|s| {
            s.traffic_limit_bytes = None;
            s.traffic_used_bytes = i64::MAX;
        });
        assert_eq!(judge(&unlimited, t(30)), None);
        assert!(quota_spent(0, Some(0)));
        assert!(!quota_spent(i64::MAX, None));
    }

    #[test]
    fn the_sql_predicate_says_what_is_current_says() {
        let sql = current_subscription_sql!("s", "$2");
        assert_eq!(
            sql,
            "s.status = 'active' AND s.starts_at <= $2 AND $2 < s.expires_at"
        );
        assert!(sql.contains(&format!("'{}'", SubscriptionStatus::Active.as_str())));
    }

    #[test]
    fn an_admitted_verdict_yields_its_device() {
        let f = facts();
        let id = f.device.id;
        assert_eq!(Verdict::of(Some(f), t(1)).admitted().map(|d| d.id), Ok(id));
        assert_eq!(
            Verdict::of(None, t(1)).admitted().map(|d| d.id),
            Err(Reason::DeviceUnknown)
        );
    }
}
