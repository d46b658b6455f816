//! The node: a real Shadowsocks server (TCP: our own accept loop over the
//! `shadowsocks` crate; UDP: shadowsocks-service's server) with its pool's
//! key, refusing private destinations by default, and
//! heartbeating its load (open client connections, read from the kernel's
//! socket table) and traffic counters to the control plane.
//!
//! - `tcp`: the Shadowsocks TCP accept loop on the public port (the
//!   `shadowsocks` crate's server streams, shadowsocks-service's logic),
//!   counting every connection's bytes as it copies them.
//! - `destinations`: the one table of refused destinations, with the
//!   ACL and the resolver filter made from it.
//! - [`witness`]: the per-connection counters, which make the node a
//!   second witness of every session's bytes, and their reports.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shadowsocks_service::net::FlowStat;
use shadowsocks_service::server::{Server, ServerBuilder};
use shadowsocks_service::shadowsocks::config::{Mode, ServerConfig};
use shadowsocks_service::shadowsocks::crypto::CipherKind;
use shadowsocks_service::shadowsocks::dns_resolver::DnsResolver;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use httvps_wire::Secret;
use httvps_wire::heartbeat::OutlineBeat;

mod destinations;
mod tcp;
pub mod witness;

pub use destinations::{PRIVATE_NETS, PrivateNet, is_private};
use destinations::{PublicOnly, private_block_acl};
pub use witness::Witness;

/// Parses one of the supported cipher names.
pub fn parse_method(name: &str) -> Option<CipherKind> {
    match name.parse::<CipherKind>().ok()? {
        k @ (CipherKind::CHACHA20_POLY1305 | CipherKind::AES_128_GCM | CipherKind::AES_256_GCM) => {
            Some(k)
        }
        _ => None,
    }
}

/// Node settings (their `Debug` shows no password).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where to listen (TCP and UDP on the same port).
    pub listen: SocketAddr,
    /// Cipher.
    pub method: CipherKind,
    /// Shadowsocks password.
    pub password: Secret,
    /// Allow private, loopback and link-local destinations (tests on one machine).
    pub allow_private: bool,
}

/// How long a client has to send its request header, and the node to
/// reach the destination (shadowsocks-service's server timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running node.
pub struct RunningNode {
    /// The TCP and UDP address.
    pub addr: SocketAddr,
    /// Every client TCP connection's bytes, per peer connection.
    pub witness: Arc<Witness>,
    stats: Vec<Arc<FlowStat>>,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

impl RunningNode {
    /// Bytes sent to clients (TCP and UDP, as encrypted).
    pub fn tx(&self) -> u64 {
        self.stats.iter().map(|s| s.tx()).sum()
    }
    /// Bytes received from clients.
    pub fn rx(&self) -> u64 {
        self.stats.iter().map(|s| s.rx()).sum()
    }
    /// Stops accepting (open relays end with their peers).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// shadowsocks-service's UDP server on `addr`.
async fn build_udp(addr: SocketAddr, opts: &NodeOptions) -> io::Result<(Server, Arc<FlowStat>)> {
    let mut cfg =
        ServerConfig::new(addr, opts.password.expose(), opts.method).map_err(io::Error::other)?;
    cfg.set_mode(Mode::UdpOnly);
    cfg.set_timeout(HANDSHAKE_TIMEOUT);
    let mut b = ServerBuilder::new(cfg);
    if !opts.allow_private {
        b.set_acl(Arc::new(private_block_acl()?));
        b.set_dns_resolver(Arc::new(DnsResolver::custom_resolver(PublicOnly)));
    }
    b.set_udp_expiry_duration(Duration::from_secs(120));
    let stat = b.flow_stat();
    Ok((b.build().await?, stat))
}

/// Starts a node: the Shadowsocks TCP accept loop (see `tcp`) and
/// shadowsocks-service's UDP server, both on `opts.listen`. With port 0,
/// TCP and UDP get one common free port.
pub async fn start(opts: &NodeOptions) -> io::Result<RunningNode> {
    let witness = Arc::new(Witness::new());
    let tcp_stat = Arc::new(FlowStat::new());
    let relay = Arc::new(tcp::TcpRelay::new(
        opts,
        HANDSHAKE_TIMEOUT,
        witness.clone(),
        tcp_stat.clone(),
    )?);
    let tries = if opts.listen.port() == 0 { 16 } else { 1 };
    for _ in 0..tries {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        match build_udp(addr, opts).await {
            Ok((udp, udp_stat)) => {
                let tasks = vec![
                    tokio::spawn(udp.run()),
                    tokio::spawn(tcp::run(listener, relay)),
                ];
                return Ok(RunningNode {
                    addr,
                    witness,
                    stats: vec![tcp_stat, udp_stat],
                    tasks,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port for both TCP and UDP",
    ))
}

/// Sends a heartbeat with the node's counters every `every` until dropped.
pub fn spawn_heartbeats(
    backend: Backend,
    node: Arc<RunningNode>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let beat = OutlineBeat {
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                load: open_connections(node.addr.port()),
                bytes_in: i64::try_from(node.rx()).unwrap_or(i64::MAX),
                bytes_out: i64::try_from(node.tx()).unwrap_or(i64::MAX),
            };
            if let Err(e) = backend.outline_heartbeat(&beat).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    })
}

/// The node's open client connections: established TCP sockets whose local
/// port is the node's, from the kernel's socket tables (0 where there are
/// none to read).
pub fn open_connections(port: u16) -> i32 {
    let n: usize = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|table| established_on(&table, port))
        .sum();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Counts the rows of a `/proc/net/tcp` table in state ESTABLISHED (`01`)
/// whose local address has port `port`.
fn established_on(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let mut cols = row.split_whitespace();
            let local = cols.nth(1).unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == "01" && local_port == Some(port)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_sockets_on_the_port_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:20FC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:20FC 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:20FC 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D433 0100007F:20FC 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:20FC 0100007F:D434 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0000000000000000 20 4 30 10 -1
";
        // Port 0x20FC = 8444: the listener (0A), two clients, the node's own
        // outgoing socket to another 8444 (remote side) and a TIME_WAIT.
        assert_eq!(established_on(table, 8444), 2);
        assert_eq!(established_on(table, 8445), 0);
        assert_eq!(established_on("", 8444), 0);
    }

    #[tokio::test]
    async fn open_connections_follow_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(open_connections(port), 0);
        let mut held = Vec::new();
        for _ in 0..3 {
            let c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let (s, _) = listener.accept().await.expect("accept");
            held.push((c, s));
        }
        assert_eq!(open_connections(port), 3);
        held.clear();
        // Closed sockets leave ESTABLISHED at once on loopback.
        assert_eq!(open_connections(port), 0);
    }
}
