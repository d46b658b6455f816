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
use crate::db::schema::{devices, sessions, subscriptions, users};
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

/// A reported session, locked, with its owner.
#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    gateway_node_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_up: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_down: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    end_reason: Option<String>,
}

/// A subscription after it was charged.
#[derive(diesel::QueryableByName)]
struct Charged {
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    traffic_used_bytes: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    traffic_limit_bytes: Option<i64>,
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

/// Bytes to add to an account's current subscription.
#[derive(serde::Serialize)]
struct UserCharge {
    user_id: String,
    delta: i64,
}

/// Locks the reported sessions (in id order: concurrent reports cannot
/// deadlock) and reads them with their owners.
const LOCK_PG: &str = "SELECT s.id, d.user_id, s.gateway_node_id, s.bytes_up, s.bytes_down, \
     s.last_seq, s.end_reason FROM sessions s JOIN devices d ON d.id = s.device_id \
     WHERE s.id IN (SELECT json_array_elements_text($1::json)) ORDER BY s.id FOR UPDATE OF s";

/// SQLite has one writer at a time: the transaction is the lock.
const LOCK_SQLITE: &str = "SELECT s.id, d.user_id, s.gateway_node_id, s.bytes_up, s.bytes_down, \
     s.last_seq, s.end_reason FROM sessions s JOIN devices d ON d.id = s.device_id \
     WHERE s.id IN (SELECT value FROM json_each(?1)) ORDER BY s.id";

const GROW_SESSIONS_PG: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq, last_activity_at = $2 \
     FROM json_to_recordset($1::json) AS x(id text, up bigint, down bigint, seq bigint) \
     WHERE sessions.id = x.id";

const GROW_SESSIONS_SQLITE: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq, last_activity_at = ?2 FROM (SELECT json_extract(value, '$.id') AS id, \
     json_extract(value, '$.up') AS up, json_extract(value, '$.down') AS down, \
     json_extract(value, '$.seq') AS seq FROM json_each(?1)) AS x WHERE sessions.id = x.id";

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

/// Charges each account's active subscription once (saturating at the
/// largest BIGINT), starting a new period first when a monthly allowance
/// is due to reset; returns the new totals and limits.
const CHARGE_PG: &str = "UPDATE subscriptions SET \
     traffic_used_bytes = CASE \
       WHEN p.reset_period = 'monthly' AND subscriptions.period_start + make_interval(days => $3) <= $2 THEN x.delta \
       WHEN subscriptions.traffic_used_bytes > 9223372036854775807 - x.delta THEN 9223372036854775807 \
       ELSE subscriptions.traffic_used_bytes + x.delta END, \
     period_start = CASE \
       WHEN p.reset_period = 'monthly' AND subscriptions.period_start + make_interval(days => $3) <= $2 THEN $2 \
       ELSE subscriptions.period_start END, \
     updated_at = $2 \
     FROM json_to_recordset($1::json) AS x(user_id text, delta bigint), plans p \
     WHERE subscriptions.user_id = x.user_id AND subscriptions.status = 'active' AND p.id = subscriptions.plan_id \
     RETURNING subscriptions.user_id, subscriptions.traffic_used_bytes, subscriptions.traffic_limit_bytes";

const CHARGE_SQLITE: &str = "UPDATE subscriptions SET \
     traffic_used_bytes = CASE \
       WHEN p.reset_period = 'monthly' AND julianday(subscriptions.period_start) + ?3 <= julianday(?2) THEN x.delta \
       WHEN subscriptions.traffic_used_bytes > 9223372036854775807 - x.delta THEN 9223372036854775807 \
       ELSE subscriptions.traffic_used_bytes + x.delta END, \
     period_start = CASE \
       WHEN p.reset_period = 'monthly' AND julianday(subscriptions.period_start) + ?3 <= julianday(?2) THEN ?2 \
       ELSE subscriptions.period_start END, \
     updated_at = ?2 \
     FROM (SELECT json_extract(value, '$.user_id') AS user_id, json_extract(value, '$.delta') AS delta \
       FROM json_each(?1)) AS x, plans p \
     WHERE subscriptions.user_id = x.user_id AND subscriptions.status = 'active' AND p.id = subscriptions.plan_id \
     RETURNING user_id, traffic_used_bytes, traffic_limit_bytes";

fn to_json(v: &impl serde::Serialize) -> AppResult<String> {
    serde_json::to_string(v).map_err(|e| AppError::Internal(e.to_string()))
}

/// Applies a batch from `gateway_id` in one transaction of four statements
/// whatever its size: lock and read the sessions, grow them, append to the
/// ledger, charge the subscriptions. Every session must belong to that
/// gateway, or nothing is written. The answer names the reported sessions
/// to close: already ended, or whose owner just used up the allowance (those
/// end here). Other refusals (revoked, disabled, expired) reach gateways
/// through heartbeats and access events.
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
    let ids_json = to_json(&latest.keys().collect::<Vec<_>>())?;
    let pg = matches!(db.pool, crate::db::DbPool::Pg(_));
    let period_days = i32::try_from(PERIOD_DAYS).unwrap_or(30);
    db_tx!(db, |conn| {
        let ts = now();
        let locked: Vec<Locked> = diesel::sql_query(if pg { LOCK_PG } else { LOCK_SQLITE })
            .bind::<diesel::sql_types::Text, _>(&ids_json)
            .load(conn)
            .await?;
        if locked.len() != latest.len() {
            return Err(AppError::NotFound("session"));
        }
        if locked
            .iter()
            .any(|s| s.gateway_node_id.as_deref() != Some(gateway_id))
        {
            return Err(AppError::Forbidden);
        }
        // What each session gained over what is stored; nothing for replays.
        let mut grown: Vec<SessionGrowth> = Vec::new();
        let mut entries: Vec<LedgerRow> = Vec::new();
        let mut by_user: std::collections::BTreeMap<&str, i64> = Default::default();
        let mut close = Vec::new();
        for s in &locked {
            if let Some(reason) = &s.end_reason {
                close.push(CloseOrder {
                    session_id: s.id.clone(),
                    reason: reason.clone(),
                });
            }
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
            let d = by_user.entry(s.user_id.as_str()).or_insert(0);
            *d = d.saturating_add(delta_up.saturating_add(delta_down));
        }
        if grown.is_empty() {
            return Ok(Applied { counted: 0, close });
        }
        diesel::sql_query(if pg {
            GROW_SESSIONS_PG
        } else {
            GROW_SESSIONS_SQLITE
        })
        .bind::<diesel::sql_types::Text, _>(to_json(&grown)?)
        .bind::<diesel::sql_types::Timestamp, _>(ts)
        .execute(conn)
        .await?;
        diesel::sql_query(if pg { LEDGER_PG } else { LEDGER_SQLITE })
            .bind::<diesel::sql_types::Text, _>(to_json(&entries)?)
            .bind::<diesel::sql_types::Timestamp, _>(ts)
            .execute(conn)
            .await?;
        let charges: Vec<UserCharge> = by_user
            .iter()
            .map(|(user_id, delta)| UserCharge {
                user_id: (*user_id).to_owned(),
                delta: *delta,
            })
            .collect();
        let charged: Vec<Charged> = diesel::sql_query(if pg { CHARGE_PG } else { CHARGE_SQLITE })
            .bind::<diesel::sql_types::Text, _>(to_json(&charges)?)
            .bind::<diesel::sql_types::Timestamp, _>(ts)
            .bind::<diesel::sql_types::Integer, _>(period_days)
            .load(conn)
            .await?;
        // Owners who just used up their allowance: their reported sessions end.
        let spent: HashSet<&str> = charged
            .iter()
            .filter(|c| {
                c.traffic_limit_bytes
                    .is_some_and(|l| c.traffic_used_bytes >= l)
            })
            .map(|c| c.user_id.as_str())
            .collect();
        let ending: Vec<&str> = locked
            .iter()
            .filter(|s| s.end_reason.is_none() && spent.contains(s.user_id.as_str()))
            .map(|s| s.id.as_str())
            .collect();
        if !ending.is_empty() {
            diesel::update(sessions::table.filter(sessions::id.eq_any(&ending)))
                .filter(sessions::ended_at.is_null())
                .set((
                    sessions::ended_at.eq(ts),
                    sessions::end_reason.eq("quota_exceeded"),
                ))
                .execute(conn)
                .await?;
            close.extend(ending.iter().map(|id| CloseOrder {
                session_id: (*id).to_owned(),
                reason: "quota_exceeded".into(),
            }));
        }
        Ok(Applied {
            counted: grown.len(),
            close,
        })
    })
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
