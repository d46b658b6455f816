//! A node's session history, detached before the node is deleted: its
//! sessions that ended more than [`SETTLED`] ago have their reference to
//! it set to NULL (what the foreign key's `ON DELETE SET NULL` would do)
//! one slice of the table at a time, each slice in a short transaction of
//! its own. The deletion, which holds the usage appliers' lock for its
//! whole transaction, then cascades only over what ended since; done by
//! the cascade alone, a gateway with a million sessions behind it held
//! that lock (and every usage report waiting on it) for 18.5 s.
//!
//! The table is walked once, by physical position (PostgreSQL's pages
//! through a TID range scan, SQLite's rowids), so no index on the node's
//! column is needed and no slice scans what an earlier one did. Rows
//! another transaction holds (an applier pass growing an ended session)
//! are skipped, never waited for: the deletion's cascade takes them, as
//! it takes sessions that end or move meanwhile.
//!
//! A history shorter than [`WORTH_A_WALK`] is left to the cascade.
//!
//! Until the deletion commits, a detached session reads as another
//! machine's: a report naming it is refused (403, and the sender sends it
//! again later). Sessions that ended recently are left attached, so the
//! last totals of a session that just ended, from the gateway or the
//! node's witness, still count while the walk runs.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use crate::db::models::now;
use crate::db::{Db, DbPool, Statement};
use crate::db_run;
use crate::error::AppResult;

/// Pages in one slice on PostgreSQL (8 KiB each: some 10,000 ended
/// sessions, about 0.2 s).
const PG_SLICE: i64 = 1000;

/// Rowids in one slice on SQLite.
const SQLITE_SLICE: i64 = 20_000;

/// Where the walk ends: the table's pages, or one past its last rowid.
const TABLE_END: Statement = Statement {
    pg: "SELECT pg_relation_size('sessions') / current_setting('block_size')::bigint AS n",
    sqlite: "SELECT COALESCE(MAX(rowid), 0) + 1 AS n FROM sessions",
};

/// How long ago a session must have ended to be detached before the
/// deletion: its sender's last reports are in by then.
const SETTLED: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Detaches the sessions whose `$column` is `$1` in `[$2, $3)` that ended
/// before `$4`. On PostgreSQL the range also bounds the rows updated, so
/// no plan of the join reads past the slice.
macro_rules! detach_statement {
    ($column:literal) => {
        Statement {
            pg: concat!(
                "UPDATE sessions s SET ", $column, " = NULL FROM ( \
                   SELECT ctid AS t FROM sessions \
                   WHERE ctid >= ('(' || $2 || ',0)')::tid AND ctid < ('(' || $3 || ',0)')::tid \
                     AND ", $column, " = $1 AND ended_at < $4 \
                   FOR NO KEY UPDATE SKIP LOCKED) held \
                 WHERE s.ctid = held.t \
                   AND s.ctid >= ('(' || $2 || ',0)')::tid AND s.ctid < ('(' || $3 || ',0)')::tid"
            ),
            sqlite: concat!(
                "UPDATE sessions SET ", $column, " = NULL \
                 WHERE rowid >= ?2 AND rowid < ?3 AND ", $column, " = ?1 AND ended_at < ?4"
            ),
        }
    };
}

/// Counts, up to `$3`, the sessions whose `$column` is `$1` that ended
/// before `$2` (by the index on Outline nodes; for a gateway, a scan that
/// stops at the `$3`th).
macro_rules! settled_statement {
    ($column:literal) => {
        Statement {
            pg: concat!(
                "SELECT count(*) AS n FROM (SELECT 1 FROM sessions \
                 WHERE ",
                $column,
                " = $1 AND ended_at < $2 LIMIT $3) settled"
            ),
            sqlite: concat!(
                "SELECT count(*) AS n FROM (SELECT 1 FROM sessions \
                 WHERE ",
                $column,
                " = ?1 AND ended_at < ?2 LIMIT ?3)"
            ),
        }
    };
}

/// Fewer settled sessions than this are left to the deletion's cascade
/// (a few hundred milliseconds at most): the walk reads the whole table,
/// which a short history is not worth.
const WORTH_A_WALK: i64 = 10_000;

/// Detaches the ended sessions of an Outline node.
const DETACH_OUTLINE: Statement = detach_statement!("outline_node_id");

/// Detaches the ended sessions through a gateway.
const DETACH_GATEWAY: Statement = detach_statement!("gateway_node_id");

/// Counts an Outline node's settled sessions.
const SETTLED_OUTLINE: Statement = settled_statement!("outline_node_id");

/// Counts a gateway's settled sessions.
const SETTLED_GATEWAY: Statement = settled_statement!("gateway_node_id");

/// One number read back.
#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Which reference of a session a node is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// `outline_node_id`.
    Outline,
    /// `gateway_node_id`.
    Gateway,
}

/// Sets node `id`'s reference to NULL on its sessions that ended more
/// than [`SETTLED`] ago, when there are [`WORTH_A_WALK`] of them or more
/// (see the module documentation); returns how many it changed.
pub(crate) async fn detach(db: &Db, side: Side, id: &str) -> AppResult<u64> {
    let before = now() - SETTLED;
    let (statement, settled) = match side {
        Side::Outline => (DETACH_OUTLINE, SETTLED_OUTLINE),
        Side::Gateway => (DETACH_GATEWAY, SETTLED_GATEWAY),
    };
    let history: Number = db_run!(db, |conn| settled
        .prepared(conn)
        .text(id)
        .timestamp(before)
        .bigint(WORTH_A_WALK)
        .get_result(conn)
        .await?);
    if history.n < WORTH_A_WALK {
        return Ok(0);
    }
    let end: Number = db_run!(db, |conn| TABLE_END.prepared(conn).get_result(conn).await?);
    let slice = match db.pool {
        DbPool::Pg(_) => PG_SLICE,
        DbPool::Sqlite(_) => SQLITE_SLICE,
    };
    let mut changed = 0u64;
    let mut from = 0i64;
    while from < end.n {
        let to = from.saturating_add(slice);
        let n = db_run!(db, |conn| statement
            .prepared(conn)
            .text(id)
            .bigint(from)
            .bigint(to)
            .timestamp(before)
            .execute(conn)
            .await?);
        changed += u64::try_from(n).unwrap_or(0);
        from = to;
    }
    Ok(changed)
}
