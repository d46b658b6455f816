//! The SOCKS5 front (RFC 1928, no authentication): CONNECT opens a tunnel,
//! UDP ASSOCIATE relays datagrams; the codec is shadowsocks' own.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shadowsocks_service::shadowsocks::relay::socks5::{
    self, Address, Command, HandshakeRequest, HandshakeResponse, Reply, SOCKS5_AUTH_METHOD_NONE,
    SOCKS5_AUTH_METHOD_NOT_ACCEPTABLE, TcpRequestHeader,
};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use super::forward::{self, Answer, socks_reply as reply};
use super::{Shared, udp};

/// Room for what a local client sends before its tunnel opens: the
/// greeting and the request (at most 257 + 262 bytes), and any bytes it
/// sends right behind them.
const HEAD: usize = 1024;

/// How long a local client has to send its greeting and its request: a
/// connection that sends neither holds no socket past it.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Serves one local SOCKS5 connection. The greeting and the request are
/// read through one buffer: one read each, not one per field (five reads
/// per tunnel before). Bytes read past the request (a client that does not
/// wait for the reply) go into the tunnel first.
pub(super) async fn serve(s: Arc<Shared>, mut stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let Ok(request) = tokio::time::timeout(HANDSHAKE_DEADLINE, handshake(&mut stream)).await else {
        anyhow::bail!("no SOCKS5 request within {HANDSHAKE_DEADLINE:?}");
    };
    let (request, early) = request?;
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    match request.command {
        Command::TcpConnect if !connectable(&request.address) => {
            // Nothing a tunnel could reach: refused here, not after a
            // tunnel was opened for it.
            reply(&mut stream, Reply::HostUnreachable, unspecified).await?;
            anyhow::bail!("SOCKS5 CONNECT to {}: no such destination", request.address)
        }
        Command::TcpConnect => {
            forward::carry(s, stream, request.address, Answer::Socks, early).await
        }
        Command::UdpAssociate => {
            let p = s.params();
            let port = request.address.port();
            let association = udp::Association::open(&s, &stream, port, &p).await?;
            reply(&mut stream, Reply::Succeeded, association.local_addr()?).await?;
            association.run(&s, stream, p).await
        }
        Command::TcpBind => {
            reply(&mut stream, Reply::CommandNotSupported, unspecified).await?;
            anyhow::bail!("unsupported SOCKS command BIND")
        }
    }
}

/// Whether a CONNECT names a destination at all: a port, and a host name
/// that is not empty.
fn connectable(address: &Address) -> bool {
    match address {
        Address::SocketAddress(a) => a.port() != 0,
        Address::DomainNameAddress(host, port) => *port != 0 && !host.is_empty(),
    }
}

/// Reads the greeting and the request (answering the greeting); returns
/// the request and the bytes that came right behind it.
async fn handshake(stream: &mut TcpStream) -> anyhow::Result<(TcpRequestHeader, Vec<u8>)> {
    let mut head = BufReader::with_capacity(HEAD, stream);
    let hello = HandshakeRequest::read_from(&mut head).await?;
    if !hello.methods.contains(&SOCKS5_AUTH_METHOD_NONE) {
        HandshakeResponse::new(SOCKS5_AUTH_METHOD_NOT_ACCEPTABLE)
            .write_to(head.get_mut())
            .await?;
        anyhow::bail!("no acceptable auth method");
    }
    HandshakeResponse::new(SOCKS5_AUTH_METHOD_NONE)
        .write_to(head.get_mut())
        .await?;
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let request = match TcpRequestHeader::read_from(&mut head).await {
        Ok(r) => r,
        Err(socks5::Error::IoError(e)) => return Err(e.into()),
        // A request we cannot serve gets its reply code (command or
        // address type not supported) before the connection closes.
        Err(e) => {
            reply(head.get_mut(), e.as_reply(), unspecified).await?;
            return Err(e.into());
        }
    };
    let early = head.buffer().to_vec();
    Ok((request, early))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Both ends of a TCP connection on 127.0.0.1: the client's, the server's.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// A greeting and a CONNECT request to 127.0.0.1:`port`, as one write.
    fn greeting_and_request(port: u16) -> Vec<u8> {
        let mut b = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
        b.extend_from_slice(&port.to_be_bytes());
        b
    }

    #[tokio::test]
    async fn greeting_request_and_early_bytes_in_one_read_are_told_apart() {
        let (mut client, mut server) = connected().await;
        // Everything at once, with the first payload bytes behind it.
        let mut sent = greeting_and_request(8080);
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
        client.write_all(&sent).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut head = BufReader::with_capacity(HEAD, &mut server);
        let hello = HandshakeRequest::read_from(&mut head)
            .await
            .expect("greeting");
        assert_eq!(hello.methods, vec![SOCKS5_AUTH_METHOD_NONE]);
        let request = TcpRequestHeader::read_from(&mut head)
            .await
            .expect("request");
        assert!(matches!(request.command, Command::TcpConnect));
        assert_eq!(request.address.to_string(), "127.0.0.1:8080");
        assert_eq!(head.buffer(), b"GET / HTTP/1.1\r\n", "the early bytes");
    }

    #[test]
    fn a_connect_needs_a_port_and_a_host() {
        let ip = |port| Address::SocketAddress(SocketAddr::from(([127, 0, 0, 1], port)));
        let name = |host: &str, port| Address::DomainNameAddress(host.to_owned(), port);
        assert!(connectable(&ip(80)));
        assert!(connectable(&name("example.com", 443)));
        assert!(!connectable(&ip(0)));
        assert!(!connectable(&name("example.com", 0)));
        assert!(!connectable(&name("", 443)));
    }

    #[tokio::test]
    async fn a_request_split_over_many_writes_is_read_whole_with_nothing_early() {
        let (mut client, mut server) = connected().await;
        let sent = greeting_and_request(443);
        let writer = tokio::spawn(async move {
            for b in sent {
                client.write_all(&[b]).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            client
        });
        let mut head = BufReader::with_capacity(HEAD, &mut server);
        HandshakeRequest::read_from(&mut head)
            .await
            .expect("greeting");
        let request = TcpRequestHeader::read_from(&mut head)
            .await
            .expect("request");
        assert_eq!(request.address.to_string(), "127.0.0.1:443");
        assert!(head.buffer().is_empty());
        drop(writer.await.expect("writer"));
    }
}
