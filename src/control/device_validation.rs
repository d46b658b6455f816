//! Device validation: is this device allowed to open tunnels right now?
//! One indexed query per check; the reason is a stable code when it isn't.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::auth;
use crate::db::Db;
use crate::db::models::{Device, Subscription, now};
use crate::db::schema::{devices, subscriptions, users};
use crate::db_run;
use crate::error::AppResult;

/// Why a device may not connect.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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

/// The outcome of a check, with what was found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The device, when one matched.
    pub device: Option<Device>,
    /// The owner's current subscription, when there is one.
    pub subscription: Option<Subscription>,
    /// Why not, when the device may not connect.
    pub reason: Option<Reason>,
}

impl Verdict {
    /// Whether the device may connect.
    pub fn valid(&self) -> bool {
        self.reason.is_none()
    }
}

/// Judges a device, its owner and subscription at `at`.
pub fn judge(
    device: &Device,
    user_status: &str,
    sub: Option<&Subscription>,
    at: NaiveDateTime,
) -> Option<Reason> {
    if device.status != "active" {
        return Some(Reason::DeviceRevoked);
    }
    if user_status != "active" {
        return Some(Reason::UserDisabled);
    }
    let Some(sub) = sub else {
        return Some(Reason::NoSubscription);
    };
    if sub.status != "active" || sub.expires_at <= at || sub.starts_at > at {
        return Some(Reason::SubscriptionExpired);
    }
    if sub
        .traffic_limit_bytes
        .is_some_and(|limit| sub.traffic_used_bytes >= limit)
    {
        return Some(Reason::QuotaExceeded);
    }
    None
}

type Row = (Device, String, Option<Subscription>);

fn verdict(row: Option<Row>) -> Verdict {
    match row {
        None => Verdict {
            device: None,
            subscription: None,
            reason: Some(Reason::DeviceUnknown),
        },
        Some((device, user_status, sub)) => {
            let reason = judge(&device, &user_status, sub.as_ref(), now());
            Verdict {
                device: Some(device),
                subscription: sub,
                reason,
            }
        }
    }
}

/// Checks a device by its opaque access token (from a tunnel URL).
pub async fn by_token(db: &Db, token: &str) -> AppResult<Verdict> {
    if !auth::looks_like_token(token) {
        return Ok(verdict(None));
    }
    let hash = auth::hash_token(token);
    let row: Option<Row> = db_run!(db, |conn| {
        devices::table
            .inner_join(users::table)
            .left_join(
                subscriptions::table.on(subscriptions::user_id
                    .eq(devices::user_id)
                    .and(subscriptions::status.eq("active"))),
            )
            .filter(devices::token_hash.eq(&hash))
            .select((
                Device::as_select(),
                users::status,
                Option::<Subscription>::as_select(),
            ))
            .first(conn)
            .await
            .optional()?
    });
    Ok(verdict(row))
}

/// Checks a device by id (from a device JWT).
pub async fn by_device_id(db: &Db, device_id: &str) -> AppResult<Verdict> {
    let row: Option<Row> = db_run!(db, |conn| {
        devices::table
            .inner_join(users::table)
            .left_join(
                subscriptions::table.on(subscriptions::user_id
                    .eq(devices::user_id)
                    .and(subscriptions::status.eq("active"))),
            )
            .filter(devices::id.eq(device_id))
            .select((
                Device::as_select(),
                users::status,
                Option::<Subscription>::as_select(),
            ))
            .first(conn)
            .await
            .optional()?
    });
    Ok(verdict(row))
}
