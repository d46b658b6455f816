//! Writes gathered into blocks until the writer flushes.
//!
//! A Shadowsocks stream writes one chunk (at most 16 KiB of payload) per
//! write, and so does a copy out of one (it reads a chunk at a time): at
//! the node, both ways, and at our client towards the local socket, each
//! became a `write` system call and a wake-up of the reader across the
//! socket. [`WriteBlocks`] queues
//! small writes and hands them to the socket together once [`BLOCK`]
//! bytes wait or the writer flushes; a copy loop flushes whenever its
//! source has nothing more to give (tokio's copy does), so nothing waits
//! for more data. A write of a whole block or more with nothing queued
//! goes straight through. The queue's buffer is given back at each flush,
//! so an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most queued before the queue is written out.
pub const BLOCK: usize = 64 * 1024;

/// A byte stream whose writes are gathered into blocks of up to [`BLOCK`]
/// bytes until a flush; reads pass straight through.
#[derive(Debug)]
pub struct WriteBlocks<S> {
    inner: S,
    /// Written by the caller, not yet by the stream.
    queued: BytesMut,
}

impl<S> WriteBlocks<S> {
    /// Wraps `inner` with nothing queued.
    pub fn new(inner: S) -> Self {
        WriteBlocks {
            inner,
            queued: BytesMut::new(),
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes written to this and not yet to the stream.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// The bytes held for queueing, in use or not.
    pub fn held(&self) -> usize {
        self.queued.capacity()
    }
}

impl<S: AsyncWrite + Unpin> WriteBlocks<S> {
    /// Writes out the whole queue (its buffer kept for the next block).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queued.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.queued))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteBlocks<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteBlocks<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued.len() >= BLOCK {
            ready!(this.poll_drain(cx))?;
        }
        if this.queued.is_empty() && buf.len() >= BLOCK {
            // A whole block already: no copy.
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.queued.is_empty() {
            // A lone small write (a handshake, a request) takes what it
            // needs; the drained block is reused if kept.
            this.queued.clear();
        } else if this.queued.capacity() < BLOCK {
            // A second write before a flush: a bulk transfer, one block.
            this.queued.reserve(BLOCK - this.queued.len());
        }
        let n = buf.len().min(BLOCK - this.queued.len());
        this.queued.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // The writer has nothing more for now: hold no buffer meanwhile.
        this.queued = BytesMut::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.queued = BytesMut::new();
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "writeblocks_tests.rs"]
mod tests;
