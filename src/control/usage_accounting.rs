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
use crate::db::models::{Device, Session, Subscription, UsageEntry, new_id, now};
use crate::db::schema::{devices, plans, sessions, subscriptions, usage_ledger, users};
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
    let ids: Vec<String> = batch
        .iter()
        .map(|t| t.session_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let counted = db_tx!(db, |conn| {
        let owners: Vec<(String, Option<String>)> = sessions::table
            .filter(sessions::id.eq_any(&ids))
            .select((sessions::id, sessions::gateway_node_id))
            .load(conn)
            .await?;
        if owners.len() != ids.len() {
            return Err(AppError::NotFound("session"));
        }
        if owners.iter().any(|(_, g)| g.as_deref() != Some(gateway_id)) {
            return Err(AppError::Forbidden);
        }
        let mut counted = 0usize;
        // A fixed order avoids deadlocks between concurrent reports.
        let mut ordered: Vec<&SessionTotals> = batch.iter().collect();
        ordered.sort_by(|a, b| (&a.session_id, a.seq).cmp(&(&b.session_id, b.seq)));
        for t in ordered {
            let ts = now();
            // Touching the row locks it (PostgreSQL row lock; SQLite write
            // lock) and reads the totals in the same statement.
            let s: Session = diesel::update(sessions::table.find(&t.session_id))
                .set(sessions::last_activity_at.eq(ts))
                .returning(Session::as_returning())
                .get_result(conn)
                .await?;
            let delta_up = (t.bytes_up - s.bytes_up).max(0);
            let delta_down = (t.bytes_down - s.bytes_down).max(0);
            if delta_up == 0 && delta_down == 0 {
                continue;
            }
            diesel::update(sessions::table.find(&t.session_id))
                .set((
                    sessions::bytes_up.eq(s.bytes_up + delta_up),
                    sessions::bytes_down.eq(s.bytes_down + delta_down),
                    sessions::last_seq.eq(s.last_seq.max(t.seq)),
                ))
                .execute(conn)
                .await?;
            let entry = UsageEntry {
                id: new_id(),
                session_id: t.session_id.clone(),
                seq: t.seq,
                total_up: t.bytes_up,
                total_down: t.bytes_down,
                delta_up,
                delta_down,
                recorded_at: ts,
            };
            diesel::insert_into(usage_ledger::table)
                .values(&entry)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            // Charge the owner's current subscription, starting a new period
            // first when a monthly allowance is due to reset.
            let current: Option<(Subscription, String)> = subscriptions::table
                .inner_join(plans::table)
                .filter(subscriptions::status.eq("active"))
                .filter(
                    subscriptions::user_id.nullable().eq(devices::table
                        .filter(devices::id.eq(&s.device_id))
                        .select(devices::user_id)
                        .single_value()),
                )
                .select((Subscription::as_select(), plans::reset_period))
                .first(conn)
                .await
                .optional()?;
            if let Some((sub, reset)) = current {
                let delta = delta_up.saturating_add(delta_down);
                let due = reset == "monthly"
                    && ts >= sub.period_start + chrono::Duration::days(PERIOD_DAYS);
                let (used, period_start) = if due {
                    (delta, ts)
                } else {
                    (
                        sub.traffic_used_bytes.saturating_add(delta),
                        sub.period_start,
                    )
                };
                diesel::update(subscriptions::table.find(&sub.id))
                    .set((
                        subscriptions::traffic_used_bytes.eq(used),
                        subscriptions::period_start.eq(period_start),
                        subscriptions::updated_at.eq(ts),
                    ))
                    .execute(conn)
                    .await?;
            }
            counted += 1;
        }
        Ok(counted)
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
