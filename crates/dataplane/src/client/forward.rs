//! One tunnel for one local TCP connection: a WebSocket to the gateway
//! carrying a Shadowsocks stream to the target, and the copy between the
//! two (used by SOCKS5 CONNECT and by the plain port forward).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::relay::Address;
use shadowsocks_service::shadowsocks::relay::socks5::{Reply, TcpResponseHeader};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::params::Params;
use super::silent::{self, Heard, SilentEnd};
use super::{Io, Shared};
use crate::sswrites::ShadowWrites;
use crate::writeblocks::WriteBlocks;

/// Copy buffer per direction: large writes mean few WebSocket messages and
/// few syscalls at every hop.
const COPY_BUF: usize = 32 * 1024;

/// Largest first write into a Shadowsocks stream: it carries the target
/// address too and must fit one AEAD chunk (16,383 bytes).
const FIRST_WRITE_MAX: usize = 16 * 1024 - 512;

/// A Shadowsocks stream to a target through a gateway WebSocket (on a
/// connection of its own, or a stream of the warm HTTP/2 connection).
/// An end before the node sent a byte is an empty stream ([`silent`]).
pub(super) type Proxied = SilentEnd<ShadowWrites<ProxyClientStream<Heard<Box<dyn Io>>>>>;

/// How long opening a tunnel (TCP, TLS and the WebSocket upgrade, or a
/// stream of the warm connection) may take before the local connection is
/// given up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a tunnel to `target` with the parameters `p` (with `--mux`, on
/// warm connection `slot` first). A failure is logged as a warning: it is
/// what a user looks for when nothing loads.
async fn open(
    s: &Shared,
    p: &Params,
    target: Address,
    slot: Option<usize>,
) -> anyhow::Result<Proxied> {
    let opened = tokio::time::timeout(OPEN_TIMEOUT, s.open_tcp(p, slot))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the tunnel timed out")));
    let tunnel = match opened {
        Ok(tunnel) => tunnel,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), gateway = %p.gateway(), "tunnel not opened");
            return Err(e);
        }
    };
    Ok(silent::around(tunnel, |heard| {
        ShadowWrites::first_capped(
            ProxyClientStream::from_stream(s.ctx.clone(), heard, &p.config, target),
            FIRST_WRITE_MAX,
        )
    }))
}

/// Copies both ways until both sides are done. What comes from the
/// tunnel is written to the local socket in blocks ([`WriteBlocks`]), not
/// a write per Shadowsocks chunk.
async fn pipe(stream: &mut TcpStream, proxied: &mut Proxied) -> io::Result<()> {
    let mut local = WriteBlocks::new(stream);
    tokio::io::copy_bidirectional_with_sizes(&mut local, proxied, COPY_BUF, COPY_BUF).await?;
    Ok(())
}

/// How long a new tunnel waits for the application's first bytes, which
/// go out with the target's address in one message; past it the address
/// goes alone (shadowsocks-rust waits 500 ms: a server-first protocol's
/// greeting came that much later).
pub(super) const FIRST_BYTES_WAIT: Duration = Duration::from_millis(50);

/// The local side's first bytes, if it sends any within
/// [`FIRST_BYTES_WAIT`] (empty when it sends none, or ends first).
async fn first_bytes(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(8 * 1024);
    match tokio::time::timeout(FIRST_BYTES_WAIT, stream.read_buf(&mut buf)).await {
        Ok(read) => {
            read?;
        }
        Err(_) => buf.clear(),
    }
    Ok(buf)
}

/// What the local side is told once its tunnel is open, or could not be.
#[derive(Clone, Copy)]
pub(super) enum Answer {
    /// Nothing (a plain port forward).
    Nothing,
    /// A SOCKS5 reply.
    Socks,
}

/// Answers a SOCKS5 request with `reply` and the address bound for it.
pub(super) async fn socks_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: Reply,
    bound: SocketAddr,
) -> io::Result<()> {
    TcpResponseHeader::new(reply, Address::SocketAddress(bound))
        .write_to(w)
        .await
}

/// Carries the local connection `stream` to `target` through a new
/// tunnel, answering it as `answer` says, until both sides are done;
/// `early` is what the local side sent past its request (sent first). With
/// `--mux` all of it runs on the lane of the warm connection the tunnel
/// goes to ([`crate::lane`]): the local socket moves to that lane, this
/// returns at once and the lane logs how the tunnel ended.
pub(super) async fn carry(
    s: Arc<Shared>,
    stream: TcpStream,
    target: Address,
    answer: Answer,
    early: Vec<u8>,
) -> anyhow::Result<()> {
    let p = s.params();
    // Unless every warm connection carries all the tunnels its window
    // covers: then this one gets a WebSocket connection of its own.
    if let Some((mux, (slot, counted))) = s
        .mux
        .as_ref()
        .filter(|m| !m.h1_only())
        .and_then(|m| Some((m, m.take(&p)?)))
    {
        let local = stream.into_std()?;
        let shared = s.clone();
        mux.spawn_on(slot, async move {
            let _counted = counted;
            let carried = match TcpStream::from_std(local) {
                Ok(stream) => tunnel(&shared, &p, stream, target, answer, early, Some(slot)).await,
                Err(e) => Err(e.into()),
            };
            super::ended(carried);
        });
        return Ok(());
    }
    tunnel(&s, &p, stream, target, answer, early, None).await
}

/// Opens the tunnel, answers the local side, sends `early`, pipes (see
/// [`carry`]).
async fn tunnel(
    s: &Shared,
    p: &Params,
    mut stream: TcpStream,
    target: Address,
    answer: Answer,
    early: Vec<u8>,
    slot: Option<usize>,
) -> anyhow::Result<()> {
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut proxied = match open(s, p, target, slot).await {
        Ok(x) => x,
        Err(e) => {
            match answer {
                Answer::Socks => {
                    socks_reply(&mut stream, Reply::GeneralFailure, unspecified).await?;
                }
                // No reply to say it: the connection is reset, not closed
                // as if the destination had answered nothing.
                Answer::Nothing => {
                    let _ = stream.set_zero_linger();
                }
            }
            return Err(e);
        }
    };
    if let Answer::Socks = answer {
        socks_reply(&mut stream, Reply::Succeeded, unspecified).await?;
    }
    let piped = async {
        let early = match early.is_empty() {
            true => first_bytes(&mut stream).await?,
            false => early,
        };
        if early.is_empty() {
            // The target speaks first (SMTP, FTP, MySQL …): the address
            // goes alone, or the node would never dial it.
            let written = proxied.write(&[]).await?;
            debug_assert_eq!(written, 0);
        } else {
            proxied.write_all(&early).await?;
        }
        // Flushed: writes into the tunnel may wait for more otherwise.
        proxied.flush().await?;
        pipe(&mut stream, &mut proxied).await
    }
    .await;
    if piped.is_err() {
        // The tunnel broke (the gateway cut it, or the connection to it
        // died): the local connection is reset, not closed, so the
        // application sees an error instead of a complete-looking reply.
        let _ = stream.set_zero_linger();
    }
    piped?;
    Ok(())
}

/// Pipes one local connection to `target` through a new tunnel.
pub(super) async fn forward(
    s: Arc<Shared>,
    stream: TcpStream,
    target: Address,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    carry(s, stream, target, Answer::Nothing, Vec::new()).await
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
