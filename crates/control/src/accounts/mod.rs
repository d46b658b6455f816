//! Accounts: creating users and admins, checking credentials, and admin
//! management of roles and statuses. Signing in and out is in [`tokens`].

mod listing;
pub mod tokens;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{audit, auth};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{User, now};
use crate::db::schema::{audit_log, devices, users};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::ids::UserId;
use crate::status::EndReason;
pub use crate::status::{Role, UserStatus};
use crate::{db_run, db_tx};
pub use listing::{UserFilter, by_ids, count, list};
pub use tokens::{
    REFRESH_TTL_DAYS, Tokens, access_token, change_password, login, logout, logout_sign_in,
    refresh, set_password_by_admin, signed_in_user,
};

/// Normalises and checks an email address: trimmed, in Unicode NFKC and
/// lower case (an address written with decomposed accents or full-width
/// letters is the same account as the plain one), its domain as IDNA reads
/// it, in Unicode (`bücher.de` and `xn--bcher-kva.de` are one domain);
/// refused with invisible or control characters, a quoted local part
/// (`"bob"@x` and `"b\ob"@x` would be other spellings of `bob@x`) or a
/// local part over 64 bytes, or a domain with an empty label (a trailing dot included), a
/// label over 63 bytes or that begins or ends with a hyphen, or more than
/// 253 bytes in all (as ASCII).
pub fn normalize_email(raw: &str) -> AppResult<String> {
    let bad = || AppError::bad("email is not a valid address");
    let trimmed = raw.trim();
    if trimmed.chars().any(crate::validate::invisible) {
        return Err(bad());
    }
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let folded = nfkc
        .normalize(&nfkc.normalize(trimmed).to_lowercase())
        .into_owned();
    let Some((local, domain)) = folded.split_once('@') else {
        return Err(bad());
    };
    let ascii = url::quirks::domain_to_ascii(domain);
    let labels_ok = ascii
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'));
    let email = format!("{local}@{}", url::quirks::domain_to_unicode(domain));
    let valid = (3..=254).contains(&email.len())
        && !local.is_empty()
        && local.len() <= 64
        && !local.contains(['"', '\\'])
        // A dot-atom: no dot at either end of the local part, none doubled.
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !domain.contains('@')
        && !ascii.is_empty()
        && ascii.len() <= 253
        && labels_ok
        && (ascii.contains('.') || ascii == "localhost")
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if !valid {
        return Err(bad());
    }
    Ok(email)
}

/// A new account's row: the email in its normal form, the password held
/// to the policy and hashed.
async fn new_account(email: &str, password: &str, role: Role) -> AppResult<User> {
    let email = normalize_email(email)?;
    auth::check_password_policy(password)?;
    let password_hash = auth::hash_password(password.to_owned()).await?;
    let ts = now();
    Ok(User {
        id: UserId::random(),
        email,
        password_hash: password_hash.into(),
        role,
        status: UserStatus::Active,
        token_version: 0,
        created_at: ts,
        updated_at: ts,
    })
}

/// Inserts `$user` on `$conn`: the stored row, or CONFLICT for an email
/// already taken.
macro_rules! insert_account {
    ($conn:expr, $user:expr) => {
        diesel::insert_into(users::table)
            .values($user)
            .returning(User::as_returning())
            .get_result($conn)
            .await
            .map_err(AppError::on_conflict(
                "an account with this email already exists",
            ))?
    };
}

/// Creates an account with the given role; a duplicate email is a conflict.
pub async fn create_user(db: &Db, email: &str, password: &str, role: Role) -> AppResult<User> {
    let user = new_account(email, password, role).await?;
    let inserted: User = db_run!(db, |conn| insert_account!(conn, &user));
    Ok(inserted)
}

/// Admin: creates an account with `role`, whether or not sign-up is open
/// (operators who sell access themselves keep it closed); audited as
/// `create_user`. The password is the first one, for the person to change.
pub async fn create_by_admin(
    db: &Db,
    actor: &Actor,
    email: &str,
    password: &str,
    role: Role,
) -> AppResult<User> {
    actor.require_admin()?;
    let user = new_account(email, password, role).await?;
    let entry = audit::entry(
        actor,
        "create_user",
        "user",
        Some(&user.id.to_string()),
        serde_json::json!({"email": user.email, "role": role.as_str()}),
    );
    db_tx!(db, |conn, _outbox| {
        let inserted: User = insert_account!(conn, &user);
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(inserted)
    })
}

/// Self-service sign-up: a USER account, while the sign-up setting is on.
pub async fn sign_up(db: &Db, email: &str, password: &str) -> AppResult<User> {
    crate::site_settings::require_sign_up_open(db).await?;
    create_user(db, email, password, Role::User).await
}

/// Whether any admin account exists.
pub async fn admin_exists(db: &Db) -> AppResult<bool> {
    Ok(first_admin(db).await?.is_some())
}

/// The oldest admin account, if any.
pub async fn first_admin(db: &Db) -> AppResult<Option<UserId>> {
    Ok(db_run!(db, |conn| users::table
        .filter(users::role.eq(Role::Admin))
        .order((users::created_at.asc(), users::id.asc()))
        .select(users::id)
        .first(conn)
        .await
        .optional()?))
}

/// The forms under which an account with the address `raw` may be
/// stored, the current one first: normalised as [`normalize_email`] does,
/// and trimmed in lower case, as addresses stored before they were put in
/// NFC (or before invisible characters and empty labels were refused)
/// are. `None` when no account can have it: neither form is an address (a
/// NUL, or another control character, is in none, and PostgreSQL refuses
/// a NUL in text).
pub(crate) fn address_forms(raw: &str) -> Option<(Option<String>, String)> {
    let legacy = raw.trim().to_lowercase();
    let current = normalize_email(raw).ok();
    if current.is_none()
        && (legacy.is_empty() || legacy.len() > 254 || legacy.chars().any(char::is_control))
    {
        return None;
    }
    Some((current, legacy))
}

/// Checks an email and password; the same error for an unknown email and a
/// wrong password, whatever the account's status, so accounts can't be
/// probed (a disabled one answered `FORBIDDEN` to any password, which told
/// anyone that it existed and was disabled). The right password of a
/// disabled account is told so (`FORBIDDEN`, "the account is disabled"),
/// as to its owner; guesses are bounded by the log-in throttle.
pub async fn authenticate(db: &Db, email: &str, password: &str) -> AppResult<User> {
    let bad = || AppError::BadRequest("wrong email or password".into());
    // Found under any form it may be stored in; the current form wins.
    let Some((current, legacy)) = address_forms(email) else {
        return Err(bad());
    };
    let wanted: Vec<&str> = current
        .iter()
        .map(String::as_str)
        .chain([legacy.as_str()])
        .collect();
    let mut candidates: Vec<User> = db_run!(db, |conn| {
        users::table
            .filter(users::email.eq_any(&wanted))
            .select(User::as_select())
            .limit(2)
            .load(conn)
            .await?
    });
    candidates.sort_by_key(|u| Some(&u.email) != current.as_ref());
    let found = candidates.into_iter().next();
    let Some(user) = found else {
        // Spend about the time of a real check, so timing does not reveal
        // which emails exist.
        let _ = auth::hash_password(password.chars().take(auth::MAX_PASSWORD_LEN).collect()).await;
        return Err(bad());
    };
    let verified =
        auth::verify_password(password.to_owned(), user.password_hash.expose().to_owned()).await;
    if !verified {
        return Err(bad());
    }
    if user.status != UserStatus::Active {
        return Err(AppError::Refused("the account is disabled"));
    }
    Ok(user)
}

/// Loads a user by id (no scoping: for resolving credentials).
pub async fn find_user(db: &Db, id: UserId) -> AppResult<Option<User>> {
    Ok(db_run!(db, |conn| {
        users::table
            .find(id)
            .select(User::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// A user as `actor` may see it: their own account, or any for admins
/// (someone else's looks missing).
pub async fn user(db: &Db, actor: &Actor, id: UserId) -> AppResult<Option<User>> {
    if !actor.may_act_for(id) {
        return Ok(None);
    }
    find_user(db, id).await
}

/// The answer to a change that changes nothing (the account is already
/// so): the account as it is, read on `$conn`, with nothing written,
/// audited or revoked; NOT_FOUND when there is no such account.
macro_rules! unchanged_user {
    ($conn:expr, $id:expr) => {
        users::table
            .find($id)
            .select(User::as_select())
            .first($conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("user"))
    };
}

/// Serializes the changes that take an admin's powers away (PostgreSQL;
/// SQLite has one writer).
const ADMIN_LOCK: crate::db::Statement = crate::db::Statement {
    pg: "SELECT pg_advisory_xact_lock(504446936935)",
    sqlite: "",
};

/// Inside the transaction of a change that may take `$target`'s admin
/// powers away (a demotion, a disabling), under [`ADMIN_LOCK`]: the acting
/// admin must still be an active admin (two admins demoting each other at
/// once both passed the check made when their requests were signed in,
/// and left no admin), and an active admin must remain besides the target.
macro_rules! keep_an_admin {
    ($conn:expr, $actor:expr, $target:expr) => {{
        if let Some(lock) = ADMIN_LOCK.on($conn) {
            diesel::sql_query(lock).execute($conn).await?;
        }
        let active_admins = || {
            users::table
                .filter(users::role.eq(Role::Admin))
                .filter(users::status.eq(UserStatus::Active))
                .into_boxed()
        };
        if let Some(me) = $actor.user_id() {
            let still: i64 = active_admins()
                .filter(users::id.eq(me))
                .count()
                .get_result($conn)
                .await?;
            if still == 0 {
                return Err(AppError::Forbidden);
            }
        }
        let target_is_admin: i64 = active_admins()
            .filter(users::id.eq($target))
            .count()
            .get_result($conn)
            .await?;
        let others: i64 = active_admins()
            .filter(users::id.ne($target))
            .count()
            .get_result($conn)
            .await?;
        if target_is_admin > 0 && others == 0 {
            return Err(AppError::Conflict(
                "the last active admin cannot be demoted or disabled".into(),
            ));
        }
    }};
}

/// Admin: enables or disables an account. Disabling invalidates its tokens,
/// ends its devices' open sessions and tells gateways, which close its
/// tunnels.
pub async fn set_status(
    db: &Db,
    actor: &Actor,
    user_id: UserId,
    status: UserStatus,
) -> AppResult<User> {
    actor.require_admin()?;
    if actor.user_id() == Some(user_id) && status == UserStatus::Disabled {
        return Err(AppError::Conflict(
            "admins cannot disable their own account".into(),
        ));
    }
    let entry = audit::entry(
        actor,
        "set_user_status",
        "user",
        Some(&user_id.to_string()),
        serde_json::json!({"status": status.as_str()}),
    );
    db_tx!(db, |conn, outbox| {
        // Disabling ends the account's sessions, outside the usage
        // appliers.
        if status == UserStatus::Disabled {
            crate::apply_lock!(conn);
            keep_an_admin!(conn, actor, user_id);
        }
        let ts = now();
        let changed: Option<User> = diesel::update(users::table.find(user_id))
            .filter(users::status.ne(status))
            .set((
                users::status.eq(status),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(ts),
            ))
            .returning(User::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(user) = changed else {
            return unchanged_user!(conn, user_id);
        };
        outbox.account(user_id);
        if status == UserStatus::Disabled {
            tokens::revoke_sign_ins!(conn, user_id, ts);
            // The sessions of every device end with the account, not when a
            // gateway next reports; the access event closes their tunnels.
            let owned = devices::table
                .filter(devices::user_id.eq(user_id))
                .select(devices::id);
            crate::end_open_sessions!(conn, outbox, owned, EndReason::UserDisabled, ts);
            outbox.access(AccessChange::UserDisabled, Some(user_id));
        }
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(user)
    })
}

/// Admin: changes an account's role; older tokens of that account stop
/// working, its refresh tokens too (a demoted account's sessions end, as
/// after a password change: its owner signs in again). Tunnels do not
/// depend on the role, so gateways are not told.
pub async fn set_role(db: &Db, actor: &Actor, user_id: UserId, role: Role) -> AppResult<User> {
    actor.require_admin()?;
    if actor.user_id() == Some(user_id) && role != Role::Admin {
        return Err(AppError::Conflict("admins cannot demote themselves".into()));
    }
    let entry = audit::entry(
        actor,
        "set_user_role",
        "user",
        Some(&user_id.to_string()),
        serde_json::json!({"role": role.as_str()}),
    );
    db_tx!(db, |conn, outbox| {
        if role != Role::Admin {
            keep_an_admin!(conn, actor, user_id);
        }
        let changed: Option<User> = diesel::update(users::table.find(user_id))
            .filter(users::role.ne(role))
            .set((
                users::role.eq(role),
                users::token_version.eq(users::token_version + 1),
                users::updated_at.eq(now()),
            ))
            .returning(User::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(user) = changed else {
            return unchanged_user!(conn, user_id);
        };
        tokens::revoke_sign_ins!(conn, user_id, now());
        outbox.account(user_id);
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(user)
    })
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn addresses_that_would_look_alike_are_one_address_or_refused() {
        assert_eq!(
            normalize_email("  Admin@Example.COM ").ok().as_deref(),
            Some("admin@example.com")
        );
        // Decomposed and precomposed accents are one address.
        assert_eq!(
            normalize_email("u\u{0308}@\u{4f8b}\u{3048}.jp").ok(),
            normalize_email("\u{fc}@\u{4f8b}\u{3048}.jp").ok()
        );
        assert!(normalize_email("\u{fc}@\u{4f8b}\u{3048}.jp").is_ok());
        // A label may not begin or end with a hyphen (RFC 1035).
        assert!(normalize_email("a@-example.com").is_err());
        assert!(normalize_email("a@example-.com").is_err());
        assert!(normalize_email("a@ex-ample.com").is_ok());
        // Full-width letters, and a domain in either of its IDNA forms.
        assert_eq!(
            normalize_email("\u{ff41}dmin@example.com").ok().as_deref(),
            Some("admin@example.com")
        );
        assert_eq!(
            normalize_email("a@xn--bcher-kva.de").ok().as_deref(),
            Some("a@b\u{fc}cher.de")
        );
        assert_eq!(
            normalize_email("A@B\u{dc}CHER.de").ok().as_deref(),
            Some("a@b\u{fc}cher.de")
        );
        for bad in [
            "a@b.co\u{200b}",
            "a\u{200d}@b.co",
            "a@b\u{202e}.co",
            "a\u{ad}b@b.co",
            "admin@localhost.",
            "a@.b.co",
            "a@b..co",
            "a@b@c.co",
            "@b.co",
            "\"bob\"@b.co",
            "\"b\\ob\"@b.co",
            "b\\ob@b.co",
            "a@",
            "a b@c.co",
            "nodomain",
            ".lead@b.co",
            "trail.@b.co",
            "a..b@b.co",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        let local = "a".repeat(64);
        assert!(normalize_email(&format!("{local}@b.co")).is_ok());
        assert!(normalize_email(&format!("{local}a@b.co")).is_err());
        let label = "d".repeat(64);
        assert!(normalize_email(&format!("a@{label}.co")).is_err());
        // 63 bytes as ASCII: the punycode label is what counts.
        let wide = format!("{}\u{fc}", "a".repeat(60));
        assert!(wide.len() <= 63, "62 bytes as UTF-8");
        assert!(normalize_email(&format!("x@{wide}.de")).is_err());
        assert!(normalize_email("a@1.2.3.4").is_err(), "not a domain");
        assert!(normalize_email("admin@localhost").is_ok());
    }
}
