//! The node: a real Shadowsocks server (shadowsocks-service, TCP and UDP)
//! with its pool's key, refusing private destinations by default, and
//! heartbeating its traffic counters to the control plane.
//!
//! - `destinations`: the one table of refused destinations, with the
//!   ACL and the resolver filter made from it.

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

pub use destinations::{PRIVATE_NETS, PrivateNet, is_private};
use destinations::{PublicOnly, private_block_acl};

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

/// A running node.
pub struct RunningNode {
    /// The TCP and UDP address.
    pub addr: SocketAddr,
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

async fn build(
    addr: SocketAddr,
    mode: Mode,
    opts: &NodeOptions,
) -> io::Result<(Server, Arc<FlowStat>)> {
    let mut cfg =
        ServerConfig::new(addr, opts.password.expose(), opts.method).map_err(io::Error::other)?;
    cfg.set_mode(mode);
    cfg.set_timeout(Duration::from_secs(30));
    let mut b = ServerBuilder::new(cfg);
    if !opts.allow_private {
        b.set_acl(Arc::new(private_block_acl()?));
        b.set_dns_resolver(Arc::new(DnsResolver::custom_resolver(PublicOnly)));
    }
    b.set_udp_expiry_duration(Duration::from_secs(120));
    let stat = b.flow_stat();
    Ok((b.build().await?, stat))
}

/// Starts a node. With port 0, TCP and UDP get one common free port.
pub async fn start(opts: &NodeOptions) -> io::Result<RunningNode> {
    if opts.listen.port() != 0 {
        let (server, stat) = build(opts.listen, Mode::TcpAndUdp, opts).await?;
        let addr = server
            .tcp_server()
            .map(|t| t.local_addr())
            .transpose()?
            .unwrap_or(opts.listen);
        return Ok(RunningNode {
            addr,
            stats: vec![stat],
            tasks: vec![tokio::spawn(server.run())],
        });
    }
    for _ in 0..16 {
        let (tcp, tcp_stat) = build(opts.listen, Mode::TcpOnly, opts).await?;
        let addr = tcp
            .tcp_server()
            .ok_or_else(|| io::Error::other("no TCP server"))?
            .local_addr()?;
        match build(addr, Mode::UdpOnly, opts).await {
            Ok((udp, udp_stat)) => {
                let tasks = vec![tokio::spawn(tcp.run()), tokio::spawn(udp.run())];
                return Ok(RunningNode {
                    addr,
                    stats: vec![tcp_stat, udp_stat],
                    tasks,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
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
                load: 0,
                bytes_in: i64::try_from(node.rx()).unwrap_or(i64::MAX),
                bytes_out: i64::try_from(node.tx()).unwrap_or(i64::MAX),
            };
            if let Err(e) = backend.outline_heartbeat(&beat).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    })
}
