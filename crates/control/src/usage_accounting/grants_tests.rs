//! Unit tests of the grants' pure core.

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
fn a_bound_taken_after_a_restart_gives_way_to_the_witness() {
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0)
        .expect("time")
        .naive_utc();
    let prev = Some(Prev {
        used: 2 * MIB,
        offset: 0,
        granted: 10 * MIB,
    });
    // Restarted: 2 MiB recorded, the lost count's grant went to 10.
    let (offset, doubt) = offset_at(prev, None, 0, 2 * MIB, true, 0, None, t0);
    assert_eq!((offset, doubt), (10 * MIB, Some(t0 + DOUBT_TTL)));
    let after = Some(Prev {
        used: MIB,
        offset,
        granted: 12 * MIB,
    });
    // In doubt: the bound holds, witness or not.
    let early = t0 + Duration::seconds(29);
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            4 * MIB,
            false,
            2 * MIB,
            Some(2 * MIB),
            early
        ),
        (10 * MIB, doubt)
    );
    // Over, without a witness: the bound stays.
    let late = t0 + DOUBT_TTL;
    assert_eq!(
        offset_at(after, doubt, 2 * MIB, 4 * MIB, false, 2 * MIB, None, late),
        (10 * MIB, doubt)
    );
    // Over, witnessed: what is known to have passed, never more than
    // the bound; the node's count is a total (its epochs roll over as
    // the session's connections come and go), never an offset.
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            4 * MIB,
            false,
            2 * MIB,
            Some(3 * MIB),
            late
        ),
        (2 * MIB, None)
    );
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            7 * MIB,
            false,
            2 * MIB,
            Some(9 * MIB),
            late
        ),
        (5 * MIB, None),
        "the ledger's lead, not the node's total"
    );
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            4 * MIB,
            false,
            2 * MIB,
            Some(0),
            late
        ),
        (2 * MIB, None)
    );
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            4 * MIB,
            false,
            20 * MIB,
            Some(0),
            late
        ),
        (10 * MIB, None)
    );
    // The ledger leads the bases (the node's count of the new epoch, or a
    // lost count it holds): the count in its terms is never below what
    // it recorded, so the grant's hold on the others is its whole room.
    let (o, d) = offset_at(
        after,
        doubt,
        2 * MIB,
        9 * MIB,
        false,
        2 * MIB,
        Some(3 * MIB),
        late,
    );
    assert_eq!((o, d), (7 * MIB, None));
    assert!(2 * MIB + o >= 9 * MIB);
    assert_eq!(
        offset_at(
            after,
            doubt,
            2 * MIB,
            40 * MIB,
            false,
            2 * MIB,
            Some(3 * MIB),
            late
        ),
        (10 * MIB, None),
        "never past the bound"
    );
    // No doubt when the bound adds nothing to what is known.
    let spent = Some(Prev {
        used: 2 * MIB,
        offset: 0,
        granted: 2 * MIB,
    });
    assert_eq!(
        offset_at(spent, None, 0, 2 * MIB, true, 0, None, t0),
        (2 * MIB, None)
    );
    // Unless the bound it took as known was itself in doubt: a second
    // restart within the doubt (or a first ask left unanswered) keeps it
    // in doubt, to give way as the first would have.
    assert_eq!(
        offset_at(spent, Some(t0), 0, 2 * MIB, true, 0, None, t0),
        (2 * MIB, Some(t0 + DOUBT_TTL))
    );
    // Within one run, no doubt stays none.
    assert_eq!(
        offset_at(after, None, 2 * MIB, 4 * MIB, false, 0, Some(MIB), late),
        (10 * MIB, None)
    );
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
