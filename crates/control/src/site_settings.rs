//! Settings an admin changes at run time, kept in the database so every
//! replica sees the same: today whether anyone may sign up.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::actor::Actor;
use crate::audit;
use crate::db::Db;
use crate::db::models::now;
use crate::db::schema::{audit_log, site_settings};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx};

/// The settings as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = site_settings)]
pub struct SiteSettings {
    /// Whether self-service sign-up accepts new accounts.
    pub sign_up_enabled: bool,
}

/// Changes to the settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SettingsChanges {
    /// New sign-up switch.
    pub sign_up_enabled: Option<bool>,
}

/// The current settings (anyone may read them: the sign-in page needs them).
pub async fn get(db: &Db) -> AppResult<SiteSettings> {
    let row = db_run!(db, |conn| {
        site_settings::table
            .find(1)
            .select(SiteSettings::as_select())
            .first(conn)
            .await
            .optional()?
    });
    // The migration inserts the row; a database without it has the defaults.
    Ok(row.unwrap_or(SiteSettings {
        sign_up_enabled: true,
    }))
}

/// Admin: changes the settings, audited as `update_settings` with the
/// fields that changed and what they were; a change that changes nothing
/// (no field, or the values they have) answers the settings as they are,
/// unaudited, as the other mutations do.
pub async fn update(db: &Db, actor: &Actor, changes: SettingsChanges) -> AppResult<SiteSettings> {
    actor.require_admin()?;
    db_tx!(db, |conn, _| {
        let was = site_settings::table
            .find(1)
            .select(SiteSettings::as_select())
            .first(conn)
            .await?;
        if let Some(v) = changes
            .sign_up_enabled
            .filter(|v| *v != was.sign_up_enabled)
        {
            diesel::update(site_settings::table.find(1))
                .set((
                    site_settings::sign_up_enabled.eq(v),
                    site_settings::updated_at.eq(now()),
                ))
                .execute(conn)
                .await?;
            let entry = audit::entry(
                actor,
                "update_settings",
                "settings",
                None,
                serde_json::json!({"signUpEnabled": v, "previous": {"signUpEnabled": was.sign_up_enabled}}),
            );
            diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute(conn)
                .await?;
        }
        let s = site_settings::table
            .find(1)
            .select(SiteSettings::as_select())
            .first(conn)
            .await?;
        Ok::<_, AppError>(s)
    })
}

/// Refuses self-service sign-up while it is switched off.
pub async fn require_sign_up_open(db: &Db) -> AppResult<()> {
    if get(db).await?.sign_up_enabled {
        Ok(())
    } else {
        Err(AppError::Refused("sign-up is closed on this service"))
    }
}
