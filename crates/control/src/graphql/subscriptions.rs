//! Subscriptions (the billing record) over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, InputObject, MaybeUndefined, Object, SimpleObject};
use uuid::Uuid;

use super::accounts::User;
use super::catalogue::Plan;
use super::counts::{Counted, counted_connection};
use super::loaders::{DbLoader, loader_error};
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, SignedIn, actor};
use crate::access;
use crate::db::models;
use crate::error::AppError;
use crate::ids::{PlanId, UserId};
use crate::pagination::PageArgs;
use crate::subscriptions::{self, SubscriptionFilter, SubscriptionStatus};
use crate::usage_accounting::allowance;

/// A user's right to use the service, granted from a plan.
#[derive(SimpleObject, Clone)]
#[graphql(complex)]
pub struct Subscription {
    /// Stable id.
    pub id: Uuid,
    /// Status as of now (an active one past its expiry shows EXPIRED).
    pub status: SubscriptionStatus,
    /// Start (UTC).
    pub starts_at: chrono::DateTime<chrono::Utc>,
    /// End (UTC).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Traffic allowance per period in bytes; null is unlimited.
    pub traffic_limit_bytes: Option<BigInt>,
    /// Traffic used in the current period, in bytes.
    pub traffic_used_bytes: BigInt,
    /// Whether the period's allowance is used up (no tunnel is admitted
    /// until the next period).
    pub quota_reached: bool,
    /// Start of the current traffic period (UTC).
    pub period_start: chrono::DateTime<chrono::Utc>,
    /// How many active devices it covers (the plan's limit when it was
    /// granted; a later change of the plan leaves it as it is).
    pub device_limit: i32,
    /// The subscriber (resolved by `user`).
    #[graphql(skip)]
    pub user_id: UserId,
    /// The plan (resolved by `plan`).
    #[graphql(skip)]
    pub plan_id: PlanId,
}

impl From<models::Subscription> for Subscription {
    fn from(s: models::Subscription) -> Self {
        Subscription {
            id: s.id.uuid(),
            status: access::shown_status(&s, models::now()),
            starts_at: s.starts_at.and_utc(),
            expires_at: s.expires_at.and_utc(),
            traffic_limit_bytes: s.traffic_limit_bytes.map(BigInt),
            traffic_used_bytes: BigInt(s.traffic_used_bytes),
            quota_reached: access::quota_spent(s.traffic_used_bytes, s.traffic_limit_bytes),
            period_start: s.period_start.and_utc(),
            device_limit: s.device_limit,
            user_id: s.user_id,
            plan_id: s.plan_id,
        }
    }
}

#[ComplexObject]
impl Subscription {
    /// The subscriber.
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.user_id)
            .await
            .map_err(loader_error)?
            .map(User::from))
    }

    /// The plan it was granted from.
    async fn plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Plan>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.plan_id)
            .await
            .map_err(loader_error)?
            .map(Plan::from))
    }
}

/// Filters on `subscriptions`.
#[derive(InputObject, Default)]
pub struct SubscriptionFilterInput {
    /// Only this user's: admins, anyone's; users, their own id (another's
    /// is FORBIDDEN).
    pub user_id: Option<Uuid>,
    /// Only this stored status.
    pub status: Option<SubscriptionStatus>,
}

/// Subscription queries.
#[derive(Default)]
pub struct SubscriptionQuery;

#[Object]
impl SubscriptionQuery {
    /// Subscriptions: the caller's own, or anyone's for admins.
    #[graphql(guard = "SignedIn")]
    async fn subscriptions(
        &self,
        ctx: &Context<'_>,
        filter: Option<SubscriptionFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Subscription, Counted>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let f = filter.unwrap_or_default();
        let filter = SubscriptionFilter {
            user_id: f.user_id.map(UserId::from),
            status: f.status,
        };
        let rows = subscriptions::list(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(counted_connection(
            rows,
            after.is_some(),
            Counted::Subscriptions(filter),
            |s| (s.created_at, s.id),
            Subscription::from,
        ))
    }
}

/// Subscription mutations.
#[derive(Default)]
pub struct SubscriptionMutation;

#[Object]
impl SubscriptionMutation {
    /// Admin: grants a plan to a user, starting now.
    #[graphql(guard = "AdminOnly")]
    async fn grant_subscription(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        plan_id: Uuid,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        subscriptions::grant(&api.db, &actor(ctx)?, user_id.into(), plan_id.into())
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: adds days to a subscription, from its expiry (from now if it
    /// has lapsed, which makes it active again). CONFLICT for a cancelled
    /// subscription, and for a lapsed one of an archived plan.
    #[graphql(guard = "AdminOnly")]
    async fn extend_subscription(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        days: i32,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        subscriptions::extend(&api.db, &actor(ctx)?, id.into(), days)
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: sets one subscription's traffic allowance per period in
    /// bytes (null: unlimited); its plan and the plan's other
    /// subscriptions keep theirs (the argument is required; null lifts
    /// the allowance). Raised past what the period has used, a
    /// subscriber cut off by the allowance connects again at once; lowered
    /// to it or below, the subscriber's tunnels are closed (QUOTA_REACHED);
    /// lowered above it, open tunnels run on to the new allowance.
    /// CONFLICT for a cancelled subscription.
    #[graphql(guard = "AdminOnly")]
    async fn set_subscription_traffic_limit(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        traffic_limit_bytes: MaybeUndefined<BigInt>,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        // Left out is a mistake, not "unlimited": null says that.
        let limit = match traffic_limit_bytes {
            MaybeUndefined::Undefined => {
                return Err(
                    AppError::bad("trafficLimitBytes is required (null for unlimited)")
                        .into_graphql(),
                );
            }
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(b) => Some(b.0),
        };
        allowance::set_limit(&api.db, &actor(ctx)?, id.into(), limit)
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: starts the subscription's traffic period over now, with
    /// nothing used (PERIOD_RESET); a MONTHLY plan's next period counts
    /// from now. A subscriber cut off by the allowance connects again at
    /// once. CONFLICT for a cancelled subscription.
    #[graphql(guard = "AdminOnly")]
    async fn reset_subscription_traffic(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        allowance::reset(&api.db, &actor(ctx)?, id.into())
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: moves a subscription to another plan in place: the plan's
    /// traffic allowance and device limit replace the subscription's; what
    /// the period has used, the period and the expiry stay (reset the
    /// traffic or extend for those). A subscriber over the new allowance
    /// is cut off (QUOTA_REACHED), one under it again connects at once;
    /// devices beyond a smaller device limit are refused, the newest
    /// first. NOT_FOUND for an unknown plan; CONFLICT for an archived plan
    /// (other than the subscription's own, which applies its current
    /// terms again; with them already, the subscription is answered as it
    /// is, unaudited) and for a cancelled subscription.
    #[graphql(guard = "AdminOnly")]
    async fn change_subscription_plan(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        plan_id: Uuid,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        allowance::change_plan(&api.db, &actor(ctx)?, id.into(), plan_id.into())
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: cancels a subscription now; its tunnels are closed. A lapsed
    /// one may be cancelled (it can no longer be extended); one cancelled
    /// already is answered as it is (nothing audited again).
    #[graphql(guard = "AdminOnly")]
    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        subscriptions::cancel(&api.db, &actor(ctx)?, id.into())
            .await
            .map(Subscription::from)
            .gql()
    }
}
