//! Group commit of assignments on PostgreSQL: calls that arrive together
//! are assigned in one transaction ([`batch::assign_all`]), so a burst of
//! new sessions costs one commit and one WAL flush per batch instead of one
//! per call ([`crate::batching`]: at most [`MAX_BATCH`] asks, [`PARALLEL`]
//! transactions at once, no timer). Each caller awaits its batch's
//! commit. On SQLite (one writer) every call is its own batch.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::Assignment;
use super::batch::{self, Ask};
use crate::batching::{Batcher, Limits};
use crate::db::schema::gateway_nodes;
use crate::db::{Db, DbPool};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::GatewayNodeId;

/// Most asks in one transaction.
pub const MAX_BATCH: usize = 64;

/// Batch transactions in flight at once. Two keep PostgreSQL's cores busy
/// while the next batch fills; with four, batches were smaller and the
/// route 14 % slower (BENCHMARKS.md).
pub const PARALLEL: usize = 2;

const LIMITS: Limits = Limits {
    name: "session opener",
    parallel: PARALLEL,
    max: MAX_BATCH,
};

/// The batcher of one process, started by its first ask (inside the
/// runtime that serves). Cheap to clone.
#[derive(Clone, Default)]
pub struct Opener(Batcher<Ask, Assignment>);

impl Opener {
    /// Assigns `ask`: in a batch with the asks queued beside it on
    /// PostgreSQL, alone on SQLite. Returns once the transaction that
    /// opened (or found) its session committed.
    pub async fn assign(&self, db: &Db, ask: Ask) -> AppResult<Assignment> {
        if matches!(db.pool, DbPool::Sqlite(_)) {
            return one(assign_with_retry(db, std::slice::from_ref(&ask)).await);
        }
        self.0
            .call(
                db,
                LIMITS,
                |db, asks| async move { assign_with_retry(&db, &asks).await },
                ask,
            )
            .await
    }
}

fn one(answers: AppResult<Vec<AppResult<Assignment>>>) -> AppResult<Assignment> {
    answers?
        .pop()
        .unwrap_or_else(|| Err(AppError::Internal("an empty batch answer".into())))
}

/// One batch, tried again once after a race with another transaction
/// (see [`AppError::is_race`]): PostgreSQL broke a deadlock by aborting it
/// (locks are taken in id order, so this is a safety net), a node it
/// chose was deleted between the read and the insert (the second try reads
/// the nodes again), or a calling gateway was deleted since its token was
/// checked (its asks are answered 401 and left out of the second try).
/// Any of them would otherwise fail every ask of the batch, other
/// gateways' too.
async fn assign_with_retry(db: &Db, asks: &[Ask]) -> AppResult<Vec<AppResult<Assignment>>> {
    match batch::assign_all(db, asks).await {
        Err(e) if e.is_race() => {
            tracing::warn!(error = %e, "an assignment batch met a concurrent change; trying it again");
            let gone = gone_gateways(db, asks).await?;
            if gone.is_empty() {
                return batch::assign_all(db, asks).await;
            }
            let kept: Vec<Ask> = asks
                .iter()
                .filter(|a| a.gateway.is_none_or(|g| !gone.contains(&g)))
                .cloned()
                .collect();
            let mut answers = if kept.is_empty() {
                Vec::new()
            } else {
                batch::assign_all(db, &kept).await?
            }
            .into_iter();
            Ok(asks
                .iter()
                .map(|a| match a.gateway {
                    Some(g) if gone.contains(&g) => Err(AppError::Unauthenticated),
                    _ => answers
                        .next()
                        .unwrap_or_else(|| Err(AppError::Internal("a short batch answer".into()))),
                })
                .collect())
        }
        other => other,
    }
}

/// The calling gateways of `asks` that no longer exist.
async fn gone_gateways(db: &Db, asks: &[Ask]) -> AppResult<HashSet<GatewayNodeId>> {
    let mut named: Vec<GatewayNodeId> = asks.iter().filter_map(|a| a.gateway).collect();
    named.sort();
    named.dedup();
    if named.is_empty() {
        return Ok(HashSet::new());
    }
    let present: Vec<GatewayNodeId> = db_run!(db, |conn| {
        gateway_nodes::table
            .filter(gateway_nodes::id.eq_any(&named))
            .select(gateway_nodes::id)
            .load(conn)
            .await?
    });
    Ok(named.into_iter().filter(|g| !present.contains(g)).collect())
}
