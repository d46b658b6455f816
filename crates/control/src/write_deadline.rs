//! A connection whose writes must make progress: a client that stops
//! reading its responses (a small receive window, never drained) would
//! otherwise hold the connection, its place in the budget and the unsent
//! response in memory for as long as it likes. A write (or flush, or
//! shutdown) that cannot go on for the whole `limit` fails with
//! `TimedOut`, and the connection closes. Reads are left to the header
//! and body deadlines.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner`, its writes held to a deadline of `limit` without progress.
pub struct WriteDeadline<I> {
    inner: I,
    limit: Duration,
    /// Armed while a write waits; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// What the connection holds for as long as it lives (see
    /// [`WriteDeadline::holding`]).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<I> WriteDeadline<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
            held: None,
        }
    }

    /// Holds `place` (a place in the connection budget, say) until the
    /// connection is dropped: after an HTTP upgrade the connection lives
    /// on in the upgraded stream (a WebSocket), with what it holds.
    #[must_use]
    pub fn holding(mut self, place: impl std::any::Any + Send + Sync) -> Self {
        self.held = Some(Box::new(place));
        self
    }

    /// After a write-side poll: progress disarms the deadline; waiting arms
    /// it (once) and fails the write when it has passed.
    fn judge<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no response bytes within the write deadline",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.judge(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.judge(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.judge(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.judge(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that reads nothing: the write stalls once the pipe is full,
    /// then fails at the deadline; one that reads keeps it going.
    #[tokio::test]
    async fn a_write_no_one_takes_fails_at_the_deadline_and_progress_resets_it() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_secs(1));
        let chunk = [7u8; 512];
        w.write_all(&chunk).await.expect("fits");
        w.write_all(&chunk).await.expect("fits");
        let started = tokio::time::Instant::now();
        let err = w.write_all(&chunk).await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(1));
        drop(theirs);

        let (ours, mut theirs2) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_secs(1));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            // Takes 512 bytes every 100 ms: slow, but never the deadline
            // without.
            while total < 8 * 512 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += tokio::io::AsyncReadExt::read(&mut theirs2, &mut buf)
                    .await
                    .expect("read");
            }
            total
        });
        for _ in 0..8 {
            w.write_all(&chunk)
                .await
                .expect("slow progress is progress");
        }
        w.flush().await.expect("flush");
        drop(w);
        assert_eq!(reader.await.expect("reader"), 8 * 512);
    }
}
