//! A WebSocket carrying a byte stream, seen as `AsyncRead + AsyncWrite`:
//! writes before a flush leave as one binary message of up to
//! [`COALESCE`] bytes (a copy loop flushes whenever its source has nothing
//! more to give), reads concatenate binary messages (boundaries mean
//! nothing). One message per Shadowsocks chunk (16 KiB) made the gateway
//! write to its node once per chunk; one per 64 KiB makes it write a
//! quarter as often. Shutting down the write side sends what is queued,
//! then a Close, and keeps reading until the peer's Close (a half-close).
//! A Close other than a normal one (1000) reads as an error ([`Cut`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Writes queued past this many bytes leave without waiting for a flush:
/// with its 8-byte header (and HTTP/2's 9 on `--mux`) a message is at
/// most 64 KiB, four whole TLS records and below the gateway's frame
/// limit. One byte more left a one-byte TLS record, and a write of its
/// own, behind every frame.
pub const COALESCE: usize = 64 * 1024 - 17;
const _: () = assert!(COALESCE < 1 << 16, "an 8-byte masked frame header");

/// Why the gateway ended a stream other than normally: its Close's code
/// and reason (1008 `quota_exceeded`, 1001 when it shuts down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The Close's status code.
    pub code: u16,
    /// The Close's reason.
    pub reason: String,
}

impl Cut {
    /// The cut a Close's `payload` says, if it is not a normal end (a
    /// payload of its code, 2 bytes, then its reason).
    pub fn of_close(payload: &[u8]) -> Option<Cut> {
        let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
        Cut::of(code, &String::from_utf8_lossy(&payload[2..]))
    }

    /// The cut a Close of `code` and `reason` says, if it is not a
    /// normal end.
    pub fn of(code: u16, reason: &str) -> Option<Cut> {
        (code != 1000).then(|| Cut {
            code,
            reason: reason.to_owned(),
        })
    }

    /// The error a local reader gets for it: the tunnel did not end
    /// normally, and the local connection is reset rather than closed, so
    /// an application does not take a cut download for a whole one.
    pub fn into_error(self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!(
                "the gateway ended the tunnel: {} {}",
                self.code, self.reason
            ),
        )
    }
}

/// The adapter.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
    /// Written and not yet sent (until a flush or [`COALESCE`]).
    out: BytesMut,
}

impl<S> WsIo<S> {
    /// Wraps an open WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            pending: Bytes::new(),
            eof: false,
            out: BytesMut::new(),
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Close(frame))) => {
                    self.eof = true;
                    // A cut-off is an error, not an end of stream.
                    let cut = frame.and_then(|f| Cut::of(u16::from(f.code), &f.reason));
                    if let Some(cut) = cut {
                        return Poll::Ready(Err(cut.into_error()));
                    }
                }
                None => self.eof = true,
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Hands what is queued to the WebSocket as one binary message.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let message = std::mem::take(&mut self.out).freeze();
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(message))
            .map_err(to_io)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if me.out.len() >= COALESCE {
            ready!(me.poll_push(cx))?;
        }
        if !me.out.is_empty() && me.out.capacity() < COALESCE {
            // A second write before a flush: a bulk transfer, one
            // message's room at once (a lone write takes what it needs).
            me.out.reserve(COALESCE - me.out.len());
        }
        let n = buf.len().min(COALESCE - me.out.len());
        me.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_push(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_push(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
#[path = "wsio_tests.rs"]
mod tests;
