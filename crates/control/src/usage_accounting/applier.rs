//! The applier of one control-plane process: woken by each stored report,
//! it drains the inbox pass by pass, and answers the reports waiting for
//! the pass that applies them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use super::RowOutcome;
use super::apply::apply_pending;
use crate::db::Db;
use crate::error::AppResult;

/// How long an answer waits for the pass that applies its report.
pub const APPLY_WAIT: Duration = Duration::from_secs(1);

/// How often the applier looks for rows nobody told it about (stored by
/// another replica, or left by a stop).
const APPLY_TICK: Duration = Duration::from_secs(1);

/// A report waits for its pass only while fewer rows than this are
/// waiting in this process: beyond, the applier is behind and answers
/// would only queue up behind it.
const WAIT_BELOW: usize = 4;

/// The applier of one control-plane process, shared by the HTTP handlers.
#[derive(Default)]
pub struct Applier {
    kick: Notify,
    queue: Mutex<Queue>,
    applied: AtomicU64,
}

/// Rows this process stored and has not seen applied, and the answers
/// waiting for theirs.
#[derive(Default)]
struct Queue {
    stored: BTreeSet<i64>,
    waiters: HashMap<i64, oneshot::Sender<RowOutcome>>,
}

impl Applier {
    /// Wakes the applier for a stored row. While the applier keeps up, waits
    /// for the pass that applies the row (at most [`APPLY_WAIT`]) and
    /// returns what it did. When it is behind, returns `None` at once: the
    /// row is safe in the inbox and merges into a later pass.
    pub async fn submit(&self, id: i64) -> Option<RowOutcome> {
        let (tx, rx) = oneshot::channel();
        let wait = match self.queue.lock() {
            Ok(mut q) => {
                q.stored.insert(id);
                let wait = q.stored.len() <= WAIT_BELOW;
                if wait {
                    q.waiters.insert(id, tx);
                }
                wait
            }
            Err(_) => false,
        };
        self.kick.notify_one();
        if !wait {
            return None;
        }
        let got = tokio::time::timeout(APPLY_WAIT, rx).await;
        if let Ok(mut q) = self.queue.lock() {
            q.waiters.remove(&id);
        }
        got.ok().and_then(Result::ok)
    }

    /// Reports this process stored that it has not seen applied yet.
    pub fn waiting(&self) -> usize {
        self.queue.lock().map(|q| q.stored.len()).unwrap_or(0)
    }

    /// Session totals this process's applier has applied since start-up.
    pub fn applied_totals(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Runs passes until the inbox is empty (each pass tells gateways when
    /// sessions ran out of allowance). Returns the session totals applied.
    pub async fn drain(&self, db: &Db) -> AppResult<usize> {
        let mut applied = 0;
        loop {
            let pass = apply_pending(db, |id| {
                self.queue.lock().is_ok_and(|q| q.waiters.contains_key(&id))
            })
            .await?;
            if pass.ids.is_empty() {
                return Ok(applied);
            }
            applied += pass.totals;
            self.applied
                .fetch_add(pass.totals as u64, Ordering::Relaxed);
            tracing::debug!(
                usage.rows = pass.ids.len(),
                usage.totals = pass.totals,
                usage.sessions = pass.sessions,
                usage.quota_closed = pass.quota_closed,
                "usage pass applied"
            );
            if let Ok(mut q) = self.queue.lock() {
                // Passes go in id order: rows up to the last one are applied
                // (or were, by another replica).
                if let Some(last) = pass.ids.last() {
                    q.stored = q.stored.split_off(&(last + 1));
                }
                for (id, outcome) in pass.outcomes {
                    if let Some(tx) = q.waiters.remove(&id) {
                        let _ = tx.send(outcome);
                    }
                }
                // A row read just before its answer began to wait: applied,
                // but what it did is unknown; answer at once.
                for id in &pass.ids {
                    q.waiters.remove(id);
                }
            }
        }
    }

    /// The applier's loop: a pass after every stored report and every
    /// [`APPLY_TICK`]; when `stop` turns true, a last pass, then it returns.
    pub async fn run(&self, db: Db, mut stop: watch::Receiver<bool>) {
        loop {
            let stopping = *stop.borrow();
            if !stopping {
                tokio::select! {
                    _ = self.kick.notified() => {}
                    _ = tokio::time::sleep(APPLY_TICK) => {}
                    _ = stop.changed() => {}
                }
            }
            let drained = self.drain(&db).await;
            if let Err(e) = drained {
                tracing::warn!(error = %e, "applying usage failed; retrying");
                if stopping {
                    return;
                }
                tokio::time::sleep(APPLY_TICK).await;
            } else if stopping {
                return;
            }
        }
    }
}
