//! Quota grants, asked for: a session's first grant before its first
//! tunnel opens, the next one ahead of time (in the background, once half
//! the slice or half its validity is gone), one at once when it is spent
//! (the tunnel waits for the answer), and a release [`RELEASE_AFTER`] after
//! the session's last tunnel ends (a tunnel that opens meanwhile keeps the
//! grant and asks nothing). When the answer grants nothing more, every tunnel of
//! the session is closed (1008, the reason's code). One question at a time
//! per session. When the control plane cannot be asked, a session whose
//! grant is spent gets a provisional slice (the outage rule admitted it);
//! one that asked ahead keeps the grant it has and asks again 5 s later (a
//! slow answer is not an outage: a provisional slice on top of a live
//! grant could pass the allowance while the control plane is merely late),
//! and takes the provisional slice at once if the grant runs out before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use httvps_wire::Reason;
use httvps_wire::grant::GrantRequest;

use super::Gateway;
use super::grant::{OUTAGE_SLICE, clock_ms};
use super::sessions::Session;
use crate::backend::BackendError;

/// Longest wait for an answer while a tunnel holds its frame.
const ASK_WAIT: Duration = Duration::from_secs(3);

/// How soon a grant kept after an unanswered question (see
/// [`Unanswered::Keep`]) is asked for once more.
const RETRY_KEPT: Duration = Duration::from_secs(1);

/// How soon a question asked ahead that went unanswered is asked again
/// (the grant kept meanwhile); within [`ASK_WAIT`] more, a grant that runs
/// out takes the outage rule's provisional slice at once rather than wait
/// for another question to time out.
const RETRY_AHEAD: Duration = Duration::from_secs(5);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long a session keeps its grant after its last tunnel ended: clients
/// open tunnels one after another (a page, a retry), and each would
/// otherwise wait for a round trip to the control plane before its first
/// byte. What the grant holds stays reserved that much longer.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// What a question that gets no answer (the control plane unreachable,
/// slow or failing) leaves of a session's grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unanswered {
    /// A provisional slice (the outage rule admitted the session, and its
    /// grant is spent or due).
    Provisional,
    /// The grant it has: asked ahead while it still has room, or again
    /// because the allowance shrank (a provisional slice could be more
    /// than the new allowance leaves).
    Keep,
}

impl Gateway {
    /// Whether the session may move more bytes now; asks ahead when due.
    /// When the grant is spent, asks at once and waits; when nothing more
    /// is granted, closes the session's tunnels and says no.
    /// A stale grant (access events were missed) is asked for again
    /// first, the tunnel waiting, as for a spent one.
    pub(crate) async fn room(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) -> bool {
        let now = clock_ms();
        let used = s.used();
        if s.grant.room(used, now) > 0 {
            if s.grant.stale() {
                self.recheck(id, s).await;
            } else {
                if s.grant.due(used, now) {
                    self.ask_ahead(id, s);
                }
                return true;
            }
        } else {
            self.ask_now(id, s, 1).await;
        }
        if s.grant.room(s.used(), clock_ms()) > 0 {
            return true;
        }
        if s.grant.ended() {
            // Closed by the control plane (an admin, say), as a close
            // order would have done, not for a spent allowance.
            s.ended();
        } else {
            s.spent(s.grant.denied().unwrap_or(Reason::QuotaExceeded));
        }
        false
    }

    /// Asks for the next grant in the background, unless a question is
    /// already out.
    fn ask_ahead(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) {
        let (gw, id, s) = (self.clone(), id.clone(), s.clone());
        tokio::spawn(async move {
            let Ok(_turn) = s.asking.try_lock() else {
                return;
            };
            if s.grant.due(s.used(), clock_ms()) && !gw.ask(&id, &s, Unanswered::Keep).await {
                let now = clock_ms();
                s.grant
                    .put_off(now, now.saturating_add(millis(RETRY_AHEAD)));
            }
        });
    }

    /// Asks for the session's next grant now, in the background, whatever
    /// is left of the current one (its allowance shrank); after the
    /// question already out, if one is (it may have been answered from the
    /// old allowance).
    pub(crate) fn ask_again(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) {
        let (gw, id, s) = (self.clone(), id.clone(), s.clone());
        tokio::spawn(async move {
            let _turn = s.asking.lock().await;
            // A grant given up (no tunnel) or spent is asked for anyway
            // before the session moves another byte.
            if s.grant.room(s.used(), clock_ms()) > 0 && !gw.ask(&id, &s, Unanswered::Keep).await {
                gw.retry_kept(&id, &s);
            }
        });
    }

    /// A question asked with [`Unanswered::Keep`] got no answer: asked once
    /// more [`RETRY_KEPT`] later, in the background, if the grant is still
    /// in use; after that the grant kept runs its course (the outage rule).
    fn retry_kept(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) {
        let (gw, id, s) = (self.clone(), id.clone(), s.clone());
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_KEPT).await;
            let _turn = s.asking.lock().await;
            if s.grant.room(s.used(), clock_ms()) > 0 {
                gw.ask(&id, &s, Unanswered::Keep).await;
            }
        });
    }

    /// Counts the bytes of a frame of `len` the session is about to move
    /// (on `counter`, its `up` or `down`) against its grant before they
    /// move, exactly, however many of its tunnels count at once; returns
    /// how many may move. A frame the grant has no room for whole is asked
    /// for at once (the allowance usually has more); when it still does
    /// not fit, the allowance is at its end: what fits moves (the recorded
    /// usage meets the allowance to the byte, never passes it) and the
    /// session's tunnels close, as when [`Gateway::room`] finds nothing
    /// granted.
    pub(crate) async fn take(
        self: &Arc<Self>,
        id: &Arc<str>,
        s: &Arc<Session>,
        counter: &AtomicU64,
        len: u64,
    ) -> u64 {
        let first = s.take_within(counter, len, clock_ms());
        if first == len {
            return len;
        }
        s.give_back(counter, first);
        self.ask_now(id, s, len).await;
        let fits = s.take_within(counter, len, clock_ms());
        if fits < len {
            if s.grant.ended() {
                s.ended();
            } else {
                s.spent(s.grant.denied().unwrap_or(Reason::QuotaExceeded));
            }
        }
        fits
    }

    /// Counts a datagram of `len` bytes whole against the session's grant,
    /// as [`Gateway::take`] counts a frame, or not at all: a datagram
    /// cannot be cut. One that does not fit once a grant was asked for is
    /// dropped, and the session's tunnels close only when nothing at all
    /// is left: what is left is still the session's, for a smaller
    /// datagram or a stream's bytes (closing them all for one large
    /// datagram left the subscription short of its allowance, so every
    /// new tunnel met the same end).
    pub(crate) async fn take_whole(
        self: &Arc<Self>,
        id: &Arc<str>,
        s: &Arc<Session>,
        counter: &AtomicU64,
        len: u64,
    ) -> bool {
        let first = s.take_within(counter, len, clock_ms());
        if first == len {
            return true;
        }
        s.give_back(counter, first);
        self.ask_now(id, s, len).await;
        let fits = s.take_within(counter, len, clock_ms());
        if fits == len {
            return true;
        }
        s.give_back(counter, fits);
        if s.grant.room(s.used(), clock_ms()) == 0 {
            if s.grant.ended() {
                s.ended();
            } else {
                s.spent(s.grant.denied().unwrap_or(Reason::QuotaExceeded));
            }
        }
        false
    }

    /// Asks for a grant unless the question already out brings room for
    /// `need` bytes.
    pub(crate) async fn ask_now(&self, id: &str, s: &Session, need: u64) {
        let now = clock_ms();
        if s.grant
            .unanswered_since(now.saturating_sub(millis(RETRY_AHEAD + ASK_WAIT)))
        {
            // The control plane did not answer the question asked ahead:
            // an outage, whose rule applies now (no tunnel waits on
            // another question to time out).
            if s.grant.room(s.used(), now) < need.max(1) && !s.grant.ended() {
                tracing::warn!(session.id = %id, "quota grant unavailable; provisional slice");
                s.grant
                    .provisional(OUTAGE_SLICE, s.used(), now, millis(self.opts.outage_ttl));
            }
            return;
        }
        let turn = tokio::time::timeout(ASK_WAIT, s.asking.lock()).await;
        // An ended session never gets more: the answer is in already.
        if s.grant.room(s.used(), clock_ms()) >= need.max(1) || s.grant.ended() {
            return;
        }
        let _turn = turn;
        self.ask(id, s, Unanswered::Provisional).await;
    }

    /// Asks for a stale grant again (the allowance it was sized from may
    /// have shrunk unseen), unless a question asked meanwhile did; the
    /// grant is kept when there is no answer.
    async fn recheck(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) {
        let turn = tokio::time::timeout(ASK_WAIT, s.asking.lock()).await;
        if !s.grant.stale() {
            return;
        }
        let answered = {
            let _turn = turn;
            self.ask(id, s, Unanswered::Keep).await
        };
        if !answered {
            self.retry_kept(id, s);
        }
    }

    /// One question (the caller holds the session's turn); `unanswered`
    /// says what a failure leaves. Whether it was answered (a refusal is
    /// an answer).
    async fn ask(&self, id: &str, s: &Session, unanswered: Unanswered) -> bool {
        // Whatever made the grant stale happened before this question.
        s.grant.fresh();
        let (now, used) = (clock_ms(), s.used());
        let req = GrantRequest {
            session_id: id.to_owned(),
            used: i64::try_from(used).unwrap_or(i64::MAX),
            want: i64::try_from(s.grant.want(used, now)).unwrap_or(i64::MAX),
            release: false,
            afresh: s.grant.afresh(),
        };
        match tokio::time::timeout(ASK_WAIT, self.backend.grant(&req)).await {
            Ok(Ok(answer)) => {
                s.grant.apply(&answer, used, now);
                if s.grant.room(used, now) > 0 {
                    s.granted_again();
                }
                return true;
            }
            // Refused for what it holds: a session the control plane
            // does not know (or not as ours) moves nothing more.
            Ok(Err(BackendError::Status { status, code, .. })) if (400..500).contains(&status) => {
                tracing::warn!(session.id = %id, status, %code, "quota grant refused");
                s.grant.provisional(0, used, now, 0);
                return true;
            }
            Ok(Err(e)) if unanswered == Unanswered::Keep => {
                tracing::warn!(session.id = %id, error = %e, "quota grant unavailable; the current one kept");
            }
            Err(_) if unanswered == Unanswered::Keep => {
                tracing::warn!(session.id = %id, "quota grant timed out; the current one kept");
            }
            Ok(Err(e)) => {
                tracing::warn!(session.id = %id, error = %e, "quota grant unavailable; provisional slice");
                let valid = millis(self.opts.outage_ttl);
                s.grant.provisional(OUTAGE_SLICE, used, now, valid);
            }
            Err(_) => {
                tracing::warn!(session.id = %id, "quota grant timed out; provisional slice");
                let valid = millis(self.opts.outage_ttl);
                s.grant.provisional(OUTAGE_SLICE, used, now, valid);
            }
        }
        false
    }

    /// The session's last tunnel ended: gives back what its grant did not
    /// spend, [`RELEASE_AFTER`] later, unless a tunnel came back meanwhile.
    pub(crate) fn release_grant(self: &Arc<Self>, id: &Arc<str>, s: &Arc<Session>) {
        let epoch = s.release_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let (gw, id, s) = (self.clone(), id.clone(), s.clone());
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_AFTER).await;
            let _turn = s.asking.lock().await;
            // A tunnel is back, or it came and went and a later release
            // is due: that one decides.
            if s.tunnel_count() > 0 || s.release_epoch.load(Ordering::Relaxed) != epoch {
                return;
            }
            s.grant.release();
            let req = GrantRequest {
                session_id: id.to_string(),
                used: i64::try_from(s.used()).unwrap_or(i64::MAX),
                want: 0,
                release: true,
                afresh: false,
            };
            if let Err(e) = gw.backend.grant(&req).await {
                tracing::debug!(session.id = %id, error = %e, "grant release not delivered; it expires");
            }
        });
    }
}
