//! Tests of the validation cache.

use super::*;

const S: Duration = Duration::from_secs(1);

fn validations(capacity: usize) -> Validations {
    Validations::new(
        capacity,
        Lifetimes {
            fresh: 5 * S,
            outage: 60 * S,
            negative: 5 * S,
        },
        Limits {
            calls: 16,
            calls_per_source: 4,
            waiting_per_call: 16,
            waiting_per_source: 16,
        },
    )
}

fn go(session: &str) -> Verdict {
    Verdict::Go(Arc::new(Route {
        device: Arc::from("d"),
        session_id: session.into(),
        node_id: "n".into(),
        node: "10.0.0.1:1".into(),
        method: "aes-128-gcm".into(),
        password: "k".into(),
    }))
}

fn put(v: &Validations, token: &str, verdict: Verdict, now: Instant) {
    v.cache
        .insert(token.into(), v.lifetimes.entry(verdict, now, None));
}

#[test]
fn close_orders_forget_the_verdicts_of_their_sessions_only() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "a", go("s1"), now);
    put(&v, "b", go("s2"), now);
    put(&v, "c", Verdict::Unknown, now);
    v.forget_sessions(&["s1"]);
    assert!(v.cache.get("a").is_none());
    assert!(v.cache.get("b").is_some());
    assert!(v.cache.get("c").is_some());
    v.forget("b");
    assert!(v.cache.get("b").is_none());
}

#[test]
fn a_withdrawn_node_takes_the_verdicts_routing_to_it_and_no_others() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "a", go("s1"), now);
    put(&v, "c", Verdict::Unknown, now);
    let begun = v.epoch();
    v.forget_node("elsewhere");
    assert!(v.cache.get("a").is_some() && v.cache.get("c").is_some());
    v.forget_node("n");
    assert!(v.cache.get("a").is_none());
    assert!(v.cache.get("c").is_some());
    assert!(!v.keep(begun, "a", v.lifetimes.entry(go("s1"), now, None)));
}

#[test]
fn a_refresh_drops_only_the_verdict_of_its_own_epoch() {
    let (v, now) = (validations(16), Instant::now());
    let begun = v.epoch();
    put(&v, "a", go("s1"), now);
    v.drop_if_current(begun, "a");
    assert!(v.cache.get("a").is_none());
    let begun = v.epoch();
    v.forget("x");
    put(&v, "a", go("s2"), now);
    v.drop_if_current(begun, "a");
    assert!(v.cache.get("a").is_some(), "cached after the call began");
}

#[test]
fn an_answer_to_a_call_begun_before_an_invalidation_is_not_kept() {
    let (v, now) = (validations(16), Instant::now());
    let begun = v.epoch();
    v.forget_sessions(&["elsewhere"]);
    assert!(!v.keep(begun, "a", v.lifetimes.entry(go("s1"), now, None)));
    assert!(v.cache.get("a").is_none());
    let begun = v.epoch();
    assert!(v.keep(begun, "a", v.lifetimes.entry(go("s1"), now, None)));
    assert!(v.cache.get("a").is_some());
    for forget in [
        &(|v: &Validations| v.forget("x")) as &dyn Fn(&Validations),
        &|v: &Validations| v.forget_all(),
    ] {
        let begun = v.epoch();
        forget(&v);
        assert!(!v.keep(begun, "b", v.lifetimes.entry(go("s2"), now, None)));
    }
}

#[test]
fn an_ended_session_is_forgotten_once_for_a_token() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "a", go("s1"), now);
    put(&v, "b", go("s1"), now);
    let begun = v.epoch();
    v.forget_ended("a", "s1");
    assert!(v.cache.get("a").is_none() && v.cache.get("b").is_none());
    assert_ne!(v.epoch(), begun, "a new epoch");
    // A request that heard of the same end after the device was
    // routed anew (or while it is) changes nothing.
    put(&v, "a", go("s2"), now);
    let begun = v.epoch();
    v.forget_ended("a", "s1");
    v.forget_ended("c", "s1");
    assert_eq!(v.epoch(), begun, "the call under way stays shared");
    assert!(v.cache.get("a").is_some());
}

#[test]
fn access_events_forget_everything() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "a", go("s1"), now);
    put(&v, "b", Verdict::Refused(Reason::QuotaExceeded), now);
    v.forget_all();
    assert!(v.cache.is_empty());
}

#[test]
fn pruning_keeps_what_an_outage_may_still_use() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "pos", go("s1"), now);
    put(&v, "neg", Verdict::Unknown, now);
    v.prune(now + 10 * S);
    assert!(
        v.cache.get("pos").is_some(),
        "stale but usable in an outage"
    );
    assert!(v.cache.get("neg").is_none());
    v.prune(now + 60 * S);
    assert!(v.cache.is_empty());
}

#[test]
fn the_device_of_a_credential_is_known_while_its_answer_is_kept() {
    let (v, now) = (validations(16), Instant::now());
    put(&v, "a", go("s1"), now);
    put(&v, "u", Verdict::Unknown, now);
    assert_eq!(v.known_device("a").as_deref(), Some("d"));
    assert_eq!(v.known_device("u"), None);
    assert_eq!(v.known_device("never-seen"), None);
    v.prune(now + 10 * S);
    assert_eq!(v.known_device("a").as_deref(), Some("d"), "stale, kept");
    v.prune(now + 60 * S);
    assert_eq!(v.known_device("a"), None);
}

#[test]
fn a_credential_admitted_once_stays_known_through_what_drops_verdicts() {
    let (v, now) = (validations(16), Instant::now());
    assert!(v.keep(v.epoch(), "a", v.lifetimes.entry(go("s1"), now, None)));
    assert!(v.keep(
        v.epoch(),
        "u",
        v.lifetimes.entry(Verdict::Unknown, now, None)
    ));
    v.forget_all();
    v.forget_sessions(&["s1"]);
    v.prune(now + 3600 * S);
    assert!(v.known_device("a").is_none());
    assert!(v.admitted_before("a"), "admitted once");
    assert!(!v.admitted_before("u"), "never admitted");
    assert!(!v.admitted_before("never-seen"));
}

#[test]
fn the_cache_is_bounded() {
    let (v, now) = (validations(100), Instant::now());
    for i in 0..10_000 {
        put(&v, &format!("t{i}"), Verdict::Unknown, now);
    }
    assert!(v.cache.len() <= 100, "{} entries", v.cache.len());
}
