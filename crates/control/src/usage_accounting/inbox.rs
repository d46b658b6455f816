//! Receiving a report: checked (every session exists and belongs to the
//! reporting gateway), merged per session, and stored as one inbox row;
//! and the inbox's reads and deletes for the applier.

use diesel_async::RunQueryDsl;
use httvps_wire::usage::MAX_BATCH;
use httvps_wire::{CloseOrder, SessionTotals};

use super::Received;
use super::bounds::bound;
use super::plan::{InboxTotals, Latest, Totals, merge};
use super::statements::{INBOX_DELETE, INBOX_INSERT, INBOX_READ, InboxRow, Inserted, KNOWN, Known};
use crate::db::Db;
use crate::db::models::now;
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::{GatewayNodeId, OutlineNodeId, SessionId};

/// Inbox rows read at a time.
pub const PAGE_ROWS: i64 = 500;

/// A gateway's report as the inbox stores it (`{"gateway": [...]}`).
#[derive(serde::Serialize)]
struct GatewayRow<'a> {
    gateway: &'a InboxTotals,
}

/// Who sent a report that names sessions.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sender {
    /// A gateway (its usage report, its connection links).
    Gateway(GatewayNodeId),
    /// An Outline node (its witness report).
    Node(OutlineNodeId),
}

/// The refusal for a report that names a session not its sender's: 403,
/// unless the sender was deleted since its token was checked (the
/// deletion set its sessions' reference to NULL, which reads as another
/// machine's): then 401, what its token gets from now on.
pub(super) async fn not_the_senders(db: &Db, sender: Sender) -> AppError {
    async fn exists(db: &Db, sender: Sender) -> AppResult<bool> {
        use crate::db::schema::{gateway_nodes, outline_nodes};
        use diesel::QueryDsl;
        Ok(db_run!(db, |conn| match sender {
            Sender::Gateway(id) =>
                diesel::select(diesel::dsl::exists(gateway_nodes::table.find(id)))
                    .get_result::<bool>(conn)
                    .await?,
            Sender::Node(id) =>
                diesel::select(diesel::dsl::exists(outline_nodes::table.find(id)))
                    .get_result::<bool>(conn)
                    .await?,
        }))
    }
    match exists(db, sender).await {
        Ok(true) => AppError::Forbidden,
        Ok(false) => AppError::Unauthenticated,
        Err(e) => e,
    }
}

pub(super) fn to_json(v: &impl serde::Serialize) -> AppResult<String> {
    serde_json::to_string(v).map_err(|e| AppError::Internal(e.to_string()))
}

/// Checks a report from `gateway` and stores it in the inbox. Every
/// session must exist and belong to that gateway, or nothing is stored.
/// The answer names the reported sessions that have already ended.
pub async fn receive(
    db: &Db,
    gateway: GatewayNodeId,
    batch: &[SessionTotals],
) -> AppResult<Received> {
    if batch.len() > MAX_BATCH {
        return Err(AppError::bad(format!(
            "at most {MAX_BATCH} session totals per report"
        )));
    }
    let mut parsed = Vec::with_capacity(batch.len());
    for t in batch {
        if t.seq < 0 || t.bytes_up < 0 || t.bytes_down < 0 {
            return Err(AppError::bad("seq and byte totals must not be negative"));
        }
        let Ok(id) = t.session_id.parse::<SessionId>() else {
            return Err(AppError::bad("session_id is not a valid id"));
        };
        if t.epoch < 0 {
            return Err(AppError::bad("epoch must not be negative"));
        }
        let totals = Totals {
            seq: t.seq,
            up: t.bytes_up,
            down: t.bytes_down,
        };
        parsed.push((id, t.epoch, totals));
    }
    let mut latest = Latest::new();
    merge(&mut latest, parsed.into_iter());
    if latest.is_empty() {
        return Ok(Received::default());
    }
    let ids_json = to_json(&latest.keys().collect::<Vec<_>>())?;
    let known: Vec<Known> = db_run!(db, |conn| KNOWN
        .prepared(conn)
        .text(&ids_json)
        .load(conn)
        .await?);
    if known.len() != latest.len() {
        return Err(AppError::NotFound("session"));
    }
    if known.iter().any(|s| s.gateway_node_id != Some(gateway)) {
        // Another gateway's session (or one whose gateway was deleted) is
        // none of this one's: answered as unknown (404), which the gateway
        // takes as a refusal of those totals and drops them, reporting the
        // rest; a 403 would have it resend them, and everything with them,
        // for ever. A sender deleted since its token was checked gets 401.
        return Err(match not_the_senders(db, Sender::Gateway(gateway)).await {
            AppError::Forbidden => AppError::NotFound("session"),
            other => other,
        });
    }
    let at = now();
    for s in &known {
        let bound = bound(s.started_at, s.ended_at, at);
        if let Some((_, t)) = latest.get_mut(&s.id)
            && (t.up > bound || t.down > bound)
        {
            tracing::warn!(
                gateway.id = %gateway,
                session.id = %s.id,
                bytes_up = t.up,
                bytes_down = t.down,
                bound,
                "usage report past what the session could have moved: cut to the bound"
            );
            t.up = t.up.min(bound);
            t.down = t.down.min(bound);
        }
    }
    let close = known
        .into_iter()
        .filter_map(|s| {
            s.end_reason.map(|reason| CloseOrder {
                session_id: s.id.to_string(),
                reason: reason.as_str().to_owned(),
            })
        })
        .collect();
    let stored: InboxTotals = latest
        .into_iter()
        .map(|(id, (epoch, t))| (id, t.seq, t.up, t.down, epoch))
        .collect();
    let totals = to_json(&GatewayRow { gateway: &stored })?;
    let row: Inserted = db_run!(db, |conn| INBOX_INSERT
        .prepared(conn)
        .text(gateway.to_string())
        .text(&totals)
        .timestamp(at)
        .get_result(conn)
        .await?);
    Ok(Received {
        id: Some(row.id),
        accepted: batch.len(),
        close,
    })
}

/// Up to [`PAGE_ROWS`] inbox rows after row `after`, oldest first.
pub async fn read_page(db: &Db, after: i64) -> AppResult<Vec<InboxRow>> {
    Ok(db_run!(db, |conn| INBOX_READ
        .prepared(conn)
        .bigint(after)
        .bigint(PAGE_ROWS)
        .load(conn)
        .await?))
}

/// Deletes applied inbox rows.
pub async fn delete(db: &Db, ids: &[i64]) -> AppResult<()> {
    let ids_json = to_json(&ids)?;
    db_run!(db, |conn| INBOX_DELETE
        .prepared(conn)
        .text(&ids_json)
        .execute(conn)
        .await?);
    Ok(())
}
