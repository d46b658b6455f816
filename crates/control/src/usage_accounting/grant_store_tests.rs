//! Unit tests of the stored grants' bookkeeping.

use super::*;

fn row(gateway_used: i64, granted: i64, offset: i64, until: NaiveDateTime) -> SessionRow {
    SessionRow {
        device_id: "d".into(),
        gateway_node_id: None,
        end_reason: None,
        recorded: 0,
        gateway_used: Some(gateway_used),
        ledger_offset: Some(offset),
        granted: Some(granted),
        valid_until: Some(until),
        doubt_until: None,
        gateway_base: 0,
        node_base: None,
    }
}

#[test]
fn the_room_kept_is_the_live_grant_past_the_count_in_the_gateways_terms() {
    let t = now();
    let later = t + chrono::Duration::seconds(10);
    // Limit 1,000 in the gateway's terms (1,100 stored with an offset
    // of 100), last asked at 400, asking now at 600.
    assert_eq!(row(400, 1_100, 100, later).room(600, false, t), 400);
    assert_eq!(
        row(400, 1_100, 100, later).room(1_200, false, t),
        0,
        "spent"
    );
    assert_eq!(row(400, 1_100, 100, t).room(600, false, t), 0, "expired");
    // The gateway restarted and counts from zero, or says it counts
    // afresh: nothing is kept.
    assert_eq!(row(400, 1_100, 100, later).room(10, false, t), 0);
    assert_eq!(row(400, 1_100, 100, later).room(600, true, t), 0);
    let none = SessionRow {
        granted: None,
        valid_until: None,
        ..row(0, 0, 0, later)
    };
    assert_eq!(none.room(0, false, t), 0, "no grant");
}
