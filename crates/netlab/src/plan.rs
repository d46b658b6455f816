//! The plan of a lab: a [`Topology`] checked, with every address,
//! interface name, bridge port and route decided. Pure data, tested
//! without creating anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::shaper::LineParams;
use crate::topology::{Subnet, Topology};

/// One host's place on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The host.
    pub host: String,
    /// Its address on the link.
    pub addr: Ipv4Addr,
    /// Its veth's other end, a bridge port in the fabric namespace.
    pub port: String,
}

/// A link with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The link's name (and the hosts' interface name).
    pub name: String,
    /// Its subnet.
    pub subnet: Subnet,
    /// Its bridge in the fabric namespace.
    pub bridge: String,
    /// Its hosts.
    pub members: Vec<Member>,
}

/// A delay line with its addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlan {
    /// The line's name (and the TUN devices' name).
    pub name: String,
    /// The first end and its address.
    pub a: (String, Ipv4Addr),
    /// The second end and its address.
    pub b: (String, Ipv4Addr),
    /// Delay, loss and rate.
    pub params: LineParams,
}

/// A route to install: on `host`, `dest/32 via gateway dev dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Where the route goes.
    pub host: String,
    /// The destination address.
    pub dest: Ipv4Addr,
    /// The router's address next to `host`.
    pub gateway: Ipv4Addr,
    /// The interface towards it.
    pub dev: String,
}

/// A checked topology with every address and name decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The hosts, in declaration order.
    pub hosts: Vec<String>,
    /// The links.
    pub links: Vec<LinkPlan>,
    /// The delay lines.
    pub lines: Vec<LinePlan>,
    /// Hosts that forward packets.
    pub routers: BTreeSet<String>,
    /// Routes to install.
    pub routes: Vec<RoutePlan>,
    /// Sysctls for every host.
    pub sysctls: Vec<(String, String)>,
}

impl Plan {
    /// Checks `topo` and decides its addresses; the error says what is wrong.
    pub fn new(topo: &Topology) -> Result<Plan, String> {
        for h in &topo.hosts {
            check_host_name(h)?;
        }
        let known = |h: &String| -> Result<(), String> {
            if topo.hosts.contains(h) {
                Ok(())
            } else {
                Err(format!("unknown host {h:?}"))
            }
        };
        let mut names = BTreeSet::new();
        for name in topo
            .links
            .iter()
            .map(|l| &l.name)
            .chain(topo.lines.iter().map(|l| &l.name))
        {
            check_interface_name(name)?;
            if !names.insert(name.clone()) {
                return Err(format!("two links or lines are called {name:?}"));
            }
        }
        if topo.links.len() > 256 || topo.lines.len() > 256 {
            return Err("at most 256 links and 256 delay lines".to_owned());
        }
        let mut links: Vec<LinkPlan> = Vec::new();
        for (i, link) in topo.links.iter().enumerate() {
            let distinct: BTreeSet<&String> = link.hosts.iter().collect();
            if link.hosts.len() < 2 || distinct.len() != link.hosts.len() {
                return Err(format!(
                    "link {:?} needs two or more distinct hosts",
                    link.name
                ));
            }
            let subnet = link.subnet.unwrap_or(Subnet {
                network: Ipv4Addr::new(198, 18, i as u8, 0),
                prefix: 24,
            });
            if let Some(other) = links.iter().find(|l| l.subnet.overlaps(&subnet)) {
                return Err(format!(
                    "link {:?}'s subnet {subnet} overlaps link {:?}'s",
                    link.name, other.name
                ));
            }
            let mut members = Vec::new();
            for (j, host) in link.hosts.iter().enumerate() {
                known(host)?;
                let addr = subnet
                    .host(j as u32 + 1)
                    .ok_or_else(|| format!("link {:?}: subnet {subnet} is too small", link.name))?;
                members.push(Member {
                    host: host.clone(),
                    addr,
                    port: format!("p{i}m{j}"),
                });
            }
            links.push(LinkPlan {
                name: link.name.clone(),
                subnet,
                bridge: format!("b{i}"),
                members,
            });
        }
        let line_net = Subnet {
            network: Ipv4Addr::new(198, 19, 0, 0),
            prefix: 16,
        };
        if let Some(l) = links.iter().find(|l| l.subnet.overlaps(&line_net)) {
            return Err(format!(
                "link {:?}'s subnet overlaps 198.19.0.0/16, kept for delay lines",
                l.name
            ));
        }
        let mut lines = Vec::new();
        for (k, line) in topo.lines.iter().enumerate() {
            known(&line.a)?;
            known(&line.b)?;
            if line.a == line.b {
                return Err(format!("delay line {:?} joins a host to itself", line.name));
            }
            line.params
                .validate()
                .map_err(|e| format!("delay line {:?}: {e}", line.name))?;
            lines.push(LinePlan {
                name: line.name.clone(),
                a: (line.a.clone(), Ipv4Addr::new(198, 19, k as u8, 1)),
                b: (line.b.clone(), Ipv4Addr::new(198, 19, k as u8, 2)),
                params: line.params,
            });
        }
        let mut plan = Plan {
            hosts: topo.hosts.clone(),
            links,
            lines,
            routers: BTreeSet::new(),
            routes: Vec::new(),
            sysctls: topo.sysctls.clone(),
        };
        for (key, value) in &plan.sysctls {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-/ \t".contains(c))
            };
            if !ok(key) || !ok(value) || key.contains(' ') {
                return Err(format!("bad sysctl {key:?}={value:?}"));
            }
        }
        for r in &topo.routes {
            known(&r.a)?;
            known(&r.b)?;
            known(&r.via)?;
            if r.a == r.b || r.a == r.via || r.b == r.via {
                return Err(format!(
                    "route {} ⇄ {} via {} needs three hosts",
                    r.a, r.b, r.via
                ));
            }
            let mut routes = Vec::new();
            for (from, to) in [(&r.a, &r.b), (&r.b, &r.a)] {
                let (gateway, dev) = plan.adjacent(from, &r.via).ok_or_else(|| {
                    format!("route via {}: {} shares no link with it", r.via, from)
                })?;
                let dests = plan.addresses_next_to(to, &r.via);
                if dests.is_empty() {
                    return Err(format!(
                        "route via {}: {} shares no link with it",
                        r.via, to
                    ));
                }
                for dest in dests {
                    routes.push(RoutePlan {
                        host: from.clone(),
                        dest,
                        gateway,
                        dev: dev.clone(),
                    });
                }
            }
            plan.routes.extend(routes);
            plan.routers.insert(r.via.clone());
        }
        Ok(plan)
    }

    /// `to`'s address on the first link or line it shares with `from`, and
    /// `from`'s interface there. Delay lines come first: a line is there to
    /// be used.
    pub fn adjacent(&self, from: &str, to: &str) -> Option<(Ipv4Addr, String)> {
        let by_line = self.lines.iter().find_map(|l| {
            if l.a.0 == from && l.b.0 == to {
                Some((l.b.1, l.name.clone()))
            } else if l.b.0 == from && l.a.0 == to {
                Some((l.a.1, l.name.clone()))
            } else {
                None
            }
        });
        by_line.or_else(|| {
            self.links.iter().find_map(|l| {
                let on = |h: &str| l.members.iter().find(|m| m.host == h);
                on(from)?;
                on(to).map(|m| (m.addr, l.name.clone()))
            })
        })
    }

    /// `host`'s addresses on the links and lines it shares with `neighbour`.
    fn addresses_next_to(&self, host: &str, neighbour: &str) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .lines
            .iter()
            .filter_map(|l| {
                if l.a.0 == host && l.b.0 == neighbour {
                    Some(l.a.1)
                } else if l.b.0 == host && l.a.0 == neighbour {
                    Some(l.b.1)
                } else {
                    None
                }
            })
            .collect();
        for l in &self.links {
            let mine = l.members.iter().find(|m| m.host == host);
            let theirs = l.members.iter().any(|m| m.host == neighbour);
            if let (Some(m), true) = (mine, theirs) {
                out.push(m.addr);
            }
        }
        out
    }

    /// The address `from` should use to reach `to`: through a delay line
    /// between them, else a shared link, else a declared route; `None`
    /// when `to` is unreachable from `from`.
    pub fn reach(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        if let Some((addr, _)) = self.adjacent(from, to) {
            return Some(addr);
        }
        self.routes
            .iter()
            .find(|r| r.host == from && self.owner(r.dest) == Some(to))
            .map(|r| r.dest)
    }

    /// Every address of `host`, by link or line name.
    pub fn addresses(&self, host: &str) -> BTreeMap<String, Ipv4Addr> {
        let mut out = BTreeMap::new();
        for l in &self.links {
            for m in l.members.iter().filter(|m| m.host == host) {
                out.insert(l.name.clone(), m.addr);
            }
        }
        for l in &self.lines {
            for (h, addr) in [&l.a, &l.b] {
                if h == host {
                    out.insert(l.name.clone(), *addr);
                }
            }
        }
        out
    }

    /// The host that has address `addr`.
    fn owner(&self, addr: Ipv4Addr) -> Option<&str> {
        self.links
            .iter()
            .flat_map(|l| l.members.iter().map(|m| (m.host.as_str(), m.addr)))
            .chain(
                self.lines
                    .iter()
                    .flat_map(|l| [(l.a.0.as_str(), l.a.1), (l.b.0.as_str(), l.b.1)]),
            )
            .find(|(_, a)| *a == addr)
            .map(|(h, _)| h)
    }
}

/// Host names end up in namespace names and file paths.
fn check_host_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host name {name:?}: use 1-32 letters, digits, '_' or '-', starting with a letter"
        ))
    }
}

/// Link and line names become interface names: at most 15 bytes.
fn check_interface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "lo"
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "link name {name:?}: use 1-15 letters, digits, '_' or '-', starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    fn deployment() -> Topology {
        Topology::new()
            .host("lonely")
            .link("public", &["client", "gw"])
            .link("pool", &["gw", "n1", "n2"])
            .link("ctl", &["cp", "gw"])
            .route("cp", "n1", "gw")
    }

    #[test]
    fn links_get_consecutive_subnets_and_hosts_consecutive_addresses() {
        let plan = Plan::new(&deployment()).expect("valid");
        assert_eq!(plan.links[0].subnet.to_string(), "198.18.0.0/24");
        assert_eq!(plan.links[1].subnet.to_string(), "198.18.1.0/24");
        let pool: Vec<_> = plan.links[1].members.iter().map(|m| m.addr).collect();
        assert_eq!(
            pool,
            vec![addr("198.18.1.1"), addr("198.18.1.2"), addr("198.18.1.3")]
        );
        assert_eq!(plan.links[1].members[2].port, "p1m2");
        assert_eq!(plan.hosts.len(), 6);
    }

    #[test]
    fn reach_follows_links_lines_and_routes_only() {
        let topo = deployment().delay_line(
            "wan",
            "client",
            "gw",
            LineParams::with_delay(std::time::Duration::from_millis(25)),
        );
        let plan = Plan::new(&topo).expect("valid");
        // The line wins over the plain link between the same hosts.
        assert_eq!(plan.reach("client", "gw"), Some(addr("198.19.0.2")));
        assert_eq!(plan.reach("gw", "client"), Some(addr("198.19.0.1")));
        assert_eq!(plan.reach("gw", "n2"), Some(addr("198.18.1.3")));
        assert_eq!(plan.reach("client", "n1"), None);
        assert_eq!(plan.reach("lonely", "gw"), None);
        // The route: cp reaches n1 through gw, and back.
        assert_eq!(plan.reach("cp", "n1"), Some(addr("198.18.1.2")));
        assert_eq!(plan.reach("n1", "cp"), Some(addr("198.18.2.1")));
        assert_eq!(plan.reach("cp", "n2"), None);
        assert!(plan.routers.contains("gw"));
        let on_cp: Vec<_> = plan.routes.iter().filter(|r| r.host == "cp").collect();
        assert_eq!(on_cp.len(), 1);
        assert_eq!(on_cp[0].gateway, addr("198.18.2.2"));
        assert_eq!(on_cp[0].dev, "ctl");
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let cases = [
            (Topology::new().link("l0", &["a"]), "two or more"),
            (Topology::new().link("l0", &["a", "a"]), "distinct"),
            (
                Topology::new()
                    .link("l0", &["a", "b"])
                    .link("l0", &["b", "c"]),
                "two links",
            ),
            (
                Topology::new().link("a-name-far-too-long", &["a", "b"]),
                "1-15",
            ),
            (Topology::new().link("l0", &["1a", "b"]), "host name"),
            (
                Topology::new().link("l0", &["a", "b"]).route("a", "c", "b"),
                "unknown host",
            ),
            (
                Topology::new()
                    .link("l0", &["a", "b"])
                    .host("c")
                    .route("a", "c", "b"),
                "shares no link",
            ),
            (
                Topology::new()
                    .link_in("l0", &["a", "b"], Some("10.0.0.0/30".parse().expect("net")))
                    .link_in("l1", &["a", "c"], Some("10.0.0.0/24".parse().expect("net"))),
                "overlaps",
            ),
            (
                Topology::new().link_in(
                    "l0",
                    &["a", "b", "c"],
                    Some("10.0.0.0/30".parse().expect("net")),
                ),
                "too small",
            ),
            (
                Topology::new().delay_line("d", "a", "a", LineParams::default()),
                "itself",
            ),
        ];
        for (topo, expected) in cases {
            let err = Plan::new(&topo).expect_err(expected);
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
