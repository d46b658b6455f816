//! A pass of the applier: read the pending inbox rows page by page, merge
//! them, apply the plan in transactions of bounded size, delete the rows.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::inbox::{self, to_json};
use super::plan::{
    self, InboxNodeTotals, InboxTotals, InboxTotalsBefore, Merged, MergedLatest, NodeTotals,
    Stored, Totals,
};
use super::quota;
use super::statements::{APPLY_LOCK, CHARGE, GROW_SESSIONS, LEDGER, LedgerRow, READ};
use super::{Pass, subscriptions_period_days};
use crate::db::Db;
use crate::db::models::now;
use crate::db::schema::{sessions, users};
use crate::db_tx;
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::feed::QuotaEvent;
use crate::ids::{SessionId, UserId};
use crate::status::EndReason;

/// Sessions applied per transaction: row locks stay short however large a
/// pass is.
const APPLY_CHUNK: usize = 5_000;

/// An inbox row's body: a gateway's totals (`{"gateway": [...]}`, or a
/// bare JSON array as stored before counts had epochs) or a node's
/// (`{"node": [...]}`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum InboxBody {
    Gateway { gateway: InboxTotals },
    Before(InboxTotalsBefore),
    Node { node: InboxNodeTotals },
}

/// What an inbox row reports.
enum Report {
    Gateway(InboxTotals),
    Node(InboxNodeTotals),
}

impl From<InboxBody> for Report {
    /// A gateway's totals stored before counts had epochs are of epoch 0
    /// (what those gateways counted in).
    fn from(body: InboxBody) -> Report {
        match body {
            InboxBody::Gateway { gateway } => Report::Gateway(gateway),
            InboxBody::Before(t) => Report::Gateway(
                t.into_iter()
                    .map(|(id, seq, up, down)| (id, seq, up, down, 0))
                    .collect(),
            ),
            InboxBody::Node { node } => Report::Node(node),
        }
    }
}

/// Inbox rows one pass takes at most (20,000 reports of 200 totals are
/// 4,000,000 totals); the more a pass takes, the more reports of one
/// session merge.
const PASS_ROWS: usize = 20_000;

/// Applies the pending inbox rows (the oldest `PASS_ROWS`): merges them per
/// session page by page (memory follows the sessions, not the reports),
/// applies the increase in transactions of `APPLY_CHUNK` sessions, then
/// deletes the rows. An error leaves the rows for the next pass, which
/// re-applies them harmlessly. Rows for which `wanted` is true get their
/// [`RowOutcome`](super::RowOutcome) in the answer.
pub async fn apply_pending(db: &Db, wanted: impl Fn(i64) -> bool) -> AppResult<Pass> {
    let mut latest = MergedLatest::new();
    let mut ids: Vec<i64> = Vec::new();
    let mut kept: Vec<(i64, InboxTotals)> = Vec::new();
    let mut totals = 0;
    let mut after = 0i64;
    while ids.len() < PASS_ROWS {
        let page = inbox::read_page(db, after).await?;
        let Some(last) = page.last().map(|r| r.id) else {
            break;
        };
        after = last;
        for r in page {
            ids.push(r.id);
            match serde_json::from_str::<InboxBody>(&r.totals).map(Report::from) {
                Ok(Report::Gateway(t)) => {
                    totals += t.len();
                    plan::merge_gateway(
                        &mut latest,
                        t.iter().map(|&(id, seq, up, down, epoch)| {
                            (id, epoch, Totals { seq, up, down })
                        }),
                    );
                    if wanted(r.id) {
                        kept.push((r.id, t));
                    }
                }
                Ok(Report::Node(node)) => {
                    totals += node.len();
                    plan::merge_node(
                        &mut latest,
                        node.iter()
                            .map(|&(id, epoch, up, down)| (id, NodeTotals { epoch, up, down })),
                    );
                }
                // Written by `receive` or `witness`, so this cannot happen;
                // never block the inbox on one row.
                Err(e) => {
                    tracing::error!(inbox.id = r.id, error = %e, "unreadable usage inbox row dropped")
                }
            }
        }
    }
    if ids.is_empty() {
        return Ok(Pass::default());
    }
    let merged: Vec<(SessionId, Merged)> = latest.into_iter().collect();
    let mut grown: HashSet<SessionId> = HashSet::new();
    let mut ended: HashSet<SessionId> = HashSet::new();
    for chunk in merged.chunks(APPLY_CHUNK) {
        let (g, e) = apply_chunk(db, chunk).await?;
        grown.extend(g);
        ended.extend(e);
    }
    inbox::delete(db, &ids).await?;
    Ok(Pass {
        outcomes: plan::outcomes(&kept, &merged, &grown, &ended),
        ids,
        totals,
        sessions: merged.len(),
        quota_closed: ended.len(),
    })
}

/// Applies merged totals in one transaction of five statements whatever its
/// size: read the sessions with their owners, grow them, add their gains to
/// the ledger's rows for this hour, charge each account once, end the
/// sessions of accounts that just used up their allowance (and tell
/// gateways). Sessions deleted since the report are skipped. Returns the
/// sessions that grew and those that ended.
async fn apply_chunk(
    db: &Db,
    chunk: &[(SessionId, Merged)],
) -> AppResult<(Vec<SessionId>, Vec<SessionId>)> {
    let period_days = subscriptions_period_days();
    let ids_json = to_json(&chunk.iter().map(|(id, _)| id).collect::<Vec<_>>())?;
    db_tx!(db, |conn, outbox| {
        if APPLY_LOCK.on(conn).is_some() {
            APPLY_LOCK.prepared(conn).execute(conn).await?;
        }
        let ts = now();
        let mut clock = std::time::Instant::now();
        let mut lap = || {
            let ms = clock.elapsed().as_secs_f64() * 1e3;
            clock = std::time::Instant::now();
            ms
        };
        let stored: Vec<Stored> = READ.prepared(conn).text(&ids_json).load(conn).await?;
        let plan = plan::plan_chunk(&stored, chunk, ts);
        let read_ms = lap();
        if plan.grown.is_empty() {
            return Ok::<_, AppError>((Vec::new(), Vec::new()));
        }
        GROW_SESSIONS
            .prepared(conn)
            .text(to_json(&plan.grown)?)
            .timestamp(ts)
            .timestamp(plan::hour_of(ts))
            .execute(conn)
            .await?;
        let grow_ms = lap();
        if !plan.closed.is_empty() {
            let rows: Vec<LedgerRow> = plan.closed.iter().map(LedgerRow::from).collect();
            LEDGER
                .prepared(conn)
                .text(to_json(&rows)?)
                .execute(conn)
                .await?;
        }
        let ledger_ms = lap();
        let charged: Vec<plan::Charged> = if plan.charges.is_empty() {
            // Only the node's count moved: nothing to charge.
            Vec::new()
        } else {
            CHARGE
                .prepared(conn)
                .text(to_json(&plan.charges)?)
                .timestamp(ts)
                .integer(period_days)
                .load(conn)
                .await?
        };
        let charge_ms = lap();
        tracing::debug!(
            usage.sessions = plan.grown.len(),
            read_ms,
            grow_ms,
            ledger_ms,
            charge_ms,
            "usage chunk applied"
        );
        let changes = quota::quota_changes(&plan.charges, &charged, ts);
        if !changes.is_empty() {
            let users: Vec<UserId> = changes.iter().map(|(_, c)| c.user_id).collect();
            let emails: HashMap<UserId, String> = users::table
                .filter(users::id.eq_any(&users))
                .select((users::id, users::email))
                .load::<(UserId, String)>(conn)
                .await?
                .into_iter()
                .collect();
            for (kind, c) in changes {
                outbox.quota(QuotaEvent {
                    kind,
                    subscription_id: c.id.uuid(),
                    user_id: c.user_id.uuid(),
                    user_email: emails.get(&c.user_id).cloned().unwrap_or_default(),
                    traffic_limit_bytes: c.traffic_limit_bytes,
                    traffic_used_bytes: c.traffic_used_bytes,
                    at: ts.and_utc(),
                });
            }
        }
        let ending = plan::ending(&stored, &charged);
        if !ending.is_empty() {
            let ended: Vec<SessionId> =
                diesel::update(sessions::table.filter(sessions::id.eq_any(&ending)))
                    .filter(sessions::ended_at.is_null())
                    .set((
                        sessions::ended_at.eq(ts),
                        sessions::end_reason.eq(EndReason::QuotaExceeded),
                    ))
                    .returning(sessions::id)
                    .get_results(conn)
                    .await?;
            let rows = crate::session_rows!(conn, ended);
            outbox.sessions(crate::feed::session_events(
                crate::feed::SessionEventKind::Closed,
                rows,
                ts,
            ));
            // Other gateways may hold cached validations for the accounts.
            outbox.access(AccessChange::QuotaExceeded, None);
        }
        let grown: Vec<SessionId> = plan.grown.into_iter().map(|g| g.id).collect();
        Ok((grown, ending))
    })
}
