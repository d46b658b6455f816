//! The SOCKS5 front (RFC 1928, no authentication): CONNECT opens a tunnel,
//! UDP ASSOCIATE relays datagrams; the codec is shadowsocks' own.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use shadowsocks_service::shadowsocks::relay::socks5::{
    self, Address, Command, HandshakeRequest, HandshakeResponse, Reply, SOCKS5_AUTH_METHOD_NONE,
    SOCKS5_AUTH_METHOD_NOT_ACCEPTABLE, TcpRequestHeader, TcpResponseHeader,
};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{Shared, forward, udp};

/// Answers a request with `reply` and the address bound for it.
async fn reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: Reply,
    bound: SocketAddr,
) -> std::io::Result<()> {
    TcpResponseHeader::new(reply, Address::SocketAddress(bound))
        .write_to(w)
        .await
}

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
    let p = s.params();
    match request.command {
        Command::TcpConnect => {
            let mut proxied = match forward::open(&s, &p, request.address).await {
                Ok(x) => x,
                Err(e) => {
                    reply(&mut stream, Reply::GeneralFailure, unspecified).await?;
                    return Err(e);
                }
            };
            reply(&mut stream, Reply::Succeeded, unspecified).await?;
            forward::pipe(&mut stream, &mut proxied).await?;
            Ok(())
        }
        Command::UdpAssociate => {
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
