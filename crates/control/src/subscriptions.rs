//! Subscriptions, the billing record: granted from a plan, extended,
//! cancelled; at most one active per user (a constraint in the schema).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{audit, validate};
use crate::db::Db;
use crate::db::models::{Plan, Subscription, new_id, now};
use crate::db::schema::{audit_log, plans, subscriptions, users};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx, paginate};

/// Length of a traffic period for plans that reset monthly.
pub const PERIOD_DAYS: i64 = 30;

/// State of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum SubscriptionStatus {
    /// In force (until `expiresAt`).
    Active,
    /// Ended early by an admin.
    Cancelled,
    /// Ran out.
    Expired,
}

impl SubscriptionStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Cancelled => "cancelled",
            SubscriptionStatus::Expired => "expired",
        }
    }
    /// The status as seen at `at`: an active subscription past its expiry is expired.
    pub fn of(s: &Subscription, at: NaiveDateTime) -> Self {
        match s.status.as_str() {
            "active" if s.expires_at <= at => SubscriptionStatus::Expired,
            "active" => SubscriptionStatus::Active,
            "cancelled" => SubscriptionStatus::Cancelled,
            _ => SubscriptionStatus::Expired,
        }
    }
}

/// Admin: grants a plan to a user, starting now.
pub async fn grant(db: &Db, actor: &str, user_id: &str, plan_id: &str) -> AppResult<Subscription> {
    let user_id = validate::id("userId", user_id)?;
    let plan_id = validate::id("planId", plan_id)?;
    db_tx!(db, |conn| {
        let ts = now();
        let plan: Plan = plans::table
            .find(&plan_id)
            .select(Plan::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("plan"))?;
        if plan.archived {
            return Err(AppError::Conflict("the plan is archived".into()));
        }
        let user_exists: i64 = users::table.find(&user_id).count().get_result(conn).await?;
        if user_exists == 0 {
            return Err(AppError::NotFound("user"));
        }
        // A lapsed subscription still marked active is closed first.
        diesel::update(subscriptions::table)
            .filter(subscriptions::user_id.eq(&user_id))
            .filter(subscriptions::status.eq("active"))
            .filter(subscriptions::expires_at.le(ts))
            .set((
                subscriptions::status.eq("expired"),
                subscriptions::updated_at.eq(ts),
            ))
            .execute(conn)
            .await?;
        let sub = Subscription {
            id: new_id(),
            user_id: user_id.clone(),
            plan_id: plan.id.clone(),
            status: "active".into(),
            starts_at: ts,
            expires_at: ts + chrono::Duration::days(plan.duration_days.into()),
            traffic_limit_bytes: plan.traffic_limit_bytes,
            traffic_used_bytes: 0,
            period_start: ts,
            created_at: ts,
            updated_at: ts,
        };
        let inserted = diesel::insert_into(subscriptions::table)
            .values(&sub)
            .returning(Subscription::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(
                "the user already has an active subscription: extend or cancel it",
            ))?;
        let entry = audit::entry(
            actor,
            "grant_subscription",
            "subscription",
            Some(&sub.id),
            serde_json::json!({"userId": user_id, "planId": plan.id}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(inserted)
    })
}

/// Admin: adds days to a subscription (from its expiry, or from now if it
/// has lapsed, which makes it active again).
pub async fn extend(db: &Db, actor: &str, id: &str, days: i32) -> AppResult<Subscription> {
    let id = validate::id("id", id)?;
    validate::range("days", days.into(), 1, 3660)?;
    db_tx!(db, |conn| {
        let ts = now();
        let sub: Subscription = subscriptions::table
            .find(&id)
            .select(Subscription::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("subscription"))?;
        if sub.status == "cancelled" {
            return Err(AppError::Conflict(
                "a cancelled subscription cannot be extended: grant a new one".into(),
            ));
        }
        let from = sub.expires_at.max(ts);
        let updated = diesel::update(subscriptions::table.find(&id))
            .set((
                subscriptions::expires_at.eq(from + chrono::Duration::days(days.into())),
                subscriptions::status.eq("active"),
                subscriptions::updated_at.eq(ts),
            ))
            .returning(Subscription::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(
                "the user has another active subscription",
            ))?;
        let entry = audit::entry(
            actor,
            "extend_subscription",
            "subscription",
            Some(&id),
            serde_json::json!({"days": days}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(updated)
    })
}

/// Admin: cancels a subscription now; its tunnels are closed.
pub async fn cancel(db: &Db, actor: &str, id: &str) -> AppResult<Subscription> {
    let id = validate::id("id", id)?;
    db_tx!(db, |conn| {
        let ts = now();
        let updated = diesel::update(subscriptions::table.find(&id))
            .set((
                subscriptions::status.eq("cancelled"),
                subscriptions::updated_at.eq(ts),
            ))
            .returning(Subscription::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("subscription"))?;
        let entry = audit::entry(
            actor,
            "cancel_subscription",
            "subscription",
            Some(&id),
            serde_json::json!({}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(updated)
    })
}

/// Filters on the subscription list.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionFilter {
    /// Only this user's (always set for non-admins).
    pub user_id: Option<String>,
    /// Only this stored status.
    pub status: Option<SubscriptionStatus>,
}

/// A page of subscriptions.
pub async fn list(
    db: &Db,
    filter: &SubscriptionFilter,
    page: &PageArgs,
) -> AppResult<Page<Subscription>> {
    let rows = db_run!(db, |conn| {
        let mut q = subscriptions::table
            .select(Subscription::as_select())
            .into_boxed();
        if let Some(u) = &filter.user_id {
            q = q.filter(subscriptions::user_id.eq(u.clone()));
        }
        if let Some(s) = filter.status {
            q = q.filter(subscriptions::status.eq(s.as_str()));
        }
        paginate!(q, subscriptions, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// The current (stored as active) subscription of each of `user_ids`.
pub async fn current_for_users(db: &Db, user_ids: &[String]) -> AppResult<Vec<Subscription>> {
    Ok(db_run!(db, |conn| subscriptions::table
        .filter(subscriptions::user_id.eq_any(user_ids))
        .filter(subscriptions::status.eq("active"))
        .select(Subscription::as_select())
        .load(conn)
        .await?))
}

/// Loads subscriptions by id.
pub async fn by_ids(db: &Db, ids: &[String]) -> AppResult<Vec<Subscription>> {
    Ok(db_run!(db, |conn| subscriptions::table
        .filter(subscriptions::id.eq_any(ids))
        .select(Subscription::as_select())
        .load(conn)
        .await?))
}
