use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, accept_async, client_async};

use super::{COALESCE, WsIo};
use crate::test_sockets::pattern;

/// Our side as `WsIo`, the peer's as a plain WebSocket, on loopback.
async fn pair() -> (WsIo<TcpStream>, WebSocketStream<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.expect("accept");
        accept_async(s).await.expect("server handshake")
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, _) = client_async(format!("ws://{addr}/"), tcp)
        .await
        .expect("client handshake");
    (WsIo::new(ws), server.await.expect("server"))
}

/// The next binary message's payload (`None` at a Close or the end).
async fn message(ws: &mut WebSocketStream<TcpStream>) -> Option<Vec<u8>> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Close(_)) => return None,
            Ok(_) => {}
            Err(e) => panic!("peer: {e}"),
        }
    }
}

#[tokio::test]
async fn writes_before_a_flush_leave_as_one_message_in_order() {
    let (mut ours, mut peer) = pair().await;
    let sent = pattern(30 * 1024);
    for part in sent.chunks(10 * 1024) {
        ours.write_all(part).await.expect("write");
    }
    ours.flush().await.expect("flush");
    assert_eq!(message(&mut peer).await.expect("a message"), sent);
    // A later write is a message of its own.
    ours.write_all(b"next").await.expect("write");
    ours.flush().await.expect("flush");
    assert_eq!(message(&mut peer).await.expect("a message"), b"next");
}

#[tokio::test]
async fn a_full_message_leaves_without_a_flush_and_shutdown_sends_the_rest_before_the_close() {
    let (mut ours, mut peer) = pair().await;
    let sent = pattern(5 * 16 * 1024);
    for part in sent.chunks(16 * 1024) {
        ours.write_all(part).await.expect("write");
    }
    // The WebSocket's own buffer holds a message until a flush or until it
    // is large enough; a flush of nothing queued sends what it holds.
    futures_util::SinkExt::flush(&mut ours.ws)
        .await
        .expect("flush the socket only");
    assert_eq!(
        message(&mut peer).await.expect("a message"),
        &sent[..COALESCE],
        "a full message is handed over without the adapter's flush"
    );
    ours.shutdown().await.expect("shutdown");
    assert_eq!(
        message(&mut peer).await.expect("the rest"),
        &sent[COALESCE..]
    );
    assert_eq!(message(&mut peer).await, None, "then the Close");
}
