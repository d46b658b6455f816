//! The accept loop: TLS then HTTP/1.1 on each connection, with deadlines
//! for the handshake and the headers (slow clients can't hold slots), and
//! connections told to finish their request and close on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown`, serving `app`. Connections run
/// on `connections`; when `stop` is cancelled they finish the request in
/// hand and close.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    deadline: Duration,
    connections: &TaskTracker,
    stop: &CancellationToken,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(deadline)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (acceptor, app, builder, stop) =
            (acceptor.clone(), app.clone(), builder.clone(), stop.clone());
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = tokio::select! {
                () = stop.cancelled() => return,
                tls = tokio::time::timeout(deadline, acceptor.accept(tcp)) => match tls {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                },
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
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
