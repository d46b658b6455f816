//! Unit tests of the gateway's session counts.

use super::*;

#[test]
fn sessions_are_kept_while_tunnels_reports_or_recent_use_need_them() {
    let minute = Duration::from_secs(60);
    assert!(keep(1, (0, 0), (0, 0), 10 * minute), "open tunnel");
    assert!(keep(0, (1, 1), (2, 1), 10 * minute), "unreported bytes");
    assert!(keep(0, (2, 1), (2, 1), minute), "used recently");
    assert!(!keep(0, (2, 1), (2, 1), IDLE_FORGET));
}

#[test]
fn totals_never_go_down_when_sessions_are_forgotten() {
    let sessions = Sessions::default();
    let s = sessions.attach("s1");
    s.up.fetch_add(100, Ordering::Relaxed);
    s.down.fetch_add(1_000, Ordering::Relaxed);
    s.detach();
    sessions.mark_reported(&[("s1".into(), 100, 1_000, s.epoch)]);
    let t = sessions.attach("s2");
    t.down.fetch_add(5, Ordering::Relaxed);
    assert_eq!(sessions.totals(), (100, 1_005));
    // Long after: s1 is forgotten, s2 (a tunnel open) stays.
    sessions.prune(Instant::now() + IDLE_FORGET);
    assert_eq!(sessions.snapshot().len(), 1);
    assert_eq!(sessions.totals(), (100, 1_005));
    t.down.fetch_add(5, Ordering::Relaxed);
    assert_eq!(sessions.totals(), (100, 1_010));
}

#[test]
fn only_changed_totals_are_pending() {
    let sessions = Sessions::default();
    let s = sessions.attach("s1");
    assert!(sessions.pending().is_empty());
    s.up.fetch_add(7, Ordering::Relaxed);
    assert_eq!(sessions.pending(), vec![("s1".to_owned(), 7, 0, s.epoch)]);
    sessions.mark_reported(&sessions.pending());
    assert!(sessions.pending().is_empty());
    assert_eq!(sessions.open_ids(), vec!["s1".to_owned()]);
    s.detach();
    assert!(sessions.open_ids().is_empty());
}

#[test]
fn restored_totals_are_reported_again_and_the_session_is_counted_afresh() {
    let sessions = Sessions::default();
    sessions.restore(vec![("s1".to_owned(), 3, 4, 9)]);
    // The new count is made at once; the restored totals go first, in a
    // report of their own, then the new count at zero.
    let s = sessions.get("s1").expect("counted afresh");
    assert!(
        s.epoch > 9,
        "counted afresh under a later epoch: {}",
        s.epoch
    );
    assert!(sessions.restoring());
    assert_eq!(sessions.pending(), vec![("s1".to_owned(), 3, 4, 9)]);
    let same = sessions.attach("s1");
    assert_eq!(same.epoch, s.epoch, "its tunnels count on it");
    same.down.fetch_add(1, Ordering::Relaxed);
    assert_eq!(sessions.totals(), (3, 5));
    assert_eq!(same.used(), 1);
    // Spooled until reported again.
    let mut spooled = sessions.snapshot();
    spooled.sort_unstable();
    assert_eq!(
        spooled,
        vec![("s1".to_owned(), 0, 1, s.epoch), ("s1".to_owned(), 3, 4, 9)]
    );
    sessions.mark_reported(&sessions.pending());
    assert!(!sessions.restoring());
    assert_eq!(sessions.pending(), vec![("s1".to_owned(), 0, 1, s.epoch)]);
    sessions.mark_reported(&sessions.pending());
    assert!(sessions.pending().is_empty());
    assert_eq!(sessions.snapshot(), vec![("s1".to_owned(), 0, 1, s.epoch)]);
    assert_eq!(sessions.totals(), (3, 5), "totals never go down");
}

#[test]
fn a_restored_total_is_kept_until_that_very_total_is_acknowledged() {
    let sessions = Sessions::default();
    sessions.restore(vec![("s1".to_owned(), 3, 4, 9)]);
    // Another epoch's or other totals acknowledged: still pending.
    sessions.mark_reported(&[("s1".to_owned(), 3, 4, 8), ("s1".to_owned(), 3, 5, 9)]);
    assert!(sessions.pending().contains(&("s1".to_owned(), 3, 4, 9)));
    sessions.mark_reported(&[("s1".to_owned(), 3, 4, 9)]);
    let fresh = sessions.get("s1").expect("counted afresh").epoch;
    assert_eq!(sessions.pending(), vec![("s1".to_owned(), 0, 0, fresh)]);
    sessions.mark_reported(&sessions.pending());
    assert!(sessions.pending().is_empty());
}

#[test]
fn a_session_counted_afresh_gets_a_later_epoch() {
    let sessions = Sessions::default();
    sessions.restore(vec![("old".to_owned(), 3, 4, i64::MAX - 1)]);
    let s = sessions.attach("s1");
    assert_eq!(s.epoch, i64::MAX, "past every restored epoch");
    let sessions = Sessions::default();
    let s = sessions.attach("s1");
    let before = chrono::Utc::now().timestamp_millis();
    assert!(s.epoch > 0 && s.epoch <= before, "{}", s.epoch);
    assert_eq!(sessions.attach("s1").epoch, s.epoch, "the same count");
    s.up.fetch_add(1, Ordering::Relaxed);
    sessions.mark_reported(&sessions.pending());
    s.detach();
    s.detach();
    // Forgotten, then met again: a new count, after the first.
    sessions.prune(Instant::now() + IDLE_FORGET);
    assert!(sessions.snapshot().is_empty());
    let again = sessions.attach("s1");
    assert!(again.epoch > s.epoch);
    // A report of the forgotten count marks nothing of the new one.
    again.up.fetch_add(2, Ordering::Relaxed);
    sessions.mark_reported(&[("s1".into(), 2, 0, s.epoch)]);
    assert_eq!(
        sessions.pending(),
        vec![("s1".to_owned(), 2, 0, again.epoch)]
    );
}

#[test]
fn close_orders_fire_their_sessions_only() {
    let sessions = Sessions::default();
    let (a, b) = (sessions.attach("a"), sessions.attach("b"));
    let (ra, rb) = (a.closed(), b.closed());
    sessions.close(&[CloseOrder {
        session_id: "a".into(),
        reason: "revoked".into(),
    }]);
    assert_eq!(*ra.borrow(), Closing::Closed);
    assert_eq!(*rb.borrow(), Closing::Open);
    sessions.going_away();
    assert_eq!(*ra.borrow(), Closing::Closed, "the first reason stays");
    assert_eq!(*rb.borrow(), Closing::GoingAway);
    let late = sessions.attach("c");
    assert_eq!(*late.closed().borrow(), Closing::GoingAway);
}

#[test]
fn without_epochs_a_restored_session_goes_on_from_what_earlier_runs_counted() {
    let sessions = Sessions::default();
    // Two runs' counts in the spool (a crash before the first was
    // reported again): both are the base.
    sessions.restore(vec![("s1".to_owned(), 3, 4, 9)]);
    sessions.restore(vec![("s1".to_owned(), 1, 1, 11)]);
    let s = sessions.attach("s1");
    s.up.fetch_add(2, Ordering::Relaxed);
    let live = ("s1".to_owned(), 2, 0, s.epoch);
    assert_eq!(
        sessions.without_epochs(&live),
        ("s1".to_owned(), 6, 5, s.epoch)
    );
    // The restored totals are told as they are.
    let restored = ("s1".to_owned(), 3, 4, 9);
    assert_eq!(sessions.without_epochs(&restored), restored);
    // Another session has no base.
    let other = ("s2".to_owned(), 7, 7, 1);
    assert_eq!(sessions.without_epochs(&other), other);
}

#[test]
fn closing_all_counts_tunnels_not_sessions() {
    let sessions = Sessions::default();
    let (a, _a2, b) = (
        sessions.attach("s1"),
        sessions.attach("s1"),
        sessions.attach("s2"),
    );
    let idle = sessions.attach("s3");
    idle.detach();
    assert_eq!(sessions.close_all(), 3, "two tunnels of s1, one of s2");
    assert_eq!(*a.closed().borrow(), Closing::Closed);
    assert_eq!(*b.closed().borrow(), Closing::Closed);
}
