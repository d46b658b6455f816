//! The usage ledger: gateways report per-session *cumulative* byte totals
//! with a sequence number; only the increase over what is stored is applied,
//! to the session and the subscription, in one transaction. Replays,
//! reordering and concurrent duplicates never double count.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::device_validation;
use super::subscriptions::PERIOD_DAYS;
use crate::db::Db;
use crate::db::models::{Device, Session, Subscription, new_id, now};
use crate::db::schema::{devices, plans, sessions, subscriptions, users};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx};

/// Most session totals one report may carry.
pub const MAX_BATCH: usize = 10_000;

/// One session's cumulative totals.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionTotals {
    /// The session (from assign-outline).
    pub session_id: String,
    /// Increasing per session; later reports carry larger numbers.
    pub seq: i64,
    /// Cumulative bytes from the client since the session started.
    pub bytes_up: i64,
    /// Cumulative bytes to the client since the session started.
    pub bytes_down: i64,
}

/// A session the gateway must close, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CloseOrder {
    /// The session.
    pub session_id: String,
    /// Why (a session end reason).
    pub reason: String,
}

/// Outcome of a report.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Totals that added bytes.
    pub counted: usize,
    /// Sessions to close.
    pub close: Vec<CloseOrder>,
}

/// A session's new totals (input of the set-based update).
#[derive(serde::Serialize)]
struct SessionGrowth {
    id: String,
    up: i64,
    down: i64,
    seq: i64,
}

/// A ledger entry (input of the set-based insert; stamped in SQL).
#[derive(serde::Serialize)]
struct LedgerRow {
    id: String,
    session_id: String,
    seq: i64,
    total_up: i64,
    total_down: i64,
    delta_up: i64,
    delta_down: i64,
}

const LEDGER_PG: &str = "INSERT INTO usage_ledger \
     (id, session_id, seq, total_up, total_down, delta_up, delta_down, recorded_at) \
     SELECT x.id, x.session_id, x.seq, x.total_up, x.total_down, x.delta_up, x.delta_down, $2 \
     FROM json_to_recordset($1::json) AS x(id text, session_id text, seq bigint, total_up bigint, \
     total_down bigint, delta_up bigint, delta_down bigint) ON CONFLICT DO NOTHING";

const LEDGER_SQLITE: &str = "INSERT INTO usage_ledger \
     (id, session_id, seq, total_up, total_down, delta_up, delta_down, recorded_at) \
     SELECT json_extract(value, '$.id'), json_extract(value, '$.session_id'), \
     json_extract(value, '$.seq'), json_extract(value, '$.total_up'), \
     json_extract(value, '$.total_down'), json_extract(value, '$.delta_up'), \
     json_extract(value, '$.delta_down'), ?2 FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING";

/// Bytes to add to a subscription's period total.
#[derive(serde::Serialize)]
struct SubscriptionCharge {
    id: String,
    delta: i64,
}

const GROW_SESSIONS_PG: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq FROM json_to_recordset($1::json) AS x(id text, up bigint, down bigint, seq bigint) \
     WHERE sessions.id = x.id";

const GROW_SESSIONS_SQLITE: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.up') AS up, \
     json_extract(value, '$.down') AS down, json_extract(value, '$.seq') AS seq FROM json_each(?)) AS x \
     WHERE sessions.id = x.id";

/// Adds, saturating at the largest BIGINT.
const CHARGE_PG: &str = "UPDATE subscriptions SET traffic_used_bytes = CASE \
     WHEN subscriptions.traffic_used_bytes > 9223372036854775807 - x.delta THEN 9223372036854775807 \
     ELSE subscriptions.traffic_used_bytes + x.delta END, updated_at = $2 \
     FROM json_to_recordset($1::json) AS x(id text, delta bigint) WHERE subscriptions.id = x.id";

const CHARGE_SQLITE: &str = "UPDATE subscriptions SET traffic_used_bytes = CASE \
     WHEN subscriptions.traffic_used_bytes > 9223372036854775807 - x.delta THEN 9223372036854775807 \
     ELSE subscriptions.traffic_used_bytes + x.delta END, updated_at = ?2 \
     FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.delta') AS delta \
     FROM json_each(?1)) AS x WHERE subscriptions.id = x.id";

/// Applies a batch from `gateway_id`. Every session must belong to that
/// gateway, or nothing is written.
pub async fn report(db: &Db, gateway_id: &str, batch: &[SessionTotals]) -> AppResult<Applied> {
    if batch.len() > MAX_BATCH {
        return Err(AppError::bad(format!(
            "at most {MAX_BATCH} session totals per report"
        )));
    }
    for t in batch {
        if t.seq < 0 || t.bytes_up < 0 || t.bytes_down < 0 {
            return Err(AppError::bad("seq and byte totals must not be negative"));
        }
        if uuid::Uuid::parse_str(&t.session_id).is_err() {
            return Err(AppError::bad("session_id is not a valid id"));
        }
    }
    // Cumulative totals: per session, the largest of each is the latest.
    let mut latest: std::collections::BTreeMap<&str, (i64, i64, i64)> = Default::default();
    for t in batch {
        let e = latest.entry(&t.session_id).or_insert((0, 0, 0));
        *e = (e.0.max(t.seq), e.1.max(t.bytes_up), e.2.max(t.bytes_down));
    }
    let ids: Vec<String> = latest.keys().map(|id| (*id).to_owned()).collect();
    let pg = matches!(db.pool, crate::db::DbPool::Pg(_));
    let counted = db_tx!(db, |conn| {
        let ts = now();
        // Touching the rows locks them (PostgreSQL row locks; SQLite write
        // lock) and reads their totals in the same statement.
        let current: Vec<Session> =
            diesel::update(sessions::table.filter(sessions::id.eq_any(&ids)))
                .set(sessions::last_activity_at.eq(ts))
                .returning(Session::as_returning())
                .get_results(conn)
                .await?;
        if current.len() != ids.len() {
            return Err(AppError::NotFound("session"));
        }
        if current
            .iter()
            .any(|s| s.gateway_node_id.as_deref() != Some(gateway_id))
        {
            return Err(AppError::Forbidden);
        }
        // What each report adds over what is stored; nothing for replays.
        let mut grown: Vec<SessionGrowth> = Vec::new();
        let mut entries: Vec<LedgerRow> = Vec::new();
        let mut by_device: std::collections::HashMap<&str, i64> = Default::default();
        for s in &current {
            let Some(&(seq, up, down)) = latest.get(s.id.as_str()) else {
                continue;
            };
            let delta_up = (up - s.bytes_up).max(0);
            let delta_down = (down - s.bytes_down).max(0);
            if delta_up == 0 && delta_down == 0 {
                continue;
            }
            grown.push(SessionGrowth {
                id: s.id.clone(),
                up: s.bytes_up + delta_up,
                down: s.bytes_down + delta_down,
                seq: s.last_seq.max(seq),
            });
            entries.push(LedgerRow {
                id: new_id(),
                session_id: s.id.clone(),
                seq,
                total_up: up,
                total_down: down,
                delta_up,
                delta_down,
            });
            let d = by_device.entry(s.device_id.as_str()).or_insert(0);
            *d = d.saturating_add(delta_up.saturating_add(delta_down));
        }
        if grown.is_empty() {
            return Ok(0);
        }
        let json = serde_json::to_string(&grown).map_err(|e| AppError::Internal(e.to_string()))?;
        diesel::sql_query(if pg {
            GROW_SESSIONS_PG
        } else {
            GROW_SESSIONS_SQLITE
        })
        .bind::<diesel::sql_types::Text, _>(json)
        .execute(conn)
        .await?;
        let json =
            serde_json::to_string(&entries).map_err(|e| AppError::Internal(e.to_string()))?;
        diesel::sql_query(if pg { LEDGER_PG } else { LEDGER_SQLITE })
            .bind::<diesel::sql_types::Text, _>(json)
            .bind::<diesel::sql_types::Timestamp, _>(ts)
            .execute(conn)
            .await?;
        // Charge each owner's current subscription once, starting a new
        // period first when a monthly allowance is due to reset.
        let device_ids: Vec<&str> = by_device.keys().copied().collect();
        let subs: Vec<(String, Subscription, String)> = devices::table
            .inner_join(subscriptions::table.on(subscriptions::user_id.eq(devices::user_id)))
            .inner_join(plans::table.on(plans::id.eq(subscriptions::plan_id)))
            .filter(devices::id.eq_any(&device_ids))
            .filter(subscriptions::status.eq("active"))
            .select((devices::id, Subscription::as_select(), plans::reset_period))
            .load(conn)
            .await?;
        let mut charge: std::collections::BTreeMap<String, (i64, Subscription, String)> =
            Default::default();
        let mut charged: HashSet<String> = HashSet::new();
        for (device, sub, reset) in subs {
            let delta = by_device.get(device.as_str()).copied().unwrap_or(0);
            if !charged.insert(device) {
                continue;
            }
            let e = charge.entry(sub.id.clone()).or_insert((0, sub, reset));
            e.0 = e.0.saturating_add(delta);
        }
        let mut add: Vec<SubscriptionCharge> = Vec::new();
        for (id, (delta, sub, reset)) in charge {
            let due =
                reset == "monthly" && ts >= sub.period_start + chrono::Duration::days(PERIOD_DAYS);
            if due {
                diesel::update(subscriptions::table.find(&id))
                    .set((
                        subscriptions::traffic_used_bytes.eq(delta),
                        subscriptions::period_start.eq(ts),
                        subscriptions::updated_at.eq(ts),
                    ))
                    .execute(conn)
                    .await?;
            } else {
                add.push(SubscriptionCharge { id, delta });
            }
        }
        if !add.is_empty() {
            let json =
                serde_json::to_string(&add).map_err(|e| AppError::Internal(e.to_string()))?;
            diesel::sql_query(if pg { CHARGE_PG } else { CHARGE_SQLITE })
                .bind::<diesel::sql_types::Text, _>(json)
                .bind::<diesel::sql_types::Timestamp, _>(ts)
                .execute(conn)
                .await?;
        }
        Ok(grown.len())
    })?;
    let close = close_orders(db, gateway_id, &ids).await?;
    Ok(Applied { counted, close })
}

/// Of `session_ids` (of `gateway_id`), the ones the gateway must close:
/// already ended, or whose device may no longer connect. Newly refused
/// sessions are ended here, with their reason.
pub async fn close_orders(
    db: &Db,
    gateway_id: &str,
    session_ids: &[String],
) -> AppResult<Vec<CloseOrder>> {
    if session_ids.is_empty() {
        return Ok(vec![]);
    }
    type Row = (Session, Device, String, Option<Subscription>);
    let rows: Vec<Row> = db_run!(db, |conn| {
        sessions::table
            .inner_join(devices::table.inner_join(users::table))
            .left_join(
                subscriptions::table.on(subscriptions::user_id
                    .eq(devices::user_id)
                    .and(subscriptions::status.eq("active"))),
            )
            .filter(sessions::id.eq_any(session_ids))
            .filter(sessions::gateway_node_id.eq(gateway_id))
            .select((
                Session::as_select(),
                Device::as_select(),
                users::status,
                Option::<Subscription>::as_select(),
            ))
            .load(conn)
            .await?
    });
    let ts = now();
    let mut orders = Vec::new();
    let mut to_end: Vec<(String, &'static str)> = Vec::new();
    for (s, d, user_status, sub) in rows {
        if let Some(reason) = s.end_reason {
            orders.push(CloseOrder {
                session_id: s.id,
                reason,
            });
            continue;
        }
        if let Some(r) = device_validation::judge(&d, &user_status, sub.as_ref(), ts) {
            to_end.push((s.id.clone(), r.end_reason()));
            orders.push(CloseOrder {
                session_id: s.id,
                reason: r.end_reason().to_owned(),
            });
        }
    }
    for (id, reason) in to_end {
        end_session(db, &id, reason).await?;
    }
    Ok(orders)
}

/// Ends an open session with a reason (no-op when already ended).
pub async fn end_session(db: &Db, id: &str, reason: &str) -> AppResult<()> {
    db_run!(db, |conn| diesel::update(sessions::table.find(id))
        .filter(sessions::ended_at.is_null())
        .set((
            sessions::ended_at.eq(now()),
            sessions::end_reason.eq(reason)
        ))
        .execute(conn)
        .await?);
    Ok(())
}
