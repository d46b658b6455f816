use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::relay::Address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::super::{RunningNode, parse_method, start};
use super::*;

const PASSWORD: &str = "a-test-password";

async fn node() -> RunningNode {
    node_idle_after(super::super::DEFAULT_IDLE_TIMEOUT).await
}

async fn node_idle_after(idle_timeout: Duration) -> RunningNode {
    start(&NodeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        method: parse_method("chacha20-ietf-poly1305").expect("method"),
        password: PASSWORD.into(),
        allow_private: true,
        idle_timeout,
    })
    .await
    .expect("node")
}

async fn echo_server() -> SocketAddr {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The client's socket, tallying the ciphertext it writes and reads.
struct Tally {
    inner: TcpStream,
    wrote: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Tally {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Tally {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.wrote.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits until the witness holds no open connection, and returns what it
/// has pending.
async fn settled(node: &RunningNode) -> Vec<httvps_wire::witness::ConnTotals> {
    for _ in 0..200 {
        if node.witness.open_count() == 0 {
            return node.witness.pending(true).conns;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a connection stayed open");
}

#[tokio::test]
async fn the_loop_counts_each_connection_both_ways_as_the_client_sees_it() {
    let echo = echo_server().await;
    let node = node().await;
    let (wrote, read) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let socket = TcpStream::connect(node.addr).await.expect("connect");
    let local = socket.local_addr().expect("local");
    let tally = Tally {
        inner: socket,
        wrote: wrote.clone(),
        read: read.clone(),
    };
    let cfg = ServerConfig::new(node.addr, PASSWORD, node_method()).expect("cfg");
    let ctx = Context::new_shared(ServerType::Local);
    let mut c = ProxyClientStream::from_stream(ctx, tally, &cfg, Address::SocketAddress(echo));
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // The client's first write (the header's) must fit one chunk.
    c.write_all(&sent[..100]).await.expect("write");
    c.write_all(&sent[100..]).await.expect("write");
    let mut back = vec![0u8; sent.len()];
    c.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, sent);
    // Half-close: the echo sees EOF, closes its side, and the client reads
    // the end of the stream through the node.
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    drop(c);
    let p = settled(&node).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].peer, local.to_string(), "keyed by the peer as seen");
    let (up, down) = (wrote.load(Ordering::Relaxed), read.load(Ordering::Relaxed));
    assert!(
        up > 300_000 && down > 300_000,
        "ciphertext: {up} up, {down} down"
    );
    assert_eq!((p[0].bytes_up, p[0].bytes_down), (up as i64, down as i64));
    assert_eq!(
        (node.rx(), node.tx()),
        (up, down),
        "the heartbeat counters agree"
    );
}

fn node_method() -> CipherKind {
    parse_method("chacha20-ietf-poly1305").expect("method")
}

#[tokio::test]
async fn a_header_that_fails_authentication_gets_silence_until_the_client_closes() {
    let node = node().await;
    let mut c = TcpStream::connect(node.addr).await.expect("connect");
    // A salt and a length chunk that no key authenticates.
    c.write_all(&[0x5a; 32 + 2 + 16]).await.expect("write");
    let mut b = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await;
    assert!(quiet.is_err(), "no answer and no close: {quiet:?}");
    // More garbage is read and discarded, still silently.
    c.write_all(&[0x33; 4096]).await.expect("still open");
    let quiet = tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await;
    assert!(quiet.is_err(), "no answer and no close: {quiet:?}");
    c.shutdown().await.expect("shutdown");
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed after the client's EOF")
        .expect("a clean close");
    assert_eq!(n, 0);
    let p = settled(&node).await;
    assert_eq!((p[0].bytes_up, p[0].bytes_down), (50 + 4096, 0));
}

#[tokio::test]
async fn a_header_cut_by_eof_closes_at_once() {
    let node = node().await;
    let mut c = TcpStream::connect(node.addr).await.expect("connect");
    c.write_all(&[0x5a; 20]).await.expect("write");
    c.shutdown().await.expect("shutdown");
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("closed")
        .expect("a clean close");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_trickled_download_to_a_reader_in_bursts_arrives_whole_and_in_order() {
    // Short reads from the destination while the client holds the node's
    // writes back: where tokio's copy retries a write with more than it
    // first offered (the server stream alone counted that as sent; the
    // node's queued writes make it rare here, `sswrites`' tests make it
    // happen every time).
    let sent = crate::test_sockets::pattern(2 << 20);
    let source = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = source.local_addr().expect("addr");
    let data = sent.clone();
    tokio::spawn(async move {
        let (mut s, _) = source.accept().await.expect("accept");
        crate::test_sockets::trickle(&mut s, &data, 12_000).await;
        let _ = s.shutdown().await;
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let node = node().await;
    let socket = crate::test_sockets::small_window()
        .connect(node.addr)
        .await
        .expect("connect");
    let cfg = ServerConfig::new(node.addr, PASSWORD, node_method()).expect("cfg");
    let ctx = Context::new_shared(ServerType::Local);
    let mut c = ProxyClientStream::from_stream(ctx, socket, &cfg, Address::SocketAddress(target));
    c.write_all(b"go").await.expect("request");
    c.flush().await.expect("flush");
    let got = crate::test_sockets::read_in_bursts(&mut c).await;
    assert_eq!(got.len(), sent.len(), "every byte, once");
    assert!(got == sent, "in order");
}

/// A destination that accepts and never reads: the node's writes toward
/// it stop, and so does its reading of the client. Such a tunnel used to
/// hold the node's two descriptors and its buffers for ever, the client's
/// close unread; now it ends once no byte has moved either way for the
/// idle limit. A tunnel that keeps moving, however slowly, stays.
#[tokio::test]
async fn a_tunnel_whose_destination_stops_reading_ends_at_the_idle_limit() {
    let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = sink.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = sink.accept().await {
            held.push(s);
        }
    });
    let node = node_idle_after(Duration::from_secs(1)).await;
    let cfg = ServerConfig::new(node.addr, PASSWORD, node_method()).expect("cfg");
    let ctx = Context::new_shared(ServerType::Local);
    let socket = TcpStream::connect(node.addr).await.expect("connect");
    let mut c = ProxyClientStream::from_stream(ctx, socket, &cfg, Address::SocketAddress(target));
    c.write_all(b"first").await.expect("header");
    // Push until every buffer on the way is full and the writes stop.
    let chunk = vec![7u8; 64 * 1024];
    let mut pushed = 0usize;
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_millis(500), c.write_all(&chunk)).await
    {
        pushed += chunk.len();
        assert!(pushed < 512 << 20, "the destination never pushed back");
    }
    assert_eq!(node.witness.open_count(), 1, "stuck, still open");
    // Within the idle limit and a check's step, the node lets go.
    let mut closed = false;
    for _ in 0..40 {
        if node.witness.open_count() == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the stuck tunnel was not closed");
    held.abort();

    // An echo that answers a byte every 400 ms for 3 s: never idle for the
    // limit, so never closed.
    let echo = echo_server().await;
    let ctx = Context::new_shared(ServerType::Local);
    let socket = TcpStream::connect(node.addr).await.expect("connect");
    let mut c = ProxyClientStream::from_stream(ctx, socket, &cfg, Address::SocketAddress(echo));
    for i in 0..8u8 {
        c.write_all(&[i]).await.expect("write");
        c.flush().await.expect("flush");
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .await
            .expect("a slow tunnel stays open");
        assert_eq!(b[0], i);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// A node stopping (SIGTERM) resets its open tunnels: the client sees the
/// cut, not an end of stream that reads as the destination's (a download
/// cut short looked complete).
#[tokio::test]
async fn a_stopping_node_resets_its_tunnels() {
    // A destination that sends without end.
    let source = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = source.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = source.accept().await {
            tokio::spawn(async move {
                let chunk = [7u8; 16 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let node = node().await;
    let cfg = ServerConfig::new(node.addr, PASSWORD, node_method()).expect("cfg");
    let ctx = Context::new_shared(ServerType::Local);
    let socket = TcpStream::connect(node.addr).await.expect("connect");
    let mut c = ProxyClientStream::from_stream(ctx, socket, &cfg, Address::SocketAddress(target));
    c.write_all(b"go").await.expect("write");
    c.flush().await.expect("flush");
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < 256 * 1024 {
        read += c.read(&mut buf).await.expect("the download runs");
    }
    node.shut_down(Duration::from_secs(2)).await;
    assert_eq!(node.witness.open_count(), 0, "the tunnel is gone");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the tunnel ended");
    assert!(end.is_err(), "ended as a clean end of stream");
}
