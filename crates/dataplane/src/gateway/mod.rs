//! The gateway: TLS and WebSocket in front of the hidden node pool. It
//! authenticates the device from the URL (asking the control plane, with a
//! short cache), pipes Shadowsocks bytes to the assigned node unchanged,
//! counts payload bytes per session, reports cumulative totals, heartbeats,
//! and closes the sessions the control plane names. It follows the control
//! plane's access events, so a revoked device is refused at once. It also
//! serves the Outline dynamic access key document at `/c/{token}`.
//!
//! This module puts the parts together ([`run`]); each part owns its state:
//! - `accept`: the accept loop (a connection budget taken before TLS, then
//!   TLS + HTTP/1.1 with deadlines).
//! - `h2`: HTTP/2 connections (ALPN `h2`): windows, stream limit, pings,
//!   WebSockets over extended CONNECT (RFC 8441).
//! - `routes`: `/ws/{token}/tcp`, `/ws/{token}/udp`, `/c/{token}`, the 404
//!   every refusal looks like, and the order of admission.
//! - `upgrade`: the checks of a WebSocket upgrade request.
//! - `admission`, `caps`: the pure cores: verdict lifetimes, stale answers
//!   served while refreshed, the outage rule, the tunnel caps.
//! - `validator`: the bounded validation cache and the control-plane call.
//! - `pending`: checks in flight (one call per credential, shared by the
//!   requests about it) and their bounds.
//! - `throttle`: guessed tokens per source, and who is shut out.
//! - `tunnel`, `tcp`, `udp`: the pipes; `frames`: a client's frames held
//!   to RFC 6455 (masked, fragments in order, valid Close).
//! - `document`: the Outline access document.
//! - `sessions`: per-session counters, close signals, monotonic totals.
//! - `grant`, `granting`: quota grants (the pure core; asking for them).
//! - `usage`, `spool`: usage reports and the spool behind them (written
//!   off the runtime's threads, fsync'd, every `spool_every`).
//! - `links`: which node connection carries which session, sent as tunnels
//!   open, so the node's own count witnesses the session too.
//! - `follower`, `schedule`: heartbeats, access events, the expiry schedule.
//! - `admin`: health and metrics.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use httvps_wire::CloseOrder;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;

mod accept;
mod admin;
mod admission;
mod caps;
mod document;
mod follower;
mod frames;
mod grant;
mod granting;
mod h2;
mod h2_frames;
mod links;
mod pending;
mod routes;
mod schedule;
mod sessions;
mod spool;
mod strangers;
mod tcp;
mod throttle;
mod tunnel;
mod udp;
mod upgrade;
mod usage;
mod validator;

pub use document::access_yaml;
pub use tcp::ORDERED_CLOSE_HEADER;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Public URL clients use (`https://host[:port]`), for access documents.
    pub public_url: String,
    /// Deadline for the TLS handshake, the request headers and the upgrade.
    pub handshake_timeout: Duration,
    /// Most open client connections (handshakes, requests and tunnels):
    /// beyond it new connections are closed at once, before TLS.
    pub max_connections: usize,
    /// Most connections from one source (an IPv4 address, an IPv6 /64)
    /// that carry no tunnel yet: handshakes, plain requests, idle
    /// keep-alives. Beyond it new connections from that source are closed
    /// at once, before TLS; a connection carrying a tunnel does not count.
    pub max_connections_per_source: usize,
    /// Most open tunnels in all.
    pub max_tunnels: usize,
    /// Most open tunnels per device (a browser opens dozens).
    pub max_tunnels_per_device: usize,
    /// Largest WebSocket frame accepted from clients.
    pub max_frame: usize,
    /// How long a control-plane answer is reused.
    pub cache_ttl: Duration,
    /// How long a positive answer is reused while the control plane is down.
    pub outage_ttl: Duration,
    /// Most credentials whose answers are cached (the least useful go first).
    pub cache_capacity: usize,
    /// Interval of usage reports.
    pub report_every: Duration,
    /// Interval of heartbeats.
    pub heartbeat_every: Duration,
    /// On shutdown, how long open tunnels may finish before they are closed (1001).
    pub drain_grace: Duration,
    /// File keeping per-session cumulative totals, so a restart (even after
    /// SIGKILL) recounts nothing and loses at most what moved in the last
    /// `spool_every`.
    pub spool: Option<std::path::PathBuf>,
    /// How often the spool is written (fsync'd), besides before each report.
    pub spool_every: Duration,
    /// A tunnel with no data either way for this long gets a WebSocket Ping.
    pub idle_ping: Duration,
    /// A tunnel (TCP or UDP) with no data either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection with no open tunnel for this long is told to go away
    /// (GOAWAY on HTTP/2; closed after the request in flight on HTTP/1.1),
    /// whatever other requests it makes: a connection that opens nothing
    /// cannot hold its place in the connection budget.
    pub h2_idle: Duration,
    /// Unknown device credentials one source (an IPv4 address, an IPv6
    /// /64) may present per `guess_window` before it is shut out.
    pub guess_limit: u32,
    /// The window of `guess_limit`, and how long a source past it gets 429
    /// on every request.
    pub guess_window: Duration,
    /// Most sources whose guesses are tracked (bounds the throttle's memory).
    pub guess_sources: usize,
    /// Most control-plane calls in flight at once about credentials the
    /// gateway has never seen accepted (requests about one credential share
    /// one call; beyond, 503 with `Retry-After` at once, before any call).
    pub max_pending_checks: usize,
    /// The same, for calls caused by one source (an IPv4 address, an IPv6
    /// /64).
    pub max_pending_checks_per_source: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            public_url: "https://127.0.0.1:8443".into(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 12_000,
            max_connections_per_source: 256,
            max_tunnels: 10_000,
            max_tunnels_per_device: 512,
            max_frame: 256 * 1024,
            cache_ttl: Duration::from_secs(5),
            outage_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
            report_every: Duration::from_secs(2),
            heartbeat_every: Duration::from_secs(5),
            drain_grace: Duration::from_secs(10),
            spool: None,
            spool_every: Duration::from_millis(500),
            idle_ping: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            h2_idle: Duration::from_secs(60),
            guess_limit: 20,
            guess_window: Duration::from_secs(60),
            guess_sources: 100_000,
            max_pending_checks: 512,
            max_pending_checks_per_source: 16,
        }
    }
}

/// How long open tunnels get to send their 1001 Close once the grace is over.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// The gateway's parts.
struct Gateway {
    opts: GatewayOptions,
    backend: Backend,
    validations: validator::Validations,
    caps: Mutex<caps::Caps>,
    throttle: throttle::Throttle,
    sessions: sessions::Sessions,
    beats: follower::Beats,
    reports: usage::Reports,
    /// Node connections to tie to their sessions (the node's witness).
    links: links::Links,
    spool: spool::Writer,
    metrics: admin::Metrics,
    /// Every tunnel's pipe.
    tunnels: TaskTracker,
    /// Cancelled when the gateway stops: its background tasks end.
    stop: CancellationToken,
}

impl Gateway {
    /// Counts a new tunnel of `device` in the caps.
    fn admit(&self, device: &std::sync::Arc<str>) -> Result<(), caps::CapRefusal> {
        self.caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(device)
    }

    /// Why a new tunnel of `device` would be refused now, if it would.
    fn cap_refusal(&self, device: &str) -> Option<caps::CapRefusal> {
        self.caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refusal(device)
    }

    /// Counts a tunnel of `device` as ended.
    fn release(&self, device: &str) {
        self.caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(device);
    }

    fn open_tunnels(&self) -> usize {
        self.caps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open()
    }

    /// Carries out close orders: the sessions' tunnels close and their
    /// devices' next handshakes ask the control plane again.
    fn close_sessions(&self, orders: &[CloseOrder]) {
        if orders.is_empty() {
            return;
        }
        let ids: Vec<&str> = orders.iter().map(|o| o.session_id.as_str()).collect();
        self.validations.forget_sessions(&ids);
        self.sessions.close(orders);
    }
}

/// The lanes client connections run on: one per core the process may use.
/// None when their threads cannot be started (then connections run on the
/// caller's runtime, as they would anyway).
fn lanes() -> Vec<crate::lane::Lane> {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    match (0..n)
        .map(|i| crate::lane::Lane::start(format!("gateway-lane-{i}")))
        .collect::<std::io::Result<Vec<_>>>()
    {
        Ok(lanes) => lanes,
        Err(e) => {
            tracing::warn!(error = %e, "lanes not started: connections run on the shared runtime");
            Vec::new()
        }
    }
}

/// Runs `task` on `tracker` until `stop` is cancelled.
fn spawn_until(
    tracker: &TaskTracker,
    stop: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = task => {}
        }
    });
}

/// Runs the gateway on `listener` (TLS) until `shutdown`, reporting to the
/// control plane through `backend`; `admin` serves health and metrics. On
/// shutdown it stops accepting, lets open tunnels finish for the drain
/// grace, closes the rest (1001), and reports usage one last time. Its
/// background tasks end with it, even when the future is dropped.
pub async fn run(
    opts: GatewayOptions,
    backend: Backend,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let lifetimes = admission::Lifetimes {
        fresh: opts.cache_ttl,
        outage: opts.outage_ttl,
        negative: opts.cache_ttl,
    };
    let gw = Arc::new(Gateway {
        validations: validator::Validations::new(
            opts.cache_capacity,
            lifetimes,
            pending::Limits {
                calls: opts.max_pending_checks,
                calls_per_source: opts.max_pending_checks_per_source,
                // More would be refused at the device's cap anyway.
                waiting_per_call: opts.max_tunnels_per_device,
                // A new device's burst of tunnels fits (a page through a
                // SOCKS proxy opens a few dozen at once).
                waiting_per_source: opts.max_pending_checks_per_source.saturating_mul(4),
            },
        ),
        caps: Mutex::new(caps::Caps::new(
            opts.max_tunnels,
            opts.max_tunnels_per_device,
        )),
        throttle: throttle::Throttle::new(opts.guess_limit, opts.guess_window, opts.guess_sources),
        sessions: sessions::Sessions::default(),
        beats: follower::Beats::default(),
        reports: usage::Reports::new(),
        links: opts
            .spool
            .as_deref()
            .map_or_else(links::Links::default, |s| {
                links::Links::with_log(&links::log_path(s))
            }),
        spool: spool::Writer::default(),
        metrics: admin::Metrics::default(),
        tunnels: TaskTracker::new(),
        stop: CancellationToken::new(),
        backend,
        opts,
    });
    if let Some(path) = &gw.opts.spool {
        let restored = spool::read(path);
        if !restored.is_empty() {
            tracing::info!(sessions = restored.len(), "usage spool restored");
        }
        gw.sessions.restore(restored);
    }
    let background = TaskTracker::new();
    let stop = gw.stop.clone();
    let _stop_on_drop = stop.clone().drop_guard();
    spawn_until(&background, &stop, usage::report_loop(gw.clone()));
    spawn_until(&background, &stop, links::links_loop(gw.clone()));
    if gw.opts.spool.is_some() {
        spawn_until(&background, &stop, spool::spool_loop(gw.clone()));
    }
    spawn_until(&background, &stop, follower::heartbeat_loop(gw.clone()));
    spawn_until(&background, &stop, follower::probe_loop(gw.clone()));
    spawn_until(&background, &stop, follower::access_loop(gw.clone()));
    if let Some(l) = admin {
        let app = admin::router(gw.clone());
        spawn_until(&background, &stop, async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::warn!(error = %e, "admin listener stopped");
            }
        });
    }
    let lanes = lanes();
    let connections = TaskTracker::new();
    let stop_connections = CancellationToken::new();
    let _connections_on_drop = stop_connections.clone().drop_guard();
    accept::serve(
        listener,
        acceptor,
        routes::router(gw.clone()),
        accept::Limits {
            deadline: gw.opts.handshake_timeout,
            budget: Arc::new(tokio::sync::Semaphore::new(
                gw.opts
                    .max_connections
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            strangers: strangers::Strangers::new(gw.opts.max_connections_per_source),
            shed: gw.metrics.shed.clone(),
            accepted: gw.metrics.accepted.clone(),
            drain: gw.opts.drain_grace + CLOSE_DEADLINE,
            h2_idle: gw.opts.h2_idle,
        },
        &lanes,
        &connections,
        &stop_connections,
        shutdown,
    )
    .await;
    // No new tunnels; open ones get the grace, then a 1001 Close; then
    // what was counted is reported one last time.
    stop_connections.cancel();
    connections.close();
    gw.tunnels.close();
    tracing::info!(open_tunnels = gw.open_tunnels(), "draining");
    if tokio::time::timeout(gw.opts.drain_grace, gw.tunnels.wait())
        .await
        .is_err()
    {
        gw.sessions.going_away();
        let _ = tokio::time::timeout(CLOSE_DEADLINE, gw.tunnels.wait()).await;
    }
    gw.sessions.going_away();
    gw.flush_usage().await;
    stop.cancel();
    background.close();
    background.wait().await;
    let _ = tokio::time::timeout(gw.opts.handshake_timeout, connections.wait()).await;
    Ok(())
}
