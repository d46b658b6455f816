//! The REST compatibility routes under `/api/v1/` that gateways, nodes and
//! clients call. Thin handlers over the use-case modules; one JSON error
//! envelope; the OpenAPI document is generated from these types.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use httvps_wire::device::{
    AssignResponse, DeviceInfo, DeviceRequest, DeviceTokenResponse, SubscriptionInfo,
    ValidateDeviceResponse,
};
use httvps_wire::heartbeat::{GatewayBeat, HeartbeatResponse, OutlineBeat, OutlineConfig};
use httvps_wire::usage::{UsageReport, UsageReportResponse};
use httvps_wire::{ErrorBody, HealthBody, Reason};
use utoipa::OpenApi;

use super::device_validation::{self, Verdict};
use super::heartbeats;
use super::node_assignment::{self, HEARTBEAT_INTERVAL_SECS};
use super::nodes::{self, Machine};
use super::usage_accounting;
use crate::auth::jwt::Audience;
use crate::context::bearer_token;
use crate::error::AppError;
use crate::state::AppState;

/// Lifetime of device JWTs, in seconds.
pub const DEVICE_JWT_TTL_SECS: i64 = 15 * 60;

/// The `/api/v1` routes (health is served by the HTTP module).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/validate-device", post(validate_device))
        .route("/api/v1/auth/device-token", post(device_token))
        .route("/api/v1/nodes/assign-outline", post(assign_outline))
        .route("/api/v1/usage/report", post(usage_report))
        .route("/api/v1/gateway/heartbeat", post(gateway_heartbeat))
        .route("/api/v1/gateway/access-events", get(access_events))
        .route("/api/v1/outline/heartbeat", post(outline_heartbeat))
        .route("/api/v1/outline/config", get(outline_config))
        .route("/api/v1/openapi.json", get(openapi_json))
}

/// A JSON body whose every rejection (malformed, wrong types, unknown
/// fields, wrong content type) is a 400 in our error envelope.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(AppError::bad("the body must be application/json"))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(AppError::bad(format!("invalid body: {}", e.body_text())))
            }
            Err(JsonRejection::JsonSyntaxError(_)) => {
                Err(AppError::bad("the body is not valid JSON"))
            }
            Err(e) => Err(AppError::bad(format!("unreadable body: {}", e.body_text()))),
        }
    }
}

/// Who is calling a machine route.
enum Caller {
    Machine(Box<Machine>),
    /// A device, by the id in its device JWT.
    Device(String),
}

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, AppError> {
    caller_with(state, headers, false).await
}

/// `cached`: the hot routes (validate, assign) may trust a machine token
/// authenticated in the last few seconds; writes about a node's own state
/// (heartbeats, usage) always read it fresh.
async fn caller_with(
    state: &AppState,
    headers: &HeaderMap,
    cached: bool,
) -> Result<Caller, AppError> {
    let token = bearer_token(headers)?.ok_or(AppError::Unauthenticated)?;
    if token.contains('.') {
        let claims = state.api.jwt.verify(Audience::Device, token)?;
        return Ok(Caller::Device(claims.sub));
    }
    let machine = if cached {
        state.api.machines.authenticate(&state.db, token).await?
    } else {
        nodes::authenticate_machine(&state.db, token).await?
    };
    Ok(Caller::Machine(Box::new(machine)))
}

async fn gateway_caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<crate::db::models::GatewayNode, AppError> {
    match caller(state, headers).await? {
        Caller::Machine(m) => match *m {
            Machine::Gateway(g) => Ok(g),
            Machine::Outline(_) => Err(AppError::Forbidden),
        },
        Caller::Device(_) => Err(AppError::Forbidden),
    }
}

async fn verdict_for(
    state: &AppState,
    caller: &Caller,
    req: &DeviceRequest,
) -> Result<Verdict, AppError> {
    match caller {
        Caller::Device(id) => device_validation::by_device_id(&state.db, id).await,
        Caller::Machine(m) if matches!(**m, Machine::Gateway(_)) => {
            if let Some(jwt) = req.device_jwt.as_deref() {
                let claims = state.api.jwt.verify(Audience::Device, jwt)?;
                return device_validation::by_device_id(&state.db, &claims.sub).await;
            }
            let token = req
                .device_token
                .as_deref()
                .ok_or_else(|| AppError::bad("device_token or device_jwt is required"))?;
            device_validation::by_token(&state.db, token).await
        }
        Caller::Machine(_) => Err(AppError::Forbidden),
    }
}

/// Checks a device: exists, not revoked, owner active, subscription active
/// and within quota.
#[utoipa::path(post, path = "/api/v1/auth/validate-device", request_body = DeviceRequest,
    responses((status = 200, body = ValidateDeviceResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn validate_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<DeviceRequest>,
) -> Result<Json<ValidateDeviceResponse>, AppError> {
    let caller = caller_with(&state, &headers, true).await?;
    let v = verdict_for(&state, &caller, &req).await?;
    Ok(Json(ValidateDeviceResponse {
        valid: v.valid(),
        reason: v.reason,
        device: v.device.map(|d| DeviceInfo {
            id: d.id,
            user_id: d.user_id,
            name: d.name,
            status: d.status,
        }),
        subscription: v.subscription.map(|s| SubscriptionInfo {
            id: s.id,
            status: s.status,
            expires_at: s.expires_at.and_utc(),
            traffic_used_bytes: s.traffic_used_bytes,
            traffic_limit_bytes: s.traffic_limit_bytes,
        }),
    }))
}

/// Exchanges a device's access token (as `Authorization: Bearer`) for a
/// short-lived device JWT.
#[utoipa::path(post, path = "/api/v1/auth/device-token",
    responses((status = 200, body = DeviceTokenResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn device_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DeviceTokenResponse>, AppError> {
    let token = bearer_token(&headers)?.ok_or(AppError::Unauthenticated)?;
    let v = device_validation::by_token(&state.db, token).await?;
    let device = match (v.reason, v.device) {
        (None, Some(d)) => d,
        (Some(Reason::DeviceUnknown), _) | (None, None) => return Err(AppError::Unauthenticated),
        (Some(r), _) => return Err(AppError::DeviceRefused(r)),
    };
    let token = state
        .api
        .jwt
        .issue(Audience::Device, &device.id, 0, None, DEVICE_JWT_TTL_SECS)?;
    Ok(Json(DeviceTokenResponse {
        token: token.into(),
        expires_in: DEVICE_JWT_TTL_SECS,
    }))
}

/// Picks a node for the device and opens or reuses its session.
#[utoipa::path(post, path = "/api/v1/nodes/assign-outline", request_body = DeviceRequest,
    responses((status = 200, body = AssignResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn assign_outline(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<DeviceRequest>,
) -> Result<Json<AssignResponse>, AppError> {
    let caller = caller_with(&state, &headers, true).await?;
    let verdict = verdict_for(&state, &caller, &req).await?;
    let gateway = match &caller {
        Caller::Machine(m) => match &**m {
            Machine::Gateway(g) => Some(g),
            Machine::Outline(_) => None,
        },
        Caller::Device(_) => None,
    };
    let valid_until = verdict
        .subscription
        .as_ref()
        .map(|s| s.expires_at.and_utc());
    let a =
        node_assignment::validate_and_assign(&state.db, verdict, gateway, req.region.as_deref())
            .await?;
    let (host, port, gateway_url) = match gateway {
        Some(_) => (Some(a.node.host.clone()), Some(a.node.port), None),
        None => {
            let url = super::devices::entry_point(&state.db, state.api.gateway_url.as_deref())
                .await?
                .map(|(u, _)| u);
            (None, None, url)
        }
    };
    Ok(Json(AssignResponse {
        session_id: a.session.id,
        node_id: gateway.map(|_| a.node.id.clone()),
        device_id: gateway.map(|_| a.session.device_id),
        host,
        port,
        gateway_url,
        method: a.node.method,
        password: a.node.secret.into(),
        region: a.region.code,
        pool_key: a.node.uses_pool_key,
        valid_until,
    }))
}

/// Gateways report cumulative byte totals per session; idempotent.
#[utoipa::path(post, path = "/api/v1/usage/report", request_body = UsageReport,
    responses((status = 200, body = UsageReportResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn usage_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UsageReport>,
) -> Result<Json<UsageReportResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let received = usage_accounting::receive(&state.db, &g.id, &req.reports).await?;
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

/// Access events for gateways, as newline-delimited JSON: a `hello` line at
/// once, an `access` line whenever someone's right to connect shrinks
/// (drop cached validations, heartbeat now), a `keepalive` line every 15 s.
/// The stream ends when the server shuts down; gateways reconnect.
#[utoipa::path(get, path = "/api/v1/gateway/access-events",
    responses((status = 200, description = "Newline-delimited JSON events", content_type = "application/x-ndjson"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn access_events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::response::Response, AppError> {
    gateway_caller(&state, &headers).await?;
    let events = state.api.events.subscribe_access();
    let closing = state.closing.subscribe();
    let lines = futures_util::stream::unfold(
        (events, closing, true),
        |(mut events, mut closing, first)| async move {
            use tokio::sync::broadcast::error::RecvError;
            let line = if first {
                httvps_wire::events::HELLO_LINE.to_owned()
            } else if *closing.borrow() {
                return None;
            } else {
                tokio::select! {
                    _ = closing.changed() => return None,
                    got = tokio::time::timeout(ACCESS_KEEPALIVE, events.recv()) => match got {
                        Err(_) => httvps_wire::events::KEEPALIVE_LINE.to_owned(),
                        Ok(Ok(ev)) => serde_json::to_string(&ev).unwrap_or_default(),
                        // Missed some: as good as an event.
                        Ok(Err(RecvError::Lagged(_))) => httvps_wire::events::LAGGED_LINE.to_owned(),
                        Ok(Err(RecvError::Closed)) => return None,
                    },
                }
            };
            let bytes = bytes::Bytes::from(line + "\n");
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (events, closing, false),
            ))
        },
    );
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

/// How often the access-event stream says it is alive.
const ACCESS_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Gateway liveness and load; answers with sessions to close.
#[utoipa::path(post, path = "/api/v1/gateway/heartbeat", request_body = GatewayBeat,
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn gateway_heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(beat): ApiJson<GatewayBeat>,
) -> Result<Json<HeartbeatResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let close = heartbeats::gateway(&state.db, &state.api.events, &g, &beat).await?;
    Ok(Json(HeartbeatResponse {
        close_sessions: close,
        heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
    }))
}

/// Outline node liveness, load and traffic counters.
#[utoipa::path(post, path = "/api/v1/outline/heartbeat", request_body = OutlineBeat,
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn outline_heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(beat): ApiJson<OutlineBeat>,
) -> Result<Json<HeartbeatResponse>, AppError> {
    let Caller::Machine(m) = caller(&state, &headers).await? else {
        return Err(AppError::Forbidden);
    };
    let Machine::Outline(n) = *m else {
        return Err(AppError::Forbidden);
    };
    heartbeats::outline(&state.db, &state.api.events, &n, &beat).await?;
    Ok(Json(HeartbeatResponse {
        close_sessions: vec![],
        heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
    }))
}

/// An Outline node fetches its own settings (its key) with its token.
#[utoipa::path(get, path = "/api/v1/outline/config",
    responses((status = 200, body = OutlineConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn outline_config(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<OutlineConfig>, AppError> {
    let Caller::Machine(m) = caller(&state, &headers).await? else {
        return Err(AppError::Forbidden);
    };
    let Machine::Outline(n) = *m else {
        return Err(AppError::Forbidden);
    };
    let region = super::catalogue::regions_by_ids(&state.db, std::slice::from_ref(&n.region_id))
        .await?
        .into_iter()
        .next()
        .map(|r| r.code)
        .unwrap_or_default();
    Ok(Json(OutlineConfig {
        node_id: n.id,
        host: n.host,
        port: n.port,
        method: n.method,
        secret: n.secret.into(),
        region,
    }))
}

/// Readiness of the control plane and its database.
#[utoipa::path(get, path = "/api/v1/health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
#[expect(dead_code, reason = "documents the route served by the HTTP module")]
fn health_doc() {}

/// The OpenAPI document of the `/api/v1` routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "httvps control plane: gateway and node API",
        description = "Machine callers send `Authorization: Bearer <node token>`; devices send `Authorization: Bearer <device JWT>` (from /api/v1/auth/device-token). Every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        health_doc,
        validate_device,
        device_token,
        assign_outline,
        usage_report,
        gateway_heartbeat,
        access_events,
        outline_heartbeat,
        outline_config
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (served, and committed as `docs/openapi.json`).
pub fn openapi_json_text() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
}
