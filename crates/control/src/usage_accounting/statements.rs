//! The SQL of the usage ledger, written once per dialect and chosen by the
//! connection at hand ([`Statement::text`]). Sets of rows travel as one
//! JSON parameter, so each statement is one round trip whatever its size.

use crate::current_subscription_sql;
use crate::db::Statement;
use crate::ids::{GatewayNodeId, OutlineNodeId, SessionId};
use crate::status::EndReason;

use super::plan::ClosedHour;

pub use crate::db::{APPLY_LOCK, APPLY_LOCK_KEY};

/// The reported sessions as stored, for the check on receipt (a gateway's
/// report or a node's). `= ANY(ARRAY(...))`
/// makes one index scan over all the keys; `IN (SELECT ...)` hashes them and
/// probes the index once per key.
pub const KNOWN: Statement = Statement {
    pg: "SELECT id, gateway_node_id, outline_node_id, end_reason, started_at, ended_at FROM sessions \
         WHERE id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))",
    sqlite: "SELECT id, gateway_node_id, outline_node_id, end_reason, started_at, ended_at FROM sessions \
             WHERE id IN (SELECT value FROM json_each(?1))",
};

/// Stores a report; returns its row id.
pub const INBOX_INSERT: Statement = Statement {
    pg: "INSERT INTO usage_inbox (gateway_node_id, totals, received_at) \
         VALUES ($1, $2, $3) RETURNING id",
    sqlite: "INSERT INTO usage_inbox (gateway_node_id, totals, received_at) \
             VALUES (?1, ?2, ?3) RETURNING id",
};

/// A page of the inbox after a row id.
pub const INBOX_READ: Statement = Statement {
    pg: "SELECT id, totals FROM usage_inbox WHERE id > $1 ORDER BY id LIMIT $2",
    sqlite: "SELECT id, totals FROM usage_inbox WHERE id > ?1 ORDER BY id LIMIT ?2",
};

/// Deletes applied inbox rows.
pub const INBOX_DELETE: Statement = Statement {
    pg: "DELETE FROM usage_inbox WHERE id IN \
         (SELECT CAST(json_array_elements_text($1::json) AS BIGINT))",
    sqlite: "DELETE FROM usage_inbox WHERE id IN (SELECT value FROM json_each(?1))",
};

/// Reads the sessions about to grow with their owners and their quota
/// grants' limits (the node witness's cap). A session with no grant whose
/// owner's subscription is limited gets a cap of 0: the gateway let
/// nothing through on a grant, so the node's count goes no further than
/// the gateway's own (the subquery runs only where the grant is missing).
/// Only the applier writes byte totals, and appliers take turns, so no
/// row lock is needed.
pub const READ: Statement = Statement {
    pg: "SELECT s.id, d.user_id, s.bytes_up, s.bytes_down, s.last_seq, s.end_reason, \
         s.hour_start, s.hour_up, s.hour_down, s.witness_epoch, s.witness_base_up, \
         s.witness_base_down, s.witness_up, s.witness_down, s.gateway_epoch, \
         s.gateway_base_up, s.gateway_base_down, s.started_at, s.ended_at, \
         COALESCE(g.granted, (SELECT 0::bigint FROM subscriptions sub \
           WHERE sub.user_id = d.user_id AND sub.status = 'active' \
           AND sub.traffic_limit_bytes IS NOT NULL LIMIT 1)) AS witness_cap \
         FROM sessions s JOIN devices d ON d.id = s.device_id \
         LEFT JOIN quota_grants g ON g.session_id = s.id \
         WHERE s.id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))",
    sqlite: "SELECT s.id, d.user_id, s.bytes_up, s.bytes_down, s.last_seq, \
             s.end_reason, s.hour_start, s.hour_up, s.hour_down, s.witness_epoch, \
             s.witness_base_up, s.witness_base_down, s.witness_up, s.witness_down, \
             s.gateway_epoch, s.gateway_base_up, s.gateway_base_down, s.started_at, s.ended_at, \
             COALESCE(g.granted, (SELECT 0 FROM subscriptions sub \
               WHERE sub.user_id = d.user_id AND sub.status = 'active' \
               AND sub.traffic_limit_bytes IS NOT NULL LIMIT 1)) AS witness_cap \
             FROM sessions s JOIN devices d ON d.id = s.device_id \
             LEFT JOIN quota_grants g ON g.session_id = s.id \
             WHERE s.id IN (SELECT value FROM json_each(?1))",
};

/// Grows the sessions, their current hour and the node's and gateway's
/// counts (the third parameter is the hour's start).
pub const GROW_SESSIONS: Statement = Statement {
    pg: "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
         last_seq = x.seq, last_activity_at = $2, hour_start = $3, hour_up = x.hour_up, \
         hour_down = x.hour_down, witness_epoch = x.w_epoch, witness_base_up = x.w_base_up, \
         witness_base_down = x.w_base_down, witness_up = x.w_up, witness_down = x.w_down, \
         gateway_epoch = x.g_epoch, gateway_base_up = x.g_base_up, \
         gateway_base_down = x.g_base_down \
         FROM json_to_recordset($1::json) \
         AS x(id text, up bigint, down bigint, seq bigint, hour_up bigint, hour_down bigint, \
         w_epoch bigint, w_base_up bigint, w_base_down bigint, w_up bigint, w_down bigint, \
         g_epoch bigint, g_base_up bigint, g_base_down bigint) \
         WHERE sessions.id = x.id",
    sqlite: "UPDATE sessions SET bytes_up = x.up, bytes_down = x.down, \
             last_seq = x.seq, last_activity_at = ?2, hour_start = ?3, hour_up = x.hour_up, \
             hour_down = x.hour_down, witness_epoch = x.w_epoch, witness_base_up = x.w_base_up, \
             witness_base_down = x.w_base_down, witness_up = x.w_up, witness_down = x.w_down, \
             gateway_epoch = x.g_epoch, gateway_base_up = x.g_base_up, \
             gateway_base_down = x.g_base_down \
             FROM (SELECT json_extract(value, '$.id') AS id, \
             json_extract(value, '$.up') AS up, json_extract(value, '$.down') AS down, \
             json_extract(value, '$.seq') AS seq, json_extract(value, '$.hour_up') AS hour_up, \
             json_extract(value, '$.hour_down') AS hour_down, \
             json_extract(value, '$.w_epoch') AS w_epoch, \
             json_extract(value, '$.w_base_up') AS w_base_up, \
             json_extract(value, '$.w_base_down') AS w_base_down, \
             json_extract(value, '$.w_up') AS w_up, json_extract(value, '$.w_down') AS w_down, \
             json_extract(value, '$.g_epoch') AS g_epoch, \
             json_extract(value, '$.g_base_up') AS g_base_up, \
             json_extract(value, '$.g_base_down') AS g_base_down \
             FROM json_each(?1)) AS x \
             WHERE sessions.id = x.id",
};

/// Moves closed hours to the ledger (adding to a row already there).
pub const LEDGER: Statement = Statement {
    pg: "INSERT INTO usage_ledger \
         (id, session_id, seq, total_up, total_down, delta_up, delta_down, recorded_at) \
         SELECT x.id, x.session_id, x.seq, x.total_up, x.total_down, x.delta_up, x.delta_down, \
         x.recorded_at FROM json_to_recordset($1::json) AS x(id text, session_id text, seq bigint, \
         total_up bigint, total_down bigint, delta_up bigint, delta_down bigint, recorded_at timestamp) \
         ON CONFLICT (session_id, recorded_at) DO UPDATE SET \
         seq = GREATEST(usage_ledger.seq, excluded.seq), \
         total_up = GREATEST(usage_ledger.total_up, excluded.total_up), \
         total_down = GREATEST(usage_ledger.total_down, excluded.total_down), \
         delta_up = usage_ledger.delta_up + excluded.delta_up, \
         delta_down = usage_ledger.delta_down + excluded.delta_down",
    sqlite: "INSERT INTO usage_ledger \
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
             delta_down = usage_ledger.delta_down + excluded.delta_down",
};

/// Charges each account's *current* subscription once (the access rule's
/// predicate: a lapsed or not yet started one is not charged), saturating
/// at the largest BIGINT, starting a new period first when a monthly
/// allowance is due to reset; returns the new totals and limits.
pub const CHARGE: Statement = Statement {
    pg: concat!(
        "UPDATE subscriptions SET \
         traffic_used_bytes = CASE \
           WHEN p.reset_period = 'monthly' AND subscriptions.period_start + make_interval(days => $3) <= $2 THEN x.delta \
           WHEN subscriptions.traffic_used_bytes > 9223372036854775807 - x.delta THEN 9223372036854775807 \
           ELSE subscriptions.traffic_used_bytes + x.delta END, \
         period_start = CASE \
           WHEN p.reset_period = 'monthly' AND subscriptions.period_start + make_interval(days => $3) <= $2 THEN $2 \
           ELSE subscriptions.period_start END, \
         updated_at = $2 \
         FROM json_to_recordset($1::json) AS x(user_id text, delta bigint), plans p \
         WHERE subscriptions.user_id = x.user_id AND ",
        current_subscription_sql!("subscriptions", "$2"),
        " AND p.id = subscriptions.plan_id \
         RETURNING subscriptions.id, subscriptions.user_id, subscriptions.traffic_used_bytes, subscriptions.traffic_limit_bytes, subscriptions.period_start"
    ),
    sqlite: concat!(
        "UPDATE subscriptions SET \
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
         WHERE subscriptions.user_id = x.user_id AND ",
        current_subscription_sql!("subscriptions", "?2"),
        " AND p.id = subscriptions.plan_id \
         RETURNING id, user_id, traffic_used_bytes, traffic_limit_bytes, period_start"
    ),
};

/// A reported session as stored, for the check on receipt.
#[derive(diesel::QueryableByName)]
pub struct Known {
    /// The session.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: SessionId,
    /// Its gateway.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub gateway_node_id: Option<GatewayNodeId>,
    /// Its node.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub outline_node_id: Option<OutlineNodeId>,
    /// Why it ended, if it has.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub end_reason: Option<EndReason>,
    /// When it started.
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub started_at: chrono::NaiveDateTime,
    /// When it ended, if it has.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    pub ended_at: Option<chrono::NaiveDateTime>,
}

/// An inbox row.
#[derive(diesel::QueryableByName)]
pub struct InboxRow {
    /// Its id (ascending with arrival).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// The report's totals, as JSON.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub totals: String,
}

/// The id of a stored report.
#[derive(diesel::QueryableByName)]
pub struct Inserted {
    /// The inbox row.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
}

/// A closed hour as [`LEDGER`] reads it.
#[derive(serde::Serialize)]
pub struct LedgerRow {
    id: String,
    session_id: SessionId,
    seq: i64,
    total_up: i64,
    total_down: i64,
    delta_up: i64,
    delta_down: i64,
    /// The hour's start, written as diesel writes timestamps (SQLite
    /// compares them as text).
    recorded_at: String,
}

impl From<&ClosedHour> for LedgerRow {
    fn from(h: &ClosedHour) -> Self {
        LedgerRow {
            id: crate::db::models::new_id(),
            session_id: h.session_id,
            seq: h.seq,
            total_up: h.total_up,
            total_down: h.total_down,
            delta_up: h.delta_up,
            delta_down: h.delta_down,
            recorded_at: h.hour.format("%F %T%.f").to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_takes_the_named_key_and_the_charge_only_the_current_subscription() {
        assert_eq!(APPLY_LOCK_KEY, 0x0075_7361_6765);
        assert!(APPLY_LOCK.pg.contains(&APPLY_LOCK_KEY.to_string()));
        assert!(APPLY_LOCK.sqlite.is_empty());
        for (sql, at) in [(CHARGE.pg, "$2"), (CHARGE.sqlite, "?2")] {
            let predicate = format!(
                "subscriptions.status = 'active' AND subscriptions.starts_at <= {at} AND {at} < subscriptions.expires_at"
            );
            assert!(sql.contains(&predicate), "{sql}");
        }
    }
}
