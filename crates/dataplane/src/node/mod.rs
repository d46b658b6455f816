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

pub(crate) use crate::failing::Failing;
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
    /// A connection that moves no byte either way for this long is closed
    /// (its destination too): a destination that stops reading can hold
    /// neither the node's descriptors nor its buffers for ever.
    pub idle_timeout: Duration,
}

/// [`NodeOptions::idle_timeout`] unless told otherwise: the gateway's own
/// default idle limit for a tunnel.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

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
    relay: Arc<tcp::TcpRelay>,
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

    /// Stops as on SIGTERM: no new connection is taken, every open tunnel
    /// is reset (its client sees the cut, not an end of stream), and this
    /// waits until they are gone, at most `within`.
    pub async fn shut_down(&self, within: Duration) {
        self.stop();
        self.relay.stop_tunnels();
        let until = tokio::time::Instant::now() + within;
        while self.witness.open_count() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
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
                    tokio::spawn(tcp::run(listener, relay.clone())),
                ];
                return Ok(RunningNode {
                    addr,
                    witness,
                    stats: vec![tcp_stat, udp_stat],
                    tasks,
                    relay,
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
        // Said once when it begins and once when it ends, not at every
        // beat: a node removed or rotated while it runs logged an error
        // every 5 s for as long as it ran.
        let mut failing = Failing::default();
        loop {
            tick.tick().await;
            let beat = OutlineBeat {
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                // The TCP connections the node serves now, as its own
                // accept loop counts them (reading the kernel's socket
                // tables instead cost a parse of every socket of the host,
                // TIME_WAIT included, per beat).
                load: i32::try_from(node.witness.open_count()).unwrap_or(i32::MAX),
                bytes_in: i64::try_from(node.rx()).unwrap_or(i64::MAX),
                bytes_out: i64::try_from(node.tx()).unwrap_or(i64::MAX),
            };
            match backend.outline_heartbeat(&beat).await {
                Ok(_) => {
                    if failing.ended() {
                        tracing::info!("heartbeat accepted again");
                    }
                }
                Err(e) if matches!(e, crate::backend::BackendError::Status { status: 401, .. }) => {
                    if failing.began(true) {
                        tracing::error!(error = %e, "heartbeat refused: the control plane no longer knows this node's token (removed or rotated); enroll it again");
                    }
                }
                Err(e) => {
                    if failing.began(false) {
                        tracing::warn!(error = %e, "heartbeat failed; said again once it works");
                    }
                }
            }
        }
    })
}
