//! Usage by the clock: a session's finished hour reaches the ledger and a
//! monthly allowance resets at its boundary without any further report
//! (the control plane's usage sweeper, run here at a chosen time on the
//! real database).

mod common;
#[path = "common/plane.rs"]
mod plane;

use httvps_control::db::models::now;
use httvps_control::usage_accounting::sweeper::{Swept, sweep_at};
use httvps_dataplane::backend::Backend;
use httvps_wire::SessionTotals;
use httvps_wire::usage::UsageReport;
use plane::Plane;

/// The plane's gateway as a control-plane client, and the session it
/// opened for the plane's device.
async fn open_session(plane: &Plane) -> (Backend, String) {
    let gw = Backend::new(&plane.server.base, &plane.gateway_token).expect("backend");
    let session = gw
        .assign(&plane.device_token)
        .await
        .expect("assign")
        .session_id;
    (gw, session)
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_hours_reach_the_ledger_and_periods_reset_without_reports() {
    let (plane, _listener) = Plane::prepare(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let (gw, session) = open_session(&plane).await;
    let report = |seq, up, down| UsageReport {
        reports: vec![SessionTotals {
            session_id: session.clone(),
            seq,
            bytes_up: up,
            bytes_down: down,
            epoch: 0,
        }],
    };
    gw.report(&report(1, 1_000, 3_000)).await.expect("report");
    let ledger = |what: &'static str| {
        let (plane, session) = (&plane, session.clone());
        async move {
            plane
                .scalar(&format!(
                    "SELECT CAST(COALESCE(SUM({what}), 0) AS BIGINT) AS n FROM usage_ledger WHERE session_id = '{session}'"
                ))
                .await
        }
    };
    let mut applied = false;
    for _ in 0..50 {
        let n = plane
            .scalar(&format!(
                "SELECT hour_up AS n FROM sessions WHERE id = '{session}'"
            ))
            .await;
        if n == 1_000 {
            applied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(applied, "the report was applied to the session's hour");
    // Within the hour nothing moves; the subscription's period runs.
    let db = &plane.server.state.db;
    assert_eq!(sweep_at(db, now()).await.expect("sweep"), Swept::default());
    assert_eq!(ledger("delta_up").await, 0);

    // The hour is over (as if an hour passed) and the monthly period began
    // 31 days ago: one sweep, no report.
    plane
        .sql(&format!(
            "UPDATE sessions SET hour_start = hour_start - interval '1 hour' WHERE id = '{session}'"
        ))
        .await;
    plane.sql("UPDATE plans SET reset_period = 'monthly'").await;
    plane
        .sql("UPDATE subscriptions SET period_start = date_trunc('second', now() at time zone 'utc') - interval '31 days'")
        .await;
    let expected_start = plane
        .scalar("SELECT CAST(EXTRACT(EPOCH FROM period_start + interval '30 days') AS BIGINT) AS n FROM subscriptions")
        .await;
    assert!(
        plane
            .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
            .await
            > 0
    );
    // The subscriber had used up the allowance: the reset lets it back in.
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = traffic_used_bytes")
        .await;
    let mut quota = db.events().subscribe_quota();
    let mut access = db.events().subscribe_access();
    let swept = sweep_at(db, now()).await.expect("sweep");
    assert_eq!(
        swept,
        Swept {
            hours: 1,
            periods: 1,
            expired: 0,
            witness: 0
        }
    );
    let ev = quota.try_recv().expect("a quota event for the reset");
    assert_eq!(
        (ev.kind, ev.traffic_used_bytes),
        (httvps_control::feed::QuotaEventKind::PeriodReset, 0)
    );
    let ev = access.try_recv().expect("an access event for the reset");
    assert_eq!(ev.reason, "subscription_extended", "{ev:?}");
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = NULL")
        .await;
    assert_eq!(ledger("delta_up").await, 1_000);
    assert_eq!(ledger("delta_down").await, 3_000);
    assert_eq!(
        plane
            .scalar(&format!(
                "SELECT hour_up + hour_down AS n FROM sessions WHERE id = '{session}' AND hour_start IS NULL"
            ))
            .await,
        0
    );
    assert_eq!(
        plane
            .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
            .await,
        0
    );
    assert_eq!(
        plane
            .scalar(
                "SELECT CAST(EXTRACT(EPOCH FROM period_start) AS BIGINT) AS n FROM subscriptions"
            )
            .await,
        expected_start,
        "the new period starts at the boundary, not at the sweep"
    );
    // Sweeping again changes nothing; the next report counts only its gain.
    assert_eq!(sweep_at(db, now()).await.expect("sweep"), Swept::default());
    gw.report(&report(2, 1_500, 3_000)).await.expect("report");
    let mut total = 0;
    for _ in 0..50 {
        total = ledger("delta_up").await
            + plane
                .scalar(&format!(
                    "SELECT hour_up AS n FROM sessions WHERE id = '{session}'"
                ))
                .await;
        if total == 1_500 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(total, 1_500, "ledger and current hour add up to the totals");
    assert_eq!(
        plane
            .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
            .await,
        500,
        "the new period counts only what came after the reset"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn links_of_node_connections_are_pruned_after_an_hour_and_sessions_keep_their_totals() {
    let (plane, _listener) = Plane::prepare(1).await;
    let utc = "date_trunc('second', now() at time zone 'utc')";
    let (_, id) = open_session(&plane).await;
    plane
        .sql(&format!(
            "UPDATE sessions SET bytes_up = 10, bytes_down = 20, witness_epoch = 5, \
             witness_up = 10, witness_down = 20 WHERE id = '{id}'"
        ))
        .await;
    // Three links of the session's connections: two hours, 61 minutes and
    // ten minutes old.
    for (port, ago) in [(1, "2 hours"), (2, "61 minutes"), (3, "10 minutes")] {
        plane
            .sql(&format!(
                "INSERT INTO witness_links SELECT outline_node_id, '10.0.0.1:{port}', id, \
                 {utc} - interval '{ago}' FROM sessions WHERE id = '{id}'"
            ))
            .await;
    }
    let db = &plane.server.state.db;
    let swept = sweep_at(db, now()).await.expect("sweep");
    assert_eq!(swept.witness, 2, "the links older than an hour");
    assert_eq!(
        plane
            .scalar("SELECT count(*) AS n FROM witness_links WHERE peer = '10.0.0.1:3'")
            .await,
        1,
        "the recent link stays"
    );
    assert_eq!(
        plane
            .scalar("SELECT CAST(SUM(bytes_up + bytes_down + witness_up + witness_down) AS BIGINT) AS n FROM sessions")
            .await,
        60,
        "the session keeps its recorded totals and the node's count"
    );
    assert_eq!(
        sweep_at(db, now()).await.expect("sweep").witness,
        0,
        "nothing left to prune"
    );
}

/// A monthly subscription whose length is a whole number of periods ends at
/// a period boundary: it expires with its last period's usage, no new
/// period starts at its end, and its owner's open session ends with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_monthly_subscription_expires_with_its_last_periods_usage() {
    let (plane, _listener) = Plane::prepare(1).await;
    let db = &plane.server.state.db;
    // A session open when the subscription runs out.
    let (_, session) = open_session(&plane).await;
    plane.sql("UPDATE plans SET reset_period = 'monthly'").await;
    plane
        .sql(
            "UPDATE subscriptions SET traffic_used_bytes = 700, \
             starts_at = date_trunc('second', now() at time zone 'utc') - interval '30 days 1 minute', \
             period_start = date_trunc('second', now() at time zone 'utc') - interval '30 days 1 minute', \
             expires_at = date_trunc('second', now() at time zone 'utc') - interval '1 minute'",
        )
        .await;
    let mut quota = db.events().subscribe_quota();
    let swept = sweep_at(db, now()).await.expect("sweep");
    assert_eq!((swept.expired, swept.periods), (1, 0));
    let ev = quota.try_recv().expect("the expiry's event");
    assert_eq!(
        (ev.kind, ev.traffic_used_bytes),
        (httvps_control::feed::QuotaEventKind::Expired, 700)
    );
    assert!(quota.try_recv().is_err(), "no period reset");
    assert_eq!(
        plane
            .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
            .await,
        700
    );
    assert_eq!(
        plane
            .scalar("SELECT CAST(EXTRACT(EPOCH FROM expires_at - period_start) AS BIGINT) AS n FROM subscriptions")
            .await,
        30 * 86_400,
        "the last period still starts where it did"
    );
    // Its session ended with it, for that reason (it stayed open until
    // idle).
    assert_eq!(
        plane
            .scalar(&format!(
                "SELECT count(*) AS n FROM sessions WHERE id = '{session}' \
                 AND end_reason = 'subscription_ended' AND ended_at IS NOT NULL"
            ))
            .await,
        1
    );
}

/// A subscription that lapsed and is replaced by a new grant before the
/// sweeper comes by (a renewal at its `expiresAt`) says `EXPIRED` once,
/// from the grant: the sweeper then finds nothing left to expire, and
/// the event was never sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_after_a_lapse_says_expired_once() {
    let (plane, _listener) = Plane::prepare(1).await;
    let db = &plane.server.state.db;
    let r = plane
        .gql(
            "{subscriptions(first:1){nodes{id user{id} plan{id}}}}",
            serde_json::json!({}),
        )
        .await;
    let node = &r["data"]["subscriptions"]["nodes"][0];
    let (old, user, plan) = (
        node["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
        node["user"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
        node["plan"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
    );
    plane
        .sql("UPDATE subscriptions SET starts_at = starts_at - interval '31 days', period_start = period_start - interval '31 days', expires_at = date_trunc('second', now() at time zone 'utc') - interval '1 second'")
        .await;
    let mut quota = db.events().subscribe_quota();
    let r = plane
        .gql(
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id status}}",
            serde_json::json!({"u": user, "p": plan}),
        )
        .await;
    assert_eq!(r["data"]["grantSubscription"]["status"], "ACTIVE", "{r}");
    let ev = quota.try_recv().expect("an EXPIRED event from the grant");
    assert_eq!(
        (ev.kind, ev.subscription_id.to_string()),
        (httvps_control::feed::QuotaEventKind::Expired, old)
    );
    assert!(quota.try_recv().is_err(), "one event");
    assert_eq!(sweep_at(db, now()).await.expect("sweep").expired, 0);
}
