//! The client: a local SOCKS5 proxy (CONNECT and UDP ASSOCIATE), or a
//! plain port forward to one destination, tunnelling Shadowsocks over
//! WebSocket through a gateway. It asks the control plane
//! for its key (as a device, with a device JWT) and follows node events,
//! fetching its parameters again when a node of its region goes away.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::{Context, SharedContext};
use shadowsocks_service::shadowsocks::relay::Address;
use shadowsocks_service::shadowsocks::relay::udprelay::crypto_io::{
    decrypt_server_payload, encrypt_client_payload,
};
use shadowsocks_service::shadowsocks::relay::udprelay::options::UdpSocketControlData;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::backend::Backend;
use super::node::parse_method;
use super::wsio::WsIo;

/// Client settings.
// No Debug: it holds the device token.
#[derive(Clone)]
pub struct ClientOptions {
    /// Control plane base URL.
    pub backend: String,
    /// The device's access token.
    pub device_token: String,
    /// Gateway URL; default: what the control plane says.
    pub gateway: Option<String>,
    /// Extra trusted certificate (PEM) for a self-signed gateway.
    pub ca_cert: Option<PathBuf>,
    /// Region wanted.
    pub region: Option<String>,
    /// Instead of SOCKS5, forward every local connection to this
    /// destination (`host:port`) through the tunnel.
    pub forward: Option<String>,
}

/// Parses a `host:port` destination (IPv6 hosts in brackets).
pub fn parse_destination(s: &str) -> anyhow::Result<Address> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Address::SocketAddress(addr));
    }
    let (host, port) = s.rsplit_once(':').context("a destination is host:port")?;
    let port: u16 = port.parse().context("destination port")?;
    anyhow::ensure!(
        !host.is_empty() && host.len() <= 255 && !host.contains(['/', ' ', '[', ']']),
        "destination host"
    );
    Ok(Address::DomainNameAddress(host.to_owned(), port))
}

/// What tunnels need: where to go and the Shadowsocks key.
#[derive(Clone)]
struct Params {
    gateway_host: String,
    gateway_port: u16,
    config: ServerConfig,
    region: String,
}

struct Shared {
    opts: ClientOptions,
    params: RwLock<Params>,
    tls: TlsConnector,
    ctx: SharedContext,
}

/// Splits a gateway URL (`https://host[:port][/...]`) into host and port.
pub fn split_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .context("the gateway URL must start with https://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().context("gateway port")?,
        ),
        _ => (authority.to_owned(), 443),
    })
}

async fn fetch_params(opts: &ClientOptions) -> anyhow::Result<Params> {
    let backend = Backend::new(&opts.backend, &opts.device_token)?;
    let jwt = backend
        .device_jwt()
        .await
        .context("exchanging the device token")?;
    let a = backend
        .assign_as_device(&jwt.token, opts.region.as_deref())
        .await
        .context("asking for a node")?;
    let url = opts
        .gateway
        .clone()
        .or(a.gateway_url)
        .context("no gateway URL known: pass --gateway")?;
    let (gateway_host, gateway_port) = split_url(&url)?;
    let method = parse_method(&a.method).context("unsupported cipher")?;
    let config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), a.password, method)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Params {
        gateway_host,
        gateway_port,
        config,
        region: a.region,
    })
}

/// Runs the SOCKS5 proxy on `listener` until `shutdown`.
pub async fn run(
    opts: ClientOptions,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let forward = opts.forward.as_deref().map(parse_destination).transpose()?;
    let params = fetch_params(&opts).await?;
    tracing::info!(region = %params.region, gateway = %params.gateway_host, "client ready");
    let shared = Arc::new(Shared {
        tls: super::tls::connector(opts.ca_cert.as_deref())?,
        params: RwLock::new(params),
        ctx: Context::new_shared(ServerType::Local),
        opts,
    });
    let follower = tokio::spawn(follow_events(shared.clone()));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let forward = forward.clone();
        tokio::spawn(async move {
            let ended = match forward {
                Some(target) => forward_tcp(shared, stream, target).await,
                None => socks(shared, stream).await,
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "local connection ended");
            }
        });
    }
    follower.abort();
    Ok(())
}

fn params(s: &Shared) -> Params {
    s.params
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Follows `nodeEvents` of the client's region; when a node goes down,
/// drains or disappears, fetches parameters again (a pool-of-one node's
/// key changes with it). Reconnects after failures.
async fn follow_events(s: Arc<Shared>) {
    let ws_url = s.opts.backend.replacen("http", "ws", 1) + "/graphql/ws";
    loop {
        let region = params(&s).region;
        let attempt = async {
            let mut req = ws_url.as_str().into_client_request()?;
            req.headers_mut()
                .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
            let init = serde_json::json!({"type": "connection_init", "payload": {"deviceToken": s.opts.device_token}});
            ws.send(Message::Text(init.to_string().into())).await?;
            let sub = serde_json::json!({"id": "1", "type": "subscribe", "payload": {
                "query": "subscription($r:String){nodeEvents(region:$r){nodeId kind}}", "variables": {"r": region}}});
            ws.send(Message::Text(sub.to_string().into())).await?;
            while let Some(msg) = ws.next().await {
                let Message::Text(t) = msg? else { continue };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                let kind = v["payload"]["data"]["nodeEvents"]["kind"]
                    .as_str()
                    .unwrap_or_default();
                if matches!(kind, "DOWN" | "DRAINING" | "DISABLED" | "DELETED") {
                    match fetch_params(&s.opts).await {
                        Ok(p) => {
                            *s.params
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = p
                        }
                        Err(e) => tracing::warn!(error = %e, "refreshing parameters"),
                    }
                }
            }
            anyhow::Ok(())
        };
        if let Err(e) = attempt.await {
            tracing::debug!(error = %e, "node events");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn open_ws(
    s: &Shared,
    p: &Params,
    kind: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<Tls>> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((p.gateway_host.as_str(), p.gateway_port)),
    )
    .await
    .context("connecting to the gateway: timeout")??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(p.gateway_host.clone()).context("gateway host name")?;
    let tls = s
        .tls
        .connect(name, tcp)
        .await
        .context("TLS with the gateway")?;
    let url = format!(
        "wss://{}:{}/ws/{}/{kind}",
        p.gateway_host, p.gateway_port, s.opts.device_token
    );
    // A small read buffer: tungstenite zeroes it before every read.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(config))
        .await
        .context("WebSocket with the gateway")?;
    Ok(ws)
}

async fn read_addr<R: AsyncRead + Unpin>(r: &mut R, atyp: u8) -> io::Result<Address> {
    match atyp {
        1 => {
            let mut b = [0u8; 6];
            r.read_exact(&mut b).await?;
            Ok(Address::SocketAddress(SocketAddr::from((
                [b[0], b[1], b[2], b[3]],
                u16::from_be_bytes([b[4], b[5]]),
            ))))
        }
        3 => {
            let len = r.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            r.read_exact(&mut name).await?;
            let port = r.read_u16().await?;
            let name = String::from_utf8(name)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad name"))?;
            Ok(Address::DomainNameAddress(name, port))
        }
        4 => {
            let mut b = [0u8; 18];
            r.read_exact(&mut b).await?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Ok(Address::SocketAddress(SocketAddr::from((
                ip,
                u16::from_be_bytes([b[16], b[17]]),
            ))))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad address type",
        )),
    }
}

fn encode_addr(a: &Address, out: &mut Vec<u8>) {
    match a {
        Address::SocketAddress(SocketAddr::V4(v4)) => {
            out.push(1);
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_be_bytes());
        }
        Address::SocketAddress(SocketAddr::V6(v6)) => {
            out.push(4);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.port().to_be_bytes());
        }
        Address::DomainNameAddress(name, port) => {
            out.push(3);
            out.push(u8::try_from(name.len()).unwrap_or(255));
            out.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, code: u8, bound: SocketAddr) -> io::Result<()> {
    let mut out = vec![5, code, 0];
    encode_addr(&Address::SocketAddress(bound), &mut out);
    w.write_all(&out).await
}

/// Copy buffer per direction: large writes mean few WebSocket messages and
/// few syscalls at every hop.
const COPY_BUF: usize = 32 * 1024;

/// Largest first write into a Shadowsocks stream: it carries the target
/// address too and must fit one AEAD chunk (16,383 bytes).
const FIRST_WRITE_MAX: usize = 16 * 1024 - 512;

/// Caps the first write to a [`ProxyClientStream`] (see [`FIRST_WRITE_MAX`]);
/// later writes pass unchanged.
struct CapFirstWrite<S> {
    inner: S,
    first: bool,
}

impl<S> CapFirstWrite<S> {
    fn new(inner: S) -> Self {
        CapFirstWrite { inner, first: true }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CapFirstWrite<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CapFirstWrite<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let n = if self.first {
            buf.len().min(FIRST_WRITE_MAX)
        } else {
            buf.len()
        };
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if matches!(r, std::task::Poll::Ready(Ok(_))) {
            self.first = false;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Pipes one local connection to `target` through a new tunnel.
async fn forward_tcp(s: Arc<Shared>, mut stream: TcpStream, target: Address) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let p = params(&s);
    let ws = open_ws(&s, &p, "tcp").await?;
    let mut proxied = CapFirstWrite::new(ProxyClientStream::from_stream(
        s.ctx.clone(),
        WsIo::new(ws),
        &p.config,
        target,
    ));
    tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut proxied, COPY_BUF, COPY_BUF).await?;
    Ok(())
}

async fn socks(s: Arc<Shared>, mut stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    anyhow::ensure!(head[0] == 5, "not SOCKS5");
    let mut methods = vec![0u8; head[1] as usize];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        stream.write_all(&[5, 0xff]).await?;
        anyhow::bail!("no acceptable auth method");
    }
    stream.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    stream.read_exact(&mut req).await?;
    let target = read_addr(&mut stream, req[3]).await?;
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let p = params(&s);
    match req[1] {
        1 => {
            let ws = match open_ws(&s, &p, "tcp").await {
                Ok(ws) => ws,
                Err(e) => {
                    reply(&mut stream, 1, unspecified).await?;
                    return Err(e);
                }
            };
            let mut proxied = CapFirstWrite::new(ProxyClientStream::from_stream(
                s.ctx.clone(),
                WsIo::new(ws),
                &p.config,
                target,
            ));
            reply(&mut stream, 0, unspecified).await?;
            tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut proxied, COPY_BUF, COPY_BUF)
                .await?;
            Ok(())
        }
        3 => udp_associate(s, stream, p).await,
        _ => {
            reply(&mut stream, 7, unspecified).await?;
            anyhow::bail!("unsupported SOCKS command {}", req[1])
        }
    }
}

/// UDP ASSOCIATE: SOCKS5 datagrams on a local socket, one Shadowsocks UDP
/// packet per WebSocket message; lives as long as the control connection.
async fn udp_associate(s: Arc<Shared>, mut control: TcpStream, p: Params) -> anyhow::Result<()> {
    let local_ip = control.local_addr()?.ip();
    let socket = Arc::new(UdpSocket::bind((local_ip, 0)).await?);
    let ws = open_ws(&s, &p, "udp").await?;
    reply(&mut control, 0, socket.local_addr()?).await?;
    let (mut sink, mut source) = ws.split();
    let peer: Arc<tokio::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let (ctx, cfg) = (s.ctx.clone(), p.config.clone());
    let (up_sock, up_peer) = (socket.clone(), peer.clone());
    let upstream = async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = up_sock.recv_from(&mut buf).await?;
            *up_peer.lock().await = Some(from);
            // RSV(2) FRAG(1) ATYP ADDR PORT DATA; fragments are not supported.
            if n < 4 || buf[2] != 0 {
                continue;
            }
            let mut cursor = io::Cursor::new(&buf[4..n]);
            let Ok(target) = read_addr(&mut cursor, buf[3]).await else {
                continue;
            };
            let offset = 4 + cursor.position() as usize;
            let mut packet = bytes::BytesMut::new();
            encrypt_client_payload(
                &ctx,
                cfg.method(),
                cfg.key(),
                &target,
                &UdpSocketControlData::default(),
                cfg.identity_keys(),
                &buf[offset..n],
                &mut packet,
            );
            sink.send(Message::Binary(packet.freeze())).await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    };
    let (ctx, cfg) = (s.ctx.clone(), p.config.clone());
    let downstream = async move {
        while let Some(msg) = source.next().await {
            let Message::Binary(data) = msg? else {
                continue;
            };
            let mut data = data.to_vec();
            let Ok((n, from, _)) = decrypt_server_payload(&ctx, cfg.method(), cfg.key(), &mut data)
            else {
                continue;
            };
            let Some(to) = *peer.lock().await else {
                continue;
            };
            let mut out = vec![0, 0, 0];
            encode_addr(&from, &mut out);
            out.extend_from_slice(&data[..n]);
            socket.send_to(&out, to).await?;
        }
        anyhow::Ok(())
    };
    let mut probe = [0u8; 1];
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
        _ = control.read(&mut probe) => Ok(()),
    }
}
