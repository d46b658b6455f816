//! The usage ledger. Gateways report per-session *cumulative* byte totals
//! with a sequence number. A report is checked (every session exists and
//! belongs to the reporting gateway) and stored as one row of the usage
//! inbox; the applier then merges pending rows (per session the largest
//! totals win, so several reports of one session cost one update) and applies
//! only the increase over what is stored to the session, the ledger and the
//! subscription. Applying a row twice changes nothing, so replays,
//! reordering, concurrent duplicates and a crash between applying and
//! deleting a row never double count.
//!
//! The applier is idle most of the time: then a report waits for the pass
//! that applies it and its answer says what it counted and which sessions
//! ran out of allowance. Under load, reports are answered once stored and
//! merged by the next pass; the more pile up, the more they merge, so the
//! database does one update per active session per pass, not per report.

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
use httvps_wire::usage::MAX_BATCH;
use httvps_wire::{CloseOrder, SessionTotals};

/// A stored report.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Its inbox row (none for an empty report).
    pub id: Option<i64>,
    /// Totals it carried.
    pub accepted: usize,
    /// Reported sessions that have already ended.
    pub close: Vec<CloseOrder>,
}

/// What a pass of the applier did for one inbox row.
#[derive(Debug, Clone, Default)]
pub struct RowOutcome {
    /// Totals of the row that added bytes (the rest were replays, older, or
    /// overtaken by a later report in the same pass).
    pub counted: usize,
    /// Sessions of the row that ended in this pass: their owner used up the
    /// allowance.
    pub close: Vec<CloseOrder>,
}

/// What one pass of the applier did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// The inbox rows applied, in id order.
    pub ids: Vec<i64>,
    /// What the wanted rows did.
    pub outcomes: Vec<(i64, RowOutcome)>,
    /// Session totals the rows held.
    pub totals: usize,
    /// Distinct sessions they merged into.
    pub sessions: usize,
    /// Sessions ended because their owner used up the allowance.
    pub quota_closed: usize,
}

/// A reported session as stored, for the check on receipt.
#[derive(diesel::QueryableByName)]
struct Known {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    gateway_node_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    end_reason: Option<String>,
}

/// An inbox row.
#[derive(diesel::QueryableByName)]
struct InboxRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    totals: String,
}

/// A session about to grow, with its owner.
#[derive(diesel::QueryableByName)]
struct Stored {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    user_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_up: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes_down: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    end_reason: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    hour_start: Option<chrono::NaiveDateTime>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    hour_up: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    hour_down: i64,
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

/// A session's new totals and current hour (input of the set-based update).
#[derive(serde::Serialize)]
struct SessionGrowth {
    id: String,
    up: i64,
    down: i64,
    seq: i64,
    hour_up: i64,
    hour_down: i64,
}

/// A session's closed hour (input of the set-based ledger insert).
#[derive(serde::Serialize)]
struct LedgerRow {
    id: String,
    session_id: String,
    seq: i64,
    total_up: i64,
    total_down: i64,
    delta_up: i64,
    delta_down: i64,
    /// The hour's start, written as diesel writes timestamps (SQLite
    /// compares them as text).
    recorded_at: String,
}

/// Bytes to add to an account's current subscription.
#[derive(serde::Serialize)]
struct UserCharge {
    user_id: String,
    delta: i64,
}

/// Per session, the largest (seq, bytes up, bytes down) seen.
type Latest = std::collections::BTreeMap<String, (i64, i64, i64)>;

/// A stored report: `[session_id, seq, bytes_up, bytes_down]` per session.
type InboxTotals = Vec<(String, i64, i64, i64)>;

/// Sessions applied per transaction: row locks stay short however large a
/// pass is.
const APPLY_CHUNK: usize = 5_000;

/// Inbox rows one pass takes at most (20,000 reports of 200 totals are
/// 4,000,000 totals); the more a pass takes, the more reports of one
/// session merge.
const PASS_ROWS: usize = 20_000;

/// Inbox rows read at a time.
const PAGE_ROWS: i64 = 500;

/// Key of the PostgreSQL advisory lock that makes the appliers of several
/// replicas take turns ("usage" in ASCII).
const APPLY_LOCK_KEY: i64 = 0x0075_7361_6765;

/// `= ANY(ARRAY(...))` makes one index scan over all the keys; `IN
/// (SELECT ...)` hashes them and probes the index once per key.
const KNOWN_PG: &str = "SELECT id, gateway_node_id, end_reason FROM sessions \
     WHERE id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))";

const KNOWN_SQLITE: &str = "SELECT id, gateway_node_id, end_reason FROM sessions \
     WHERE id IN (SELECT value FROM json_each(?1))";

const INBOX_INSERT_PG: &str = "INSERT INTO usage_inbox (gateway_node_id, totals, received_at) \
     VALUES ($1, $2, $3) RETURNING id";

const INBOX_INSERT_SQLITE: &str = "INSERT INTO usage_inbox (gateway_node_id, totals, received_at) \
     VALUES (?1, ?2, ?3) RETURNING id";

const INBOX_READ_PG: &str = "SELECT id, totals FROM usage_inbox WHERE id > $1 ORDER BY id LIMIT $2";

const INBOX_READ_SQLITE: &str =
    "SELECT id, totals FROM usage_inbox WHERE id > ?1 ORDER BY id LIMIT ?2";

const INBOX_DELETE_PG: &str = "DELETE FROM usage_inbox WHERE id IN (SELECT CAST(json_array_elements_text($1::json) AS BIGINT))";

const INBOX_DELETE_SQLITE: &str =
    "DELETE FROM usage_inbox WHERE id IN (SELECT value FROM json_each(?1))";

/// Reads the sessions about to grow with their owners. Only the applier
/// writes byte totals, and appliers take turns, so no row lock is needed.
const READ_PG: &str = "SELECT s.id, d.user_id, s.bytes_up, s.bytes_down, s.last_seq, s.end_reason, \
     s.hour_start, s.hour_up, s.hour_down FROM sessions s JOIN devices d ON d.id = s.device_id \
     WHERE s.id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))";

const READ_SQLITE: &str = "SELECT s.id, d.user_id, s.bytes_up, s.bytes_down, s.last_seq, \
     s.end_reason, s.hour_start, s.hour_up, s.hour_down \
     FROM sessions s JOIN devices d ON d.id = s.device_id \
     WHERE s.id IN (SELECT value FROM json_each(?1))";

/// Grows the sessions and their current hour (`$3`, the hour's start).
const GROW_SESSIONS_PG: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq, last_activity_at = $2, hour_start = $3, hour_up = x.hour_up, \
     hour_down = x.hour_down FROM json_to_recordset($1::json) \
     AS x(id text, up bigint, down bigint, seq bigint, hour_up bigint, hour_down bigint) \
     WHERE sessions.id = x.id";

const GROW_SESSIONS_SQLITE: &str = "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
     last_seq = x.seq, last_activity_at = ?2, hour_start = ?3, hour_up = x.hour_up, \
     hour_down = x.hour_down FROM (SELECT json_extract(value, '$.id') AS id, \
     json_extract(value, '$.up') AS up, json_extract(value, '$.down') AS down, \
     json_extract(value, '$.seq') AS seq, json_extract(value, '$.hour_up') AS hour_up, \
     json_extract(value, '$.hour_down') AS hour_down FROM json_each(?1)) AS x \
     WHERE sessions.id = x.id";

/// Moves closed hours to the ledger (adding to a row already there).
const LEDGER_PG: &str = "INSERT INTO usage_ledger \
     (id, session_id, seq, total_up, total_down, delta_up, delta_down, recorded_at) \
     SELECT x.id, x.session_id, x.seq, x.total_up, x.total_down, x.delta_up, x.delta_down, \
     x.recorded_at FROM json_to_recordset($1::json) AS x(id text, session_id text, seq bigint, \
     total_up bigint, total_down bigint, delta_up bigint, delta_down bigint, recorded_at timestamp) \
     ON CONFLICT (session_id, recorded_at) DO UPDATE SET \
     seq = GREATEST(usage_ledger.seq, excluded.seq), \
     total_up = GREATEST(usage_ledger.total_up, excluded.total_up), \
     total_down = GREATEST(usage_ledger.total_down, excluded.total_down), \
     delta_up = usage_ledger.delta_up + excluded.delta_up, \
     delta_down = usage_ledger.delta_down + excluded.delta_down";

const LEDGER_SQLITE: &str = "INSERT INTO usage_ledger \
     (id, session_id, seq, total_up, total_down, delta_up, delta_down, recorded_at) \
     SELECT json_extract(value, '$.id'), json_extract(value, '$.session_id'), \
     json_extract(value, '$.seq'), json_extract(value, '$.total_up'), \
     json_extract(value, '$.total_down'), json_extract(value, '$.delta_up'), \
     json_extract(value, '$.delta_down'), json_extract(value, '$.recorded_at') \
     FROM json_each(?1) WHERE true \
     ON CONFLICT (session_id, recorded_at) DO UPDATE SET \
     seq = max(usage_ledger.seq, excluded.seq), \
     total_up = max(usage_ledger.total_up, excluded.total_up), \
     total_down = max(usage_ledger.total_down, excluded.total_down), \
     delta_up = usage_ledger.delta_up + excluded.delta_up, \
     delta_down = usage_ledger.delta_down + excluded.delta_down";

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

/// The start of the hour `ts` falls in (the ledger's grain).
fn hour_of(ts: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
    use chrono::Timelike;
    ts.date().and_hms_opt(ts.hour(), 0, 0).unwrap_or(ts)
}

fn is_pg(db: &Db) -> bool {
    matches!(db.pool, crate::db::DbPool::Pg(_))
}

/// Checks a report from `gateway_id` and stores it in the inbox. Every
/// session must exist and belong to that gateway, or nothing is stored.
/// The answer names the reported sessions that have already ended.
pub async fn receive(db: &Db, gateway_id: &str, batch: &[SessionTotals]) -> AppResult<Received> {
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
    let mut latest = Latest::new();
    merge(
        &mut latest,
        batch
            .iter()
            .map(|t| (t.session_id.as_str(), t.seq, t.bytes_up, t.bytes_down)),
    );
    if latest.is_empty() {
        return Ok(Received::default());
    }
    let pg = is_pg(db);
    let ids_json = to_json(&latest.keys().collect::<Vec<_>>())?;
    let known: Vec<Known> = db_run!(db, |conn| diesel::sql_query(if pg {
        KNOWN_PG
    } else {
        KNOWN_SQLITE
    })
    .bind::<diesel::sql_types::Text, _>(&ids_json)
    .load(conn)
    .await?);
    if known.len() != latest.len() {
        return Err(AppError::NotFound("session"));
    }
    if known
        .iter()
        .any(|s| s.gateway_node_id.as_deref() != Some(gateway_id))
    {
        return Err(AppError::Forbidden);
    }
    let close = known
        .into_iter()
        .filter_map(|s| {
            s.end_reason.map(|reason| CloseOrder {
                session_id: s.id,
                reason,
            })
        })
        .collect();
    let totals: InboxTotals = latest
        .into_iter()
        .map(|(id, (seq, up, down))| (id, seq, up, down))
        .collect();
    let totals = to_json(&totals)?;
    #[derive(diesel::QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let row: Inserted = db_run!(db, |conn| diesel::sql_query(if pg {
        INBOX_INSERT_PG
    } else {
        INBOX_INSERT_SQLITE
    })
    .bind::<diesel::sql_types::Text, _>(gateway_id)
    .bind::<diesel::sql_types::Text, _>(&totals)
    .bind::<diesel::sql_types::Timestamp, _>(now())
    .get_result(conn)
    .await?);
    Ok(Received {
        id: Some(row.id),
        accepted: batch.len(),
        close,
    })
}

/// A session's merged totals in `merged` (sorted by session id).
fn newest_of(merged: &[(String, (i64, i64, i64))], session_id: &str) -> Option<(i64, i64, i64)> {
    merged
        .binary_search_by(|(id, _)| id.as_str().cmp(session_id))
        .ok()
        .map(|i| merged[i].1)
}

/// Merges cumulative totals: per session, the largest of each is the latest.
fn merge<'a>(latest: &mut Latest, totals: impl Iterator<Item = (&'a str, i64, i64, i64)>) {
    for (id, seq, up, down) in totals {
        match latest.get_mut(id) {
            Some(e) => *e = (e.0.max(seq), e.1.max(up), e.2.max(down)),
            None => {
                latest.insert(id.to_owned(), (seq, up, down));
            }
        }
    }
}

/// Applies the pending inbox rows (the oldest `PASS_ROWS`): merges them per
/// session page by page (memory follows the sessions, not the reports),
/// applies the increase in transactions of `APPLY_CHUNK` sessions, then
/// deletes the rows. An error leaves the rows for the next pass, which
/// re-applies them harmlessly. Rows for which `wanted` is true get their
/// [`RowOutcome`] in the answer.
pub async fn apply_pending(db: &Db, wanted: impl Fn(i64) -> bool) -> AppResult<Pass> {
    let pg = is_pg(db);
    let mut latest = Latest::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut kept: Vec<(i64, InboxTotals)> = Vec::new();
    let mut totals = 0;
    let mut after = 0i64;
    while ids.len() < PASS_ROWS {
        let page: Vec<InboxRow> = db_run!(db, |conn| diesel::sql_query(if pg {
            INBOX_READ_PG
        } else {
            INBOX_READ_SQLITE
        })
        .bind::<diesel::sql_types::BigInt, _>(after)
        .bind::<diesel::sql_types::BigInt, _>(PAGE_ROWS)
        .load(conn)
        .await?);
        let Some(last) = page.last().map(|r| r.id) else {
            break;
        };
        after = last;
        for r in page {
            ids.push(r.id);
            match serde_json::from_str::<InboxTotals>(&r.totals) {
                Ok(t) => {
                    totals += t.len();
                    merge(
                        &mut latest,
                        t.iter()
                            .map(|(id, seq, up, down)| (id.as_str(), *seq, *up, *down)),
                    );
                    if wanted(r.id) {
                        kept.push((r.id, t));
                    }
                }
                // Written by `receive`, so this cannot happen; never block
                // the inbox on one row.
                Err(e) => {
                    tracing::error!(inbox.id = r.id, error = %e, "unreadable usage inbox row dropped")
                }
            }
        }
    }
    if ids.is_empty() {
        return Ok(Pass::default());
    }
    let merged: Vec<(String, (i64, i64, i64))> = latest.into_iter().collect();
    let mut grown: HashSet<String> = HashSet::new();
    let mut ended: HashSet<String> = HashSet::new();
    for chunk in merged.chunks(APPLY_CHUNK) {
        apply_chunk(db, chunk, &mut grown, &mut ended).await?;
    }
    let ids_json = to_json(&ids)?;
    db_run!(db, |conn| diesel::sql_query(if pg {
        INBOX_DELETE_PG
    } else {
        INBOX_DELETE_SQLITE
    })
    .bind::<diesel::sql_types::Text, _>(&ids_json)
    .execute(conn)
    .await?);
    let outcomes = kept
        .iter()
        .map(|(id, totals)| {
            let mut out = RowOutcome::default();
            for (sid, _, up, down) in totals {
                let newest = newest_of(&merged, sid).is_some_and(|l| l.1 == *up && l.2 == *down);
                if newest && grown.contains(sid) {
                    out.counted += 1;
                }
                if ended.contains(sid) {
                    out.close.push(CloseOrder {
                        session_id: sid.clone(),
                        reason: "quota_exceeded".into(),
                    });
                }
            }
            (*id, out)
        })
        .collect();
    Ok(Pass {
        ids,
        outcomes,
        totals,
        sessions: merged.len(),
        quota_closed: ended.len(),
    })
}

/// Applies merged totals in one transaction of five statements whatever its
/// size: read the sessions with their owners, grow them, add their gains to
/// the ledger's rows for this hour, charge each account once, end the sessions of accounts that just
/// used up their allowance. Sessions deleted since the report are skipped.
async fn apply_chunk(
    db: &Db,
    chunk: &[(String, (i64, i64, i64))],
    grown_ids: &mut HashSet<String>,
    ended_ids: &mut HashSet<String>,
) -> AppResult<()> {
    let pg = is_pg(db);
    let period_days = i32::try_from(PERIOD_DAYS).unwrap_or(30);
    let ids_json = to_json(&chunk.iter().map(|(id, _)| id).collect::<Vec<_>>())?;
    let (grown, ending) = db_tx!(db, |conn| {
        if pg {
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({APPLY_LOCK_KEY})"))
                .execute(conn)
                .await?;
        }
        let ts = now();
        let mut clock = std::time::Instant::now();
        let mut lap = || {
            let ms = clock.elapsed().as_secs_f64() * 1e3;
            clock = std::time::Instant::now();
            ms
        };
        let stored: Vec<Stored> = diesel::sql_query(if pg { READ_PG } else { READ_SQLITE })
            .bind::<diesel::sql_types::Text, _>(&ids_json)
            .load(conn)
            .await?;
        // What each session gained over what is stored; nothing for replays.
        let hour = hour_of(ts);
        let mut grown: Vec<SessionGrowth> = Vec::new();
        let mut closed: Vec<LedgerRow> = Vec::new();
        let mut by_user: std::collections::BTreeMap<&str, i64> = Default::default();
        for s in &stored {
            let Some((seq, up, down)) = newest_of(chunk, &s.id) else {
                continue;
            };
            let delta_up = (up - s.bytes_up).max(0);
            let delta_down = (down - s.bytes_down).max(0);
            if delta_up == 0 && delta_down == 0 {
                continue;
            }
            let (hour_up, hour_down) = match s.hour_start {
                Some(h) if h == hour => (s.hour_up + delta_up, s.hour_down + delta_down),
                earlier => {
                    // A new hour for this session: the last one is closed.
                    if let Some(h) = earlier.filter(|_| s.hour_up > 0 || s.hour_down > 0) {
                        closed.push(LedgerRow {
                            id: new_id(),
                            session_id: s.id.clone(),
                            seq: s.last_seq,
                            total_up: s.bytes_up,
                            total_down: s.bytes_down,
                            delta_up: s.hour_up,
                            delta_down: s.hour_down,
                            recorded_at: h.format("%F %T%.f").to_string(),
                        });
                    }
                    (delta_up, delta_down)
                }
            };
            grown.push(SessionGrowth {
                id: s.id.clone(),
                up: s.bytes_up + delta_up,
                down: s.bytes_down + delta_down,
                seq: s.last_seq.max(seq),
                hour_up,
                hour_down,
            });
            let d = by_user.entry(s.user_id.as_str()).or_insert(0);
            *d = d.saturating_add(delta_up.saturating_add(delta_down));
        }
        let read_ms = lap();
        if grown.is_empty() {
            return Ok::<_, AppError>((Vec::new(), Vec::new()));
        }
        diesel::sql_query(if pg {
            GROW_SESSIONS_PG
        } else {
            GROW_SESSIONS_SQLITE
        })
        .bind::<diesel::sql_types::Text, _>(to_json(&grown)?)
        .bind::<diesel::sql_types::Timestamp, _>(ts)
        .bind::<diesel::sql_types::Timestamp, _>(hour)
        .execute(conn)
        .await?;
        let grow_ms = lap();
        if !closed.is_empty() {
            diesel::sql_query(if pg { LEDGER_PG } else { LEDGER_SQLITE })
                .bind::<diesel::sql_types::Text, _>(to_json(&closed)?)
                .execute(conn)
                .await?;
        }
        let ledger_ms = lap();
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
        let charge_ms = lap();
        tracing::debug!(
            usage.sessions = grown.len(),
            read_ms,
            grow_ms,
            ledger_ms,
            charge_ms,
            "usage chunk applied"
        );
        // Owners who just used up their allowance: their sessions here end.
        let spent: HashSet<&str> = charged
            .iter()
            .filter(|c| {
                c.traffic_limit_bytes
                    .is_some_and(|l| c.traffic_used_bytes >= l)
            })
            .map(|c| c.user_id.as_str())
            .collect();
        let ending: Vec<String> = stored
            .iter()
            .filter(|s| s.end_reason.is_none() && spent.contains(s.user_id.as_str()))
            .map(|s| s.id.clone())
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
        }
        let grown: Vec<String> = grown.into_iter().map(|g| g.id).collect();
        Ok((grown, ending))
    })?;
    grown_ids.extend(grown);
    ended_ids.extend(ending);
    Ok(())
}

/// How long an answer waits for the pass that applies its report.
pub const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the applier looks for rows nobody told it about (stored by
/// another replica, or left by a stop).
const APPLY_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// A report waits for its pass only while fewer rows than this are
/// waiting in this process: beyond, the applier is behind and answers
/// would only queue up behind it.
const WAIT_BELOW: usize = 4;

/// The applier of one control-plane process: woken by each stored report,
/// it drains the inbox pass by pass. Shared by the HTTP handlers.
#[derive(Default)]
pub struct Applier {
    kick: tokio::sync::Notify,
    queue: std::sync::Mutex<Queue>,
    applied: std::sync::atomic::AtomicU64,
}

/// Rows this process stored and has not seen applied, and the answers
/// waiting for theirs.
#[derive(Default)]
struct Queue {
    stored: std::collections::BTreeSet<i64>,
    waiters: std::collections::HashMap<i64, tokio::sync::oneshot::Sender<RowOutcome>>,
}

impl Applier {
    /// Wakes the applier for a stored row. While the applier keeps up, waits
    /// for the pass that applies the row (at most [`APPLY_WAIT`]) and
    /// returns what it did. When it is behind, returns `None` at once: the
    /// row is safe in the inbox and merges into a later pass.
    pub async fn submit(&self, id: i64) -> Option<RowOutcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wait = match self.queue.lock() {
            Ok(mut q) => {
                q.stored.insert(id);
                let wait = q.stored.len() <= WAIT_BELOW;
                if wait {
                    q.waiters.insert(id, tx);
                }
                wait
            }
            Err(_) => false,
        };
        self.kick.notify_one();
        if !wait {
            return None;
        }
        let got = tokio::time::timeout(APPLY_WAIT, rx).await;
        if let Ok(mut q) = self.queue.lock() {
            q.waiters.remove(&id);
        }
        got.ok().and_then(Result::ok)
    }

    /// Reports this process stored that it has not seen applied yet.
    pub fn waiting(&self) -> usize {
        self.queue.lock().map(|q| q.stored.len()).unwrap_or(0)
    }

    /// Session totals this process's applier has applied since start-up.
    pub fn applied_totals(&self) -> u64 {
        std::sync::atomic::AtomicU64::load(&self.applied, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs passes until the inbox is empty; publishes an access event when
    /// sessions ran out of allowance. Returns the session totals applied.
    pub async fn drain(&self, db: &Db, events: &super::events::Events) -> AppResult<usize> {
        let mut applied = 0;
        loop {
            let pass = apply_pending(db, |id| {
                self.queue.lock().is_ok_and(|q| q.waiters.contains_key(&id))
            })
            .await?;
            if pass.ids.is_empty() {
                return Ok(applied);
            }
            applied += pass.totals;
            self.applied
                .fetch_add(pass.totals as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                usage.rows = pass.ids.len(),
                usage.totals = pass.totals,
                usage.sessions = pass.sessions,
                "usage pass applied"
            );
            if pass.quota_closed > 0 {
                // Other gateways may hold cached validations for the accounts.
                events
                    .access_changed(super::events::AccessEvent::new("quota_exceeded", None))
                    .await;
            }
            if let Ok(mut q) = self.queue.lock() {
                // Passes go in id order: rows up to the last one are applied
                // (or were, by another replica).
                if let Some(last) = pass.ids.last() {
                    q.stored = q.stored.split_off(&(last + 1));
                }
                for (id, outcome) in pass.outcomes {
                    if let Some(tx) = q.waiters.remove(&id) {
                        let _ = tx.send(outcome);
                    }
                }
                // A row read just before its answer began to wait: applied,
                // but what it did is unknown; answer at once.
                for id in &pass.ids {
                    q.waiters.remove(id);
                }
            }
        }
    }

    /// The applier's loop: a pass after every stored report and every
    /// [`APPLY_TICK`]; when `stop` turns true, a last pass, then it returns.
    pub async fn run(
        &self,
        db: Db,
        events: super::events::Events,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let stopping = *stop.borrow();
            if !stopping {
                tokio::select! {
                    _ = self.kick.notified() => {}
                    _ = tokio::time::sleep(APPLY_TICK) => {}
                    _ = stop.changed() => {}
                }
            }
            let drained = self.drain(&db, &events).await;
            if let Err(e) = drained {
                tracing::warn!(error = %e, "applying usage failed; retrying");
                if stopping {
                    return;
                }
                tokio::time::sleep(APPLY_TICK).await;
            } else if stopping {
                return;
            }
        }
    }
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
