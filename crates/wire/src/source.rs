//! What one source of traffic is, as both planes bound it: an IPv4 address
//! (IPv4 in IPv6 included), or an IPv6 /64, the block one subscriber
//! usually holds. The control plane's connection shares and throttles and
//! the gateway's bounds on strangers and on credential checks all count
//! by it, through [`source_of`] and [`SourceCounts`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

/// The source `ip` counts for: the address itself for IPv4 (IPv4 in IPv6
/// included), its /64 for IPv6.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Places held per source, each source at most `bound` of them. Keys are
/// sources (see [`source_of`]); a source holding none takes no memory.
#[derive(Debug)]
pub struct SourceCounts {
    bound: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCounts {
    /// No places held; at most `bound` per source (at least 1).
    pub fn new(bound: usize) -> Self {
        SourceCounts {
            bound: bound.max(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place of `source`'s; `false` when it holds its bound.
    pub fn take(&self, source: IpAddr) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(source).or_insert(0);
        if *n >= self.bound {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives a place of `source`'s back (one it took).
    pub fn give(&self, source: IpAddr) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&source);
            }
        }
    }

    /// Places `source` holds now.
    pub fn held(&self, source: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&source).copied().unwrap_or(0)
    }

    /// Sources holding a place now.
    pub fn sources(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(source_of(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
        assert_eq!(source_of(ip("192.0.2.9")), ip("192.0.2.9"));
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_source_takes_up_to_its_bound_and_its_places_come_back() {
        let c = SourceCounts::new(2);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(c.take(a));
        assert!(c.take(a));
        assert!(!c.take(a), "at its bound");
        assert!(c.take(b), "another source is not held back");
        assert_eq!((c.held(a), c.held(b)), (2, 1));
        c.give(a);
        assert!(c.take(a), "a place given back is taken again");
        c.give(a);
        c.give(a);
        c.give(b);
        assert_eq!(c.sources(), 0, "sources holding nothing are forgotten");
        c.give(a);
        assert_eq!(
            c.held(a),
            0,
            "giving back more than was taken counts nothing"
        );
    }

    #[test]
    fn a_bound_of_zero_is_one() {
        let c = SourceCounts::new(0);
        assert!(c.take(ip("192.0.2.1")));
        assert!(!c.take(ip("192.0.2.1")));
    }
}
