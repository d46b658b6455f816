//! Unit tests of `witness`.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn tie(conn: i64, session: &str) -> ConnTie {
    ConnTie {
        conn,
        session_id: session.into(),
    }
}

#[test]
fn connections_are_asked_about_until_tied_then_counted_per_session() {
    let w = Witness::new();
    let a = w.open(addr(4000));
    let b = w.open(addr(4001));
    let p = w.pending(true);
    assert!(p.sessions.is_empty());
    assert_eq!(p.conns.len(), 2, "asked about even before any byte");
    a.up.fetch_add(10, Ordering::Relaxed);
    b.down.fetch_add(7, Ordering::Relaxed);
    let p = w.pending(true);
    let id_a = p
        .conns
        .iter()
        .find(|c| c.peer == "127.0.0.1:4000")
        .expect("a")
        .conn;
    let id_b = p
        .conns
        .iter()
        .find(|c| c.peer == "127.0.0.1:4001")
        .expect("b")
        .conn;
    // Both carry session s.
    w.mark_reported(&p, &[tie(id_a, "s"), tie(id_b, "s")]);
    let p = w.pending(true);
    assert!(p.conns.is_empty());
    assert_eq!(p.sessions.len(), 1);
    let s = &p.sessions[0];
    assert_eq!(
        (s.session_id.as_str(), s.bytes_up, s.bytes_down),
        ("s", 10, 7)
    );
    w.mark_reported(&p, &[]);
    assert!(w.pending(true).sessions.is_empty(), "nothing moved since");
    // One closes after more bytes: its totals stay in the session's.
    b.down.fetch_add(3, Ordering::Relaxed);
    b.open.store(false, Ordering::Release);
    a.up.fetch_add(1, Ordering::Relaxed);
    let p = w.pending(true);
    assert_eq!((p.sessions[0].bytes_up, p.sessions[0].bytes_down), (11, 10));
    let epoch = p.sessions[0].epoch;
    w.mark_reported(&p, &[]);
    assert_eq!(w.sessions(), 1, "a is still open");
    // The last closes: once its totals are acknowledged, the session
    // is forgotten; met again, it counts under a larger epoch.
    a.open.store(false, Ordering::Release);
    let p = w.pending(true);
    assert!(p.sessions.is_empty(), "nothing new to say");
    w.mark_reported(&p, &[]);
    assert!(w.is_empty());
    let c = w.open(addr(4002));
    c.up.fetch_add(5, Ordering::Relaxed);
    let p = w.pending(true);
    w.mark_reported(&p, &[tie(p.conns[0].conn, "s")]);
    let p = w.pending(true);
    assert_eq!(p.sessions[0].bytes_up, 5);
    assert!(p.sessions[0].epoch > epoch);
}

#[test]
fn unanswered_totals_are_sent_again_and_unlinked_connections_given_up() {
    let w = Witness::new();
    let a = w.open(addr(5000));
    let p = w.pending(true);
    w.mark_reported(&p, &[tie(p.conns[0].conn, "s")]);
    a.up.fetch_add(9, Ordering::Relaxed);
    let first = w.pending(true);
    // The report failed: nothing is marked, the same totals go again.
    a.up.fetch_add(1, Ordering::Relaxed);
    assert_eq!(w.pending(true).sessions[0].bytes_up, 10);
    assert_eq!(first.sessions[0].bytes_up, 9);
    // A connection no gateway linked: asked about, then given up.
    let stray = w.open(addr(6000));
    for _ in 0..MAX_ASKS {
        let p = w.pending(true);
        assert!(p.conns.iter().any(|c| c.peer == "127.0.0.1:6000"));
        w.mark_reported(&p, &[]);
    }
    assert!(w.pending(true).conns.is_empty());
    drop(stray);
    // Closed ones are given up sooner.
    let quick = w.open(addr(6001));
    quick.open.store(false, Ordering::Release);
    for _ in 0..MAX_ASKS_CLOSED {
        let p = w.pending(true);
        w.mark_reported(&p, &[]);
    }
    assert!(w.pending(true).conns.is_empty());
}

#[test]
fn reports_split_into_parts_that_fit_a_body() {
    let w = Witness::new();
    for i in 0..(WITNESS_CHUNK + 3) {
        w.open(addr(10_000 + i as u16));
    }
    let parts = parts(w.pending(true));
    assert_eq!(parts.len(), 2);
    assert!(
        parts
            .iter()
            .all(|p| p.sessions.len() + p.conns.len() <= WITNESS_CHUNK)
    );
}

#[test]
fn asks_between_totals_leave_the_totals_for_the_next_report() {
    let w = Witness::new();
    let a = w.open(addr(6000));
    a.up.fetch_add(9, Ordering::Relaxed);
    let p = w.pending(false);
    w.mark_reported(&p, &[tie(p.conns[0].conn, "s")]);
    a.up.fetch_add(1, Ordering::Relaxed);
    let b = w.open(addr(6001));
    let p = w.pending(false);
    assert!(p.sessions.is_empty(), "an ask carries no totals");
    assert_eq!(p.conns.len(), 1, "only the new connection");
    w.mark_reported(&p, &[]);
    let p = w.pending(true);
    assert_eq!((p.sessions.len(), p.sessions[0].bytes_up), (1, 10));
    assert_eq!(p.conns.len(), 1, "b is still asked about");
    w.mark_reported(&p, &[]);
    // Its last connection closed: the session's final totals go with the
    // next ask, not the next totals.
    a.up.fetch_add(5, Ordering::Relaxed);
    a.open.store(false, Ordering::Release);
    let p = w.pending(false);
    assert_eq!((p.sessions.len(), p.sessions[0].bytes_up), (1, 15));
    w.mark_reported(&p, &[]);
    assert_eq!(w.sessions(), 0, "reported whole, then forgotten");
    drop(b);
}
