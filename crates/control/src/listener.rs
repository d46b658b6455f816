//! The control plane's accept loop, bounded so that no client can hold it:
//! a place in its source's share and in the connection budget first
//! (beyond either a connection is closed at once, before anything is read
//! and without a task of its own; the places stay with the connection's
//! stream, a WebSocket upgraded from it included), then
//! HTTP/1.1 with a deadline for each request's headers (hyper starts it when
//! it waits for a request, so it bounds idle keep-alive connections too) and
//! one for its body. With TLS, the handshake happens inside the
//! connection's place in the budget, held to the header deadline.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use bytes::Bytes;
use http_body::Frame;
use httvps_wire::source::{SourceCounts, source_of};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tower_service::Service as _;

pub use crate::config::{HttpArgs, HttpLimits};
use crate::https::TlsFront;
use crate::write_deadline::WriteDeadline;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Raises the soft open-file limit to the hard one, so the connection
/// budget, not the descriptor table, is what sheds load. Returns the limit
/// in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let before = lim.current;
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            return before;
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    tracing::info!(nofile.before = before, nofile.now = now, "open-file limit");
    now
}

/// Accepts on `listener` until `stop` turns true, serving `app` within
/// `limits`; then tells open connections to finish their request and close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsFront>,
    mut stop: watch::Receiver<bool>,
    shed: prometheus_client::metrics::counter::Counter,
) {
    let budget = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Sources::new(limits.max_connections_per_source);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(crate::refusals::HEAD_READ_BYTES)
        .max_headers(crate::refusals::HEADER_FIELDS_READ)
        // A client that shuts its side once its request is sent (`nc -N`,
        // socat, one-shot HTTP/1.0 tools) still gets the answer: the
        // request runs either way, and dropping its answer would lose
        // what it returns once (a device's token).
        .half_close(true)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Over budget, or over its source's share: closed here, before
        // anything is read.
        let Some(place) = sources.enter(peer.ip()) else {
            shed.inc();
            drop(tcp);
            continue;
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            shed.inc();
            drop(tcp);
            continue;
        };
        let conn = Conn {
            app: app.clone(),
            builder: builder.clone(),
            stop: stop.clone(),
            body_timeout: limits.body_timeout,
            ws_idle: limits.ws_idle,
            peer,
        };
        let (tls, handshake_timeout) = (tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            // The connection's places go with its stream: an upgraded one
            // (a WebSocket) outlives this task and keeps them.
            let places = (permit, place);
            let _ = tcp.set_nodelay(true);
            // Responses must be taken: a write without progress for the
            // body deadline closes the connection.
            let write_limit = conn.body_timeout;
            match tls {
                None => {
                    let io = WriteDeadline::new(tcp, write_limit).holding(places);
                    conn.serve(io).await;
                }
                // The handshake is held to the header deadline, inside the
                // connection's place in the budget.
                Some(front) => {
                    match tokio::time::timeout(handshake_timeout, front.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let io = WriteDeadline::new(stream, write_limit).holding(places);
                            conn.serve(io).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Open connections per source (see [`source_of`]), each at most `bound`
/// (none when 0).
struct Sources(Option<Arc<SourceCounts>>);

/// A connection's place in its source's share; given back when dropped.
struct SourcePlace {
    counts: Arc<SourceCounts>,
    source: IpAddr,
}

impl Sources {
    fn new(bound: usize) -> Self {
        Sources((bound > 0).then(|| Arc::new(SourceCounts::new(bound))))
    }

    /// A place for a connection from `ip`, unless its source holds its
    /// share already (`None` for every connection when there is no bound:
    /// nothing to count).
    fn enter(&self, ip: IpAddr) -> Option<Option<SourcePlace>> {
        let Some(counts) = &self.0 else {
            return Some(None);
        };
        let source = source_of(ip);
        counts.take(source).then(|| {
            Some(SourcePlace {
                counts: counts.clone(),
                source,
            })
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        self.counts.give(self.source);
    }
}

/// What one accepted connection is served with.
struct Conn {
    app: Router,
    builder: Arc<http1::Builder>,
    stop: watch::Receiver<bool>,
    body_timeout: Duration,
    ws_idle: Duration,
    peer: SocketAddr,
}

impl Conn {
    /// Serves HTTP/1.1 on `io` until the client leaves or `stop` turns true
    /// (then the request in flight gets 10 s to finish).
    async fn serve<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (app, body_timeout, peer) = (self.app, self.body_timeout, self.peer);
        let ws_idle = crate::graphql::ws::IdleDeadline(self.ws_idle);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(|b| Body::new(DeadlineBody::new(b, body_timeout)));
            // Where the request comes from, for the throttles.
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(ws_idle);
            let mut app = app.clone();
            app.call(req)
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = async { let _ = self.stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            }
        }
    }
}

/// A request body that fails when it is not complete by its deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
