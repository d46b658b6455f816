//! The client's side of WebSocket framing (RFC 6455) for a tunnel that
//! carries a byte stream over an HTTP/2 stream, without a message layer:
//! writes become one masked binary frame built straight into the buffer
//! handed to HTTP/2 (one copy, masked in place while in cache, the header
//! written into room left before the payload once its length is known); reads take
//! the payload of the gateway's frames straight out of the received DATA
//! chunks, whatever their boundaries. Control frames are answered by the
//! caller: a Ping with its Pong, a Close ends the stream.

use crate::wsio::Cut;
use bytes::{BufMut, BytesMut};
use tokio::io::ReadBuf;

/// Opcodes we send or act on.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Largest payload of a control frame.
const MAX_CONTROL: u64 = 125;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub(super) const MAX_HEADER: usize = 14;

/// A frame the gateway should not have sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum FrameError {
    /// Reserved bits, an unknown opcode, a masked frame from the server,
    /// a fragmented or oversized control frame.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message on a byte stream.
    #[error("the gateway sent a text frame")]
    Text,
}

/// What a [`Deframer`] step saw besides payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Control {
    /// A Ping, to be answered with a Pong of this payload.
    Ping(Vec<u8>),
    /// The gateway's Close: the stream ends, normally (1000, or no code)
    /// or not (the code and reason: a cut-off, say).
    Close(Option<Cut>),
}

/// Which kind of frame's payload is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Ping,
    Pong,
    Close,
}

/// Reads frames from a byte stream given in arbitrary chunks.
#[derive(Debug)]
pub(super) struct Deframer {
    /// Header bytes gathered so far (a header may span chunks).
    head: [u8; MAX_HEADER],
    head_len: usize,
    /// Payload bytes of the current frame still to come; `None` between
    /// frames.
    left: Option<u64>,
    kind: Kind,
    /// A control frame's payload, gathered.
    control: Vec<u8>,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer {
            head: [0; MAX_HEADER],
            head_len: 0,
            left: None,
            kind: Kind::Data,
            control: Vec::new(),
        }
    }
}

impl Deframer {
    /// Consumes from `input` (returns how much) and puts data payload
    /// into `out`: one step, ending at a frame's header, at the end of
    /// `input`, at a full `out` or at a control frame (returned).
    pub(super) fn step(
        &mut self,
        input: &[u8],
        out: &mut ReadBuf<'_>,
    ) -> Result<(usize, Option<Control>), FrameError> {
        let Some(left) = self.left else {
            return self.header(input);
        };
        let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match self.kind {
            Kind::Data => {
                let n = n.min(out.remaining());
                out.put_slice(&input[..n]);
                n
            }
            Kind::Ping | Kind::Close => {
                self.control.extend_from_slice(&input[..n]);
                n
            }
            Kind::Pong => n,
        };
        let left = left - n as u64;
        self.left = Some(left);
        if left > 0 {
            return Ok((n, None));
        }
        Ok((n, self.finish()))
    }

    /// The end of the current frame's payload.
    fn finish(&mut self) -> Option<Control> {
        self.left = None;
        match self.kind {
            Kind::Data | Kind::Pong => None,
            Kind::Ping => Some(Control::Ping(std::mem::take(&mut self.control))),
            Kind::Close => Some(Control::Close(Cut::of_close(&std::mem::take(
                &mut self.control,
            )))),
        }
    }

    /// Gathers and parses a header.
    fn header(&mut self, input: &[u8]) -> Result<(usize, Option<Control>), FrameError> {
        let mut used = 0;
        let need = |head: &[u8], len: usize| -> usize {
            if len < 2 {
                return 2;
            }
            let ext = match head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
            2 + ext + mask
        };
        loop {
            let want = need(&self.head, self.head_len);
            if self.head_len >= want {
                break;
            }
            let Some(&b) = input.get(used) else {
                return Ok((used, None));
            };
            self.head[self.head_len] = b;
            self.head_len += 1;
            used += 1;
        }
        let (b0, b1) = (self.head[0], self.head[1]);
        self.head_len = 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 != 0 {
            return Err(FrameError::Protocol("a masked frame from the server"));
        }
        let fin = b0 & 0x80 != 0;
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(be)
            }
            n => u64::from(n),
        };
        self.kind = match b0 & 0x0f {
            CONTINUATION | BINARY => Kind::Data,
            TEXT => return Err(FrameError::Text),
            CLOSE => Kind::Close,
            PING => Kind::Ping,
            PONG => Kind::Pong,
            _ => return Err(FrameError::Protocol("unknown opcode")),
        };
        if self.kind != Kind::Data && (!fin || len > MAX_CONTROL) {
            return Err(FrameError::Protocol(
                "fragmented or oversized control frame",
            ));
        }
        self.control.clear();
        self.left = Some(len);
        if len == 0 {
            return Ok((used, self.finish()));
        }
        Ok((used, None))
    }
}

/// Appends a masked Pong of `payload` to `out`.
pub(super) fn pong(payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    frame(PONG, payload, mask, out);
}

/// Appends a masked Close (1000, normal closure) to `out`.
pub(super) fn close(mask: [u8; 4], out: &mut BytesMut) {
    frame(CLOSE, &1000u16.to_be_bytes(), mask, out);
}

/// Appends a final, masked frame of `opcode` to `out`: the header, then
/// the payload copied and masked in one pass.
fn frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    out.reserve(MAX_HEADER + payload.len());
    let (head, used) = header(opcode, payload.len(), mask);
    out.put_slice(&head[..used]);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// The header of a final, masked frame of `opcode` with `len` payload
/// bytes: its bytes and how many of them there are.
fn header(opcode: u8, len: usize, mask: [u8; 4]) -> ([u8; MAX_HEADER], usize) {
    let mut head = [0u8; MAX_HEADER];
    head[0] = 0x80 | opcode;
    let at = match len {
        n if n < 126 => {
            head[1] = 0x80 | n as u8;
            2
        }
        n if n <= usize::from(u16::MAX) => {
            head[1] = 0x80 | 126;
            head[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            4
        }
        n => {
            head[1] = 0x80 | 127;
            head[2..10].copy_from_slice(&(n as u64).to_be_bytes());
            10
        }
    };
    head[at..at + 4].copy_from_slice(&mask);
    (head, at + 4)
}

/// Writes the header of a final, masked binary frame of `len` payload
/// bytes at the end of `slot` (the room left before the payload); returns
/// how many bytes of `slot` it took.
pub(super) fn binary_header(len: usize, mask: [u8; 4], slot: &mut [u8; MAX_HEADER]) -> usize {
    let (head, used) = header(BINARY, len, mask);
    slot[MAX_HEADER - used..].copy_from_slice(&head[..used]);
    used
}

/// Masks `buf`, the payload of a frame from byte `offset` on, with the
/// frame's `mask`.
pub(super) fn mask_at(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let r = offset % 4;
    apply_mask(
        buf,
        [
            mask[r],
            mask[(r + 1) % 4],
            mask[(r + 2) % 4],
            mask[(r + 3) % 4],
        ],
    );
}

/// `buf[i] ^= mask[i % 4]`, eight bytes at a time (the copy before it
/// leaves the payload in cache).
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let mut v = [0; 8];
        v.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(v) ^ word).to_ne_bytes());
    }
    // Whole words keep the mask's phase: the tail starts at mask[0].
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    /// The gateway's (unmasked) frame of `opcode`.
    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 0xffff => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    /// Feeds `wire` in chunks of `chunk` bytes into reads of `read` bytes:
    /// the data read and the control frames seen, in order.
    fn run(wire: &[u8], chunk: usize, read: usize) -> Result<(Vec<u8>, Vec<Control>), FrameError> {
        let mut d = Deframer::default();
        let (mut data, mut controls) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk) {
            let mut at = 0;
            while at < piece.len() {
                let mut space = vec![0; read];
                let mut out = ReadBuf::new(&mut space);
                let (used, control) = d.step(&piece[at..], &mut out)?;
                data.extend_from_slice(out.filled());
                at += used;
                controls.extend(control);
                assert!(
                    used > 0 || !out.filled().is_empty(),
                    "a step makes progress"
                );
            }
        }
        Ok((data, controls))
    }

    #[test]
    fn payload_comes_through_whatever_the_chunks_and_reads() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = server_frame(BINARY, false, b"hello ");
        wire.extend(server_frame(PING, true, b"p1"));
        wire.extend(server_frame(CONTINUATION, true, b"world"));
        wire.extend(server_frame(BINARY, true, &big[..300]));
        wire.extend(server_frame(PONG, true, b"ignored"));
        wire.extend(server_frame(BINARY, true, &big));
        wire.extend(server_frame(BINARY, true, b""));
        wire.extend(server_frame(CLOSE, true, &1000u16.to_be_bytes()));
        let mut want = b"hello world".to_vec();
        want.extend_from_slice(&big[..300]);
        want.extend_from_slice(&big);
        for (chunk, read) in [
            (1, 1),
            (3, 7),
            (13, 100),
            (16_384, 4096),
            (1 << 20, 1 << 20),
        ] {
            let (data, controls) = run(&wire, chunk, read).expect("valid frames");
            assert!(data == want, "chunks of {chunk}, reads of {read}");
            assert_eq!(
                controls,
                vec![Control::Ping(b"p1".to_vec()), Control::Close(None)]
            );
        }
    }

    #[test]
    fn frames_a_client_must_refuse_are_errors() {
        let mut masked = server_frame(BINARY, true, b"x");
        masked[1] |= 0x80;
        masked.splice(2..2, [1, 2, 3, 4]);
        assert!(matches!(run(&masked, 64, 64), Err(FrameError::Protocol(_))));
        let mut rsv = server_frame(BINARY, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(run(&rsv, 64, 64), Err(FrameError::Protocol(_))));
        assert_eq!(
            run(&server_frame(TEXT, true, b"x"), 64, 64),
            Err(FrameError::Text)
        );
        assert!(matches!(
            run(&server_frame(PING, false, b"x"), 64, 64),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            run(&server_frame(PING, true, &[0; 126]), 64, 64),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            run(&server_frame(0x3, true, b""), 64, 64),
            Err(FrameError::Protocol(_))
        ));
    }

    /// Unmasks a client frame as a server would: (opcode, payload).
    fn read_client_frame(wire: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(wire[0] & 0xf0, 0x80, "final, no reserved bits");
        assert_ne!(wire[1] & 0x80, 0, "masked");
        let (len, at) = match wire[1] & 0x7f {
            126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(wire[2..10].try_into().expect("8")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = &wire[at..at + 4];
        let body = &wire[at + 4..];
        assert_eq!(body.len(), len, "length");
        (
            wire[0] & 0x0f,
            body.iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect(),
        )
    }

    #[test]
    fn written_frames_are_masked_with_the_right_lengths() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in [0usize, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 100_003] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            // As the stream builds it: the payload masked piece by piece
            // (odd sizes, so pieces start at every phase of the mask), the
            // header written into the room before it.
            let mut out = BytesMut::new();
            out.put_bytes(0, MAX_HEADER);
            let mut at = 0;
            for size in [1usize, 3, 8, 13, 4096].into_iter().cycle() {
                if at == len {
                    break;
                }
                let piece = &payload[at..(at + size).min(len)];
                let start = out.len();
                out.extend_from_slice(piece);
                mask_at(&mut out[start..], mask, at);
                at += piece.len();
            }
            let slot: &mut [u8; MAX_HEADER] = (&mut out[..MAX_HEADER]).try_into().expect("room");
            let used = binary_header(len, mask, slot);
            out.advance(MAX_HEADER - used);
            assert_eq!(read_client_frame(&out), (BINARY, payload), "{len} bytes");
        }
        let mut out = BytesMut::new();
        pong(b"end", mask, &mut out);
        assert_eq!(read_client_frame(&out), (PONG, b"end".to_vec()));
        let mut out = BytesMut::new();
        close(mask, &mut out);
        assert_eq!(read_client_frame(&out), (CLOSE, vec![0x03, 0xe8]));
    }
}
