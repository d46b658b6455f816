//! The node registry over GraphQL (admins only: node addresses and keys are
//! never shown to users).

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{
    ComplexObject, Context, InputObject, MaybeUndefined, Object, SimpleObject, Union,
};
use uuid::Uuid;

use super::catalogue::Region;
use super::inputs::kept;
use super::loaders::{DbLoader, loader_error};
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, actor, connection};
use crate::db::models::{self, SecretText};
use crate::error::AppResult;
use crate::ids::RegionId;
use crate::nodes::{self, AnyNode, EnrollmentTtl, NewOutlineNode, NodeFilter, NodeStatus};
use crate::pagination::PageArgs;

/// A Shadowsocks node of the pool.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct OutlineNode {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Address gateways reach it at.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Cipher.
    pub method: String,
    /// Shadowsocks password (the region's pool key unless it has its own).
    pub secret: SecretText,
    /// Whether it uses its region's pool key (false: a pool of one).
    pub uses_pool_key: bool,
    /// Admin status.
    pub status: NodeStatus,
    /// unknown, up or down.
    pub health: String,
    /// Most concurrent client connections it should carry (compared with
    /// the load its heartbeats report).
    pub capacity: i32,
    /// Open connections at the last heartbeat.
    pub load: i32,
    /// Bytes received, at the last heartbeat.
    pub bytes_in: BigInt,
    /// Bytes sent, at the last heartbeat.
    pub bytes_out: BigInt,
    /// Last heartbeat (UTC).
    pub last_heartbeat_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Software version it reported.
    pub version: Option<String>,
    /// Registration time (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Until when the one-time token of its latest enrollment string works
    /// (UTC; strings expire 24 h after `add` or `rotate` printed them);
    /// null once it was redeemed or used (and for machines heard from
    /// before strings expired).
    pub enrollment_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its region (resolved by `region`).
    #[graphql(skip)]
    pub region_id: RegionId,
}

impl From<models::OutlineNode> for OutlineNode {
    fn from(n: models::OutlineNode) -> Self {
        OutlineNode {
            id: n.id.uuid(),
            name: n.name,
            host: n.host,
            port: n.port,
            method: n.method,
            secret: n.secret,
            uses_pool_key: n.uses_pool_key,
            status: n.status,
            health: n.health.as_str().to_owned(),
            capacity: n.capacity,
            load: n.load,
            bytes_in: BigInt(n.bytes_in),
            bytes_out: BigInt(n.bytes_out),
            last_heartbeat_at: n.last_heartbeat_at.map(|t| t.and_utc()),
            version: n.version,
            created_at: n.created_at.and_utc(),
            enrollment_expires_at: n.enroll_expires_at.map(|t| t.and_utc()),
            region_id: n.region_id,
        }
    }
}

#[ComplexObject]
impl OutlineNode {
    /// Its region.
    async fn region(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Region>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.region_id)
            .await
            .map_err(loader_error)?
            .map(Region::from))
    }
}

/// A TLS/WebSocket gateway.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct GatewayNode {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// URL clients connect to.
    pub public_url: String,
    /// Admin status.
    pub status: NodeStatus,
    /// unknown, up or down.
    pub health: String,
    /// Open tunnels at the last heartbeat.
    pub open_tunnels: i32,
    /// Last heartbeat (UTC).
    pub last_heartbeat_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Software version it reported.
    pub version: Option<String>,
    /// Registration time (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Until when the one-time token of its latest enrollment string works
    /// (UTC; strings expire 24 h after `add` or `rotate` printed them);
    /// null once it was redeemed or used (and for machines heard from
    /// before strings expired).
    pub enrollment_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its region (resolved by `region`).
    #[graphql(skip)]
    pub region_id: RegionId,
}

impl From<models::GatewayNode> for GatewayNode {
    fn from(g: models::GatewayNode) -> Self {
        GatewayNode {
            id: g.id.uuid(),
            name: g.name,
            public_url: g.public_url,
            status: g.status,
            health: g.health.as_str().to_owned(),
            open_tunnels: g.open_tunnels,
            last_heartbeat_at: g.last_heartbeat_at.map(|t| t.and_utc()),
            version: g.version,
            created_at: g.created_at.and_utc(),
            enrollment_expires_at: g.enroll_expires_at.map(|t| t.and_utc()),
            region_id: g.region_id,
        }
    }
}

#[ComplexObject]
impl GatewayNode {
    /// Its region.
    async fn region(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Region>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.region_id)
            .await
            .map_err(loader_error)?
            .map(Region::from))
    }
}

/// Either kind of node.
#[derive(Union)]
pub enum Node {
    /// A Shadowsocks node.
    Outline(OutlineNode),
    /// A gateway.
    Gateway(GatewayNode),
}

/// A new node and its machine token (shown this once).
#[derive(SimpleObject, Debug)]
pub struct RegisteredOutlineNode {
    /// One-time enrollment string for `httvps-relay node --enroll`
    /// (control-plane URL, pin, this token); null when the control plane
    /// has no BACKEND_PUBLIC_URL.
    pub enrollment: Option<SecretText>,
    /// The node.
    pub node: OutlineNode,
    /// Machine token for `Authorization: Bearer` on /api/v1.
    pub token: SecretText,
}

/// A new gateway and its machine token (shown this once).
#[derive(SimpleObject, Debug)]
pub struct RegisteredGatewayNode {
    /// One-time enrollment string for `httvps-relay gateway --enroll`
    /// (control-plane URL, pin, this token); null when the control plane
    /// has no BACKEND_PUBLIC_URL.
    pub enrollment: Option<SecretText>,
    /// The gateway.
    pub node: GatewayNode,
    /// Machine token for `Authorization: Bearer` on /api/v1.
    pub token: SecretText,
}

/// Fields of a new Outline node.
#[derive(InputObject)]
pub struct RegisterOutlineNodeInput {
    /// Region code.
    pub region: String,
    /// Unique name.
    pub name: String,
    /// Address gateways reach it at (a host and port another node of the
    /// region has are refused: CONFLICT).
    pub host: String,
    /// Port (1-65535).
    pub port: i32,
    /// Own cipher (with `secret`); omit both to use the region's pool key.
    pub method: Option<String>,
    /// Own Shadowsocks password: the node becomes a pool of one.
    pub secret: Option<SecretText>,
    /// Most concurrent client connections (default 1000).
    #[graphql(default = 1000)]
    pub capacity: i32,
    /// Hours its enrollment string works unless redeemed or used (1-720;
    /// default 24).
    pub enrollment_ttl_hours: Option<i32>,
}

/// Fields of a new gateway.
#[derive(InputObject)]
pub struct RegisterGatewayNodeInput {
    /// Region code.
    pub region: String,
    /// Unique name.
    pub name: String,
    /// URL clients connect to, e.g. https://gw1.example.com: `https://`
    /// with a host (and optional port), nothing else.
    pub public_url: String,
    /// Hours its enrollment string works unless redeemed or used (1-720;
    /// default 24).
    pub enrollment_ttl_hours: Option<i32>,
}

/// Changes to an Outline node; an omitted field stays as it is (null is
/// refused).
#[derive(InputObject, Default)]
pub struct UpdateOutlineNodeInput {
    /// New unique name.
    pub name: MaybeUndefined<String>,
    /// New address gateways reach it at (new tunnels go there; open ones
    /// keep their connection). A host and port another node of its region
    /// has are refused: CONFLICT.
    pub host: MaybeUndefined<String>,
    /// New port (1-65535).
    pub port: MaybeUndefined<i32>,
    /// New capacity: most concurrent client connections (1-10000000).
    pub capacity: MaybeUndefined<i32>,
}

/// Changes to a gateway; an omitted field stays as it is (null is
/// refused).
#[derive(InputObject, Default)]
pub struct UpdateGatewayNodeInput {
    /// New unique name.
    pub name: MaybeUndefined<String>,
    /// New URL clients connect to (the links handed out from now on; the
    /// gateway's own GATEWAY_PUBLIC_URL is set on its host).
    pub public_url: MaybeUndefined<String>,
}

/// Filters on node lists.
#[derive(InputObject, Default)]
pub struct NodeFilterInput {
    /// Only this status.
    pub status: Option<NodeStatus>,
}

/// Node queries.
#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// Admin: Outline nodes, optionally of one region.
    #[graphql(guard = "AdminOnly")]
    async fn outline_nodes(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
        filter: Option<NodeFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, OutlineNode>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let filter = NodeFilter {
            region,
            status: filter.unwrap_or_default().status,
        };
        let rows = nodes::list_outline(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |n| (n.created_at, n.id),
            OutlineNode::from,
        ))
    }

    /// Admin: gateways, optionally of one region.
    #[graphql(guard = "AdminOnly")]
    async fn gateway_nodes(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
        filter: Option<NodeFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, GatewayNode>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let filter = NodeFilter {
            region,
            status: filter.unwrap_or_default().status,
        };
        let rows = nodes::list_gateways(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |n| (n.created_at, n.id),
            GatewayNode::from,
        ))
    }
}

/// An enrollment string's lifetime as a mutation gives it.
pub(super) fn ttl_hours(hours: Option<i32>) -> AppResult<EnrollmentTtl> {
    EnrollmentTtl::hours("enrollmentTtlHours", hours.map(i64::from))
}

/// Node mutations.
#[derive(Default)]
pub struct NodeMutation;

#[Object]
impl NodeMutation {
    /// Admin: registers an Outline node; returns its machine token once.
    #[graphql(guard = "AdminOnly")]
    async fn register_outline_node(
        &self,
        ctx: &Context<'_>,
        input: RegisterOutlineNodeInput,
    ) -> async_graphql::Result<RegisteredOutlineNode> {
        let api = ctx.data::<AppContext>()?;
        let ttl = ttl_hours(input.enrollment_ttl_hours).gql()?;
        let new = NewOutlineNode {
            region: input.region,
            name: input.name,
            host: input.host,
            port: input.port,
            method: input.method,
            secret: input.secret.map(Into::into),
            capacity: input.capacity,
        };
        let (node, token) = nodes::register_outline(&api.db, &actor(ctx)?, new, ttl)
            .await
            .gql()?;
        Ok(RegisteredOutlineNode {
            node: node.into(),
            enrollment: api.enroll.as_ref().map(|e| e.string("node", &token).into()),
            token: token.into(),
        })
    }

    /// Admin: registers a gateway; returns its machine token once.
    #[graphql(guard = "AdminOnly")]
    async fn register_gateway_node(
        &self,
        ctx: &Context<'_>,
        input: RegisterGatewayNodeInput,
    ) -> async_graphql::Result<RegisteredGatewayNode> {
        let api = ctx.data::<AppContext>()?;
        let ttl = ttl_hours(input.enrollment_ttl_hours).gql()?;
        let (node, token) = nodes::register_gateway(
            &api.db,
            &actor(ctx)?,
            &input.region,
            &input.name,
            &input.public_url,
            ttl,
        )
        .await
        .gql()?;
        Ok(RegisteredGatewayNode {
            node: node.into(),
            enrollment: api
                .enroll
                .as_ref()
                .map(|e| e.string("gateway", &token).into()),
            token: token.into(),
        })
    }

    /// Admin: changes an Outline node's name, address or capacity. A
    /// change that changes nothing answers the node as it is.
    #[graphql(guard = "AdminOnly")]
    async fn update_outline_node(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateOutlineNodeInput,
    ) -> async_graphql::Result<OutlineNode> {
        let api = ctx.data::<AppContext>()?;
        let changes = nodes::OutlineChanges {
            name: kept("name", input.name)?,
            host: kept("host", input.host)?,
            port: kept("port", input.port)?,
            capacity: kept("capacity", input.capacity)?,
        };
        let node = nodes::update_outline(&api.db, &actor(ctx)?, id.into(), changes)
            .await
            .gql()?;
        Ok(node.into())
    }

    /// Admin: changes a gateway's name or public URL. A change that
    /// changes nothing answers the gateway as it is. The URL of the gateway
    /// BACKEND_GATEWAY_URL names is CONFLICT until the setting names
    /// another (links are built on the setting).
    #[graphql(guard = "AdminOnly")]
    async fn update_gateway_node(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateGatewayNodeInput,
    ) -> async_graphql::Result<GatewayNode> {
        let api = ctx.data::<AppContext>()?;
        let changes = nodes::GatewayChanges {
            name: kept("name", input.name)?,
            public_url: kept("publicUrl", input.public_url)?,
        };
        let configured = api.gateway_url.as_deref();
        let node = nodes::update_gateway(&api.db, &actor(ctx)?, id.into(), changes, configured)
            .await
            .gql()?;
        Ok(node.into())
    }

    /// Admin: sets a node's status (ACTIVE, DRAINING or DISABLED).
    #[graphql(guard = "AdminOnly")]
    async fn set_node_status(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        status: NodeStatus,
    ) -> async_graphql::Result<Node> {
        let api = ctx.data::<AppContext>()?;
        let node = nodes::set_status(&api.db, &actor(ctx)?, id, status)
            .await
            .gql()?;
        api.machines.forget(id);
        Ok(match node {
            AnyNode::Outline(n) => Node::Outline(n.into()),
            AnyNode::Gateway(g) => Node::Gateway(g.into()),
        })
    }

    /// Admin: deletes a node. Its open sessions end first (`node_down`) and
    /// their tunnels close (drain or disable it to let them finish);
    /// ended sessions keep their history.
    #[graphql(guard = "AdminOnly")]
    async fn delete_node(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<bool> {
        let api = ctx.data::<AppContext>()?;
        nodes::delete(&api.db, &actor(ctx)?, id).await.gql()?;
        api.machines.forget(id);
        Ok(true)
    }

    /// Admin: replaces a node's machine token; returns the new one once.
    /// Its enrollment string works for `enrollmentTtlHours` (1-720; default
    /// 24) unless redeemed or used.
    #[graphql(guard = "AdminOnly")]
    async fn rotate_node_token(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        enrollment_ttl_hours: Option<i32>,
    ) -> async_graphql::Result<String> {
        let api = ctx.data::<AppContext>()?;
        let ttl = ttl_hours(enrollment_ttl_hours).gql()?;
        let (token, ..) = nodes::rotate_token(&api.db, &actor(ctx)?, id, ttl)
            .await
            .gql()?;
        api.machines.forget(id);
        Ok(token)
    }
}
