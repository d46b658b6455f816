//! The gateway's routes: `/ws/{token}/tcp` and `/ws/{token}/udp`, checked
//! in full before anything is asked, then admitted in order (the
//! credential's verdict, then the caps) before any node connection or UDP
//! socket is opened, then upgraded; `/c/{token}` (the access document); and
//! one answer, the unknown path's 404, for every refusal there (bad or
//! missing upgrade headers, another method, an unknown or refused token),
//! so neither the routes nor valid tokens can be probed. A source that
//! guessed too many tokens gets 429 on every path for a while; a request
//! that would need a control-plane call past the bounds on calls in flight
//! (`pending`) gets 503 with `Retry-After` at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use httvps_wire::{Reason, Unavailable};
use tokio::net::{TcpStream, UdpSocket};

use super::accept::Conn;
use super::admission::Route;
use super::caps::CapRefusal;
use super::document::{access_yaml, refusal_yaml, unavailable_yaml};
use super::grant::clock_ms;
use super::tunnel::{CapSlot, TunnelGuard};
use super::validator::Refusal;
use super::{Gateway, tcp, udp, upgrade};

/// How long a node gets to take a connection.
const NODE_CONNECT: Duration = Duration::from_secs(5);

/// The public routes. They take every method and refuse all but GET
/// themselves, with the unknown path's answer: a method router would answer
/// 405, or add an `Allow` header, and so show that the route exists.
pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws/{token}/tcp", any(ws_tcp))
        .route("/ws/{token}/udp", any(ws_udp))
        .route("/c/{token}", any(access_document))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(gw.clone(), shut_out))
        .with_state(gw)
}

/// The unknown path's answer, which every refusal on the routes shares.
fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

async fn not_found() -> Response {
    not_found_response()
}

/// The answer to a source shut out for guessing, for `left`.
fn too_many(left: Duration) -> Response {
    // Whole seconds, rounded up: retrying on time never finds it shut.
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.max(1).to_string())],
        "Too Many Requests",
    )
        .into_response()
}

/// The peer of the connection `req` came on.
fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<Conn>().map(|c| c.peer)
}

/// Before any route: a source shut out for guessing gets 429, whatever it
/// asks, at no control-plane cost; a token the gateway has not admitted
/// before tells it nothing, valid or not. A credential it has admitted (a
/// positive answer, however old, and whatever dropped it from the cache
/// since: an access change anywhere, the session's end) still passes: it is in use,
/// not guessed, and one guesser behind a carrier's NAT would otherwise shut
/// out every subscriber sharing that address. Passing tells a guesser
/// nothing either: only a credential in use passes, and to present one it
/// must already hold it.
async fn shut_out(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if let Some(left) = peer(&req).and_then(|ip| gw.throttle.shut_out(ip))
        && presented(&req).is_none_or(|t| !gw.validations.admitted_before(&t))
    {
        gw.metrics.throttled();
        return too_many(left);
    }
    next.run(req).await
}

/// The device credential a request to a route presents, read from its raw
/// path as that route reads it: a tunnel's (see [`credential`]: a device
/// JWT in the header first), the access document's (the path's token only,
/// so a credential in use cannot carry a guess of another past the
/// shut-out).
fn presented(req: &Request) -> Option<String> {
    let path = req.uri().path();
    let plain = |t: &str| !t.is_empty() && !t.contains('/');
    if let Some(token) = path.strip_prefix("/c/") {
        return plain(token).then(|| token.to_owned());
    }
    let token = path
        .strip_prefix("/ws/")
        .and_then(|rest| {
            rest.strip_suffix("/tcp")
                .or_else(|| rest.strip_suffix("/udp"))
        })
        .filter(|t| plain(t))?;
    Some(credential(req, token.to_owned()))
}

/// The answer to a credential that is not routed: an unknown one looks
/// like an unknown path (the control plane's answer about it counted as a
/// guess of its source, which may have shut the source out: then 429), a
/// refused one too (the access document shows the reason instead).
fn refusal_response(gw: &Gateway, r: Refusal, peer: Option<IpAddr>) -> Response {
    gw.metrics.refused();
    tracing::debug!(refusal = ?r, "tunnel refused");
    match r {
        Refusal::Unknown { asked } => {
            let shut = peer
                .filter(|_| asked)
                .and_then(|ip| gw.throttle.shut_out(ip));
            match shut {
                Some(window) => {
                    tracing::debug!("source shut out for guessing tokens");
                    too_many(window)
                }
                None => not_found_response(),
            }
        }
        Refusal::Refused(_) => not_found_response(),
        Refusal::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
        }
        Refusal::NoNode => (StatusCode::SERVICE_UNAVAILABLE, "No Node Available").into_response(),
        Refusal::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "Service Unavailable",
        )
            .into_response(),
    }
}

fn cap_response(gw: &Gateway, refusal: CapRefusal) -> Response {
    gw.metrics.refused();
    tracing::debug!(refusal = ?refusal, "tunnel refused at a cap");
    match refusal {
        CapRefusal::Full => (StatusCode::SERVICE_UNAVAILABLE, "Too many tunnels").into_response(),
        CapRefusal::DeviceFull => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tunnels for this device",
        )
            .into_response(),
    }
}

/// Admits a tunnel of `token`, in order: a device known to be at its cap
/// is refused without asking; then the verdict (cached, else one
/// control-plane call); then the caps, counted for the device. Nothing is
/// opened for the tunnel before this succeeds.
async fn admit(
    gw: &Arc<Gateway>,
    token: &str,
    peer: Option<IpAddr>,
    ahead: bool,
) -> Result<(Arc<Route>, CapSlot), Response> {
    if let Some(device) = gw.validations.known_device(token)
        && let Some(refusal) = gw.cap_refusal(&device)
    {
        return Err(cap_response(gw, refusal));
    }
    let route = gw
        .route(token, peer, ahead)
        .await
        .map_err(|r| refusal_response(gw, r, peer))?;
    let slot = CapSlot::take(gw, &route.device).map_err(|r| cap_response(gw, r))?;
    Ok((route, slot))
}

/// Connects to the node of `route`; a node that does not answer is
/// reported at once and the route asked again (another node of the pool
/// may take it).
async fn connect_node(
    gw: &Arc<Gateway>,
    token: &str,
    mut route: Arc<Route>,
    peer: Option<IpAddr>,
) -> Result<(Arc<Route>, TcpStream), Response> {
    for attempt in 0..2 {
        if attempt > 0 {
            route = gw
                .route(token, peer, false)
                .await
                .map_err(|r| refusal_response(gw, r, peer))?;
        }
        match tokio::time::timeout(NODE_CONNECT, TcpStream::connect(route.node.as_str())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                gw.beats.reachable(&route.node_id);
                return Ok((route, stream));
            }
            _ => {
                tracing::warn!(node.id = %route.node_id, attempt, "node unreachable");
                gw.beats.unreachable(&route.node_id, route.node.as_str());
                gw.validations.forget(token);
                // Tell the control plane now, so the retry gets another node.
                gw.heartbeat_once().await;
            }
        }
    }
    Err(refusal_response(gw, Refusal::Unavailable, peer))
}

/// The device credential of a tunnel request: a device JWT presented as
/// `Authorization: Bearer` (our client may), else the token in the path.
fn credential(req: &Request, path_token: String) -> String {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(httvps_wire::token::bearer)
        .map(str::to_owned)
        .filter(|t| t.contains('.'))
        .unwrap_or(path_token)
}

/// The credential of a valid upgrade request, or nothing (then the answer
/// is the unknown path's).
fn tunnel_request(path: Result<Path<String>, PathRejection>, req: &Request) -> Option<String> {
    let Ok(Path(token)) = path else {
        return None;
    };
    upgrade::valid(req).then(|| credential(req, token))
}

async fn ws_tcp(
    State(gw): State<Arc<Gateway>>,
    path: Result<Path<String>, PathRejection>,
    mut req: Request,
) -> Response {
    let Some(token) = tunnel_request(path, &req) else {
        return not_found_response();
    };
    let conn = req.extensions().get::<Conn>().cloned();
    let peer = conn.as_ref().map(|c| c.peer);
    let (gwr, tok) = (&gw, token.as_str());
    let ahead = req.version() == axum::http::Version::HTTP_2;
    let opened = admitted(&gw, &token, conn, ahead, move |route| {
        connect_node(gwr, tok, route, peer)
    });
    let (route, node, guard) = match opened.await {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let Some((resp, fut)) = upgrade::accept(&mut req) else {
        return not_found_response();
    };
    guard.opened();
    if let Ok(local) = node.local_addr() {
        gw.links.add(&route.session_id, local);
    }
    let ordered_close = req
        .headers()
        .get(tcp::ORDERED_CLOSE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let span = tracing::debug_span!("tunnel", session.id = %route.session_id, kind = "tcp");
    gw.tunnels.spawn(tracing::Instrument::instrument(
        tcp::pipe(fut, node, guard, ordered_close),
        span,
    ));
    resp
}

/// Admits a tunnel of `token` (see [`admit`]), opens its node side with
/// `node` and makes sure its session has a quota grant with room (asked
/// for now when it has none). A session the control plane says has ended
/// (an admin closed it while this gateway missed the event) is forgotten
/// with every answer routing to it, and the tunnel admitted once more:
/// the device gets a new session if it may, and no refusal.
async fn admitted<N, F, Fut>(
    gw: &Arc<Gateway>,
    token: &str,
    conn: Option<Conn>,
    ahead: bool,
    node: F,
) -> Result<(Arc<Route>, N, TunnelGuard), Response>
where
    F: Fn(Arc<Route>) -> Fut,
    Fut: std::future::Future<Output = Result<(Arc<Route>, N), Response>>,
{
    let peer = conn.as_ref().map(|c| c.peer);
    // The connection carries this request throughout, so a first try's
    // guard going does not make it a stranger again meanwhile.
    let _carrying = conn.as_ref().map(|c| c.stranger.carry());
    let mut again = true;
    loop {
        let (route, slot) = admit(gw, token, peer, ahead).await?;
        let (route, side) = node(route).await?;
        let guard = TunnelGuard::new(slot, &route.session_id, conn.clone());
        if guard.room().await {
            return Ok((route, side, guard));
        }
        let grant = &guard.session.grant;
        if grant.ended() {
            gw.validations.forget_ended(token, &guard.session_id);
            if std::mem::take(&mut again) {
                continue;
            }
        }
        let why = grant.denied().unwrap_or(Reason::QuotaExceeded);
        return Err(refusal_response(gw, Refusal::Refused(why), peer));
    }
}

/// What a session's grant says of the access document.
enum Standing {
    /// Nothing against it: room, no answer yet, or no reason given.
    Usable,
    /// The control plane refused more bytes, for this reason, and nothing
    /// was granted since.
    Refused(Reason),
    /// The control plane said the session has ended: it is forgotten with
    /// the answers routing to it, and the device's next route opens a new
    /// one.
    Ended,
}

/// The [`Standing`] of session `session_id`, to which `token` routed.
fn standing(gw: &Gateway, token: &str, session_id: &str) -> Standing {
    let Some(s) = gw.sessions.get(session_id) else {
        return Standing::Usable;
    };
    if s.grant.room(s.used(), clock_ms()) > 0 {
        return Standing::Usable;
    }
    if s.grant.ended() {
        gw.validations.forget_ended(token, session_id);
        return Standing::Ended;
    }
    s.grant.denied().map_or(Standing::Usable, Standing::Refused)
}

/// A UDP socket connected to the node of `route`.
async fn node_socket(route: &Route) -> Option<UdpSocket> {
    let node_addr = tokio::net::lookup_host(route.node.as_str())
        .await
        .ok()?
        .next()?;
    let bind: SocketAddr = if node_addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(node_addr).await.ok()?;
    Some(socket)
}

async fn ws_udp(
    State(gw): State<Arc<Gateway>>,
    path: Result<Path<String>, PathRejection>,
    mut req: Request,
) -> Response {
    let Some(token) = tunnel_request(path, &req) else {
        return not_found_response();
    };
    let conn = req.extensions().get::<Conn>().cloned();
    let peer = conn.as_ref().map(|c| c.peer);
    let gwr = &gw;
    let ahead = req.version() == axum::http::Version::HTTP_2;
    let opened = admitted(&gw, &token, conn, ahead, move |route| async move {
        match node_socket(&route).await {
            Some(socket) => Ok((route, socket)),
            None => Err(refusal_response(gwr, Refusal::Unavailable, peer)),
        }
    });
    let (route, socket, guard) = match opened.await {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let Some((resp, fut)) = upgrade::accept(&mut req) else {
        return not_found_response();
    };
    guard.opened();
    let span = tracing::debug_span!("tunnel", session.id = %route.session_id, kind = "udp");
    gw.tunnels.spawn(tracing::Instrument::instrument(
        udp::pipe(fut, socket, guard),
        span,
    ));
    resp
}

/// `GET /c/{token}`: the Outline dynamic access key document; a refused
/// device gets the document's error (status 200, the app shows it); an
/// unknown token gets the unknown path's answer.
async fn access_document(
    State(gw): State<Arc<Gateway>>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let (Ok(Path(token)), &Method::GET) = (path, req.method()) else {
        return not_found_response();
    };
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
    let mut route = gw.route(&token, peer(&req), false).await;
    if let Ok(r) = &route
        && let Standing::Ended = standing(&gw, &token, &r.session_id)
    {
        route = gw.route(&token, peer(&req), false).await;
    }
    match route {
        Ok(route) => match standing(&gw, &token, &route.session_id) {
            Standing::Refused(why) => yaml(refusal_yaml(why)),
            Standing::Usable | Standing::Ended => yaml(access_yaml(
                &gw.opts.public_url,
                &token,
                &route.method,
                route.password.expose(),
            )),
        },
        // What the subscriber can act on (renew, wait for the reset) is
        // told; a revoked device or a disabled account is answered as an
        // unknown token is, so the document cannot tell them apart.
        Err(Refusal::Refused(r)) if r.is_subscription() => yaml(refusal_yaml(r)),
        Err(Refusal::NoNode) => yaml(unavailable_yaml(Unavailable::NoNodeAvailable)),
        Err(r) => refusal_response(&gw, r, peer(&req)),
    }
}
