//! Devices: registration within the subscription's device limit
//! (race-free; devices beyond a limit lowered later are marked, [`limit`]),
//! the access token (shown once, stored hashed, rotatable), revocation, and the
//! ready-to-use access links ([`links`]). Revoking a device or replacing
//! its token tells gateways in the same transaction, whoever calls.

pub mod limit;
pub mod links;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{access, audit, validate};
use crate::actor::Actor;
use crate::auth;
use crate::db::Db;
use crate::db::models::{AuditEntry, Device, Subscription, now};
use crate::db::schema::{audit_log, devices, subscriptions};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::feed::{DeviceChange, DeviceEventKind};
use crate::ids::{DeviceId, UserId};
pub use crate::status::DeviceStatus;
use crate::status::{EndReason, SubscriptionStatus};
use crate::{db_run, db_tx, paginate};
pub use links::{AccessLinks, default_region, entry_point, gateway_url_for};

/// The device `$id`, read on `$conn`, if `$actor` may act for its owner;
/// NOT_FOUND otherwise (someone else's device looks exactly like a
/// missing one).
macro_rules! device_of {
    ($conn:expr, $actor:expr, $id:expr) => {{
        let found: Option<Device> = devices::table
            .find($id)
            .select(Device::as_select())
            .first($conn)
            .await
            .optional()?;
        found
            .filter(|d| $actor.may_act_for(d.user_id))
            .ok_or(AppError::NotFound("device"))?
    }};
}

/// Registers a device for `owner` (for admins: any user; for anyone
/// else: themselves only, another user is forbidden) or, with none, for
/// the actor.
pub async fn register(
    db: &Db,
    actor: &Actor,
    owner: Option<UserId>,
    name: &str,
    platform: &str,
) -> AppResult<(Device, String)> {
    let owner = match owner {
        Some(u) if !actor.may_act_for(u) => return Err(AppError::Forbidden),
        Some(u) => u,
        None => actor.user_id().ok_or(AppError::Forbidden)?,
    };
    register_for(db, actor, owner, name, platform).await
}

/// Registers a device for `user_id` within the device limit of the user's
/// current subscription (audited when `actor` is an admin registering it
/// for someone else). Returns the device and its access token (the only
/// time the token is seen).
async fn register_for(
    db: &Db,
    actor: &Actor,
    user_id: UserId,
    name: &str,
    platform: &str,
) -> AppResult<(Device, String)> {
    let name = validate::text("name", name, 1, 64)?;
    // Lower case first: a few letters grow in it (`İ` is two characters),
    // and the bound holds for what is stored.
    let platform = validate::text("platform", &platform.to_lowercase(), 1, 32)?;
    let token = auth::new_token();
    let token_hash = auth::hash_token(&token);
    let device = db_tx!(db, |conn, _| {
        let ts = now();
        // Lock the user's row first: concurrent registrations of one user
        // queue here, so the count below cannot race (PostgreSQL row lock;
        // SQLite takes its write lock).
        let touched = crate::hold_owner!(conn, user_id, ts);
        if touched == 0 {
            return Err(AppError::NotFound("user"));
        }
        let stored: Option<Subscription> = subscriptions::table
            .filter(subscriptions::user_id.eq(user_id))
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .select(Subscription::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(sub) = stored.filter(|s| access::is_current(s, ts)) else {
            return Err(AppError::LimitExceeded(
                "an active subscription is needed to register a device".into(),
            ));
        };
        let active: i64 = devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::status.eq(DeviceStatus::Active))
            .count()
            .get_result(conn)
            .await?;
        if active >= i64::from(sub.device_limit) {
            return Err(AppError::LimitExceeded(format!(
                "the subscription allows {} active device(s): revoke one first",
                sub.device_limit
            )));
        }
        let device = Device {
            id: DeviceId::random(),
            user_id,
            name: name.clone(),
            platform: platform.clone(),
            status: DeviceStatus::Active,
            token_hash: token_hash.clone().into(),
            last_seen_at: None,
            created_at: ts,
            revoked_at: None,
            over_limit: false,
        };
        diesel::insert_into(devices::table)
            .values(&device)
            .execute(conn)
            .await?;
        let details = serde_json::json!({"name": device.name, "userId": user_id.to_string()});
        if let Some(entry) = audit_of(actor, &device, "register_device", details) {
            diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>(device)
    })?;
    Ok((device, token))
}

/// The audit row of `actor` acting on `device`, when it is an admin acting
/// on someone else's.
fn audit_of(
    actor: &Actor,
    device: &Device,
    action: &str,
    details: serde_json::Value,
) -> Option<AuditEntry> {
    actor.acts_for_other(device.user_id).then(|| {
        audit::entry(
            actor,
            action,
            "device",
            Some(&device.id.to_string()),
            details,
        )
    })
}

/// Revokes a device (the actor's own, or any for admins): its token stops
/// working, its open sessions end, and gateways close its tunnels. A device
/// already revoked is answered as it is.
pub async fn revoke(db: &Db, actor: &Actor, id: DeviceId) -> AppResult<Device> {
    db_tx!(db, |conn, outbox| {
        // Its sessions end below, outside the usage appliers.
        crate::apply_lock!(conn);
        let device = device_of!(conn, actor, id);
        if device.status == DeviceStatus::Revoked {
            // Already revoked: its revocation time, events and audit entry
            // stand as they were.
            return Ok(device);
        }
        let ts = now();
        // The owner's row first, as registration takes it: the places
        // under the device limit are counted below without a race.
        crate::hold_owner!(conn, device.user_id, ts);
        let revoked = diesel::update(devices::table.find(id))
            .set((
                devices::status.eq(DeviceStatus::Revoked),
                devices::revoked_at.eq(ts),
                // Only active devices hold places under the limit.
                devices::over_limit.eq(false),
            ))
            .returning(Device::as_returning())
            .get_result(conn)
            .await?;
        // Its sessions end with the revocation, not when a gateway next
        // reports; the access event below closes their tunnels.
        crate::end_open_sessions!(conn, outbox, [id], EndReason::DeviceRevoked, ts);
        // A place under the device limit may have come free for the next
        // device in line.
        crate::fit_device_limit!(conn, outbox, device.user_id, ts);
        let details = serde_json::json!({"userId": device.user_id});
        if let Some(e) = audit_of(actor, &device, "revoke_device", details) {
            diesel::insert_into(audit_log::table)
                .values(&e)
                .execute(conn)
                .await?;
        }
        outbox.access(AccessChange::DeviceRevoked, Some(device.user_id));
        outbox.device(DeviceChange::now(
            DeviceEventKind::Revoked,
            device.id,
            device.user_id,
        ));
        Ok::<_, AppError>(revoked)
    })
}

/// Renames a device (own, or any for admins; audited as `rename_device`
/// when an admin renames someone else's). Its token, links and sessions
/// stay as they are.
pub async fn rename(db: &Db, actor: &Actor, id: DeviceId, name: &str) -> AppResult<Device> {
    let name = validate::text("name", name, 1, 64)?;
    db_tx!(db, |conn, outbox| {
        let device = device_of!(conn, actor, id);
        if device.name == name {
            return Ok(device);
        }
        let renamed = diesel::update(devices::table.find(id))
            .set(devices::name.eq(&name))
            .returning(Device::as_returning())
            .get_result(conn)
            .await?;
        let details = serde_json::json!({"from": device.name, "to": name});
        if let Some(e) = audit_of(actor, &device, "rename_device", details) {
            diesel::insert_into(audit_log::table)
                .values(&e)
                .execute(conn)
                .await?;
        }
        outbox.device(DeviceChange::now(
            DeviceEventKind::Renamed,
            device.id,
            device.user_id,
        ));
        Ok::<_, AppError>(renamed)
    })
}

/// Replaces a device's access token (own, or any for admins); the old one
/// and the device JWTs exchanged for it stop working at once, and every
/// gateway closes the tunnels opened with them.
pub async fn rotate_token(db: &Db, actor: &Actor, id: DeviceId) -> AppResult<(Device, String)> {
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    let device = db_tx!(db, |conn, outbox| {
        // Its sessions end below, outside the usage appliers.
        crate::apply_lock!(conn);
        let device = device_of!(conn, actor, id);
        if device.status != DeviceStatus::Active {
            return Err(AppError::Conflict("the device is revoked".into()));
        }
        let rotated = diesel::update(devices::table.find(id))
            .set(devices::token_hash.eq(&hash))
            .returning(Device::as_returning())
            .get_result(conn)
            .await?;
        // Tunnels opened with the old token (or a device JWT exchanged for
        // it) belong to the device's open sessions: ending them makes every
        // gateway close those tunnels on its next heartbeat, which the
        // access event below triggers at once. New tunnels get new sessions.
        crate::end_open_sessions!(conn, outbox, [id], EndReason::DeviceRevoked, now());
        let details = serde_json::json!({});
        if let Some(e) = audit_of(actor, &device, "rotate_device_token", details) {
            diesel::insert_into(audit_log::table)
                .values(&e)
                .execute(conn)
                .await?;
        }
        outbox.access(AccessChange::DeviceTokenRotated, Some(device.user_id));
        outbox.device(DeviceChange::now(
            DeviceEventKind::Rotated,
            device.id,
            device.user_id,
        ));
        Ok::<_, AppError>(rotated)
    })?;
    Ok((device, token))
}

/// Filters on the device list.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    /// Only this user's devices (admins; users always see only their own).
    pub user_id: Option<UserId>,
    /// Only active or revoked ones.
    pub status: Option<DeviceStatus>,
}

/// A page of devices: the actor's own, or anyone's for admins.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &DeviceFilter,
    page: &PageArgs,
) -> AppResult<Page<Device>> {
    let user_id = actor.scope(filter.user_id)?;
    let rows = db_run!(db, |conn| {
        let mut q = devices::table.select(Device::as_select()).into_boxed();
        if let Some(u) = user_id {
            q = q.filter(devices::user_id.eq(u));
        }
        if let Some(s) = filter.status {
            q = q.filter(devices::status.eq(s));
        }
        paginate!(q, devices, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// How many of the list's rows match `filter` (the actor's own, or
/// anyone's for admins).
pub async fn count(db: &Db, actor: &Actor, filter: &DeviceFilter) -> AppResult<i64> {
    let user_id = actor.scope(filter.user_id)?;
    Ok(db_run!(db, |conn| {
        let mut q = devices::table.into_boxed();
        if let Some(u) = user_id {
            q = q.filter(devices::user_id.eq(u));
        }
        if let Some(s) = filter.status {
            q = q.filter(devices::status.eq(s));
        }
        q.count().get_result::<i64>(conn).await?
    }))
}

/// Loads devices by id.
pub async fn by_ids(db: &Db, ids: &[DeviceId]) -> AppResult<Vec<Device>> {
    Ok(db_run!(db, |conn| devices::table
        .filter(devices::id.eq_any(ids))
        .select(Device::as_select())
        .load(conn)
        .await?))
}
