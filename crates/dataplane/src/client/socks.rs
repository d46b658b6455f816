//! The SOCKS5 front (RFC 1928, no authentication): CONNECT opens a tunnel,
//! UDP ASSOCIATE relays datagrams; the codec is shadowsocks' own.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use shadowsocks_service::shadowsocks::relay::socks5::{
    self, Command, HandshakeRequest, HandshakeResponse, Reply, SOCKS5_AUTH_METHOD_NONE,
    SOCKS5_AUTH_METHOD_NOT_ACCEPTABLE, TcpRequestHeader,
};
use tokio::net::TcpStream;

use super::forward::{self, Answer, socks_reply as reply};
use super::{Shared, udp};

/// Serves one local SOCKS5 connection.
pub(super) async fn serve(s: Arc<Shared>, mut stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let hello = HandshakeRequest::read_from(&mut stream).await?;
    if !hello.methods.contains(&SOCKS5_AUTH_METHOD_NONE) {
        HandshakeResponse::new(SOCKS5_AUTH_METHOD_NOT_ACCEPTABLE)
            .write_to(&mut stream)
            .await?;
        anyhow::bail!("no acceptable auth method");
    }
    HandshakeResponse::new(SOCKS5_AUTH_METHOD_NONE)
        .write_to(&mut stream)
        .await?;
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let request = match TcpRequestHeader::read_from(&mut stream).await {
        Ok(r) => r,
        Err(socks5::Error::IoError(e)) => return Err(e.into()),
        // A request we cannot serve gets its reply code (command or
        // address type not supported) before the connection closes.
        Err(e) => {
            reply(&mut stream, e.as_reply(), unspecified).await?;
            return Err(e.into());
        }
    };
    match request.command {
        Command::TcpConnect => forward::carry(s, stream, request.address, Answer::Socks).await,
        Command::UdpAssociate => {
            let p = s.params();
            let association = udp::Association::open(&s, &stream, &p).await?;
            reply(&mut stream, Reply::Succeeded, association.local_addr()?).await?;
            association.run(&s, stream, p).await
        }
        Command::TcpBind => {
            reply(&mut stream, Reply::CommandNotSupported, unspecified).await?;
            anyhow::bail!("unsupported SOCKS command BIND")
        }
    }
}
