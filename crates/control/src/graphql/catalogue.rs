//! Plans and regions over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::{Context, InputObject, MaybeUndefined, Object, SimpleObject};
use uuid::Uuid;

use super::inputs::kept;
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, SignedIn, actor, connection};
use crate::catalogue::{self, NewPlan, PlanChanges, ResetPeriod};
use crate::db::models;
use crate::pagination::PageArgs;

/// A plan of the catalogue.
#[derive(SimpleObject, Clone)]
pub struct Plan {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Price in cents of `currency`.
    pub price_cents: BigInt,
    /// ISO currency code.
    pub currency: String,
    /// Length of a subscription, in days.
    pub duration_days: i32,
    /// Traffic allowance per period in bytes; null is unlimited.
    pub traffic_limit_bytes: Option<BigInt>,
    /// Most active devices.
    pub device_limit: i32,
    /// When the allowance starts over.
    pub reset_period: ResetPeriod,
    /// Archived plans can't be granted any more.
    pub archived: bool,
    /// Creation time (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<models::Plan> for Plan {
    fn from(p: models::Plan) -> Self {
        Plan {
            id: p.id.uuid(),
            name: p.name,
            price_cents: BigInt(p.price_cents),
            currency: p.currency,
            duration_days: p.duration_days,
            traffic_limit_bytes: p.traffic_limit_bytes.map(BigInt),
            device_limit: p.device_limit,
            reset_period: p.reset_period,
            archived: p.archived,
            created_at: p.created_at.and_utc(),
        }
    }
}

/// A region: a group of nodes sharing one pool key.
#[derive(SimpleObject, Clone)]
pub struct Region {
    /// Stable id.
    pub id: Uuid,
    /// Short code, e.g. `eu-west`.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Cipher of the region's pool key.
    pub pool_method: String,
    /// Creation time (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<models::Region> for Region {
    fn from(r: models::Region) -> Self {
        Region {
            id: r.id.uuid(),
            code: r.code,
            name: r.name,
            pool_method: r.pool_method,
            created_at: r.created_at.and_utc(),
        }
    }
}

/// Fields of a new plan.
#[derive(InputObject)]
pub struct CreatePlanInput {
    /// Unique name (1-100 characters).
    pub name: String,
    /// Price in cents (0 or more).
    pub price_cents: BigInt,
    /// Three-letter currency code (default USD).
    #[graphql(default = "USD")]
    pub currency: String,
    /// Subscription length in days (1-3660).
    pub duration_days: i32,
    /// Traffic allowance in bytes; omit for unlimited.
    pub traffic_limit_bytes: Option<BigInt>,
    /// Most active devices (1-1000).
    pub device_limit: i32,
    /// When the allowance starts over (default NONE).
    #[graphql(default_with = "ResetPeriod::None")]
    pub reset_period: ResetPeriod,
}

/// Changes to a plan; omitted fields stay as they are (null is refused,
/// but for `trafficLimitBytes`).
#[derive(InputObject, Default)]
pub struct UpdatePlanInput {
    /// New name.
    pub name: MaybeUndefined<String>,
    /// New price in cents.
    pub price_cents: MaybeUndefined<BigInt>,
    /// New duration in days.
    pub duration_days: MaybeUndefined<i32>,
    /// New allowance in bytes (explicit null makes it unlimited).
    pub traffic_limit_bytes: MaybeUndefined<BigInt>,
    /// New device limit.
    pub device_limit: MaybeUndefined<i32>,
}

/// Catalogue queries.
#[derive(Default)]
pub struct CatalogueQuery;

#[Object]
impl CatalogueQuery {
    /// Plans, oldest first; archived ones only for admins who ask.
    #[graphql(guard = "SignedIn")]
    async fn plans(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false)] include_archived: bool,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Plan>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let rows = catalogue::list_plans(&api.db, &actor(ctx)?, include_archived, &page)
            .await
            .gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |p| (p.created_at, p.id),
            Plan::from,
        ))
    }

    /// Regions, oldest first.
    #[graphql(guard = "SignedIn")]
    async fn regions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Region>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let rows = catalogue::list_regions(&api.db, &page).await.gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |r| (r.created_at, r.id),
            Region::from,
        ))
    }
}

/// Catalogue mutations.
#[derive(Default)]
pub struct CatalogueMutation;

#[Object]
impl CatalogueMutation {
    /// Admin: adds a plan.
    #[graphql(guard = "AdminOnly")]
    async fn create_plan(
        &self,
        ctx: &Context<'_>,
        input: CreatePlanInput,
    ) -> async_graphql::Result<Plan> {
        let api = ctx.data::<AppContext>()?;
        let new = NewPlan {
            name: input.name,
            price_cents: input.price_cents.0,
            currency: input.currency,
            duration_days: input.duration_days,
            traffic_limit_bytes: input.traffic_limit_bytes.map(|b| b.0),
            device_limit: input.device_limit,
            reset_period: input.reset_period,
        };
        catalogue::create_plan(&api.db, &actor(ctx)?, new)
            .await
            .map(Plan::from)
            .gql()
    }

    /// Admin: changes a plan; existing subscriptions keep their terms
    /// (`setSubscriptionTrafficLimit` changes one subscription's allowance).
    #[graphql(guard = "AdminOnly")]
    async fn update_plan(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdatePlanInput,
    ) -> async_graphql::Result<Plan> {
        let api = ctx.data::<AppContext>()?;
        let changes = PlanChanges {
            name: kept("name", input.name)?,
            price_cents: kept("priceCents", input.price_cents)?.map(|b| b.0),
            duration_days: kept("durationDays", input.duration_days)?,
            traffic_limit_bytes: match input.traffic_limit_bytes {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(v) => Some(Some(v.0)),
            },
            device_limit: kept("deviceLimit", input.device_limit)?,
        };
        catalogue::update_plan(&api.db, &actor(ctx)?, id.into(), changes)
            .await
            .map(Plan::from)
            .gql()
    }

    /// Admin: archives a plan (no new grants; running subscriptions continue).
    #[graphql(guard = "AdminOnly")]
    async fn archive_plan(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Plan> {
        let api = ctx.data::<AppContext>()?;
        catalogue::archive_plan(&api.db, &actor(ctx)?, id.into())
            .await
            .map(Plan::from)
            .gql()
    }

    /// Admin: adds a region with a fresh pool key.
    #[graphql(guard = "AdminOnly")]
    async fn create_region(
        &self,
        ctx: &Context<'_>,
        code: String,
        name: String,
        pool_method: Option<String>,
    ) -> async_graphql::Result<Region> {
        let api = ctx.data::<AppContext>()?;
        catalogue::create_region(&api.db, &actor(ctx)?, &code, &name, pool_method.as_deref())
            .await
            .map(Region::from)
            .gql()
    }

    /// Admin: renames a region; its code and pool key stay. The same name
    /// again answers the region as it is.
    #[graphql(guard = "AdminOnly")]
    async fn rename_region(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        name: String,
    ) -> async_graphql::Result<Region> {
        let api = ctx.data::<AppContext>()?;
        catalogue::rename_region(&api.db, &actor(ctx)?, id.into(), &name)
            .await
            .map(Region::from)
            .gql()
    }

    /// Admin: deletes a region no node or gateway belongs to (CONFLICT
    /// while one does).
    #[graphql(guard = "AdminOnly")]
    async fn delete_region(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<bool> {
        let api = ctx.data::<AppContext>()?;
        catalogue::delete_region(&api.db, &actor(ctx)?, id.into())
            .await
            .gql()?;
        Ok(true)
    }
}
