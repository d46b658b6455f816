//! Accounts over GraphQL: sign-up, log-in with rotating refresh tokens,
//! log-out, the viewer, and admin user management.

use async_graphql::connection::Connection;
use async_graphql::{Context, InputObject, Object, SimpleObject};
use uuid::Uuid;

use super::counts::{Counted, counted_connection};
use super::{AdminOnly, AppContext, GqlResultExt, SignedIn, actor, viewer};
use crate::accounts::{self, Role, UserFilter, UserStatus};
use crate::db::models::{self, SecretText};
use crate::error::AppError;
use crate::pagination::PageArgs;
use crate::throttle::ClientAddr;

/// Where the request comes from, for the throttles (unknown in process).
fn client_addr(ctx: &Context<'_>) -> ClientAddr {
    ctx.data_opt::<ClientAddr>()
        .copied()
        .unwrap_or(ClientAddr(None))
}

/// An account.
#[derive(SimpleObject, Clone, Debug)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Email address (lower case).
    pub email: String,
    /// Role.
    pub role: Role,
    /// Whether the account may sign in.
    pub status: UserStatus,
    /// When the account was created (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<models::User> for User {
    fn from(u: models::User) -> Self {
        User {
            id: u.id.uuid(),
            email: u.email,
            role: u.role,
            status: u.status,
            created_at: u.created_at.and_utc(),
        }
    }
}

/// Tokens returned by `login` and `refreshToken`.
#[derive(SimpleObject, Debug)]
pub struct AuthPayload {
    /// Short-lived access JWT for `Authorization: Bearer`.
    pub access_token: SecretText,
    /// Single-use refresh token: exchange it with `refreshToken` for new tokens.
    pub refresh_token: SecretText,
    /// The signed-in user.
    pub user: User,
}

impl From<accounts::Tokens> for AuthPayload {
    fn from(t: accounts::Tokens) -> Self {
        AuthPayload {
            access_token: t.access_token.into(),
            refresh_token: t.refresh_token.into(),
            user: t.user.into(),
        }
    }
}

/// Filters on `users`.
#[derive(InputObject, Default)]
pub struct UserFilterInput {
    /// Only this role.
    pub role: Option<Role>,
    /// Only this status.
    pub status: Option<UserStatus>,
    /// Emails containing this text.
    pub email_contains: Option<String>,
    /// This email exactly, compared as sign-in compares it (case and
    /// Unicode normalisation, addresses stored under earlier rules
    /// included); one with control characters is BAD_REQUEST.
    pub email: Option<String>,
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
        let api = ctx.data::<AppContext>()?;
        accounts::find_user(&api.db, v.user_id)
            .await
            .and_then(|u| u.ok_or(AppError::NotFound("user")))
            .map(User::from)
            .gql()
    }

    /// Admin: users, oldest first.
    #[graphql(guard = "AdminOnly")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        filter: Option<UserFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, User, Counted>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let f = filter.unwrap_or_default();
        let filter = UserFilter {
            role: f.role,
            status: f.status,
            email_contains: f.email_contains,
            email: f.email,
        };
        let rows = accounts::list(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(counted_connection(
            rows,
            after.is_some(),
            Counted::Users(filter),
            |u| (u.created_at, u.id),
            User::from,
        ))
    }

    /// Admin: one user.
    #[graphql(guard = "AdminOnly")]
    async fn user(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<User>> {
        let api = ctx.data::<AppContext>()?;
        accounts::user(&api.db, &actor(ctx)?, id.into())
            .await
            .map(|u| u.map(User::from))
            .gql()
    }
}

/// Account mutations.
#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Creates a user account (role USER); FORBIDDEN while the sign-up
    /// setting is off.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<User> {
        let api = ctx.data::<AppContext>()?;
        api.throttles.sign_up(client_addr(ctx)).gql()?;
        accounts::sign_up(&api.db, &email, &password)
            .await
            .map(User::from)
            .gql()
    }

    /// Exchanges an email and password for an access token and a refresh token.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let api = ctx.data::<AppContext>()?;
        api.throttles.login(client_addr(ctx), &email).gql()?;
        accounts::login(&api.db, &api.jwt, &email, &password)
            .await
            .map(AuthPayload::from)
            .gql()
    }

    /// Exchanges a refresh token (single use) for new tokens. Presenting a
    /// token twice revokes its whole family.
    async fn refresh_token(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<AuthPayload> {
        let api = ctx.data::<AppContext>()?;
        api.throttles.refresh(client_addr(ctx)).gql()?;
        let throttles = api.throttles.clone();
        accounts::refresh(&api.db, &api.jwt, &token, move |user| {
            throttles.refresh_account(&user.to_string())
        })
        .await
        .map(AuthPayload::from)
        .gql()
    }

    /// Signs out everywhere: every refresh and access token of the user
    /// stops working. With `everywhere: false`, only this sign-in (the
    /// refresh-token family the access token was issued in, and its access
    /// tokens) ends; the account's other browsers and apps stay signed in.
    #[graphql(guard = "SignedIn")]
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = true)] everywhere: bool,
    ) -> async_graphql::Result<bool> {
        let api = ctx.data::<AppContext>()?;
        let me = viewer(ctx)?;
        if everywhere {
            accounts::logout(&api.db, me.user_id).await.gql()?;
        } else {
            accounts::logout_sign_in(&api.db, me.user_id, &me.family)
                .await
                .gql()?;
        }
        Ok(true)
    }

    /// Changes the signed-in user's password; older tokens stop working.
    /// Each call counts as a log-in attempt for the account and the source
    /// (LIMIT_EXCEEDED with retryAfter past the allowance).
    #[graphql(guard = "SignedIn")]
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<bool> {
        let api = ctx.data::<AppContext>()?;
        let (throttles, from) = (api.throttles.clone(), client_addr(ctx));
        accounts::change_password(
            &api.db,
            viewer(ctx)?.user_id,
            &current_password,
            &new_password,
            move |user| throttles.login(from, &user.email),
        )
        .await
        .gql()?;
        Ok(true)
    }

    /// Admin: creates an account (role USER unless `role` says ADMIN),
    /// also while sign-up is closed; its owner signs in with `password`
    /// and may change it. CONFLICT when the email has an account.
    #[graphql(guard = "AdminOnly")]
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        role: Option<Role>,
    ) -> async_graphql::Result<User> {
        let api = ctx.data::<AppContext>()?;
        let role = role.unwrap_or(Role::User);
        accounts::create_by_admin(&api.db, &actor(ctx)?, &email, &password, role)
            .await
            .map(User::from)
            .gql()
    }

    /// Admin: sets an account's password (its owner lost it); every
    /// sign-in made with the old one ends. Tunnels are not touched.
    #[graphql(guard = "AdminOnly")]
    async fn set_user_password(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        password: String,
    ) -> async_graphql::Result<User> {
        let api = ctx.data::<AppContext>()?;
        accounts::set_password_by_admin(&api.db, &actor(ctx)?, id.into(), &password)
            .await
            .map(User::from)
            .gql()
    }

    /// Admin: changes an account's role; its older tokens stop working,
    /// refresh tokens included (its owner signs in again). The role it has
    /// already changes nothing (nothing is audited).
    #[graphql(guard = "AdminOnly")]
    async fn set_user_role(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        role: Role,
    ) -> async_graphql::Result<User> {
        let api = ctx.data::<AppContext>()?;
        accounts::set_role(&api.db, &actor(ctx)?, id.into(), role)
            .await
            .map(User::from)
            .gql()
    }

    /// Admin: enables or disables an account (the status it has already
    /// changes nothing). Disabling signs it out and
    /// closes its tunnels.
    #[graphql(guard = "AdminOnly")]
    async fn set_user_status(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        status: UserStatus,
    ) -> async_graphql::Result<User> {
        let api = ctx.data::<AppContext>()?;
        accounts::set_status(&api.db, &actor(ctx)?, id.into(), status)
            .await
            .map(User::from)
            .gql()
    }
}
