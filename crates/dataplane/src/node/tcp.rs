//! The node's Shadowsocks TCP accept loop, on the public port itself: the
//! `shadowsocks` crate's server stream does the crypto, the replay filter
//! and the request header; this loop follows shadowsocks-service's own
//! server (`server/tcprelay.rs`) step for step, and reads and writes the
//! client connection through the witness's counter, so a tunnel costs the
//! node two descriptors (client, destination). The client connection is
//! read in blocks ([`ReadAhead`]), not a read per Shadowsocks length and
//! payload, and so is the destination connection, not a read per chunk's
//! payload; both connections are written in blocks ([`WriteBlocks`]),
//! not a write per Shadowsocks chunk: the copy is tokio's, which flushes
//! whenever its source has nothing more to give, where shadowsocks' own
//! flushes only at the end. tokio's copy also offers a write retried
//! after `Pending` more than it offered first, which the server stream
//! would count as sent without sending ([`ShadowWrites`] offers the same
//! bytes again).
//!
//! What a client sees is what a stock `ssserver` shows it: a header not
//! complete within the timeout, or cut by EOF, closes the connection; a
//! header that fails authentication (garbage, a wrong key) gets no answer
//! and the connection is read and discarded until the client closes it, so
//! probing cannot tell the node from any other server. A destination
//! refused by the rules, refusing or unreachable resets the connection (a
//! stock `ssserver` closes it: through the gateway an application saw an
//! empty reply, where a reset says the connection failed). A connection that moves no byte
//! either way for the idle limit is closed with its destination's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shadowsocks_service::acl::AccessControl;
use shadowsocks_service::net::FlowStat;
use shadowsocks_service::net::utils::ignore_until_end;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::{Context, SharedContext};
use shadowsocks_service::shadowsocks::crypto::CipherKind;
use shadowsocks_service::shadowsocks::dns_resolver::DnsResolver;
use shadowsocks_service::shadowsocks::net::{ConnectOpts, TcpStream as OutboundTcpStream};
use shadowsocks_service::shadowsocks::relay::tcprelay::ProxyServerStream;
use tokio::net::{TcpListener, TcpStream};

use super::NodeOptions;
use super::destinations::{PublicOnly, private_block_acl};
use super::witness::{Counted, Moved, Witness};
use crate::readahead::ReadAhead;
use crate::sswrites::ShadowWrites;
use crate::writeblocks::WriteBlocks;

/// A client's connection as the relay reads it.
type ClientStream = ProxyServerStream<WriteBlocks<Counted>>;

/// The most a copy reads at once, either way: one Shadowsocks AEAD chunk's
/// payload (what shadowsocks' own copy reads).
const COPY_BUF: usize = 0x3FFF;

/// What every connection of the loop shares.
pub(super) struct TcpRelay {
    context: SharedContext,
    method: CipherKind,
    key: Box<[u8]>,
    /// Refuses private IP destinations (`None` with `allow_private`).
    acl: Option<AccessControl>,
    connect: ConnectOpts,
    /// Limit on reading the request header and on connecting to the
    /// destination (shadowsocks-service's server timeout).
    timeout: Duration,
    /// A connection moving no byte either way for this long is closed.
    idle: Duration,
    witness: Arc<Witness>,
    flow: Arc<FlowStat>,
    /// Set when the node stops: open tunnels are reset.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl TcpRelay {
    /// The relay for `opts`, counting in `witness` (per connection) and
    /// `flow` (the node's totals).
    pub(super) fn new(
        opts: &NodeOptions,
        timeout: Duration,
        witness: Arc<Witness>,
        flow: Arc<FlowStat>,
    ) -> io::Result<Self> {
        let cfg = ServerConfig::new(opts.listen, opts.password.expose(), opts.method)
            .map_err(io::Error::other)?;
        let mut context = Context::new(ServerType::Server);
        let acl = if opts.allow_private {
            None
        } else {
            context.set_dns_resolver(Arc::new(DnsResolver::custom_resolver(PublicOnly)));
            Some(private_block_acl()?)
        };
        Ok(TcpRelay {
            context: Arc::new(context),
            method: opts.method,
            key: cfg.key().into(),
            acl,
            connect: ConnectOpts::default(),
            timeout,
            idle: opts.idle_timeout,
            witness,
            flow,
            stopping: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Resets every open tunnel (the node is stopping): their clients see
    /// the cut, where the kernel's close at the process's exit sent a FIN
    /// that reads as the destination's end of the stream.
    pub(super) fn stop_tunnels(&self) {
        self.stopping.send_replace(true);
    }

    /// Serves one accepted client connection to its end.
    async fn serve(&self, socket: TcpStream, peer: SocketAddr) {
        if let Some(acl) = &self.acl
            && acl.check_client_blocked(&peer)
        {
            return;
        }
        let _ = socket.set_nodelay(true);
        // Shadowsocks reads each chunk's length, then its payload, with a
        // read each: blocks read ahead serve both.
        let socket = ReadAhead::new(socket);
        let counted = Counted::new(socket, peer, &self.witness, self.flow.clone());
        // What the witness counts of this connection tells the idle limit
        // whether bytes still move.
        let moved = counted.moved();
        let counted = WriteBlocks::new(counted);
        let mut stream =
            ProxyServerStream::from_stream(self.context.clone(), counted, self.method, &self.key);
        let target = match tokio::time::timeout(self.timeout, stream.handshake()).await {
            Ok(Ok(target)) => target,
            // Timed out, or EOF before a whole header: close.
            Err(_) => return,
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::TimedOut
                ) =>
            {
                return;
            }
            Ok(Err(e)) => {
                // Authentication failed (or a replayed salt was refused):
                // stay silent and discard what comes until the client
                // closes, as ssserver does (shadowsocks-rust issue 292).
                tracing::debug!(%peer, error = %e, "bad shadowsocks header; draining silently");
                let mut raw = stream.into_inner();
                let _ = ignore_until_end(&mut raw).await;
                return;
            }
        };
        // A destination the node may not or cannot reach resets the
        // client's connection: the failure reaches the application as one,
        // not as an empty reply (the client of an authenticated tunnel
        // learns nothing it did not ask for).
        let unreached = |stream: &ClientStream| {
            let _ = stream
                .get_ref()
                .get_ref()
                .get_ref()
                .get_ref()
                .set_zero_linger();
        };
        if let Some(acl) = &self.acl
            && acl.check_outbound_blocked(&self.context, &target).await
        {
            tracing::debug!(%peer, "destination refused");
            unreached(&stream);
            return;
        }
        let connect =
            OutboundTcpStream::connect_remote_with_opts(&self.context, &target, &self.connect);
        let mut remote = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(remote)) => WriteBlocks::new(ReadAhead::new(remote)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "destination unreachable");
                unreached(&stream);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "destination timed out");
                unreached(&stream);
                return;
            }
        };
        // Half-close both ways: EOF on one side shuts the other's write half
        // down, and copying the other way goes on. Every byte either way
        // passes the client's side, which the witness counts: when none has
        // for the idle limit, the copy is dropped. Without that a destination that stops
        // reading held the tunnel for ever: the copy toward it waits to
        // write, so the client's close is never read.
        let mut stream = ShadowWrites::new(stream);
        let mut stopping = self.stopping.subscribe();
        let failed = tokio::select! {
            copied = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut remote, COPY_BUF, COPY_BUF) => copied.is_err(),
            () = idle(&moved, self.idle) => {
                tracing::debug!(%peer, "no byte moved for the idle limit; closed");
                false
            }
            _ = stopping.wait_for(|s| *s) => true,
        };
        if failed {
            // A destination that reset (or a copy that failed either
            // way), or the node stopping: the client's connection is reset
            // too, so the failure reaches the client as one, not as the end
            // of the stream (a download cut short looked complete).
            let _ = stream
                .get_ref()
                .get_ref()
                .get_ref()
                .get_ref()
                .get_ref()
                .set_zero_linger();
        }
        // The destination first: once the witness hears the client
        // connection closed, the tunnel holds no descriptor.
        drop(remote);
        drop(stream);
    }
}

/// Completes once `moved` has stayed the same for `limit`.
async fn idle(moved: &Moved, limit: Duration) {
    let step = (limit / 4).max(Duration::from_millis(50));
    let (mut last, mut since) = (moved.bytes(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(step).await;
        let now = moved.bytes();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// Accepts client connections on `listener` and serves each with `relay`.
pub(super) async fn run(listener: TcpListener, relay: Arc<TcpRelay>) -> io::Result<()> {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            // Out of descriptors, say: the next accept may work.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let relay = relay.clone();
        tokio::spawn(async move { relay.serve(socket, peer).await });
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
