//! SOCKS5 UDP ASSOCIATE: datagrams on a local socket, one Shadowsocks UDP
//! packet per WebSocket message each way; the association lives as long as
//! its control connection.
//!
//! Only the application that asked relays through it: datagrams come from
//! the control connection's own address, from the port its request named
//! (any port when it named 0, and then the first datagram's port for the
//! rest of the association). Others are dropped, so another host that can
//! reach the socket (a proxy listening on a LAN) neither sends through the
//! tunnel nor turns its answers to itself.

use std::net::{IpAddr, SocketAddr};
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

/// The local application's address, fixed by its first datagram.
type Peer = Arc<Mutex<Option<SocketAddr>>>;

/// Whose datagrams an association takes.
#[derive(Clone, Copy, Debug)]
struct Owner {
    /// The control connection's peer address.
    ip: IpAddr,
    /// The port the request named; `None` for 0 (not known yet).
    port: Option<u16>,
}

impl Owner {
    /// Whether a datagram from `from` belongs to the association, given
    /// the address its first datagram came from (`peer`).
    fn accepts(&self, from: SocketAddr, peer: Option<SocketAddr>) -> bool {
        if from.ip().to_canonical() != self.ip.to_canonical() {
            return false;
        }
        match (self.port, peer) {
            (Some(port), _) => from.port() == port,
            (None, Some(peer)) => from.port() == peer.port(),
            (None, None) => true,
        }
    }
}

/// An association's local socket and its WebSocket to the gateway.
pub(super) struct Association {
    socket: Arc<UdpSocket>,
    ws: WebSocketStream<Tls>,
    owner: Owner,
}

impl Association {
    /// Binds the local socket (on the address the application reached us
    /// at) and opens the tunnel. `port` is the one the request named.
    pub(super) async fn open(
        s: &Shared,
        control: &TcpStream,
        port: u16,
        p: &Params,
    ) -> anyhow::Result<Self> {
        let local_ip = control.local_addr()?.ip();
        let owner = Owner {
            ip: control.peer_addr()?.ip(),
            port: (port != 0).then_some(port),
        };
        let socket = Arc::new(UdpSocket::bind((local_ip, 0)).await?);
        let ws = s.open_ws(p, "udp").await?;
        Ok(Association { socket, ws, owner })
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
            r = upstream(socket.clone(), self.owner, peer.clone(), sink, s.ctx.clone(), p.config.clone()) => r,
            r = downstream(socket, peer, source, s.ctx.clone(), p.config) => r,
            _ = control.read(&mut probe) => Ok(()),
        }
    }
}

/// Local datagrams (RSV FRAG ATYP ADDR PORT DATA) to encrypted packets.
async fn upstream(
    socket: Arc<UdpSocket>,
    owner: Owner,
    peer: Peer,
    mut sink: SplitSink<WebSocketStream<Tls>, Message>,
    ctx: SharedContext,
    cfg: ServerConfig,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        {
            let mut peer = peer.lock().unwrap_or_else(PoisonError::into_inner);
            if !owner.accepts(from, *peer) {
                tracing::debug!(%from, "datagram from outside the association dropped");
                continue;
            }
            *peer = Some(from);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn with_no_port_named_the_first_datagram_fixes_the_port() {
        let owner = Owner {
            ip: at("127.0.0.1:1").ip(),
            port: None,
        };
        assert!(owner.accepts(at("127.0.0.1:5000"), None));
        assert!(owner.accepts(at("127.0.0.1:5000"), Some(at("127.0.0.1:5000"))));
        assert!(!owner.accepts(at("127.0.0.1:5001"), Some(at("127.0.0.1:5000"))));
        assert!(!owner.accepts(at("127.0.0.2:5000"), None), "another host");
    }

    #[test]
    fn a_named_port_is_the_only_one_taken() {
        let owner = Owner {
            ip: at("10.0.0.7:1").ip(),
            port: Some(5000),
        };
        assert!(owner.accepts(at("10.0.0.7:5000"), None));
        assert!(!owner.accepts(at("10.0.0.7:5001"), None));
        assert!(!owner.accepts(at("10.0.0.8:5000"), None));
    }

    #[test]
    fn a_v4_mapped_control_address_matches_its_v4_datagrams() {
        let owner = Owner {
            ip: at("[::ffff:127.0.0.1]:1").ip(),
            port: None,
        };
        assert!(owner.accepts(at("127.0.0.1:5000"), None));
        assert!(owner.accepts(at("[::ffff:127.0.0.1]:5000"), None));
    }
}
