//! Token checks that arrive together share one query on PostgreSQL: the
//! hot routes (validate-device, assign-outline) ask for the facts of a
//! forwarded access token on every call (as do the device-token exchange
//! and the GraphQL sockets of devices), and one statement for a batch of
//! hashes (`token_hash = ANY($1)`) costs one round trip, bind and
//! executor start instead of one per call. A batch takes what is
//! queued when a slot frees up (at most [`MAX_BATCH`] hashes, [`PARALLEL`]
//! queries at once): no timer, so a lone call waits for nobody. On SQLite
//! (one connection) every check is its own query.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Facts, Verdict, query};
use crate::auth;
use crate::db::models::now;
use crate::db::{Db, DbPool};
use crate::error::{AppError, AppResult};

/// Most hashes in one query.
pub const MAX_BATCH: usize = 128;

/// Queries in flight at once. Fewer slots make bigger batches: on two
/// cores, two in flight ran validate-device 50 % faster than six
/// (BENCHMARKS.md).
pub const PARALLEL: usize = 2;

/// Checks waiting for a slot; callers wait for room beyond this.
const QUEUE: usize = 4096;

type Job = (String, oneshot::Sender<AppResult<Option<Facts>>>);

/// The token checker of one process, started by its first check (inside
/// the runtime that serves). Cheap to clone.
#[derive(Clone, Default)]
pub struct TokenChecks {
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl TokenChecks {
    /// Checks the device holding the opaque access `token`, as
    /// [`query::check_token`] does: in a batch with the checks queued
    /// beside it on PostgreSQL.
    pub async fn check(&self, db: &Db, token: &str) -> AppResult<Verdict> {
        if matches!(db.pool, DbPool::Sqlite(_)) || !auth::looks_like_token(token) {
            return query::check_token(db, token).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(db.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send((auth::hash_token(token), reply))
            .await
            .map_err(|_| AppError::Unavailable("the token checker stopped".into()))?;
        let facts = answer
            .await
            .map_err(|_| AppError::Internal("the token check batch was dropped".into()))??;
        Ok(Verdict::of(facts, now()))
    }
}

/// The checker: takes a slot, then everything queued (up to
/// [`MAX_BATCH`]), and looks it up in a task of its own. Ends when every
/// sender is gone.
async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    while let Some(first) = rx.recv().await {
        // While every slot is busy, checks pile up and the next batch grows.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let db = db.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (hashes, replies): (Vec<String>, Vec<_>) = jobs.into_iter().unzip();
            match query::by_hashes(&db, &hashes).await {
                Ok(found) => {
                    for (hash, reply) in hashes.iter().zip(replies) {
                        let _ = reply.send(Ok(found.get(hash.as_str()).cloned()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
