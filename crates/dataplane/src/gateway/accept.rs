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
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the accept loop bounds.
pub(crate) struct Limits {
    /// Deadline for the TLS handshake and for each request's headers.
    pub deadline: Duration,
    /// Places for open connections, upgraded ones included.
    pub budget: Arc<Semaphore>,
    /// Counts connections closed because no place was left.
    pub shed: Counter,
    /// Counts connections taken (TLS not yet done).
    pub accepted: Counter,
    /// On shutdown, how long an HTTP/2 connection's streams (tunnels) may
    /// take to end before the connection is dropped.
    pub drain: Duration,
    /// An HTTP/2 connection without a request or a tunnel for this long
    /// is told to go away.
    pub h2_idle: Duration,
}

/// The connection a request came on.
#[derive(Clone)]
pub(crate) struct Conn {
    /// The peer's address, as the socket says (the gateway trusts no
    /// proxy header: it is the edge).
    pub peer: IpAddr,
    /// The connection's place in the budget: a tunnel keeps it as long as
    /// it keeps the socket.
    pub permit: Arc<OwnedSemaphorePermit>,
}

/// Accepts on `listener` until `shutdown`, serving `app`. Connections run
/// on `connections`; when `stop` is cancelled they finish the request in
/// hand and close.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    limits: Limits,
    connections: &TaskTracker,
    stop: &CancellationToken,
    shutdown: impl Future<Output = ()>,
) {
    let deadline = limits.deadline;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(deadline)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let h2 = Arc::new(super::h2::builder());
    let settings = super::h2::server_settings(&h2).await;
    if settings.is_none() {
        tracing::warn!("HTTP/2 settings not captured: they will follow the TLS handshake");
    }
    let tls_config = acceptor.config().clone();
    let drain = limits.drain;
    let h2_idle = limits.h2_idle;
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
        // Over budget: closed here, before any handshake or task.
        let Ok(permit) = limits.budget.clone().try_acquire_owned() else {
            limits.shed.inc();
            drop(tcp);
            continue;
        };
        limits.accepted.inc();
        let conn = Conn {
            peer: peer.ip(),
            permit: Arc::new(permit),
        };
        let (tls_config, settings, app, builder, h2, stop) = (
            tls_config.clone(),
            settings.clone(),
            app.clone(),
            builder.clone(),
            h2.clone(),
            stop.clone(),
        );
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tcp = crate::readahead::ReadAhead::new(tcp);
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
                let early = settings
                    .filter(|_| offers_h2)
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                let queued = early.clone();
                let tls = start
                    .into_stream_with(tls_config, move |conn| {
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
                let tls = super::h2::SentEarly::new(tls, early);
                let timing = super::h2::Timing {
                    deadline,
                    drain,
                    idle: h2_idle,
                };
                let permit = Arc::downgrade(&conn.permit);
                let holders = move || permit.strong_count();
                super::h2::serve(&h2, tls, app, conn, holders, timing, &stop).await;
                return;
            }
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(conn.clone());
                // A router is always ready: no poll_ready needed.
                let mut app = app.clone();
                app.call(req)
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(deadline, conn).await;
                }
            }
        });
    }
}
