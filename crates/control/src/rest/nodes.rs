//! The Outline node routes: heartbeats, the node's witness of usage and
//! its own settings.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use httvps_wire::ErrorBody;
use httvps_wire::heartbeat::{HeartbeatResponse, OutlineBeat, OutlineConfig};
use httvps_wire::witness::{WitnessReport, WitnessResponse};

use super::ApiJson;
use super::caller::{Caller, caller};
use crate::catalogue;
use crate::db::models::OutlineNode;
use crate::error::AppError;
use crate::heartbeats;
use crate::node_assignment::HEARTBEAT_INTERVAL_SECS;
use crate::nodes::Machine;
use crate::state::AppState;
use crate::usage_accounting;

/// The calling Outline node; anyone else is forbidden.
async fn node_caller(state: &AppState, headers: &HeaderMap) -> Result<OutlineNode, AppError> {
    let Caller::Machine(m) = caller(state, headers).await? else {
        return Err(AppError::Forbidden);
    };
    let Machine::Outline(n) = *m else {
        return Err(AppError::Forbidden);
    };
    Ok(n)
}

/// Outline node liveness, load and traffic counters.
#[utoipa::path(post, path = "/api/v1/outline/heartbeat", request_body = OutlineBeat,
    responses((status = 200, body = HeartbeatResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn outline_heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<OutlineBeat>,
) -> Result<Json<HeartbeatResponse>, AppError> {
    let n = node_caller(&state, &headers).await?;
    let beat = body.read().await?;
    heartbeats::outline(&state.db, &n, &beat).await?;
    Ok(Json(HeartbeatResponse {
        close_sessions: vec![],
        heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
        public_url: None,
    }))
}

/// An Outline node reports its cumulative totals per session (a second
/// witness of usage; only for its own sessions) and asks which sessions its
/// new connections carry; idempotent.
#[utoipa::path(post, path = "/api/v1/outline/witness", request_body = WitnessReport,
    responses((status = 200, body = WitnessResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn outline_witness(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<WitnessReport>,
) -> Result<Json<WitnessResponse>, AppError> {
    let n = node_caller(&state, &headers).await?;
    let req = body.read().await?;
    let w = usage_accounting::witness::witness(&state.db, n.id, &req).await?;
    if let Some(id) = w.row {
        // Stored: applied by this pass or a later one.
        let _ = state.usage.submit(id).await;
    }
    Ok(Json(WitnessResponse {
        accepted: w.accepted,
        ties: w.ties,
    }))
}

/// An Outline node fetches its own settings (its key) with its token.
#[utoipa::path(get, path = "/api/v1/outline/config",
    responses((status = 200, body = OutlineConfig), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn outline_config(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<OutlineConfig>, AppError> {
    let n = node_caller(&state, &headers).await?;
    let region = catalogue::regions_by_ids(&state.db, &[n.region_id])
        .await?
        .into_iter()
        .next()
        .map(|r| r.code)
        .unwrap_or_default();
    Ok(Json(OutlineConfig {
        node_id: n.id.to_string(),
        host: n.host,
        port: n.port,
        method: n.method,
        secret: n.secret.into(),
        region,
    }))
}
