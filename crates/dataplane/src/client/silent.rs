//! A tunnel the gateway ends normally before a byte of it came back (the
//! destination closed without answering: an empty reply) is an empty
//! stream, not a broken one. Shadowsocks reads the node's salt first, and
//! an end before it is "unexpected end of file" to its reader, which made
//! the client reset the local connection where a stock client closes it.
//! [`Heard`] notes, beneath Shadowsocks, whether anything came from the
//! gateway; [`SilentEnd`], above it, reads that one error as the end of
//! the stream when nothing did. A stream that ends part way through (after
//! the salt) is still an error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The tunnel beneath Shadowsocks, noting whether it read a byte.
pub(crate) struct Heard<S> {
    inner: S,
    heard: Arc<AtomicBool>,
}

/// The Shadowsocks stream above it, whose end before a byte is an end.
pub(crate) struct SilentEnd<S> {
    inner: S,
    heard: Arc<AtomicBool>,
}

/// Wraps `tunnel` (beneath Shadowsocks); `wrap` builds what goes on top
/// of it, which [`SilentEnd`] wraps in turn.
pub(crate) fn around<T, S>(tunnel: T, wrap: impl FnOnce(Heard<T>) -> S) -> SilentEnd<S> {
    let heard = Arc::new(AtomicBool::new(false));
    let inner = wrap(Heard {
        inner: tunnel,
        heard: heard.clone(),
    });
    SilentEnd { inner, heard }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SilentEnd<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof
                    && !self.heard.load(Ordering::Relaxed) =>
            {
                Poll::Ready(Ok(()))
            }
            read => Poll::Ready(read),
        }
    }
}

/// Writes pass through both.
macro_rules! write_through {
    ($t:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $t<S> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
write_through!(Heard);
write_through!(SilentEnd);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader that gives `bytes`, then fails as Shadowsocks does when
    /// its stream ends too soon.
    struct Then {
        bytes: Vec<u8>,
    }

    impl AsyncRead for Then {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.bytes.is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            let n = self.bytes.len().min(buf.remaining());
            buf.put_slice(&self.bytes[..n]);
            self.bytes.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    /// Reads through the heard tunnel and fails at its end, as a
    /// Shadowsocks reader does (it stands for one here).
    struct Reader<S>(S);

    impl<S: AsyncRead + Unpin> AsyncRead for Reader<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl<S: Unpin> AsyncWrite for Reader<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// An empty tunnel, ending at once.
    struct Empty;

    impl AsyncRead for Empty {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_end_before_a_byte_is_an_empty_stream() {
        let mut s = around(Empty, Reader);
        let mut got = Vec::new();
        assert_eq!(s.read_to_end(&mut got).await.expect("an end"), 0);
        s.write_all(b"request").await.expect("writes pass");
    }

    #[tokio::test]
    async fn an_end_after_some_bytes_is_still_an_error() {
        let mut s = around(
            Then {
                bytes: b"salt".to_vec(),
            },
            Reader,
        );
        let mut got = Vec::new();
        let e = s.read_to_end(&mut got).await.expect_err("cut short");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"salt");
    }
}
