//! Subscriptions (the billing record) over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use uuid::Uuid;

use super::accounts::User;
use super::catalogue::Plan;
use super::loaders::{DbLoader, PlanId, UserId, loader_error};
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, SignedIn, connection, viewer};
use crate::db::models;
use crate::events::AccessEvent;
use crate::pagination::PageArgs;
use crate::subscriptions::{self, SubscriptionFilter, SubscriptionStatus};

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
    /// Start of the current traffic period (UTC).
    pub period_start: chrono::DateTime<chrono::Utc>,
    #[graphql(skip)]
    pub user_id: String,
    #[graphql(skip)]
    pub plan_id: String,
}

impl From<models::Subscription> for Subscription {
    fn from(s: models::Subscription) -> Self {
        Subscription {
            id: super::uuid(&s.id),
            status: SubscriptionStatus::of(&s, crate::db::models::now()),
            starts_at: s.starts_at.and_utc(),
            expires_at: s.expires_at.and_utc(),
            traffic_limit_bytes: s.traffic_limit_bytes.map(BigInt),
            traffic_used_bytes: BigInt(s.traffic_used_bytes),
            period_start: s.period_start.and_utc(),
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
            .load_one(UserId(self.user_id.clone()))
            .await
            .map_err(loader_error)?
            .map(User::from))
    }

    /// The plan it was granted from.
    async fn plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Plan>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(PlanId(self.plan_id.clone()))
            .await
            .map_err(loader_error)?
            .map(Plan::from))
    }
}

/// Filters on `subscriptions`.
#[derive(InputObject, Default)]
pub struct SubscriptionFilterInput {
    /// Admins: only this user's.
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
    ) -> async_graphql::Result<Connection<String, Subscription>> {
        let api = ctx.data::<AppContext>()?;
        let v = viewer(ctx)?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let f = filter.unwrap_or_default();
        let user_id = if v.is_admin() {
            f.user_id.map(|i| i.to_string())
        } else {
            Some(v.user_id.clone())
        };
        let filter = SubscriptionFilter {
            user_id,
            status: f.status,
        };
        let rows = subscriptions::list(&api.db, &filter, &page).await.gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |s| (s.created_at, s.id.clone()),
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
        let sub = subscriptions::grant(
            &api.db,
            &viewer(ctx)?.user_id,
            &user_id.to_string(),
            &plan_id.to_string(),
        )
        .await
        .gql()?;
        // The new plan may allow less than the one it replaces.
        api.events
            .access_changed(AccessEvent::new(
                "subscription_replaced",
                Some(&sub.user_id),
            ))
            .await;
        Ok(Subscription::from(sub))
    }

    /// Admin: adds days to a subscription.
    #[graphql(guard = "AdminOnly")]
    async fn extend_subscription(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        days: i32,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        subscriptions::extend(&api.db, &viewer(ctx)?.user_id, &id.to_string(), days)
            .await
            .map(Subscription::from)
            .gql()
    }

    /// Admin: cancels a subscription now; its tunnels are closed.
    #[graphql(guard = "AdminOnly")]
    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<Subscription> {
        let api = ctx.data::<AppContext>()?;
        let sub = subscriptions::cancel(&api.db, &viewer(ctx)?.user_id, &id.to_string())
            .await
            .gql()?;
        api.events
            .access_changed(AccessEvent::new(
                "subscription_cancelled",
                Some(&sub.user_id),
            ))
            .await;
        Ok(Subscription::from(sub))
    }
}
