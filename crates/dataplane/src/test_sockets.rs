//! What the unit tests of the byte-stream adapters share: loopback
//! sockets, recognisable data, and a writer and a reader that stall now
//! and then.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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

/// Writes `data` to `w` slowly, a piece of 1 to `most` bytes per
/// millisecond, so that whoever reads it in larger reads gets short ones.
pub(crate) async fn trickle<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], most: usize) {
    let (mut at, mut seed) = (0, 7u32);
    while at < data.len() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let end = (at + (seed >> 16) as usize % most + 1).min(data.len());
        w.write_all(&data[at..end]).await.expect("trickle");
        at = end;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads `r` to its end, pausing 50 ms after every 256 KiB, so that its
/// writer is held back (with [`small_window`] sockets, whose buffers fill
/// at once) while more comes to it.
pub(crate) async fn read_in_bursts<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let (mut got, mut buf, mut next_pause) = (Vec::new(), vec![0u8; 16 * 1024], 0);
    loop {
        if got.len() >= next_pause {
            tokio::time::sleep(Duration::from_millis(150)).await;
            next_pause += 512 * 1024;
        }
        let n = r.read(&mut buf).await.expect("read in bursts");
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A socket with a 16 KiB receive buffer (no autotuning) and a 1,400-byte
/// MSS, so the far side's send buffer, sized from its congestion window in
/// segments, is some tens of KiB rather than megabytes (loopback's MSS is
/// 64 KiB): a reader that pauses holds its writer back within a few
/// hundred KiB.
fn small_window_socket() -> socket2::Socket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    s.set_tcp_mss(1400).expect("TCP_MAXSEG");
    s.set_nonblocking(true).expect("non-blocking");
    s
}

/// A [`small_window_socket`] to connect with.
pub(crate) fn small_window() -> TcpSocket {
    TcpSocket::from_std_stream(small_window_socket().into())
}

/// A listener on 127.0.0.1 whose connections are
/// [`small_window_socket`]s.
pub(crate) fn small_window_listener() -> TcpListener {
    let s = small_window_socket();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(16).expect("listen");
    TcpListener::from_std(s.into()).expect("listener")
}
