//! The writes of a batch, per backend. On PostgreSQL one prepared statement
//! is the whole transaction ([`open_sessions`]): the `last_seen_at`
//! refresh, the new sessions and their OPENED notifications. On SQLite the
//! new sessions are inserted one row at a time, in a transaction of the
//! caller's.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::Statement;
use crate::db::models::Session;
use crate::db::schema::sessions;
use crate::events::SESSION_CHANNEL;
use crate::ids::{DeviceId, GatewayNodeId, OutlineNodeId, SessionId};

/// Inserts new sessions, skipping those whose key is already open; returns
/// the inserted ones. One statement on PostgreSQL; SQLite has no multi-row
/// INSERT ... ON CONFLICT in diesel, and its batches are of one anyway.
pub(super) trait InsertSessions {
    async fn insert_sessions(&mut self, rows: &[Session]) -> QueryResult<Vec<Session>>;
}

/// The new sessions of a batch from a JSON array, skipping keys already
/// open; one prepared statement whatever the batch's size (diesel's
/// multi-row INSERT is a new text, parsed and planned, per row count).
const INSERT_SESSIONS: Statement = Statement {
    pg: "INSERT INTO sessions (id, device_id, outline_node_id, gateway_node_id, started_at, \
         last_activity_at, bytes_up, bytes_down, last_seq, token_generation, supersedes) \
         SELECT x.id, x.device_id, x.outline_node_id, x.gateway_node_id, $2, $2, 0, 0, 0, \
         x.token_generation, x.supersedes \
         FROM json_to_recordset($1::json) \
         AS x(id text, device_id text, outline_node_id text, gateway_node_id text, \
         token_generation bigint, supersedes text) \
         ON CONFLICT DO NOTHING RETURNING id",
    sqlite: "",
};

/// A session [`INSERT_SESSIONS`] inserted.
#[derive(diesel::QueryableByName)]
struct InsertedSession {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: SessionId,
}

/// A new session as [`INSERT_SESSIONS`] reads it.
#[derive(serde::Serialize)]
struct NewSession {
    id: SessionId,
    device_id: DeviceId,
    outline_node_id: Option<OutlineNodeId>,
    gateway_node_id: Option<GatewayNodeId>,
    token_generation: i64,
    supersedes: Option<SessionId>,
}

impl From<&Session> for NewSession {
    fn from(r: &Session) -> Self {
        NewSession {
            id: r.id,
            device_id: r.device_id,
            outline_node_id: r.outline_node_id,
            gateway_node_id: r.gateway_node_id,
            token_generation: r.token_generation,
            supersedes: r.supersedes,
        }
    }
}

impl InsertSessions for diesel_async::AsyncPgConnection {
    async fn insert_sessions(&mut self, rows: &[Session]) -> QueryResult<Vec<Session>> {
        // Every row of a batch starts at the batch's time.
        let Some(started) = rows.first().map(|r| r.started_at) else {
            return Ok(Vec::new());
        };
        let new: Vec<NewSession> = rows.iter().map(NewSession::from).collect();
        let made: Vec<InsertedSession> = INSERT_SESSIONS
            .prepared(self)
            .json(&new)?
            .timestamp(started)
            .load(self)
            .await?;
        Ok(inserted(rows, made))
    }
}

impl InsertSessions for crate::db::SqliteConn {
    async fn insert_sessions(&mut self, rows: &[Session]) -> QueryResult<Vec<Session>> {
        let mut made = Vec::with_capacity(rows.len());
        for row in rows {
            let one: Option<Session> = diesel::insert_into(sessions::table)
                .values(row)
                .on_conflict_do_nothing()
                .returning(Session::as_returning())
                .get_result(self)
                .await
                .optional()?;
            made.extend(one);
        }
        Ok(made)
    }
}

/// A batch's writes on PostgreSQL in one statement, which commits on its
/// own: the `last_seen_at` refresh of the stale devices (`$3`, a JSON
/// array of ids), the new sessions (`$1`, skipping keys already open) and
/// one notification per session inserted, with its feed event (`$4` the
/// channel). One round trip instead of five (BEGIN, three statements,
/// COMMIT); the notifications are the statement's, so they go out exactly
/// when its rows commit. The foreign-key checks run at the statement's
/// end, after the refresh locked the device rows.
const OPEN_SESSIONS: Statement = Statement {
    pg: "WITH new AS MATERIALIZED ( \
           SELECT * FROM json_to_recordset($1::json) \
           AS x(id text, device_id text, outline_node_id text, gateway_node_id text, \
           token_generation bigint, supersedes text, feed text)), \
         seen AS ( \
           UPDATE devices SET last_seen_at = $2 \
           WHERE id = ANY (ARRAY(SELECT json_array_elements_text($3::json)))), \
         made AS ( \
           INSERT INTO sessions (id, device_id, outline_node_id, gateway_node_id, started_at, \
           last_activity_at, bytes_up, bytes_down, last_seq, token_generation, supersedes) \
           SELECT id, device_id, outline_node_id, gateway_node_id, $2, $2, 0, 0, 0, \
           token_generation, supersedes FROM new \
           ON CONFLICT DO NOTHING RETURNING id) \
         SELECT made.id, \
           CASE WHEN new.feed IS NOT NULL THEN pg_notify($4, new.feed)::text END AS told \
         FROM made JOIN new USING (id)",
    sqlite: "",
};

/// A new session with the feed event to publish if it is inserted.
#[derive(serde::Serialize)]
struct NewWithFeed<'a> {
    #[serde(flatten)]
    session: NewSession,
    feed: Option<&'a str>,
}

/// Runs a batch's writes on PostgreSQL as one statement (see
/// [`OPEN_SESSIONS`]): refreshes `stale`, inserts `rows` (a key already
/// open is skipped), publishes each inserted row's event in `feed` (by
/// session id). Returns
/// the rows inserted.
pub(super) async fn open_sessions(
    conn: &mut diesel_async::AsyncPgConnection,
    rows: &[Session],
    stale: &[DeviceId],
    at: chrono::NaiveDateTime,
    feed: &HashMap<SessionId, String>,
) -> QueryResult<Vec<Session>> {
    let new: Vec<NewWithFeed<'_>> = rows
        .iter()
        .map(|r| NewWithFeed {
            session: NewSession::from(r),
            feed: feed.get(&r.id).map(String::as_str),
        })
        .collect();
    let made: Vec<InsertedSession> = OPEN_SESSIONS
        .prepared(conn)
        .json(&new)?
        .timestamp(at)
        .json(&stale)?
        .text(SESSION_CHANNEL)
        .load(conn)
        .await?;
    Ok(inserted(rows, made))
}

/// The rows of `rows` that a statement reported as `made`, in order.
fn inserted(rows: &[Session], made: Vec<InsertedSession>) -> Vec<Session> {
    let made: HashSet<SessionId> = made.into_iter().map(|m| m.id).collect();
    rows.iter()
        .filter(|r| made.contains(&r.id))
        .cloned()
        .collect()
}
