//! The client: a local SOCKS5 proxy (CONNECT and UDP ASSOCIATE), or a
//! plain port forward to one destination, tunnelling Shadowsocks over
//! WebSocket through a gateway. It asks the control plane for its key (as
//! a device, with a device JWT) and follows node events, fetching its
//! parameters again when a node of its region goes away.
//!
//! - `params`: the parameters, the URL and destination parsers, the
//!   node-event follower.
//! - `socks`: the SOCKS5 front.
//! - `udp`: UDP ASSOCIATE.
//! - `forward`: one tunnel per local TCP connection.
//! - `mux`, `warm`, `h2io`: with `--mux`, TCP tunnels as streams of a few
//!   warm HTTP/2 connections (WebSockets over extended CONNECT, RFC 8441):
//!   keeping them and placing tunnels, opening one, a stream as bytes; UDP
//!   associations keep their own HTTP/1.1 WebSocket.
//! - `lane`: with `--mux`, the thread each warm connection and its
//!   tunnels run on.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use httvps_wire::Secret;
use shadowsocks_service::shadowsocks::config::ServerType;
use shadowsocks_service::shadowsocks::context::{Context, SharedContext};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

mod forward;
mod h2io;
mod mux;
mod params;
mod silent;
mod socks;
mod udp;
mod warm;
mod wsframe;

use params::Params;
pub use params::{parse_destination, split_public_url, split_url};

/// Client settings (their `Debug` shows no token).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Control plane base URL.
    pub backend: String,
    /// The device's access token.
    pub device_token: Secret,
    /// Gateway URL; default: what the control plane says.
    pub gateway: Option<String>,
    /// Extra trusted certificate (PEM) for a self-signed gateway.
    pub ca_cert: Option<PathBuf>,
    /// Region wanted; `None`: the control plane decides (the region of the
    /// device's open session, else the first active gateway's region).
    pub region: Option<String>,
    /// Instead of SOCKS5, forward every local connection to this
    /// destination (`host:port`) through the tunnel.
    pub forward: Option<String>,
    /// How the control plane is reached and trusted.
    pub link: crate::link::Link,
    /// Carry TCP tunnels as streams of warm HTTP/2 connections to the
    /// gateway (falls back to one WebSocket connection per tunnel when the
    /// gateway does not offer it).
    pub mux: bool,
    /// How many warm connections `mux` keeps (1 to
    /// [`MAX_MUX_CONNECTIONS`]); a new tunnel goes to the one with the
    /// fewest open tunnels.
    pub mux_connections: usize,
}

pub use mux::{
    DEFAULT_CONNECTIONS as DEFAULT_MUX_CONNECTIONS, MAX_CONNECTIONS as MAX_MUX_CONNECTIONS,
};

/// Pause after a failed accept before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TLS to the gateway.
type Tls = tokio_rustls::client::TlsStream<crate::readahead::ReadAhead>;

/// What every local connection shares.
struct Shared {
    opts: ClientOptions,
    params: RwLock<Params>,
    tls: TlsConnector,
    /// The control plane, as the device.
    backend: crate::backend::Backend,
    /// TLS to the control plane's events socket.
    link_tls: TlsConnector,
    ctx: SharedContext,
    /// The multiplexed transport, with `--mux`.
    mux: Option<mux::Mux>,
}

impl Shared {
    /// The current parameters (a node event may replace them any time).
    fn params(&self) -> Params {
        self.params
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_params(&self, p: Params) {
        *self.params.write().unwrap_or_else(PoisonError::into_inner) = p;
        // New parameters, new warm connection (open tunnels keep theirs).
        if let Some(mux) = &self.mux {
            mux.renew();
        }
    }

    /// A TCP tunnel's WebSocket as the byte stream it carries: a stream
    /// of warm HTTP/2 connection `slot` with `--mux` (unless the gateway
    /// takes HTTP/1.1 only), else a connection of its own (`slot` is
    /// `None` without `--mux`, and when every warm connection is full; see
    /// [`forward::carry`]).
    async fn open_tcp(&self, p: &Params, slot: Option<usize>) -> anyhow::Result<Box<dyn Io>> {
        if let (Some(mux), Some(_)) = (self.mux.as_ref().filter(|m| !m.h1_only()), slot) {
            match mux.stream(slot, p, self.opts.device_token.expose()).await {
                Ok(stream) => return Ok(Box::new(stream)),
                Err(mux::MuxError::NoH2) => {}
                Err(mux::MuxError::Other(e)) => return Err(e),
            }
        }
        let tls = self.connect_tls(p).await?;
        Ok(Box::new(crate::wsio::WsIo::new(
            self.ws_over(p, "tcp", tls).await?,
        )))
    }

    /// A WebSocket to the gateway's `/ws/{token}/{kind}`.
    async fn open_ws(
        &self,
        p: &Params,
        kind: &str,
    ) -> anyhow::Result<tokio_tungstenite::WebSocketStream<Tls>> {
        let tls = self.connect_tls(p).await?;
        self.ws_over(p, kind, tls).await
    }

    /// Says at start whether tunnels can work: a TLS connection to the
    /// gateway. A certificate not trusted ends the start (the settings
    /// must change: every tunnel would fail with it); a gateway that does
    /// not answer is a warning (tunnels fail until it does). Then "client
    /// ready". Its TLS session lets the first tunnel resume. With `--mux`
    /// the connection is the first warm one, kept.
    async fn check_gateway(&self) -> anyhow::Result<()> {
        let p = self.params();
        let checked = match &self.mux {
            Some(mux) => mux.open_first(&p).await,
            None => self.connect_tls(&p).await.map(drop),
        };
        match checked {
            Ok(_) => {}
            Err(e) if format!("{e:#}").contains("certificate") => {
                return Err(e.context(format!(
                    "the gateway {} is not trusted: pass --ca-cert with its certificate or the CA that signed it",
                    p.gateway()
                )));
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), gateway = %p.gateway(), "the gateway does not answer now: tunnels fail until it does");
            }
        }
        tracing::info!(region = %p.region, gateway = %p.gateway(), "client ready");
        Ok(())
    }

    /// A TLS connection of its own to the gateway.
    async fn connect_tls(&self, p: &Params) -> anyhow::Result<Tls> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((p.gateway_host.as_str(), p.gateway_port)),
        )
        .await
        .context("connecting to the gateway: timeout")??;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(p.gateway_host.clone()).context("gateway host name")?;
        let tls = self
            .tls
            .connect(name, crate::readahead::ReadAhead::new(tcp))
            .await
            .context("TLS with the gateway")?;
        Ok(tls)
    }

    /// The WebSocket upgrade to `/ws/{token}/{kind}` over `tls`.
    async fn ws_over<S>(
        &self,
        p: &Params,
        kind: &str,
        tls: S,
    ) -> anyhow::Result<tokio_tungstenite::WebSocketStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let url = format!(
            "wss://{}/ws/{}/{kind}",
            p.gateway(),
            self.opts.device_token.expose()
        );
        let config = ws_config();
        let mut req = url.as_str().into_client_request()?;
        // We read a Close in order behind the data: the gateway need not
        // hold it back.
        req.headers_mut().insert(
            crate::gateway::ORDERED_CLOSE_HEADER,
            HeaderValue::from_static("1"),
        );
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(config))
            .await
            .context("WebSocket with the gateway")?;
        Ok(ws)
    }
}

/// Our WebSocket settings: a small read buffer (tungstenite zeroes it
/// before every read).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// A byte stream a tunnel's WebSocket runs on.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Runs the SOCKS5 proxy (or the port forward) on `listener` until
/// `shutdown`.
pub async fn run(
    opts: ClientOptions,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let target = opts.forward.as_deref().map(parse_destination).transpose()?;
    // One of each for the client's life: a reconnect resumes its TLS
    // session instead of a full handshake.
    let backend =
        crate::backend::Backend::connect(&opts.backend, opts.device_token.expose(), &opts.link)?;
    let link_tls = TlsConnector::from(Arc::new(opts.link.client_config()?));
    tokio::pin!(shutdown);
    let Some(params) = params::first(&opts, &backend, &listener, &mut shutdown).await? else {
        return Ok(());
    };
    let mux = if opts.mux {
        Some(mux::Mux::new(
            opts.ca_cert.as_deref(),
            opts.mux_connections,
        )?)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        tls: crate::tls::connector(opts.ca_cert.as_deref())?,
        backend,
        link_tls,
        mux,
        params: RwLock::new(params),
        ctx: Context::new_shared(ServerType::Local),
        opts,
    });
    shared.check_gateway().await?;
    let follower = tokio::spawn(params::follow_events(shared.clone()));
    let keeper = tokio::spawn(mux::keep(shared.clone()));
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: the next accept would fail
                    // at once too, so pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let target = target.clone();
        tokio::spawn(async move {
            ended(match target {
                Some(target) => forward::forward(shared, stream, target).await,
                None => socks::serve(shared, stream).await,
            });
        });
    }
    follower.abort();
    keeper.abort();
    Ok(())
}

/// Logs how a local connection's work ended, if it failed.
fn ended(r: anyhow::Result<()>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "local connection ended");
    }
}
