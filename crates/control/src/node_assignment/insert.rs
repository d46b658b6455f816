//! The INSERT of a batch's new sessions, per backend: one prepared
//! statement over a JSON array on PostgreSQL, one row at a time on SQLite.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::Statement;
use crate::db::models::Session;
use crate::db::schema::sessions;
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
         last_activity_at, bytes_up, bytes_down, last_seq) \
         SELECT x.id, x.device_id, x.outline_node_id, x.gateway_node_id, $2, $2, 0, 0, 0 \
         FROM json_to_recordset($1::json) \
         AS x(id text, device_id text, outline_node_id text, gateway_node_id text) \
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
}

impl InsertSessions for diesel_async::AsyncPgConnection {
    async fn insert_sessions(&mut self, rows: &[Session]) -> QueryResult<Vec<Session>> {
        // Every row of a batch starts at the batch's time.
        let Some(started) = rows.first().map(|r| r.started_at) else {
            return Ok(Vec::new());
        };
        let new: Vec<NewSession> = rows
            .iter()
            .map(|r| NewSession {
                id: r.id,
                device_id: r.device_id,
                outline_node_id: r.outline_node_id,
                gateway_node_id: r.gateway_node_id,
            })
            .collect();
        let made: Vec<InsertedSession> = INSERT_SESSIONS
            .prepared(self)
            .json(&new)?
            .timestamp(started)
            .load(self)
            .await?;
        let made: std::collections::HashSet<SessionId> = made.into_iter().map(|m| m.id).collect();
        Ok(rows
            .iter()
            .filter(|r| made.contains(&r.id))
            .cloned()
            .collect())
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
