//! Signing in and out: access JWTs, rotating refresh tokens in families
//! (reuse revokes the family), log-out everywhere and password changes
//! (the user's own, or an admin's for a user who lost theirs).
//! Every access token names its family (`fam`) and carries the user's token
//! version (`ver`); [`signed_in_user`] checks both on use, so revoking a
//! family, logging out or changing the password ends the access tokens
//! issued before at once. None of these touch tunnels (devices hold their
//! own tokens), so they publish no access event; revoking publishes an
//! account event, so live sockets signed in with those tokens end.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::authenticate;
use crate::actor::Actor;
use crate::audit;
use crate::auth::jwt::{Audience, JwtKeys};
use crate::auth::{self, check_password_policy};
use crate::db::Db;
use crate::db::models::{RefreshToken, TokenFamily, User, new_id, now};
use crate::db::schema::{audit_log, refresh_tokens, token_families, users};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::status::UserStatus;
use crate::{db_run, db_tx};
use httvps_wire::Secret;

/// Ends every sign-in of `$user_id` at `$ts` on `$conn`: its refresh
/// tokens and their families are revoked (access tokens go with the
/// account's token version, which the caller bumps first).
macro_rules! revoke_sign_ins {
    ($conn:expr, $user_id:expr, $ts:expr) => {{
        use $crate::db::schema::{refresh_tokens, token_families};
        diesel::update(refresh_tokens::table.filter(refresh_tokens::user_id.eq($user_id)))
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::revoked_at.eq($ts))
            .execute($conn)
            .await?;
        diesel::update(token_families::table.filter(token_families::user_id.eq($user_id)))
            .filter(token_families::revoked_at.is_null())
            .set(token_families::revoked_at.eq($ts))
            .execute($conn)
            .await?
    }};
}
pub(crate) use revoke_sign_ins;

/// Revokes refresh-token family `$family` on `$conn` at `$ts`: its refresh
/// tokens, and the family itself, so the access tokens issued in it stop
/// working (the family is checked on use).
macro_rules! revoke_family {
    ($conn:expr, $family:expr, $ts:expr) => {{
        diesel::update(refresh_tokens::table.filter(refresh_tokens::family_id.eq($family)))
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::revoked_at.eq($ts))
            .execute($conn)
            .await?;
        diesel::update(token_families::table.find($family))
            .filter(token_families::revoked_at.is_null())
            .set(token_families::revoked_at.eq($ts))
            .execute($conn)
            .await?;
    }};
}

/// Lifetime of a refresh token.
pub const REFRESH_TTL_DAYS: i64 = 30;

/// What a successful log-in or refresh hands out.
#[derive(Debug)]
pub struct Tokens {
    /// Short-lived access JWT.
    pub access_token: Secret,
    /// Single-use opaque refresh token.
    pub refresh_token: Secret,
    /// The user.
    pub user: User,
}

/// Issues an access token for `user` in refresh-token family `family`.
pub fn access_token(jwt: &JwtKeys, user: &User, family: &str) -> AppResult<String> {
    jwt.issue_in_family(
        Audience::Access,
        &user.id.to_string(),
        user.token_version,
        Some(user.role.as_str()),
        jwt.access_ttl_secs,
        Some(family),
    )
}

/// The user an access token's claims stand for, if the account exists and
/// the token's family is still live (one query: the user and its family).
/// The caller compares the status and token version.
pub async fn signed_in_user(db: &Db, user_id: UserId, family: &str) -> AppResult<Option<User>> {
    let found: Option<(User, bool)> = db_run!(db, |conn| {
        users::table
            .find(user_id)
            .select((
                User::as_select(),
                diesel::dsl::exists(
                    token_families::table
                        .filter(token_families::id.eq(family))
                        .filter(token_families::user_id.eq(user_id))
                        .filter(token_families::revoked_at.is_null()),
                ),
            ))
            .first(conn)
            .await
            .optional()?
    });
    Ok(found.and_then(|(user, live)| live.then_some(user)))
}

fn new_refresh_row(user_id: UserId, family_id: &str) -> (String, RefreshToken) {
    let token = auth::new_token();
    let ts = now();
    let row = RefreshToken {
        id: new_id(),
        user_id,
        family_id: family_id.to_owned(),
        token_hash: auth::hash_token(&token).into(),
        expires_at: ts + chrono::Duration::days(REFRESH_TTL_DAYS),
        used_at: None,
        revoked_at: None,
        created_at: ts,
    };
    (token, row)
}

/// Checks credentials and starts a new refresh-token family.
pub async fn login(db: &Db, jwt: &JwtKeys, email: &str, password: &str) -> AppResult<Tokens> {
    let user = authenticate(db, email, password).await?;
    let family = TokenFamily {
        id: new_id(),
        user_id: user.id,
        revoked_at: None,
        created_at: now(),
    };
    let (refresh_token, row) = new_refresh_row(user.id, &family.id);
    db_tx!(db, |conn, _| {
        diesel::insert_into(token_families::table)
            .values(&family)
            .execute(conn)
            .await?;
        diesel::insert_into(refresh_tokens::table)
            .values(&row)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(())
    })?;
    Ok(Tokens {
        access_token: access_token(jwt, &user, &family.id)?.into(),
        refresh_token: refresh_token.into(),
        user,
    })
}

enum Rotation {
    Rotated(String, User, String),
    Refused,
}

/// Rotates a refresh token: single use; presenting a used one revokes its
/// whole family (the token was stolen or replayed).
pub async fn refresh(
    db: &Db,
    jwt: &JwtKeys,
    token: &str,
    admit: impl Fn(UserId) -> AppResult<()> + Send + Sync,
) -> AppResult<Tokens> {
    if !auth::looks_like_token(token) {
        return Err(AppError::Unauthenticated);
    }
    let hash = auth::hash_token(token);
    let outcome = db_tx!(db, |conn, outbox| {
        let ts = now();
        let found: Option<RefreshToken> = refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(&hash))
            .select(RefreshToken::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(found) = found else {
            return Ok::<_, AppError>(Rotation::Refused);
        };
        // The account's allowance of exchanges, before the token is spent.
        admit(found.user_id)?;
        // Claim the token; only one caller can.
        let claimed = diesel::update(refresh_tokens::table.find(&found.id))
            .filter(refresh_tokens::used_at.is_null())
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::used_at.eq(ts))
            .execute(conn)
            .await?;
        // A token revoked already (a log-out, a password change, a
        // disabled account, or a reuse found before) is only refused: its
        // family has nothing left to revoke, and a stale tab refreshing
        // after a log-out is no theft (it was logged as one).
        if claimed == 0 && found.revoked_at.is_some() {
            return Ok(Rotation::Refused);
        }
        if claimed == 0 {
            // The access tokens issued in the family die with it.
            revoke_family!(conn, &found.family_id, ts);
            outbox.account(found.user_id);
            tracing::warn!(user.id = %found.user_id, "refresh token reused: family revoked");
            return Ok(Rotation::Refused);
        }
        if found.expires_at < ts {
            return Ok(Rotation::Refused);
        }
        let user: User = users::table
            .find(found.user_id)
            .select(User::as_select())
            .first(conn)
            .await?;
        if user.status != UserStatus::Active {
            return Ok(Rotation::Refused);
        }
        let (token, row) = new_refresh_row(user.id, &found.family_id);
        diesel::insert_into(refresh_tokens::table)
            .values(&row)
            .execute(conn)
            .await?;
        Ok(Rotation::Rotated(token, user, found.family_id))
    })?;
    match outcome {
        Rotation::Rotated(refresh_token, user, family) => Ok(Tokens {
            access_token: access_token(jwt, &user, &family)?.into(),
            refresh_token: refresh_token.into(),
            user,
        }),
        Rotation::Refused => Err(AppError::Unauthenticated),
    }
}

/// Logs the user out everywhere: revokes every refresh token and makes
/// every access token issued so far invalid.
pub async fn logout(db: &Db, user_id: UserId) -> AppResult<()> {
    db_tx!(db, |conn, outbox| {
        outbox.account(user_id);
        let ts = now();
        // The account's row first, as a password change and disabling
        // take it: then its tokens, never the other way round.
        diesel::update(users::table.find(user_id))
            .set((
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .execute(conn)
            .await?;
        revoke_sign_ins!(conn, user_id, ts);
        Ok::<_, AppError>(())
    })
}

/// Signs out one sign-in of `user_id`: revokes refresh-token family
/// `family` and its refresh tokens, which ends the access tokens issued in
/// it (the family is checked on use); the account's other sign-ins go on.
/// Its live sockets are told, and each checks its own credential again.
pub async fn logout_sign_in(db: &Db, user_id: UserId, family: &str) -> AppResult<()> {
    let family = family.to_owned();
    db_tx!(db, |conn, outbox| {
        outbox.account(user_id);
        // The family is the caller's own: it came with its access token.
        revoke_family!(conn, &family, now());
        Ok::<_, AppError>(())
    })
}

/// Sets `$user_id`'s password hash to `$hash` on `$conn` and ends every
/// sign-in made with the old one (refresh tokens, their families, access
/// tokens by the version); the account's live sockets are told. The row,
/// or NOT_FOUND.
macro_rules! replace_password {
    ($conn:expr, $outbox:expr, $user_id:expr, $hash:expr) => {{
        $outbox.account($user_id);
        let ts = now();
        let user: User = diesel::update(users::table.find($user_id))
            .set((
                users::password_hash.eq($hash),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .returning(User::as_returning())
            .get_result($conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("user"))?;
        revoke_sign_ins!($conn, $user_id, ts);
        user
    }};
}

/// Changes the user's password after checking the current one; older tokens
/// stop working. `attempt` counts the check against the account's guessing
/// allowance (the log-in's) before the current password is hashed: a
/// stolen access token does not buy unlimited guesses at the password that
/// would outlive it.
pub async fn change_password(
    db: &Db,
    user_id: UserId,
    current: &str,
    new: &str,
    attempt: impl FnOnce(&User) -> AppResult<()>,
) -> AppResult<()> {
    check_password_policy(new)?;
    let user = super::find_user(db, user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    attempt(&user)?;
    if !auth::verify_password(current.to_owned(), user.password_hash.expose().to_owned()).await {
        return Err(AppError::bad("current password is wrong"));
    }
    let hash = auth::hash_password(new.to_owned()).await?;
    db_tx!(db, |conn, outbox| {
        replace_password!(conn, outbox, user_id, &hash);
        Ok::<_, AppError>(())
    })
}

/// Admin: sets an account's password (its owner lost it); every sign-in
/// made with the old one ends, as after [`change_password`]. Audited as
/// `set_user_password` (the password is not recorded). Tunnels are not
/// touched: devices hold their own tokens.
pub async fn set_password_by_admin(
    db: &Db,
    actor: &Actor,
    user_id: UserId,
    new: &str,
) -> AppResult<User> {
    actor.require_admin()?;
    check_password_policy(new)?;
    let hash = auth::hash_password(new.to_owned()).await?;
    let entry = audit::entry(
        actor,
        "set_user_password",
        "user",
        Some(&user_id.to_string()),
        serde_json::json!({}),
    );
    db_tx!(db, |conn, outbox| {
        let user = replace_password!(conn, outbox, user_id, &hash);
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(user)
    })
}
