//! The user list: filtered, counted and paged for admins, and loaded by id
//! for dataloaders.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Role, UserStatus};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::User;
use crate::db::schema::users;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::pagination::{Page, PageArgs};
use crate::{db_run, paginate, validate};

/// Filters on the user list.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    /// Only this role.
    pub role: Option<Role>,
    /// Only this status.
    pub status: Option<UserStatus>,
    /// Emails containing this text.
    pub email_contains: Option<String>,
    /// This email exactly, compared as sign-in compares it (case, Unicode
    /// normalisation).
    pub email: Option<String>,
}

/// The forms of the exact email asked for, as sign-in looks an address up
/// (see [`super::address_forms`]); one no account could have is refused.
fn exact_email(filter: &UserFilter) -> AppResult<Option<Vec<String>>> {
    let Some(raw) = filter.email.as_deref() else {
        return Ok(None);
    };
    // Control characters (a NUL, say) are no address, and PostgreSQL
    // refuses them in text.
    validate::text("email", raw, 1, 320)?;
    let (current, legacy) =
        super::address_forms(raw).ok_or_else(|| AppError::bad("email is not a valid address"))?;
    Ok(Some(current.into_iter().chain([legacy]).collect()))
}

/// Turns `emailContains` into a LIKE pattern (escaped, lower case); a
/// text no email could contain (over 254 characters, or with control
/// characters) is refused, before SQLite's bound on patterns is met.
fn email_pattern(filter: &UserFilter) -> AppResult<Option<String>> {
    let Some(s) = filter.email_contains.as_ref() else {
        return Ok(None);
    };
    let escaped = validate::text("emailContains", s, 0, 254)?
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Ok(Some(format!("%{escaped}%")))
}

/// Applies a [`UserFilter`] (and its pattern) to a boxed query on `users`.
macro_rules! filter_users {
    ($q:expr, $filter:expr, $pattern:expr, $exact:expr) => {{
        let (mut q, filter, pattern, exact) = ($q, $filter, $pattern, $exact);
        if let Some(r) = filter.role {
            q = q.filter(users::role.eq(r));
        }
        if let Some(s) = filter.status {
            q = q.filter(users::status.eq(s));
        }
        if let Some(p) = pattern {
            q = q.filter(users::email.like(p.clone()).escape('\\'));
        }
        if let Some(forms) = exact {
            q = q.filter(users::email.eq_any(forms.clone()));
        }
        q
    }};
}

/// Admin: how many users match `filter`.
pub async fn count(db: &Db, actor: &Actor, filter: &UserFilter) -> AppResult<i64> {
    actor.require_admin()?;
    let (pattern, exact) = (email_pattern(filter)?, exact_email(filter)?);
    Ok(db_run!(db, |conn| filter_users!(
        users::table.into_boxed(),
        filter,
        &pattern,
        &exact
    )
    .count()
    .get_result::<i64>(conn)
    .await?))
}

/// Admin: a page of users.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &UserFilter,
    page: &PageArgs,
) -> AppResult<Page<User>> {
    actor.require_admin()?;
    let (pattern, exact) = (email_pattern(filter)?, exact_email(filter)?);
    let rows = db_run!(db, |conn| {
        let q = filter_users!(
            users::table.select(User::as_select()).into_boxed(),
            filter,
            &pattern,
            &exact
        );
        paginate!(q, users, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads users by id (for dataloaders).
pub async fn by_ids(db: &Db, ids: &[UserId]) -> AppResult<Vec<User>> {
    Ok(db_run!(db, |conn| users::table
        .filter(users::id.eq_any(ids))
        .select(User::as_select())
        .load(conn)
        .await?))
}
