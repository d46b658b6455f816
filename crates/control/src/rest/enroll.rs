//! Enrollment: a new gateway or node redeems its one-time token.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use httvps_wire::ErrorBody;
use httvps_wire::enroll::EnrollResponse;

use crate::context::bearer_token;
use crate::error::AppError;
use crate::nodes::enrollment;
use crate::state::AppState;

/// Who redeems: `kind`, the machine's kind (`gateway` or `node`), when it
/// says.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Redeemer {
    kind: Option<String>,
}

/// Trades the one-time token of an enrollment string (as the bearer) for
/// the machine's own token; the one-time token stops working, so a second
/// redemption gets 401, as does a string past its lifetime (24 h unless
/// its issuer chose 1 to 720 h) that was neither redeemed nor used, and a
/// machine's own token (it is not a string's). A machine that names its
/// `kind` is refused (403) a string issued for the other kind, which stays
/// unspent.
#[utoipa::path(post, path = "/api/v1/enroll",
    params(("kind" = Option<String>, Query, description = "The redeeming machine's kind: `gateway` or `node`")),
    responses((status = 200, body = EnrollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn enroll(
    State(state): State<AppState>,
    redeemer: Result<Query<Redeemer>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<EnrollResponse>, AppError> {
    let Ok(Query(redeemer)) = redeemer else {
        return Err(AppError::bad("the only parameter is kind: gateway or node"));
    };
    let kind = match redeemer.kind.as_deref() {
        None => None,
        Some(k @ ("gateway" | "node")) => Some(k),
        Some(_) => return Err(AppError::bad("kind is gateway or node")),
    };
    let token = bearer_token(&headers)?.ok_or(AppError::Unauthenticated)?;
    let e = enrollment::redeem(&state.db, token, kind).await?;
    tracing::info!(node.kind = e.kind, node.id = %e.id, "enrolled");
    // The machine's first calls may come from a source shut out for
    // guessing (it redeemed a good string from there).
    state.api.proven.prove(&e.token, std::time::Instant::now());
    Ok(Json(EnrollResponse {
        kind: e.kind.to_owned(),
        id: e.id,
        name: e.name,
        token: e.token.into(),
    }))
}
