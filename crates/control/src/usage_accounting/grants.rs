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

/// How long a grant's offset keeps all that a lost count may have let
/// through (see [`ledger_offset`]) before the node's count takes its
/// place: the node reports a session within a second of its connections
/// closing (a gateway's crash closes them) and an open one every 10 s, and
/// the ledger applies reports within seconds.
pub const DOUBT_TTL: Duration = Duration::seconds(30);

/// A session's grant offset for an ask at `now` (see [`ledger_offset`])
/// and until when it is in doubt: taken to hold all that the lost count's
/// grant could have let through. That bound is pessimistic (it is the
/// grant's limit, not what passed), and a device held to it for its
/// session's life was refused its last megabytes for as long. So once
/// the doubt is over, if the node witnesses the session (`node_base`:
/// what its counts of the session before its latest epoch hold; `None`
/// when the node has counted nothing of it, and only that is read here),
/// the offset is what
/// is known to have passed: the larger of what the ledger had recorded
/// when the gateway's count began afresh (`gateway_base`) and the
/// ledger's lead over the gateway's count now (which holds the node's
/// count of the lost one's bytes, the ledger taking the larger of the
/// two witnesses), never more than the bound. (The node's own earlier
/// count was a third candidate, but it is a total, not a lead: the node
/// starts a new epoch whenever all of a session's connections have
/// closed, so short tunnels after the restart were in it too, and a
/// device was held 20-60 MB short of what the ledger showed left for as
/// long as it kept asking.) The lead keeps the count in the ledger's terms at
/// least what the ledger recorded, so what a grant holds back from the
/// subscription's other sessions (its limit less the recorded bytes) is
/// all the room it gives (without it, two devices after two crashes were
/// each granted most of the remainder, 3-7 MiB past a 30 MiB allowance).
/// Without a witness the bound stays, as nothing else tells what passed.
#[expect(clippy::too_many_arguments, reason = "the pure core's inputs, named")]
pub fn offset_at(
    prev: Option<Prev>,
    doubt_until: Option<NaiveDateTime>,
    used: i64,
    recorded: i64,
    afresh: bool,
    gateway_base: i64,
    node_base: Option<i64>,
    now: NaiveDateTime,
) -> (i64, Option<NaiveDateTime>) {
    let offset = ledger_offset(prev, used, recorded, afresh);
    match prev {
        Some(p) if !afresh && used >= p.used => match (doubt_until, node_base) {
            (Some(until), Some(_)) if until <= now => {
                let lead = recorded.saturating_sub(used);
                (offset.min(gateway_base.max(lead).max(0)), None)
            }
            (doubt, _) => (offset, doubt),
        },
        Some(p) => {
            // An earlier bound still in doubt is not known: taken as
            // known, it held the device to it for good.
            let known = p.offset.max(recorded.saturating_sub(used).max(0));
            (
                offset,
                (offset > known || doubt_until.is_some()).then(|| now + DOUBT_TTL),
            )
        }
        None => (offset, None),
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
#[path = "grants_tests.rs"]
mod tests;
