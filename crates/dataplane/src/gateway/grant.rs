//! Quota grants as the gateway holds them, the pure core (no I/O; the
//! time is an argument, in milliseconds on the gateway's own clock): a
//! session's cumulative byte limit (up plus down, as reports count them)
//! and until when it holds; the point past which the next grant is asked
//! for ahead of time (half the slice, or half the validity); and what to
//! ask for, from the session's recent rate. A tunnel counts each frame
//! against the grant before it forwards it (`Session::take_within`), so
//! nothing passes a grant, however many tunnels of the session forward
//! at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use httvps_wire::Reason;
use httvps_wire::grant::GrantResponse;

/// The least asked for: a slice a tunnel at full speed spends in well
/// over a tenth of a second.
pub(crate) const MIN_WANT: u64 = 8 * 1024 * 1024;

/// The most asked for.
pub(crate) const MAX_WANT: u64 = 256 * 1024 * 1024;

/// A wish covers this many milliseconds of the session's recent rate.
const WANT_MS: u64 = 500;

/// Bytes granted, on top of what was used, when the control plane cannot
/// be asked (an outage): the outage rule admits the session, and this
/// bounds what it moves before it asks again.
pub(crate) const OUTAGE_SLICE: u64 = 64 * 1024 * 1024;

/// Milliseconds on the gateway's clock (from its first use).
pub(crate) fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The last answer's facts, for the next wish.
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    /// When it came.
    at_ms: u64,
    /// The session's bytes then.
    used: u64,
}

/// A session's grant. Nothing is granted until the first answer.
#[derive(Debug)]
pub(crate) struct Grant {
    limit: AtomicU64,
    /// The most the session may move while the control plane cannot be
    /// asked: the last answer's limit plus what it said the allowance had
    /// left beyond it (`u64::MAX`: unlimited, or not said).
    outage_cap: AtomicU64,
    until_ms: AtomicU64,
    ask_at: AtomicU64,
    ask_by_ms: AtomicU64,
    last: Mutex<Last>,
    denied: Mutex<Option<Reason>>,
    /// What it was sized from may have changed unseen (access events were
    /// missed): asked again at the next byte, whatever is left of it.
    stale: AtomicBool,
    /// The last answer said the session has ended.
    ended: AtomicBool,
    /// When a question asked ahead last went unanswered (0: answered
    /// since, or never).
    unanswered_ms: AtomicU64,
    /// An answer came: this count of the session has been granted before.
    answered: AtomicBool,
}

impl Default for Grant {
    fn default() -> Self {
        Grant {
            limit: AtomicU64::new(0),
            outage_cap: AtomicU64::new(u64::MAX),
            until_ms: AtomicU64::new(0),
            ask_at: AtomicU64::new(0),
            ask_by_ms: AtomicU64::new(0),
            last: Mutex::default(),
            denied: Mutex::default(),
            stale: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            unanswered_ms: AtomicU64::new(0),
            answered: AtomicBool::new(false),
        }
    }
}

impl Grant {
    /// Bytes the session may still move at `now_ms`, having moved `used`.
    pub fn room(&self, used: u64, now_ms: u64) -> u64 {
        if now_ms >= self.until_ms.load(Ordering::Relaxed) {
            return 0;
        }
        self.limit.load(Ordering::Relaxed).saturating_sub(used)
    }

    /// Whether the next grant should be asked for now (half the slice or
    /// half the validity is gone).
    pub fn due(&self, used: u64, now_ms: u64) -> bool {
        used >= self.ask_at.load(Ordering::Relaxed)
            || now_ms >= self.ask_by_ms.load(Ordering::Relaxed)
    }

    /// What to ask for: [`WANT_MS`] of the rate since the last answer,
    /// within [`MIN_WANT`] and [`MAX_WANT`].
    pub fn want(&self, used: u64, now_ms: u64) -> u64 {
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now_ms.saturating_sub(last.at_ms).max(1);
        let moved = used.saturating_sub(last.used);
        moved
            .saturating_mul(WANT_MS)
            .checked_div(elapsed)
            .unwrap_or(0)
            .clamp(MIN_WANT, MAX_WANT)
    }

    /// Why the control plane granted nothing more, if it did not.
    pub fn denied(&self) -> Option<Reason> {
        *self.denied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the control plane's `answer`, asked with `used` at `now_ms`.
    pub fn apply(&self, answer: &GrantResponse, used: u64, now_ms: u64) {
        let limit = answer
            .limit
            .map_or(u64::MAX, |l| u64::try_from(l).unwrap_or(0));
        let valid = u64::try_from(answer.valid_ms).unwrap_or(0);
        let beyond = answer.left.map(|l| u64::try_from(l).unwrap_or(0));
        let cap = beyond.map_or(u64::MAX, |b| limit.saturating_add(b));
        self.outage_cap.store(cap, Ordering::Relaxed);
        self.set(limit, used, now_ms, valid);
        *self.denied.lock().unwrap_or_else(PoisonError::into_inner) = answer.reason;
        self.ended.store(answer.ended, Ordering::Relaxed);
        self.unanswered_ms.store(0, Ordering::Relaxed);
        self.answered.store(true, Ordering::Relaxed);
    }

    /// Whether no answer came yet for this count of the session: the
    /// gateway counts it afresh (it is new, met again after
    /// a restart, or met again after it was forgotten), and says so when
    /// it asks (see [`GrantRequest::afresh`](httvps_wire::grant::GrantRequest)).
    pub fn afresh(&self) -> bool {
        !self.answered.load(Ordering::Relaxed)
    }

    /// Whether the last answer said the session has ended (its device's
    /// next tunnel gets a new one).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// A grant of `slice` bytes over `used`, for `valid_ms`, made without
    /// the control plane (it could not be asked): never past what the last
    /// answer said the allowance had left, so an outage, however long, does
    /// not let a session pass the allowance it knew of (a session its
    /// other sessions share the rest with may still, by what they hold).
    pub fn provisional(&self, slice: u64, used: u64, now_ms: u64, valid_ms: u64) {
        let cap = self.outage_cap.load(Ordering::Relaxed);
        let limit = used.saturating_add(slice).min(cap.max(used));
        self.set(limit, used, now_ms, valid_ms);
    }

    /// Marks the grant stale: the allowance it was sized from may have
    /// shrunk without the gateway hearing of it (its access-event stream
    /// was down), so it is asked for again before the next byte moves.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Whether the grant is stale (see [`Grant::mark_stale`]).
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Clears the stale mark: a question is about to be asked, and its
    /// answer is fresh. An answer alone does not clear it, since the
    /// question it answers may predate the mark.
    pub fn fresh(&self) {
        self.stale.store(false, Ordering::Relaxed);
    }

    /// A question asked ahead went unanswered at `now_ms`: the grant
    /// stands, and is not due again before `next_ms` (nor by its bytes
    /// before it is spent, when the tunnel asks at once).
    pub fn put_off(&self, now_ms: u64, next_ms: u64) {
        self.ask_at
            .store(self.limit.load(Ordering::Relaxed), Ordering::Relaxed);
        self.ask_by_ms.store(next_ms, Ordering::Relaxed);
        self.unanswered_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Whether a question asked ahead went unanswered at or after
    /// `since_ms`, with no answer since.
    pub fn unanswered_since(&self, since_ms: u64) -> bool {
        let at = self.unanswered_ms.load(Ordering::Relaxed);
        at != 0 && at >= since_ms
    }

    /// Gives the grant up (the session's tunnels are gone): the next
    /// tunnel asks again.
    pub fn release(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
    }

    fn set(&self, limit: u64, used: u64, now_ms: u64, valid_ms: u64) {
        let until = now_ms.saturating_add(valid_ms);
        let slice = limit.saturating_sub(used);
        self.limit.store(limit, Ordering::Relaxed);
        self.until_ms.store(until, Ordering::Relaxed);
        self.ask_at
            .store(used.saturating_add(slice / 2), Ordering::Relaxed);
        self.ask_by_ms
            .store(now_ms.saturating_add(valid_ms / 2), Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Last {
            at_ms: now_ms,
            used,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(limit: Option<i64>, valid_ms: i64, reason: Option<Reason>) -> GrantResponse {
        GrantResponse {
            session_id: "s1".into(),
            limit,
            valid_ms,
            reason,
            left: None,
            ended: false,
        }
    }

    #[test]
    fn nothing_is_granted_before_the_first_answer() {
        let g = Grant::default();
        assert_eq!(g.room(0, 0), 0);
        assert!(g.due(0, 0));
    }

    #[test]
    fn room_is_the_limit_less_the_bytes_until_the_grant_ends() {
        let g = Grant::default();
        g.apply(&answer(Some(1_000), 10_000, None), 0, 100);
        assert_eq!(g.room(0, 100), 1_000);
        assert_eq!(g.room(400, 5_000), 600);
        assert!(
            !g.due(400, 5_000),
            "less than half spent, half the time left"
        );
        assert!(g.due(500, 5_000), "half the bytes spent: ask ahead");
        assert!(g.due(0, 5_100), "half the time gone: ask ahead");
        assert_eq!(g.room(1_200, 5_000), 0, "spent (and past it)");
        assert_eq!(g.room(0, 10_100), 0, "expired");
    }

    #[test]
    fn an_unanswered_ask_ahead_puts_the_next_one_off() {
        let g = Grant::default();
        g.apply(&answer(Some(1_000), 10_000, None), 0, 100);
        assert!(g.due(600, 1_000));
        g.put_off(1_000, 2_000);
        assert!(g.unanswered_since(500) && !g.unanswered_since(1_001));
        assert!(!g.due(600, 1_000), "put off");
        assert!(!g.due(999, 1_999), "put off, not spent");
        assert!(g.due(600, 2_000), "due again");
        assert!(g.due(1_000, 1_000), "spent");
        assert_eq!(g.room(600, 1_000), 400, "the grant stands");
        g.apply(&answer(Some(2_000), 10_000, None), 600, 1_500);
        assert!(!g.unanswered_since(0), "answered since");
    }

    #[test]
    fn an_unlimited_grant_only_expires_and_a_refusal_says_why() {
        let g = Grant::default();
        g.apply(&answer(None, 60_000, None), 5, 0);
        assert_eq!(g.room(u64::MAX - 1, 1), 1);
        assert_eq!(g.room(5, 60_000), 0);
        g.apply(&answer(Some(70), 0, Some(Reason::QuotaExceeded)), 70, 1);
        assert_eq!(g.room(70, 1), 0);
        assert_eq!(g.denied(), Some(Reason::QuotaExceeded));
        g.apply(&answer(Some(900), 1_000, None), 70, 2);
        assert_eq!(g.denied(), None, "a later grant clears it");
        g.release();
        assert_eq!(g.room(70, 3), 0, "released: ask again");
    }

    #[test]
    fn a_stale_grant_stays_stale_until_a_question_is_asked() {
        let g = Grant::default();
        g.apply(&answer(None, 600_000, None), 0, 0);
        assert!(!g.stale());
        g.mark_stale();
        assert!(g.stale());
        assert!(g.room(1 << 40, 1_000) > 0, "what it holds is unchanged");
        g.apply(&answer(Some(5_000), 600_000, None), 0, 2_000);
        assert!(g.stale(), "an answer to an older question leaves it stale");
        g.fresh();
        assert!(!g.stale(), "the question asked clears it");
    }

    #[test]
    fn an_answer_says_whether_the_session_ended() {
        let g = Grant::default();
        assert!(!g.ended());
        let ended = GrantResponse {
            ended: true,
            ..answer(Some(10), 0, Some(Reason::QuotaExceeded))
        };
        g.apply(&ended, 10, 0);
        assert!(g.ended());
        assert_eq!(g.room(10, 1), 0);
        g.apply(&answer(Some(900), 1_000, None), 10, 2);
        assert!(!g.ended(), "a later answer clears it");
    }

    #[test]
    fn wishes_follow_the_rate_within_bounds() {
        let g = Grant::default();
        g.apply(&answer(Some(1), 1_000, None), 0, 0);
        assert_eq!(g.want(0, 1_000), MIN_WANT, "idle");
        // 100 MB in 100 ms: 500 MB for the next 500 ms, capped.
        assert_eq!(g.want(100_000_000, 100), MAX_WANT);
        // 40 MB in a second: 20 MB.
        assert_eq!(g.want(40_000_000, 1_000), 20_000_000);
        g.provisional(OUTAGE_SLICE, 10, 5, 1_000);
        assert_eq!(g.room(10, 6), OUTAGE_SLICE);
    }

    #[test]
    fn provisional_slices_stop_at_what_the_allowance_had_left() {
        let g = Grant::default();
        let told = GrantResponse {
            left: Some(3_000),
            ..answer(Some(1_000), 10_000, None)
        };
        g.apply(&told, 0, 0);
        g.provisional(OUTAGE_SLICE, 1_000, 20, 60_000);
        assert_eq!(g.room(1_000, 21), 3_000, "the rest of the allowance");
        g.provisional(OUTAGE_SLICE, 4_000, 30, 60_000);
        assert_eq!(g.room(4_000, 31), 0, "nothing beyond it");
        // An answer that does not say (an unlimited plan, an older control
        // plane) leaves the slice whole.
        g.apply(&answer(Some(5_000), 10_000, None), 4_000, 40);
        g.provisional(OUTAGE_SLICE, 5_000, 50, 60_000);
        assert_eq!(g.room(5_000, 51), OUTAGE_SLICE);
        // A refusal for what it holds still grants nothing.
        g.provisional(0, 5_000, 60, 0);
        assert_eq!(g.room(5_000, 60), 0);
    }

    #[test]
    fn a_negative_or_huge_answer_is_read_safely() {
        let g = Grant::default();
        g.apply(&answer(Some(-5), -1, None), 0, 0);
        assert_eq!(g.room(0, 0), 0);
        let negative = GrantResponse {
            left: Some(-5),
            ..answer(Some(100), 1_000, None)
        };
        g.apply(&negative, 0, 0);
        g.provisional(OUTAGE_SLICE, 100, 1, 1_000);
        assert_eq!(g.room(100, 2), 0, "nothing left beyond the grant");
        g.apply(&answer(Some(i64::MAX), i64::MAX, None), 0, 0);
        assert!(g.room(0, 1 << 60) > 0, "valid for about 292 million years");
    }
}
