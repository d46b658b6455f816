use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BLOCK, FIRST_BLOCK, ReadAhead};
use crate::test_sockets::{pair, pattern};

/// Reads until `want` bytes came, 4 KiB at a time (as rustls asks).
async fn read_small(r: &mut ReadAhead, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < want {
        let n = r.read(&mut chunk).await.expect("read");
        assert!(n > 0, "early end after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

#[tokio::test]
async fn small_reads_are_served_from_one_block_and_keep_every_byte_in_order() {
    let (mut tx, rx) = pair().await;
    let sent = pattern(300 * 1024);
    tx.write_all(&sent[..48 * 1024]).await.expect("write");
    let mut r = ReadAhead::new(rx);
    // Let the 48 KiB arrive, then ask for 4 KiB: the rest of a first
    // block waits above the socket, read by the same system call.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut first = [0u8; 4096];
    let n = r.read(&mut first).await.expect("read");
    assert_eq!(n, 4096);
    assert_eq!(r.buffered(), FIRST_BLOCK - 4096, "read ahead in one call");
    // That block was filled: the next one is twice as large.
    let mut next = read_small(&mut r, FIRST_BLOCK - 4096).await;
    assert_eq!(r.buffered(), 0);
    next.extend(read_small(&mut r, 4096).await);
    assert_eq!(r.buffered(), 2 * FIRST_BLOCK - 4096, "a larger block");
    let writer = tokio::spawn(async move {
        tx.write_all(&sent[48 * 1024..]).await.expect("write");
        sent
    });
    next.extend(read_small(&mut r, 300 * 1024 - 4096 - next.len()).await);
    let sent = writer.await.expect("writer");
    assert_eq!(&first[..], &sent[..4096]);
    assert_eq!(next, &sent[4096..]);
}

#[tokio::test]
async fn an_idle_socket_holds_no_block_and_the_end_passes_through() {
    let (mut tx, rx) = pair().await;
    let mut r = ReadAhead::new(rx);
    tx.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 4096];
    let n = r.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"hello");
    // Nothing more to read: the wait gives the block back.
    let waited = tokio::time::timeout(Duration::from_millis(50), r.read(&mut buf)).await;
    assert!(waited.is_err(), "nothing was sent");
    assert_eq!(r.held(), 0, "idle, yet holding {} bytes", r.held());
    drop(tx);
    assert_eq!(r.read(&mut buf).await.expect("end"), 0);
    assert_eq!(r.read(&mut buf).await.expect("still the end"), 0);
}

#[tokio::test]
async fn a_reader_asking_for_a_block_reads_straight_from_the_socket() {
    let (mut tx, rx) = pair().await;
    let mut r = ReadAhead::new(rx);
    let sent = pattern(100 * 1024);
    tx.write_all(&sent).await.expect("write");
    drop(tx);
    let mut big = vec![0u8; BLOCK];
    let mut got = Vec::new();
    loop {
        let n = r.read(&mut big).await.expect("read");
        if n == 0 {
            break;
        }
        assert_eq!(r.held(), 0, "a large read needs no block of ours");
        got.extend_from_slice(&big[..n]);
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn writes_go_through_unchanged() {
    let (tx, mut rx) = pair().await;
    let mut w = ReadAhead::new(tx);
    let sent = pattern(200 * 1024);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.expect("read");
        got
    });
    let halves = [
        std::io::IoSlice::new(&sent[..1000]),
        std::io::IoSlice::new(&sent[1000..]),
    ];
    let n = w.write_vectored(&halves).await.expect("write");
    w.write_all(&sent[n..]).await.expect("write");
    w.shutdown().await.expect("shutdown");
    assert_eq!(reader.await.expect("reader"), sent);
}

#[tokio::test]
async fn a_stream_without_readiness_is_read_in_blocks_and_holds_none_once_dry() {
    use shadowsocks_service::shadowsocks::net::{ConnectOpts, TcpStream as Outbound};
    // The node's destination connection: shadowsocks' own stream.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let opts = ConnectOpts::default();
    let (out, accepted) = tokio::join!(Outbound::connect_with_opts(&addr, &opts), l.accept());
    let (mut tx, _) = accepted.expect("accept");
    let mut r = ReadAhead::new(out.expect("connect"));
    let sent = pattern(200 * 1024);
    tx.write_all(&sent).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One chunk's payload at a time, as the node's copy reads.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 0x3FFF];
    while got.len() < sent.len() {
        let n = r.read(&mut chunk).await.expect("read");
        assert!(n > 0, "early end after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        if got.len() == 0x3FFF {
            assert_eq!(r.held(), 0, "the first read goes straight to the caller");
        }
        if got.len() == 2 * 0x3FFF {
            assert_eq!(r.buffered(), FIRST_BLOCK - 0x3FFF, "then a block at once");
        }
    }
    assert_eq!(got, sent);
    // Nothing more to read: the read waits, holding no block, and so do
    // the reads after it until one fills its buffer.
    let idle = tokio::time::timeout(Duration::from_millis(50), r.read(&mut chunk)).await;
    assert!(idle.is_err(), "nothing to read yet: {idle:?}");
    assert_eq!(r.held(), 0, "a dry stream holds no block");
    tx.write_all(&sent[..100 * 1024]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.read(&mut chunk).await.expect("read"), 0x3FFF);
    assert_eq!(r.held(), 0, "read straight into the caller's buffer");
    assert_eq!(r.read(&mut chunk).await.expect("read"), 0x3FFF);
    assert!(r.buffered() > 0, "flowing again: blocks again");
    drop(tx);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.expect("the rest");
    assert_eq!(rest.len() + 2 * 0x3FFF, 100 * 1024);
}
