//! One extended-CONNECT stream of the warm HTTP/2 connection carrying a
//! tunnel's WebSocket, seen as the tunnel's byte stream (`AsyncRead +
//! AsyncWrite`): each write is one binary frame ([`super::wsframe`]),
//! reads give the payload of the gateway's frames. Writes go out at once,
//! right behind the request's HEADERS, without waiting for the gateway's
//! answer (its first bytes are the Shadowsocks request); the first read
//! waits for the answer and fails unless it is 200. Writes are paced by
//! the gateway's windows; reads give the window back as the reader
//! consumes, so a slow local reader slows its own stream only. Shutting
//! down the write side sends a Close and keeps reading until the
//! gateway's Close (a half-close); the gateway's Close is answered with
//! ours, a Ping with its Pong.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wsframe::{self, Control, Deframer};

/// A tunnel's stream.
pub(super) struct H2Stream {
    /// The gateway's answer, until it arrives.
    response: Option<ResponseFuture>,
    recv: Option<RecvStream>,
    send: SendStream<Bytes>,
    /// Received bytes not yet read (their window not yet given back).
    pending: Bytes,
    /// The gateway's frames, read out of `pending`.
    frames: Deframer,
    eof: bool,
    /// Our Close was sent.
    ended: bool,
}

impl H2Stream {
    /// The stream of a request just sent.
    pub(super) fn new(response: ResponseFuture, send: SendStream<Bytes>) -> Self {
        H2Stream {
            response: Some(response),
            recv: None,
            send,
            pending: Bytes::new(),
            frames: Deframer::default(),
            eof: false,
            ended: false,
        }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

/// A fresh masking key for a frame we send.
fn mask() -> [u8; 4] {
    rand::random()
}

/// Sends the frame `build` writes (given a fresh mask).
fn send_frame(
    send: &mut SendStream<Bytes>,
    build: impl FnOnce([u8; 4], &mut BytesMut),
) -> io::Result<()> {
    let mut frame = BytesMut::new();
    build(mask(), &mut frame);
    send.send_data(frame.freeze(), false).map_err(to_io)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !me.pending.is_empty() && !me.eof {
                let before = buf.filled().len();
                let (used, control) = me
                    .frames
                    .step(&me.pending, buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                me.pending.advance(used);
                if let Some(recv) = me.recv.as_mut() {
                    let _ = recv.flow_control().release_capacity(used);
                }
                match control {
                    Some(Control::Ping(payload)) if !me.ended => {
                        send_frame(&mut me.send, |m, f| wsframe::pong(&payload, m, f))?;
                    }
                    Some(Control::Ping(_)) => {}
                    Some(Control::Close) => {
                        // Answered at once, as RFC 6455 asks: the gateway
                        // waits for it before it ends the stream.
                        me.eof = true;
                        if !me.ended {
                            me.ended = true;
                            send_frame(&mut me.send, wsframe::close)?;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    None => {}
                }
                if buf.filled().len() > before {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(response) = me.response.as_mut() {
                let answer = ready!(Pin::new(response).poll(cx)).map_err(to_io)?;
                me.response = None;
                if answer.status() != http::StatusCode::OK {
                    me.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("the gateway refused the tunnel ({})", answer.status()),
                    )));
                }
                me.recv = Some(answer.into_body());
                continue;
            }
            let Some(recv) = me.recv.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => me.pending = data,
                None => me.eof = true,
                Some(Err(e))
                    if matches!(e.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)) =>
                {
                    me.eof = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(buf.len());
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = self.send.capacity().min(buf.len());
        send_frame(&mut self.send, |m, f| wsframe::binary(&buf[..n], m, f))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what is queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            // A half-close: the gateway sends what the node still has,
            // then its Close.
            self.ended = true;
            send_frame(&mut self.send, wsframe::close)?;
        }
        Poll::Ready(Ok(()))
    }
}
