//! Credential checks in flight. A request whose credential has no fresh
//! answer in the cache waits for a control-plane call, and every request
//! about the same credential that arrives while that call runs waits for
//! the same call (a client opening thirty tunnels at once costs one call,
//! not thirty). If the request running the call gives up (its client went
//! away), the next one waiting runs it.
//!
//! Calls about credentials the gateway has never seen answered yes are
//! what a stranger can cause in any number, so those in flight at once are
//! bounded, per source (an IPv4 address, an IPv6 /64) and in all; no call
//! has more requests waiting on it than one device may have tunnels; and a
//! source has at most [`Limits::waiting_per_source`] HTTP/2 streams
//! waiting on strangers' calls in all (its own calls and those it joins),
//! so one connection cannot hang hundreds of streams, each sending ahead
//! up to its window, on one slow call (an HTTP/1.1 request sends nothing
//! ahead that the server holds: it is not counted there).
//! A request beyond a bound is refused at once, before any call. The
//! guessing throttle counts answers, so without these bounds a burst of
//! guesses sent before the first answers would not be bounded at all, and
//! neither would the data HTTP/2 streams not yet admitted may send ahead
//! (up to a stream window each, for as long as their check takes). Calls
//! about a credential with a positive answer in the cache (however old: the
//! device is known, and its tunnels are bounded by its cap) are not
//! counted, so a known device's refresh never sheds its tunnels.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use httvps_wire::source::SourceCounts;
use tokio::sync::OnceCell;

/// The calls in flight, one per credential.
pub(crate) struct Flights<T> {
    inner: Mutex<Inner<T>>,
    limits: Limits,
}

/// The bounds of [`Flights`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Strangers' calls in flight at once, in all.
    pub calls: usize,
    /// Strangers' calls in flight at once from one source.
    pub calls_per_source: usize,
    /// Requests waiting on one call.
    pub waiting_per_call: usize,
    /// Strangers' HTTP/2 streams from one source waiting on calls, in all.
    pub waiting_per_source: usize,
}

struct Inner<T> {
    calls: HashMap<String, Call<T>>,
    /// Strangers' calls in flight, in all and per source.
    counted: usize,
    by_source: SourceCounts,
    /// Strangers' requests waiting, per source.
    waiting_by_source: SourceCounts,
}

struct Call<T> {
    answer: Arc<OnceCell<T>>,
    /// The places waiting on it.
    waiting: usize,
    /// Whether it is counted as a stranger's, and for which source.
    counted: Option<Option<IpAddr>>,
}

/// Who asks, for the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    /// A credential with a positive answer cached: its call is not counted.
    Known,
    /// Anyone else, from `Some(source)` (`None`: counted in all only),
    /// and whether its request may send data ahead of its admission (an
    /// HTTP/2 stream, up to its window: bounded per source while it
    /// waits).
    Stranger(Option<IpAddr>, bool),
}

/// A request's place among those waiting for the call about its
/// credential; given back when dropped.
pub(crate) struct Place<'a, T> {
    flights: &'a Flights<T>,
    token: String,
    answer: Arc<OnceCell<T>>,
    /// The source whose waiting stranger this is, if one.
    stranger: Option<IpAddr>,
}

impl<T: Clone> Flights<T> {
    /// No calls in flight, and these bounds (each at least 1).
    pub fn new(limits: Limits) -> Self {
        Flights {
            inner: Mutex::new(Inner {
                calls: HashMap::new(),
                counted: 0,
                by_source: SourceCounts::new(limits.calls_per_source),
                waiting_by_source: SourceCounts::new(limits.waiting_per_source.max(1)),
            }),
            limits: Limits {
                calls: limits.calls.max(1),
                calls_per_source: limits.calls_per_source.max(1),
                waiting_per_call: limits.waiting_per_call.max(1),
                waiting_per_source: limits.waiting_per_source.max(1),
            },
        }
    }

    /// A place for a request by `asker` about the credential `token` (the
    /// key of its call: the caller may add to it what else makes a call
    /// different): on the call in flight for it if there is one, else on a
    /// new one; `None` when that goes past a bound.
    pub fn join(&self, token: &str, asker: Asker) -> Option<Place<'_, T>> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        let stranger = match asker {
            Asker::Stranger(Some(ip), true) => Some(ip),
            _ => None,
        };
        if let Some(ip) = stranger
            && !inner.waiting_by_source.take(ip)
        {
            return None;
        }
        let placed = self.place_in(inner, token, asker, stranger);
        if placed.is_none()
            && let Some(ip) = stranger
        {
            inner.waiting_by_source.give(ip);
        }
        placed
    }

    /// [`Flights::join`] once the stranger's waiting place is taken.
    fn place_in(
        &self,
        inner: &mut Inner<T>,
        token: &str,
        asker: Asker,
        stranger: Option<IpAddr>,
    ) -> Option<Place<'_, T>> {
        if let Some(call) = inner.calls.get_mut(token) {
            if call.waiting >= self.limits.waiting_per_call {
                return None;
            }
            call.waiting += 1;
            return Some(self.place(token, call.answer.clone(), stranger));
        }
        let counted = match asker {
            Asker::Known => None,
            Asker::Stranger(source, _) => {
                if inner.counted >= self.limits.calls {
                    return None;
                }
                if let Some(ip) = source
                    && !inner.by_source.take(ip)
                {
                    return None;
                }
                inner.counted += 1;
                Some(source)
            }
        };
        let answer = Arc::new(OnceCell::new());
        inner.calls.insert(
            token.to_owned(),
            Call {
                answer: answer.clone(),
                waiting: 1,
                counted,
            },
        );
        Some(self.place(token, answer, stranger))
    }

    /// Whether a call under the key `token` is in flight.
    pub fn in_flight(&self, token: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.calls.contains_key(token)
    }

    fn place(
        &self,
        token: &str,
        answer: Arc<OnceCell<T>>,
        stranger: Option<IpAddr>,
    ) -> Place<'_, T> {
        Place {
            flights: self,
            token: token.to_owned(),
            answer,
            stranger,
        }
    }

    /// Strangers' calls in flight, in all and from `source`.
    #[cfg(test)]
    fn counted(&self, source: IpAddr) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (inner.counted, inner.by_source.held(source))
    }

    /// Calls in flight.
    #[cfg(test)]
    fn calls(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.calls.len()
    }
}

impl<T: Clone> Place<'_, T> {
    /// The answer of the call about this place's credential, and whether
    /// this request made the call: `ask` runs unless another request of the
    /// flight is running it or has run it.
    pub async fn answer<F: Future<Output = T>>(&self, ask: impl FnOnce() -> F) -> (T, bool) {
        let mut ran = false;
        let answer = self
            .answer
            .get_or_init(|| {
                ran = true;
                ask()
            })
            .await
            .clone();
        (answer, ran)
    }
}

impl<T> Drop for Place<'_, T> {
    fn drop(&mut self) {
        let mut guard = self
            .flights
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        if let Some(ip) = self.stranger {
            inner.waiting_by_source.give(ip);
        }
        let Some(call) = inner.calls.get_mut(&self.token) else {
            return;
        };
        call.waiting = call.waiting.saturating_sub(1);
        if call.waiting > 0 {
            return;
        }
        // The last place of a call ends it: a later request makes a call of
        // its own, and gets the answer, if it is one to keep, from the cache.
        let counted = call.counted;
        inner.calls.remove(&self.token);
        if let Some(source) = counted {
            inner.counted = inner.counted.saturating_sub(1);
            if let Some(ip) = source {
                inner.by_source.give(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn flights(calls: usize, calls_per_source: usize, waiting_per_call: usize) -> Flights<u32> {
        Flights::new(Limits {
            calls,
            calls_per_source,
            waiting_per_call,
            waiting_per_source: 100,
        })
    }

    #[test]
    fn a_sources_strangers_waiting_are_bounded_in_all() {
        let f = Flights::<u32>::new(Limits {
            calls: 100,
            calls_per_source: 100,
            waiting_per_call: 100,
            waiting_per_source: 4,
        });
        let mut held: Vec<_> = (0..4)
            .map(|_| {
                f.join("t", Asker::Stranger(Some(ip(1)), true))
                    .expect("room")
            })
            .collect();
        assert!(
            f.join("t", Asker::Stranger(Some(ip(1)), true)).is_none(),
            "a fifth waiting on the same call"
        );
        assert!(
            f.join("u", Asker::Stranger(Some(ip(1)), true)).is_none(),
            "nor on a call of its own"
        );
        let h1 = f
            .join("t", Asker::Stranger(Some(ip(1)), false))
            .expect("an HTTP/1.1 request sends nothing ahead: not counted");
        let other = f
            .join("t", Asker::Stranger(Some(ip(2)), true))
            .expect("another source waits");
        let known = f.join("t", Asker::Known).expect("a known device waits");
        held.pop();
        held.push(
            f.join("t", Asker::Stranger(Some(ip(1)), true))
                .expect("a place freed"),
        );
        drop((held, h1, other, known));
        assert_eq!(f.calls(), 0);
        // A refusal at another bound takes no waiting place.
        let f = Flights::<u32>::new(Limits {
            calls: 100,
            calls_per_source: 1,
            waiting_per_call: 100,
            waiting_per_source: 2,
        });
        let first = f
            .join("a", Asker::Stranger(Some(ip(1)), true))
            .expect("room");
        for _ in 0..5 {
            assert!(f.join("b", Asker::Stranger(Some(ip(1)), true)).is_none());
        }
        let second = f.join("a", Asker::Stranger(Some(ip(1)), true));
        assert!(second.is_some(), "its one other waiting place is free");
        drop((first, second));
    }

    #[test]
    fn strangers_calls_are_bounded_per_source_and_in_all_and_known_devices_are_not() {
        let f = flights(3, 2, 100);
        let a1 = f
            .join("t1", Asker::Stranger(Some(ip(1)), true))
            .expect("first");
        let a2 = f
            .join("t2", Asker::Stranger(Some(ip(1)), true))
            .expect("second");
        assert!(
            f.join("t3", Asker::Stranger(Some(ip(1)), true)).is_none(),
            "a third call from one source"
        );
        let waiter = f
            .join("t1", Asker::Stranger(Some(ip(1)), true))
            .expect("waiting on a call in flight is no new call");
        let b1 = f
            .join("t4", Asker::Stranger(Some(ip(2)), true))
            .expect("another source");
        assert!(
            f.join("t5", Asker::Stranger(Some(ip(3)), true)).is_none(),
            "past the bound in all"
        );
        assert!(f.join("t6", Asker::Stranger(None, true)).is_none());
        let known: Vec<_> = (0..10)
            .map(|i| {
                f.join(&format!("k{i}"), Asker::Known)
                    .expect("never bounded")
            })
            .collect();
        assert_eq!(f.counted(ip(1)), (3, 2));
        drop(a1);
        assert_eq!(f.counted(ip(1)), (3, 2), "t1 still has a request waiting");
        drop(waiter);
        assert_eq!(f.counted(ip(1)), (2, 1));
        let a3 = f
            .join("t3", Asker::Stranger(Some(ip(1)), true))
            .expect("a place freed");
        drop((a2, a3, b1, known));
        assert_eq!(f.counted(ip(1)), (0, 0));
        assert_eq!(f.calls(), 0, "no call kept once nobody waits");
    }

    #[test]
    fn no_call_has_more_requests_waiting_than_the_bound() {
        let f = flights(10, 10, 3);
        let places: Vec<_> = (0..3)
            .map(|_| f.join("t", Asker::Known).expect("room"))
            .collect();
        assert!(f.join("t", Asker::Known).is_none());
        assert!(f.join("t", Asker::Stranger(Some(ip(1)), true)).is_none());
        let other = f.join("u", Asker::Known).expect("another credential");
        assert!(f.in_flight("t") && f.in_flight("u") && !f.in_flight("v"));
        drop(places);
        drop(other);
        assert!(!f.in_flight("t"), "the last place ends the call");
        assert!(f.join("t", Asker::Known).is_some());
    }

    #[tokio::test]
    async fn requests_about_one_credential_share_one_call() {
        let f = flights(100, 100, 100);
        let calls = AtomicUsize::new(0);
        let (gate, opened) = tokio::sync::watch::channel(false);
        let ask = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut opened = opened.clone();
            let _ = opened.wait_for(|o| *o).await;
            7
        };
        let places: Vec<_> = (0..20)
            .map(|_| {
                f.join("t", Asker::Stranger(Some(ip(1)), true))
                    .expect("room")
            })
            .collect();
        let answers = futures_util::future::join_all(places.iter().map(|p| p.answer(ask)));
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gate.send_replace(true);
        };
        let (answers, ()) = tokio::join!(answers, release);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|(a, _)| *a == 7));
        assert_eq!(answers.iter().filter(|(_, ran)| *ran).count(), 1);
        drop(places);
        assert_eq!(f.calls(), 0);
        // The flight is over: the next request asks again.
        let p = f.join("t", Asker::Known).expect("room");
        assert_eq!(p.answer(|| async { 8 }).await, (8, true));
    }

    #[tokio::test]
    async fn when_the_caller_gives_up_the_next_one_asks() {
        let f = flights(100, 100, 100);
        let first = f.join("t", Asker::Known).expect("room");
        let second = f.join("t", Asker::Known).expect("room");
        let stalled = tokio::time::timeout(
            Duration::from_millis(20),
            first.answer(std::future::pending::<u32>),
        )
        .await;
        assert!(stalled.is_err());
        drop(first);
        assert_eq!(second.answer(|| async { 5 }).await, (5, true));
    }
}
