//! A warm connection of the multiplexed transport: the windows it is
//! opened with, how it is opened (TCP, TLS with ALPN `h2`, the HTTP/2
//! handshake, extended CONNECT enabled), its pings, and the request that
//! opens a tunnel's stream on it. [`super::mux`] keeps and uses them.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

use super::params::Params;

/// Why no stream could be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum MuxError {
    /// The gateway does not take WebSockets over HTTP/2.
    #[error("the gateway does not offer WebSockets over HTTP/2")]
    NoH2,
    /// Anything else (connection, TLS, HTTP/2).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Receive window per stream: what the gateway may send a stream ahead of
/// our reader. A download runs at most window / RTT, and the window also
/// covers what waits in the gateway's socket buffer (up to the kernel's
/// `tcp_wmem`, 4 MiB by default), so 4 MiB held a download below a
/// connection per tunnel at 50 ms RTT; 16 MiB keeps the window out of
/// the way up to about 2 Gbit/s at 50 ms (600 Mbit/s at 150 ms). Only
/// our own memory is at stake: data arrives no faster than the local
/// reader takes it once the window is spent.
const STREAM_WINDOW: u32 = 16 << 20;

/// Receive window of the connection: the largest HTTP/2 allows
/// (2^31 - 1 bytes, just under 2 GiB). Data that arrived for a stream but
/// that its local reader has not taken yet holds the connection's window
/// too, so a window of a few streams would let a few readers that stop
/// (paused videos) stop every tunnel of the connection, new ones included,
/// while its pings still pass. A connection carries no more tunnels than
/// this window holds full stream windows ([`TUNNELS_PER_CONNECTION`]), so
/// however many of its readers stop, each holding at most
/// [`STREAM_WINDOW`] of our memory, the others keep their credit, and a
/// bulk stream never holds the connection's.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Most tunnels one warm connection carries: as many full stream windows
/// as its connection window holds (127). A tunnel opened while every warm
/// connection carries that many gets a WebSocket connection of its own, as
/// without `--mux`.
pub(super) const TUNNELS_PER_CONNECTION: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;

const _: () = assert!(
    TUNNELS_PER_CONNECTION as u64 * STREAM_WINDOW as u64 <= CONNECTION_WINDOW as u64
        && TUNNELS_PER_CONNECTION >= 64
);

/// Largest frame the gateway may send us.
const MAX_FRAME: u32 = 64 * 1024;

/// Interval of our pings on an idle or busy connection.
const PING_EVERY: Duration = Duration::from_secs(15);

/// How long a ping's answer (and the connection's setup) may take.
pub(super) const PING_WAIT: Duration = Duration::from_secs(20);

/// A warm connection.
#[derive(Clone)]
pub(super) struct Warm {
    /// Which connection of this client it is.
    pub id: u64,
    /// The gateway it goes to.
    pub gateway: (String, u16),
    /// Opens streams on it.
    pub send: SendRequest<Bytes>,
    /// Cancelled when the connection is over.
    pub over: CancellationToken,
}

impl Warm {
    /// Whether new tunnels to the gateway of `p` may go on it.
    pub(super) fn serves(&self, p: &Params) -> bool {
        !self.over.is_cancelled()
            && self.gateway.0 == p.gateway_host
            && self.gateway.1 == p.gateway_port
    }
}

/// The extended CONNECT of a tunnel.
pub(super) fn request(p: &Params, token: &str) -> anyhow::Result<http::Request<()>> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{}/ws/{token}/tcp", p.gateway()))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        // We read a Close in order behind the data.
        .header(crate::gateway::ORDERED_CLOSE_HEADER, "1")
        .body(())
        .context("tunnel request")
}

/// Opens a connection to the gateway of `p` and starts its tasks (the
/// connection itself and its pings) on the runtime it runs on.
pub(super) async fn dial(tls: TlsConnector, p: Params, id: u64) -> Result<Warm, MuxError> {
    let tcp = tokio::time::timeout(
        PING_WAIT,
        TcpStream::connect((p.gateway_host.as_str(), p.gateway_port)),
    )
    .await
    .context("connecting to the gateway: timeout")?
    .context("connecting to the gateway")?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(p.gateway_host.clone()).context("gateway host name")?;
    let tcp = crate::readahead::ReadAhead::new(tcp);
    let stream = tokio::time::timeout(PING_WAIT, tls.connect(name, tcp))
        .await
        .context("TLS with the gateway: timeout")?
        .context("TLS with the gateway")?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        return Err(MuxError::NoH2);
    }
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        // A lifetime count, not a rate: see the gateway's `h2::builder`.
        .max_local_error_reset_streams(None)
        .handshake::<_, Bytes>(stream)
        .await
        .context("HTTP/2 with the gateway")?;
    let mut ping = conn.ping_pong().context("HTTP/2 pings")?;
    let over = CancellationToken::new();
    let driver_over = over.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "gateway connection ended");
                }
            }
            () = driver_over.cancelled() => {}
        }
        driver_over.cancel();
    });
    // The pinger: a first ping at once, then one every PING_EVERY; a
    // missed answer ends the connection.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let pinger_over = over.clone();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        loop {
            let pong = tokio::time::timeout(PING_WAIT, ping.ping(h2::Ping::opaque())).await;
            let answered = matches!(pong, Ok(Ok(_)));
            if let Some(tx) = first.take() {
                let _ = tx.send(answered);
            }
            if !answered {
                tracing::debug!("the gateway missed a ping: reconnecting");
                pinger_over.cancel();
                return;
            }
            tokio::select! {
                () = pinger_over.cancelled() => return,
                () = tokio::time::sleep(PING_EVERY) => {}
            }
        }
    });
    // Whether the gateway takes extended CONNECT is in its SETTINGS. Ours
    // sends them with its TLS handshake, so they are usually here already
    // (looked at every millisecond while the connection's task reads
    // them); from any gateway they come before the answer to the first
    // ping, which settles it otherwise.
    let first_rx = async { first_rx.await.unwrap_or(false) };
    tokio::pin!(first_rx);
    let enabled = loop {
        if send.is_extended_connect_protocol_enabled() {
            break true;
        }
        tokio::select! {
            answered = &mut first_rx => {
                if !answered {
                    over.cancel();
                    return Err(MuxError::Other(anyhow::anyhow!(
                        "the gateway did not answer a ping"
                    )));
                }
                break send.is_extended_connect_protocol_enabled();
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    };
    if !enabled {
        over.cancel();
        return Err(MuxError::NoH2);
    }
    tracing::debug!("warm connection to the gateway open");
    Ok(Warm {
        id,
        gateway: (p.gateway_host.clone(), p.gateway_port),
        send,
        over,
    })
}
