//! HTTP/2 connections (ALPN `h2`): the same routes as HTTP/1.1, with
//! tunnels opened as WebSockets over extended CONNECT (RFC 8441), each a
//! stream of one TLS connection.
//!
//! Flow-control windows are fixed and sized for a long fat link rather
//! than adaptive: 4 MiB per stream lets one stream fill about 640 Mbit/s
//! at 50 ms RTT (210 Mbit/s at 150 ms), and 16 MiB per connection lets
//! four bulk streams run at that rate together while bounding what one
//! connection can make the gateway buffer. Fixed windows also keep the
//! scheduling fair: a bulk stream can never take the whole connection
//! window, so a small stream beside it always has credit. Nothing is
//! allocated for a window until data arrives, so idle streams cost only
//! their stream state and tunnel. The client must send its connection
//! preface within the handshake deadline; afterwards pings every 20 s
//! (answered within 20 s) keep the connection or end it, and a connection
//! that carries no request and no tunnel for the idle limit (60 s by
//! default) is told to go away, so a connection that opens nothing cannot
//! hold its place in the connection budget for ever (an idle HTTP/1.1
//! connection is closed at the header deadline). On shutdown the
//! connection is told to go away (GOAWAY) and its open streams get the
//! tunnels' drain before it is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Receive window of each stream (see the module's note).
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;

/// Receive window of each connection (see the module's note).
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// Largest frame a client may send: fewer frames (and headers) per byte.
const MAX_FRAME: u32 = 64 * 1024;

/// Most streams (tunnels and requests) open at once on one connection:
/// the per-device tunnel caps count each stream on top of this.
pub(crate) const MAX_STREAMS: u32 = 256;

/// Interval of the gateway's pings, and how long an answer may take.
const PING: Duration = Duration::from_secs(20);

/// Largest header block a client may send.
const MAX_HEADERS: u32 = 16 * 1024;

/// The HTTP/2 settings of every connection.
pub(super) fn builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .adaptive_window(false)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(PING)
        .keep_alive_timeout(PING)
        .max_header_list_size(MAX_HEADERS)
        // The h2 library counts the streams it resets itself (a frame on a
        // stream that just ended, as when a tunnel closes while the peer
        // still sends) over the connection's whole life and ends the
        // connection at 1,024: a warm connection carries far more tunnels
        // than that. Concurrent streams stay bounded, and so do remote
        // resets not yet accepted (the rapid-reset guard).
        .max_local_error_reset_streams(None)
        .enable_connect_protocol();
    b
}

/// How often a connection's activity is looked at for the idle limit.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The deadlines of one connection.
pub(super) struct Timing {
    /// For the client's connection preface.
    pub deadline: Duration,
    /// On shutdown, for the open streams to end.
    pub drain: Duration,
    /// Without a request or an open tunnel for this long, the connection
    /// is told to go away.
    pub idle: Duration,
}

/// Serves `app` over HTTP/2 on `tls` until the client leaves, misses the
/// preface deadline, stays idle past `timing.idle`, or `stop` is
/// cancelled; every request carries `conn` (the connection's details) in
/// its extensions. `holders` counts what holds the connection's details
/// (requests in flight and open tunnels keep a copy): while it stays at
/// what it was at the start and no request comes, the connection is idle.
pub(super) async fn serve<T, C>(
    builder: &http2::Builder<TokioExecutor>,
    tls: T,
    app: Router,
    conn: C,
    holders: impl Fn() -> usize,
    timing: Timing,
    stop: &CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    let seen = Arc::new(AtomicBool::new(false));
    let io = Seen {
        inner: tls,
        seen: seen.clone(),
    };
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        counted.fetch_add(1, Ordering::Relaxed);
        req.extensions_mut().insert(conn.clone());
        let mut app = app.clone();
        app.call(req)
    });
    let at_rest = holders();
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let silent = async {
        tokio::time::sleep(timing.deadline).await;
        if seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let idle = async {
        let (mut last, mut since) = (0, tokio::time::Instant::now());
        loop {
            tokio::time::sleep(IDLE_CHECK).await;
            let n = requests.load(Ordering::Relaxed);
            if n != last || holders() > at_rest {
                (last, since) = (n, tokio::time::Instant::now());
            } else if since.elapsed() >= timing.idle {
                return;
            }
        }
    };
    tokio::select! {
        _ = served.as_mut() => {}
        () = silent => {}
        () = idle => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(timing.drain, served).await;
        }
        () = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(timing.drain, served).await;
        }
    }
}

/// A stream that notes when its first bytes arrive.
struct Seen<T> {
    inner: T,
    seen: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Seen<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.seen.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Seen<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
