//! Calls that arrive together, served as one batch: the session opener
//! ([`crate::node_assignment::opener`]) and the token checks
//! ([`crate::access::tokens`]). A batch takes what is queued when one of
//! `parallel` slots frees up (at most `max` calls): no timer, so a lone
//! call waits for nobody, and while every slot is busy the calls pile up
//! and the next batch grows. Each caller gets its own answer.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::Db;
use crate::error::{AppError, AppResult};

/// Calls waiting for a slot; callers wait for room beyond this.
const QUEUE: usize = 4096;

/// A call and where its answer goes.
type Job<J, T> = (J, oneshot::Sender<AppResult<T>>);

/// How a batcher runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// What it is, for its errors ("session opener").
    pub name: &'static str,
    /// Batches in flight at once.
    pub parallel: usize,
    /// Most calls in one batch.
    pub max: usize,
}

/// The batcher of one process, started by its first call (inside the
/// runtime that serves). Cheap to clone.
pub struct Batcher<J, T> {
    queue: Arc<OnceLock<mpsc::Sender<Job<J, T>>>>,
}

impl<J, T> Clone for Batcher<J, T> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<J, T> Default for Batcher<J, T> {
    fn default() -> Self {
        Batcher {
            queue: Arc::default(),
        }
    }
}

impl<J: Send + 'static, T: Send + 'static> Batcher<J, T> {
    /// Answers `job` in a batch with the calls queued beside it; the first
    /// call starts the batcher, which runs every batch as `work(db, jobs)`
    /// (one answer per job, in order; an error answers them all).
    pub async fn call<W, F>(&self, db: &Db, limits: Limits, work: W, job: J) -> AppResult<T>
    where
        W: Fn(Db, Vec<J>) -> F + Send + 'static,
        F: Future<Output = AppResult<Vec<AppResult<T>>>> + Send + 'static,
    {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(db.clone(), rx, limits, work));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send((job, reply))
            .await
            .map_err(|_| AppError::Unavailable(format!("the {} stopped", limits.name)))?;
        answer.await.map_err(|_| {
            AppError::Internal(format!("a batch of the {} was dropped", limits.name))
        })?
    }
}

/// Takes a slot, then everything queued (up to `limits.max`), and runs it
/// in a task of its own. Ends when every sender is gone.
async fn run<J, T, W, F>(db: Db, mut rx: mpsc::Receiver<Job<J, T>>, limits: Limits, work: W)
where
    J: Send + 'static,
    T: Send + 'static,
    W: Fn(Db, Vec<J>) -> F,
    F: Future<Output = AppResult<Vec<AppResult<T>>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.parallel));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < limits.max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (calls, replies): (Vec<J>, Vec<_>) = jobs.into_iter().unzip();
        let batch = work(db.clone(), calls);
        tokio::spawn(async move {
            let _slot = slot;
            match batch.await {
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
