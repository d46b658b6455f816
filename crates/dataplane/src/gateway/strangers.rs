//! Connections that carry no tunnel yet, counted per source (an IPv4
//! address, an IPv6 /64). A connection is a stranger from its accept until
//! it carries its first tunnel (or ends): handshakes, requests answered
//! 404 and idle keep-alives all count. Past the bound, new connections
//! from that source are closed at once, before TLS, so one source cannot
//! hold the connection budget with connections that open nothing (a
//! request every few seconds keeps a connection from being idle); a
//! carrier's NAT full of subscribers is not held back by its tunnels,
//! which do not count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::throttle::source;

/// The strangers of every source.
pub(crate) struct Strangers {
    per_source: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Strangers {
    /// A table allowing `per_source` strangers per source (at least 1).
    pub fn new(per_source: usize) -> Arc<Self> {
        Arc::new(Strangers {
            per_source: per_source.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `peer`, unless its source has as many
    /// strangers as allowed.
    pub fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<Stranger> {
        let key = source(peer);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(Stranger {
            table: self.clone(),
            key,
            left: AtomicBool::new(false),
        })
    }

    /// Strangers from `peer`'s source now.
    #[cfg(test)]
    pub fn count(&self, peer: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&source(peer)).copied().unwrap_or(0)
    }
}

/// One connection's place among its source's strangers: given back when it
/// carries its first tunnel, or when it ends.
pub(crate) struct Stranger {
    table: Arc<Strangers>,
    key: IpAddr,
    left: AtomicBool,
}

impl Stranger {
    /// The connection carries a tunnel: it no longer counts.
    pub fn known(&self) {
        if self.left.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut counts = self
            .table
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.known();
    }
}

/// How many tunnels a connection carries now: an HTTP/2 connection's idle
/// limit counts these, not requests (a request every few seconds, answered
/// 404, kept a connection that carried nothing from ever being idle).
#[derive(Clone, Default)]
pub(crate) struct Carried(Arc<AtomicU64>);

impl Carried {
    /// Tunnels carried now.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one tunnel until the returned value is dropped.
    pub fn carry(&self) -> Carrying {
        self.0.fetch_add(1, Ordering::Relaxed);
        Carrying(self.0.clone())
    }
}

/// One tunnel counted in [`Carried`].
pub(crate) struct Carrying(Arc<AtomicU64>);

impl Drop for Carrying {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_source_gets_its_bound_and_a_place_back_when_a_connection_is_known_or_ends() {
        let t = Strangers::new(2);
        let a = t.enter(ip("203.0.113.7")).expect("first");
        let b = t.enter(ip("203.0.113.7")).expect("second");
        assert!(t.enter(ip("203.0.113.7")).is_none(), "past the bound");
        assert!(t.enter(ip("203.0.113.8")).is_some(), "another source");
        a.known();
        a.known();
        assert_eq!(t.count(ip("203.0.113.7")), 1, "known once");
        let c = t.enter(ip("203.0.113.7")).expect("a place back");
        drop(a);
        assert_eq!(t.count(ip("203.0.113.7")), 2, "a known one leaves once");
        drop((b, c));
        assert_eq!(t.count(ip("203.0.113.7")), 0);
        assert!(t.counts.lock().expect("lock").is_empty(), "no entry left");
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let t = Strangers::new(1);
        let _a = t.enter(ip("2001:db8::1")).expect("first");
        assert!(t.enter(ip("2001:db8::2")).is_none(), "same /64");
        assert!(t.enter(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
