//! One extended-CONNECT stream of the warm HTTP/2 connection carrying a
//! tunnel's WebSocket, seen as the tunnel's byte stream (`AsyncRead +
//! AsyncWrite`): writes before a flush make one binary frame
//! ([`super::wsframe`]) of up to [`COALESCE`] bytes, sent as one DATA
//! frame (a copy loop flushes whenever its source has nothing more to
//! give), so a bulk upload costs one HTTP/2 frame, and the gateway one
//! write to its node, per 64 KiB, not per Shadowsocks chunk; reads give
//! the payload of the gateway's frames. The first flush sends right behind the
//! request's HEADERS, without waiting for the gateway's answer (its first
//! bytes are the Shadowsocks request); the first read
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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wsframe::{self, Control, Deframer};

/// Frames queued past this many payload bytes are sent without waiting
/// for a flush: the frame and its header fit one HTTP/2 frame of the
/// gateway's 64 KiB.
pub(super) const COALESCE: usize = crate::wsio::COALESCE;

/// A tunnel's stream.
pub(super) struct H2Stream {
    /// The gateway's answer, until it arrives.
    response: Option<ResponseFuture>,
    recv: Option<RecvStream>,
    send: SendStream<Bytes>,
    /// Written and not yet sent (until a flush or [`COALESCE`]): one
    /// binary frame, its header's room first, its payload masked as it
    /// comes.
    out: BytesMut,
    /// The payload bytes in `out`, counted against the stream's capacity.
    queued: usize,
    /// The mask of the binary frame in `out`, while it is open.
    open: Option<[u8; 4]>,
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
            out: BytesMut::new(),
            queued: 0,
            open: None,
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

impl H2Stream {
    /// Appends `data` to the open binary frame (opening one if none is).
    fn queue(&mut self, data: &[u8]) {
        let mask = match self.open {
            Some(mask) => {
                if self.out.capacity() < wsframe::MAX_HEADER + COALESCE {
                    // A second write before a flush: a bulk transfer,
                    // one frame's room at once.
                    self.out
                        .reserve(wsframe::MAX_HEADER + COALESCE - self.out.len());
                }
                mask
            }
            None => {
                let mask = mask();
                // A lone write (a request) takes what it needs.
                self.out = BytesMut::with_capacity(wsframe::MAX_HEADER + data.len());
                self.out.put_bytes(0, wsframe::MAX_HEADER);
                self.open = Some(mask);
                mask
            }
        };
        let start = self.out.len();
        self.out.extend_from_slice(data);
        wsframe::mask_at(&mut self.out[start..], mask, self.queued);
        self.queued += data.len();
    }

    /// Writes the open frame's header into the room before its payload.
    fn seal(&mut self) {
        if let Some(mask) = self.open.take() {
            let slot: &mut [u8; wsframe::MAX_HEADER] = (&mut self.out[..wsframe::MAX_HEADER])
                .try_into()
                .expect("the header's room");
            let used = wsframe::binary_header(self.queued, mask, slot);
            self.out.advance(wsframe::MAX_HEADER - used);
        }
    }

    /// Hands what is queued to the connection as one DATA frame.
    fn push(&mut self) -> io::Result<()> {
        self.seal();
        if self.out.is_empty() {
            return Ok(());
        }
        self.queued = 0;
        let frames = self.out.split().freeze();
        self.send.send_data(frames, false).map_err(to_io)
    }

    /// Sends what is queued, then the frame `build` writes (given a fresh
    /// mask): control frames keep their place behind the data.
    fn send_frame(&mut self, build: impl FnOnce([u8; 4], &mut BytesMut)) -> io::Result<()> {
        self.seal();
        build(mask(), &mut self.out);
        self.push()
    }
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
                        me.send_frame(|m, f| wsframe::pong(&payload, m, f))?;
                    }
                    Some(Control::Ping(_)) => {}
                    Some(Control::Close(cut)) => {
                        // Answered at once, as RFC 6455 asks: the gateway
                        // waits for it before it ends the stream.
                        me.eof = true;
                        if !me.ended {
                            me.ended = true;
                            me.send_frame(wsframe::close)?;
                        }
                        // A cut-off is an error, not an end of stream.
                        return Poll::Ready(cut.map_or(Ok(()), |c| Err(c.into_error())));
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
                    let refused = format!("the gateway refused the tunnel ({})", answer.status());
                    // Its SOCKS reply went out already (the first bytes do
                    // not wait for the answer): the log is where a user
                    // finds why, as without `--mux`.
                    tracing::warn!(error = %refused, "tunnel not opened");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        refused,
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
        let me = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if me.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            // What the gateway's windows allow beyond what is queued.
            let room = me.send.capacity().saturating_sub(me.queued);
            if room > 0 {
                let n = room.min(buf.len()).min(COALESCE - me.queued);
                me.queue(&buf[..n]);
                if me.queued >= COALESCE {
                    me.push()?;
                }
                return Poll::Ready(Ok(n));
            }
            if me.queued > 0 {
                // The queue takes the capacity there is: send it, then
                // wait for more.
                me.push()?;
                continue;
            }
            // Room for a whole coalesced frame, not just this write.
            me.send.reserve_capacity(COALESCE.max(buf.len()));
            match ready!(me.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what is handed to it.
        Poll::Ready(self.push())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            // A half-close: the gateway sends what the node still has,
            // then its Close.
            self.ended = true;
            self.send_frame(wsframe::close)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[path = "h2io_tests.rs"]
mod tests;
