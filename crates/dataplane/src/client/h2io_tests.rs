use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{COALESCE, H2Stream};

/// The WebSocket frames (opcode, unmasked payload) in one DATA frame.
fn frames(mut data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let opcode = data[0] & 0x0f;
        assert_eq!(data[1] & 0x80, 0x80, "client frames are masked");
        let (len, mut at) = match data[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([data[2], data[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(data[2..10].try_into().expect("8 bytes")))
                    .expect("length"),
                10,
            ),
            n => (usize::from(n), 2),
        };
        let mask = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        at += 4;
        let payload = data[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        out.push((opcode, payload));
        data = &data[at + len..];
    }
    out
}

/// A stream to an HTTP/2 server on loopback that passes on each DATA
/// frame it receives, as it arrives.
async fn stream() -> (H2Stream, mpsc::UnboundedReceiver<Bytes>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (socket, _) = l.accept().await.expect("accept");
        let mut conn = h2::server::Builder::new()
            .initial_window_size(8 << 20)
            .initial_connection_window_size(8 << 20)
            .max_frame_size(1 << 20)
            .handshake::<_, Bytes>(socket)
            .await
            .expect("h2 server");
        let (req, mut respond) = conn.accept().await.expect("a request").expect("ok");
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        respond
            .send_response(http::Response::new(()), false)
            .expect("answer");
        let mut body = req.into_body();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            let _ = tx.send(data);
        }
    });
    let socket = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::Builder::new()
        .handshake::<_, Bytes>(socket)
        .await
        .expect("h2 client");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    let (response, body) = send
        .send_request(
            http::Request::post("http://tunnel/")
                .body(())
                .expect("request"),
            false,
        )
        .expect("sent");
    (H2Stream::new(response, body), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a DATA frame in time")
        .expect("the server is there")
}

#[tokio::test]
async fn writes_before_a_flush_leave_as_one_frame_in_order() {
    let (mut s, mut rx) = stream().await;
    let parts: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10_000]).collect();
    for p in &parts {
        s.write_all(p).await.expect("write");
    }
    let waited = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
    assert!(waited.is_err(), "sent before the flush");
    s.flush().await.expect("flush");
    let data = next(&mut rx).await;
    let got = frames(&data);
    assert_eq!(got.len(), 1, "one binary frame in one DATA frame");
    assert_eq!(got[0].0, 2, "binary");
    assert_eq!(got[0].1, parts.concat());
    // A shutdown sends the Close behind what is queued.
    s.write_all(b"tail").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let got = frames(&next(&mut rx).await);
    assert_eq!(got[0], (2, b"tail".to_vec()));
    assert_eq!(got[1].0, 8, "then the Close");
}

#[tokio::test]
async fn a_long_write_leaves_at_the_coalescing_limit_without_a_flush() {
    let (mut s, mut rx) = stream().await;
    let sent: Vec<u8> = (0..2 * COALESCE + 1000).map(|i| (i % 251) as u8).collect();
    for chunk in sent.chunks(16 * 1024) {
        s.write_all(chunk).await.expect("write");
    }
    // Without a flush, what waits is less than the limit.
    let mut got = Vec::new();
    while let Ok(Some(data)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        let payload: Vec<u8> = frames(&data).into_iter().flat_map(|(_, p)| p).collect();
        assert!(
            payload.len() <= COALESCE,
            "at most the limit per DATA frame"
        );
        got.extend(payload);
    }
    assert!(
        got.len() > sent.len() - COALESCE,
        "{} of {} bytes sent before a flush",
        got.len(),
        sent.len()
    );
    assert!(got.len() < sent.len(), "the rest waits for a flush");
    s.flush().await.expect("flush");
    got.extend(
        frames(&next(&mut rx).await)
            .into_iter()
            .flat_map(|(_, p)| p),
    );
    assert_eq!(got, sent);
}
