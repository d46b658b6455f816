//! A socket read in large blocks beneath TLS and Shadowsocks.
//!
//! rustls asks its transport for at most 4 KiB per read (its deframer
//! grows by that much), so a TLS stream carrying bulk data made four or
//! five `read` system calls per 16 KiB record. [`ReadAhead`] answers those
//! small reads from one block read at once: 16 KiB at first (a handshake
//! needs no more), doubling up to 64 KiB while reads fill their blocks, so
//! a busy connection makes one system call where it made sixteen. The
//! node's Shadowsocks server reads each chunk's length and then its
//! payload, two reads per chunk, and gains the same way; so does the
//! node's copy from a destination, which reads one chunk's payload (16
//! KiB) at a time. The block is given back whenever the stream has
//! nothing to read, and a read on a socket waits for readiness before it
//! takes one, so an idle connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most one system call reads ahead.
pub const BLOCK: usize = 64 * 1024;

/// The first block of a connection: handshakes and small exchanges need no
/// more, and blocks double (up to [`BLOCK`]) while reads fill them.
pub const FIRST_BLOCK: usize = 16 * 1024;

/// Whether a stream has something to read, asked without a system call
/// (tokio's readiness), so that a read waiting for data holds no block.
pub trait ReadReady {
    /// Ready when a read may find data (or the end, or an error); `None`
    /// when the stream cannot tell.
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>>;
}

impl ReadReady for TcpStream {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        Some(self.poll_read_ready(cx))
    }
}

impl ReadReady for shadowsocks_service::shadowsocks::net::TcpStream {
    fn poll_ready_to_read(&self, _: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        None
    }
}

/// A stream (a TCP socket by default) read in blocks of up to [`BLOCK`]
/// bytes; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S = TcpStream> {
    inner: S,
    /// What was read and not yet handed out; no capacity while idle.
    ahead: BytesMut,
    /// The size of the next block.
    block: usize,
    /// No read has filled its buffer yet, or the last read found nothing:
    /// a stream that cannot tell whether it is ready is then read straight
    /// into the caller's buffer until a read fills it, so waiting (and
    /// every wake-up while idle) takes no block, nor does a small exchange.
    dry: bool,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner` with nothing read ahead.
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            ahead: BytesMut::new(),
            block: FIRST_BLOCK,
            dry: true,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream, to change it (what was read ahead stays).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Bytes read from the stream and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.ahead.len()
    }

    /// The bytes held for reading ahead, in use or not.
    pub fn held(&self) -> usize {
        self.ahead.capacity()
    }

    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.ahead.len());
        out.put_slice(&self.ahead[..n]);
        self.ahead.advance(n);
    }
}

impl<S: AsyncRead + ReadReady + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= BLOCK {
            // A reader that asks for a block itself gets it without a copy.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        // Readiness first (no system call): waiting holds no block.
        match this.inner.poll_ready_to_read(cx) {
            Some(Poll::Ready(Ok(()))) => {}
            Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
            Some(Poll::Pending) => {
                this.ahead = BytesMut::new();
                return Poll::Pending;
            }
            None if this.dry => {
                this.ahead = BytesMut::new();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                // A full read: data is flowing again, blocks from the next.
                this.dry = out.remaining() > 0;
                return Poll::Ready(Ok(()));
            }
            None => {}
        }
        // Empty: the block of the last read (if kept) is reused.
        this.ahead.clear();
        this.ahead.reserve(this.block);
        // The socket's own read, which also takes a short read as the end
        // of what is there (no second call just to hear it would block).
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.ahead) {
            Poll::Ready(Ok(n)) => {
                if n == this.block {
                    // Reads fill their blocks: a bulk transfer.
                    this.block = (this.block * 2).min(BLOCK);
                }
                // Zero bytes is the end of the stream: `out` stays as it is.
                this.hand_out(out);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.ahead = BytesMut::new();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                this.ahead = BytesMut::new();
                this.dry = true;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "readahead_tests.rs"]
mod tests;
