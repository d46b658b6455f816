use fastwebsockets::Payload;
use tokio::io::AsyncReadExt;

use super::*;

/// A client frame: masked (with a fixed key) unless `masked` is false.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [1, 2, 3, 4];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Feeds `bytes` to a watcher in pieces of `step`; the error, if one.
fn scan_in_steps(bytes: &[u8], step: usize) -> io::Result<()> {
    let mut w = MaskedOnly::new(());
    for piece in bytes.chunks(step) {
        w.scan(piece)?;
    }
    Ok(())
}

#[test]
fn masked_frames_of_every_length_form_pass_however_the_reads_split() {
    let mut stream = Vec::new();
    for n in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        stream.extend(frame(true, 2, &vec![7u8; n], true));
    }
    stream.extend(frame(true, 9, b"ping", true));
    for step in [1, 2, 3, 7, 14, 1_000, stream.len()] {
        scan_in_steps(&stream, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
    }
}

#[test]
fn an_unmasked_frame_is_refused_wherever_it_comes() {
    for n in [0usize, 5, 200, 70_000] {
        let mut stream = frame(true, 2, &vec![1u8; 300], true);
        stream.extend(frame(true, 2, &vec![9u8; n], false));
        for step in [1, 5, 64, stream.len()] {
            let e = scan_in_steps(&stream, step).expect_err("unmasked");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }
    // A payload that looks like a header without the mask bit is payload.
    let stream = frame(true, 2, &[0x82, 0x05, 0x82, 0x00], true);
    scan_in_steps(&stream, 1).expect("masked");
}

#[tokio::test]
async fn a_read_of_an_unmasked_frame_fails_and_every_later_one() {
    let mut bytes = frame(true, 2, b"fine", true);
    let good = bytes.len();
    bytes.extend(frame(true, 2, b"not masked", false));
    let mut r = MaskedOnly::new(&bytes[..good]);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.expect("a masked frame reads");
    assert_eq!(buf.len(), good);

    let mut r = MaskedOnly::new(&bytes[..]);
    let mut buf = [0u8; 256];
    let e = r.read(&mut buf).await.expect_err("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let e = r.read(&mut buf).await.expect_err("still refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

fn parsed(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame<'static> {
    Frame::new(fin, opcode, None, Payload::Owned(payload.to_vec()))
}

#[test]
fn fragments_must_come_in_order() {
    let mut s = Sequence::default();
    assert!(s.check(&parsed(true, OpCode::Binary, b"a")).is_ok());
    assert_eq!(
        s.check(&parsed(true, OpCode::Continuation, b"b"))
            .map_err(|r| r.0),
        Err(1002)
    );
    let mut s = Sequence::default();
    assert!(s.check(&parsed(false, OpCode::Binary, b"a")).is_ok());
    // Control frames may come between fragments.
    assert!(s.check(&parsed(true, OpCode::Ping, b"")).is_ok());
    assert!(s.check(&parsed(false, OpCode::Continuation, b"b")).is_ok());
    assert_eq!(
        s.check(&parsed(true, OpCode::Binary, b"c"))
            .map_err(|r| r.0),
        Err(1002)
    );
    let mut s = Sequence::default();
    assert!(s.check(&parsed(false, OpCode::Binary, b"a")).is_ok());
    assert!(s.check(&parsed(true, OpCode::Continuation, b"b")).is_ok());
    assert!(s.check(&parsed(true, OpCode::Binary, b"c")).is_ok());
}

#[test]
fn control_frames_and_closes_are_held_to_the_rules() {
    let mut s = Sequence::default();
    let close = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        parsed(true, OpCode::Close, &p)
    };
    for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        assert!(s.check(&close(ok, b"bye")).is_ok(), "{ok}");
    }
    assert!(s.check(&parsed(true, OpCode::Close, b"")).is_ok());
    for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
        assert_eq!(
            s.check(&close(bad, b"")).map_err(|r| r.0),
            Err(1002),
            "{bad}"
        );
    }
    assert_eq!(
        s.check(&parsed(true, OpCode::Close, &[3])).map_err(|r| r.0),
        Err(1002)
    );
    assert_eq!(
        s.check(&close(1000, &[0xff, 0xfe])).map_err(|r| r.0),
        Err(1007)
    );
    for op in [OpCode::Pong, OpCode::Close] {
        let mut p = 1000u16.to_be_bytes().to_vec();
        p.resize(126, b'x');
        assert_eq!(s.check(&parsed(true, op, &p)).map_err(|r| r.0), Err(1002));
    }
}

#[test]
fn read_errors_map_to_the_close_they_call_for() {
    assert_eq!(
        failure(&WebSocketError::FrameTooLarge).map(|r| r.0),
        Some(1009)
    );
    assert_eq!(
        failure(&WebSocketError::IoError(unmasked())).map(|r| r.0),
        Some(1002)
    );
    // A broken TLS record is of the same kind, and nothing to answer.
    assert_eq!(
        failure(&WebSocketError::IoError(io::Error::new(
            io::ErrorKind::InvalidData,
            "received corrupt message"
        ))),
        None
    );
    assert_eq!(
        failure(&WebSocketError::InvalidUTF8).map(|r| r.0),
        Some(1007)
    );
    // The same reason as for a Pong or Close over 125 bytes.
    assert_eq!(
        failure(&WebSocketError::PingFrameTooLarge),
        Some((1002, &b"control frame too large"[..]))
    );
    assert_eq!(
        failure(&WebSocketError::ReservedBitsNotZero).map(|r| r.0),
        Some(1002)
    );
    assert_eq!(failure(&WebSocketError::UnexpectedEOF), None);
    assert_eq!(
        failure(&WebSocketError::IoError(
            io::ErrorKind::ConnectionReset.into()
        )),
        None
    );
}

/// Hands out `bytes` `step` bytes per read.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(self.bytes.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn the_reader_gives_every_frame_unmasked_however_the_reads_split() {
    let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000];
    let mut stream = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
        stream.extend(frame(*n != 126, 2, &payload, true));
        if *n == 126 {
            stream.extend(frame(true, 0, b"end", true));
        }
    }
    stream.extend(frame(true, 9, b"ping", true));
    stream.extend(frame(true, 1, "text é".as_bytes(), true));
    for step in [1, 3, 14, 1_000, stream.len()] {
        let mut r = Reader::new(
            Trickle {
                bytes: stream.clone(),
                at: 0,
                step,
            },
            70_000,
        );
        for (i, n) in sizes.iter().enumerate() {
            let f = r
                .read()
                .await
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
            let want: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
            assert_eq!((f.opcode, &f.payload[..]), (OpCode::Binary, &want[..]));
            assert_eq!(f.fin, *n != 126);
            if *n == 126 {
                let f = r.read().await.expect("continuation");
                assert_eq!(
                    (f.opcode, &f.payload[..]),
                    (OpCode::Continuation, &b"end"[..])
                );
            }
        }
        let f = r.read().await.expect("ping");
        assert_eq!((f.opcode, &f.payload[..]), (OpCode::Ping, &b"ping"[..]));
        let f = r.read().await.expect("text");
        assert_eq!(&f.payload[..], "text é".as_bytes());
        assert!(matches!(r.read().await, Err(WebSocketError::UnexpectedEOF)));
    }
}

#[tokio::test]
async fn the_reader_refuses_what_breaks_the_rules() {
    let refused = |bytes: Vec<u8>| async move {
        let mut r = Reader::new(&bytes[..], 1_000);
        r.read().await.map(|_| ()).expect_err("refused")
    };
    let too_large = refused(frame(true, 2, &[0u8; 1_001], true)).await;
    assert_eq!(failure(&too_large).map(|r| r.0), Some(1009));
    let at_limit = frame(true, 2, &[0u8; 1_000], true);
    assert!(Reader::new(&at_limit[..], 1_000).read().await.is_ok());
    let mut reserved = frame(true, 2, b"x", true);
    reserved[0] |= 0x40;
    assert_eq!(failure(&refused(reserved).await).map(|r| r.0), Some(1002));
    assert_eq!(
        failure(&refused(frame(true, 3, b"x", true)).await).map(|r| r.0),
        Some(1002),
        "an unknown opcode"
    );
    assert_eq!(
        failure(&refused(frame(false, 9, b"x", true)).await).map(|r| r.0),
        Some(1002),
        "a fragmented Ping"
    );
    assert_eq!(
        failure(&refused(frame(true, 9, &[0u8; 126], true)).await).map(|r| r.0),
        Some(1002),
        "a Ping too large"
    );
    assert_eq!(
        failure(&refused(frame(true, 1, &[0xff, 0xfe], true)).await).map(|r| r.0),
        Some(1007),
        "text not UTF-8"
    );
    // A length past what any frame may have is refused before a byte of
    // payload is awaited.
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(failure(&refused(huge).await).map(|r| r.0), Some(1009));
    // Cut short: the connection is gone, nothing to tell.
    let cut = frame(true, 2, &[0u8; 500], true);
    assert_eq!(failure(&refused(cut[..100].to_vec()).await), None);
}

#[tokio::test]
async fn the_reader_lets_go_of_a_large_frames_buffer() {
    let mut stream = frame(true, 2, &vec![5u8; 250_000], true);
    stream.extend(frame(true, 2, b"small", true));
    let mut r = Reader::new(&stream[..], 256 * 1024);
    let big = r.read().await.expect("large");
    assert_eq!(big.payload.len(), 250_000);
    drop(big);
    assert!(r.buf.capacity() <= READ_AHEAD, "{}", r.buf.capacity());
    let small = r.read().await.expect("small");
    assert_eq!(&small.payload[..], b"small");
    assert!(r.buf.capacity() <= READ_AHEAD, "{}", r.buf.capacity());
}
