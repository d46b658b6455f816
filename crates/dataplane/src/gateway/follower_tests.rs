use super::*;

fn reported(b: &Beats) -> Vec<String> {
    lock(&b.unreachable).drain().collect()
}

#[test]
fn a_node_that_stays_unreached_is_reported_again_at_its_latest_address() {
    let b = Beats::default();
    b.unreachable("n1", "10.0.0.5:8388");
    assert_eq!(reported(&b), ["n1"], "the first failure");
    let t0 = Instant::now();
    b.still_unreached("n1", t0);
    assert!(reported(&b).is_empty(), "not at every failed dial");
    b.still_unreached("n1", t0 + REPORT_AGAIN + Duration::from_secs(1));
    assert_eq!(reported(&b), ["n1"], "again while it stays unreached");
    // Moved: dialled at the new address, not at the old one (where
    // its process may still answer).
    b.unreachable("n1", "10.0.0.5:9999");
    assert_eq!(lock(&b.unreached)["n1"].addr, "10.0.0.5:9999");
    assert_eq!(reported(&b), ["n1"], "the move's own report");
    // Reached: no longer dialled nor reported.
    b.reachable("n1");
    b.still_unreached("n1", t0 + REPORT_AGAIN * 10);
    assert!(reported(&b).is_empty());
    assert!(lock(&b.unreached).is_empty());
}

/// A node reported unreachable again while down, and reached before
/// that report went: the heartbeat says reachable, not unreachable
/// (it held the node down for a minute after it came back).
#[test]
fn the_latest_fact_about_a_node_is_the_one_reported() {
    let b = Beats::default();
    b.unreachable("n1", "10.0.0.5:8388");
    let (down, up) = b.take_reports();
    assert_eq!((down, up), (vec!["n1".to_owned()], vec![]));
    let t0 = Instant::now();
    b.still_unreached("n1", t0 + REPORT_AGAIN + Duration::from_secs(1));
    b.reachable("n1");
    assert_eq!(b.take_reports(), (vec![], vec!["n1".to_owned()]));
    // And the other way round: a failure after a success.
    b.reachable("n2");
    b.unreachable("n2", "10.0.0.6:8388");
    assert_eq!(b.take_reports(), (vec!["n2".to_owned()], vec![]));
    // A failed heartbeat's reports go with the next one, unless a
    // newer fact came meanwhile.
    b.put_back((
        vec!["n3".to_owned(), "n4".to_owned()],
        vec!["n5".to_owned()],
    ));
    b.reachable("n4");
    let (mut down, mut up) = b.take_reports();
    down.sort();
    up.sort();
    assert_eq!(
        (down, up),
        (
            vec!["n3".to_owned()],
            vec!["n4".to_owned(), "n5".to_owned()]
        )
    );
}

#[test]
fn urls_are_compared_as_places() {
    assert!(same_url(
        "https://gw1.example.com",
        "https://GW1.example.com:443/"
    ));
    assert!(same_url(
        "https://127.0.0.1:8443",
        "https://127.0.0.1:8443/"
    ));
    assert!(!same_url(
        "https://127.0.0.1:8443",
        "https://127.0.0.1:8444"
    ));
    assert!(!same_url(
        "https://gw1.example.com",
        "https://gw2.example.com"
    ));
}
