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
pub use httvps_wire::Reason;

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
