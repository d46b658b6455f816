//! What the unit tests of the byte-stream adapters share: loopback
//! sockets and recognisable data.

use tokio::net::{TcpListener, TcpStream};

/// A connected pair of loopback sockets.
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// `n` bytes in which a shifted or repeated piece shows.
pub(crate) fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}
