//! Sessions, usage reports and the audit log over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use uuid::Uuid;

use super::counts::{Counted, counted_connection};
use super::devices::Device;
use super::loaders::{DbLoader, loader_error};
use super::nodes::{GatewayNode, OutlineNode};
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, SignedIn, actor};
use crate::audit::{self, AuditFilter};
use crate::db::models;
use crate::ids::{DeviceId, GatewayNodeId, OutlineNodeId, UserId};
use crate::pagination::{ListOrder, PageArgs};
use crate::sessions::{self, Granularity, SessionFilter};

/// A device's stay on one node through one gateway.
#[derive(SimpleObject, Clone)]
#[graphql(complex)]
pub struct Session {
    /// Stable id.
    pub id: Uuid,
    /// Start (UTC).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Last traffic or tunnel (UTC).
    pub last_activity_at: chrono::DateTime<chrono::Utc>,
    /// End (UTC); null while open.
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Bytes from the client.
    pub bytes_up: BigInt,
    /// Bytes to the client.
    pub bytes_down: BigInt,
    /// The device (resolved by `device`).
    #[graphql(skip)]
    pub device_id: DeviceId,
    /// The node (resolved by `outlineNode`).
    #[graphql(skip)]
    pub outline_node_id: Option<OutlineNodeId>,
    /// The gateway (resolved by `gatewayNode`).
    #[graphql(skip)]
    pub gateway_node_id: Option<GatewayNodeId>,
}

impl From<models::Session> for Session {
    fn from(s: models::Session) -> Self {
        Session {
            id: s.id.uuid(),
            started_at: s.started_at.and_utc(),
            last_activity_at: s.last_activity_at.and_utc(),
            ended_at: s.ended_at.map(|t| t.and_utc()),
            end_reason: s.end_reason.map(|r| r.as_str().to_owned()),
            bytes_up: BigInt(s.bytes_up),
            bytes_down: BigInt(s.bytes_down),
            device_id: s.device_id,
            outline_node_id: s.outline_node_id,
            gateway_node_id: s.gateway_node_id,
        }
    }
}

#[ComplexObject]
impl Session {
    /// The device.
    async fn device(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Device>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.device_id)
            .await
            .map_err(loader_error)?
            .map(Device::from))
    }

    /// The Outline node (null once deleted).
    async fn outline_node(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<OutlineNode>> {
        let Some(id) = self.outline_node_id else {
            return Ok(None);
        };
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(id)
            .await
            .map_err(loader_error)?
            .map(OutlineNode::from))
    }

    /// The gateway (null once deleted).
    async fn gateway_node(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<GatewayNode>> {
        let Some(id) = self.gateway_node_id else {
            return Ok(None);
        };
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(id)
            .await
            .map_err(loader_error)?
            .map(GatewayNode::from))
    }
}

/// Filters on `sessions`.
#[derive(InputObject, Default)]
pub struct SessionFilterInput {
    /// Only this device's.
    pub device_id: Option<Uuid>,
    /// Only this user's devices'.
    pub user_id: Option<Uuid>,
    /// Only on this Outline node.
    pub outline_node_id: Option<Uuid>,
    /// Only open (true) or ended (false).
    pub open: Option<bool>,
}

/// Bytes moved in one period.
#[derive(SimpleObject)]
pub struct UsagePoint {
    /// Start of the period (UTC).
    pub period_start: chrono::DateTime<chrono::Utc>,
    /// Bytes from clients.
    pub bytes_up: BigInt,
    /// Bytes to clients.
    pub bytes_down: BigInt,
}

/// One admin action.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// Stable id.
    pub id: Uuid,
    /// The admin (null once deleted).
    pub actor_user_id: Option<Uuid>,
    /// What was done, e.g. `grant_subscription`.
    pub action: String,
    /// Kind of thing changed.
    pub target_type: String,
    /// Id of the thing changed.
    pub target_id: Option<Uuid>,
    /// Details (JSON; never secrets).
    pub details: String,
    /// When (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Filters on `auditLog`.
#[derive(InputObject, Default)]
pub struct AuditFilterInput {
    /// Only this action.
    pub action: Option<String>,
    /// Only this admin's actions.
    pub actor_user_id: Option<Uuid>,
    /// Only entries about this kind of target (e.g. `user`, `device`).
    pub target_type: Option<String>,
    /// Only entries about this target (a user's trail: its id, and each of
    /// its devices' and subscriptions' ids).
    pub target_id: Option<Uuid>,
}

/// Activity queries.
#[derive(Default)]
pub struct ActivityQuery;

#[Object]
impl ActivityQuery {
    /// Admin: sessions by their start, oldest first unless `order` says
    /// NEWEST_FIRST.
    #[graphql(guard = "AdminOnly")]
    async fn sessions(
        &self,
        ctx: &Context<'_>,
        filter: Option<SessionFilterInput>,
        first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] order: ListOrder,
    ) -> async_graphql::Result<Connection<String, Session, Counted>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?.ordered(order);
        let f = filter.unwrap_or_default();
        let filter = SessionFilter {
            device_id: f.device_id.map(DeviceId::from),
            user_id: f.user_id.map(UserId::from),
            outline_node_id: f.outline_node_id.map(OutlineNodeId::from),
            open: f.open,
        };
        let rows = sessions::list(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(counted_connection(
            rows,
            after.is_some(),
            Counted::Sessions(filter),
            |s| (s.started_at, s.id),
            Session::from,
        ))
    }

    /// Usage per period in [from, to), the hour `from` falls in counted
    /// whole (the ledger keeps hours): the caller's own, or for admins any
    /// user's (or everyone's when `userId` is omitted), optionally one node's.
    #[graphql(guard = "SignedIn")]
    async fn usage(
        &self,
        ctx: &Context<'_>,
        user_id: Option<Uuid>,
        node_id: Option<Uuid>,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
        #[graphql(default_with = "Granularity::Day")] granularity: Granularity,
    ) -> async_graphql::Result<Vec<UsagePoint>> {
        let api = ctx.data::<AppContext>()?;
        let rows = sessions::usage(
            &api.db,
            &actor(ctx)?,
            user_id.map(UserId::from),
            node_id.map(OutlineNodeId::from),
            from.naive_utc(),
            to.naive_utc(),
            granularity,
        )
        .await
        .gql()?;
        Ok(rows
            .into_iter()
            .map(|b| UsagePoint {
                period_start: b.bucket.and_utc(),
                bytes_up: BigInt(b.bytes_up),
                bytes_down: BigInt(b.bytes_down),
            })
            .collect())
    }

    /// Admin: the audit log, oldest first unless `order` says NEWEST_FIRST.
    #[graphql(guard = "AdminOnly")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditFilterInput>,
        first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] order: ListOrder,
    ) -> async_graphql::Result<Connection<String, AuditEntry, Counted>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?.ordered(order);
        let f = filter.unwrap_or_default();
        let target_type = f
            .target_type
            .map(|t| crate::validate::text("targetType", &t, 1, 64))
            .transpose()
            .gql()?;
        let filter = AuditFilter {
            action: f.action,
            actor_user_id: f.actor_user_id.map(UserId::from),
            target_type,
            target_id: f.target_id.map(|t| t.to_string()),
        };
        let rows = audit::list(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(counted_connection(
            rows,
            after.is_some(),
            Counted::Audit(filter),
            |e| (e.created_at, e.id.clone()),
            |e| AuditEntry {
                id: super::uuid(&e.id),
                actor_user_id: e.actor_user_id.map(UserId::uuid),
                action: e.action,
                target_type: e.target_type,
                target_id: e.target_id.map(|v| super::uuid(&v)),
                details: e.details,
                created_at: e.created_at.and_utc(),
            },
        ))
    }
}

/// Activity mutations.
#[derive(Default)]
pub struct ActivityMutation;

#[Object]
impl ActivityMutation {
    /// Admin: ends an open session now (`endReason` `closed_by_admin`):
    /// every gateway closes its tunnels within moments, and the device's
    /// next tunnel opens a new session, perhaps on another node (to move
    /// devices off a node, say). A session that has ended already is
    /// answered as it is.
    #[graphql(guard = "AdminOnly")]
    async fn close_session(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Session> {
        let api = ctx.data::<AppContext>()?;
        crate::access::closing::close_by_admin(&api.db, &actor(ctx)?, id.into())
            .await
            .map(Session::from)
            .gql()
    }
}
