//! Devices: registration within the plan's device limit (race-free), the
//! access token (shown once, stored hashed, rotatable), revocation, and the
//! ready-to-use access links.

use base64::Engine;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{audit, validate};
use crate::auth;
use crate::db::Db;
use crate::db::models::{Device, GatewayNode, Plan, Region, Subscription, new_id, now};
use crate::db::schema::{audit_log, devices, gateway_nodes, plans, regions, subscriptions, users};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx, paginate};

/// Who is acting on a device.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// The user's id.
    pub user_id: &'a str,
    /// Whether the user is an admin (may act on anyone's devices).
    pub admin: bool,
}

/// Registers a device for `user_id` within the device limit of the user's
/// active subscription. Returns the device and its access token (the only
/// time the token is seen).
pub async fn register(
    db: &Db,
    user_id: &str,
    name: &str,
    platform: &str,
) -> AppResult<(Device, String)> {
    let name = validate::text("name", name, 1, 64)?;
    let platform = validate::text("platform", platform, 1, 32)?.to_lowercase();
    let token = auth::new_token();
    let token_hash = auth::hash_token(&token);
    let device = db_tx!(db, |conn| {
        let ts = now();
        // Lock the user's row first: concurrent registrations of one user
        // queue here, so the count below cannot race (PostgreSQL row lock;
        // SQLite takes its write lock).
        let touched = diesel::update(users::table.find(user_id))
            .set(users::updated_at.eq(ts))
            .execute(conn)
            .await?;
        if touched == 0 {
            return Err(AppError::NotFound("user"));
        }
        let current: Option<(Subscription, Plan)> = subscriptions::table
            .inner_join(plans::table)
            .filter(subscriptions::user_id.eq(user_id))
            .filter(subscriptions::status.eq("active"))
            .filter(subscriptions::expires_at.gt(ts))
            .select((Subscription::as_select(), Plan::as_select()))
            .first(conn)
            .await
            .optional()?;
        let Some((_, plan)) = current else {
            return Err(AppError::LimitExceeded(
                "an active subscription is needed to register a device".into(),
            ));
        };
        let active: i64 = devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::status.eq("active"))
            .count()
            .get_result(conn)
            .await?;
        if active >= i64::from(plan.device_limit) {
            return Err(AppError::LimitExceeded(format!(
                "the plan allows {} active device(s): revoke one first",
                plan.device_limit
            )));
        }
        let device = Device {
            id: new_id(),
            user_id: user_id.to_owned(),
            name: name.clone(),
            platform: platform.clone(),
            status: "active".into(),
            token_hash: token_hash.clone(),
            last_seen_at: None,
            created_at: ts,
            revoked_at: None,
        };
        diesel::insert_into(devices::table)
            .values(&device)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(device)
    })?;
    Ok((device, token))
}

async fn owned(db: &Db, actor: Actor<'_>, id: &str) -> AppResult<Device> {
    let id = validate::id("id", id)?;
    let found: Option<Device> = db_run!(db, |conn| devices::table
        .find(&id)
        .select(Device::as_select())
        .first(conn)
        .await
        .optional()?);
    match found {
        Some(d) if actor.admin || d.user_id == actor.user_id => Ok(d),
        // Someone else's device looks exactly like a missing one.
        _ => Err(AppError::NotFound("device")),
    }
}

/// Revokes a device: its token stops working and its tunnels are closed.
pub async fn revoke(db: &Db, actor: Actor<'_>, id: &str) -> AppResult<Device> {
    let device = owned(db, actor, id).await?;
    let audit_entry = (actor.admin && device.user_id != actor.user_id).then(|| {
        audit::entry(
            actor.user_id,
            "revoke_device",
            "device",
            Some(&device.id),
            serde_json::json!({"userId": device.user_id}),
        )
    });
    db_tx!(db, |conn| {
        let ts = now();
        let d = diesel::update(devices::table.find(&device.id))
            .set((devices::status.eq("revoked"), devices::revoked_at.eq(ts)))
            .returning(Device::as_returning())
            .get_result(conn)
            .await?;
        if let Some(e) = &audit_entry {
            diesel::insert_into(audit_log::table)
                .values(e)
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>(d)
    })
}

/// Replaces a device's access token; the old one stops working at once.
pub async fn rotate_token(db: &Db, actor: Actor<'_>, id: &str) -> AppResult<(Device, String)> {
    let device = owned(db, actor, id).await?;
    if device.status != "active" {
        return Err(AppError::Conflict("the device is revoked".into()));
    }
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    let audit_entry = (actor.admin && device.user_id != actor.user_id).then(|| {
        audit::entry(
            actor.user_id,
            "rotate_device_token",
            "device",
            Some(&device.id),
            serde_json::json!({}),
        )
    });
    let d = db_tx!(db, |conn| {
        let d = diesel::update(devices::table.find(&device.id))
            .set(devices::token_hash.eq(&hash))
            .returning(Device::as_returning())
            .get_result(conn)
            .await?;
        if let Some(e) = &audit_entry {
            diesel::insert_into(audit_log::table)
                .values(e)
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>(d)
    })?;
    Ok((d, token))
}

/// Filters on the device list.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    /// Only this user's devices (always the caller's for non-admins).
    pub user_id: Option<String>,
    /// Only `active` or `revoked`.
    pub status: Option<String>,
}

/// A page of devices.
pub async fn list(db: &Db, filter: &DeviceFilter, page: &PageArgs) -> AppResult<Page<Device>> {
    let rows = db_run!(db, |conn| {
        let mut q = devices::table.select(Device::as_select()).into_boxed();
        if let Some(u) = &filter.user_id {
            q = q.filter(devices::user_id.eq(u.clone()));
        }
        if let Some(s) = &filter.status {
            q = q.filter(devices::status.eq(s.clone()));
        }
        paginate!(q, devices, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads devices by id.
pub async fn by_ids(db: &Db, ids: &[String]) -> AppResult<Vec<Device>> {
    Ok(db_run!(db, |conn| devices::table
        .filter(devices::id.eq_any(ids))
        .select(Device::as_select())
        .load(conn)
        .await?))
}

/// Ready-to-use access links for a device token.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct AccessLinks {
    /// `ssconf://` dynamic access key for Outline apps (1.15+).
    pub ssconf: String,
    /// SIP002 `ss://` link for clients with v2ray-plugin (WebSocket over TLS).
    pub sip002: String,
}

/// Where devices connect: the gateway's public URL and the pool key of its
/// region. The configured URL wins; otherwise the first active gateway.
pub async fn entry_point(
    db: &Db,
    configured_url: Option<&str>,
) -> AppResult<Option<(String, Region)>> {
    let (gateways, first_region): (Vec<(GatewayNode, Region)>, Option<Region>) =
        db_run!(db, |conn| {
            let g = gateway_nodes::table
                .inner_join(regions::table)
                .filter(gateway_nodes::status.eq("active"))
                .order(gateway_nodes::created_at.asc())
                .limit(1)
                .select((GatewayNode::as_select(), Region::as_select()))
                .load(conn)
                .await?;
            let r = regions::table
                .order(regions::created_at.asc())
                .select(Region::as_select())
                .first(conn)
                .await
                .optional()?;
            (g, r)
        });
    let from_gateway = gateways.into_iter().next();
    Ok(match (configured_url, from_gateway, first_region) {
        (Some(url), Some((_, region)), _) => Some((url.to_owned(), region)),
        (Some(url), None, Some(region)) => Some((url.to_owned(), region)),
        (None, Some((g, region)), _) => Some((g.public_url, region)),
        _ => None,
    })
}

/// Builds the links for `token` through the gateway at `gateway_url`.
pub fn links(gateway_url: &str, region: &Region, token: &str) -> AccessLinks {
    let without_scheme = gateway_url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(gateway_url);
    let authority = without_scheme.split('/').next().unwrap_or(without_scheme);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => (h, p),
        _ => (authority, "443"),
    };
    let userinfo = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", region.pool_method, region.pool_secret));
    let plugin = format!("v2ray-plugin;tls;host={host};path=/ws/{token}/tcp;mux=0");
    AccessLinks {
        ssconf: format!("ssconf://{authority}/c/{token}"),
        sip002: format!(
            "ss://{userinfo}@{host}:{port}/?plugin={}#httvps",
            percent_encode(&plugin)
        ),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The active device holding `token`, if its owner is active too.
pub async fn active_by_token(db: &Db, token: &str) -> AppResult<Option<Device>> {
    if !auth::looks_like_token(token) {
        return Ok(None);
    }
    let hash = auth::hash_token(token);
    Ok(db_run!(db, |conn| devices::table
        .inner_join(users::table)
        .filter(devices::token_hash.eq(&hash))
        .filter(devices::status.eq("active"))
        .filter(users::status.eq("active"))
        .select(Device::as_select())
        .first(conn)
        .await
        .optional()?))
}
