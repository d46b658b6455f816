//! The application context every request handler gets (database with its
//! events, keys, caches), and who is calling: the signed-in [`Viewer`]
//! resolved from an access JWT, or a device on the live socket.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::accounts;
use crate::actor::Actor;
use crate::auth::jwt::{Audience, JwtKeys};
use crate::db::Db;
use crate::error::AppError;
use crate::ids::{DeviceId, UserId};
use crate::nodes::MachineCache;
use crate::status::{Role, UserStatus};
use crate::throttle::Throttles;

/// What handlers need, shared by every request. Cheap to clone (one
/// reference count); its parts are read through `Deref`.
#[derive(Clone)]
pub struct AppContext(Arc<ContextParts>);

impl AppContext {
    /// The context of `parts`.
    pub fn new(parts: ContextParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppContext {
    type Target = ContextParts;

    fn deref(&self) -> &ContextParts {
        &self.0
    }
}

/// What an [`AppContext`] holds.
pub struct ContextParts {
    /// The database (and this process's event fan-out, [`Db::events`]).
    pub db: Db,
    /// Token keys.
    pub jwt: JwtKeys,
    /// Public URL of the gateway devices connect through, if configured.
    pub gateway_url: Option<String>,
    /// Recently authenticated machine tokens.
    pub machines: MachineCache,
    /// Where enrollment strings send machines (`BACKEND_PUBLIC_URL`); none:
    /// registrations return no string.
    pub enroll: Option<crate::nodes::enrollment::EnrollTarget>,
    /// Allowances against guessing and flooding.
    pub throttles: Arc<Throttles>,
    /// Credentials authenticated recently (they pass a shut-out source's
    /// throttle; see [`crate::proven`]).
    pub proven: crate::proven::Proven,
    /// Opens sessions of concurrent assignments in shared transactions.
    pub opener: crate::node_assignment::Opener,
    /// Checks forwarded access tokens, several in one query.
    pub tokens: crate::access::TokenChecks,
}

/// Who is calling: resolved once per request from the access token.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user's id.
    pub user_id: UserId,
    /// The user's role.
    pub role: Role,
    /// The sign-in (refresh-token family) the access token was issued in.
    pub family: String,
}

impl Viewer {
    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The viewer as the actor of a use case.
    pub fn actor(&self) -> Actor {
        Actor::Account {
            user_id: self.user_id,
            role: self.role,
        }
    }
}

/// A device client on `/graphql/ws` (authenticated by its access token):
/// it may follow node events and nothing else.
#[derive(Debug, Clone)]
pub struct DeviceViewer {
    /// The device's id.
    pub device_id: DeviceId,
}

/// The bearer token of a request, if any; a malformed header is an error.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(httvps_wire::token::bearer)
        .map(Some)
        .ok_or(AppError::Unauthenticated)
}

/// Checks an access JWT and the user behind it (active, token version
/// current, the refresh-token family it was issued in not revoked).
pub async fn viewer_from_token(api: &AppContext, token: &str) -> Result<Viewer, AppError> {
    viewer_until(api, token).await.map(|(viewer, _)| viewer)
}

/// [`viewer_from_token`], with the token's expiry (seconds since the epoch).
pub async fn viewer_until(api: &AppContext, token: &str) -> Result<(Viewer, i64), AppError> {
    let claims = api.jwt.verify(Audience::Access, token)?;
    let id: UserId = claims.sub.parse().map_err(|_| AppError::Unauthenticated)?;
    let family = claims.fam.as_deref().ok_or(AppError::Unauthenticated)?;
    let user = accounts::signed_in_user(&api.db, id, family)
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if user.status != UserStatus::Active || user.token_version != claims.ver {
        return Err(AppError::Unauthenticated);
    }
    Ok((
        Viewer {
            user_id: user.id,
            role: user.role,
            family: family.to_owned(),
        },
        claims.exp,
    ))
}
