//! The validation cache and the control-plane round trip behind each
//! handshake: a bounded cache of verdicts per credential (lifetimes from
//! [`admission`](super::admission)), one call per credential in flight
//! shared by every request about it, with strangers' waiting requests
//! bounded ([`pending`](super::pending)), so a burst of tunnels costs one
//! round trip; and invalidations (access events, close orders, dead nodes).
//! An answer to a call begun before an invalidation is given to the
//! requests that were waiting for it, but never cached, and a request that
//! comes after the invalidation does not wait for that call: it asks again.
//! A positive answer just past its freshness is used at once while one
//! refresh runs in the background ([`admission::revalidating`]).

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use httvps_wire::Reason;
use httvps_wire::source::source_of;
use quick_cache::sync::Cache;

use super::Gateway;
use super::admission::{self, Entry, Failure, Lifetimes, Route, Verdict};
use super::pending::{Asker, Flights, Limits};

/// Why a request is not routed.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// An unknown credential: the same answer as an unknown path, so the
    /// gateway can't be probed for tokens. `asked` when the control plane
    /// was asked about it just now (a new guess, which the throttle counts),
    /// not when the shape or a cached answer settled it.
    Unknown {
        /// Whether the control plane was asked.
        asked: bool,
    },
    /// Refused with a reason (for the access document).
    Refused(Reason),
    /// No decision possible now (the control plane or its database down
    /// past the outage cache, or an answer we can't read).
    Unavailable,
    /// The control plane says no node can take the device now.
    NoNode,
    /// Too many calls about credentials never accepted are in flight, in
    /// all or from this source, or too many requests wait on this one:
    /// refused before any call.
    Busy,
}

/// What a check comes to.
type Answer = Result<Arc<Route>, Refusal>;

/// Cached verdicts, at most a fixed number (the least useful go first).
pub(crate) struct Validations {
    cache: Cache<String, Entry>,
    /// Credentials ever answered with a device, the least recent going
    /// first past the bound: kept through access changes and session ends,
    /// which drop verdicts, for [`Validations::admitted_before`].
    admitted: Cache<String, ()>,
    lifetimes: Lifetimes,
    checks: Flights<Answer>,
    /// Bumped by every invalidation, under its write lock; an answer is
    /// cached under its read lock, only if the epoch is the one its call
    /// began in.
    epoch: RwLock<u64>,
}

impl Validations {
    /// An empty cache of at most `capacity` credentials, and no call in
    /// flight (at most `checks` of them, see [`Flights`]).
    pub fn new(capacity: usize, lifetimes: Lifetimes, checks: Limits) -> Self {
        Validations {
            cache: Cache::new(capacity.max(1)),
            admitted: Cache::new(capacity.max(1)),
            lifetimes,
            checks: Flights::new(checks),
            epoch: RwLock::new(0),
        }
    }

    /// The current epoch (see [`Validations::invalidate`]).
    fn epoch(&self) -> u64 {
        *self.epoch.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `change` on the cache in a new epoch: answers of calls begun
    /// before it are not cached after it.
    fn invalidate(&self, change: impl FnOnce(&Cache<String, Entry>)) {
        let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        *epoch += 1;
        change(&self.cache);
    }

    /// Caches `entry` for `token` unless an invalidation came since
    /// `epoch`; whether it did.
    fn keep(&self, epoch: u64, token: &str, entry: Entry) -> bool {
        if entry.device().is_some() {
            // Admitted, whether or not access changed since.
            self.admitted.insert(token.to_owned(), ());
        }
        let now = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        let current = *now == epoch;
        if current {
            self.cache.insert(token.to_owned(), entry);
        }
        current
    }

    /// The device a cached positive verdict for `token` names, however
    /// old the verdict.
    pub fn known_device(&self, token: &str) -> Option<Arc<str>> {
        self.cache.get(token)?.device()
    }

    /// Whether `token` was ever answered with a device (a credential in
    /// use, not guessed), whatever dropped its verdict since: an access
    /// change anywhere, its session's end, the verdict's age.
    pub fn admitted_before(&self, token: &str) -> bool {
        self.admitted.get(token).is_some() || self.known_device(token).is_some()
    }

    /// Forgets one credential's verdict.
    pub fn forget(&self, token: &str) {
        self.invalidate(|c| {
            c.remove(token);
        });
    }

    /// Forgets every verdict: each device's next handshake asks again.
    pub fn forget_all(&self) {
        self.invalidate(Cache::clear);
    }

    /// Forgets the verdicts routing to `session` when the one cached for
    /// `token` still does: requests of one device that all heard of the
    /// session's end start one new epoch, not one each, and so share the
    /// call that routes the device anew.
    pub fn forget_ended(&self, token: &str, session: &str) {
        if self
            .cache
            .get(token)
            .is_some_and(|e| e.routes_to(&[session]))
        {
            self.forget_sessions(&[session]);
        }
    }

    /// Forgets the verdicts routing to `sessions` (closed by the control
    /// plane): their devices' next handshakes ask again.
    pub fn forget_sessions(&self, sessions: &[&str]) {
        if !sessions.is_empty() {
            self.invalidate(|c| c.retain(|_, e| !e.routes_to(sessions)));
        }
    }

    /// Forgets the verdicts routing to the Outline node `node_id` (it takes
    /// no more new tunnels): their devices' next handshakes ask again.
    pub fn forget_node(&self, node_id: &str) {
        self.invalidate(|c| c.retain(|_, e| !e.routes_to_node(node_id)));
    }

    /// Forgets `token`'s verdict unless an invalidation came since `epoch`
    /// (a verdict cached since is not the one to drop).
    fn drop_if_current(&self, epoch: u64, token: &str) {
        let now = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        if *now == epoch {
            self.cache.remove(token);
        }
    }

    /// Drops verdicts of no more use at `now`.
    pub fn prune(&self, now: Instant) {
        self.cache.retain(|_, e| !e.spent(now));
    }
}

fn verdict_to_result(v: Verdict) -> Answer {
    match v {
        Verdict::Go(r) => Ok(r),
        Verdict::Refused(r) => Err(Refusal::Refused(r)),
        Verdict::Unknown => Err(Refusal::Unknown { asked: false }),
    }
}

impl Gateway {
    /// Where the device holding `token` (an access token, or a device JWT
    /// from `Authorization: Bearer`), asking from `peer`, goes, or why not.
    /// `ahead`: the request is an HTTP/2 stream, which may send data ahead
    /// of its admission (see [`Asker::Stranger`]).
    pub(crate) async fn route(
        self: &Arc<Self>,
        token: &str,
        peer: Option<IpAddr>,
        ahead: bool,
    ) -> Answer {
        if !httvps_wire::token::looks_like_token(token)
            && !httvps_wire::token::looks_like_jwt(token)
        {
            return Err(Refusal::Unknown { asked: false });
        }
        let v = &self.validations;
        let (cached, now) = (v.cache.get(token), Instant::now());
        if let Some(verdict) = admission::fresh(cached.as_ref(), now) {
            return verdict_to_result(verdict);
        }
        // Only when a call may be needed, and before it is joined or made:
        // an invalidation after this point leaves its answer uncached, and
        // a request after the invalidation makes a call of its own.
        let epoch = v.epoch();
        if let Some(route) = admission::revalidating(cached.as_ref(), now) {
            self.refresh(token, epoch);
            return Ok(route);
        }
        let asker = match cached.as_ref().and_then(Entry::device) {
            Some(_) => Asker::Known,
            None => Asker::Stranger(peer.map(source_of), ahead),
        };
        let Some(place) = v.checks.join(&format!("{epoch}/{token}"), asker) else {
            self.metrics.check_shed();
            return Err(Refusal::Busy);
        };
        // A stranger's call is a guess of its source, counted when the
        // answer comes (see `Gateway::check_to_the_end`).
        let guesser = match asker {
            Asker::Stranger(..) => peer,
            Asker::Known => None,
        };
        let (answer, ran) = place
            .answer(|| self.check_to_the_end(token, cached.clone(), epoch, guesser))
            .await;
        match answer {
            // One call is one guess, however many requests waited for it.
            Err(Refusal::Unknown { .. }) => Err(Refusal::Unknown { asked: ran }),
            other => other,
        }
    }

    /// [`Gateway::check`] in a task of its own, which runs to its end even
    /// if every request waiting on it goes away: the control plane has
    /// been asked by then, so an unknown answer still counts as a guess of
    /// `guesser`'s source (a client that resets its requests before the
    /// answer otherwise guessed for free), and a positive one is cached.
    fn check_to_the_end(
        self: &Arc<Self>,
        token: &str,
        cached: Option<Entry>,
        epoch: u64,
        guesser: Option<IpAddr>,
    ) -> impl Future<Output = Answer> + use<> {
        let (gw, token) = (self.clone(), token.to_owned());
        let task = tokio::spawn(async move {
            let answer = gw.check(&token, cached.as_ref(), epoch).await;
            if let (Err(Refusal::Unknown { .. }), Some(ip)) = (&answer, guesser) {
                gw.throttle.guessed(ip);
            }
            answer
        });
        async move { task.await.unwrap_or(Err(Refusal::Unavailable)) }
    }

    /// Starts one call about `token` in the background, unless one begun
    /// in `epoch` is in flight: its answer replaces the stale one.
    fn refresh(self: &Arc<Self>, token: &str, epoch: u64) {
        let key = format!("{epoch}/{token}");
        if self.validations.checks.in_flight(&key) {
            return;
        }
        let (gw, token) = (self.clone(), token.to_owned());
        let stop = gw.stop.clone();
        tokio::spawn(stop.run_until_cancelled_owned(async move {
            // Access changed since: the next request asks afresh.
            if gw.validations.epoch() != epoch {
                return;
            }
            // Two requests may both have found none in flight: the second
            // waits on the first's call, it makes none.
            let Some(place) = gw.validations.checks.join(&key, Asker::Known) else {
                return;
            };
            let cached = gw.validations.cache.get(&token);
            let _ = place
                .answer(|| gw.check(&token, cached.as_ref(), epoch))
                .await;
        }));
    }

    /// The control plane's answer about `token` (`cached`: what the cache
    /// held, for an outage), cached when it is one to keep and nothing was
    /// invalidated since `epoch`.
    async fn check(&self, token: &str, cached: Option<&Entry>, epoch: u64) -> Answer {
        let v = &self.validations;
        let (verdict, valid_for) = match self.backend.assign(token).await {
            Ok(a) => {
                let valid_until = a.valid_until;
                let Some(route) = Route::of(a, token) else {
                    v.drop_if_current(epoch, token);
                    return Err(Refusal::Unavailable);
                };
                // Never trusted past the subscription's end, and a beat
                // right after it closes the session on time.
                let valid_for = valid_until.map(|until| {
                    self.beats.note_end(until);
                    (until - chrono::Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                });
                (Verdict::Go(Arc::new(route)), valid_for)
            }
            Err(e) => match admission::classify(&e) {
                Failure::Said(verdict) => (verdict, None),
                Failure::Outage => {
                    // Keep serving what the control plane said recently.
                    match e.is_untrusted() {
                        true => tracing::warn!(error = %e, "control plane not trusted"),
                        false => tracing::warn!(error = %e, "control plane unreachable"),
                    }
                    return admission::during_outage(cached, Instant::now())
                        .ok_or(Refusal::Unavailable);
                }
                // Nothing cached; nor is a stale yes served on until the
                // next answer.
                Failure::NoNode => {
                    v.drop_if_current(epoch, token);
                    return Err(Refusal::NoNode);
                }
                Failure::Undecided => {
                    v.drop_if_current(epoch, token);
                    return Err(Refusal::Unavailable);
                }
            },
        };
        let entry = v
            .lifetimes
            .entry(verdict.clone(), Instant::now(), valid_for);
        if !v.keep(epoch, token, entry) {
            tracing::debug!("access changed during the check: its answer is not cached");
        }
        verdict_to_result(verdict)
    }
}

#[cfg(test)]
#[path = "validator_tests.rs"]
mod tests;
