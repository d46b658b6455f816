//! Accounts: creating users and admins, checking credentials.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::auth;
use crate::db::Db;
use crate::db::models::{User, new_id, now};
use crate::db::schema::users;
use crate::db_run;
use crate::error::{AppError, AppResult};

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
            .map_err(|e| match AppError::from(e) {
                AppError::Conflict(_) => {
                    AppError::Conflict("an account with this email already exists".into())
                }
                other => other,
            })?
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
