//! The control plane's accept loop, bounded so that no client can hold it:
//! a place in the connection budget first (beyond it a connection is closed
//! at once, before anything is read and without a task of its own), then
//! HTTP/1.1 with a deadline for each request's headers (hyper starts it when
//! it waits for a request, so it bounds idle keep-alive connections too) and
//! one for its body. The accepted stream is handed on as it is, so a TLS
//! layer can wrap it between the budget and hyper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;
use tower_service::Service as _;

pub use crate::config::{HttpArgs, HttpLimits};

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
    mut stop: watch::Receiver<bool>,
    shed: prometheus_client::metrics::counter::Counter,
) {
    let budget = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (tcp, _peer) = tokio::select! {
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
        // Over budget: closed here, before anything is read.
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            shed.inc();
            drop(tcp);
            continue;
        };
        let (app, builder, mut stop) = (app.clone(), builder.clone(), stop.clone());
        let body_timeout = limits.body_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let req = req.map(|b| Body::new(DeadlineBody::new(b, body_timeout)));
                let mut app = app.clone();
                app.call(req)
            });
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
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
struct BodyTimeout;

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
