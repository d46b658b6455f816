//! Admission, the pure core (no I/O; the time is an argument): which
//! verdict a cached control-plane answer gives and for how long, which
//! stale answer is served while it is refreshed, how a failed call is
//! treated (the outage rule).

use std::sync::Arc;
use std::time::{Duration, Instant};

use httvps_wire::device::AssignResponse;
use httvps_wire::{Reason, Secret};

use crate::backend::BackendError;

/// Where a device's tunnels go. Its `Debug` shows no key.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The device, as the caps count it: its id when the control plane
    /// names it, so every credential of one device (its access token, any
    /// of its device JWTs) shares one count; else the credential itself.
    pub device: Arc<str>,
    /// The session the tunnels count against.
    pub session_id: String,
    /// The node, for reachability reports.
    pub node_id: String,
    /// The node's address (`host:port`, IPv6 in brackets).
    pub node: String,
    /// Cipher of the node's key (for the access document).
    pub method: String,
    /// The node's key (for the access document).
    pub password: Secret,
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.device == other.device
            && self.session_id == other.session_id
            && self.node_id == other.node_id
            && self.node == other.node
            && self.method == other.method
            && self.password.expose() == other.password.expose()
    }
}

impl Eq for Route {}

impl Route {
    /// The route in an assignment for `credential`, unless it lacks the
    /// node's address.
    pub fn of(a: AssignResponse, credential: &str) -> Option<Route> {
        let (Some(host), Some(port), Some(node_id)) = (a.host, a.port, a.node_id) else {
            return None;
        };
        Some(Route {
            device: Arc::from(a.device_id.as_deref().unwrap_or(credential)),
            session_id: a.session_id,
            node_id,
            node: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            method: a.method,
            password: a.password,
        })
    }
}

/// What the control plane said about a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Tunnels go there.
    Go(Arc<Route>),
    /// Refused, with a reason (the access document shows it).
    Refused(Reason),
    /// An unknown credential: answered like an unknown path, so the
    /// gateway can't be probed for tokens.
    Unknown,
}

/// A verdict and how long it may be used.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The verdict.
    pub verdict: Verdict,
    /// Used without asking until then.
    pub fresh_until: Instant,
    /// A positive verdict: used until then while one refresh runs (see
    /// [`revalidating`]).
    pub revalidate_until: Instant,
    /// Used while the control plane is down until then (positive verdicts).
    pub stale_until: Instant,
}

impl Entry {
    /// Whether the entry is of no more use at `now` (it can be dropped).
    pub fn spent(&self, now: Instant) -> bool {
        now >= self
            .fresh_until
            .max(self.stale_until)
            .max(self.revalidate_until)
    }

    /// The device a positive verdict names, however old: enough to refuse
    /// a device at its cap without asking again.
    pub fn device(&self) -> Option<Arc<str>> {
        match &self.verdict {
            Verdict::Go(r) => Some(r.device.clone()),
            _ => None,
        }
    }

    /// Whether the entry sends tunnels to the node `node_id`.
    pub fn routes_to_node(&self, node_id: &str) -> bool {
        matches!(&self.verdict, Verdict::Go(r) if r.node_id == node_id)
    }

    /// Whether the entry sends tunnels to one of `sessions`.
    pub fn routes_to(&self, sessions: &[&str]) -> bool {
        matches!(&self.verdict, Verdict::Go(r) if sessions.contains(&r.session_id.as_str()))
    }
}

/// Longest lifetime honoured (keeps `Instant` arithmetic in range whatever
/// the settings say).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long verdicts are used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetimes {
    /// Any verdict, without asking again.
    pub fresh: Duration,
    /// A positive verdict, while the control plane is down.
    pub outage: Duration,
    /// A negative verdict (refused or unknown), without asking again.
    pub negative: Duration,
}

impl Lifetimes {
    /// The cache entry for `verdict`, learnt at `now`. `valid_for` is what
    /// is left of the subscription: no verdict outlives it.
    pub fn entry(&self, verdict: Verdict, now: Instant, valid_for: Option<Duration>) -> Entry {
        let cap = valid_for.unwrap_or(LONGEST).min(LONGEST);
        let (fresh, stale, revalidate) = match verdict {
            Verdict::Go(_) => (
                self.fresh,
                self.outage,
                self.fresh.saturating_add(self.fresh.min(self.outage)),
            ),
            Verdict::Refused(_) | Verdict::Unknown => {
                (self.negative, Duration::ZERO, Duration::ZERO)
            }
        };
        Entry {
            verdict,
            fresh_until: now + fresh.min(cap),
            revalidate_until: now + revalidate.min(cap),
            stale_until: now + stale.min(cap),
        }
    }
}

/// The cached verdict to use at `now` without asking, if any.
pub(crate) fn fresh(entry: Option<&Entry>, now: Instant) -> Option<Verdict> {
    entry
        .filter(|e| now < e.fresh_until)
        .map(|e| e.verdict.clone())
}

/// The route of a positive verdict still within its revalidation window at
/// `now`: past its freshness, one more fresh lifetime (never longer than
/// the outage lifetime, nor past the subscription's end). Its route is
/// used at once while one refresh runs
/// in the background, so a device in use does not wait for a control-plane
/// round trip every time its answer goes stale. Access changes reach the
/// cache as events and clear it, and a refresh's "no" replaces the entry,
/// so the one thing served on a stale answer is what arrives while its
/// refresh is under way. Negative verdicts are never served stale.
pub(crate) fn revalidating(entry: Option<&Entry>, now: Instant) -> Option<Arc<Route>> {
    match entry {
        Some(Entry {
            verdict: Verdict::Go(r),
            revalidate_until,
            ..
        }) if now < *revalidate_until => Some(r.clone()),
        _ => None,
    }
}

/// What a failed call to the control plane means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The control plane said no: a verdict, cached like an answer.
    Said(Verdict),
    /// The control plane is down: a recent positive verdict may serve.
    Outage,
    /// No node can take the device now: refused at once, nothing cached.
    NoNode,
    /// No decision now (an answer we can't read): refused, nothing cached.
    Undecided,
}

/// Sorts a failed call. A refusal with a reason keeps it (an unknown
/// device looks like an unknown path); a 400 or 404 is about the
/// credential (one no device could hold), so it is unknown; the control
/// plane being unreachable, failing (5xx) or without its database is an
/// outage; "no node available" is its decision, which a cached answer
/// must not override. Any other 4xx (the gateway's own token refused, a
/// throttle in front, a conflict to try again) says nothing about the
/// device: undecided, so no subscriber is answered "unknown" and counted
/// as a guesser for it.
pub(crate) fn classify(e: &BackendError) -> Failure {
    match e {
        BackendError::Refused(Reason::DeviceUnknown) => Failure::Said(Verdict::Unknown),
        BackendError::Refused(r) => Failure::Said(Verdict::Refused(*r)),
        BackendError::Unavailable(httvps_wire::Unavailable::NoNodeAvailable) => Failure::NoNode,
        BackendError::Status {
            status: 400 | 404, ..
        } => Failure::Said(Verdict::Unknown),
        e if e.is_outage() => Failure::Outage,
        _ => Failure::Undecided,
    }
}

/// During an outage: the route of a positive verdict still within its
/// outage lifetime at `now`, else nothing (fail closed).
pub(crate) fn during_outage(entry: Option<&Entry>, now: Instant) -> Option<Arc<Route>> {
    match entry {
        Some(Entry {
            verdict: Verdict::Go(r),
            stale_until,
            ..
        }) if now < *stale_until => Some(r.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::caps::{CapRefusal, Caps};

    const S: Duration = Duration::from_secs(1);

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            fresh: 5 * S,
            outage: 60 * S,
            negative: 2 * S,
        }
    }

    fn route(session: &str) -> Arc<Route> {
        Arc::new(Route {
            device: Arc::from("d1"),
            session_id: session.into(),
            node_id: "n1".into(),
            node: "10.0.0.1:8388".into(),
            method: "chacha20-ietf-poly1305".into(),
            password: "k".into(),
        })
    }

    fn dev(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_positive_answer_is_fresh_then_only_serves_an_outage() {
        let t0 = Instant::now();
        let e = lifetimes().entry(Verdict::Go(route("s1")), t0, None);
        assert_eq!(fresh(Some(&e), t0), Some(Verdict::Go(route("s1"))));
        assert!(fresh(Some(&e), t0 + 4 * S).is_some());
        assert_eq!(
            fresh(Some(&e), t0 + 5 * S),
            None,
            "fresh TTL over: ask again"
        );
        assert_eq!(during_outage(Some(&e), t0 + 59 * S), Some(route("s1")));
        assert_eq!(
            during_outage(Some(&e), t0 + 60 * S),
            None,
            "then fail closed"
        );
        assert!(!e.spent(t0 + 59 * S));
        assert!(e.spent(t0 + 60 * S));
    }

    #[test]
    fn negative_answers_are_short_lived_and_never_serve_an_outage() {
        let t0 = Instant::now();
        for verdict in [Verdict::Unknown, Verdict::Refused(Reason::DeviceRevoked)] {
            let e = lifetimes().entry(verdict.clone(), t0, None);
            assert_eq!(fresh(Some(&e), t0 + S), Some(verdict));
            assert_eq!(fresh(Some(&e), t0 + 2 * S), None);
            assert_eq!(during_outage(Some(&e), t0), None);
            assert!(e.spent(t0 + 2 * S));
        }
    }

    #[test]
    fn no_answer_outlives_the_subscription() {
        let t0 = Instant::now();
        let e = lifetimes().entry(Verdict::Go(route("s1")), t0, Some(3 * S));
        assert!(fresh(Some(&e), t0 + 2 * S).is_some());
        assert_eq!(fresh(Some(&e), t0 + 3 * S), None);
        assert_eq!(
            during_outage(Some(&e), t0 + 3 * S),
            None,
            "not even in an outage"
        );
        // An already ended subscription is never reused.
        let ended = lifetimes().entry(Verdict::Go(route("s1")), t0, Some(Duration::ZERO));
        assert_eq!(fresh(Some(&ended), t0), None);
        assert_eq!(during_outage(Some(&ended), t0), None);
    }

    #[test]
    fn a_stale_positive_answer_serves_while_it_is_refreshed_for_one_more_lifetime() {
        let t0 = Instant::now();
        let e = lifetimes().entry(Verdict::Go(route("s1")), t0, None);
        assert_eq!(fresh(Some(&e), t0 + 5 * S), None);
        assert_eq!(revalidating(Some(&e), t0 + 5 * S), Some(route("s1")));
        assert_eq!(revalidating(Some(&e), t0 + 9 * S), Some(route("s1")));
        assert_eq!(
            revalidating(Some(&e), t0 + 10 * S),
            None,
            "then the device waits for its answer"
        );
        // Never past the subscription's end.
        let ending = lifetimes().entry(Verdict::Go(route("s1")), t0, Some(6 * S));
        assert!(revalidating(Some(&ending), t0 + 5 * S).is_some());
        assert_eq!(revalidating(Some(&ending), t0 + 6 * S), None);
        // Never longer than an outage would be served.
        let short = Lifetimes {
            outage: 2 * S,
            ..lifetimes()
        };
        let e = short.entry(Verdict::Go(route("s1")), t0, None);
        assert!(revalidating(Some(&e), t0 + 6 * S).is_some());
        assert_eq!(revalidating(Some(&e), t0 + 7 * S), None);
        let closed = Lifetimes {
            outage: Duration::ZERO,
            ..lifetimes()
        };
        let e = closed.entry(Verdict::Go(route("s1")), t0, None);
        assert_eq!(revalidating(Some(&e), t0 + 5 * S), None, "fail closed");
        // Never a negative answer.
        for verdict in [Verdict::Unknown, Verdict::Refused(Reason::DeviceRevoked)] {
            let e = lifetimes().entry(verdict, t0, None);
            assert_eq!(revalidating(Some(&e), t0 + 2 * S), None);
        }
        assert_eq!(revalidating(None, t0), None);
    }

    #[test]
    fn huge_settings_do_not_overflow() {
        let t0 = Instant::now();
        let l = Lifetimes {
            fresh: Duration::MAX,
            outage: Duration::MAX,
            negative: Duration::MAX,
        };
        let e = l.entry(Verdict::Go(route("s1")), t0, None);
        assert!(fresh(Some(&e), t0 + 3600 * S).is_some());
    }

    #[test]
    fn nothing_cached_means_asking() {
        let t0 = Instant::now();
        assert_eq!(fresh(None, t0), None);
        assert_eq!(during_outage(None, t0), None);
    }

    #[test]
    fn close_orders_find_the_entries_of_their_sessions() {
        let t0 = Instant::now();
        let e = lifetimes().entry(Verdict::Go(route("s1")), t0, None);
        assert!(e.routes_to(&["s0", "s1"]));
        assert!(!e.routes_to(&["s2"]));
        let refused = lifetimes().entry(Verdict::Refused(Reason::QuotaExceeded), t0, None);
        assert!(!refused.routes_to(&["s1"]));
        assert!(e.routes_to_node("n1") && !e.routes_to_node("n2"));
        assert!(!refused.routes_to_node("n1"));
    }

    #[test]
    fn the_outage_rule() {
        let status = |status| BackendError::Status {
            status,
            code: "X".into(),
            message: String::new(),
        };
        assert_eq!(
            classify(&BackendError::Unreachable("refused".into())),
            Failure::Outage
        );
        for s in [500, 502, 503, 504] {
            assert_eq!(classify(&status(s)), Failure::Outage, "{s}");
        }
        use httvps_wire::Unavailable as U;
        let unavailable = |u| classify(&BackendError::Unavailable(u));
        assert_eq!(unavailable(U::DatabaseUnavailable), Failure::Outage);
        assert_eq!(unavailable(U::NoNodeAvailable), Failure::NoNode);
        for s in [302, 401, 403, 409, 429] {
            assert_eq!(classify(&status(s)), Failure::Undecided, "{s}");
        }
        for s in [400, 404] {
            assert_eq!(classify(&status(s)), Failure::Said(Verdict::Unknown), "{s}");
        }
        assert_eq!(
            classify(&BackendError::Refused(Reason::DeviceUnknown)),
            Failure::Said(Verdict::Unknown)
        );
        assert_eq!(
            classify(&BackendError::Refused(Reason::SubscriptionExpired)),
            Failure::Said(Verdict::Refused(Reason::SubscriptionExpired))
        );
    }

    fn assignment(host: Option<&str>, device: Option<&str>) -> AssignResponse {
        AssignResponse {
            session_id: "s1".into(),
            host: host.map(str::to_owned),
            port: Some(8388),
            node_id: Some("n1".into()),
            device_id: device.map(str::to_owned),
            method: "aes-128-gcm".into(),
            password: "k".into(),
            gateway_url: None,
            region: "eu".into(),
            pool_key: true,
            valid_until: None,
        }
    }

    #[test]
    fn assignments_without_a_node_address_route_nowhere() {
        let a = |host| assignment(host, Some("d1"));
        assert_eq!(
            Route::of(a(Some("10.0.0.1")), "tok").map(|r| r.node),
            Some("10.0.0.1:8388".into())
        );
        assert_eq!(
            Route::of(a(Some("fd00::1")), "tok").map(|r| r.node),
            Some("[fd00::1]:8388".into())
        );
        assert_eq!(Route::of(a(None), "tok"), None);
    }

    #[test]
    fn every_credential_of_a_device_counts_for_the_device() {
        let a = |device| assignment(Some("10.0.0.1"), device);
        let by_token = Route::of(a(Some("d1")), "access-token").expect("route");
        let by_jwt = Route::of(a(Some("d1")), "a.jwt.one").expect("route");
        assert_eq!(&*by_token.device, "d1");
        assert_eq!(by_token.device, by_jwt.device);
        // A control plane that does not name the device: the credential.
        let old = Route::of(a(None), "a.jwt.two").expect("route");
        assert_eq!(&*old.device, "a.jwt.two");
        let mut caps = Caps::new(10, 2);
        assert_eq!(caps.admit(&by_token.device), Ok(()));
        assert_eq!(caps.admit(&by_jwt.device), Ok(()));
        assert_eq!(caps.admit(&by_jwt.device), Err(CapRefusal::DeviceFull));
    }

    #[test]
    fn a_route_shows_no_key() {
        let r = Route {
            password: "node-key-do-not-print".into(),
            ..(*route("s1")).clone()
        };
        let e = lifetimes().entry(Verdict::Go(Arc::new(r.clone())), Instant::now(), None);
        for shown in [format!("{r:?}"), format!("{r:#?}"), format!("{e:?}")] {
            assert!(!shown.contains("node-key-do-not-print"), "{shown}");
        }
    }

    #[test]
    fn cached_positive_verdicts_name_their_device_even_when_stale() {
        let t0 = Instant::now();
        let e = lifetimes().entry(Verdict::Go(route("s1")), t0, None);
        assert_eq!(e.device(), Some(dev("d1")));
        assert_eq!(fresh(Some(&e), t0 + 10 * S), None, "stale");
        assert_eq!(e.device(), Some(dev("d1")), "still names the device");
        let unknown = lifetimes().entry(Verdict::Unknown, t0, None);
        assert_eq!(unknown.device(), None);
    }
}
