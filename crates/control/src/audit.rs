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
    /// Only entries about this kind of target.
    pub target_type: Option<String>,
    /// Only entries about this target.
    pub target_id: Option<String>,
}

/// Applies an [`AuditFilter`] to a boxed query on `audit_log`.
macro_rules! filter_audit {
    ($q:expr, $filter:expr) => {{
        let (mut q, filter) = ($q, $filter);
        if let Some(a) = &filter.action {
            q = q.filter(audit_log::action.eq(a.clone()));
        }
        if let Some(a) = filter.actor_user_id {
            q = q.filter(audit_log::actor_user_id.eq(a));
        }
        if let Some(t) = &filter.target_type {
            q = q.filter(audit_log::target_type.eq(t.clone()));
        }
        if let Some(t) = &filter.target_id {
            q = q.filter(audit_log::target_id.eq(t.clone()));
        }
        q
    }};
}

/// Admin: a page of the audit log, in `page.order`.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &AuditFilter,
    page: &PageArgs,
) -> AppResult<Page<AuditEntry>> {
    actor.require_admin()?;
    let rows = db_run!(db, |conn| {
        let q = filter_audit!(
            audit_log::table
                .select(AuditEntry::as_select())
                .into_boxed(),
            filter
        );
        paginate!(q, audit_log, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Admin: how many audit entries match `filter`.
pub async fn count(db: &Db, actor: &Actor, filter: &AuditFilter) -> AppResult<i64> {
    actor.require_admin()?;
    Ok(db_run!(db, |conn| filter_audit!(
        audit_log::table.into_boxed(),
        filter
    )
    .count()
    .get_result::<i64>(conn)
    .await?))
}
