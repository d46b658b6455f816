use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BLOCK, WriteBlocks};
use crate::test_sockets::{pair, pattern};

/// What `rx` has to read right now, without waiting for more.
async fn readable_now(rx: &TcpStream) -> usize {
    // Long enough for loopback to deliver anything written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buf = vec![0u8; 4 * BLOCK];
    let mut n = 0;
    while let Ok(k) = rx.try_read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

#[tokio::test]
async fn small_writes_wait_for_a_flush_and_leave_together_in_order() {
    let (tx, mut rx) = pair().await;
    let sent = pattern(30 * 1024);
    let mut w = WriteBlocks::new(tx);
    for part in sent.chunks(10 * 1024) {
        w.write_all(part).await.expect("write");
    }
    assert_eq!(w.queued(), 30 * 1024);
    assert_eq!(readable_now(&rx).await, 0, "nothing leaves before a flush");
    w.flush().await.expect("flush");
    assert_eq!(w.queued(), 0);
    assert_eq!(w.held(), 0, "a flushed writer holds no buffer");
    let mut got = vec![0u8; sent.len()];
    rx.read_exact(&mut got).await.expect("read");
    assert_eq!(got, sent);
}

#[tokio::test]
async fn a_full_block_leaves_without_a_flush_and_shutdown_sends_the_rest() {
    let (tx, mut rx) = pair().await;
    let sent = pattern(5 * 16 * 1024);
    let mut w = WriteBlocks::new(tx);
    for part in sent.chunks(16 * 1024) {
        w.write_all(part).await.expect("write");
    }
    // Four chunks filled a block, written when the fifth came.
    assert_eq!(w.queued(), 16 * 1024);
    let mut got = vec![0u8; BLOCK];
    rx.read_exact(&mut got)
        .await
        .expect("the block arrives unflushed");
    assert_eq!(got, &sent[..BLOCK]);
    w.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    rx.read_to_end(&mut rest).await.expect("read to the end");
    assert_eq!(rest, &sent[BLOCK..]);
}

#[tokio::test]
async fn a_whole_block_goes_straight_through_and_reads_pass_through() {
    let (tx, mut rx) = pair().await;
    let sent = pattern(2 * BLOCK);
    let mut w = WriteBlocks::new(tx);
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 2 * BLOCK];
        rx.read_exact(&mut got).await.expect("read");
        rx.write_all(b"back").await.expect("answer");
        got
    });
    let n = w.write(&sent).await.expect("write");
    assert!(n > 0);
    assert_eq!(w.held(), 0, "no copy for a write of a block or more");
    w.write_all(&sent[n..]).await.expect("write");
    w.flush().await.expect("flush");
    assert_eq!(reader.await.expect("reader"), sent);
    let mut back = [0u8; 4];
    w.read_exact(&mut back).await.expect("read through");
    assert_eq!(&back, b"back");
}
