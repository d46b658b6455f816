//! The one query of the access rule: a device with its owner's status and
//! email and the owner's subscription stored as active, looked up by access
//! token (alone or several at once, [`super::tokens`]), by device id, or
//! for several devices at once. Each lookup is a plain
//! (not boxed) diesel query, so PostgreSQL keeps it prepared: validate-device
//! is the hottest route there is.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Facts, Verdict};
use crate::auth;
use crate::db::Db;
use crate::db::models::{Device, Subscription, now};
use crate::db::schema::{devices, subscriptions, users};
use crate::db_run;
use crate::error::AppResult;
use crate::ids::DeviceId;
use crate::status::{SubscriptionStatus, UserStatus};

/// A row of the query.
type Row = (Device, UserStatus, String, Option<Subscription>);

/// The query without its filter: devices, owners and stored-active
/// subscriptions.
macro_rules! facts {
    () => {
        devices::table
            .inner_join(users::table)
            .left_join(
                subscriptions::table.on(subscriptions::user_id
                    .eq(devices::user_id)
                    .and(subscriptions::status.eq(SubscriptionStatus::Active))),
            )
            .select((
                Device::as_select(),
                users::status,
                users::email,
                Option::<Subscription>::as_select(),
            ))
    };
}

fn to_facts((device, user_status, user_email, subscription): Row) -> Facts {
    Facts {
        device,
        user_status,
        user_email,
        subscription,
    }
}

/// The facts about the device holding the opaque access `token`.
pub async fn by_token(db: &Db, token: &str) -> AppResult<Option<Facts>> {
    if !auth::looks_like_token(token) {
        return Ok(None);
    }
    let hash = auth::hash_token(token);
    let row: Option<Row> = db_run!(db, |conn| facts!()
        .filter(devices::token_hash.eq(&hash))
        .first(conn)
        .await
        .optional()?);
    Ok(row.map(to_facts))
}

/// The facts about device `id`.
pub async fn by_device(db: &Db, id: DeviceId) -> AppResult<Option<Facts>> {
    let row: Option<Row> = db_run!(db, |conn| facts!()
        .filter(devices::id.eq(id))
        .first(conn)
        .await
        .optional()?);
    Ok(row.map(to_facts))
}

/// The facts about each of `ids` that exists.
pub async fn by_devices(db: &Db, ids: &[DeviceId]) -> AppResult<Vec<Facts>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = db_run!(db, |conn| facts!()
        .filter(devices::id.eq_any(ids))
        .load(conn)
        .await?);
    Ok(rows.into_iter().map(to_facts).collect())
}

/// The facts about each device whose access token hashes to one of
/// `hashes`, by that hash (a hash twice in `hashes` is looked up once).
pub async fn by_hashes(db: &Db, hashes: &[String]) -> AppResult<HashMap<String, Facts>> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Row> = db_run!(db, |conn| facts!()
        .filter(devices::token_hash.eq_any(hashes))
        .load(conn)
        .await?);
    Ok(rows
        .into_iter()
        .map(|row| {
            let facts = to_facts(row);
            (facts.device.token_hash.expose().to_owned(), facts)
        })
        .collect())
}

/// Checks a device by its opaque access token (from a tunnel URL, or the
/// credential of a device on the live socket).
pub async fn check_token(db: &Db, token: &str) -> AppResult<Verdict> {
    Ok(Verdict::of(by_token(db, token).await?, now()))
}

/// Checks a device by id (from a device JWT).
pub async fn check_device(db: &Db, id: DeviceId) -> AppResult<Verdict> {
    Ok(Verdict::of(by_device(db, id).await?, now()))
}
