//! A client's WebSocket frames held to RFC 6455, beyond what fastwebsockets
//! checks (reserved bits, unknown opcodes, fragmented control frames, Ping
//! size, the frame limit):
//! - every frame from a client is masked (5.1): [`MaskedOnly`] watches the
//!   frame headers in the bytes as they are read, before fastwebsockets
//!   parses them, and fails the read at the first unmasked one;
//! - fragments come in order, and control frames carry at most 125 bytes
//!   (5.4, 5.5), checked by [`Sequence`] on each parsed frame;
//! - a Close carries nothing, or a code a peer may send with a UTF-8 reason
//!   (5.5.1, 7.4).
//!
//! A frame that breaks a rule fails the connection with Close 1002 (1007
//! for a reason that is not UTF-8), as [`failure`] maps each refusal.
//!
//! The frames are parsed by [`Reader`], as fastwebsockets parses them, but
//! with a buffer that does not outlive a large frame: fastwebsockets keeps
//! the allocation its largest frame needed for the connection's life (a
//! tunnel idle after one 64 KiB frame held 109 KiB, after 250 KB 290 KiB).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// What a reader reads at once while it waits for a frame (and what it
/// keeps between frames).
const READ_AHEAD: usize = 8 * 1024;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// A client's frames read from `R`, each at most `max` bytes of payload
/// (1009 beyond), unmasked, text checked as UTF-8; see the module's note
/// for the buffer.
pub(crate) struct Reader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
    /// The buffer was grown past [`READ_AHEAD`] for a large frame: let go
    /// of once it is empty.
    grown: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads frames from `io` (at a frame boundary).
    pub fn new(io: R, max: usize) -> Self {
        Reader {
            io,
            buf: BytesMut::new(),
            max,
            grown: false,
        }
    }

    /// Until the buffer holds `n` bytes (room for `extra` more reserved
    /// with them).
    async fn fill(&mut self, n: usize, extra: usize) -> Result<(), WebSocketError> {
        if self.buf.len() >= n {
            return Ok(());
        }
        self.buf
            .reserve((n - self.buf.len() + extra).max(READ_AHEAD));
        self.grown |= self.buf.capacity() > READ_AHEAD;
        while self.buf.len() < n {
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(WebSocketError::UnexpectedEOF);
            }
        }
        Ok(())
    }

    /// The next frame.
    pub async fn read(&mut self) -> Result<Frame<'static>, WebSocketError> {
        self.fill(2, 0).await?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        if b0 & 0x70 != 0 {
            return Err(WebSocketError::ReservedBitsNotZero);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::try_from(b0 & 0x0f)?;
        let masked = b1 & 0x80 != 0;
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + extra + if masked { 4 } else { 0 };
        self.fill(head, 0).await?;
        let len = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.buf[2..10]);
                u64::from_be_bytes(len)
            }
        };
        let mask = masked.then(|| {
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&self.buf[head - 4..head]);
            mask
        });
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && !fin {
            return Err(WebSocketError::ControlFrameFragmented);
        }
        if opcode == OpCode::Ping && len > 125 {
            return Err(WebSocketError::PingFrameTooLarge);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.max)
            .ok_or(WebSocketError::FrameTooLarge)?;
        // The header stays in the buffer until the payload is in too:
        // dropped part way (a tunnel cut while it reads), the next read
        // starts at the same header.
        let whole = head.checked_add(len).ok_or(WebSocketError::FrameTooLarge)?;
        // The next frame's header may come with the payload.
        self.fill(whole, MAX_HEADER).await?;
        self.buf.advance(head);
        let mut payload = self.buf.split_to(len);
        if let Some(mask) = mask {
            fastwebsockets::unmask(&mut payload, mask);
        }
        if self.grown && self.buf.is_empty() {
            // The large allocation goes with the payload.
            self.buf = BytesMut::new();
            self.grown = false;
        }
        let frame = Frame::new(fin, opcode, None, Payload::Bytes(payload));
        if opcode == OpCode::Text && fin && !frame.is_utf8() {
            return Err(WebSocketError::InvalidUTF8);
        }
        Ok(frame)
    }
}

/// What the read of an unmasked frame fails with (its own type, so it is
/// told apart from other errors of the kind `InvalidData`, such as TLS's).
#[derive(Debug)]
struct Unmasked;

impl std::fmt::Display for Unmasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an unmasked frame from a client")
    }
}

impl std::error::Error for Unmasked {}

/// The error of a read that met an unmasked frame.
fn unmasked() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Unmasked)
}

/// Where the watcher is in the byte stream.
#[derive(Debug, Clone, Copy)]
enum At {
    /// In a frame header, with `have` of its bytes.
    Head { head: [u8; 2], have: usize },
    /// In the rest of a header (extended length and mask) and the payload:
    /// `skip` bytes to pass, the first `len_want` of them the extended
    /// length (`len_have` read so far, into `len`).
    Body {
        skip: u64,
        len: [u8; 8],
        len_have: usize,
        len_want: usize,
    },
    /// An unmasked frame was seen: every read fails.
    Refused,
}

/// An `AsyncRead` of a client's side of a WebSocket that fails at the
/// first frame header without the mask bit (see the module's note).
pub(crate) struct MaskedOnly<R> {
    inner: R,
    at: At,
}

impl<R> MaskedOnly<R> {
    /// Watches `inner` from a frame boundary (right after the handshake).
    pub fn new(inner: R) -> Self {
        MaskedOnly {
            inner,
            at: At::Head {
                head: [0; 2],
                have: 0,
            },
        }
    }

    /// Walks `data`, the bytes just read, through the frame headers.
    fn scan(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.at {
                At::Refused => break,
                At::Head { head, have } => {
                    head[*have] = data[0];
                    *have += 1;
                    data = &data[1..];
                    if *have == 2 {
                        if head[1] & 0x80 == 0 {
                            self.at = At::Refused;
                            break;
                        }
                        let code = head[1] & 0x7f;
                        let len_want = match code {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        // The extended length and the mask, then the
                        // payload (added once the length is known).
                        self.at = At::Body {
                            skip: len_want as u64
                                + 4
                                + if len_want == 0 { u64::from(code) } else { 0 },
                            len: [0; 8],
                            len_have: 0,
                            len_want,
                        };
                    }
                }
                At::Body {
                    skip,
                    len,
                    len_have,
                    len_want,
                } => {
                    if *len_have < *len_want {
                        len[*len_have] = data[0];
                        *len_have += 1;
                        *skip -= 1;
                        data = &data[1..];
                        if *len_have == *len_want {
                            let n = if *len_want == 2 {
                                u64::from(u16::from_be_bytes([len[0], len[1]]))
                            } else {
                                u64::from_be_bytes(*len)
                            };
                            *skip = skip.saturating_add(n);
                        }
                        continue;
                    }
                    let k = (*skip).min(data.len() as u64);
                    *skip -= k;
                    data = &data[k as usize..];
                    if *skip == 0 {
                        self.at = At::Head {
                            head: [0; 2],
                            have: 0,
                        };
                    }
                }
            }
        }
        if matches!(self.at, At::Refused) {
            return Err(unmasked());
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MaskedOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.at, At::Refused) {
            return Poll::Ready(Err(unmasked()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        // The bytes of a refused read are not handed on: the read fails.
        this.scan(&buf.filled()[before..])
            .inspect_err(|_| buf.set_filled(before))?;
        Poll::Ready(Ok(()))
    }
}

/// Why a client's frame fails its connection: the Close to send.
pub(crate) type Refusal = (u16, &'static [u8]);

/// The Close that a read error calls for: `None` when the connection is
/// simply gone or broken below the WebSocket (nothing to tell), 1009 for a
/// frame past the limit, 1007 for text that is not UTF-8, 1002 for a frame
/// that breaks the protocol.
pub(crate) fn failure(e: &WebSocketError) -> Option<Refusal> {
    match e {
        WebSocketError::FrameTooLarge => Some((1009, b"frame too large")),
        WebSocketError::IoError(io) if io.get_ref().is_some_and(|e| e.is::<Unmasked>()) => {
            Some((1002, b"unmasked frame"))
        }
        WebSocketError::InvalidUTF8 => Some((1007, b"text not UTF-8")),
        WebSocketError::PingFrameTooLarge => Some((1002, b"control frame too large")),
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_)
        | WebSocketError::HTTPError(_) => None,
        _ => Some((1002, b"protocol error")),
    }
}

/// The order of a client's frames: whether a fragmented message is open.
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    fragmented: bool,
}

/// Whether a peer may send Close code `code` (RFC 6455 7.4: the defined
/// codes but those never sent, the registered ones, 3000–4999).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl Sequence {
    /// Checks `frame`, the next from the client.
    pub fn check(&mut self, frame: &Frame<'_>) -> Result<(), Refusal> {
        match frame.opcode {
            OpCode::Binary | OpCode::Text => {
                if self.fragmented {
                    return Err((1002, b"a new message inside a fragmented one"));
                }
                self.fragmented = !frame.fin;
            }
            OpCode::Continuation => {
                if !self.fragmented {
                    return Err((1002, b"a continuation without a message"));
                }
                self.fragmented = !frame.fin;
            }
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                if frame.payload.len() > 125 {
                    return Err((1002, b"control frame too large"));
                }
            }
        }
        if frame.opcode == OpCode::Close {
            let p = &frame.payload[..];
            if p.len() == 1 {
                return Err((1002, b"a one-byte close"));
            }
            if p.len() >= 2 {
                if !sendable(u16::from_be_bytes([p[0], p[1]])) {
                    return Err((1002, b"close code not allowed"));
                }
                if std::str::from_utf8(&p[2..]).is_err() {
                    return Err((1007, b"close reason not UTF-8"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
