//! Quota grants, stored: a gateway asks for a session's next slice (see
//! [`grants`](super::grants) for the sizing). The subscription's row is
//! locked for the transaction (PostgreSQL; SQLite has one writer), so two
//! gateways asking at once never both get the last bytes.

use chrono::NaiveDateTime;
use diesel::OptionalExtension;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel_async::RunQueryDsl;
use httvps_wire::Reason;
use httvps_wire::grant::{GrantRequest, GrantResponse};

use super::grants::{self, Ask, GRANT_TTL, KEPT_AFTER_EXPIRY, UNLIMITED_TTL};
use crate::access;
use crate::db::models::now;
use crate::db::{Db, Statement};
use crate::error::{AppError, AppResult};
use crate::ids::{DeviceId, GatewayNodeId, SessionId, SubscriptionId};
use crate::{db_run, db_tx};

/// The session a grant is asked for. Its byte totals are added saturating
/// at `i64::MAX`, as the usage statements store them (two totals near the
/// bound overflowed the sum: "bigint out of range", a 500).
#[derive(diesel::QueryableByName)]
struct SessionRow {
    #[diesel(sql_type = Text)]
    device_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    gateway_node_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    end_reason: Option<String>,
    #[diesel(sql_type = BigInt)]
    recorded: i64,
    /// Its grant's gateway count at the last ask, if it has a grant.
    #[diesel(sql_type = Nullable<BigInt>)]
    gateway_used: Option<i64>,
    /// Its grant's ledger offset, if it has a grant.
    #[diesel(sql_type = Nullable<BigInt>)]
    ledger_offset: Option<i64>,
    /// Its grant's limit in the ledger's terms, if it has a grant.
    #[diesel(sql_type = Nullable<BigInt>)]
    granted: Option<i64>,
    /// When its grant ends, if it has one.
    #[diesel(sql_type = Nullable<Timestamp>)]
    valid_until: Option<NaiveDateTime>,
    /// Until when its grant's offset is in doubt (see
    /// [`grants::offset_at`]).
    #[diesel(sql_type = Nullable<Timestamp>)]
    doubt_until: Option<NaiveDateTime>,
    /// What the ledger had recorded when the gateway's count last began
    /// afresh.
    #[diesel(sql_type = BigInt)]
    gateway_base: i64,
    /// The node's count before its latest epoch, if it counted anything.
    #[diesel(sql_type = Nullable<BigInt>)]
    node_base: Option<i64>,
}

impl SessionRow {
    /// Its grant as its gateway last asked for it (see
    /// [`grants::ledger_offset`]).
    fn prev(&self) -> Option<grants::Prev> {
        let ((used, offset), granted) = self
            .gateway_used
            .zip(self.ledger_offset)
            .zip(self.granted)?;
        Some(grants::Prev {
            used,
            offset,
            granted,
        })
    }

    /// What its grant, while it lives at `now`, still lets its gateway move
    /// past `used` (its limit in the gateway's terms less `used`); nothing
    /// once the gateway counts afresh (`afresh`, or its count went back:
    /// it restarted, and the grant it spent from is gone with it).
    fn room(&self, used: i64, afresh: bool, now: NaiveDateTime) -> i64 {
        if afresh || self.gateway_used.is_some_and(|prev| used < prev) {
            return 0;
        }
        match (self.granted, self.ledger_offset, self.valid_until) {
            (Some(granted), Some(offset), Some(until)) if until > now => {
                granted.saturating_sub(offset).saturating_sub(used).max(0)
            }
            _ => 0,
        }
    }
}

/// Session `s`'s bytes both ways as `recorded`, saturating at the largest
/// BIGINT (the usage statements store each total up to it).
macro_rules! recorded {
    () => {
        "CASE WHEN s.bytes_up > 9223372036854775807 - s.bytes_down \
         THEN 9223372036854775807 ELSE s.bytes_up + s.bytes_down END AS recorded"
    };
}

/// The bases of the session's counts (see [`grants::offset_at`]), both
/// ways, saturating as `recorded!` does; the node's is NULL when it has
/// counted nothing of the session.
macro_rules! bases {
    () => {
        "CASE WHEN s.gateway_base_up > 9223372036854775807 - s.gateway_base_down \
         THEN 9223372036854775807 ELSE s.gateway_base_up + s.gateway_base_down END \
         AS gateway_base, CASE WHEN s.witness_up = 0 AND s.witness_down = 0 THEN NULL \
         WHEN s.witness_base_up > 9223372036854775807 - s.witness_base_down \
         THEN 9223372036854775807 ELSE s.witness_base_up + s.witness_base_down END \
         AS node_base"
    };
}

/// The session, with its grant's bookkeeping if it has a grant.
const SESSION: Statement = Statement {
    pg: concat!(
        "SELECT device_id, gateway_node_id, end_reason, ",
        recorded!(),
        ", ",
        bases!(),
        ", g.gateway_used, g.ledger_offset, g.granted, g.valid_until, g.doubt_until \
         FROM sessions s LEFT JOIN quota_grants g ON g.session_id = s.id WHERE s.id = $1"
    ),
    sqlite: concat!(
        "SELECT device_id, gateway_node_id, end_reason, ",
        recorded!(),
        ", ",
        bases!(),
        ", g.gateway_used, g.ledger_offset, g.granted, g.valid_until, g.doubt_until \
         FROM sessions s LEFT JOIN quota_grants g ON g.session_id = s.id WHERE s.id = ?1"
    ),
};

/// The subscription's allowance, read under its row lock.
#[derive(diesel::QueryableByName)]
struct AllowanceRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    traffic_limit_bytes: Option<i64>,
    #[diesel(sql_type = BigInt)]
    traffic_used_bytes: i64,
    #[diesel(sql_type = Timestamp)]
    period_start: NaiveDateTime,
    #[diesel(sql_type = Timestamp)]
    expires_at: NaiveDateTime,
    /// Open sessions through gateways of the owner's devices.
    #[diesel(sql_type = BigInt)]
    open_sessions: i64,
    /// The owner's devices that may open one.
    #[diesel(sql_type = BigInt)]
    devices: i64,
}

impl AllowanceRow {
    /// The sessions that may share what is left (see
    /// [`grants::left_beyond`]): those open, or one per device that may
    /// open one, whichever is more (a device whose session opens after
    /// this answer takes from the same remainder).
    fn sharers(&self) -> i64 {
        self.open_sessions.max(self.devices)
    }
}

/// The owner's open sessions through gateways, and devices that may
/// connect.
macro_rules! sharers {
    () => {
        "(SELECT count(*) FROM sessions s JOIN devices d ON d.id = s.device_id \
         WHERE d.user_id = subscriptions.user_id AND s.ended_at IS NULL \
         AND s.gateway_node_id IS NOT NULL) AS open_sessions, \
         (SELECT count(*) FROM devices d WHERE d.user_id = subscriptions.user_id \
         AND d.status = 'active' AND NOT d.over_limit) AS devices"
    };
}

const LOCK_SUBSCRIPTION: Statement = Statement {
    pg: concat!(
        "SELECT traffic_limit_bytes, traffic_used_bytes, period_start, expires_at, ",
        sharers!(),
        " FROM subscriptions WHERE id = $1 FOR UPDATE"
    ),
    sqlite: concat!(
        "SELECT traffic_limit_bytes, traffic_used_bytes, period_start, expires_at, ",
        sharers!(),
        " FROM subscriptions WHERE id = ?1"
    ),
};

/// What the live grants of other sessions of a subscription hold back.
#[derive(diesel::QueryableByName)]
struct HeldRow {
    #[diesel(sql_type = BigInt)]
    granted: i64,
    #[diesel(sql_type = BigInt)]
    recorded: i64,
}

const OTHERS: Statement = Statement {
    pg: concat!(
        "SELECT g.granted, ",
        recorded!(),
        " FROM quota_grants g JOIN sessions s ON s.id = g.session_id \
         WHERE g.subscription_id = $1 AND g.session_id <> $2 AND g.valid_until > $3"
    ),
    sqlite: concat!(
        "SELECT g.granted, ",
        recorded!(),
        " FROM quota_grants g JOIN sessions s ON s.id = g.session_id \
         WHERE g.subscription_id = ?1 AND g.session_id <> ?2 AND g.valid_until > ?3"
    ),
};

/// Stores the session's grant: its limit in the ledger's terms, the
/// gateway's count, the offset between the two and until when that is in
/// doubt (see [`grants::offset_at`]).
const UPSERT: Statement = Statement {
    pg: "INSERT INTO quota_grants (session_id, subscription_id, granted, valid_until, \
         gateway_used, ledger_offset, doubt_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (session_id) DO UPDATE SET \
         subscription_id = excluded.subscription_id, granted = excluded.granted, \
         valid_until = excluded.valid_until, gateway_used = excluded.gateway_used, \
         ledger_offset = excluded.ledger_offset, doubt_until = excluded.doubt_until",
    sqlite: "INSERT INTO quota_grants (session_id, subscription_id, granted, valid_until, \
             gateway_used, ledger_offset, doubt_until) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (session_id) DO UPDATE SET \
             subscription_id = excluded.subscription_id, granted = excluded.granted, \
             valid_until = excluded.valid_until, gateway_used = excluded.gateway_used, \
             ledger_offset = excluded.ledger_offset, doubt_until = excluded.doubt_until",
};

/// A released grant keeps holding the session's unreported bytes until it
/// expires: its limit becomes what the gateway counted (in the ledger's
/// terms, saturating), or what the ledger recorded if more. Parameters:
/// the session, the gateway's count, the recorded bytes.
const RELEASE: Statement = Statement {
    pg: "UPDATE quota_grants SET granted = LEAST(granted, GREATEST(CASE \
         WHEN ledger_offset > 9223372036854775807 - $2 THEN 9223372036854775807 \
         ELSE ledger_offset + $2 END, $3)) WHERE session_id = $1",
    sqlite: "UPDATE quota_grants SET granted = MIN(granted, MAX(CASE \
             WHEN ledger_offset > 9223372036854775807 - ?2 THEN 9223372036854775807 \
             ELSE ledger_offset + ?2 END, ?3)) WHERE session_id = ?1",
};

/// Deletes the subscription's grants that expired before the second
/// parameter (now less [`KEPT_AFTER_EXPIRY`]).
const PRUNE: Statement = Statement {
    pg: "DELETE FROM quota_grants WHERE subscription_id = $1 AND valid_until <= $2",
    sqlite: "DELETE FROM quota_grants WHERE subscription_id = ?1 AND valid_until <= ?2",
};

/// An unlimited session has no grant: a limited one left from before the
/// plan changed would cap the node witness's count of it.
const FORGET: Statement = Statement {
    pg: "DELETE FROM quota_grants WHERE session_id = $1",
    sqlite: "DELETE FROM quota_grants WHERE session_id = ?1",
};

/// Milliseconds from `now` to `until` (never negative).
fn millis(now: NaiveDateTime, until: NaiveDateTime) -> i64 {
    (until - now).num_milliseconds().max(0)
}

/// Nothing more for the session, for `reason`.
fn refused(session: SessionId, req: &GrantRequest, reason: Option<Reason>) -> GrantResponse {
    GrantResponse {
        session_id: session.to_string(),
        limit: Some(req.used),
        valid_ms: 0,
        reason,
        left: None,
        ended: false,
    }
}

/// Answers a grant request of `gateway`: the session must be its own.
pub async fn grant(
    db: &Db,
    gateway: GatewayNodeId,
    req: &GrantRequest,
) -> AppResult<GrantResponse> {
    if req.used < 0 || req.want < 0 {
        return Err(AppError::bad("used and want must not be negative"));
    }
    let Ok(session) = req.session_id.parse::<SessionId>() else {
        return Err(AppError::bad("session_id is not a valid id"));
    };
    let sid = session.to_string();
    let row: Option<SessionRow> = db_run!(db, |conn| SESSION
        .prepared(conn)
        .text(&sid)
        .get_result(conn)
        .await
        .map(Some)
        .or_else(|e| match e {
            diesel::result::Error::NotFound => Ok(None),
            e => Err(e),
        }))?;
    let Some(row) = row else {
        return Err(AppError::NotFound("session"));
    };
    if row.gateway_node_id.as_deref() != Some(gateway.to_string().as_str()) {
        // Another gateway's session is none of this one's business (404);
        // a gateway deleted since its token was checked gets 401.
        return Err(
            match super::inbox::not_the_senders(db, super::inbox::Sender::Gateway(gateway)).await {
                AppError::Forbidden => AppError::NotFound("session"),
                other => other,
            },
        );
    }
    if req.release {
        db_run!(db, |conn| RELEASE
            .prepared(conn)
            .text(&sid)
            .bigint(req.used)
            .bigint(row.recorded)
            .execute(conn)
            .await)?;
        return Ok(refused(session, req, None));
    }
    let device: DeviceId = row
        .device_id
        .parse()
        .map_err(|_| AppError::Internal("stored device id".into()))?;
    let verdict = access::check_device(db, device).await?;
    // An ended session says so whatever else refuses it (a revoked device,
    // a disabled account, no subscription): the reason is the device's. A
    // spent allowance is not an ended session: gateways keep their answers
    // for the device (no re-check per tunnel), and a session closed for it
    // goes on once the allowance grows.
    if let Some(reason) = verdict.reason {
        let ended = row
            .end_reason
            .as_deref()
            .is_some_and(|r| r != Reason::QuotaExceeded.as_str());
        return Ok(GrantResponse {
            ended,
            ..refused(session, req, Some(reason))
        });
    }
    if row.end_reason.is_some() {
        // Gateways before `ended` read the refusal alone.
        return Ok(GrantResponse {
            ended: true,
            ..refused(session, req, Some(Reason::QuotaExceeded))
        });
    }
    let Some(sub) = verdict.subscription else {
        return Ok(refused(session, req, Some(Reason::NoSubscription)));
    };
    sized(db, sub.id, &sid, req, row.recorded).await
}

/// Sizes and stores the session's grant under the subscription's lock
/// (`recorded`: the session's bytes as first read, used only if the
/// session is gone by the time they are read again under the lock).
async fn sized(
    db: &Db,
    sub: SubscriptionId,
    sid: &str,
    req: &GrantRequest,
    recorded: i64,
) -> AppResult<GrantResponse> {
    let sub_id = sub.to_string();
    let period = chrono::Duration::days(crate::subscriptions::PERIOD_DAYS);
    db_tx!(db, |conn, _| {
        let ts = now();
        let a: AllowanceRow = LOCK_SUBSCRIPTION
            .prepared(conn)
            .text(&sub_id)
            .get_result(conn)
            .await?;
        let Some(allowance) = a.traffic_limit_bytes else {
            FORGET.prepared(conn).text(sid).execute(conn).await?;
            let until = grants::valid_until(ts, UNLIMITED_TTL, a.expires_at, a.expires_at);
            return Ok::<_, AppError>(GrantResponse {
                session_id: sid.to_owned(),
                limit: None,
                valid_ms: millis(ts, until),
                reason: None,
                left: None,
                ended: false,
            });
        };
        PRUNE
            .prepared(conn)
            .text(&sub_id)
            .timestamp(ts - KEPT_AFTER_EXPIRY)
            .execute(conn)
            .await?;
        // The session's bytes read again under the lock: a usage report
        // applied since the first read adds to the session and to the
        // subscription's charge in one transaction, and a charge read
        // after it beside bytes read before it would count the report
        // twice (refusing what the allowance still holds). Here both see
        // the same reports: one that committed before the lock, or none
        // that waits for it.
        let again: Option<SessionRow> = SESSION
            .prepared(conn)
            .text(sid)
            .get_result(conn)
            .await
            .optional()?;
        let recorded = again.as_ref().map_or(recorded, |r| r.recorded);
        let prev = again.as_ref().and_then(SessionRow::prev);
        let kept = again
            .as_ref()
            .map_or(0, |r| r.room(req.used, req.afresh, ts));
        let others: Vec<HeldRow> = OTHERS
            .prepared(conn)
            .text(&sub_id)
            .text(sid)
            .timestamp(ts)
            .load(conn)
            .await?;
        let others = others
            .iter()
            .map(|h| grants::held(h.granted, h.recorded))
            .fold(0i64, i64::saturating_add);
        // Sized in the ledger's terms: the gateway's count plus the
        // offset is what it may have let through, comparable with what
        // the ledger recorded (a count started afresh after a restart is
        // not: the ledger leads it).
        let (offset, doubt_until) = grants::offset_at(
            prev,
            again.as_ref().and_then(|r| r.doubt_until),
            req.used,
            recorded,
            req.afresh,
            again.as_ref().map_or(0, |r| r.gateway_base),
            again.as_ref().and_then(|r| r.node_base),
            ts,
        );
        let ask = Ask {
            allowance,
            charged: a.traffic_used_bytes,
            others,
            used: req.used.saturating_add(offset),
            recorded,
            want: req.want,
            kept,
        };
        let granted = grants::limit(ask);
        let limit = granted.saturating_sub(offset).max(req.used);
        let until = grants::valid_until(ts, GRANT_TTL, a.expires_at, a.period_start + period);
        UPSERT
            .prepared(conn)
            .text(sid)
            .text(&sub_id)
            .bigint(offset.saturating_add(limit))
            .timestamp(until)
            .bigint(req.used)
            .bigint(offset)
            .opt_timestamp(doubt_until)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(GrantResponse {
            session_id: sid.to_owned(),
            limit: Some(limit),
            valid_ms: if limit > req.used {
                millis(ts, until)
            } else {
                0
            },
            reason: (limit <= req.used).then_some(Reason::QuotaExceeded),
            left: Some(grants::left_beyond(ask, granted, a.sharers())),
            ended: false,
        })
    })
}

#[cfg(test)]
#[path = "grant_store_tests.rs"]
mod tests;
