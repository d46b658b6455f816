//! Writes into a Shadowsocks stream offered the way it needs them.
//!
//! The `shadowsocks` crate's stream encrypts what a write offers into one
//! chunk and then writes the chunk out; when the socket is not ready it
//! returns `Pending` with the chunk kept, and the next write sends that
//! chunk and reports the length of *its own* offer as written
//! (shadowsocks-rust issue 2175). tokio's copy does offer more on the
//! retry: while its writer is pending it reads more into the same buffer,
//! so the retry's slice is longer than the one encrypted, and the bytes in
//! between were counted as sent and never were. A download through a node
//! whose client reads slowly lost whole chunks that way, and so could our
//! client's uploads. [`ShadowWrites`] offers the stream, after a
//! `Pending`, exactly the bytes it offered first.
//!
//! It also caps a stream's first write, for our client: that write carries
//! the target address too and must fit one AEAD chunk.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A Shadowsocks stream whose writes, when retried after `Pending`, offer
/// exactly what was offered first; reads pass straight through.
#[derive(Debug)]
pub struct ShadowWrites<S> {
    inner: S,
    /// The most the next fresh write offers.
    cap: usize,
    /// The length of a write that returned `Pending`, to offer again.
    held: Option<usize>,
}

impl<S> ShadowWrites<S> {
    /// Wraps `inner`, its writes offered whole.
    pub fn new(inner: S) -> Self {
        ShadowWrites {
            inner,
            cap: usize::MAX,
            held: None,
        }
    }

    /// Wraps `inner`, its first write offered at most `first` bytes.
    pub fn first_capped(inner: S, first: usize) -> Self {
        ShadowWrites {
            inner,
            cap: first.max(1),
            held: None,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ShadowWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ShadowWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = match this.held {
            Some(n) if n > buf.len() => {
                // What was encrypted cannot be taken back: a caller that
                // offers less than it did would have it sent as if it were
                // this. Refused rather than corrupted.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a Shadowsocks write retried with fewer bytes than it first offered",
                )));
            }
            Some(n) => n,
            None => buf.len().min(this.cap),
        };
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..n]) {
            Poll::Pending => {
                this.held = Some(n);
                Poll::Pending
            }
            done => {
                this.held = None;
                if matches!(done, Poll::Ready(Ok(_))) {
                    this.cap = usize::MAX;
                }
                done
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "sswrites_tests.rs"]
mod tests;
