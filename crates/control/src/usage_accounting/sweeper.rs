//! Usage by the clock, not by the next report: finished hours move from the
//! sessions to the ledger, monthly allowances reset at their period
//! boundary, and subscriptions past their `expires_at` are marked expired
//! (with an `EXPIRED` event for the admin feed, in the same transaction),
//! even for sessions and accounts that never report again; links of node
//! connections older than [`WITNESS_KEEP`] are deleted. The
//! decisions are pure ([`finished_hour`], [`period_start_at`], tested
//! below); [`sweep_at`] runs them at a given time, under the appliers' lock
//! so it never races a pass; [`spawn`] runs it on every replica (looking
//! for finished hours once per hour, the rest every [`SWEEP_EVERY`]).

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::inbox::to_json;
use super::plan::{ClosedHour, hour_of};
use super::statements::{LEDGER, LedgerRow};
use crate::db::models::now;
use crate::db::schema::{devices, plans, sessions, subscriptions, users};
use crate::db::{Db, Statement};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::feed::{QuotaEvent, QuotaEventKind};
use crate::ids::{SessionId, SubscriptionId, UserId};
use crate::status::{EndReason, ResetPeriod, SubscriptionStatus};
use crate::{db_run, db_tx};

/// How often each replica sweeps: hours reach the ledger and periods reset
/// at most this late.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Sessions (and subscriptions) one sweep handles per transaction.
const SWEEP_CHUNK: i64 = 5_000;

/// How long a gateway's link of a node connection to its session is kept:
/// a node asks for the session of a new connection within seconds of
/// accepting it, and gives up after a minute; after that the link is
/// useless. Without this the links would grow with every connection ever
/// opened.
pub const WITNESS_KEEP: chrono::Duration = chrono::Duration::hours(1);

/// Deletes one chunk of links made before `$1`, oldest first (by row
/// address: the ordered chunk comes from the index on `linked_at`, which
/// stops at the first younger link, and nothing else is read).
const PRUNE_LINKS: Statement = Statement {
    pg: "DELETE FROM witness_links WHERE ctid = ANY(ARRAY(\
         SELECT ctid FROM witness_links WHERE linked_at < $1 ORDER BY linked_at LIMIT 5000))",
    sqlite: "DELETE FROM witness_links WHERE rowid IN \
             (SELECT rowid FROM witness_links WHERE linked_at < ?1 ORDER BY linked_at LIMIT 5000)",
};

/// A session's current hour as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct HourRow {
    /// The session.
    pub id: SessionId,
    /// Sequence number of its totals.
    pub last_seq: i64,
    /// Cumulative bytes up.
    pub bytes_up: i64,
    /// Cumulative bytes down.
    pub bytes_down: i64,
    /// Start of the hour its counts belong to.
    pub hour_start: Option<NaiveDateTime>,
    /// Bytes up gained in that hour.
    pub hour_up: i64,
    /// Bytes down gained in that hour.
    pub hour_down: i64,
}

/// The ledger row of `row`'s hour when that hour is over at `now` and
/// gained bytes; `None` while it runs (or gained nothing).
pub fn finished_hour(row: &HourRow, now: NaiveDateTime) -> Option<ClosedHour> {
    let hour = row.hour_start?;
    (hour < hour_of(now) && (row.hour_up > 0 || row.hour_down > 0)).then_some(ClosedHour {
        session_id: row.id,
        seq: row.last_seq,
        total_up: row.bytes_up,
        total_down: row.bytes_down,
        delta_up: row.hour_up,
        delta_down: row.hour_down,
        hour,
    })
}

/// The start of the period of `days` days that `now` falls in, counting
/// from `start`; `None` while the period that began at `start` runs.
pub fn period_start_at(
    start: NaiveDateTime,
    days: i64,
    now: NaiveDateTime,
) -> Option<NaiveDateTime> {
    let len = chrono::Duration::days(days.max(1));
    if start + len > now {
        return None;
    }
    let periods = (now - start).num_seconds() / len.num_seconds();
    Some(start + len * i32::try_from(periods).unwrap_or(i32::MAX))
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Session hours moved to the ledger.
    pub hours: usize,
    /// Allowances reset for a new period.
    pub periods: usize,
    /// Subscriptions marked expired.
    pub expired: usize,
    /// Links of node connections deleted (see [`WITNESS_KEEP`]).
    pub witness: usize,
}

/// Sweeps at `now`: finished hours to the ledger, due periods reset.
pub async fn sweep_at(db: &Db, now: NaiveDateTime) -> AppResult<Swept> {
    sweep_with(db, now, true).await
}

/// [`sweep_at`], closing finished hours only when `hours` is true: the
/// search for them reads every session that gained bytes, and once a sweep
/// has closed every hour before the current one, only the next hour's
/// start makes more (a pass always writes the hour it runs in, and closes
/// an older one it finds itself).
async fn sweep_with(db: &Db, now: NaiveDateTime, hours: bool) -> AppResult<Swept> {
    let mut swept = Swept::default();
    if hours {
        loop {
            let n = close_hours(db, now).await?;
            swept.hours += n;
            if n < usize::try_from(SWEEP_CHUNK).unwrap_or(usize::MAX) {
                break;
            }
        }
    }
    // Expiry first: a subscription that ran out keeps its last period's
    // usage (a period never starts at or past the end).
    loop {
        let n = expire_subscriptions(db, now).await?;
        swept.expired += n;
        if n < usize::try_from(SWEEP_CHUNK).unwrap_or(usize::MAX) {
            break;
        }
    }
    swept.periods = reset_periods(db, now).await?;
    swept.witness = prune_witness(db, now - WITNESS_KEEP).await?;
    Ok(swept)
}

/// Deletes the links made before `cutoff`; returns how many went.
async fn prune_witness(db: &Db, cutoff: NaiveDateTime) -> AppResult<usize> {
    let mut pruned = 0;
    loop {
        let n = db_run!(db, |conn| diesel::sql_query(PRUNE_LINKS.text(conn))
            .bind::<diesel::sql_types::Timestamp, _>(cutoff)
            .execute(conn)
            .await?);
        pruned += n;
        if n < usize::try_from(SWEEP_CHUNK).unwrap_or(usize::MAX) {
            return Ok(pruned);
        }
    }
}

/// Moves one chunk of finished hours to the ledger; returns how many.
async fn close_hours(db: &Db, now: NaiveDateTime) -> AppResult<usize> {
    let hour = hour_of(now);
    db_tx!(db, |conn, _| {
        crate::apply_lock!(conn);
        let rows: Vec<HourRow> = sessions::table
            .filter(sessions::hour_start.lt(hour))
            .filter(sessions::hour_up.gt(0).or(sessions::hour_down.gt(0)))
            .select((
                sessions::id,
                sessions::last_seq,
                sessions::bytes_up,
                sessions::bytes_down,
                sessions::hour_start,
                sessions::hour_up,
                sessions::hour_down,
            ))
            .limit(SWEEP_CHUNK)
            .load(conn)
            .await?;
        let closed: Vec<ClosedHour> = rows.iter().filter_map(|r| finished_hour(r, now)).collect();
        if closed.is_empty() {
            return Ok::<_, AppError>(0);
        }
        let ledger: Vec<LedgerRow> = closed.iter().map(LedgerRow::from).collect();
        diesel::sql_query(LEDGER.text(conn))
            .bind::<diesel::sql_types::Text, _>(to_json(&ledger)?)
            .execute(conn)
            .await?;
        let ids: Vec<SessionId> = closed.iter().map(|c| c.session_id).collect();
        diesel::update(sessions::table.filter(sessions::id.eq_any(&ids)))
            .set((
                sessions::hour_start.eq(None::<NaiveDateTime>),
                sessions::hour_up.eq(0),
                sessions::hour_down.eq(0),
            ))
            .execute(conn)
            .await?;
        Ok(closed.len())
    })
}

/// A subscription whose period is due: id, period start, account, email,
/// allowance, used.
type DueRow = (
    SubscriptionId,
    NaiveDateTime,
    UserId,
    String,
    Option<i64>,
    i64,
);

/// Resets the allowances of monthly plans whose period is over: used bytes
/// to zero, the period starting at its boundary (not at the next report),
/// while the subscription runs (one that ran out keeps its last period).
/// Each reset publishes its `PERIOD_RESET` event, and an account that had
/// used up its allowance is let back in at once (an access event, as when
/// an admin resets it), in the same transaction.
async fn reset_periods(db: &Db, now: NaiveDateTime) -> AppResult<usize> {
    let days = crate::subscriptions::PERIOD_DAYS;
    let cutoff = now - chrono::Duration::days(days);
    db_tx!(db, |conn, outbox| {
        crate::apply_lock!(conn);
        let due: Vec<DueRow> = subscriptions::table
            .inner_join(plans::table)
            .inner_join(users::table)
            .filter(plans::reset_period.eq(ResetPeriod::Monthly))
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .filter(subscriptions::period_start.le(cutoff))
            .filter(subscriptions::expires_at.gt(now))
            .select((
                subscriptions::id,
                subscriptions::period_start,
                subscriptions::user_id,
                users::email,
                subscriptions::traffic_limit_bytes,
                subscriptions::traffic_used_bytes,
            ))
            .limit(SWEEP_CHUNK)
            .load(conn)
            .await?;
        let mut reset = 0;
        for (id, start, user, email, limit, used) in due {
            let Some(new_start) = period_start_at(start, days, now) else {
                continue;
            };
            let n = diesel::update(subscriptions::table.find(id))
                .filter(subscriptions::period_start.eq(start))
                .set((
                    subscriptions::traffic_used_bytes.eq(0),
                    subscriptions::period_start.eq(new_start),
                    subscriptions::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            if n == 0 {
                continue;
            }
            reset += n;
            outbox.quota(QuotaEvent {
                kind: QuotaEventKind::PeriodReset,
                subscription_id: id.uuid(),
                user_id: user.uuid(),
                user_email: email,
                traffic_limit_bytes: limit,
                traffic_used_bytes: 0,
                at: now.and_utc(),
            });
            if crate::access::quota_spent(used, limit) && !crate::access::quota_spent(0, limit) {
                outbox.access(AccessChange::SubscriptionExtended, Some(user));
            }
        }
        Ok::<_, AppError>(reset)
    })
}

/// What an expiring subscription's event says: id, account, email,
/// allowance, used.
type ExpiringRow = (SubscriptionId, UserId, String, Option<i64>, i64);

/// Marks one chunk of active subscriptions whose `expires_at` has passed as
/// expired, each with an `EXPIRED` quota event and one access event for
/// gateways, in the same transaction; returns how many.
async fn expire_subscriptions(db: &Db, now: NaiveDateTime) -> AppResult<usize> {
    db_tx!(db, |conn, outbox| {
        crate::apply_lock!(conn);
        let due: Vec<ExpiringRow> = subscriptions::table
            .inner_join(users::table)
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .filter(subscriptions::expires_at.le(now))
            .select((
                subscriptions::id,
                subscriptions::user_id,
                users::email,
                subscriptions::traffic_limit_bytes,
                subscriptions::traffic_used_bytes,
            ))
            .limit(SWEEP_CHUNK)
            .load(conn)
            .await?;
        if due.is_empty() {
            return Ok::<_, AppError>(0);
        }
        let ids: Vec<SubscriptionId> = due.iter().map(|d| d.0).collect();
        // Only those still active and lapsed now (an extension may have won).
        let marked: Vec<SubscriptionId> =
            diesel::update(subscriptions::table.filter(subscriptions::id.eq_any(&ids)))
                .filter(subscriptions::status.eq(SubscriptionStatus::Active))
                .filter(subscriptions::expires_at.le(now))
                .set((
                    subscriptions::status.eq(SubscriptionStatus::Expired),
                    subscriptions::updated_at.eq(now),
                ))
                .returning(subscriptions::id)
                .get_results(conn)
                .await?;
        let mut owners: Vec<UserId> = due
            .iter()
            .filter(|d| marked.contains(&d.0))
            .map(|d| d.1)
            .collect();
        owners.sort_unstable();
        owners.dedup();
        for (id, user, email, limit, used) in due {
            if !marked.contains(&id) {
                continue;
            }
            outbox.quota(QuotaEvent {
                kind: QuotaEventKind::Expired,
                subscription_id: id.uuid(),
                user_id: user.uuid(),
                user_email: email,
                traffic_limit_bytes: limit,
                traffic_used_bytes: used,
                at: now.and_utc(),
            });
        }
        // The sessions of an account left with no subscription in force end
        // now, as at a cancellation (they stayed open until idle, ten
        // minutes later, and ended as `idle`).
        for owner in owners {
            let active: Vec<crate::db::models::Subscription> = subscriptions::table
                .filter(subscriptions::user_id.eq(owner))
                .filter(subscriptions::status.eq(SubscriptionStatus::Active))
                .select(crate::db::models::Subscription::as_select())
                .load(conn)
                .await?;
            if !active.iter().any(|s| crate::access::is_current(s, now)) {
                let owned = devices::table
                    .filter(devices::user_id.eq(owner))
                    .select(devices::id);
                crate::end_open_sessions!(conn, outbox, owned, EndReason::SubscriptionEnded, now);
            }
        }
        if !marked.is_empty() {
            // Gateways drop what they cached for these accounts.
            outbox.access(AccessChange::SubscriptionExpired, None);
        }
        Ok(marked.len())
    })
}

/// Sweeps every [`SWEEP_EVERY`] until the task is dropped.
pub fn spawn(db: Db) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The hour before which every finished hour is in the ledger.
        let mut closed_before: Option<NaiveDateTime> = None;
        loop {
            tick.tick().await;
            let at = now();
            let hour = hour_of(at);
            let hours = closed_before != Some(hour);
            let swept = sweep_with(&db, at, hours).await;
            if hours && swept.is_ok() {
                closed_before = Some(hour);
            }
            match swept {
                Ok(s) if s != Swept::default() => {
                    tracing::debug!(
                        usage.hours = s.hours,
                        usage.periods = s.periods,
                        usage.expired = s.expired,
                        "usage swept"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "usage sweep failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%F %T").expect("time")
    }

    fn row(hour: Option<&str>, up: i64, down: i64) -> HourRow {
        HourRow {
            id: SessionId::random(),
            last_seq: 7,
            bytes_up: 1_000,
            bytes_down: 2_000,
            hour_start: hour.map(at),
            hour_up: up,
            hour_down: down,
        }
    }

    #[test]
    fn an_hour_is_finished_once_the_next_one_began_and_only_if_it_gained() {
        let r = row(Some("2026-12-01 10:00:00"), 10, 20);
        assert_eq!(finished_hour(&r, at("2026-12-01 10:59:59")), None);
        let closed = finished_hour(&r, at("2026-12-01 11:00:00")).expect("closed");
        assert_eq!((closed.delta_up, closed.delta_down), (10, 20));
        assert_eq!(
            (closed.total_up, closed.total_down, closed.seq),
            (1_000, 2_000, 7)
        );
        assert_eq!(closed.hour, at("2026-12-01 10:00:00"));
        assert_eq!(
            finished_hour(
                &row(Some("2026-12-01 10:00:00"), 0, 0),
                at("2026-12-02 00:00:00")
            ),
            None
        );
        assert_eq!(
            finished_hour(&row(None, 5, 5), at("2026-12-02 00:00:00")),
            None
        );
    }

    #[test]
    fn periods_reset_at_their_boundary_however_late_the_sweep() {
        let start = at("2026-10-01 12:00:00");
        assert_eq!(period_start_at(start, 30, at("2026-10-31 11:59:59")), None);
        assert_eq!(
            period_start_at(start, 30, at("2026-10-31 12:00:00")),
            Some(at("2026-10-31 12:00:00"))
        );
        assert_eq!(
            period_start_at(start, 30, at("2026-11-05 08:00:00")),
            Some(at("2026-10-31 12:00:00")),
            "a late sweep still starts the period at its boundary"
        );
        assert_eq!(
            period_start_at(start, 30, at("2026-12-01 00:00:00")),
            Some(at("2026-11-30 12:00:00")),
            "missed periods are skipped"
        );
    }
}
