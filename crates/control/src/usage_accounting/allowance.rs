//! An operator's changes to one subscription's traffic: its allowance per
//! period ([`set_limit`]), a new period from now ([`reset`]) and another
//! plan's terms in place ([`change_plan`]). Both run
//! under the appliers' lock, so no pass charges the subscription in
//! between, and both tell gateways in their transaction: a subscriber cut
//! off by the allowance may connect again at once (gateways drop the
//! refusals they cached), one whose allowance fell to what the period has
//! used is cut off as reaching it would (sessions ended with
//! `quota_exceeded`, a `QUOTA_REACHED` event), and for one left with less
//! but not nothing gateways ask for the open sessions' grants again (a
//! grant sized from the old allowance, or an unlimited one, could let
//! through more than the new one leaves).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::access::{is_current, quota_spent};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::Statement;
use crate::db::models::{Plan, Subscription, now};
use crate::db::schema::{audit_log, devices, plans, sessions, subscriptions, users};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::feed::{QuotaEvent, QuotaEventKind};
use crate::ids::{PlanId, SessionId, SubscriptionId};
use crate::status::{EndReason, SubscriptionStatus};
use crate::{audit, db_tx, validate};

/// What a change of the allowance or of the used bytes means for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing a gateway holds changes.
    None,
    /// The allowance was spent and is not any more: gateways drop the
    /// refusals they cached.
    Lifted,
    /// The allowance is spent now and was not: the owner's tunnels close.
    Reached,
    /// What is left shrank without running out: gateways ask for the open
    /// sessions' grants again (one sized from the old allowance could let
    /// through more than the new one leaves).
    Lowered,
}

/// The effect of moving a subscription from `before` to `after` (allowance
/// and used bytes), for one in force at the time (`current`).
pub fn effect(current: bool, before: (Option<i64>, i64), after: (Option<i64>, i64)) -> Effect {
    let was = quota_spent(before.1, before.0);
    let is = quota_spent(after.1, after.0);
    let left = |(limit, used): (Option<i64>, i64)| limit.map(|l| l.saturating_sub(used));
    // `None` (unlimited) is more than any number.
    let shrank = match (left(before), left(after)) {
        (None, Some(_)) => true,
        (Some(b), Some(a)) => a < b,
        _ => false,
    };
    match (was, is) {
        (true, false) => Effect::Lifted,
        (false, true) if current => Effect::Reached,
        (false, false) if current && shrank => Effect::Lowered,
        _ => Effect::None,
    }
}

/// Locks the subscription's row (PostgreSQL; SQLite has one writer).
const SUBSCRIPTION_LOCK: Statement = Statement {
    pg: "SELECT 1 FROM subscriptions WHERE id = $1 FOR UPDATE",
    sqlite: "",
};

/// One change of subscription `$id` in a transaction of its own, on either
/// backend: the appliers' lock, the subscription read (a cancelled one is
/// refused), the update `$set` (of `$sub` as read, at `$ts`; it may read
/// through `$conn` first), its audit entry (`$action`, `$details` of the
/// row as read and as `$updated`), then what it means: a device limit that
/// changed fitted to the owner's devices, the quota event `$kind` (if
/// any), and per [`effect`] the owner's sessions ended with a
/// `QUOTA_REACHED` event, the refusals gateways cached dropped, or the
/// owner's open sessions' grants asked for again.
macro_rules! change {
    ($db:expr, $actor:expr, $id:expr, $action:expr, $kind:expr,
     |$conn:ident, $sub:ident, $ts:ident| $set:expr, |$updated:ident| $details:expr) => {
        db_tx!($db, |$conn, outbox| {
            let $ts = now();
            crate::apply_lock!($conn);
            // Read under the row's lock (SQLite has one writer anyway), so
            // a cancellation cannot slip in between the check and the
            // update below.
            if let Some(lock) = SUBSCRIPTION_LOCK.on($conn) {
                diesel::sql_query(lock)
                    .bind::<diesel::sql_types::Text, _>($id.to_string())
                    .execute($conn)
                    .await?;
            }
            let $sub: Subscription = subscriptions::table
                .find($id)
                .select(Subscription::as_select())
                .first($conn)
                .await
                .optional()?
                .ok_or(AppError::NotFound("subscription"))?;
            if $sub.status == SubscriptionStatus::Cancelled {
                return Err(AppError::Conflict(
                    "a cancelled subscription keeps its terms: grant a new one".into(),
                ));
            }
            let values = $set;
            let updated: Subscription = diesel::update(subscriptions::table.find($id))
                .set(values)
                .returning(Subscription::as_returning())
                .get_result($conn)
                .await?;
            let $updated = &updated;
            let entry = audit::entry(
                $actor,
                $action,
                "subscription",
                Some(&$id.to_string()),
                $details,
            );
            diesel::insert_into(audit_log::table)
                .values(&entry)
                .execute($conn)
                .await?;
            // A new plan's device limit holds for the devices as they are
            // (the owner's row after the subscription's, as cancellations
            // take them).
            if updated.device_limit != $sub.device_limit {
                crate::hold_owner!($conn, updated.user_id, $ts);
                crate::fit_device_limit!($conn, outbox, updated.user_id, $ts);
            }
            let effect = effect(
                is_current(&$sub, $ts),
                ($sub.traffic_limit_bytes, $sub.traffic_used_bytes),
                (updated.traffic_limit_bytes, updated.traffic_used_bytes),
            );
            let reached = (effect == Effect::Reached).then_some(QuotaEventKind::QuotaReached);
            let kinds: Vec<QuotaEventKind> = $kind.into_iter().chain(reached).collect();
            if !kinds.is_empty() {
                let email: String = users::table
                    .find(updated.user_id)
                    .select(users::email)
                    .first($conn)
                    .await?;
                for kind in kinds {
                    outbox.quota(QuotaEvent {
                        kind,
                        subscription_id: updated.id.uuid(),
                        user_id: updated.user_id.uuid(),
                        user_email: email.clone(),
                        traffic_limit_bytes: updated.traffic_limit_bytes,
                        traffic_used_bytes: updated.traffic_used_bytes,
                        at: $ts.and_utc(),
                    });
                }
            }
            // The owner's devices, whose open sessions the effect concerns.
            let owned = devices::table
                .filter(devices::user_id.eq(updated.user_id))
                .select(devices::id);
            match effect {
                Effect::None => {}
                Effect::Lifted => {
                    outbox.access(AccessChange::SubscriptionExtended, Some(updated.user_id));
                }
                Effect::Reached => {
                    crate::end_open_sessions!($conn, outbox, owned, EndReason::QuotaExceeded, $ts);
                    outbox.access(AccessChange::QuotaExceeded, Some(updated.user_id));
                }
                Effect::Lowered => {
                    let open: Vec<SessionId> = sessions::table
                        .filter(sessions::device_id.eq_any(owned))
                        .filter(sessions::ended_at.is_null())
                        .select(sessions::id)
                        .load($conn)
                        .await?;
                    outbox.regrant(updated.user_id, &open);
                }
            }
            Ok::<_, AppError>(updated)
        })
    };
}

/// Admin: sets one subscription's traffic allowance per period (`None`:
/// unlimited). Its plan, and other subscriptions of the plan, keep theirs.
/// The allowance it has already changes nothing and is not audited.
pub async fn set_limit(
    db: &Db,
    actor: &Actor,
    id: SubscriptionId,
    limit: Option<i64>,
) -> AppResult<Subscription> {
    actor.require_admin()?;
    if let Some(v) = limit {
        validate::range("trafficLimitBytes", v, 0, i64::MAX)?;
    }
    // The allowance it has already: answered as it is, and nothing
    // audited (as other changes that change nothing).
    let current = crate::subscriptions::by_ids(db, &[id]).await?.pop();
    if let Some(sub) = current.filter(|s| {
        s.traffic_limit_bytes == limit && s.status != crate::status::SubscriptionStatus::Cancelled
    }) {
        return Ok(sub);
    }
    change!(
        db,
        actor,
        id,
        "set_subscription_traffic_limit",
        None,
        |conn, sub, ts| (
            subscriptions::traffic_limit_bytes.eq(limit),
            subscriptions::updated_at.eq(ts),
        ),
        |_updated| serde_json::json!({
            "trafficLimitBytes": limit.map(|v| v.to_string()),
            "previous": sub.traffic_limit_bytes.map(|v| v.to_string()),
        })
    )
}

/// Admin: starts the subscription's traffic period over now: nothing used
/// (a monthly plan's next period counts from now).
pub async fn reset(db: &Db, actor: &Actor, id: SubscriptionId) -> AppResult<Subscription> {
    actor.require_admin()?;
    change!(
        db,
        actor,
        id,
        "reset_subscription_traffic",
        Some(QuotaEventKind::PeriodReset),
        |conn, sub, ts| (
            subscriptions::traffic_used_bytes.eq(0),
            subscriptions::period_start.eq(ts),
            subscriptions::updated_at.eq(ts),
        ),
        |_updated| serde_json::json!({
            "usedBytes": sub.traffic_used_bytes.to_string(),
            "previousPeriodStart": sub.period_start.and_utc(),
        })
    )
}

/// Admin: moves a subscription to another plan in place: the plan's
/// traffic allowance and device limit replace the subscription's, and what
/// the period has used, the period itself and the expiry stay (a new
/// period from now is [`reset`]; new paid time is an extension). Applied
/// as [`set_limit`] applies an allowance: a subscriber now over it is cut
/// off, one no longer over it connects again; devices beyond a smaller
/// limit are refused, the newest first. An archived plan takes no one new
/// (the subscription's own plan may be applied again, to take up its
/// current terms; with them already, it is answered as it is, unaudited);
/// a cancelled subscription keeps its terms.
pub async fn change_plan(
    db: &Db,
    actor: &Actor,
    id: SubscriptionId,
    plan_id: PlanId,
) -> AppResult<Subscription> {
    actor.require_admin()?;
    // Its own plan, whose terms it has already: answered as it is, and
    // nothing audited (as other changes that change nothing).
    let current = crate::subscriptions::by_ids(db, &[id]).await?.pop();
    if let Some(sub) = current.filter(|s| s.plan_id == plan_id)
        && let Some(plan) = crate::catalogue::plans_by_ids(db, &[plan_id]).await?.pop()
        && (plan.traffic_limit_bytes, plan.device_limit)
            == (sub.traffic_limit_bytes, sub.device_limit)
        && sub.status != crate::status::SubscriptionStatus::Cancelled
    {
        return Ok(sub);
    }
    change!(
        db,
        actor,
        id,
        "change_subscription_plan",
        None,
        |conn, sub, ts| {
            let plan: Plan = plans::table
                .find(plan_id)
                .select(Plan::as_select())
                .first(conn)
                .await
                .optional()?
                .ok_or(AppError::NotFound("plan"))?;
            if plan.archived && plan.id != sub.plan_id {
                return Err(AppError::Conflict(
                    "the plan is archived: it takes no new subscribers".into(),
                ));
            }
            (
                subscriptions::plan_id.eq(plan.id),
                subscriptions::traffic_limit_bytes.eq(plan.traffic_limit_bytes),
                subscriptions::device_limit.eq(plan.device_limit),
                subscriptions::updated_at.eq(ts),
            )
        },
        |updated| serde_json::json!({
            "planId": updated.plan_id.to_string(),
            "previousPlanId": sub.plan_id.to_string(),
            "trafficLimitBytes": updated.traffic_limit_bytes.map(|v| v.to_string()),
            "previousTrafficLimitBytes": sub.traffic_limit_bytes.map(|v| v.to_string()),
            "deviceLimit": updated.device_limit,
            "previousDeviceLimit": sub.device_limit,
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_a_spent_allowance_lifts_the_refusal() {
        assert_eq!(effect(true, (Some(10), 10), (Some(20), 10)), Effect::Lifted);
        assert_eq!(effect(true, (Some(10), 12), (None, 12)), Effect::Lifted);
        // A reset lifts it too, in force or not.
        assert_eq!(effect(false, (Some(10), 10), (Some(10), 0)), Effect::Lifted);
    }

    #[test]
    fn lowering_to_what_was_used_reaches_the_allowance() {
        assert_eq!(
            effect(true, (Some(20), 10), (Some(10), 10)),
            Effect::Reached
        );
        assert_eq!(effect(true, (None, 10), (Some(0), 10)), Effect::Reached);
        // Not for a subscription that is not in force: nothing is open.
        assert_eq!(effect(false, (Some(20), 10), (Some(10), 10)), Effect::None);
    }

    #[test]
    fn less_left_but_not_spent_asks_the_grants_again() {
        assert_eq!(
            effect(true, (Some(20), 10), (Some(11), 10)),
            Effect::Lowered
        );
        assert_eq!(effect(true, (None, 10), (Some(1000), 10)), Effect::Lowered);
        // Nothing is open on a subscription not in force.
        assert_eq!(effect(false, (Some(20), 10), (Some(11), 10)), Effect::None);
    }

    #[test]
    fn more_left_or_still_spent_changes_nothing() {
        assert_eq!(effect(true, (Some(20), 10), (Some(30), 10)), Effect::None);
        assert_eq!(effect(true, (Some(20), 10), (None, 10)), Effect::None);
        assert_eq!(effect(true, (Some(20), 10), (Some(20), 0)), Effect::None);
        assert_eq!(effect(true, (Some(10), 12), (Some(11), 12)), Effect::None);
        assert_eq!(effect(true, (None, 5), (None, 0)), Effect::None);
    }
}
