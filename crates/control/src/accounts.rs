//! Accounts: creating users and admins, checking credentials.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{audit, validate};
use crate::auth::jwt::{Audience, JwtKeys};
use crate::auth::{self, check_password_policy};
use crate::db::Db;
use crate::db::models::{RefreshToken, User, new_id, now};
use crate::db::schema::{audit_log, refresh_tokens, users};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx, paginate};

/// Role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum Role {
    /// Operator: manages everything.
    Admin,
    /// End user: manages own devices.
    User,
}

impl Role {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
    /// Parses the stored form.
    pub fn parse(s: &str) -> Self {
        if s == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}

/// Normalises and checks an email address.
pub fn normalize_email(raw: &str) -> AppResult<String> {
    let email = raw.trim().to_lowercase();
    let valid = (3..=254).contains(&email.len())
        && email.split('@').count() == 2
        && !email.starts_with('@')
        && !email.ends_with('@')
        && email
            .split('@')
            .nth(1)
            .is_some_and(|d| d.contains('.') || d == "localhost")
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if !valid {
        return Err(AppError::bad("email is not a valid address"));
    }
    Ok(email)
}

/// Creates an account with the given role; a duplicate email is a conflict.
pub async fn create_user(db: &Db, email: &str, password: &str, role: Role) -> AppResult<User> {
    let email = normalize_email(email)?;
    auth::check_password_policy(password)?;
    let password_hash = auth::hash_password(password.to_owned()).await?;
    let ts = now();
    let user = User {
        id: new_id(),
        email,
        password_hash,
        role: role.as_str().to_owned(),
        status: "active".to_owned(),
        token_version: 0,
        created_at: ts,
        updated_at: ts,
    };
    let inserted: User = db_run!(db, |conn| {
        diesel::insert_into(users::table)
            .values(&user)
            .returning(User::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(
                "an account with this email already exists",
            ))?
    });
    Ok(inserted)
}

/// Whether any admin account exists.
pub async fn admin_exists(db: &Db) -> AppResult<bool> {
    let n: i64 = db_run!(db, |conn| {
        users::table
            .filter(users::role.eq("admin"))
            .count()
            .get_result(conn)
            .await?
    });
    Ok(n > 0)
}

/// Checks an email and password; the same error for an unknown email and a
/// wrong password, so accounts can't be probed.
pub async fn authenticate(db: &Db, email: &str, password: &str) -> AppResult<User> {
    let bad = || AppError::BadRequest("wrong email or password".into());
    let Ok(email) = normalize_email(email) else {
        return Err(bad());
    };
    let found: Option<User> = db_run!(db, |conn| {
        users::table
            .filter(users::email.eq(&email))
            .select(User::as_select())
            .first(conn)
            .await
            .optional()?
    });
    let Some(user) = found else {
        // Spend about the time of a real check, so timing does not reveal
        // which emails exist.
        let _ = auth::hash_password(password.chars().take(auth::MAX_PASSWORD_LEN).collect()).await;
        return Err(bad());
    };
    if !auth::verify_password(password.to_owned(), user.password_hash.clone()).await {
        return Err(bad());
    }
    if user.status != "active" {
        return Err(AppError::Forbidden);
    }
    Ok(user)
}

/// Loads a user by id.
pub async fn find_user(db: &Db, id: &str) -> AppResult<Option<User>> {
    Ok(db_run!(db, |conn| {
        users::table
            .find(id)
            .select(User::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Lifetime of a refresh token.
pub const REFRESH_TTL_DAYS: i64 = 30;

/// What a successful log-in or refresh hands out.
#[derive(Debug)]
pub struct Tokens {
    /// Short-lived access JWT.
    pub access_token: String,
    /// Single-use opaque refresh token.
    pub refresh_token: String,
    /// The user.
    pub user: User,
}

/// Issues an access token for `user`.
pub fn access_token(jwt: &JwtKeys, user: &User) -> AppResult<String> {
    jwt.issue(
        Audience::Access,
        &user.id,
        user.token_version,
        Some(&user.role),
        jwt.access_ttl_secs,
    )
}

fn new_refresh_row(user_id: &str, family_id: &str) -> (String, RefreshToken) {
    let token = auth::new_token();
    let ts = now();
    let row = RefreshToken {
        id: new_id(),
        user_id: user_id.to_owned(),
        family_id: family_id.to_owned(),
        token_hash: auth::hash_token(&token),
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
    let (refresh_token, row) = new_refresh_row(&user.id, &new_id());
    db_run!(db, |conn| diesel::insert_into(refresh_tokens::table)
        .values(&row)
        .execute(conn)
        .await?);
    Ok(Tokens {
        access_token: access_token(jwt, &user)?,
        refresh_token,
        user,
    })
}

enum Rotation {
    Rotated(String, User),
    Refused,
}

/// Rotates a refresh token: single use; presenting a used one revokes its
/// whole family (the token was stolen or replayed).
pub async fn refresh(db: &Db, jwt: &JwtKeys, token: &str) -> AppResult<Tokens> {
    if !auth::looks_like_token(token) {
        return Err(AppError::Unauthenticated);
    }
    let hash = auth::hash_token(token);
    let outcome = db_tx!(db, |conn| {
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
        // Claim the token; only one caller can.
        let claimed = diesel::update(refresh_tokens::table.find(&found.id))
            .filter(refresh_tokens::used_at.is_null())
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::used_at.eq(ts))
            .execute(conn)
            .await?;
        if claimed == 0 {
            diesel::update(
                refresh_tokens::table.filter(refresh_tokens::family_id.eq(&found.family_id)),
            )
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::revoked_at.eq(ts))
            .execute(conn)
            .await?;
            tracing::warn!(user.id = %found.user_id, "refresh token reused: family revoked");
            return Ok(Rotation::Refused);
        }
        if found.expires_at < ts {
            return Ok(Rotation::Refused);
        }
        let user: User = users::table
            .find(&found.user_id)
            .select(User::as_select())
            .first(conn)
            .await?;
        if user.status != "active" {
            return Ok(Rotation::Refused);
        }
        let (token, row) = new_refresh_row(&user.id, &found.family_id);
        diesel::insert_into(refresh_tokens::table)
            .values(&row)
            .execute(conn)
            .await?;
        Ok(Rotation::Rotated(token, user))
    })?;
    match outcome {
        Rotation::Rotated(refresh_token, user) => Ok(Tokens {
            access_token: access_token(jwt, &user)?,
            refresh_token,
            user,
        }),
        Rotation::Refused => Err(AppError::Unauthenticated),
    }
}

/// Logs the user out everywhere: revokes every refresh token and makes
/// every access token issued so far invalid.
pub async fn logout(db: &Db, user_id: &str) -> AppResult<()> {
    db_tx!(db, |conn| {
        let ts = now();
        diesel::update(refresh_tokens::table.filter(refresh_tokens::user_id.eq(user_id)))
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::revoked_at.eq(ts))
            .execute(conn)
            .await?;
        diesel::update(users::table.find(user_id))
            .set((
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .execute(conn)
            .await?;
        Ok::<_, AppError>(())
    })
}

/// Changes the user's password after checking the current one; older tokens
/// stop working.
pub async fn change_password(db: &Db, user_id: &str, current: &str, new: &str) -> AppResult<()> {
    check_password_policy(new)?;
    let user = find_user(db, user_id)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    if !auth::verify_password(current.to_owned(), user.password_hash.clone()).await {
        return Err(AppError::bad("current password is wrong"));
    }
    let hash = auth::hash_password(new.to_owned()).await?;
    db_tx!(db, |conn| {
        let ts = now();
        diesel::update(users::table.find(user_id))
            .set((
                users::password_hash.eq(&hash),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .execute(conn)
            .await?;
        diesel::update(refresh_tokens::table.filter(refresh_tokens::user_id.eq(user_id)))
            .filter(refresh_tokens::revoked_at.is_null())
            .set(refresh_tokens::revoked_at.eq(ts))
            .execute(conn)
            .await?;
        Ok::<_, AppError>(())
    })
}

/// Account status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum UserStatus {
    /// May sign in and connect.
    Active,
    /// Locked out: tokens refused, tunnels closed.
    Disabled,
}

impl UserStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }
    /// Parses the stored form.
    pub fn parse(s: &str) -> Self {
        if s == "active" {
            UserStatus::Active
        } else {
            UserStatus::Disabled
        }
    }
}

/// Admin: enables or disables an account. Disabling invalidates its tokens.
pub async fn set_status(
    db: &Db,
    actor: &str,
    user_id: &str,
    status: UserStatus,
) -> AppResult<User> {
    let user_id = validate::id("id", user_id)?;
    if user_id == actor && status == UserStatus::Disabled {
        return Err(AppError::Conflict(
            "admins cannot disable their own account".into(),
        ));
    }
    db_tx!(db, |conn| {
        let ts = now();
        let user: User = diesel::update(users::table.find(&user_id))
            .set((
                users::status.eq(status.as_str()),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .returning(User::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("user"))?;
        if status == UserStatus::Disabled {
            diesel::update(refresh_tokens::table.filter(refresh_tokens::user_id.eq(&user_id)))
                .filter(refresh_tokens::revoked_at.is_null())
                .set(refresh_tokens::revoked_at.eq(ts))
                .execute(conn)
                .await?;
        }
        let entry = audit::entry(
            actor,
            "set_user_status",
            "user",
            Some(&user_id),
            serde_json::json!({"status": status.as_str()}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(user)
    })
}

/// Filters on the user list.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    /// Only this role.
    pub role: Option<Role>,
    /// Only this status.
    pub status: Option<UserStatus>,
    /// Emails containing this text.
    pub email_contains: Option<String>,
}

/// Admin: a page of users.
pub async fn list(db: &Db, filter: &UserFilter, page: &PageArgs) -> AppResult<Page<User>> {
    let pattern = filter.email_contains.as_ref().map(|s| {
        let escaped = s
            .trim()
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows = db_run!(db, |conn| {
        let mut q = users::table.select(User::as_select()).into_boxed();
        if let Some(r) = filter.role {
            q = q.filter(users::role.eq(r.as_str()));
        }
        if let Some(s) = filter.status {
            q = q.filter(users::status.eq(s.as_str()));
        }
        if let Some(p) = &pattern {
            q = q.filter(users::email.like(p.clone()).escape('\\'));
        }
        paginate!(q, users, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads users by id (for dataloaders).
pub async fn by_ids(db: &Db, ids: &[String]) -> AppResult<Vec<User>> {
    Ok(db_run!(db, |conn| users::table
        .filter(users::id.eq_any(ids))
        .select(User::as_select())
        .load(conn)
        .await?))
}

/// Admin: changes an account's role; older tokens of that account stop working.
pub async fn set_role(db: &Db, actor: &str, user_id: &str, role: Role) -> AppResult<User> {
    let user_id = validate::id("id", user_id)?;
    if user_id == actor && role != Role::Admin {
        return Err(AppError::Conflict("admins cannot demote themselves".into()));
    }
    let entry = audit::entry(
        actor,
        "set_user_role",
        "user",
        Some(&user_id),
        serde_json::json!({"role": role.as_str()}),
    );
    db_tx!(db, |conn| {
        let user: User = diesel::update(users::table.find(&user_id))
            .set((
                users::role.eq(role.as_str()),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(now()),
            ))
            .returning(User::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("user"))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(user)
    })
}
