//! Subscriptions, the billing record: granted from a plan, extended,
//! cancelled; at most one active per user (a constraint in the schema).
//! Each change tells gateways (an access event in its transaction), since
//! it changes what the subscriber's devices may do.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use super::{audit, validate};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{Plan, Subscription, now};
use crate::db::schema::{audit_log, devices, plans, subscriptions, users};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::feed::{QuotaEvent, QuotaEventKind};
use crate::ids::{PlanId, SubscriptionId, UserId};
use crate::status::EndReason;
pub use crate::status::SubscriptionStatus;
use crate::{db_run, db_tx, paginate};

/// Length of a traffic period for plans that reset monthly.
pub const PERIOD_DAYS: i64 = 30;

/// Admin: grants a plan to a user, starting now.
pub async fn grant(
    db: &Db,
    actor: &Actor,
    user_id: UserId,
    plan_id: PlanId,
) -> AppResult<Subscription> {
    actor.require_admin()?;
    db_tx!(db, |conn, outbox| {
        // Sessions of devices beyond the new limit may end below: the
        // appliers lock sessions, then subscriptions, so their lock comes
        // first.
        crate::apply_lock!(conn);
        let ts = now();
        let plan: Plan = plans::table
            .find(plan_id)
            .select(Plan::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("plan"))?;
        if plan.archived {
            return Err(AppError::Conflict("the plan is archived".into()));
        }
        // The user's row, held to the end: registrations and revocations
        // of the user's devices wait, so the device limit below is fitted
        // to a list that cannot change meanwhile.
        let touched = crate::hold_owner!(conn, user_id, ts);
        if touched == 0 {
            return Err(AppError::NotFound("user"));
        }
        // A lapsed subscription still marked active is closed first, with
        // the `EXPIRED` event the sweeper would have sent (it finds
        // nothing left to expire once this commits).
        let lapsed: Vec<(SubscriptionId, Option<i64>, i64)> = diesel::update(subscriptions::table)
            .filter(subscriptions::user_id.eq(user_id))
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .filter(subscriptions::expires_at.le(ts))
            .set((
                subscriptions::status.eq(SubscriptionStatus::Expired),
                subscriptions::updated_at.eq(ts),
            ))
            .returning((
                subscriptions::id,
                subscriptions::traffic_limit_bytes,
                subscriptions::traffic_used_bytes,
            ))
            .get_results(conn)
            .await?;
        if !lapsed.is_empty() {
            let email: String = users::table
                .find(user_id)
                .select(users::email)
                .first(conn)
                .await?;
            for (id, limit, used) in lapsed {
                outbox.quota(QuotaEvent {
                    kind: QuotaEventKind::Expired,
                    subscription_id: id.uuid(),
                    user_id: user_id.uuid(),
                    user_email: email.clone(),
                    traffic_limit_bytes: limit,
                    traffic_used_bytes: used,
                    at: ts.and_utc(),
                });
            }
        }
        let sub = Subscription {
            id: SubscriptionId::random(),
            user_id,
            plan_id: plan.id,
            status: SubscriptionStatus::Active,
            starts_at: ts,
            expires_at: ts + chrono::Duration::days(plan.duration_days.into()),
            traffic_limit_bytes: plan.traffic_limit_bytes,
            traffic_used_bytes: 0,
            period_start: ts,
            created_at: ts,
            updated_at: ts,
            device_limit: plan.device_limit,
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
            Some(&sub.id.to_string()),
            serde_json::json!({"userId": user_id, "planId": plan.id, "deviceLimit": plan.device_limit}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        // The new plan may cover fewer devices than the account has, or
        // more than the one before.
        crate::fit_device_limit!(conn, outbox, user_id, ts);
        // The new plan may allow less than the one it replaces.
        outbox.access(AccessChange::SubscriptionReplaced, Some(user_id));
        Ok(inserted)
    })
}

/// Admin: adds days to a subscription (from its expiry, or from now if it
/// has lapsed, which makes it active again, unless its plan is
/// archived).
pub async fn extend(
    db: &Db,
    actor: &Actor,
    id: SubscriptionId,
    days: i32,
) -> AppResult<Subscription> {
    actor.require_admin()?;
    validate::range("days", days.into(), 1, 3660)?;
    db_tx!(db, |conn, outbox| {
        // As in `grant`: sessions may end below when a lapsed subscription
        // comes back with a smaller device limit than the devices had.
        crate::apply_lock!(conn);
        let ts = now();
        let sub: Subscription = subscriptions::table
            .find(id)
            .select(Subscription::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("subscription"))?;
        if sub.status == SubscriptionStatus::Cancelled {
            return Err(AppError::Conflict(
                "a cancelled subscription cannot be extended: grant a new one".into(),
            ));
        }
        // Bringing a lapsed subscription back is a new grant in all but
        // name, which an archived plan no longer takes (one in force may
        // still be extended: archiving lets running subscriptions go on).
        if sub.expires_at <= ts || sub.status == SubscriptionStatus::Expired {
            let archived: bool = plans::table
                .find(sub.plan_id)
                .select(plans::archived)
                .first(conn)
                .await?;
            if archived {
                return Err(AppError::Conflict(
                    "the plan is archived: a lapsed subscription of it cannot be extended; grant another plan".into(),
                ));
            }
        }
        let from = sub.expires_at.max(ts);
        // Within what every backend stores and sorts as a time.
        let until = from
            .checked_add_signed(chrono::Duration::days(days.into()))
            .filter(|t| *t <= validate::MAX_TIME)
            .ok_or_else(|| AppError::bad("the subscription would end after 9999-12-31"))?;
        // The owner's row before the subscription's, as grants and
        // registrations take them.
        crate::hold_owner!(conn, sub.user_id, ts);
        // Not if a cancellation committed since the read: it stands.
        let updated = diesel::update(subscriptions::table.find(id))
            .filter(subscriptions::status.ne(SubscriptionStatus::Cancelled))
            .set((
                subscriptions::expires_at.eq(until),
                subscriptions::status.eq(SubscriptionStatus::Active),
                subscriptions::updated_at.eq(ts),
            ))
            .returning(Subscription::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(AppError::on_conflict(
                "the user has another active subscription",
            ))?
            .ok_or_else(|| {
                AppError::Conflict(
                    "a cancelled subscription cannot be extended: grant a new one".into(),
                )
            })?;
        // A lapsed subscription may be active again: its device limit
        // holds for the devices as they are now (whatever the status read
        // above said: the sweeper may have expired it since).
        crate::fit_device_limit!(conn, outbox, updated.user_id, ts);
        let entry = audit::entry(
            actor,
            "extend_subscription",
            "subscription",
            Some(&id.to_string()),
            serde_json::json!({"days": days}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        // Gateways may hold a refusal of the lapsed subscription.
        outbox.access(AccessChange::SubscriptionExtended, Some(updated.user_id));
        Ok(updated)
    })
}

/// Admin: cancels a subscription now; unless another one is in force, the
/// owner's open sessions end and their tunnels are closed. A lapsed one
/// can be cancelled too (then it cannot be extended); one cancelled
/// already is answered as it is.
pub async fn cancel(db: &Db, actor: &Actor, id: SubscriptionId) -> AppResult<Subscription> {
    actor.require_admin()?;
    let cancelled = db_tx!(db, |conn, outbox| {
        // The subscription, then its sessions: the appliers lock sessions,
        // then subscriptions, so their lock comes first.
        crate::apply_lock!(conn);
        let ts = now();
        let updated: Option<Subscription> = diesel::update(subscriptions::table.find(id))
            .filter(subscriptions::status.ne(SubscriptionStatus::Cancelled))
            .set((
                subscriptions::status.eq(SubscriptionStatus::Cancelled),
                subscriptions::updated_at.eq(ts),
            ))
            .returning(Subscription::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(updated) = updated else {
            return Ok(None);
        };
        let entry = audit::entry(
            actor,
            "cancel_subscription",
            "subscription",
            Some(&id.to_string()),
            serde_json::json!({
                "userId": updated.user_id.to_string(),
                "planId": updated.plan_id.to_string(),
            }),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        // Without another subscription in force the owner's sessions end
        // now, not when a gateway next reports; the access event closes
        // their tunnels.
        let others: Vec<Subscription> = subscriptions::table
            .filter(subscriptions::user_id.eq(updated.user_id))
            .filter(subscriptions::status.eq(SubscriptionStatus::Active))
            .select(Subscription::as_select())
            .load(conn)
            .await?;
        if !others.iter().any(|s| crate::access::is_current(s, ts)) {
            let owned = devices::table
                .filter(devices::user_id.eq(updated.user_id))
                .select(devices::id);
            crate::end_open_sessions!(conn, outbox, owned, EndReason::SubscriptionEnded, ts);
        }
        // No device is beyond the limit of a subscription no longer in
        // force. The owner's row is held for that, so no registration
        // slips in (after the subscription's row here: the appliers' lock
        // above orders this against every other change that takes both).
        crate::hold_owner!(conn, updated.user_id, ts);
        crate::fit_device_limit!(conn, outbox, updated.user_id, ts);
        outbox.access(AccessChange::SubscriptionCancelled, Some(updated.user_id));
        Ok::<_, AppError>(Some(updated))
    })?;
    match cancelled {
        Some(s) => Ok(s),
        // Cancelled already: answered as it is, and nothing is audited or
        // sent again.
        None => by_ids(db, &[id])
            .await?
            .pop()
            .ok_or(AppError::NotFound("subscription")),
    }
}

/// Filters on the subscription list.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionFilter {
    /// Only this user's (admins; users always see only their own).
    pub user_id: Option<UserId>,
    /// Only this stored status.
    pub status: Option<SubscriptionStatus>,
}

/// A page of subscriptions: the actor's own, or anyone's for admins.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &SubscriptionFilter,
    page: &PageArgs,
) -> AppResult<Page<Subscription>> {
    let user_id = actor.scope(filter.user_id)?;
    let rows = db_run!(db, |conn| {
        let mut q = subscriptions::table
            .select(Subscription::as_select())
            .into_boxed();
        if let Some(u) = user_id {
            q = q.filter(subscriptions::user_id.eq(u));
        }
        if let Some(s) = filter.status {
            q = q.filter(subscriptions::status.eq(s));
        }
        paginate!(q, subscriptions, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// How many of the list's rows match `filter` (the actor's own, or
/// anyone's for admins).
pub async fn count(db: &Db, actor: &Actor, filter: &SubscriptionFilter) -> AppResult<i64> {
    let user_id = actor.scope(filter.user_id)?;
    Ok(db_run!(db, |conn| {
        let mut q = subscriptions::table.into_boxed();
        if let Some(u) = user_id {
            q = q.filter(subscriptions::user_id.eq(u));
        }
        if let Some(s) = filter.status {
            q = q.filter(subscriptions::status.eq(s));
        }
        q.count().get_result::<i64>(conn).await?
    }))
}

/// The subscription stored as active (at most one) of each of `user_ids`.
pub async fn current_for_users(db: &Db, user_ids: &[UserId]) -> AppResult<Vec<Subscription>> {
    Ok(db_run!(db, |conn| subscriptions::table
        .filter(subscriptions::user_id.eq_any(user_ids))
        .filter(subscriptions::status.eq(SubscriptionStatus::Active))
        .select(Subscription::as_select())
        .load(conn)
        .await?))
}

/// Loads subscriptions by id.
pub async fn by_ids(db: &Db, ids: &[SubscriptionId]) -> AppResult<Vec<Subscription>> {
    Ok(db_run!(db, |conn| subscriptions::table
        .filter(subscriptions::id.eq_any(ids))
        .select(Subscription::as_select())
        .load(conn)
        .await?))
}
