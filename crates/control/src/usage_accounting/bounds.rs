//! What a session can have moved: a gateway's or a node's totals, and
//! what the ledger records from them, are believed up to a rate over the
//! session's life.

/// The fastest a session is believed to move bytes each way (10 Gbit/s):
/// a gateway's or a node's totals past it over the session's life are cut
/// to it.
const MAX_RATE: i64 = 1_250_000_000;

/// What a session's totals may hold beyond [`MAX_RATE`] over its life.
const RATE_SLACK: i64 = 64 * 1024 * 1024;

/// How long after its end a session's tunnels may still move bytes: the
/// gateway closes them at the access event, or at its next heartbeat.
const AFTER_END: chrono::Duration = chrono::Duration::seconds(60);

/// The most a session that started at `started` (and ended at `ended`,
/// if it has) can have moved each way by `now`: see [`believable`], over
/// its life as [`lived_until`] ends it.
pub fn bound(
    started: chrono::NaiveDateTime,
    ended: Option<chrono::NaiveDateTime>,
    now: chrono::NaiveDateTime,
) -> i64 {
    believable(started, lived_until(ended, now))
}

/// The end of the life a session's totals are believed over: `now`, or
/// [`AFTER_END`] past its end (a report sent long after the end could
/// otherwise claim a rate over the wait too).
fn lived_until(
    ended: Option<chrono::NaiveDateTime>,
    now: chrono::NaiveDateTime,
) -> chrono::NaiveDateTime {
    ended.map_or(now, |e| now.min(e + AFTER_END))
}

/// The most a session that started at `started` can have moved each way
/// by `now`. A gateway's report is believed up to it: one that held
/// 2^63 - 1 bytes (a stolen or broken gateway's) spent the subscriber's
/// allowance at once and saturated every traffic total it was summed in.
fn believable(started: chrono::NaiveDateTime, now: chrono::NaiveDateTime) -> i64 {
    let secs = (now - started).num_seconds().max(0);
    secs.saturating_mul(MAX_RATE).saturating_add(RATE_SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_believed_up_to_the_rate_over_the_sessions_life() {
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0)
            .expect("time")
            .naive_utc();
        assert_eq!(believable(t0, t0), RATE_SLACK);
        // A clock that went back believes the slack, no less.
        assert_eq!(
            believable(t0, t0 - chrono::Duration::seconds(5)),
            RATE_SLACK
        );
        assert_eq!(
            believable(t0, t0 + chrono::Duration::seconds(10)),
            10 * MAX_RATE + RATE_SLACK
        );
        // An ended session is believed over its life, not over the wait
        // for its report.
        let end = t0 + chrono::Duration::seconds(1);
        let late = t0 + chrono::Duration::hours(1);
        assert_eq!(lived_until(Some(end), late), end + AFTER_END);
        assert_eq!(lived_until(Some(end), end), end);
        assert_eq!(lived_until(None, late), late);
        // Centuries never overflow.
        let far = t0 + chrono::Duration::days(365 * 300);
        assert_eq!(believable(t0, far), i64::MAX);
    }
}
