//! SOCKS5 UDP ASSOCIATE: datagrams on a local socket, one Shadowsocks UDP
//! packet per WebSocket message each way; the association lives as long as
//! its control connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use shadowsocks_service::shadowsocks::config::ServerConfig;
use shadowsocks_service::shadowsocks::context::SharedContext;
use shadowsocks_service::shadowsocks::relay::socks5::UdpAssociateHeader;
use shadowsocks_service::shadowsocks::relay::udprelay::crypto_io::{
    decrypt_server_payload, encrypt_client_payload,
};
use shadowsocks_service::shadowsocks::relay::udprelay::options::UdpSocketControlData;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::params::Params;
use super::{Shared, Tls};

/// The local application's address, learnt from its first datagram.
type Peer = Arc<Mutex<Option<SocketAddr>>>;

/// An association's local socket and its WebSocket to the gateway.
pub(super) struct Association {
    socket: Arc<UdpSocket>,
    ws: WebSocketStream<Tls>,
}

impl Association {
    /// Binds the local socket (on the address the application reached us
    /// at) and opens the tunnel.
    pub(super) async fn open(s: &Shared, control: &TcpStream, p: &Params) -> anyhow::Result<Self> {
        let local_ip = control.local_addr()?.ip();
        let socket = Arc::new(UdpSocket::bind((local_ip, 0)).await?);
        let ws = s.open_ws(p, "udp").await?;
        Ok(Association { socket, ws })
    }

    /// Where the application sends its datagrams.
    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Relays until either side fails or `control` closes.
    pub(super) async fn run(
        self,
        s: &Shared,
        mut control: TcpStream,
        p: Params,
    ) -> anyhow::Result<()> {
        let (sink, source) = self.ws.split();
        let peer = Peer::default();
        let socket = self.socket;
        let mut probe = [0u8; 1];
        tokio::select! {
            r = upstream(socket.clone(), peer.clone(), sink, s.ctx.clone(), p.config.clone()) => r,
            r = downstream(socket, peer, source, s.ctx.clone(), p.config) => r,
            _ = control.read(&mut probe) => Ok(()),
        }
    }
}

/// Local datagrams (RSV FRAG ATYP ADDR PORT DATA) to encrypted packets.
async fn upstream(
    socket: Arc<UdpSocket>,
    peer: Peer,
    mut sink: SplitSink<WebSocketStream<Tls>, Message>,
    ctx: SharedContext,
    cfg: ServerConfig,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        *peer.lock().unwrap_or_else(PoisonError::into_inner) = Some(from);
        let mut rest: &[u8] = &buf[..n];
        let Ok(header) = UdpAssociateHeader::read_from(&mut rest).await else {
            continue;
        };
        // Fragments are not supported (RFC 1928 lets a relay drop them).
        if header.frag != 0 {
            continue;
        }
        let mut packet = BytesMut::new();
        encrypt_client_payload(
            &ctx,
            cfg.method(),
            cfg.key(),
            &header.address,
            &UdpSocketControlData::default(),
            cfg.identity_keys(),
            rest,
            &mut packet,
        );
        sink.send(Message::Binary(packet.freeze())).await?;
    }
}

/// Encrypted packets to local datagrams, sent to the application's address.
async fn downstream(
    socket: Arc<UdpSocket>,
    peer: Peer,
    mut source: SplitStream<WebSocketStream<Tls>>,
    ctx: SharedContext,
    cfg: ServerConfig,
) -> anyhow::Result<()> {
    while let Some(msg) = source.next().await {
        let Message::Binary(data) = msg? else {
            continue;
        };
        let mut data = data.to_vec();
        let Ok((n, from, _)) = decrypt_server_payload(&ctx, cfg.method(), cfg.key(), &mut data)
        else {
            continue;
        };
        let Some(to) = *peer.lock().unwrap_or_else(PoisonError::into_inner) else {
            continue;
        };
        let header = UdpAssociateHeader::new(0, from);
        let mut out = BytesMut::with_capacity(header.serialized_len() + n);
        header.write_to_buf(&mut out);
        out.extend_from_slice(&data[..n]);
        socket.send_to(&out, to).await?;
    }
    Ok(())
}
