//! Unit tests of `plan`.

use chrono::Duration;

use super::*;

fn at(h: u32, m: u32) -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
        .and_then(|d| d.and_hms_opt(h, m, 0))
        .expect("time")
}

fn stored(user: UserId, up: i64, down: i64, hour: Option<NaiveDateTime>) -> Stored {
    Stored {
        id: SessionId::random(),
        user_id: user,
        bytes_up: up,
        bytes_down: down,
        last_seq: 3,
        end_reason: None,
        hour_start: hour,
        hour_up: if hour.is_some() { up } else { 0 },
        hour_down: if hour.is_some() { down } else { 0 },
        witness_epoch: 0,
        witness_base_up: 0,
        witness_base_down: 0,
        witness_up: 0,
        witness_down: 0,
        gateway_epoch: 0,
        gateway_base_up: 0,
        gateway_base_down: 0,
        // Long enough ago that the bound on what a session can move never
        // cuts (tests of the bound set their own start).
        started_at: at(0, 0) - Duration::days(365 * 1000),
        ended_at: None,
        witness_cap: None,
    }
}

fn charge(user_id: UserId, delta: i64) -> Charge {
    Charge { user_id, delta }
}

fn spent(user_id: UserId, used: i64, limit: Option<i64>) -> Charged {
    Charged {
        id: crate::ids::SubscriptionId::random(),
        user_id,
        traffic_used_bytes: used,
        traffic_limit_bytes: limit,
        period_start: crate::db::models::now(),
    }
}

fn merged(reports: &[(SessionId, i64, i64, i64)]) -> Vec<(SessionId, Merged)> {
    let mut latest = MergedLatest::new();
    merge_gateway(
        &mut latest,
        reports
            .iter()
            .map(|&(id, seq, up, down)| (id, 0, Totals { seq, up, down })),
    );
    latest.into_iter().collect()
}

fn gw(seq: i64, up: i64, down: i64) -> Merged {
    Merged {
        gateway: vec![(0, Totals { seq, up, down })],
        node: Vec::new(),
    }
}

#[test]
fn several_reports_of_one_session_merge_to_the_largest_totals() {
    let s = SessionId::random();
    let m = merged(&[(s, 5, 100, 10), (s, 4, 90, 20), (s, 6, 80, 5)]);
    assert_eq!(m, vec![(s, gw(6, 100, 20))]);
    assert_eq!(newest_of(&m, s), Some(&gw(6, 100, 20)));
    assert_eq!(newest_of(&m, SessionId::random()), None);
}

#[test]
fn only_the_increase_over_what_is_stored_counts() {
    let user = UserId::random();
    let now = at(10, 30);
    let s = stored(user, 100, 50, Some(hour_of(now)));
    let plan = plan_chunk(
        std::slice::from_ref(&s),
        &merged(&[(s.id, 9, 150, 50)]),
        now,
    );
    assert_eq!(
        plan.grown,
        vec![Growth {
            id: s.id,
            up: 150,
            down: 50,
            seq: 9,
            hour_up: 150,
            hour_down: 50,
            w_epoch: 0,
            w_base_up: 0,
            w_base_down: 0,
            w_up: 0,
            w_down: 0,
            g_epoch: 0,
            g_base_up: 0,
            g_base_down: 0,
        }]
    );
    assert!(plan.closed.is_empty());
    assert_eq!(plan.charges, vec![charge(user, 50)]);
}

#[test]
fn replays_and_older_totals_change_nothing() {
    let user = UserId::random();
    let now = at(10, 30);
    let s = stored(user, 100, 50, Some(hour_of(now)));
    let same = plan_chunk(
        std::slice::from_ref(&s),
        &merged(&[(s.id, 3, 100, 50)]),
        now,
    );
    assert_eq!(same, ChunkPlan::default());
    let older = plan_chunk(std::slice::from_ref(&s), &merged(&[(s.id, 2, 90, 40)]), now);
    assert_eq!(older, ChunkPlan::default());
    // One direction older, the other newer: only the newer one counts.
    let mixed = plan_chunk(std::slice::from_ref(&s), &merged(&[(s.id, 4, 90, 70)]), now);
    assert_eq!(mixed.grown[0].up, 100);
    assert_eq!(mixed.grown[0].down, 70);
    assert_eq!(mixed.charges, vec![charge(user, 20)]);
    // A session absent from the reports is left alone.
    assert_eq!(
        plan_chunk(&[s], &merged(&[(SessionId::random(), 1, 9, 9)]), now),
        ChunkPlan::default()
    );
}

#[test]
fn a_new_hour_closes_the_last_one_into_the_ledger() {
    let user = UserId::random();
    let earlier = at(9, 0);
    let now = at(10, 5);
    let s = stored(user, 100, 50, Some(earlier));
    let plan = plan_chunk(
        std::slice::from_ref(&s),
        &merged(&[(s.id, 7, 130, 60)]),
        now,
    );
    assert_eq!(
        plan.closed,
        vec![ClosedHour {
            session_id: s.id,
            seq: 3,
            total_up: 100,
            total_down: 50,
            delta_up: 100,
            delta_down: 50,
            hour: earlier
        }]
    );
    assert_eq!((plan.grown[0].hour_up, plan.grown[0].hour_down), (30, 10));
    // Within the same hour the counts add up instead.
    let later = at(10, 59) + Duration::seconds(59);
    let again = Stored {
        bytes_up: 130,
        bytes_down: 60,
        hour_start: Some(hour_of(now)),
        hour_up: 30,
        hour_down: 10,
        ..s.clone()
    };
    let plan = plan_chunk(&[again], &merged(&[(s.id, 8, 140, 60)]), later);
    assert!(plan.closed.is_empty());
    assert_eq!((plan.grown[0].hour_up, plan.grown[0].hour_down), (40, 10));
    // A session that never counted anything closes no empty hour.
    let fresh = stored(user, 0, 0, None);
    let plan = plan_chunk(
        std::slice::from_ref(&fresh),
        &merged(&[(fresh.id, 1, 5, 5)]),
        now,
    );
    assert!(plan.closed.is_empty());
    assert_eq!((plan.grown[0].hour_up, plan.grown[0].hour_down), (5, 5));
}

#[test]
fn charges_are_one_per_account_and_saturate() {
    let user = UserId::random();
    let other = UserId::random();
    let now = at(12, 0);
    let a = stored(user, 0, 0, None);
    let b = stored(user, 0, 0, None);
    let c = stored(other, 0, 0, None);
    let plan = plan_chunk(
        &[a.clone(), b.clone(), c.clone()],
        &merged(&[
            (a.id, 1, i64::MAX, i64::MAX),
            (b.id, 1, i64::MAX, 1),
            (c.id, 1, 10, 20),
        ]),
        now,
    );
    let mut want = vec![charge(user, i64::MAX), charge(other, 30)];
    want.sort_by_key(|c| c.user_id);
    assert_eq!(plan.charges, want);
}

#[test]
fn sessions_of_spent_accounts_end_and_rows_learn_what_they_did() {
    let user = UserId::random();
    let other = UserId::random();
    let mut done = stored(user, 0, 0, None);
    done.end_reason = Some(EndReason::Idle);
    let open = stored(user, 0, 0, None);
    let bystander = stored(other, 0, 0, None);
    let charged = [spent(user, 100, Some(100)), spent(other, 100, None)];
    let ended = ending(&[done, open.clone(), bystander.clone()], &charged);
    assert_eq!(ended, vec![open.id]);

    let m = merged(&[(open.id, 2, 10, 10), (bystander.id, 2, 5, 5)]);
    let kept = vec![
        (1, vec![(open.id, 1, 9, 9, 0), (bystander.id, 2, 5, 5, 0)]),
        (2, vec![(open.id, 2, 10, 10, 0)]),
    ];
    let grown: HashSet<SessionId> = [open.id, bystander.id].into();
    let ended: HashSet<SessionId> = ended.into_iter().collect();
    let out = outcomes(&kept, &m, &grown, &ended);
    assert_eq!(out[0].1.counted, 1, "the bystander's newest total counted");
    assert_eq!(out[1].1.counted, 1);
    assert_eq!(out[0].1.close.len(), 1);
    assert_eq!(out[1].1.close[0].reason, "quota_exceeded");
    assert_eq!(out[1].1.close[0].session_id, open.id.to_string());
}

fn node(epoch: i64, up: i64, down: i64) -> NodeTotals {
    NodeTotals { epoch, up, down }
}

#[test]
fn node_totals_merge_per_epoch_in_epoch_order() {
    let s = SessionId::random();
    let mut latest = MergedLatest::new();
    merge_node(
        &mut latest,
        [
            (s, node(20, 5, 1)),
            (s, node(10, 9, 9)),
            (s, node(20, 3, 7)),
            (s, node(10, 4, 10)),
        ]
        .into_iter(),
    );
    assert_eq!(latest[&s].node, vec![node(10, 9, 10), node(20, 5, 7)]);
    assert!(latest[&s].gateway.is_empty());
}

#[test]
fn once_the_gateway_reports_its_count_is_the_record_and_the_nodes_is_kept() {
    let user = UserId::random();
    let now = at(10, 30);
    let s = stored(user, 0, 0, Some(hour_of(now)));
    let both = |g: Option<Totals>, n: &[NodeTotals]| {
        vec![(
            s.id,
            Merged {
                gateway: g.map(|t| (0, t)).into_iter().collect(),
                node: n.to_vec(),
            },
        )]
    };
    // The gateway is ahead upstream, the node downstream (it counts what
    // it wrote toward the gateway): the gateway's count is recorded.
    let plan = plan_chunk(
        std::slice::from_ref(&s),
        &both(Some(totals(4, 100, 900)), &[node(7, 90, 1_000)]),
        now,
    );
    let g = &plan.grown[0];
    assert_eq!((g.up, g.down, g.seq), (100, 900, 4));
    assert_eq!((g.w_epoch, g.w_up, g.w_down), (7, 90, 1_000));
    assert_eq!(plan.charges, vec![charge(user, 1_000)]);
    // Stored back, the same reports again count nothing.
    let again = Stored {
        bytes_up: 100,
        bytes_down: 900,
        last_seq: 4,
        hour_up: 100,
        hour_down: 900,
        witness_epoch: 7,
        witness_up: 90,
        witness_down: 1_000,
        ..s.clone()
    };
    let replay = both(Some(totals(4, 100, 900)), &[node(7, 90, 1_000)]);
    assert_eq!(
        plan_chunk(std::slice::from_ref(&again), &replay, now),
        ChunkPlan::default()
    );
    // The node's count moves on its own: written, not charged.
    let plan = plan_chunk(
        std::slice::from_ref(&again),
        &both(None, &[node(8, 10, 0)]),
        now,
    );
    assert!(plan.charges.is_empty());
    let g = &plan.grown[0];
    assert_eq!((g.up, g.down), (100, 900));
    assert_eq!(
        (g.w_epoch, g.w_base_up, g.w_up, g.w_down),
        (8, 90, 100, 1_000)
    );
    // A session no gateway reported: the node's count is the record.
    let unreported = Stored {
        last_seq: 0,
        ..s.clone()
    };
    let plan = plan_chunk(
        std::slice::from_ref(&unreported),
        &both(None, &[node(7, 90, 1_000)]),
        now,
    );
    assert_eq!((plan.grown[0].up, plan.grown[0].down), (90, 1_000));
}

/// A gateway that died: its count stands until it counts again, under a
/// new epoch, on top of what the node counted meanwhile (across the
/// node's own restart).
#[test]
fn a_gateway_that_died_is_covered_by_the_node_across_the_nodes_restart() {
    let user = UserId::random();
    let now = at(10, 30);
    let mut s = stored(user, 0, 0, Some(hour_of(now)));
    let mut recorded = Vec::new();
    let passes: [Merged; 6] = [
        Merged {
            gateway: vec![(1, totals(1, 10, 1_000))],
            node: vec![node(5, 10, 1_100)],
        },
        // The gateway is gone; the node counts on, restarts, counts on.
        Merged {
            gateway: vec![],
            node: vec![node(5, 12, 3_000), node(9, 0, 200)],
        },
        Merged {
            gateway: vec![],
            node: vec![node(9, 1, 700)],
        },
        // A restarted gateway without its spool reports from zero, in a
        // later epoch: added to what was recorded; the node's count, which
        // holds what the dead gateway never reported, is larger.
        Merged {
            gateway: vec![(2, totals(1, 2, 300))],
            node: vec![],
        },
        // The node counts the new gateway's bytes too (its count goes on
        // past the gateway's, nothing twice).
        Merged {
            gateway: vec![],
            node: vec![node(11, 2, 300)],
        },
        // The new gateway's count grows past what it has seen of the node.
        Merged {
            gateway: vec![(2, totals(2, 2, 3_500))],
            node: vec![],
        },
    ];
    for m in passes {
        let plan = plan_chunk(std::slice::from_ref(&s), &[(s.id, m)], now);
        if let Some(g) = plan.grown.first() {
            s = Stored {
                bytes_up: g.up,
                bytes_down: g.down,
                last_seq: g.seq,
                hour_up: g.hour_up,
                hour_down: g.hour_down,
                witness_epoch: g.w_epoch,
                witness_base_up: g.w_base_up,
                witness_base_down: g.w_base_down,
                witness_up: g.w_up,
                witness_down: g.w_down,
                gateway_epoch: g.g_epoch,
                gateway_base_up: g.g_base_up,
                gateway_base_down: g.g_base_down,
                ..s
            };
        }
        recorded.push((s.bytes_up, s.bytes_down));
    }
    assert_eq!(
        recorded,
        vec![
            (10, 1_000),
            (10, 1_000),
            (10, 1_000),
            (13, 3_700),
            (15, 4_000),
            (15, 4_500)
        ]
    );
}

fn totals(seq: i64, up: i64, down: i64) -> Totals {
    Totals { seq, up, down }
}

#[test]
fn new_epochs_never_record_past_what_the_session_could_move() {
    let user = UserId::random();
    let now = at(10, 30);
    let mut s = stored(user, 0, 0, Some(hour_of(now)));
    s.started_at = now - Duration::seconds(1);
    let most = super::super::bounds::bound(s.started_at, None, now);
    // A broken or stolen gateway token sends a new epoch per report, each
    // at the bound: recorded stays at the bound.
    for epoch in 1..4 {
        let m = Merged {
            gateway: vec![(epoch, totals(epoch, most, most))],
            node: vec![],
        };
        let plan = plan_chunk(std::slice::from_ref(&s), &[(s.id, m)], now);
        if let Some(g) = plan.grown.first() {
            s.bytes_up = g.up;
            s.bytes_down = g.down;
            s.gateway_epoch = g.g_epoch;
            s.gateway_base_up = g.g_base_up;
            s.gateway_base_down = g.g_base_down;
        }
        assert_eq!((s.bytes_up, s.bytes_down), (most, most), "epoch {epoch}");
    }
}

#[test]
fn the_nodes_count_is_recorded_only_as_far_as_the_sessions_grant() {
    let user = UserId::random();
    let now = at(10, 30);
    // Cut off at a 1,000-byte grant: the gateway forwarded 100 up and 895
    // down, the node had written 4,000 down toward it.
    let s = Stored {
        witness_cap: Some(1_000),
        ..stored(user, 0, 0, Some(hour_of(now)))
    };
    let m = Merged {
        gateway: vec![(0, totals(9, 100, 895))],
        node: vec![node(3, 100, 4_000)],
    };
    // The gateway reports: what it let through is recorded, the node's
    // surplus (in the sockets toward the gateway) is not.
    let plan = plan_chunk(std::slice::from_ref(&s), &[(s.id, m.clone())], now);
    let g = &plan.grown[0];
    assert_eq!((g.up, g.down), (100, 895));
    // The node's own count is kept whole (its next epoch counts on top).
    assert_eq!((g.w_up, g.w_down), (100, 4_000));
    assert_eq!(plan.charges, vec![charge(user, 995)]);
    // With no gateway report at all, the node's count is recorded, as
    // far as the grant; without a grant (unlimited), whole.
    let alone = Merged {
        gateway: vec![],
        node: m.node.clone(),
    };
    let unreported = Stored {
        last_seq: 0,
        ..s.clone()
    };
    let plan = plan_chunk(
        std::slice::from_ref(&unreported),
        &[(s.id, alone.clone())],
        now,
    );
    assert_eq!((plan.grown[0].up, plan.grown[0].down), (100, 900));
    let free = Stored {
        witness_cap: None,
        ..unreported
    };
    let plan = plan_chunk(std::slice::from_ref(&free), &[(s.id, alone)], now);
    assert_eq!((plan.grown[0].up, plan.grown[0].down), (100, 4_000));
}
