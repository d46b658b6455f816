//! The quota grant route: a gateway asks for the next slice of a
//! session's allowance, or gives back what it did not use.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use httvps_wire::ErrorBody;
use httvps_wire::grant::{GrantRequest, GrantResponse};

use super::ApiJson;
use super::caller::gateway_caller;
use crate::error::AppError;
use crate::state::AppState;
use crate::usage_accounting::grant_store;

/// A gateway asks for a slice of a session's remaining allowance (a
/// cumulative byte limit and how long it holds), or with `release` gives
/// back what the session did not use. Grants of one subscription never
/// hold more than it has left, across all its gateways and sessions. A
/// limit equal to `used` grants nothing more (`reason` says why).
#[utoipa::path(post, path = "/api/v1/quota/grant", request_body = GrantRequest,
    responses((status = 200, body = GrantResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn quota_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: ApiJson<GrantRequest>,
) -> Result<Json<GrantResponse>, AppError> {
    let g = gateway_caller(&state, &headers).await?;
    let req = body.read().await?;
    Ok(Json(grant_store::grant(&state.db, g.id, &req).await?))
}
