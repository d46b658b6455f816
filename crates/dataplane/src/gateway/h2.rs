//! HTTP/2 connections (ALPN `h2`): the same routes as HTTP/1.1, with
//! tunnels opened as WebSockets over extended CONNECT (RFC 8441), each a
//! stream of one TLS connection.
//!
//! Flow-control windows are fixed and sized for a long fat link rather than
//! adaptive: 4 MiB per stream (what a client may upload ahead of the node;
//! the window also covers what waits in the client's socket buffer, so one
//! upload moves at most 4 MiB per round trip). The connection's window is
//! every stream's at once ([`MAX_STREAMS`] of them, 1 GiB): data that
//! arrived for a stream whose node has stopped reading (its target reads
//! nothing) holds the connection's window until it is read, so with a
//! window of fewer streams', as many stalled uploads would stop every other
//! stream of their connection, the first bytes of new tunnels included.
//! This way no stream can take another's credit, and a bulk stream beside a
//! small one never holds the connection's. What the gateway holds for
//! uploads is bounded per stream instead, as a WebSocket tunnel over
//! HTTP/1.1 is by its socket's receive buffer: 4 MiB a tunnel, so a device
//! at its tunnel cap (`max_tunnels_per_device`, 512 by default) holds at
//! most 2 GiB however many connections it spreads its tunnels over (a
//! window per connection never bounded a device, whose connections are not
//! counted). A stream waiting for its token's check holds at most its
//! window for as long as the check takes (at most the control plane's
//! timeout); the checks of credentials never accepted are bounded per
//! source and in all, and the streams waiting on each (`pending`), and one
//! that is refused (a bad token, a cap) ends, and what
//! it had sent is freed with it. Downloads are paced by the client's own,
//! larger windows. Nothing is allocated for a window until data arrives, so
//! idle streams cost only their stream state and tunnel. The client must
//! send its connection preface within the handshake deadline; afterwards
//! pings every 20 s (answered within 20 s) keep the connection or end it,
//! and a connection that carries no request and no tunnel for the idle
//! limit (60 s by default) is told to go away, so a connection that opens
//! nothing cannot hold its place in the connection budget for ever (an
//! HTTP/1.1 connection is closed at the same limit, see [`idle`], and an
//! idle one at the header deadline). On shutdown the
//! connection is told to go away (GOAWAY) and its open streams get the
//! tunnels' drain before it is dropped.
//!
//! The server's SETTINGS leave with the TLS handshake (0.5-RTT data, TLS
//! 1.3): a client may open an extended CONNECT stream only once it has seen
//! SETTINGS_ENABLE_CONNECT_PROTOCOL, and sent after the handshake they
//! would cost a new client one more round trip. The frame is the one this
//! builder writes first on every connection ([`server_settings`], captured
//! once at start on an in-memory pipe); it is handed to TLS before the
//! handshake of a client that offers `h2`, and [`SentEarly`] takes the
//! HTTP/2 server's own copy out of its output, so the client sees one
//! SETTINGS frame, as usual. The frame is the same for every client and
//! says nothing about the connection, so sending it before the client's
//! `Finished` reveals nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Receive window of each connection: every stream's at once, so no
/// stream waits for another's (see the module's note).
pub(crate) const CONNECTION_WINDOW: u32 = MAX_STREAMS * STREAM_WINDOW;

/// Largest frame a client may send: fewer frames (and headers) per byte.
const MAX_FRAME: u32 = 64 * 1024;

/// Most streams (tunnels and requests) open at once on one connection:
/// the per-device tunnel caps count each stream on top of this.
pub(crate) const MAX_STREAMS: u32 = 256;

/// Interval of the gateway's pings, and how long an answer may take.
const PING: Duration = Duration::from_secs(20);

/// Requests that open no tunnel (anything but an extended CONNECT answered
/// 2xx) one connection may make at once.
const NO_TUNNEL_BURST: f64 = 1_000.0;

/// And then a second, on average.
const NO_TUNNEL_PER_SEC: f64 = 100.0;

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

/// The SETTINGS frame a connection served with `builder` begins with,
/// read from a connection over an in-memory pipe; `None` if it could not be
/// had (then no connection gets it early).
pub(super) async fn server_settings(builder: &http2::Builder<TokioExecutor>) -> Option<Arc<[u8]>> {
    use tokio::io::AsyncReadExt;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, std::convert::Infallible>(hyper::Response::new(axum::body::Body::empty()))
    });
    let served = builder.serve_connection(TokioIo::new(ours), service);
    let first = async {
        let mut frame = vec![0u8; 9];
        theirs.read_exact(&mut frame).await.ok()?;
        // Type 0x4 (SETTINGS) on stream 0, not an acknowledgement.
        if frame[3] != 0x4 || frame[4] != 0 || frame[5..9] != [0, 0, 0, 0] {
            return None;
        }
        let len = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
        frame.resize(9 + len, 0);
        theirs.read_exact(&mut frame[9..]).await.ok()?;
        Some(Arc::<[u8]>::from(frame))
    };
    tokio::select! {
        frame = first => frame,
        _ = served => None,
        () = tokio::time::sleep(Duration::from_secs(1)) => None,
    }
}

/// A connection whose first bytes (`early`, the server's SETTINGS) already
/// went out with the TLS handshake: the same bytes, when the HTTP/2 server
/// writes them, are taken out of its output. Any other first bytes end the
/// connection (they cannot be, see [`server_settings`]).
pub(super) struct SentEarly<T> {
    inner: T,
    early: Arc<[u8]>,
    /// How much of `early` the server has written (and was taken out).
    at: usize,
}

impl<T> SentEarly<T> {
    /// `inner`, on which `early` already went out (empty: nothing did).
    pub(super) fn new(inner: T, early: Arc<[u8]>) -> Self {
        SentEarly {
            inner,
            early,
            at: 0,
        }
    }

    /// Takes up to the rest of `early` from the start of `buf`; `None` once
    /// all of it was taken.
    fn take(&mut self, buf: &[u8]) -> Option<std::io::Result<usize>> {
        let rest = self.early.get(self.at..).filter(|r| !r.is_empty())?;
        let n = rest.len().min(buf.len());
        if buf[..n] != rest[..n] {
            return Some(Err(std::io::Error::other(
                "the HTTP/2 server's first bytes differ from those sent with the handshake",
            )));
        }
        self.at += n;
        Some(Ok(n))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SentEarly<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SentEarly<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(taken) = self.take(buf) {
            return Poll::Ready(taken);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(taken) = self.take(first)
        {
            return Poll::Ready(taken);
        }
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

/// How often a connection's activity is looked at for the idle limit.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Completes once a connection has carried no tunnel for `limit` (or at
/// once when it carries none and is to go): `tunnels` tells the tunnels it
/// carries and whether it is to go (see [`serve`]). Requests that open no
/// tunnel do not count: a connection kept busy with 404s is idle.
pub(super) async fn idle(tunnels: impl Fn() -> (u64, bool), limit: Duration) {
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(IDLE_CHECK).await;
        match tunnels() {
            (0, true) => return,
            (0, false) if since.elapsed() >= limit => return,
            (0, false) => {}
            _ => since = tokio::time::Instant::now(),
        }
    }
}

/// The deadlines of one connection.
pub(super) struct Timing {
    /// For the client's connection preface.
    pub deadline: Duration,
    /// On shutdown, for the open streams to end.
    pub drain: Duration,
    /// Without an open tunnel for this long, the connection is told to go
    /// away.
    pub idle: Duration,
}

/// Serves `app` over HTTP/2 on `tls` until the client leaves, misses the
/// preface deadline, stays idle past `timing.idle`, or `stop` is
/// cancelled; every request carries `conn` (the connection's details) in
/// its extensions. `tunnels` tells the tunnels the connection carries and
/// whether it is to go once it carries none (its source had no place left
/// for it among its connections without a tunnel): while it carries none
/// the connection is idle, whatever requests it makes (one every few
/// seconds, answered 404, kept a connection that carried nothing from ever
/// being idle, and its place in the budget taken).
pub(super) async fn serve<T, C>(
    builder: &http2::Builder<TokioExecutor>,
    tls: T,
    app: Router,
    conn: C,
    tunnels: impl Fn() -> (u64, bool),
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
        read: 0,
        budget: super::h2_frames::Budget::new(std::time::Instant::now()),
    };
    // Requests that open no tunnel (unknown paths, refused tunnels, access
    // key documents) are bounded per connection: tens of thousands a
    // second of them on one connection (404s, or a device's own `/c/`
    // document, answered 200) slowed every tunnel of the gateway, and
    // each costs a request's work. Past the budget the connection is
    // ended.
    let no_tunnel = Arc::new(std::sync::Mutex::new(super::h2_frames::Bucket::new(
        NO_TUNNEL_BURST,
        NO_TUNNEL_PER_SEC,
        std::time::Instant::now(),
    )));
    let cut = CancellationToken::new();
    let cutting = cut.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        let mut app = app.clone();
        let (no_tunnel, cutting) = (no_tunnel.clone(), cutting.clone());
        let connect = req.method() == hyper::Method::CONNECT;
        let charge = move || {
            if !no_tunnel
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(std::time::Instant::now())
            {
                tracing::debug!(
                    "an HTTP/2 connection made too many requests that open no tunnel: ended"
                );
                cutting.cancel();
            }
        };
        // Anything but a CONNECT is charged as it comes (its answer may
        // take a while); a CONNECT once it is known to open no tunnel.
        if !connect {
            charge();
        }
        async move {
            let res = app.call(req).await;
            if connect && res.as_ref().is_ok_and(|r| !r.status().is_success()) {
                charge();
            }
            res
        }
    });
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let silent = async {
        tokio::time::sleep(timing.deadline).await;
        if seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let idle = idle(tunnels, timing.idle);
    tokio::select! {
        _ = served.as_mut() => {}
        () = silent => {}
        () = cut.cancelled() => {}
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

/// The client connection preface (RFC 9113, 3.4) is this long.
const PREFACE_LEN: usize = 24;

/// A stream that notes when the whole client preface has arrived (not its
/// first byte: a preface sent a byte every few seconds held the
/// connection past the deadline, for as long as the client liked), and
/// ends the connection when the client's frames that carry nothing are
/// over their budget (see [`super::h2_frames`]).
struct Seen<T> {
    inner: T,
    seen: Arc<AtomicBool>,
    read: usize,
    budget: super::h2_frames::Budget,
}

impl<T: AsyncRead + Unpin> AsyncRead for Seen<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let mut new = &buf.filled()[before..];
        if self.read < PREFACE_LEN {
            let preface = (PREFACE_LEN - self.read).min(new.len());
            self.read += preface;
            new = &new[preface..];
            if self.read >= PREFACE_LEN {
                self.seen.store(true, Ordering::Relaxed);
            }
        }
        if !new.is_empty() && !self.budget.feed(new, std::time::Instant::now) {
            tracing::debug!("an HTTP/2 connection sent too many frames that carry nothing: ended");
            return Poll::Ready(Err(std::io::Error::other(
                "too many HTTP/2 frames that carry nothing",
            )));
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_settings_are_captured_once_and_taken_out_of_the_output() {
        let frame = server_settings(&builder()).await.expect("settings");
        assert_eq!(frame[3], 0x4, "a SETTINGS frame");
        assert_eq!(
            frame.len(),
            9 + (usize::from(frame[1]) << 8 | usize::from(frame[2]))
        );
        // The same builder, the same frame.
        assert_eq!(server_settings(&builder()).await.expect("again"), frame);
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SentEarly::new(a, frame.clone());
        // Written in two pieces plus what follows: only what follows passes.
        w.write_all(&frame[..4]).await.expect("first piece");
        let mut rest = frame[4..].to_vec();
        rest.extend_from_slice(b"next");
        w.write_all(&rest).await.expect("second piece");
        w.flush().await.expect("flush");
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"next");
        // Other first bytes end the connection.
        let (a, _b) = tokio::io::duplex(1024);
        let mut w = SentEarly::new(a, frame);
        assert!(w.write_all(b"GET / HTTP/1.1\r\n").await.is_err());
        // Nothing sent early: everything passes.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SentEarly::new(a, Arc::from(Vec::new()));
        w.write_all(b"abc").await.expect("write");
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"abc");
    }
}
