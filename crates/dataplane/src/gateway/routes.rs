//! The gateway's routes: `/ws/{token}/tcp` and `/ws/{token}/udp` (checked
//! in full before anything is asked, routed, capped, then upgraded),
//! `/c/{token}` (the access document), and the same 404 for everything
//! else, unknown credentials included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::{TcpStream, UdpSocket};

use super::admission::{CapRefusal, Route};
use super::document::{access_yaml, refusal_yaml};
use super::tunnel::TunnelGuard;
use super::validator::Refusal;
use super::{Gateway, tcp, udp};

/// How long a node gets to take a connection.
const NODE_CONNECT: Duration = Duration::from_secs(5);

/// The public routes.
pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ws/{token}/tcp", get(ws_tcp))
        .route("/ws/{token}/udp", get(ws_udp))
        .route("/c/{token}", get(access_document))
        .fallback(not_found)
        .with_state(gw)
}

/// A refused request: a status and a fixed text.
struct Reject(StatusCode, &'static str);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

async fn not_found() -> Response {
    Reject(StatusCode::NOT_FOUND, "Not Found").into_response()
}

fn refusal_response(gw: &Gateway, r: Refusal) -> Reject {
    gw.metrics.refused();
    match r {
        Refusal::NotFound | Refusal::Refused(_) => Reject(StatusCode::NOT_FOUND, "Not Found"),
        Refusal::Unavailable => Reject(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
    }
}

/// Admits a tunnel: caps, then its place in the session.
fn admit(gw: &Arc<Gateway>, token: &str, session_id: &str) -> Result<TunnelGuard, Reject> {
    if let Err(refusal) = gw.admit(token) {
        gw.metrics.refused();
        return Err(match refusal {
            CapRefusal::Full => Reject(StatusCode::SERVICE_UNAVAILABLE, "Too many tunnels"),
            CapRefusal::DeviceFull => Reject(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many tunnels for this device",
            ),
        });
    }
    let session = gw.sessions.attach(session_id);
    Ok(TunnelGuard::new(gw.clone(), token.to_owned(), session))
}

/// Routes `token` and connects to its node; a node that does not answer
/// is reported at once and the route asked again (another node of the
/// pool may take it).
async fn connect_node(gw: &Gateway, token: &str) -> Result<(Arc<Route>, TcpStream), Reject> {
    for attempt in 0..2 {
        let route = gw.route(token).await.map_err(|r| refusal_response(gw, r))?;
        match tokio::time::timeout(NODE_CONNECT, TcpStream::connect(route.node.as_str())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                gw.beats.reachable(&route.node_id);
                return Ok((route, stream));
            }
            _ => {
                tracing::warn!(node.id = %route.node_id, attempt, "node unreachable");
                gw.beats.unreachable(&route.node_id);
                gw.validations.forget(token);
                // Tell the control plane now, so the retry gets another node.
                gw.heartbeat_once().await;
            }
        }
    }
    Err(refusal_response(gw, Refusal::Unavailable))
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
    State(gw): State<Arc<Gateway>>,
    Path(token): Path<String>,
    mut req: Request,
) -> Response {
    if !valid_upgrade(&req) {
        return not_found().await;
    }
    let token = credential(&req, token);
    let (route, node) = match connect_node(&gw, &token).await {
        Ok(x) => x,
        Err(reject) => return reject.into_response(),
    };
    let guard = match admit(&gw, &token, &route.session_id) {
        Ok(g) => g,
        Err(reject) => return reject.into_response(),
    };
    let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let span = tracing::debug_span!("tunnel", session.id = %route.session_id, kind = "tcp");
    gw.tunnels.spawn(tracing::Instrument::instrument(
        tcp::pipe(fut, node, guard),
        span,
    ));
    resp.into_response()
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
    Path(token): Path<String>,
    mut req: Request,
) -> Response {
    if !valid_upgrade(&req) {
        return not_found().await;
    }
    let token = credential(&req, token);
    let route = match gw.route(&token).await {
        Ok(r) => r,
        Err(r) => return refusal_response(&gw, r).into_response(),
    };
    let Some(socket) = node_socket(&route).await else {
        return refusal_response(&gw, Refusal::Unavailable).into_response();
    };
    let guard = match admit(&gw, &token, &route.session_id) {
        Ok(g) => g,
        Err(reject) => return reject.into_response(),
    };
    let Ok((resp, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let span = tracing::debug_span!("tunnel", session.id = %route.session_id, kind = "udp");
    gw.tunnels.spawn(tracing::Instrument::instrument(
        udp::pipe(fut, socket, guard),
        span,
    ));
    resp.into_response()
}

/// `GET /c/{token}`: the Outline dynamic access key document; a refused
/// device gets the document's error (status 200, the app shows it).
async fn access_document(State(gw): State<Arc<Gateway>>, Path(token): Path<String>) -> Response {
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
    match gw.route(&token).await {
        Ok(route) => yaml(access_yaml(
            &gw.opts.public_url,
            &token,
            &route.method,
            &route.password,
        )),
        Err(Refusal::Refused(r)) => yaml(refusal_yaml(r)),
        Err(r) => refusal_response(&gw, r).into_response(),
    }
}
