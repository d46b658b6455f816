//! Group commit of assignments on PostgreSQL: calls that arrive together
//! are assigned in one transaction ([`batch::assign_all`]), so a burst of
//! new sessions costs one commit and one WAL flush per batch instead of one
//! per call. A batch takes what is queued when a transaction slot frees up
//! (at most [`MAX_BATCH`] asks, [`PARALLEL`] transactions at once): no
//! timer, so a lone call waits for nobody. Each caller awaits its batch's
//! commit. On SQLite (one writer) every call is its own batch.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Assignment;
use super::batch::{self, Ask};
use crate::db::{Db, DbPool};
use crate::error::{AppError, AppResult};

/// Most asks in one transaction.
pub const MAX_BATCH: usize = 64;

/// Batch transactions in flight at once. Two keep PostgreSQL's cores busy
/// while the next batch fills; with four, batches were smaller and the
/// route 14 % slower (BENCHMARKS.md).
pub const PARALLEL: usize = 2;

/// Asks waiting for a slot; callers wait for room beyond this.
const QUEUE: usize = 4096;

type Job = (Ask, oneshot::Sender<AppResult<Assignment>>);

/// The batcher of one process, started by its first ask (inside the
/// runtime that serves). Cheap to clone.
#[derive(Clone, Default)]
pub struct Opener {
    queue: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl Opener {
    /// Assigns `ask`: in a batch with the asks queued beside it on
    /// PostgreSQL, alone on SQLite. Returns once the transaction that
    /// opened (or found) its session committed.
    pub async fn assign(&self, db: &Db, ask: Ask) -> AppResult<Assignment> {
        if matches!(db.pool, DbPool::Sqlite(_)) {
            return one(batch::assign_all(db, std::slice::from_ref(&ask)).await);
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(db.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send((ask, reply))
            .await
            .map_err(|_| AppError::Unavailable("the session opener stopped".into()))?;
        answer
            .await
            .map_err(|_| AppError::Internal("the session batch was dropped".into()))?
    }
}

fn one(answers: AppResult<Vec<AppResult<Assignment>>>) -> AppResult<Assignment> {
    answers?
        .pop()
        .unwrap_or_else(|| Err(AppError::Internal("an empty batch answer".into())))
}

/// The batcher: takes a transaction slot, then everything queued (up to
/// [`MAX_BATCH`]), and assigns it in a task of its own. Ends when every
/// sender is gone.
async fn run(db: Db, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    while let Some(first) = rx.recv().await {
        // While every slot is busy, asks pile up and the next batch grows.
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
            let (asks, replies): (Vec<Ask>, Vec<_>) = jobs.into_iter().unzip();
            let answers = assign_with_retry(&db, &asks).await;
            match answers {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
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

/// One batch, tried again once when PostgreSQL broke a deadlock by
/// aborting it (locks are taken in id order, so this is a safety net).
async fn assign_with_retry(db: &Db, asks: &[Ask]) -> AppResult<Vec<AppResult<Assignment>>> {
    match batch::assign_all(db, asks).await {
        Err(AppError::Internal(m)) if m.contains("deadlock") => {
            tracing::warn!("an assignment batch hit a deadlock; trying it again");
            batch::assign_all(db, asks).await
        }
        other => other,
    }
}
