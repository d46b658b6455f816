//! UDP through a client's SOCKS5 proxy: an echo server, a UDP ASSOCIATE,
//! and datagrams in SOCKS5's UDP header.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A UDP echo server on 127.0.0.1.
pub async fn udp_echo() -> SocketAddr {
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    echo_addr
}

/// A UDP ASSOCIATE naming `port` (0: not known): the control connection
/// and the relay's address.
pub async fn associate(socks: SocketAddr, port: u16) -> (TcpStream, SocketAddr) {
    let mut control = TcpStream::connect(socks).await.expect("connect");
    control.write_all(&[5, 1, 0]).await.expect("greet");
    let mut r = [0u8; 2];
    control.read_exact(&mut r).await.expect("reply");
    let mut request = vec![5, 3, 0, 1, 0, 0, 0, 0];
    request.extend_from_slice(&port.to_be_bytes());
    control.write_all(&request).await.expect("associate");
    let mut rep = [0u8; 10];
    control.read_exact(&mut rep).await.expect("reply");
    assert_eq!(rep[1], 0, "UDP ASSOCIATE refused");
    let relay = SocketAddr::from((
        [rep[4], rep[5], rep[6], rep[7]],
        u16::from_be_bytes([rep[8], rep[9]]),
    ));
    (control, relay)
}

/// `payload` to `to` in a SOCKS5 UDP header.
pub fn socks_datagram(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(v4) = to else { panic!("v4") };
    let mut packet = vec![0, 0, 0, 1];
    packet.extend_from_slice(&v4.ip().octets());
    packet.extend_from_slice(&v4.port().to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// Sends `packet` to `relay` from `local` up to `tries` times, 500 ms
/// apart, until something comes back.
pub async fn exchange(
    local: &tokio::net::UdpSocket,
    relay: SocketAddr,
    packet: &[u8],
    tries: usize,
) -> Option<Vec<u8>> {
    let mut answer = vec![0u8; 2048];
    for _ in 0..tries {
        local.send_to(packet, relay).await.expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), local.recv_from(&mut answer)).await
        {
            return Some(answer[..n].to_vec());
        }
    }
    None
}

/// A UDP socket on 127.0.0.1.
pub async fn udp_socket() -> tokio::net::UdpSocket {
    tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind")
}
