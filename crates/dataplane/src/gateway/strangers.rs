//! Connections that carry no tunnel, counted per source (an IPv4 address,
//! an IPv6 /64). A connection counts from its accept until a tunnel on it
//! is granted, and again from when its last tunnel ends: handshakes,
//! requests answered 404, idle keep-alives, and HTTP/2 connections between
//! tunnels all count. Past the bound, new connections from that source are
//! closed at once, before TLS, and an HTTP/2 connection whose last tunnel
//! ends while its source is at the bound is told to go away; so one source
//! cannot hold the connection budget with connections that open nothing,
//! or that open a tunnel now and then and reset it. A carrier's NAT full
//! of subscribers is not held back by their tunnels, which do not count.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use httvps_wire::source::{SourceCounts, source_of};

/// The strangers of every source.
pub(crate) struct Strangers(SourceCounts);

impl Strangers {
    /// A table allowing `per_source` strangers per source (at least 1).
    pub fn new(per_source: usize) -> Arc<Self> {
        Arc::new(Strangers(SourceCounts::new(per_source)))
    }

    /// Counts a new connection from `peer`, unless its source has as many
    /// strangers as allowed.
    pub fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<Arc<Stranger>> {
        let key = source_of(peer);
        if !self.0.take(key) {
            return None;
        }
        Some(Arc::new(Stranger {
            table: self.clone(),
            key,
            counted: AtomicBool::new(true),
            tunnels: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
        }))
    }

    /// Strangers from `peer`'s source now.
    #[cfg(test)]
    pub fn count(&self, peer: IpAddr) -> usize {
        self.0.held(source_of(peer))
    }
}

/// One connection: whether it holds a place among its source's strangers,
/// the tunnels it carries now, and whether it was told to go (its last
/// tunnel ended while its source had no place left).
pub(crate) struct Stranger {
    table: Arc<Strangers>,
    key: IpAddr,
    counted: AtomicBool,
    tunnels: AtomicU64,
    evicted: AtomicBool,
}

impl Stranger {
    /// A tunnel on the connection is granted: it no longer counts.
    pub fn known(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.table.0.give(self.key);
        }
    }

    /// Counts one tunnel on the connection until the returned value is
    /// dropped; when the last one goes, the connection counts again (or,
    /// its source having no place left, is to go).
    pub fn carry(self: &Arc<Self>) -> Carrying {
        self.tunnels.fetch_add(1, Ordering::AcqRel);
        Carrying(self.clone())
    }

    /// Tunnels carried now.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Acquire)
    }

    /// Whether the connection is to go once it carries no tunnel.
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// The connection carries no tunnel again.
    fn rejoin(&self) {
        if self.counted.load(Ordering::Acquire) {
            return;
        }
        if self.table.0.take(self.key) {
            if self.counted.swap(true, Ordering::AcqRel) {
                // Counted meanwhile by another rejoin: one place only.
                self.table.0.give(self.key);
            }
            self.evicted.store(false, Ordering::Release);
        } else {
            self.evicted.store(true, Ordering::Release);
        }
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.known();
    }
}

/// One tunnel counted on its connection.
pub(crate) struct Carrying(Arc<Stranger>);

impl Drop for Carrying {
    fn drop(&mut self) {
        if self.0.tunnels.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.rejoin();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_connection_counts_again_when_its_last_tunnel_ends_or_is_told_to_go() {
        let t = Strangers::new(2);
        let a = t.enter(ip("203.0.113.7")).expect("first");
        let tunnel = a.carry();
        a.known();
        assert_eq!(t.count(ip("203.0.113.7")), 0, "carrying a granted tunnel");
        let b = t.enter(ip("203.0.113.7")).expect("second");
        let c = t.enter(ip("203.0.113.7")).expect("third");
        drop(tunnel);
        assert_eq!(a.tunnels(), 0);
        assert!(a.evicted(), "no place left for it: it is to go");
        drop(c);
        let tunnel = a.carry();
        a.known();
        drop(tunnel);
        assert!(!a.evicted(), "a place was free this time");
        assert_eq!(t.count(ip("203.0.113.7")), 2, "counted again: b and a");
        drop((a, b));
        assert_eq!(t.count(ip("203.0.113.7")), 0);
    }

    #[test]
    fn a_refused_tunnel_leaves_the_connection_counted_once() {
        let t = Strangers::new(3);
        let a = t.enter(ip("198.51.100.1")).expect("first");
        drop(a.carry());
        assert_eq!(t.count(ip("198.51.100.1")), 1);
        assert!(!a.evicted());
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
        assert_eq!(t.0.sources(), 0, "no entry left");
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let t = Strangers::new(1);
        let _a = t.enter(ip("2001:db8::1")).expect("first");
        assert!(t.enter(ip("2001:db8::2")).is_none(), "same /64");
        assert!(t.enter(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
