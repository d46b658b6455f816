//! The audit log: every admin change writes a row in the transaction of
//! the change.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{AuditEntry, new_id, now};
use crate::db::schema::audit_log;
use crate::error::AppResult;
use crate::ids::UserId;
use crate::{db_run, paginate};

/// Builds an audit row; insert it in the transaction of the change.
pub fn entry(
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: Option<&str>,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        id: new_id(),
        actor_user_id: actor.user_id(),
        action: action.to_owned(),
        target_type: target_type.to_owned(),
        target_id: target_id.map(str::to_owned),
        details: details.to_string(),
        created_at: now(),
    }
}

/// Filters on the audit log.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor.
    pub actor_user_id: Option<UserId>,
}

/// Admin: a page of the audit log, oldest first.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &AuditFilter,
    page: &PageArgs,
) -> AppResult<Page<AuditEntry>> {
    actor.require_admin()?;
    let rows = db_run!(db, |conn| {
        let mut q = audit_log::table
            .select(AuditEntry::as_select())
            .into_boxed();
        if let Some(a) = &filter.action {
            q = q.filter(audit_log::action.eq(a.clone()));
        }
        if let Some(a) = filter.actor_user_id {
            q = q.filter(audit_log::actor_user_id.eq(a));
        }
        paginate!(q, audit_log, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}
