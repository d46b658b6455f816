//! What a lab should look like; [`crate::plan::Plan`] checks it and
//! decides the addresses and names.
//!
//! - A **link** is one Ethernet segment joining two or more hosts (a veth
//!   from each host to a bridge of its own). Its hosts get addresses in its
//!   subnet, `198.18.<i>.0/24` by default (the range RFC 2544 sets aside
//!   for benchmarking), host `j` of the link getting `.j+1`.
//! - A **delay line** joins two hosts through TUN devices and the
//!   user-space forwarder; its ends get `198.19.<k>.1` and `.2` as
//!   point-to-point peers.
//! - Hosts that share no link or line cannot reach each other. A **route**
//!   `a ⇄ b via r` makes `r` a router (IP forwarding on) and gives `a` and
//!   `b` host routes to each other's addresses next to `r`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::shaper::LineParams;

/// An IPv4 subnet, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length, 8..=30.
    pub prefix: u8,
}

impl Subnet {
    /// The `n`-th host address of the subnet (1-based), if it fits.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (n >= 1 && n < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?} is not ADDRESS/LENGTH"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("subnet {s:?}: bad address: {e}"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|e| format!("subnet {s:?}: bad length: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("subnet {s:?}: length must be 8..=30"));
        }
        let subnet = Subnet {
            network: addr,
            prefix,
        };
        if u32::from(addr) & !subnet.mask() != 0 {
            return Err(format!("subnet {s:?} has host bits set"));
        }
        Ok(subnet)
    }
}

/// A link: a segment joining two or more hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// Its name, also the interface's name in each of its hosts.
    pub name: String,
    /// The hosts on it, in address order.
    pub hosts: Vec<String>,
    /// Its subnet; `None` for the next `198.18.<i>.0/24`.
    pub subnet: Option<Subnet>,
}

/// A delay line between two hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSpec {
    /// Its name, also the TUN device's name on both hosts.
    pub name: String,
    /// The first end (`a_to_b` in the counters starts here).
    pub a: String,
    /// The second end.
    pub b: String,
    /// Delay, loss and rate.
    pub params: LineParams,
}

/// Two hosts that reach each other through a router next to both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// One host.
    pub a: String,
    /// The other host.
    pub b: String,
    /// The router, sharing a link or line with each.
    pub via: String,
}

/// A lab's hosts and how they are joined. Build it with the chained
/// methods, then hand it to [`crate::Lab::build`], which checks it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Every host; hosts named by links, lines and routes are added too.
    pub hosts: Vec<String>,
    /// The links.
    pub links: Vec<LinkSpec>,
    /// The delay lines.
    pub lines: Vec<LineSpec>,
    /// The routes through routers.
    pub routes: Vec<RouteSpec>,
    /// Sysctls set on every host (`net.ipv4.tcp_congestion_control`, ...).
    pub sysctls: Vec<(String, String)>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Topology::default()
    }

    /// Adds a host (needed only for a host with no link).
    pub fn host(mut self, name: &str) -> Self {
        self.add_host(name);
        self
    }

    /// Adds link `name` joining `hosts`, with the next default subnet.
    pub fn link(self, name: &str, hosts: &[&str]) -> Self {
        self.link_in(name, hosts, None)
    }

    /// Adds link `name` joining `hosts` in subnet `subnet` (or the next
    /// default subnet for `None`).
    pub fn link_in(mut self, name: &str, hosts: &[&str], subnet: Option<Subnet>) -> Self {
        for h in hosts {
            self.add_host(h);
        }
        self.links.push(LinkSpec {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            subnet,
        });
        self
    }

    /// Adds delay line `name` between hosts `a` and `b`.
    pub fn delay_line(mut self, name: &str, a: &str, b: &str, params: LineParams) -> Self {
        self.add_host(a);
        self.add_host(b);
        self.lines.push(LineSpec {
            name: name.to_owned(),
            a: a.to_owned(),
            b: b.to_owned(),
            params,
        });
        self
    }

    /// Lets `a` and `b` reach each other through router `via`.
    pub fn route(mut self, a: &str, b: &str, via: &str) -> Self {
        self.routes.push(RouteSpec {
            a: a.to_owned(),
            b: b.to_owned(),
            via: via.to_owned(),
        });
        self
    }

    /// Sets a sysctl on every host.
    pub fn sysctl(mut self, key: &str, value: &str) -> Self {
        self.sysctls.push((key.to_owned(), value.to_owned()));
        self
    }

    fn add_host(&mut self, name: &str) {
        if !self.hosts.iter().any(|h| h == name) {
            self.hosts.push(name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "203.0.113.0/24".parse().expect("valid");
        assert_eq!(s.host(1), Some(addr("203.0.113.1")));
        assert_eq!(s.host(254), Some(addr("203.0.113.254")));
        assert_eq!(s.host(255), None);
        assert!("203.0.113.1/24".parse::<Subnet>().is_err());
        assert!("203.0.113.0/31".parse::<Subnet>().is_err());
        assert!("nonsense".parse::<Subnet>().is_err());
    }
}
