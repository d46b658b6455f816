//! Sessions as the gateway counts them: payload bytes each way per
//! session (cumulative, what usage reports carry), the open tunnels of
//! each, the close signal the control plane's orders fire, and byte totals
//! that never go down although idle sessions are forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use httvps_wire::{CloseOrder, Reason};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a session with no tunnel and nothing to report is remembered:
/// longer than the control plane keeps an idle session open (10 minutes,
/// ended by a sweep once a minute). A session forgotten while still open
/// there, and met again, would be counted from zero under what the ledger
/// holds, and its reports would add nothing until they passed it (the
/// node's witness covers TCP, nothing covers UDP).
const IDLE_FORGET: Duration = Duration::from_secs(13 * 60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a session's tunnels must close, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// They stay open.
    Open,
    /// The control plane closed the session.
    Closed,
    /// The gateway is going away (its drain grace is over).
    GoingAway,
    /// The session's quota grant is spent and no new one came (why).
    Spent(Reason),
}

/// A session's totals as reported and spooled: its id, bytes up, bytes
/// down, and the epoch of the count (see [`Session::epoch`]).
pub(crate) type Counted = (String, u64, u64, i64);

/// One session's counters.
#[derive(Debug)]
pub(crate) struct Session {
    /// The epoch of this count: a session counted from zero again (after a
    /// restart without the spool, or forgotten and met again) gets a
    /// larger one, so the control plane adds its totals to what it
    /// recorded before instead of waiting for them to pass it.
    pub epoch: i64,
    /// Payload bytes from clients to the node.
    pub up: AtomicU64,
    /// Payload bytes from the node to clients.
    pub down: AtomicU64,
    tunnels: AtomicUsize,
    reported: Mutex<(u64, u64)>,
    close: watch::Sender<Closing>,
    last_used: Mutex<Instant>,
    /// The quota grant its bytes count against.
    pub grant: super::grant::Grant,
    /// One grant question at a time.
    pub asking: tokio::sync::Mutex<()>,
    /// Held while bytes are counted against the grant (see
    /// [`Session::take_within`]): tunnels of the session that count at
    /// once see each other's bytes.
    taking: Mutex<()>,
    /// Counts the times the session lost its last tunnel: a release
    /// scheduled then goes ahead only if it is still the latest.
    pub release_epoch: AtomicU64,
}

impl Session {
    fn new(now: Instant, epoch: i64) -> Self {
        Session {
            epoch,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            reported: Mutex::new((0, 0)),
            close: watch::channel(Closing::Open).0,
            last_used: Mutex::new(now),
            grant: super::grant::Grant::default(),
            asking: tokio::sync::Mutex::new(()),
            taking: Mutex::new(()),
            release_epoch: AtomicU64::new(0),
        }
    }

    /// Counts on `counter` (this session's `up` or `down`) as many of `len`
    /// bytes about to move as the grant has room for at `now_ms`; returns
    /// how many that is. Exact however many tunnels count at once.
    pub fn take_within(&self, counter: &AtomicU64, len: u64, now_ms: u64) -> u64 {
        let _held = lock(&self.taking);
        let fits = self.grant.room(self.used(), now_ms).min(len);
        counter.fetch_add(fits, Ordering::Relaxed);
        fits
    }

    /// Gives back `n` bytes counted by [`Session::take_within`] that did
    /// not move.
    pub fn give_back(&self, counter: &AtomicU64, n: u64) {
        let _held = lock(&self.taking);
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    /// Changes when the session's tunnels must close. One per session
    /// (the drain goes through it too), so a tunnel waits on one signal
    /// and no lock is shared by every tunnel.
    pub fn closed(&self) -> watch::Receiver<Closing> {
        self.close.subscribe()
    }

    /// Bytes both ways so far (what grants count).
    pub fn used(&self) -> u64 {
        let (u, d) = self.totals();
        u.saturating_add(d)
    }

    /// Open tunnels.
    pub fn tunnel_count(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// The grant is spent and no new one came: every tunnel closes (1008),
    /// unless they close already.
    pub fn spent(&self, why: Reason) {
        self.close.send_if_modified(|c| {
            let open = *c == Closing::Open;
            if open {
                *c = Closing::Spent(why);
            }
            open
        });
    }

    /// The control plane said the session has ended: every tunnel closes
    /// as on its close order.
    pub fn ended(&self) {
        let _ = self.close.send(Closing::Closed);
    }

    /// A new grant came after the last one was spent: tunnels opened from
    /// now on stay open.
    pub fn granted_again(&self) {
        self.close.send_if_modified(|c| {
            let spent = matches!(*c, Closing::Spent(_));
            if spent {
                *c = Closing::Open;
            }
            spent
        });
    }

    /// A tunnel of the session ended.
    pub fn detach(&self) {
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
        *lock(&self.last_used) = Instant::now();
    }
}

/// Whether a session is still needed: it has tunnels, totals not yet
/// reported, or was used within [`IDLE_FORGET`].
fn keep(tunnels: usize, reported: (u64, u64), totals: (u64, u64), idle: Duration) -> bool {
    tunnels > 0 || reported != totals || idle < IDLE_FORGET
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Arc<Session>>,
    /// Set by the drain: sessions made from then on start closing.
    going_away: bool,
    /// Bytes of sessions forgotten, so totals never go down.
    retired: (u64, u64),
    /// The latest epoch given to a count.
    last_epoch: i64,
    /// Totals an earlier run spooled, until they are reported again.
    restored: Vec<Counted>,
    /// What earlier runs counted of each restored session, for a control
    /// plane that takes no count epochs (see [`Sessions::without_epochs`]).
    bases: HashMap<String, (u64, u64)>,
}

/// An epoch for a new count after `last`, the latest given (which it
/// becomes): the wall clock's milliseconds, so a restarted gateway's counts
/// come after its earlier ones, and always past `last` (a session forgotten
/// and met again within a millisecond, a clock that went back).
fn next_epoch(last: &mut i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    *last = now.max(last.saturating_add(1));
    *last
}

/// What a count afresh of a restored session starts as having reported:
/// no totals it can have, so its zero is reported.
const UNREPORTED: (u64, u64) = (u64::MAX, u64::MAX);

/// Every session this gateway counts.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
}

impl Sessions {
    /// Counts a new tunnel of session `id` (created when new).
    pub fn attach(&self, id: &str) -> Arc<Session> {
        let mut inner = lock(&self.inner);
        let Inner {
            live,
            going_away,
            last_epoch,
            ..
        } = &mut *inner;
        let s = live.entry(id.to_owned()).or_insert_with(|| {
            let s = Session::new(Instant::now(), next_epoch(last_epoch));
            if *going_away {
                s.close.send_replace(Closing::GoingAway);
            }
            Arc::new(s)
        });
        // Under the map's lock, so pruning never forgets a session that is
        // getting a tunnel.
        s.tunnels.fetch_add(1, Ordering::Relaxed);
        s.clone()
    }

    /// Takes the totals an earlier run spooled: they are reported again
    /// under their epochs (the ledger ignores what it has) and spooled
    /// until then, and each session is counted afresh, under a new epoch,
    /// from its next tunnel. The earlier run may have let bytes through
    /// after its last spool write: a count that went on from the spool
    /// never told of them, while a count afresh has the control plane
    /// take the node's count of the session where it is larger, which
    /// holds them, and the grants the device is refused until they are
    /// known are given again.
    ///
    /// The new count is made at once and reported at the first report,
    /// at zero, before a byte moves: the control plane takes the ledger's
    /// record as its base then. Reported first once bytes had moved, it
    /// came after the node's report of those bytes had raised the record,
    /// and they were counted twice (52 MB charged for 30 MB moved).
    pub fn restore(&self, totals: Vec<Counted>) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        for (id, up, down, epoch) in totals {
            inner.last_epoch = inner.last_epoch.max(epoch);
            inner.retired.0 = inner.retired.0.saturating_add(up);
            inner.retired.1 = inner.retired.1.saturating_add(down);
            let base = inner.bases.entry(id.clone()).or_default();
            *base = (base.0.saturating_add(up), base.1.saturating_add(down));
            inner.restored.push((id, up, down, epoch));
        }
        let ids: Vec<String> = inner.bases.keys().cloned().collect();
        for id in ids {
            if !inner.live.contains_key(&id) {
                let s = Session::new(now, next_epoch(&mut inner.last_epoch));
                *lock(&s.reported) = UNREPORTED;
                inner.live.insert(id, Arc::new(s));
            }
        }
    }

    /// `counted` as a control plane of an earlier release, which takes no
    /// count epochs, must be told it: a count afresh of a restored session
    /// goes on from what the earlier runs counted (it ignores totals under
    /// what it has, and a count from zero would add nothing until it
    /// passed them). Restored totals themselves are left as they are.
    pub fn without_epochs(&self, counted: &Counted) -> Counted {
        let inner = lock(&self.inner);
        let (id, up, down, epoch) = counted;
        match inner.bases.get(id) {
            Some((bu, bd)) if !inner.restored.contains(counted) => (
                id.clone(),
                up.saturating_add(*bu),
                down.saturating_add(*bd),
                *epoch,
            ),
            _ => counted.clone(),
        }
    }

    /// The restored totals not yet reported again, while there are any;
    /// then the sessions whose totals changed since they were last
    /// reported. Restored totals go in reports of their own: a report
    /// counts one epoch per session, its latest, and the count afresh
    /// beside them hid them (what the spool held was lost).
    pub fn pending(&self) -> Vec<Counted> {
        let inner = lock(&self.inner);
        if !inner.restored.is_empty() {
            return inner.restored.clone();
        }
        inner
            .live
            .iter()
            .filter_map(|(id, s)| {
                let (u, d) = s.totals();
                (*lock(&s.reported) != (u, d)).then(|| (id.clone(), u, d, s.epoch))
            })
            .collect()
    }

    /// Whether restored totals wait to be reported again.
    pub fn restoring(&self) -> bool {
        !lock(&self.inner).restored.is_empty()
    }

    /// Every session's totals, and the restored ones not yet reported
    /// again (for the spool).
    pub fn snapshot(&self) -> Vec<Counted> {
        let inner = lock(&self.inner);
        let live = inner.live.iter().map(|(id, s)| {
            let (u, d) = s.totals();
            (id.clone(), u, d, s.epoch)
        });
        inner.restored.iter().cloned().chain(live).collect()
    }

    /// Notes totals as acknowledged.
    pub fn mark_reported(&self, part: &[Counted]) {
        let mut inner = lock(&self.inner);
        for c in part {
            let (id, u, d, epoch) = c;
            if let Some(s) = inner.live.get(id).filter(|s| s.epoch == *epoch) {
                *lock(&s.reported) = (*u, *d);
            } else {
                inner.restored.retain(|r| r != c);
            }
        }
    }

    /// Fires the close signal of every session named in `orders`.
    pub fn close(&self, orders: &[CloseOrder]) {
        let inner = lock(&self.inner);
        for o in orders {
            if let Some(s) = inner.live.get(&o.session_id) {
                // The control plane repeats an order with every report
                // that names the session: said once, at info.
                if *s.close.borrow() == Closing::Closed {
                    tracing::debug!(session.id = %o.session_id, reason = %o.reason, "closing session again");
                } else {
                    tracing::info!(session.id = %o.session_id, reason = %o.reason, "closing session");
                }
                // Tunnels open now close; a later tunnel of the same
                // session (never routed there again once the cache forgot
                // it) is left alone, as when no tunnel listens.
                let _ = s.close.send(Closing::Closed);
            }
        }
    }

    /// Fires the close signal of every session with open tunnels (the
    /// control plane no longer knows the gateway); returns how many tunnels
    /// they had open.
    pub fn close_all(&self) -> usize {
        let inner = lock(&self.inner);
        let open = inner
            .live
            .values()
            .filter(|s| s.tunnels.load(Ordering::Relaxed) > 0);
        let mut closed = 0;
        for s in open {
            closed += s.tunnels.load(Ordering::Relaxed);
            // Kept even while no tunnel listens yet (one attached and not
            // yet waiting on it): it closes as soon as it looks.
            s.close.send_replace(Closing::Closed);
        }
        closed
    }

    /// The drain is over: every tunnel closes (1001), now and from now on.
    pub fn going_away(&self) {
        let mut inner = lock(&self.inner);
        inner.going_away = true;
        for s in inner.live.values() {
            s.close.send_if_modified(|c| {
                let open = *c == Closing::Open;
                if open {
                    *c = Closing::GoingAway;
                }
                open
            });
        }
    }

    /// Marks every session's grant stale (access events may have been
    /// missed): each asks again at its next byte.
    pub fn grants_stale(&self) {
        for s in lock(&self.inner).live.values() {
            s.grant.mark_stale();
        }
    }

    /// Session `id`, if counted.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.inner).live.get(id).cloned()
    }

    /// Sessions with open tunnels.
    pub fn open_ids(&self) -> Vec<String> {
        lock(&self.inner)
            .live
            .iter()
            .filter(|(_, s)| s.tunnels.load(Ordering::Relaxed) > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forgets sessions no longer needed at `now`, keeping their bytes in
    /// the totals.
    pub fn prune(&self, now: Instant) {
        let mut inner = lock(&self.inner);
        let Inner {
            live,
            retired,
            bases,
            ..
        } = &mut *inner;
        live.retain(|id, s| {
            let totals = s.totals();
            let idle = now.saturating_duration_since(*lock(&s.last_used));
            let kept = keep(
                s.tunnels.load(Ordering::Relaxed),
                *lock(&s.reported),
                totals,
                idle,
            );
            if !kept {
                retired.0 = retired.0.saturating_add(totals.0);
                retired.1 = retired.1.saturating_add(totals.1);
                bases.remove(id);
            }
            kept
        });
    }

    /// Bytes up and down since start (spooled ones included); they never
    /// go down.
    pub fn totals(&self) -> (u64, u64) {
        let inner = lock(&self.inner);
        inner.live.values().fold(inner.retired, |(u, d), s| {
            let (su, sd) = s.totals();
            (u.saturating_add(su), d.saturating_add(sd))
        })
    }
}

#[cfg(test)]
#[path = "sessions_tests.rs"]
mod tests;
