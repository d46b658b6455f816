//! The gateway: TLS and WebSocket in front of the hidden node pool. It
//! authenticates the device from the URL (asking the control plane, with a
//! short cache), pipes Shadowsocks bytes to the assigned node unchanged,
//! counts payload bytes per session, reports cumulative totals, heartbeats,
//! and closes the sessions the control plane names. It follows the control
//! plane's access events, so a revoked device is refused at once. It also serves the
//! Outline dynamic access key document at `/c/{token}`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::backend::{Backend, BackendError};
use httvps_wire::heartbeat::GatewayBeat;
use httvps_wire::usage::UsageReport;
use httvps_wire::{CloseOrder, Reason, SessionTotals};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Public URL clients use (`https://host[:port]`), for access documents.
    pub public_url: String,
    /// Deadline for the TLS handshake, the request headers and the upgrade.
    pub handshake_timeout: Duration,
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
    /// Interval of usage reports.
    pub report_every: Duration,
    /// Interval of heartbeats.
    pub heartbeat_every: Duration,
    /// On shutdown, how long open tunnels may finish before they are closed (1001).
    pub drain_grace: Duration,
    /// File keeping per-session cumulative totals, so a restart (even after
    /// SIGKILL) neither loses nor recounts what was reported.
    pub spool: Option<std::path::PathBuf>,
    /// A tunnel with no data either way for this long gets a WebSocket Ping.
    pub idle_ping: Duration,
    /// A tunnel with no data either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            public_url: "https://127.0.0.1:8443".into(),
            handshake_timeout: Duration::from_secs(10),
            max_tunnels: 10_000,
            max_tunnels_per_device: 512,
            max_frame: 256 * 1024,
            cache_ttl: Duration::from_secs(5),
            outage_ttl: Duration::from_secs(60),
            report_every: Duration::from_secs(2),
            heartbeat_every: Duration::from_secs(5),
            drain_grace: Duration::from_secs(10),
            spool: None,
            idle_ping: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Where a device's tunnels go.
#[derive(Debug, Clone)]
struct Route {
    session_id: String,
    node_id: String,
    node: String,
    method: String,
    password: String,
}

#[derive(Debug, Clone)]
enum Answer {
    Go(Arc<Route>),
    Refused(Reason),
    Unknown,
}

enum Refusal {
    /// Same answer as an unknown path: the gateway can't be probed for tokens.
    NotFound,
    /// Refused with a reason (for the access document).
    Refused(Reason),
    /// No decision possible now.
    Unavailable,
}

/// A control-plane answer and how long it may be used.
#[derive(Debug, Clone)]
struct Cached {
    answer: Answer,
    /// Used without asking until then.
    fresh_until: Instant,
    /// Used when the control plane is down until then (positive answers).
    stale_until: Instant,
}

struct Session {
    up: AtomicU64,
    down: AtomicU64,
    tunnels: AtomicUsize,
    reported: Mutex<(u64, u64)>,
    close: watch::Sender<bool>,
    last_used: Mutex<Instant>,
}

impl Session {
    fn new() -> Self {
        Session {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            reported: Mutex::new((0, 0)),
            close: watch::channel(false).0,
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// The gateway's shared state.
struct Shared {
    opts: GatewayOptions,
    backend: Backend,
    cache: Mutex<HashMap<String, Cached>>,
    /// Wakes the heartbeat loop early (after an access event).
    kick: tokio::sync::Notify,
    /// Ends of subscriptions seen in answers (Unix ms): the heartbeat loop
    /// wakes at each, so expired sessions close on time.
    expiries: Mutex<std::collections::BTreeSet<i64>>,
    /// Wakes the heartbeat loop to recompute its sleep (a new expiry).
    reschedule: tokio::sync::Notify,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    per_device: Mutex<HashMap<String, usize>>,
    slots: Arc<Semaphore>,
    open: AtomicUsize,
    unreachable: Mutex<HashSet<String>>,
    reachable: Mutex<HashSet<String>>,
    seq: AtomicI64,
    refused: AtomicU64,
    draining: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn session(&self, id: &str) -> Arc<Session> {
        lock(&self.sessions)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(Session::new()))
            .clone()
    }

    /// Where the device holding `token` (an access token, or a device JWT
    /// from `Authorization: Bearer`) goes, or why not.
    async fn route(&self, token: &str) -> Result<Arc<Route>, Refusal> {
        if !httvps_wire::token::looks_like_token(token)
            && !httvps_wire::token::looks_like_jwt(token)
        {
            return Err(Refusal::NotFound);
        }
        let cached = lock(&self.cache).get(token).cloned();
        let now = Instant::now();
        if let Some(c) = &cached
            && now < c.fresh_until
        {
            return answer_to_result(c.answer.clone());
        }
        // Never trusted past the subscription's end.
        let mut lifetime = Duration::MAX;
        let answer = match self.backend.assign(token).await {
            Ok(a) => match (a.host, a.port, a.node_id) {
                (Some(host), Some(port), Some(node_id)) => {
                    if let Some(until) = a.valid_until {
                        lifetime = (until - chrono::Utc::now()).to_std().unwrap_or_default();
                        if lifetime < EXPIRY_HORIZON
                            && lock(&self.expiries).insert(until.timestamp_millis())
                        {
                            self.reschedule.notify_one();
                        }
                    }
                    Answer::Go(Arc::new(Route {
                        session_id: a.session_id,
                        node_id,
                        node: if host.contains(':') {
                            format!("[{host}]:{port}")
                        } else {
                            format!("{host}:{port}")
                        },
                        method: a.method,
                        password: a.password,
                    }))
                }
                _ => return Err(Refusal::Unavailable),
            },
            // An unknown credential looks like an unknown path: no oracle.
            Err(BackendError::Refused(Reason::DeviceUnknown)) => Answer::Unknown,
            Err(BackendError::Refused(r)) => Answer::Refused(r),
            Err(BackendError::Status { status, .. }) if (400..500).contains(&status) => {
                Answer::Unknown
            }
            Err(e) if e.is_outage() => {
                // The control plane is down: keep serving what it said recently.
                tracing::warn!(error = %e, "control plane unreachable");
                return match cached {
                    Some(Cached {
                        answer: Answer::Go(r),
                        stale_until,
                        ..
                    }) if now < stale_until => Ok(r),
                    _ => Err(Refusal::Unavailable),
                };
            }
            Err(_) => return Err(Refusal::Unavailable),
        };
        let now = Instant::now();
        let stale = if matches!(answer, Answer::Go(_)) {
            self.opts.outage_ttl
        } else {
            Duration::ZERO
        };
        lock(&self.cache).insert(
            token.to_owned(),
            Cached {
                answer: answer.clone(),
                fresh_until: now + self.opts.cache_ttl.min(lifetime),
                stale_until: now + stale.min(lifetime),
            },
        );
        answer_to_result(answer)
    }

    fn forget_token(&self, token: &str) {
        lock(&self.cache).remove(token);
    }

    /// Drops every cached answer: the next handshake of each device asks
    /// the control plane again.
    fn forget_all(&self) {
        lock(&self.cache).clear();
    }

    fn close_sessions(&self, orders: &[CloseOrder]) {
        if orders.is_empty() {
            return;
        }
        let ids: HashSet<&str> = orders.iter().map(|o| o.session_id.as_str()).collect();
        lock(&self.cache).retain(
            |_, c| !matches!(&c.answer, Answer::Go(r) if ids.contains(r.session_id.as_str())),
        );
        let sessions = lock(&self.sessions);
        for o in orders {
            if let Some(s) = sessions.get(&o.session_id) {
                tracing::info!(session.id = %o.session_id, reason = %o.reason, "closing session");
                let _ = s.close.send(true);
            }
        }
    }
}

fn answer_to_result(a: Answer) -> Result<Arc<Route>, Refusal> {
    match a {
        Answer::Go(r) => Ok(r),
        Answer::Refused(r) => Err(Refusal::Refused(r)),
        Answer::Unknown => Err(Refusal::NotFound),
    }
}

/// Runs the gateway on `listener` (TLS) until `shutdown`, reporting to the
/// control plane through `backend`. `admin` serves health and metrics.
pub async fn run(
    opts: GatewayOptions,
    backend: Backend,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(opts.max_tunnels)),
        opts,
        backend,
        cache: Mutex::new(HashMap::new()),
        kick: tokio::sync::Notify::new(),
        expiries: Mutex::new(std::collections::BTreeSet::new()),
        reschedule: tokio::sync::Notify::new(),
        sessions: Mutex::new(HashMap::new()),
        per_device: Mutex::new(HashMap::new()),
        open: AtomicUsize::new(0),
        unreachable: Mutex::new(HashSet::new()),
        reachable: Mutex::new(HashSet::new()),
        seq: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
        refused: AtomicU64::new(0),
        draining: watch::channel(false).0,
    });
    load_spool(&shared);
    let reporter = tokio::spawn(report_loop(shared.clone()));
    let beater = tokio::spawn(heartbeat_loop(shared.clone()));
    let follower = tokio::spawn(access_loop(shared.clone()));
    let admin_task = admin.map(|l| {
        let app = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        })
    });
    let app = Router::new()
        .route("/ws/{token}/tcp", get(ws_tcp))
        .route("/ws/{token}/udp", get(ws_udp))
        .route("/c/{token}", get(access_document))
        .fallback(not_found)
        .with_state(shared.clone());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.opts.handshake_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let deadline = shared.opts.handshake_timeout;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) = tokio::time::timeout(deadline, acceptor.accept(tcp)).await else {
                return;
            };
            let service = TowerToHyperService::new(app);
            let _ = builder
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
    // Stop accepting; let open tunnels finish for a grace period, close the
    // rest (1001), then report what was counted one last time.
    drop(listener);
    let open_at_stop = shared.open.load(Ordering::Relaxed);
    tracing::info!(open_tunnels = open_at_stop, "draining");
    let grace = tokio::time::Instant::now() + shared.opts.drain_grace;
    while shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = shared.draining.send(true);
    let closing = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < closing {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flush_usage(&shared).await;
    reporter.abort();
    beater.abort();
    follower.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    Ok(())
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

async fn health() -> &'static str {
    "{\"status\":\"ok\"}"
}

async fn metrics(State(s): State<Arc<Shared>>) -> String {
    let (up, down) = lock(&s.sessions).values().fold((0u64, 0u64), |(u, d), x| {
        (
            u + x.up.load(Ordering::Relaxed),
            d + x.down.load(Ordering::Relaxed),
        )
    });
    format!(
        "# TYPE httvps_gateway_open_tunnels gauge\nhttvps_gateway_open_tunnels {}\n# TYPE httvps_gateway_bytes_up counter\nhttvps_gateway_bytes_up {up}\n# TYPE httvps_gateway_bytes_down counter\nhttvps_gateway_bytes_down {down}\n# TYPE httvps_gateway_refused_total counter\nhttvps_gateway_refused_total {}\n",
        s.open.load(Ordering::Relaxed),
        s.refused.load(Ordering::Relaxed)
    )
}

/// Holds a tunnel's slots; gives them back when the tunnel ends.
struct TunnelGuard {
    shared: Arc<Shared>,
    token: String,
    session: Arc<Session>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        self.session.tunnels.fetch_sub(1, Ordering::Relaxed);
        *lock(&self.session.last_used) = Instant::now();
        let mut per = lock(&self.shared.per_device);
        if let Some(n) = per.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.token);
            }
        }
    }
}

/// A refused request: a status and a fixed text.
struct Reject(StatusCode, &'static str);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn refusal_response(s: &Shared, r: Refusal) -> Reject {
    s.refused.fetch_add(1, Ordering::Relaxed);
    match r {
        Refusal::NotFound | Refusal::Refused(_) => Reject(StatusCode::NOT_FOUND, "Not Found"),
        Refusal::Unavailable => Reject(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    }
}

/// Admits a tunnel: caps, then the slot guard.
fn admit(s: &Arc<Shared>, token: &str, session_id: &str) -> Result<TunnelGuard, Reject> {
    let Ok(permit) = s.slots.clone().try_acquire_owned() else {
        s.refused.fetch_add(1, Ordering::Relaxed);
        return Err(Reject(StatusCode::SERVICE_UNAVAILABLE, "Too many tunnels"));
    };
    {
        let mut per = lock(&s.per_device);
        let n = per.entry(token.to_owned()).or_insert(0);
        if *n >= s.opts.max_tunnels_per_device {
            s.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Reject(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many tunnels for this device",
            ));
        }
        *n += 1;
    }
    let session = s.session(session_id);
    session.tunnels.fetch_add(1, Ordering::Relaxed);
    s.open.fetch_add(1, Ordering::Relaxed);
    Ok(TunnelGuard {
        shared: s.clone(),
        token: token.to_owned(),
        session,
        _permit: permit,
    })
}

async fn connect_node(s: &Arc<Shared>, token: &str) -> Result<(Arc<Route>, TcpStream), Reject> {
    for attempt in 0..2 {
        let route = s.route(token).await.map_err(|r| refusal_response(s, r))?;
        match tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(route.node.as_str()),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                lock(&s.reachable).insert(route.node_id.clone());
                return Ok((route, stream));
            }
            _ => {
                tracing::warn!(node.id = %route.node_id, attempt, "node unreachable");
                lock(&s.unreachable).insert(route.node_id.clone());
                s.forget_token(token);
                // Tell the control plane now, so the retry gets another node.
                heartbeat_once(s).await;
            }
        }
    }
    Err(refusal_response(s, Refusal::Unavailable))
}

/// The device credential of a tunnel request: a device JWT presented as
/// `Authorization: Bearer` (our client may), else the token in the path.
fn credential(req: &Request, path_token: String) -> String {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| t.contains('.'))
        .unwrap_or(path_token)
}

/// A complete WebSocket upgrade request (RFC 6455 version 13 with a key),
/// checked before anything is asked of the control plane or a node.
fn valid_upgrade(req: &Request) -> bool {
    let h = req.headers();
    fastwebsockets::upgrade::is_upgrade_request(req)
        && h.get(header::SEC_WEBSOCKET_KEY).is_some()
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13")
}

async fn ws_tcp(
    State(s): State<Arc<Shared>>,
    Path(token): Path<String>,
    mut req: Request,
) -> Response {
    if !valid_upgrade(&req) {
        return not_found().await;
    }
    let token = credential(&req, token);
    let (route, node) = match connect_node(&s, &token).await {
        Ok(x) => x,
        Err(reject) => return reject.into_response(),
    };
    let guard = match admit(&s, &token, &route.session_id) {
        Ok(g) => g,
        Err(reject) => return reject.into_response(),
    };
    let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let max_frame = s.opts.max_frame;
    let span = tracing::debug_span!("tunnel", session.id = %route.session_id, kind = "tcp");
    tokio::spawn(tracing::Instrument::instrument(
        pipe_tcp(fut, node, guard, max_frame),
        span,
    ));
    resp.into_response()
}

async fn ws_udp(
    State(s): State<Arc<Shared>>,
    Path(token): Path<String>,
    mut req: Request,
) -> Response {
    if !valid_upgrade(&req) {
        return not_found().await;
    }
    let token = credential(&req, token);
    let route = match s.route(&token).await {
        Ok(r) => r,
        Err(r) => return refusal_response(&s, r).into_response(),
    };
    let Ok(Some(node_addr)) = tokio::net::lookup_host(route.node.as_str())
        .await
        .map(|mut a| a.next())
    else {
        return refusal_response(&s, Refusal::Unavailable).into_response();
    };
    let bind: SocketAddr = if node_addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let Ok(socket) = UdpSocket::bind(bind).await else {
        return refusal_response(&s, Refusal::Unavailable).into_response();
    };
    if socket.connect(node_addr).await.is_err() {
        return refusal_response(&s, Refusal::Unavailable).into_response();
    }
    let guard = match admit(&s, &token, &route.session_id) {
        Ok(g) => g,
        Err(reject) => return reject.into_response(),
    };
    let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let max_frame = s.opts.max_frame;
    tokio::spawn(pipe_udp(fut, socket, guard, max_frame));
    resp.into_response()
}

/// How long the gateway waits, once the node has finished, for the client to
/// close first.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How the node-to-client half of a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The node closed (or failed).
    NodeDone,
    /// The control plane closed the session.
    Cancelled,
    /// The client side went away.
    ClientGone,
}

/// Completes when the control plane asks to close the session.
async fn closed_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type WsIo = TokioIo<hyper::upgrade::Upgraded>;

/// Completes the upgrade with our settings (no automatic Close or Pong, a
/// frame limit) and starts the only task that writes to the socket: frames
/// queued on the returned sender (at most `queue` in flight: backpressure),
/// until a Close is written.
async fn open_tunnel(
    fut: UpgradeFut,
    max_frame: usize,
    queue: usize,
) -> Option<(
    fastwebsockets::WebSocketRead<tokio::io::ReadHalf<WsIo>>,
    mpsc::Sender<Frame<'static>>,
    tokio::task::JoinHandle<()>,
)> {
    let mut ws = fut.await.ok()?;
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    ws.set_max_message_size(max_frame);
    let (rx, mut tx) = ws.split(tokio::io::split);
    let (out, mut out_rx) = mpsc::channel::<Frame<'static>>(queue);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let last = frame.opcode == OpCode::Close;
            if tx.write_frame(frame).await.is_err() || tx.flush().await.is_err() || last {
                break;
            }
        }
    });
    Some((rx, out, writer))
}

/// Largest read from a node, and so largest frame to a client.
const READ_CHUNK: usize = 64 * 1024;

/// Pipes one TCP tunnel. A client Close is a half-close: the node's side is
/// shut for writing and whatever the node still sends is forwarded before
/// the gateway closes.
async fn pipe_tcp(fut: UpgradeFut, node: TcpStream, guard: TunnelGuard, max_frame: usize) {
    let Some((mut rx, out, writer)) = open_tunnel(fut, max_frame, 8).await else {
        return;
    };
    let (idle_ping, idle_timeout) = (guard.shared.opts.idle_ping, guard.shared.opts.idle_timeout);
    let born = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let up_activity = activity.clone();
    let (node_r, mut node_w) = node.into_split();
    let session = guard.session.clone();
    let up_out = out.clone();
    let up_session = session.clone();
    let mut upstream = tokio::spawn(async move {
        loop {
            let frame = match rx
                .read_frame::<_, WebSocketError>(&mut |_| async { Ok(()) })
                .await
            {
                Ok(f) => f,
                Err(WebSocketError::FrameTooLarge) => {
                    let _ = up_out.send(Frame::close(1009, b"frame too large")).await;
                    return false;
                }
                Err(_) => return false,
            };
            match frame.opcode {
                OpCode::Binary | OpCode::Continuation => {
                    if node_w.write_all(&frame.payload).await.is_err() {
                        return false;
                    }
                    up_session
                        .up
                        .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                    up_activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                OpCode::Text => {
                    let _ = up_out.send(Frame::close(1003, b"binary frames only")).await;
                    return false;
                }
                OpCode::Ping => {
                    let _ = up_out
                        .send(Frame::pong(Payload::Owned(frame.payload.to_vec())))
                        .await;
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let _ = node_w.shutdown().await;
                    return true;
                }
            }
        }
    });
    let mut closed = session.close.subscribe();
    let mut draining = guard.shared.draining.subscribe();
    let down_session = session.clone();
    let closer = out.clone();
    let downstream = async move {
        let mut tick = tokio::time::interval(idle_ping.min(idle_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A buffer only once there is something to read: idle
                // tunnels hold none, and the buffer read into is the frame
                // sent (no copy).
                r = node_r.readable() => {
                    if r.is_err() {
                        return End::NodeDone;
                    }
                    let mut buf = Vec::with_capacity(READ_CHUNK);
                    match node_r.try_read_buf(&mut buf) {
                        Ok(0) => return End::NodeDone,
                        Ok(n) => {
                            if n < READ_CHUNK / 4 {
                                buf.shrink_to_fit();
                            }
                            if out.send(Frame::binary(Payload::Owned(buf))).await.is_err() {
                                return End::ClientGone;
                            }
                            down_session.down.fetch_add(n as u64, Ordering::Relaxed);
                            activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::NodeDone,
                    }
                },
                _ = tick.tick() => {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    let silent = born.elapsed().saturating_sub(last);
                    if silent >= idle_timeout {
                        let _ = out.send(Frame::close(1000, b"idle")).await;
                        return End::Cancelled;
                    }
                    if silent >= idle_ping {
                        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new()));
                        if out.send(ping).await.is_err() {
                            return End::ClientGone;
                        }
                    }
                }
                () = closed_signal(&mut closed) => {
                    let _ = out.send(Frame::close(1008, b"session closed")).await;
                    return End::Cancelled;
                }
                () = closed_signal(&mut draining) => {
                    let _ = out.send(Frame::close(1001, b"gateway going away")).await;
                    return End::Cancelled;
                }
            }
        }
    };
    // The futures holding the frame senders end with this block, so the
    // writer below sees the channel close as soon as the tunnel is over.
    {
        tokio::pin!(downstream);
        tokio::select! {
            end = &mut downstream => {
                if end == End::NodeDone {
                    // The node is done. Give the client a moment to finish on its
                    // own first: some stock clients (v2ray-plugin) treat a Close
                    // as an error and drop what they have not yet passed on.
                    let client_done = tokio::time::timeout(CLOSE_GRACE, &mut upstream).await.is_ok();
                    let _ = closer.send(Frame::close(1000, b"")).await;
                    if !client_done {
                        // Let the client answer our Close before the socket goes:
                        // unread bytes would turn the close into a reset.
                        let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                    }
                } else if end == End::Cancelled {
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                }
                upstream.abort();
            }
            half = &mut upstream => {
                if matches!(half, Ok(true)) {
                    // Half-close: forward what the node still sends, then close.
                    if downstream.await == End::NodeDone {
                        let _ = closer.send(Frame::close(1000, b"")).await;
                    }
                }
            }
        }
    }
    drop(closer);
    upstream.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(guard);
}

/// Pipes one UDP tunnel: one Shadowsocks packet per binary message.
async fn pipe_udp(fut: UpgradeFut, socket: UdpSocket, guard: TunnelGuard, max_frame: usize) {
    let Some((mut rx, out, writer)) = open_tunnel(fut, max_frame, 32).await else {
        return;
    };
    let socket = Arc::new(socket);
    let session = guard.session.clone();
    let (up_sock, up_out, up_session) = (socket.clone(), out.clone(), session.clone());
    let mut upstream = tokio::spawn(async move {
        loop {
            let Ok(frame) = rx
                .read_frame::<_, WebSocketError>(&mut |_| async { Ok(()) })
                .await
            else {
                return;
            };
            match frame.opcode {
                OpCode::Binary => {
                    if up_sock.send(&frame.payload).await.is_ok() {
                        up_session
                            .up
                            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                    }
                }
                OpCode::Ping => {
                    let _ = up_out
                        .send(Frame::pong(Payload::Owned(frame.payload.to_vec())))
                        .await;
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let _ = up_out.send(Frame::close(1000, b"")).await;
                    return;
                }
                OpCode::Text | OpCode::Continuation => {
                    let _ = up_out
                        .send(Frame::close(1003, b"one binary message per packet"))
                        .await;
                    return;
                }
            }
        }
    });
    let mut closed = session.close.subscribe();
    let mut draining = guard.shared.draining.subscribe();
    let downstream = async {
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(120), socket.recv(&mut buf)) => match r {
                    Ok(Ok(n)) => {
                        if out.send(Frame::binary(Payload::Owned(buf[..n].to_vec()))).await.is_err() {
                            return;
                        }
                        session.down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        let _ = out.send(Frame::close(1000, b"idle")).await;
                        return;
                    }
                },
                () = closed_signal(&mut closed) => {
                    let _ = out.send(Frame::close(1008, b"session closed")).await;
                    return;
                }
                () = closed_signal(&mut draining) => {
                    let _ = out.send(Frame::close(1001, b"gateway going away")).await;
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = downstream => upstream.abort(),
        _ = &mut upstream => {}
    }
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(guard);
}

/// `GET /c/{token}`: the Outline dynamic access key document.
async fn access_document(State(s): State<Arc<Shared>>, Path(token): Path<String>) -> Response {
    let yaml = |body: String| {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/yaml; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    };
    match s.route(&token).await {
        Ok(route) => yaml(access_yaml(
            &s.opts.public_url,
            &token,
            &route.method,
            &route.password,
        )),
        Err(Refusal::Refused(r)) => yaml(format!(
            "error:\n  message: {}\n  details: {}\n",
            yaml_string(r.message()),
            yaml_string(r.as_str())
        )),
        Err(r) => refusal_response(&s, r).into_response(),
    }
}

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The dynamic access key document for `token` through `public_url`.
pub fn access_yaml(public_url: &str, token: &str, method: &str, password: &str) -> String {
    let authority = public_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(public_url)
        .trim_end_matches('/');
    let part = |kind: &str| {
        format!(
            "    $type: shadowsocks\n    endpoint:\n      $type: websocket\n      url: {}\n    cipher: {}\n    secret: {}\n",
            yaml_string(&format!("wss://{authority}/ws/{token}/{kind}")),
            yaml_string(method),
            yaml_string(password)
        )
    };
    format!(
        "transport:\n  $type: tcpudp\n  tcp:\n{}  udp:\n{}",
        part("tcp"),
        part("udp")
    )
}

fn pending_totals(s: &Shared) -> Vec<(String, u64, u64)> {
    lock(&s.sessions)
        .iter()
        .filter_map(|(id, x)| {
            let (u, d) = (x.up.load(Ordering::Relaxed), x.down.load(Ordering::Relaxed));
            (*lock(&x.reported) != (u, d)).then(|| (id.clone(), u, d))
        })
        .collect()
}

/// The spool: every session's cumulative totals, written (atomically)
/// before they are reported.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Spool {
    sessions: HashMap<String, (u64, u64)>,
}

fn write_spool(s: &Shared) {
    let Some(path) = &s.opts.spool else { return };
    let spool = Spool {
        sessions: lock(&s.sessions)
            .iter()
            .map(|(id, x)| {
                (
                    id.clone(),
                    (x.up.load(Ordering::Relaxed), x.down.load(Ordering::Relaxed)),
                )
            })
            .filter(|(_, (u, d))| u + d > 0)
            .collect(),
    };
    let tmp = path.with_extension("tmp");
    let written = serde_json::to_vec(&spool)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(error = %e, "writing the usage spool");
    }
}

/// Restores per-session totals from the spool: counting continues from
/// there and everything is reported again (the ledger ignores what it has).
fn load_spool(s: &Shared) {
    let Some(path) = &s.opts.spool else { return };
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let Ok(spool) = serde_json::from_slice::<Spool>(&bytes) else {
        tracing::warn!(path = %path.display(), "unreadable usage spool ignored");
        return;
    };
    let mut sessions = lock(&s.sessions);
    for (id, (up, down)) in spool.sessions {
        let x = Session::new();
        x.up.store(up, Ordering::Relaxed);
        x.down.store(down, Ordering::Relaxed);
        sessions.insert(id, Arc::new(x));
    }
    tracing::info!(sessions = sessions.len(), "usage spool restored");
}

/// Session totals per report: well under the control plane's body limit.
const REPORT_CHUNK: usize = 200;

async fn flush_usage(s: &Arc<Shared>) {
    let pending = pending_totals(s);
    if pending.is_empty() {
        return;
    }
    write_spool(s);
    let seq = s.seq.fetch_add(1, Ordering::Relaxed);
    for part in pending.chunks(REPORT_CHUNK) {
        let reports = part
            .iter()
            .map(|(id, u, d)| SessionTotals {
                session_id: id.clone(),
                seq,
                bytes_up: i64::try_from(*u).unwrap_or(i64::MAX),
                bytes_down: i64::try_from(*d).unwrap_or(i64::MAX),
            })
            .collect();
        match s.backend.report(&UsageReport { reports }).await {
            Ok(answer) => {
                mark_reported(s, part);
                s.close_sessions(&answer.close_sessions);
            }
            // The control plane refuses the batch for what it holds (a
            // session it no longer knows, say): report one by one so the rest
            // still count. Other refusals (our token, rate) are retried.
            Err(BackendError::Status { status, .. }) if refuses_content(status) => {
                for one in part {
                    let reports = vec![SessionTotals {
                        session_id: one.0.clone(),
                        seq,
                        bytes_up: i64::try_from(one.1).unwrap_or(i64::MAX),
                        bytes_down: i64::try_from(one.2).unwrap_or(i64::MAX),
                    }];
                    match s.backend.report(&UsageReport { reports }).await {
                        Ok(answer) => s.close_sessions(&answer.close_sessions),
                        Err(BackendError::Status { status, code }) if refuses_content(status) => {
                            tracing::warn!(session.id = %one.0, status, %code, "usage refused; dropped");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "usage report failed; will resend");
                            return;
                        }
                    }
                    mark_reported(s, std::slice::from_ref(one));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "usage report failed; will resend");
                return;
            }
        }
    }
}

/// Whether a status refuses a report for its content (then retrying the
/// same totals cannot help), rather than for who sends it or when: a 403
/// may mean this gateway is disabled, and its totals wait for it to return.
fn refuses_content(status: u16) -> bool {
    matches!(status, 400 | 404 | 413 | 422)
}

fn mark_reported(s: &Shared, part: &[(String, u64, u64)]) {
    let sessions = lock(&s.sessions);
    for (id, u, d) in part {
        if let Some(x) = sessions.get(id) {
            *lock(&x.reported) = (*u, *d);
        }
    }
}

async fn report_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(s.opts.report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_usage(&s).await;
        let now = Instant::now();
        lock(&s.cache).retain(|_, c| now < c.fresh_until.max(c.stale_until));
        // Forget sessions with no tunnel, nothing to report and no use for a while.
        lock(&s.sessions).retain(|_, x| {
            x.tunnels.load(Ordering::Relaxed) > 0
                || *lock(&x.reported)
                    != (x.up.load(Ordering::Relaxed), x.down.load(Ordering::Relaxed))
                || lock(&x.last_used).elapsed() < Duration::from_secs(300)
        });
    }
}

async fn heartbeat_once(s: &Arc<Shared>) {
    let unreachable: Vec<String> = lock(&s.unreachable).drain().collect();
    let reachable: Vec<String> = lock(&s.reachable)
        .drain()
        .filter(|n| !unreachable.contains(n))
        .collect();
    let open_sessions: Vec<String> = lock(&s.sessions)
        .iter()
        .filter(|(_, x)| x.tunnels.load(Ordering::Relaxed) > 0)
        .map(|(id, _)| id.clone())
        .collect();
    let beat = GatewayBeat {
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        open_tunnels: i32::try_from(s.open.load(Ordering::Relaxed)).unwrap_or(i32::MAX),
        open_sessions,
        unreachable_nodes: unreachable.clone(),
        reachable_nodes: reachable,
    };
    match s.backend.gateway_heartbeat(&beat).await {
        Ok(answer) => s.close_sessions(&answer.close_sessions),
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat failed");
            lock(&s.unreachable).extend(unreachable);
        }
    }
}

/// Subscription ends closer than this get a heartbeat of their own.
const EXPIRY_HORIZON: Duration = Duration::from_secs(3600);

async fn heartbeat_loop(s: Arc<Shared>) {
    loop {
        heartbeat_once(&s).await;
        // Sleep until the next beat, an access event or a subscription's end
        // (recomputed when a nearer end becomes known).
        let next_beat = tokio::time::Instant::now() + s.opts.heartbeat_every;
        let mut passed = Vec::new();
        loop {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut until = next_beat;
            {
                let mut expiries = lock(&s.expiries);
                while expiries.first().is_some_and(|t| *t <= now_ms) {
                    passed.extend(expiries.pop_first());
                }
                if let Some(next) = expiries.first() {
                    let ms = u64::try_from(next - now_ms).unwrap_or(0) + 200;
                    until = until.min(tokio::time::Instant::now() + Duration::from_millis(ms));
                }
            }
            if !passed.is_empty() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {
                    if until >= next_beat {
                        break;
                    }
                }
                () = s.kick.notified() => break,
                () = s.reschedule.notified() => {}
            }
        }
    }
}

/// Longest silence on the access-event stream before it is reopened
/// (the control plane sends a keepalive every 15 s).
const ACCESS_SILENCE: Duration = Duration::from_secs(40);

/// Follows the control plane's access events: on each, forgets every cached
/// validation (new handshakes are checked afresh at once) and heartbeats
/// now (open tunnels of the device close). Reconnects after failures; on
/// every (re)connect the cache is dropped too, since events may have been
/// missed meanwhile.
async fn access_loop(s: Arc<Shared>) {
    loop {
        match s.backend.access_events().await {
            Ok(mut res) => {
                s.forget_all();
                s.kick.notify_one();
                let mut buf: Vec<u8> = Vec::new();
                while let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(ACCESS_SILENCE, res.chunk()).await
                {
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        if httvps_wire::events::is_access_change(&line) {
                            tracing::debug!("access changed: validations dropped");
                            s.forget_all();
                            s.kick.notify_one();
                        }
                    }
                    if buf.len() > 64 * 1024 {
                        break;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "access events unavailable"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
