//! The device routes: validate-device, the device-token exchange and
//! assign-outline.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use httvps_wire::device::{
    AssignResponse, DeviceInfo, DeviceRequest, DeviceTokenResponse, SubscriptionInfo,
    ValidateDeviceResponse,
};
use httvps_wire::{ErrorBody, Reason};

use super::caller::{caller_with, verdict_for};
use super::{ApiJson, DEVICE_JWT_TTL_SECS};
use crate::auth;
use crate::auth::jwt::Audience;
use crate::context::bearer_token;
use crate::devices;
use crate::error::AppError;
use crate::node_assignment;
use crate::state::AppState;

/// Checks a device: exists, not revoked, owner active, subscription active
/// and within quota.
#[utoipa::path(post, path = "/api/v1/auth/validate-device", request_body = DeviceRequest,
    responses((status = 200, body = ValidateDeviceResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn validate_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<DeviceRequest>,
) -> Result<Json<ValidateDeviceResponse>, AppError> {
    let caller = caller_with(&state, &headers, true).await?;
    let req = body.read().await?;
    let v = verdict_for(&state, &caller, &req).await?;
    Ok(Json(ValidateDeviceResponse {
        valid: v.valid(),
        reason: v.reason,
        device: v.device.map(|d| DeviceInfo {
            id: d.id.to_string(),
            user_id: d.user_id.to_string(),
            name: d.name,
            status: d.status.as_str().to_owned(),
        }),
        subscription: v.subscription.map(|s| SubscriptionInfo {
            id: s.id.to_string(),
            status: s.status.as_str().to_owned(),
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
pub(super) async fn device_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<DeviceTokenResponse>, AppError> {
    let token = bearer_token(&headers)?.ok_or(AppError::Unauthenticated)?;
    let device = match state.api.tokens.check(&state.db, token).await?.admitted() {
        Ok(d) => d,
        Err(Reason::DeviceUnknown) => return Err(AppError::Unauthenticated),
        Err(r) => return Err(AppError::DeviceRefused(r)),
    };
    state.api.proven.prove(token, std::time::Instant::now());
    state.api.throttles.device_jwt(&device.id.to_string())?;
    let token = state.api.jwt.issue(
        Audience::Device,
        &device.id.to_string(),
        auth::token_generation(device.token_hash.expose()),
        None,
        DEVICE_JWT_TTL_SECS,
    )?;
    // Its first use may come from a source shut out for guessing.
    state.api.proven.prove(&token, std::time::Instant::now());
    Ok(Json(DeviceTokenResponse {
        token: token.into(),
        expires_in: DEVICE_JWT_TTL_SECS,
    }))
}

/// Picks a node for the device and opens or reuses its session.
#[utoipa::path(post, path = "/api/v1/nodes/assign-outline", request_body = DeviceRequest,
    responses((status = 200, body = AssignResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub(super) async fn assign_outline(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<DeviceRequest>,
) -> Result<Json<AssignResponse>, AppError> {
    let caller = caller_with(&state, &headers, true).await?;
    let req = body.read().await?;
    let verdict = verdict_for(&state, &caller, &req).await?;
    let gateway = caller.gateway();
    let valid_until = verdict
        .subscription
        .as_ref()
        .map(|s| s.expires_at.and_utc());
    let a = node_assignment::validate_and_assign(
        &state.db,
        &state.api.opener,
        verdict,
        gateway,
        req.region.as_deref(),
        state.api.gateway_url.as_deref(),
    )
    .await?;
    let (host, port, gateway_url) = match gateway {
        Some(_) => (Some(a.node.host.clone()), Some(a.node.port), None),
        None => {
            // A gateway of the assigned region: the key answered is one
            // that gateway's nodes hold.
            let url =
                devices::gateway_url_for(&state.db, state.api.gateway_url.as_deref(), a.region.id)
                    .await?;
            (None, None, url)
        }
    };
    Ok(Json(AssignResponse {
        session_id: a.session.id.to_string(),
        node_id: gateway.map(|_| a.node.id.to_string()),
        device_id: gateway.map(|_| a.session.device_id.to_string()),
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
