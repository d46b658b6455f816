//! Accounts over GraphQL: sign-up, log-in, the viewer.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::{GqlResultExt, SignedIn, viewer};
use crate::auth::jwt::{Audience, JwtKeys};
use crate::control::accounts::{self, Role};
use crate::db::Db;
use crate::db::models;
use crate::error::AppError;

/// An account.
#[derive(SimpleObject, Clone)]
pub struct User {
    /// Stable id.
    pub id: ID,
    /// Email address (lower case).
    pub email: String,
    /// Role.
    pub role: Role,
    /// `active` or `disabled`.
    pub status: String,
    /// When the account was created (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<models::User> for User {
    fn from(u: models::User) -> Self {
        User {
            id: ID(u.id),
            email: u.email,
            role: Role::parse(&u.role),
            status: u.status,
            created_at: u.created_at.and_utc(),
        }
    }
}

/// Tokens returned by `login`.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Short-lived access JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// The signed-in user.
    pub user: User,
}

/// Account queries.
#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The signed-in user.
    #[graphql(guard = "SignedIn")]
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let v = viewer(ctx)?;
        let db = ctx.data::<Db>()?;
        accounts::find_user(db, &v.user_id)
            .await
            .and_then(|u| u.ok_or(AppError::NotFound("user")))
            .map(User::from)
            .gql()
    }
}

/// Account mutations.
#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Creates a user account.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<User> {
        let db = ctx.data::<Db>()?;
        accounts::create_user(db, &email, &password, Role::User)
            .await
            .map(User::from)
            .gql()
    }

    /// Exchanges an email and password for an access token.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let db = ctx.data::<Db>()?;
        let jwt = ctx.data::<JwtKeys>()?;
        let user = accounts::authenticate(db, &email, &password).await.gql()?;
        let access_token = jwt
            .issue(
                Audience::Access,
                &user.id,
                user.token_version,
                Some(&user.role),
                jwt.access_ttl_secs,
            )
            .gql()?;
        Ok(AuthPayload {
            access_token,
            user: user.into(),
        })
    }
}
