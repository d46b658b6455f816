//! The gateway routes: usage reports, the access-event stream and
//! heartbeats.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use httvps_wire::ErrorBody;
use httvps_wire::heartbeat::{GatewayBeat, HeartbeatResponse};
use httvps_wire::usage::{UsageReport, UsageReportResponse};
use httvps_wire::witness::{SessionLinks, SessionLinksResponse};

use super::ApiJson;
use super::caller::gateway_caller;
use crate::error::AppError;
use crate::heartbeats;
use crate::node_assignment::HEARTBEAT_INTERVAL_SECS;
use crate::state::AppState;
use crate::usage_accounting;

/// How often the access-event stream says it is alive.
const ACCESS_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Gateways report cumulative byte totals per session; idempotent. A
/// report naming a session the control plane does not know, or another
/// gateway's, is refused whole with 404 (nothing stored): the gateway
/// drops those totals and reports the rest. 403 is a disabled gateway's.
#[utoipa::path(post, path = "/api/v1/usage/report", request_body = UsageReport,
    responses((status = 200, body = UsageReportResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn usage_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<UsageReport>,
) -> Result<Json<UsageReportResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let req = body.read().await?;
    let received = usage_accounting::receive(&state.db, g.id, &req.reports).await?;
    let mut close_sessions = received.close;
    let (applied, counted) = match received.id {
        None => (true, 0),
        Some(id) => match state.usage.submit(id).await {
            Some(outcome) => {
                close_sessions.extend(outcome.close);
                (true, outcome.counted)
            }
            None => (false, 0),
        },
    };
    Ok(Json(UsageReportResponse {
        accepted: received.accepted,
        applied,
        counted,
        close_sessions,
    }))
}

/// Gateways say which of their connections to a node (by local address)
/// carries which session, so the node can count those connections for it.
#[utoipa::path(post, path = "/api/v1/usage/links", request_body = SessionLinks,
    responses((status = 200, body = SessionLinksResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn usage_links(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<SessionLinks>,
) -> Result<Json<SessionLinksResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let req = body.read().await?;
    let accepted = usage_accounting::witness::link(&state.db, g.id, &req.links).await?;
    Ok(Json(SessionLinksResponse { accepted }))
}

/// Access events for gateways, as newline-delimited JSON: a `hello` line at
/// once, an `access` line whenever someone's right to connect shrinks
/// (drop cached validations, heartbeat now; one naming a node drops only
/// the answers routing to it, one listing `regrant` sessions asks for
/// their quota grants again), a `keepalive` line every 15 s. The
/// gateway's token is checked again before every line after the `hello`
/// (events that arrived together share one check): once it is retired, or
/// the gateway disabled or deleted, the stream ends without another line.
/// It also ends when the server shuts down; gateways reconnect.
#[utoipa::path(get, path = "/api/v1/gateway/access-events",
    responses((status = 200, description = "Newline-delimited JSON events", content_type = "application/x-ndjson"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn access_events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::response::Response, AppError> {
    let gateway = gateway_caller(&state, &headers).await?;
    let token = crate::context::bearer_token(&headers)?
        .ok_or(AppError::Unauthenticated)?
        .to_owned();
    let stream = AccessStream {
        events: state.db.events().subscribe_access(),
        closing: state.closing.subscribe(),
        db: state.db.clone(),
        token,
        gateway: gateway.id.uuid(),
        first: true,
    };
    let lines = futures_util::stream::unfold(stream, |mut s| async move {
        let line = s.next().await?;
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
            s,
        ))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

/// Most events sent after one check of the gateway's token.
const EVENTS_PER_CHECK: usize = 64;

/// One gateway's access-event stream (see [`access_events`]).
struct AccessStream {
    events: tokio::sync::broadcast::Receiver<crate::events::AccessEvent>,
    closing: tokio::sync::watch::Receiver<bool>,
    db: crate::db::Db,
    token: String,
    gateway: uuid::Uuid,
    first: bool,
}

impl AccessStream {
    /// The next lines to send (each ending in a newline), or `None` when
    /// the stream ends.
    async fn next(&mut self) -> Option<String> {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        if std::mem::take(&mut self.first) {
            return Some(format!("{}\n", httvps_wire::events::HELLO_LINE));
        }
        if *self.closing.borrow() {
            return None;
        }
        let first = tokio::select! {
            _ = self.closing.changed() => return None,
            got = tokio::time::timeout(ACCESS_KEEPALIVE, self.events.recv()) => match got {
                Err(_) => httvps_wire::events::KEEPALIVE_LINE.to_owned(),
                Ok(Ok(ev)) => serde_json::to_string(&ev).unwrap_or_default(),
                // Missed some: as good as an event.
                Ok(Err(RecvError::Lagged(_))) => httvps_wire::events::LAGGED_LINE.to_owned(),
                Ok(Err(RecvError::Closed)) => return None,
            },
        };
        let mut lines = first + "\n";
        for _ in 1..EVENTS_PER_CHECK {
            let line = match self.events.try_recv() {
                Ok(ev) => serde_json::to_string(&ev).unwrap_or_default(),
                Err(TryRecvError::Lagged(_)) => httvps_wire::events::LAGGED_LINE.to_owned(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            };
            lines.push_str(&line);
            lines.push('\n');
        }
        // Nothing more for a credential retired meanwhile. A database that
        // cannot answer does not end the stream (the gateway would take
        // the reconnection for missed events and drop its whole cache):
        // no change can be committed meanwhile either.
        match crate::nodes::authenticate_machine(&self.db, &self.token).await {
            Ok(m) => (m.id() == self.gateway).then_some(lines),
            Err(AppError::Unauthenticated | AppError::Forbidden) => None,
            Err(_) => Some(lines),
        }
    }
}

/// Gateway liveness and load; answers with sessions to close.
#[utoipa::path(post, path = "/api/v1/gateway/heartbeat", request_body = GatewayBeat,
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn gateway_heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<GatewayBeat>,
) -> Result<Json<HeartbeatResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let beat = body.read().await?;
    let close = heartbeats::gateway(&state.db, &g, &beat).await?;
    Ok(Json(HeartbeatResponse {
        close_sessions: close,
        heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
        public_url: Some(g.public_url.clone()),
    }))
}
