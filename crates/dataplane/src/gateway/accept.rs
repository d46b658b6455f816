//! The accept loop: a place in the connection budget first (a connection
//! beyond it is closed at once, before TLS and without a task of its own),
//! then TLS and HTTP/1.1 with deadlines for the handshake and the headers
//! (slow clients can't hold slots), and connections told to finish their
//! request and close on shutdown. Each request carries its connection's
//! [`Conn`]: the peer's address and the budget place, which a tunnel keeps.
//!
//! A client that negotiates `h2` by ALPN gets HTTP/2 instead (see `h2`):
//! the same routes, tunnels as extended-CONNECT streams; the connection
//! holds one place in the budget however many streams it carries. Its
//! SETTINGS leave with the TLS handshake (see `h2`): the client hello is
//! read first, and a client offering `h2` has them queued before the
//! handshake goes on.
//!
//! An HTTP/2 connection, once its handshake is done, moves to a lane
//! (`crate::lane`, the least loaded): its TLS, its HTTP/2 server, the
//! tunnels it carries and their node sockets share one thread, so handing
//! bytes between them wakes no other thread. HTTP/1.1 connections (one
//! tunnel each) stay on the shared runtime, where an idle worker takes
//! over a busy one's handshakes.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::strangers::{Stranger, Strangers};
use crate::lane::{Lane, MovableTcp, Way};
use crate::readahead::ReadAhead;

/// A client connection after its handshake.
type Tls = tokio_rustls::server::TlsStream<ReadAhead<MovableTcp>>;

/// The most an HTTP/1.1 request's head may take (hyper's default is about
/// 400 KB, held per connection until the head is whole); HTTP/2 caps a
/// head's headers at 16 KiB (`h2`). Past it: 431.
const MAX_HEAD: usize = httvps_wire::head::MAX_HEAD_BYTES;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the accept loop bounds.
pub(crate) struct Limits {
    /// Deadline for the TLS handshake and for each request's headers.
    pub deadline: Duration,
    /// Places for open connections, upgraded ones included.
    pub budget: Arc<Semaphore>,
    /// Connections carrying no tunnel yet, bounded per source.
    pub strangers: Arc<Strangers>,
    /// Counts connections closed because no place was left.
    pub shed: Counter,
    /// Counts connections taken (TLS not yet done).
    pub accepted: Counter,
    /// On shutdown, how long an HTTP/2 connection's streams (tunnels) may
    /// take to end before the connection is dropped.
    pub drain: Duration,
    /// A connection (HTTP/2 or HTTP/1.1) without a tunnel for this long
    /// is told to go away (GOAWAY; on HTTP/1.1 closed after the request in
    /// flight), whatever other requests it makes.
    pub h2_idle: Duration,
}

/// The connection a request came on.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The peer's address, as the socket says (the gateway trusts no
    /// proxy header: it is the edge).
    pub peer: IpAddr,
    /// The connection's place in the budget: a tunnel keeps it as long as
    /// it keeps the socket (held, never read: the place goes back when the
    /// last holder drops it).
    #[expect(dead_code, reason = "held for its drop")]
    pub permit: Arc<OwnedSemaphorePermit>,
    /// Its place among its source's connections that carry no tunnel, and
    /// the tunnels it carries.
    pub stranger: Arc<Stranger>,
}

/// What every connection is served with.
struct Serving {
    tls_config: Arc<tokio_rustls::rustls::ServerConfig>,
    /// The HTTP/2 SETTINGS sent with the handshake, when captured.
    settings: Option<Arc<[u8]>>,
    app: Router,
    http1: http1::Builder,
    h2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    deadline: Duration,
    drain: Duration,
    h2_idle: Duration,
    stop: CancellationToken,
    /// Where HTTP/2 connections go once their handshake is done.
    lanes: Vec<Way>,
    /// Tracks the connections, on whichever runtime they run.
    connections: TaskTracker,
}

/// Accepts on `listener` until `shutdown`, serving `app`. Connections run
/// on `connections`: HTTP/1.1 ones on the caller's runtime, HTTP/2 ones,
/// once their handshake is done, each on the least loaded of `lanes` (on
/// the caller's runtime too when there are none); when `stop` is cancelled
/// they finish the request in hand and close.
#[allow(
    clippy::too_many_arguments,
    reason = "the accept loop's inputs, each used once"
)]
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    limits: Limits,
    lanes: &[Lane],
    connections: &TaskTracker,
    stop: &CancellationToken,
    shutdown: impl Future<Output = ()>,
) {
    let deadline = limits.deadline;
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(deadline)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let h2 = super::h2::builder();
    let settings = super::h2::server_settings(&h2).await;
    if settings.is_none() {
        tracing::warn!("HTTP/2 settings not captured: they will follow the TLS handshake");
    }
    let serving = Arc::new(Serving {
        tls_config: acceptor.config().clone(),
        settings,
        app,
        http1,
        h2,
        deadline,
        drain: limits.drain,
        h2_idle: limits.h2_idle,
        stop: stop.clone(),
        lanes: lanes.iter().map(Lane::way).collect(),
        connections: connections.clone(),
    });
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Over budget, or its source holds as many connections without a
        // tunnel as it may: closed here, before any handshake or task.
        let Some(stranger) = limits.strangers.enter(peer.ip()) else {
            limits.shed.inc();
            drop(tcp);
            continue;
        };
        let Ok(permit) = limits.budget.clone().try_acquire_owned() else {
            limits.shed.inc();
            drop(tcp);
            continue;
        };
        limits.accepted.inc();
        let conn = Conn {
            peer: peer.ip(),
            permit: Arc::new(permit),
            stranger,
        };
        connections.spawn(connection(serving.clone(), tcp, conn));
    }
}

/// Serves one accepted connection: TLS, then HTTP/1.1, or HTTP/2 on a
/// lane.
async fn connection(serving: Arc<Serving>, tcp: TcpStream, conn: Conn) {
    let (deadline, stop) = (serving.deadline, serving.stop.clone());
    let _ = tcp.set_nodelay(true);
    let tcp = ReadAhead::new(MovableTcp::new(tcp));
    let handshake = async {
        let start = tokio_rustls::LazyConfigAcceptor::new(
            tokio_rustls::rustls::server::Acceptor::default(),
            tcp,
        )
        .await
        .ok()?;
        // The server's order picks `h2` whenever the client offers
        // it: queue the SETTINGS before the handshake goes on.
        let offers_h2 = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == b"h2"));
        let early = serving
            .settings
            .clone()
            .filter(|_| offers_h2)
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let queued = early.clone();
        let tls = start
            .into_stream_with(serving.tls_config.clone(), move |conn| {
                use std::io::Write as _;
                if !queued.is_empty() {
                    let _ = conn.writer().write_all(&queued);
                }
            })
            .await
            .ok()?;
        Some((tls, early))
    };
    let (tls, early) = tokio::select! {
        () = stop.cancelled() => return,
        tls = tokio::time::timeout(deadline, handshake) => match tls {
            Ok(Some(tls)) => tls,
            _ => return,
        },
    };
    // An ACME validation (TLS-ALPN-01) ends with its handshake.
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn == Some(crate::certs::ACME_TLS_ALPN) {
        return;
    }
    let is_h2 = alpn == Some(b"h2".as_slice());
    if !is_h2 && !early.is_empty() {
        // HTTP/2 SETTINGS went to a connection that is not HTTP/2
        // (the server's order makes this impossible): end it.
        return;
    }
    if is_h2 {
        let Some(lane) = serving.lanes.iter().min_by_key(|l| l.load()).cloned() else {
            return http2(serving, tls, early, conn).await;
        };
        // The connection and every stream it carries move to the lane,
        // the socket to the lane's driver.
        let mut tls = tls;
        if tls.get_mut().0.get_mut().detach().is_err() {
            return;
        }
        let held = lane.try_hold(usize::MAX);
        let connections = serving.connections.clone();
        connections.spawn_on(
            async move {
                let _held = held;
                if tls.get_mut().0.get_mut().attach().is_ok() {
                    http2(serving, tls, early, conn).await;
                }
            },
            lane.handle(),
        );
        return;
    }
    let app = serving.app.clone();
    let stranger = conn.stranger.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // hyper stops reading at MAX_HEAD only between reads: a head that
        // arrived whole in one read past it was served. Counted here, the
        // answer is 431 however the head was split.
        let oversized = httvps_wire::head::head_len(&req) > MAX_HEAD;
        req.extensions_mut().insert(conn.clone());
        // A router is always ready: no poll_ready needed.
        let mut app = app.clone();
        let answer = (!oversized).then(|| app.call(req));
        async move {
            match answer {
                Some(answer) => answer.await,
                None => Ok(axum::response::IntoResponse::into_response(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                )),
            }
        }
    });
    let conn = serving
        .http1
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    // As on HTTP/2: requests that open no tunnel (one every few seconds,
    // each answered 404) do not keep a connection's place for ever. Once
    // a request is upgraded to a tunnel, the connection is the tunnel's
    // and this ends.
    let idle = super::h2::idle(
        move || (stranger.tunnels(), stranger.evicted()),
        serving.h2_idle,
    );
    tokio::select! {
        _ = conn.as_mut() => {}
        () = idle => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(deadline, conn).await;
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(deadline, conn).await;
        }
    }
}

/// Serves an HTTP/2 connection whose handshake sent `early` (its SETTINGS).
async fn http2(serving: Arc<Serving>, tls: Tls, early: Arc<[u8]>, conn: Conn) {
    let tls = super::h2::SentEarly::new(tls, early);
    let timing = super::h2::Timing {
        deadline: serving.deadline,
        drain: serving.drain,
        idle: serving.h2_idle,
    };
    let stranger = conn.stranger.clone();
    let tunnels = move || (stranger.tunnels(), stranger.evicted());
    let app = serving.app.clone();
    super::h2::serve(&serving.h2, tls, app, conn, tunnels, timing, &serving.stop).await;
}
