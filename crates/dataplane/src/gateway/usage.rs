//! Usage reporting: every few seconds, the cumulative totals of sessions
//! that moved bytes, spooled first, then sent in chunks; the answer's close
//! orders are carried out.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use httvps_wire::SessionTotals;
use httvps_wire::usage::UsageReport;

use super::Gateway;
use super::sessions::Counted;
use crate::backend::BackendError;

/// Session totals per report: well under the control plane's body limit.
const REPORT_CHUNK: usize = 200;

/// The sequence numbers of reports.
#[derive(Debug)]
pub(crate) struct Reports {
    seq: AtomicI64,
    /// Failed reports, said once per run.
    failing: crate::failing::SharedFailing,
}

impl Reports {
    /// Sequence numbers from the wall clock, so a restarted gateway's
    /// reports sort after its earlier ones.
    pub fn new() -> Self {
        Reports {
            seq: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
            failing: Default::default(),
        }
    }
}

/// One session's totals as reported (saturating at the wire's i64).
fn totals((id, up, down, epoch): &Counted, seq: i64) -> SessionTotals {
    SessionTotals {
        session_id: id.clone(),
        seq,
        bytes_up: i64::try_from(*up).unwrap_or(i64::MAX),
        bytes_down: i64::try_from(*down).unwrap_or(i64::MAX),
        epoch: *epoch,
    }
}

/// Whether a status refuses a report for its content (then retrying the
/// same totals cannot help), rather than for who sends it or when: a 403
/// may mean this gateway is disabled, and its totals wait for it to return.
fn refuses_content(status: u16) -> bool {
    matches!(status, 400 | 404 | 413 | 422)
}

impl Gateway {
    /// Reports every session's totals that changed since acknowledged.
    pub(crate) async fn flush_usage(&self) {
        let pending = self.sessions.pending();
        if pending.is_empty() {
            return;
        }
        if self.send_usage(&pending).await && self.reports.failing.ended() {
            tracing::info!("usage reports are taken again");
        }
    }

    /// Sends `pending` (spooled first); whether every part was answered.
    async fn send_usage(&self, pending: &[Counted]) -> bool {
        // Spooled first: the spool is never behind what was reported.
        self.write_spool().await;
        // Not sent with a token the control plane refuses (kept for when
        // it is taken again; see Beats::refused).
        if self.beats.refused() {
            return false;
        }
        let seq = self.reports.seq.fetch_add(1, Ordering::Relaxed);
        for part in pending.chunks(REPORT_CHUNK) {
            let reports = part.iter().map(|c| totals(c, seq)).collect();
            match self.backend.report(&UsageReport { reports }).await {
                Ok(answer) => {
                    self.sessions.mark_reported(part);
                    self.close_sessions(&answer.close_sessions);
                }
                // The control plane refuses the batch for what it holds (a
                // session it no longer knows, say): report one by one so
                // the rest still count. Other refusals (our token, rate)
                // are retried.
                Err(BackendError::Status { status, .. }) if refuses_content(status) => {
                    for one in part {
                        let reports = vec![totals(one, seq)];
                        match self.backend.report(&UsageReport { reports }).await {
                            Ok(answer) => self.close_sessions(&answer.close_sessions),
                            Err(BackendError::Status { status, code, .. })
                                if refuses_content(status) =>
                            {
                                tracing::warn!(session.id = %one.0, status, %code, "usage refused; dropped");
                            }
                            Err(e) => {
                                if self.reports.failing.began(false) {
                                    tracing::warn!(error = %e, "usage report failed; resent until it is taken (said again once it is)");
                                }
                                return false;
                            }
                        }
                        self.sessions.mark_reported(std::slice::from_ref(one));
                    }
                }
                Err(e) => {
                    if self.reports.failing.began(false) {
                        tracing::warn!(error = %e, "usage report failed; resent until it is taken (said again once it is)");
                    }
                    return false;
                }
            }
        }
        true
    }
}

/// Reports at the configured interval; also forgets spent verdicts,
/// sources back at a full guessing allowance and sessions no longer needed.
pub(crate) async fn report_loop(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gw.opts.report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gw.flush_usage().await;
        gw.validations.prune(std::time::Instant::now());
        gw.throttle.prune();
        gw.sessions.prune(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_refusals_drop_totals() {
        for s in [400, 404, 413, 422] {
            assert!(refuses_content(s), "{s}");
        }
        for s in [401, 403, 408, 429, 500, 502, 503] {
            assert!(!refuses_content(s), "{s}");
        }
    }

    #[test]
    fn totals_saturate_at_the_wire_limit() {
        let t = totals(&("s1".to_owned(), u64::MAX, 7, 3), 42);
        assert_eq!(
            (t.bytes_up, t.bytes_down, t.seq, t.epoch),
            (i64::MAX, 7, 42, 3)
        );
        assert_eq!(t.session_id, "s1");
    }
}
