//! Quota grants, the pure core (no I/O; the time is an argument): how many
//! bytes a session may be granted out of what its subscription has left,
//! and for how long. A grant is a cumulative limit on the session's bytes
//! (up plus down, as the usage charge counts them). What a grant holds
//! back from the subscription is its limit, stored in the ledger's terms
//! (plus [`ledger_offset`]), less what the ledger already recorded for the
//! session, so reports return unused bytes by themselves: the recorded
//! total grows to meet the limit.

use chrono::{Duration, NaiveDateTime};

/// The least slice granted while at least that much is left (a smaller
/// remainder is granted whole).
pub const MIN_SLICE: i64 = 256 * 1024;

/// The most one grant adds: a tunnel at 1 GB/s asks about four times a
/// second.
pub const MAX_SLICE: i64 = 256 * 1024 * 1024;

/// How long a grant of a limited allowance holds.
pub const GRANT_TTL: Duration = Duration::seconds(30);

/// How long an unlimited plan's grant holds (it only has an end to keep).
pub const UNLIMITED_TTL: Duration = Duration::minutes(10);

/// How long an expired grant is kept: it holds nothing back any more, but
/// it still caps what the node witness's count records for its session
/// (the node reports a session within seconds of its last connection
/// closing, so an hour is ample).
pub const KEPT_AFTER_EXPIRY: Duration = Duration::hours(1);

/// What one session's grant holds back from its subscription: its limit
/// less what the ledger recorded for it (never negative).
pub fn held(limit: i64, recorded: i64) -> i64 {
    limit.saturating_sub(recorded).max(0)
}

/// A session's grant as its gateway last asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prev {
    /// The gateway's count then.
    pub used: i64,
    /// The ledger offset then (see [`ledger_offset`]).
    pub offset: i64,
    /// The grant's limit, in the ledger's terms.
    pub granted: i64,
}

/// What the ledger had recorded for a session when its gateway's count
/// was zero: a grant's limit plus this is the limit in the ledger's terms
/// (what is stored), and the gateway's count plus this is its count in
/// those terms (what grants are sized from). The two counts differ when a
/// gateway counts the session afresh: it restarted (from its spool, which
/// may lag what it let through, or from zero without one), or forgot the
/// session and met it again. It says so (`afresh`), or its count falling
/// below its last ask (`prev`) tells of it; the offset then takes the
/// ledger's lead over the new count and, since the earlier count could
/// let through up to its grant's limit before it was lost, that limit's
/// lead too: what the lost count may have spent is taken as spent, and
/// the cap holds across the restart. (It is a bound on what passed, not a
/// charge: the ledger records what the witnesses counted.) Otherwise the
/// offset stays as it was: the ledger's lead over the gateway's count
/// within one run of the gateway is bytes the node counted in flight,
/// which the bound on the node's count must not take as spent.
pub fn ledger_offset(prev: Option<Prev>, used: i64, recorded: i64, afresh: bool) -> i64 {
    let lead = recorded.saturating_sub(used).max(0);
    match prev {
        Some(p) if !afresh && used >= p.used => p.offset,
        Some(p) => p.offset.max(lead).max(p.granted.saturating_sub(used)),
        None => lead,
    }
}

/// What a grant is sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The allowance of the period.
    pub allowance: i64,
    /// Bytes the ledger charged in the period.
    pub charged: i64,
    /// What the live grants of the subscription's other sessions hold back.
    pub others: i64,
    /// The session's bytes as the gateway counted them (cumulative).
    pub used: i64,
    /// The session's bytes as the ledger recorded them (cumulative).
    pub recorded: i64,
    /// The gateway's wish on top of `used`.
    pub want: i64,
    /// What the session's live grant still lets its gateway move past
    /// `used`: the gateway goes on spending it while its question is out,
    /// so a renewal keeps at least that much (see [`limit`]).
    pub kept: i64,
}

/// The session's new cumulative limit: `used` plus a slice of what is
/// left once the charged bytes, the others' grants and the session's own
/// unreported bytes are taken out. At most half of what is left (at least
/// [`MIN_SLICE`]) goes to one ask, so sessions sharing a subscription
/// share its end; `used` itself when nothing is left. Never less than the
/// room the live grant still gives (`kept`) while what is left holds it:
/// the gateway may spend all of it before the answer arrives, and a
/// smaller limit would free for other sessions bytes already on their way.
/// (What is left always holds it unless the allowance was lowered; then
/// the grant shrinks, as it must.)
pub fn limit(a: Ask) -> i64 {
    let left = unheld(a);
    if left <= 0 {
        return a.used;
    }
    let slice = a
        .want
        .clamp(MIN_SLICE, MAX_SLICE)
        .min((left / 2).max(MIN_SLICE))
        .max(a.kept)
        .min(left);
    a.used.saturating_add(slice)
}

/// What the allowance has left for the session: neither charged, nor held
/// by the others' grants, nor spent by its own unreported bytes.
fn unheld(a: Ask) -> i64 {
    let unreported = a.used.saturating_sub(a.recorded).max(0);
    a.allowance
        .saturating_sub(a.charged)
        .saturating_sub(a.others)
        .saturating_sub(unreported)
}

/// The session's share of what the allowance has left beyond a grant of
/// `limit` sized from `a` (never negative), among the `sessions` that may
/// share it (itself included: those open on the subscription, or one per
/// device that may connect, whichever is more): the most its gateway may
/// let through past `limit` while it cannot ask for more (an outage). A
/// lone session is told all of it; several are each told half a share,
/// the other half kept back for the grants the others may be given after
/// this answer (which this one's share does not know of; each takes at
/// most half of what is left then). The whole of it, told to each, let
/// two devices through an outage with 58 % of the allowance more; a share
/// each among the sessions open, 5 % (and three devices whose sessions
/// opened after the first's answer, 71 %); a share each among the
/// devices with one kept back, 7 %.
pub fn left_beyond(a: Ask, limit: i64, sessions: i64) -> i64 {
    let left = unheld(a)
        .saturating_sub(limit.saturating_sub(a.used).max(0))
        .max(0);
    match sessions {
        ..=1 => left,
        n => left / n.saturating_mul(2),
    }
}

/// When a grant made at `now` ends: after `ttl`, and never past the
/// subscription's end nor its period's (the period's end is ignored once
/// passed: the sweeper starts the next one).
pub fn valid_until(
    now: NaiveDateTime,
    ttl: Duration,
    expires_at: NaiveDateTime,
    period_end: NaiveDateTime,
) -> NaiveDateTime {
    let mut until = (now + ttl).min(expires_at);
    if period_end > now {
        until = until.min(period_end);
    }
    until.max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: i64 = 1024 * 1024;

    fn ask() -> Ask {
        Ask {
            allowance: 5 * MIB,
            charged: 0,
            others: 0,
            used: 0,
            recorded: 0,
            want: 64 * MIB,
            kept: 0,
        }
    }

    #[test]
    fn a_renewal_keeps_the_room_of_the_live_grant() {
        // 2.5 MiB granted; the others since hold 1.875 MiB; asked again
        // halfway (1.25 MiB used, unreported). Half of what is left (1.875
        // MiB) would make a limit of 2.1875 MiB: less than the 2.5 MiB the
        // gateway may spend meanwhile.
        let a = Ask {
            others: 15 * MIB / 8,
            used: 5 * MIB / 4,
            kept: 5 * MIB / 4,
            ..ask()
        };
        assert_eq!(limit(a), 5 * MIB / 2);
        assert_eq!(limit(Ask { kept: 0, ..a }), 35 * MIB / 16);
        // A lowered allowance shrinks it all the same: to what is left.
        let lowered = Ask {
            allowance: 4 * MIB,
            ..a
        };
        assert_eq!(limit(lowered), 5 * MIB / 4 + 7 * MIB / 8);
    }

    #[test]
    fn what_is_left_beyond_a_grant() {
        // Half of 5 MiB granted: the other half is left beyond it.
        assert_eq!(left_beyond(ask(), limit(ask()), 1), 5 * MIB / 2);
        // Unreported bytes and the others' grants are not left.
        let a = Ask {
            used: MIB,
            others: MIB,
            ..ask()
        };
        assert_eq!(limit(a), MIB + 3 * MIB / 2);
        assert_eq!(left_beyond(a, limit(a), 1), 3 * MIB / 2);
        // The end of the allowance granted whole: nothing beyond it.
        let end = Ask {
            charged: 5 * MIB - 100_000,
            ..ask()
        };
        assert_eq!(left_beyond(end, limit(end), 1), 0);
        // Nothing left, nothing granted: never negative.
        let over = Ask {
            charged: 6 * MIB,
            ..ask()
        };
        assert_eq!(left_beyond(over, limit(over), 1), 0);
        // Shared among the subscription's open sessions (none counted:
        // itself).
        assert_eq!(left_beyond(ask(), limit(ask()), 2), 5 * MIB / 8);
        assert_eq!(left_beyond(ask(), limit(ask()), 0), 5 * MIB / 2);
    }

    #[test]
    fn a_grant_is_at_most_half_of_what_is_left() {
        assert_eq!(limit(ask()), 5 * MIB / 2);
        // The gateway counted 1 MiB the ledger has not yet: it is taken out.
        let a = Ask { used: MIB, ..ask() };
        assert_eq!(limit(a), MIB + 2 * MIB);
        // Recorded already: charged holds it.
        let a = Ask {
            used: MIB,
            recorded: MIB,
            charged: MIB,
            ..ask()
        };
        assert_eq!(limit(a), 3 * MIB);
    }

    #[test]
    fn the_end_of_an_allowance_is_granted_whole_then_nothing() {
        let a = Ask {
            charged: 5 * MIB - 100_000,
            ..ask()
        };
        assert_eq!(limit(a), 100_000, "less than a minimal slice: all of it");
        let a = Ask {
            charged: 5 * MIB - 300_000,
            ..ask()
        };
        assert_eq!(limit(a), MIN_SLICE, "a minimal slice");
        for charged in [5 * MIB, 6 * MIB] {
            let a = Ask {
                charged,
                used: 7,
                recorded: 7,
                ..ask()
            };
            assert_eq!(limit(a), 7, "nothing more");
        }
    }

    #[test]
    fn other_grants_are_never_granted_twice() {
        // Two sessions asking in turn never hold more than is left.
        let first = limit(ask());
        let second = limit(Ask {
            others: held(first, 0),
            ..ask()
        });
        assert!(first + second <= 5 * MIB, "{first} + {second}");
        let a = Ask {
            others: 5 * MIB,
            ..ask()
        };
        assert_eq!(limit(a), 0, "everything is held by others");
        // The others' reports give back their unused part.
        assert_eq!(held(first, first), 0);
        assert_eq!(held(first, first + 10), 0, "an overshoot holds nothing");
    }

    #[test]
    fn small_wishes_get_a_minimal_slice_and_huge_ones_are_capped() {
        let big = Ask {
            allowance: i64::MAX,
            want: i64::MAX,
            ..ask()
        };
        assert_eq!(limit(big), MAX_SLICE);
        let small = Ask {
            allowance: 100 * MIB,
            want: 1,
            ..ask()
        };
        assert_eq!(limit(small), MIN_SLICE);
        let huge = Ask {
            allowance: i64::MAX,
            used: i64::MAX - 1,
            recorded: i64::MAX - 1,
            ..big
        };
        assert_eq!(limit(huge), i64::MAX, "saturates");
    }

    #[test]
    fn a_grant_ends_by_its_ttl_the_subscription_or_the_period() {
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0)
            .expect("time")
            .naive_utc();
        let far = t0 + Duration::days(10);
        assert_eq!(valid_until(t0, GRANT_TTL, far, far), t0 + GRANT_TTL);
        let soon = t0 + Duration::seconds(3);
        assert_eq!(valid_until(t0, GRANT_TTL, soon, far), soon);
        assert_eq!(valid_until(t0, GRANT_TTL, far, soon), soon);
        // A period already over (the sweeper is about to reset it).
        let past = t0 - Duration::seconds(1);
        assert_eq!(valid_until(t0, GRANT_TTL, far, past), t0 + GRANT_TTL);
        // An ended subscription grants nothing.
        assert_eq!(valid_until(t0, GRANT_TTL, past, far), t0);
    }

    #[test]
    fn the_ledger_offset_follows_a_gateway_that_counts_afresh() {
        let prev = |used, offset, granted| {
            Some(Prev {
                used,
                offset,
                granted,
            })
        };
        // A new session: none.
        assert_eq!(ledger_offset(None, 0, 0, true), 0);
        // One run of the gateway: it stays, whatever the node has counted
        // in flight meanwhile.
        assert_eq!(
            ledger_offset(prev(4 * MIB, 0, 8 * MIB), 6 * MIB, 9 * MIB, false),
            0
        );
        // Restarted without its counts: 100 MiB recorded, 1 MiB counted
        // since; its grant went no further than the recorded bytes.
        assert_eq!(
            ledger_offset(prev(90 * MIB, 0, 100 * MIB), MIB, 100 * MIB, false),
            99 * MIB
        );
        // ... or further: what it may have let through counts as spent.
        assert_eq!(
            ledger_offset(prev(90 * MIB, 0, 110 * MIB), MIB, 100 * MIB, false),
            109 * MIB
        );
        // Restarted from its spool, a little behind its last ask.
        assert_eq!(
            ledger_offset(prev(90 * MIB, 0, 90 * MIB), 89 * MIB, 90 * MIB, false),
            MIB
        );
        // Restarted from a spool ahead of its last ask but behind what it
        // let through: only the gateway can tell (afresh); its grant's
        // limit, 20 MiB, bounds what passed.
        assert_eq!(
            ledger_offset(prev(10 * MIB, 0, 20 * MIB), 12 * MIB, 12 * MIB, true),
            8 * MIB
        );
        assert_eq!(
            ledger_offset(prev(10 * MIB, 0, 20 * MIB), 12 * MIB, 12 * MIB, false),
            0
        );
        // Never below what it was.
        assert_eq!(
            ledger_offset(prev(5 * MIB, 7 * MIB, 0), MIB, 0, false),
            7 * MIB
        );
        // A grant pruned long ago: the ledger's lead.
        assert_eq!(ledger_offset(None, MIB, 3 * MIB, true), 2 * MIB);
    }
}
