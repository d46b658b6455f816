use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::Context;
use shadowsocks_service::shadowsocks::crypto::CipherKind;
use shadowsocks_service::shadowsocks::relay::Address;
use shadowsocks_service::shadowsocks::relay::tcprelay::ProxyServerStream;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::ShadowWrites;
use crate::test_sockets::{pair, pattern};

const METHOD: CipherKind = CipherKind::CHACHA20_POLY1305;

fn config() -> ServerConfig {
    ServerConfig::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
        "a-test-password",
        METHOD,
    )
    .expect("config")
}

/// A client stream over `tx`, to a target that does not matter.
fn client(tx: TcpStream) -> ProxyClientStream<TcpStream> {
    let ctx = Context::new_shared(ServerType::Local);
    let target = Address::SocketAddress(([127, 0, 0, 1], 9).into());
    ProxyClientStream::from_stream(ctx, tx, &config(), target)
}

/// The server's side of a client stream over `rx`, its header read.
async fn server(rx: TcpStream) -> ProxyServerStream<TcpStream> {
    let ctx = Context::new_shared(ServerType::Server);
    let mut s = ProxyServerStream::from_stream(ctx, rx, METHOD, config().key());
    s.handshake().await.expect("header");
    s
}

/// Decrypts everything the client sends over `rx`, to its end.
fn decrypt_all(rx: TcpStream) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        server(rx)
            .await
            .read_to_end(&mut got)
            .await
            .expect("read to the end");
        got
    })
}

/// Each offer while the socket's buffers fill.
const STEP: usize = 1000;

/// Offers `w` slices of [`STEP`] bytes of `data` from `*at` on, once each,
/// until one is pending (the socket's buffers are full).
async fn write_until_pending<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], at: &mut usize) {
    loop {
        let offer = &data[*at..*at + STEP];
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut *w).poll_write(cx, offer))).await {
            Poll::Ready(n) => *at += n.expect("write"),
            Poll::Pending => return,
        }
    }
}

/// Over a loopback socket, through `wrap`: offers [`STEP`] bytes at a time
/// until one offer is pending, then, once the socket drains, retries with
/// three times as much (as tokio's copy does when it read more
/// meanwhile), writes the rest and closes. Returns what the retry
/// reported written, what the far side decrypted, and what was sent.
async fn retry_longer<W: AsyncWrite + Unpin>(
    wrap: impl FnOnce(ProxyClientStream<TcpStream>) -> W,
) -> (usize, Vec<u8>, Vec<u8>) {
    let data = pattern(16 << 20);
    let (tx, rx) = pair().await;
    let mut w = wrap(client(tx));
    let mut at = 0;
    write_until_pending(&mut w, &data, &mut at).await;
    let reader = decrypt_all(rx);
    let n = w.write(&data[at..at + 3 * STEP]).await.expect("retry");
    w.write_all(&data[at + n..]).await.expect("the rest");
    w.shutdown().await.expect("shutdown");
    (n, reader.await.expect("reader"), data)
}

#[tokio::test]
async fn a_retry_after_pending_sends_and_reports_exactly_the_first_offer() {
    let (n, got, data) = retry_longer(ShadowWrites::new).await;
    assert_eq!(n, STEP, "the retry reports what was encrypted");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "every byte once, in order");
}

#[tokio::test]
async fn the_bare_stream_reports_the_longer_retry_and_loses_the_difference() {
    // Why the wrapper exists (shadowsocks-rust issue 2175): if this ever
    // fails, the stream counts its writes right and the wrapper could go.
    let (n, got, data) = retry_longer(|bare| bare).await;
    assert_eq!(n, 3 * STEP, "the stream reports its retry's length");
    assert_eq!(
        got.len(),
        data.len() - 2 * STEP,
        "bytes reported sent and never sent"
    );
}

#[tokio::test]
async fn a_retry_with_fewer_bytes_is_refused_not_sent_as_something_else() {
    let data = pattern(16 << 20);
    let (tx, _rx) = pair().await;
    let mut w = ShadowWrites::new(client(tx));
    let mut at = 0;
    write_until_pending(&mut w, &data, &mut at).await;
    let r =
        poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_write(cx, &data[at..at + STEP - 1]))).await;
    match r {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("a shorter retry was taken: {other:?}"),
    }
}

#[tokio::test]
async fn the_first_write_is_capped_and_later_ones_are_not() {
    let data = pattern(100_000);
    let (tx, rx) = pair().await;
    let mut w = ShadowWrites::first_capped(client(tx), 1000);
    let reader = decrypt_all(rx);
    let first = w.write(&data).await.expect("first");
    assert_eq!(first, 1000);
    let second = w.write(&data[first..first + 10_000]).await.expect("second");
    assert_eq!(second, 10_000, "one chunk's worth and less goes whole");
    w.write_all(&data[first + second..]).await.expect("rest");
    w.shutdown().await.expect("shutdown");
    assert!(reader.await.expect("reader") == data);
}

#[tokio::test]
async fn tokio_copy_into_the_stream_sends_every_byte_once_in_order() {
    // The copy our node and client run: short reads from a slow source,
    // writes held back by a reader that pauses, the copy reading more
    // while it waits.
    let data = pattern(2 << 20);
    let listener = crate::test_sockets::small_window_listener();
    let addr = listener.local_addr().expect("addr");
    let tx = crate::test_sockets::small_window()
        .connect(addr)
        .await
        .expect("connect");
    let (rx, _) = listener.accept().await.expect("accept");
    let reader =
        tokio::spawn(
            async move { crate::test_sockets::read_in_bursts(&mut server(rx).await).await },
        );
    let (mut source, mut from_source) = pair().await;
    let sent = data.clone();
    tokio::spawn(async move {
        crate::test_sockets::trickle(&mut source, &sent, 6000).await;
        source.shutdown().await.expect("shutdown");
    });
    let mut w = ShadowWrites::new(client(tx));
    tokio::io::copy(&mut from_source, &mut w)
        .await
        .expect("copy");
    w.shutdown().await.expect("shutdown");
    let got = reader.await.expect("reader");
    assert_eq!(got.len(), data.len(), "every byte, once");
    assert!(got == data, "in order");
}
