//! Token checks that arrive together share one query on PostgreSQL: the
//! hot routes (validate-device, assign-outline) ask for the facts of a
//! forwarded access token on every call (as do the device-token exchange
//! and the GraphQL sockets of devices), and one statement for a batch of
//! hashes (`token_hash = ANY($1)`) costs one round trip, bind and
//! executor start instead of one per call ([`crate::batching`]: at most
//! [`MAX_BATCH`] hashes, [`PARALLEL`] queries at once, no timer). On
//! SQLite (one connection) every check is its own query.

use super::{Facts, Verdict, query};
use crate::auth;
use crate::batching::{Batcher, Limits};
use crate::db::models::now;
use crate::db::{Db, DbPool};
use crate::error::AppResult;

/// Most hashes in one query.
pub const MAX_BATCH: usize = 128;

/// Queries in flight at once. Fewer slots make bigger batches: on two
/// cores, two in flight ran validate-device 50 % faster than six
/// (BENCHMARKS.md).
pub const PARALLEL: usize = 2;

const LIMITS: Limits = Limits {
    name: "token checker",
    parallel: PARALLEL,
    max: MAX_BATCH,
};

/// The token checker of one process, started by its first check (inside
/// the runtime that serves). Cheap to clone.
#[derive(Clone, Default)]
pub struct TokenChecks(Batcher<String, Option<Facts>>);

impl TokenChecks {
    /// Checks the device holding the opaque access `token`, as
    /// [`query::check_token`] does: in a batch with the checks queued
    /// beside it on PostgreSQL.
    pub async fn check(&self, db: &Db, token: &str) -> AppResult<Verdict> {
        if matches!(db.pool, DbPool::Sqlite(_)) || !auth::looks_like_token(token) {
            return query::check_token(db, token).await;
        }
        let facts = self
            .0
            .call(db, LIMITS, look_up, auth::hash_token(token))
            .await?;
        Ok(Verdict::of(facts, now()))
    }
}

/// One batch: the facts of each hash, in order.
async fn look_up(db: Db, hashes: Vec<String>) -> AppResult<Vec<AppResult<Option<Facts>>>> {
    let found = query::by_hashes(&db, &hashes).await?;
    Ok(hashes.iter().map(|h| Ok(found.get(h).cloned())).collect())
}
