//! The heartbeat schedule, a pure core (the time is an argument): the
//! heartbeat loop beats at its interval and also just after each known
//! subscription end, so a session whose subscription ran out is closed on
//! time even between beats.

use std::collections::BTreeSet;
use std::time::Duration;

/// Subscription ends closer than this get a heartbeat of their own.
pub(crate) const EXPIRY_HORIZON: Duration = Duration::from_secs(3600);

/// Margin after an end before its beat, so the control plane sees the
/// subscription as over.
const MARGIN: Duration = Duration::from_millis(200);

/// What the heartbeat loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Beat now.
    Beat,
    /// Sleep this long (or until woken), then ask again.
    Sleep(Duration),
}

/// Known subscription ends (Unix milliseconds) still ahead.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    ends: BTreeSet<i64>,
}

impl Expiries {
    /// Notes a subscription's end (`end_ms`) seen at `now_ms`. True when it
    /// is a new end within the horizon: a sleeping loop must recompute.
    pub fn note(&mut self, end_ms: i64, now_ms: i64) -> bool {
        let ahead = u64::try_from(end_ms.saturating_sub(now_ms)).unwrap_or(0);
        Duration::from_millis(ahead) < EXPIRY_HORIZON && self.ends.insert(end_ms)
    }

    /// At `now_ms`, with the regular beat due in `beat_in`: beat now if an
    /// end has passed (it is forgotten) or the beat is due, else sleep
    /// until the nearer of the beat and the next end (plus a margin).
    pub fn next(&mut self, now_ms: i64, beat_in: Duration) -> Wake {
        let mut passed = false;
        while self.ends.first().is_some_and(|t| *t <= now_ms) {
            self.ends.pop_first();
            passed = true;
        }
        if passed || beat_in.is_zero() {
            return Wake::Beat;
        }
        let until_end = self
            .ends
            .first()
            .map(|t| Duration::from_millis(u64::try_from(t - now_ms).unwrap_or(0)) + MARGIN);
        Wake::Sleep(until_end.map_or(beat_in, |d| d.min(beat_in)))
    }

    /// Ends still ahead.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(5);
    const T0: i64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_ends_the_loop_sleeps_until_the_beat() {
        let mut e = Expiries::default();
        assert_eq!(e.next(T0, BEAT), Wake::Sleep(BEAT));
        assert_eq!(e.next(T0, Duration::ZERO), Wake::Beat);
    }

    #[test]
    fn a_near_end_shortens_the_sleep_and_then_beats_once() {
        let mut e = Expiries::default();
        assert!(e.note(T0 + 1_000, T0), "a new near end reschedules");
        assert!(!e.note(T0 + 1_000, T0), "the same end does not");
        assert_eq!(e.next(T0, BEAT), Wake::Sleep(ms(1_200)));
        // Woken early (an access event, say): the sleep shrinks.
        assert_eq!(e.next(T0 + 600, BEAT - ms(600)), Wake::Sleep(ms(600)));
        // Past the end: one beat, and the end is forgotten.
        assert_eq!(e.next(T0 + 1_000, BEAT - ms(1_000)), Wake::Beat);
        assert_eq!(e.len(), 0);
        assert_eq!(
            e.next(T0 + 1_300, BEAT - ms(1_300)),
            Wake::Sleep(BEAT - ms(1_300))
        );
    }

    #[test]
    fn ends_beyond_the_regular_beat_do_not_delay_it() {
        let mut e = Expiries::default();
        assert!(e.note(T0 + 60_000, T0));
        assert_eq!(e.next(T0, BEAT), Wake::Sleep(BEAT));
    }

    #[test]
    fn far_ends_are_left_to_later_answers_and_past_ends_beat_at_once() {
        let mut e = Expiries::default();
        let horizon = i64::try_from(EXPIRY_HORIZON.as_millis()).expect("ms");
        assert!(!e.note(T0 + horizon, T0), "beyond the horizon");
        assert!(e.note(T0 + horizon - 1, T0));
        assert!(e.note(T0 - 5, T0), "already over: beat for it");
        assert_eq!(e.next(T0, BEAT), Wake::Beat);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn several_passed_ends_make_one_beat() {
        let mut e = Expiries::default();
        for d in [100, 200, 300] {
            assert!(e.note(T0 + d, T0));
        }
        assert_eq!(e.next(T0 + 350, BEAT), Wake::Beat);
        assert_eq!(e.len(), 0);
    }
}
