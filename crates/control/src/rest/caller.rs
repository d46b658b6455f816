//! Who is calling a machine route: a gateway or node by its token (the hot
//! routes may trust one authenticated seconds ago), or a device by the id
//! in its device JWT; and the device a route is about.

use axum::http::HeaderMap;
use httvps_wire::device::DeviceRequest;

use crate::access::{self, Verdict};
use crate::auth;
use crate::auth::jwt::Audience;
use crate::context::bearer_token;
use crate::db::models::{GatewayNode, now};
use crate::error::AppError;
use crate::ids::DeviceId;
use crate::nodes::{self, Machine};
use crate::state::AppState;

/// Who is calling a machine route.
pub(super) enum Caller {
    /// A gateway or node.
    Machine(Box<Machine>),
    /// A device, by the subject of its device JWT and the generation of
    /// the access token it was exchanged for.
    Device(String, i64),
}

impl Caller {
    /// The calling gateway, if it is one.
    pub(super) fn gateway(&self) -> Option<&GatewayNode> {
        match self {
            Caller::Machine(m) => match &**m {
                Machine::Gateway(g) => Some(g),
                Machine::Outline(_) => None,
            },
            Caller::Device(..) => None,
        }
    }
}

/// The caller, its machine token always read fresh.
pub(super) async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, AppError> {
    caller_with(state, headers, false).await
}

/// `cached`: the hot routes (validate, assign) may trust a machine token
/// authenticated in the last few seconds; writes about a node's own state
/// (heartbeats, usage) always read it fresh.
pub(super) async fn caller_with(
    state: &AppState,
    headers: &HeaderMap,
    cached: bool,
) -> Result<Caller, AppError> {
    let token = bearer_token(headers)?.ok_or(AppError::Unauthenticated)?;
    if token.contains('.') {
        let claims = state.api.jwt.verify(Audience::Device, token)?;
        state.api.proven.prove(token, std::time::Instant::now());
        return Ok(Caller::Device(claims.sub, claims.ver));
    }
    let machine = if cached {
        state.api.machines.authenticate(&state.db, token).await?
    } else {
        nodes::authenticate_machine(&state.db, token).await?
    };
    state.api.proven.prove(token, std::time::Instant::now());
    Ok(Caller::Machine(Box::new(machine)))
}

/// The calling gateway; anyone else is forbidden.
pub(super) async fn gateway_caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<GatewayNode, AppError> {
    match caller(state, headers).await? {
        Caller::Machine(m) => match *m {
            Machine::Gateway(g) => Ok(g),
            Machine::Outline(_) => Err(AppError::Forbidden),
        },
        Caller::Device(..) => Err(AppError::Forbidden),
    }
}

/// Checks the device a device JWT names (a subject that is no id names no
/// device). A JWT exchanged for an access token since rotated names no
/// device either: rotation retires both credentials.
async fn by_subject(state: &AppState, sub: &str, generation: i64) -> Result<Verdict, AppError> {
    let Ok(id) = sub.parse::<DeviceId>() else {
        return Ok(Verdict::of(None, now()));
    };
    let verdict = access::check_device(&state.db, id).await?;
    match &verdict.device {
        Some(d) if auth::token_generation(d.token_hash.expose()) != generation => {
            Ok(Verdict::of(None, now()))
        }
        _ => Ok(verdict),
    }
}

/// The verdict on the device a request is about: the calling device
/// itself, or for a gateway the device of the token or JWT it forwards.
pub(super) async fn verdict_for(
    state: &AppState,
    caller: &Caller,
    req: &DeviceRequest,
) -> Result<Verdict, AppError> {
    if let Some(field) = req.too_long() {
        return Err(AppError::bad(format!(
            "{field} must have at most {} characters",
            httvps_wire::device::MAX_CREDENTIAL_LEN
        )));
    }
    match caller {
        Caller::Device(sub, generation) => by_subject(state, sub, *generation).await,
        Caller::Machine(m) if matches!(**m, Machine::Gateway(_)) => {
            if let Some(jwt) = req.device_jwt.as_deref() {
                // A forwarded JWT that is not ours names no device, as an
                // unknown forwarded token does: the gateway's own credential
                // is good, so its request is no 401 (which would count
                // against the gateway's address as a guess of its own).
                let Ok(claims) = state.api.jwt.verify(Audience::Device, jwt) else {
                    return Ok(Verdict::of(None, now()));
                };
                return by_subject(state, &claims.sub, claims.ver).await;
            }
            let token = req
                .device_token
                .as_deref()
                .ok_or_else(|| AppError::bad("device_token or device_jwt is required"))?;
            state.api.tokens.check(&state.db, token).await
        }
        Caller::Machine(_) => Err(AppError::Forbidden),
    }
}
