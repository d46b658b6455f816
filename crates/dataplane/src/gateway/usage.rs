//! Usage reporting: every few seconds, the cumulative totals of sessions
//! that moved bytes, spooled first, then sent in chunks; the answer's close
//! orders are carried out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

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
    /// Whether the control plane takes count epochs (one of an earlier
    /// release refuses the field: the gateway then reports without them,
    /// as earlier gateways did, until it restarts).
    epochs: AtomicBool,
    /// Failed reports, said once per run.
    failing: crate::failing::SharedFailing,
}

impl Reports {
    /// Sequence numbers from the wall clock, so a restarted gateway's
    /// reports sort after its earlier ones.
    pub fn new() -> Self {
        Reports {
            seq: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
            epochs: AtomicBool::new(true),
            failing: Default::default(),
        }
    }
}

/// One session's totals as reported (saturating at the wire's i64), with
/// its count's epoch when `epochs`.
fn totals((id, up, down, epoch): &Counted, seq: i64, epochs: bool) -> SessionTotals {
    SessionTotals {
        session_id: id.clone(),
        seq,
        bytes_up: i64::try_from(*up).unwrap_or(i64::MAX),
        bytes_down: i64::try_from(*down).unwrap_or(i64::MAX),
        epoch: if epochs { *epoch } else { 0 },
    }
}

/// Whether a refusal is a control plane of an earlier release refusing
/// the count's epoch.
fn refuses_epochs(e: &BackendError) -> bool {
    matches!(e, BackendError::Status { status: 400, message, .. } if message.contains("unknown field `epoch`"))
}

/// Whether a status refuses a report for its content (then retrying the
/// same totals cannot help), rather than for who sends it or when: a 403
/// may mean this gateway is disabled, and its totals wait for it to return.
fn refuses_content(status: u16) -> bool {
    matches!(status, 400 | 404 | 413 | 422)
}

impl Gateway {
    /// Reports every session's totals that changed since acknowledged.
    /// Restored totals go first, in reports of their own, and the rest
    /// right behind them (see `Sessions::pending`).
    pub(crate) async fn flush_usage(&self) {
        for _ in 0..2 {
            let restoring = self.sessions.restoring();
            let pending = self.sessions.pending();
            if pending.is_empty() {
                return;
            }
            if !self.send_usage(&pending).await {
                return;
            }
            if self.reports.failing.ended() {
                tracing::info!("usage reports are taken again");
            }
            if !restoring {
                return;
            }
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
            let mut answer = self.report(part, seq).await;
            if answer.as_ref().is_err_and(refuses_epochs)
                && self.reports.epochs.swap(false, Ordering::Relaxed)
            {
                tracing::info!(
                    "the control plane takes no count epochs (an earlier release): usage is reported without them"
                );
                answer = self.report(part, seq).await;
            }
            match answer {
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
                        match self.report(std::slice::from_ref(one), seq).await {
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

impl Gateway {
    /// Sends one report of `part`.
    async fn report(
        &self,
        part: &[Counted],
        seq: i64,
    ) -> Result<httvps_wire::usage::UsageReportResponse, BackendError> {
        let epochs = self.reports.epochs.load(Ordering::Relaxed);
        let reports = part
            .iter()
            .map(|c| match epochs {
                true => totals(c, seq, true),
                false => totals(&self.sessions.without_epochs(c), seq, false),
            })
            .collect();
        self.backend.report(&UsageReport { reports }).await
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
        let t = totals(&("s1".to_owned(), u64::MAX, 7, 3), 42, true);
        assert_eq!(
            (t.bytes_up, t.bytes_down, t.seq, t.epoch),
            (i64::MAX, 7, 42, 3)
        );
        assert_eq!(t.session_id, "s1");
        assert_eq!(totals(&("s1".to_owned(), 1, 2, 3), 4, false).epoch, 0);
    }

    #[test]
    fn an_earlier_control_plane_refusing_epochs_is_told_apart() {
        let refusal = |status, message: &str| BackendError::Status {
            status,
            code: "BAD_REQUEST".into(),
            message: message.into(),
        };
        let earlier = "invalid body: unknown field `epoch`, expected one of `session_id`, `seq`, `bytes_up`, `bytes_down` at line 1 column 90";
        assert!(refuses_epochs(&refusal(400, earlier)));
        assert!(!refuses_epochs(&refusal(
            400,
            "seq and byte totals must not be negative"
        )));
        assert!(!refuses_epochs(&refusal(404, earlier)));
        // What the wire leaves out for such a control plane.
        let legacy =
            serde_json::to_string(&totals(&("s".to_owned(), 1, 2, 3), 4, false)).expect("json");
        assert!(!legacy.contains("epoch"), "{legacy}");
    }
}
