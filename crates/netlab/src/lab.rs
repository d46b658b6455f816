//! A lab: the hosts of a [`Topology`] as network namespaces, joined as it
//! says, torn down when the [`Lab`] is dropped.
//!
//! Every link is a bridge in one extra "fabric" namespace with a veth to
//! each of its hosts. The fabric has no addresses and forwards nothing
//! between bridges, so hosts reach exactly what they share a link with.
//! Cutting a link disables its bridge ports: the hosts keep their
//! interfaces, addresses and routes (as when a cable beyond the host's own
//! switch port fails), packets vanish silently, and open TCP connections
//! pick up again when the link is restored.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cmd;
use crate::delay_line::{DelayLine, End, LineCounts};
use crate::error::{Error, Result};
use crate::netns;
use crate::plan::Plan;
use crate::relay::Relay;
use crate::topology::Topology;

mod describe;
pub use describe::{HostInfo, LabInfo, LineInfo, LinkInfo};

/// Labs made by this process so far: part of each lab's prefix, so labs of
/// parallel tests never share a namespace name.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running lab. Dropping it kills what runs inside, stops the delay
/// lines and deletes every namespace it made.
#[derive(Debug)]
pub struct Lab {
    name: String,
    prefix: String,
    plan: Plan,
    /// Namespaces created so far, so a half-built lab is removed too.
    namespaces: Vec<String>,
    lines: BTreeMap<String, DelayLine>,
    relays: Mutex<Vec<Relay>>,
}

impl Lab {
    /// Creates the namespaces, links, delay lines and routes of `topo`.
    /// `name` only labels the lab in [`Lab::describe`]; namespaces are
    /// called `hv-<pid>-<n>-<host>`. On error nothing is left behind.
    pub fn build(name: &str, topo: &Topology) -> Result<Lab> {
        let plan = Plan::new(topo).map_err(Error::Spec)?;
        let prefix = format!(
            "{}{}-{}-",
            netns::PREFIX,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            name: name.to_owned(),
            prefix,
            plan,
            namespaces: Vec::new(),
            lines: BTreeMap::new(),
            relays: Mutex::new(Vec::new()),
        };
        lab.set_up()?;
        Ok(lab)
    }

    /// Every `ip` line names devices after `dev`/`name`: a bare device
    /// name that happens to be a prefix of a keyword (`l`, `up`) is read
    /// as the keyword.
    fn set_up(&mut self) -> Result<()> {
        let hosts = self.plan.hosts.clone();
        let mut all = hosts.iter().map(|h| self.ns_of(h)).collect::<Vec<_>>();
        if !self.plan.links.is_empty() {
            all.push(self.fabric());
        }
        // Recorded before creation so that a failure half-way still
        // deletes whatever exists.
        self.namespaces = all.clone();
        cmd::ip_batch(
            None,
            &all.iter()
                .map(|ns| format!("netns add {ns}"))
                .collect::<Vec<_>>(),
        )?;
        for host in &hosts {
            // IPv6 off: its link-local chatter (router and neighbour
            // solicitations, MLD) would cross links and delay lines and
            // blur their packet counts; the lab is IPv4.
            let mut settings = vec![
                "net.ipv6.conf.all.disable_ipv6=1".to_owned(),
                "net.ipv6.conf.default.disable_ipv6=1".to_owned(),
            ];
            if self.plan.routers.contains(host) {
                settings.push("net.ipv4.ip_forward=1".to_owned());
            }
            settings.extend(self.plan.sysctls.iter().map(|(k, v)| format!("{k}={v}")));
            cmd::sysctl(&self.ns_of(host), &settings)?;
        }
        if !self.plan.links.is_empty() {
            let mut fabric = vec!["link set lo up".to_owned()];
            for link in &self.plan.links {
                // No STP: ports forward as soon as they are up.
                fabric.push(format!(
                    "link add name {} type bridge stp_state 0",
                    link.bridge
                ));
                fabric.push(format!("link set dev {} up", link.bridge));
                for m in &link.members {
                    fabric.push(format!(
                        "link add name {} type veth peer name {} netns {}",
                        m.port,
                        link.name,
                        self.ns_of(&m.host)
                    ));
                    fabric.push(format!("link set dev {} master {} up", m.port, link.bridge));
                }
            }
            cmd::ip_batch(Some(&self.fabric()), &fabric)?;
        }
        for host in &hosts {
            let mut lines = vec!["link set lo up".to_owned()];
            for link in &self.plan.links {
                for m in link.members.iter().filter(|m| &m.host == host) {
                    lines.push(format!(
                        "addr add {}/{} dev {}",
                        m.addr, link.subnet.prefix, link.name
                    ));
                    lines.push(format!("link set dev {} up", link.name));
                }
            }
            cmd::ip_batch(Some(&self.ns_of(host)), &lines)?;
        }
        for line in self.plan.lines.clone() {
            let (ns_a, ns_b) = (self.ns_of(&line.a.0), self.ns_of(&line.b.0));
            let running = DelayLine::start(
                &line.name,
                End {
                    netns: &ns_a,
                    ifname: &line.name,
                    addr: line.a.1,
                },
                End {
                    netns: &ns_b,
                    ifname: &line.name,
                    addr: line.b.1,
                },
                line.params,
            )?;
            self.lines.insert(line.name.clone(), running);
        }
        for host in &hosts {
            let routes: Vec<String> = self
                .plan
                .routes
                .iter()
                .filter(|r| &r.host == host)
                .map(|r| format!("route add {}/32 via {} dev {}", r.dest, r.gateway, r.dev))
                .collect();
            cmd::ip_batch(Some(&self.ns_of(host)), &routes)?;
        }
        Ok(())
    }

    /// The lab's label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What every namespace of this lab starts with (`hv-<pid>-<n>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The checked plan: hosts, links, addresses, routes.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn ns_of(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// The namespace that holds the links' bridges (hosts can't be called
    /// ".fabric", so it never clashes with one).
    fn fabric(&self) -> String {
        format!("{}.fabric", self.prefix)
    }

    fn check_host(&self, host: &str) -> Result<()> {
        if self.plan.hosts.iter().any(|h| h == host) {
            Ok(())
        } else {
            Err(Error::Spec(format!("no host {host:?} in this lab")))
        }
    }

    /// The namespace name of `host`, for `ip netns exec NAME ...`.
    pub fn netns(&self, host: &str) -> Result<String> {
        self.check_host(host)?;
        Ok(self.ns_of(host))
    }

    /// The address `from` should use to reach `to` (see [`Plan::reach`]).
    pub fn reach(&self, from: &str, to: &str) -> Option<Ipv4Addr> {
        self.plan.reach(from, to)
    }

    /// `host`'s address on link or line `link`.
    pub fn addr(&self, host: &str, link: &str) -> Option<Ipv4Addr> {
        self.plan.addresses(host).get(link).copied()
    }

    /// Runs `f` on a thread inside `host` (see [`netns::run_in`]): sockets
    /// it opens live on that host.
    pub fn run_in<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.check_host(host)?;
        netns::run_in(&self.ns_of(host), f)
    }

    /// Starts a long-lived thread inside `host` (see [`netns::spawn_in`]):
    /// for an in-process server, or a tokio runtime whose worker threads
    /// and sockets should all live on that host. Join it before the lab
    /// goes, or it keeps sockets of a deleted host.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        self.check_host(host)?;
        netns::spawn_in(&self.ns_of(host), f)
    }

    /// A command that runs `program` inside `host` (through
    /// `ip netns exec`) in a process group of its own. Start it with
    /// [`Lab::spawn`] to have it killed with the lab; whatever else runs
    /// inside a host is killed when the lab goes too.
    pub fn command(&self, host: &str, program: &str) -> Result<Command> {
        self.check_host(host)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_of(host), program])
            .process_group(0);
        Ok(cmd)
    }

    /// Starts `cmd` (from [`Lab::command`]); the process and its group are
    /// killed when the handle is dropped, which the borrow makes happen
    /// before the lab goes.
    pub fn spawn(&self, cmd: &mut Command) -> Result<HostProcess<'_>> {
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {cmd:?}"), e))?;
        Ok(HostProcess {
            child,
            _lab: PhantomData,
        })
    }

    /// Listens on `listen` inside `host` (port 0: any; the address is
    /// returned) and relays each connection to `target` as the calling
    /// thread's namespace sees it: for a test, the machine's own services,
    /// such as PostgreSQL on 127.0.0.1:5432 made reachable from a
    /// control-plane host at 127.0.0.1 there. The only way out of a lab;
    /// it stops accepting when the lab is dropped.
    pub fn relay(
        &self,
        host: &str,
        listen: std::net::SocketAddr,
        target: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr> {
        let listener = self
            .run_in(host, || std::net::TcpListener::bind(listen))?
            .map_err(|e| Error::io(format!("binding {listen} on {host}"), e))?;
        let relay =
            Relay::start(host, listener, target).map_err(|e| Error::io("starting a relay", e))?;
        let local = relay.info.listen;
        self.relays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(relay);
        Ok(local)
    }

    /// Cuts link or line `link`: every packet on it is dropped from now on.
    pub fn cut(&self, link: &str) -> Result<()> {
        self.set_link(link, None, false)
    }

    /// Restores a cut link or line.
    pub fn restore(&self, link: &str) -> Result<()> {
        self.set_link(link, None, true)
    }

    /// Cuts `host` alone off link `link` (the others on it still talk).
    pub fn cut_host(&self, link: &str, host: &str) -> Result<()> {
        self.set_link(link, Some(host), false)
    }

    /// Puts `host` back on link `link`.
    pub fn restore_host(&self, link: &str, host: &str) -> Result<()> {
        self.set_link(link, Some(host), true)
    }

    fn set_link(&self, link: &str, host: Option<&str>, up: bool) -> Result<()> {
        if let Some(line) = self.lines.get(link) {
            if host.is_some() {
                return Err(Error::Spec(format!("{link} is a delay line: cut it whole")));
            }
            line.set_cut(!up);
            return Ok(());
        }
        let plan = self
            .plan
            .links
            .iter()
            .find(|l| l.name == link)
            .ok_or_else(|| Error::Spec(format!("no link {link:?} in this lab")))?;
        let ports: Vec<&str> = plan
            .members
            .iter()
            .filter(|m| host.is_none_or(|h| h == m.host))
            .map(|m| m.port.as_str())
            .collect();
        if ports.is_empty() {
            return Err(Error::Spec(format!(
                "host {:?} is not on link {link:?}",
                host.unwrap_or_default()
            )));
        }
        // Bridge port state: 0 disabled, 3 forwarding. Through `bridge`:
        // `ip link set ... type bridge_slave state 0` is accepted and then
        // has no effect.
        let state = if up { 3 } else { 0 };
        let lines: Vec<String> = ports
            .iter()
            .map(|p| format!("link set dev {p} state {state}"))
            .collect();
        cmd::bridge_batch(Some(&self.fabric()), &lines)?;
        if up {
            // ARP answers were lost during the cut, so hosts hold failed
            // neighbour entries and would wait for a retry (about a
            // second) before using the link again; forgetting them makes
            // the next packet ask afresh.
            for m in &plan.members {
                cmd::ip(&[
                    "-n",
                    &self.ns_of(&m.host),
                    "neigh",
                    "flush",
                    "dev",
                    &plan.name,
                ])?;
            }
        }
        Ok(())
    }

    /// The counters of delay line `line`.
    pub fn line_counts(&self, line: &str) -> Option<LineCounts> {
        self.lines.get(line).map(DelayLine::counts)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Lines first: their threads hold the TUN devices.
        self.lines.clear();
        self.relays
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = netns::delete(&ns) {
                tracing::warn!(netns = %ns, error = %e, "netlab.teardown_failed");
            }
        }
    }
}

/// A process started inside a host; killed (with its process group) when
/// dropped.
#[derive(Debug)]
pub struct HostProcess<'lab> {
    child: Child,
    _lab: PhantomData<&'lab Lab>,
}

impl HostProcess<'_> {
    /// Its process id (also its process group's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its pipes or to wait for it.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for HostProcess<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let group = Pid::from_raw(self.child.id() as i32);
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
