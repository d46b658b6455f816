//! The lab as data, for the binary's `ready` line and for tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::Lab;
use crate::relay::RelayInfo;

impl Lab {
    /// The lab as JSON-ready data: hosts with their namespaces and
    /// addresses, links, lines and their parameters.
    pub fn describe(&self) -> LabInfo {
        let hosts = self
            .plan
            .hosts
            .iter()
            .map(|h| {
                let reach = self
                    .plan
                    .hosts
                    .iter()
                    .filter(|o| *o != h)
                    .filter_map(|o| self.plan.reach(h, o).map(|a| (o.clone(), a)))
                    .collect();
                let info = HostInfo {
                    netns: self.ns_of(h),
                    addrs: self.plan.addresses(h),
                    reach,
                    router: self.plan.routers.contains(h),
                };
                (h.clone(), info)
            })
            .collect();
        let links = self
            .plan
            .links
            .iter()
            .map(|l| {
                let info = LinkInfo {
                    subnet: l.subnet.to_string(),
                    hosts: l.members.iter().map(|m| (m.host.clone(), m.addr)).collect(),
                };
                (l.name.clone(), info)
            })
            .collect();
        let lines = self
            .plan
            .lines
            .iter()
            .map(|l| {
                let p = l.params;
                let info = LineInfo {
                    a: l.a.0.clone(),
                    b: l.b.0.clone(),
                    hosts: [(l.a.0.clone(), l.a.1), (l.b.0.clone(), l.b.1)]
                        .into_iter()
                        .collect(),
                    delay_ms: p.delay.as_secs_f64() * 1000.0,
                    loss: p.loss,
                    rate_mbit: p.rate_bps.map(|r| r as f64 / 1e6),
                    buffer_ms: p.buffer.as_secs_f64() * 1000.0,
                    seed: p.seed,
                    offload: p.offload,
                    realtime: p.realtime,
                };
                (l.name.clone(), info)
            })
            .collect();
        let relays = self
            .relays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|r| r.info.clone())
            .collect();
        LabInfo {
            lab: self.name.clone(),
            prefix: self.prefix.clone(),
            hosts,
            links,
            lines,
            relays,
        }
    }
}

/// A host as [`Lab::describe`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    /// Its namespace, for `ip netns exec`.
    pub netns: String,
    /// Its addresses by link or line.
    pub addrs: BTreeMap<String, Ipv4Addr>,
    /// For each host it can reach, the address to use.
    pub reach: BTreeMap<String, Ipv4Addr>,
    /// Whether it forwards packets.
    pub router: bool,
}

/// A link as [`Lab::describe`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    /// Its subnet.
    pub subnet: String,
    /// Its hosts' addresses.
    pub hosts: BTreeMap<String, Ipv4Addr>,
}

/// A delay line as [`Lab::describe`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LineInfo {
    /// The first end (`a_to_b` starts here).
    pub a: String,
    /// The second end.
    pub b: String,
    /// Both ends' addresses.
    pub hosts: BTreeMap<String, Ipv4Addr>,
    /// One-way delay.
    pub delay_ms: f64,
    /// Share of packets lost.
    pub loss: f64,
    /// Rate limit, if any.
    pub rate_mbit: Option<f64>,
    /// The rate limiter's buffer, in time.
    pub buffer_ms: f64,
    /// Seed of the losses.
    pub seed: u64,
    /// Whether GSO units cross the line whole.
    pub offload: bool,
    /// Whether the line's threads run in the real-time class.
    pub realtime: bool,
}

/// The whole lab as [`Lab::describe`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    /// The lab's label.
    pub lab: String,
    /// Its namespaces' prefix (for `httvps-netlab cleanup --prefix`).
    pub prefix: String,
    /// Its hosts.
    pub hosts: BTreeMap<String, HostInfo>,
    /// Its links.
    pub links: BTreeMap<String, LinkInfo>,
    /// Its delay lines.
    pub lines: BTreeMap<String, LineInfo>,
    /// Its relays to services outside.
    pub relays: Vec<RelayInfo>,
}
