//! The node registry: Outline (Shadowsocks) nodes and gateways, their
//! machine tokens (shown once, stored hashed), admin status, and events.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::events::{Events, NodeEvent, NodeEventKind, NodeKind};
use super::pagination::{Page, PageArgs};
use super::{audit, catalogue, validate};
use crate::auth;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode, Region, new_id, now};
use crate::db::schema::{audit_log, gateway_nodes, outline_nodes, regions};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx, paginate};

/// Admin status of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum NodeStatus {
    /// Takes new sessions.
    Active,
    /// Keeps open sessions, takes no new ones.
    Draining,
    /// Out of service.
    Disabled,
}

impl NodeStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
            NodeStatus::Disabled => "disabled",
        }
    }
    /// Parses the stored form.
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => NodeStatus::Active,
            "draining" => NodeStatus::Draining,
            _ => NodeStatus::Disabled,
        }
    }
    fn event(self) -> NodeEventKind {
        match self {
            NodeStatus::Active => NodeEventKind::Active,
            NodeStatus::Draining => NodeEventKind::Draining,
            NodeStatus::Disabled => NodeEventKind::Disabled,
        }
    }
}

/// The event describing an Outline node's current state.
pub fn outline_event(n: &OutlineNode, region: &str, kind: NodeEventKind) -> NodeEvent {
    NodeEvent {
        node_id: n.id.clone(),
        node_kind: NodeKind::Outline,
        region: region.to_owned(),
        kind,
        status: n.status.clone(),
        health: n.health.clone(),
        load: n.load,
        capacity: n.capacity,
        at: chrono::Utc::now(),
    }
}

/// The event describing a gateway's current state.
pub fn gateway_event(g: &GatewayNode, region: &str, kind: NodeEventKind) -> NodeEvent {
    NodeEvent {
        node_id: g.id.clone(),
        node_kind: NodeKind::Gateway,
        region: region.to_owned(),
        kind,
        status: g.status.clone(),
        health: g.health.clone(),
        load: g.open_tunnels,
        capacity: 0,
        at: chrono::Utc::now(),
    }
}

/// Fields of a new Outline node.
#[derive(Debug, Clone)]
pub struct NewOutlineNode {
    /// Region code.
    pub region: String,
    /// Unique name.
    pub name: String,
    /// Address the gateways reach it at (never shown to clients).
    pub host: String,
    /// Port.
    pub port: i32,
    /// Own key: cipher. With `secret`, the node is a pool of one.
    pub method: Option<String>,
    /// Own key: password. Without it the node uses its region's pool key.
    pub secret: Option<String>,
    /// Most concurrent sessions it should carry.
    pub capacity: i32,
}

fn host(value: &str) -> AppResult<String> {
    let h = validate::text("host", value, 1, 253)?;
    if !h
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(AppError::bad("host must be a host name or an IP address"));
    }
    Ok(h)
}

async fn region(db: &Db, code: &str) -> AppResult<Region> {
    catalogue::region_by_code(db, code)
        .await?
        .ok_or(AppError::NotFound("region"))
}

/// Admin: registers an Outline node; returns it and its machine token.
pub async fn register_outline(
    db: &Db,
    events: &Events,
    actor: &str,
    input: NewOutlineNode,
) -> AppResult<(OutlineNode, String)> {
    let region = region(db, &input.region).await?;
    validate::range("port", input.port.into(), 1, 65535)?;
    validate::range("capacity", input.capacity.into(), 1, 10_000_000)?;
    let (method, secret, uses_pool_key) = match (input.method.as_deref(), input.secret.as_deref()) {
        (m, Some(s)) => (
            catalogue::method(m.unwrap_or(catalogue::METHODS[0]))?,
            validate::text("secret", s, 8, 256)?,
            false,
        ),
        (None, None) => (region.pool_method.clone(), region.pool_secret.clone(), true),
        (Some(_), None) => {
            return Err(AppError::bad(
                "method needs a secret (or give neither to use the region's pool key)",
            ));
        }
    };
    let token = auth::new_token();
    let ts = now();
    let node = OutlineNode {
        id: new_id(),
        region_id: region.id.clone(),
        name: validate::text("name", &input.name, 1, 100)?,
        host: host(&input.host)?,
        port: input.port,
        method,
        secret,
        uses_pool_key,
        status: "active".into(),
        health: "unknown".into(),
        capacity: input.capacity,
        token_hash: auth::hash_token(&token),
        last_heartbeat_at: None,
        load: 0,
        bytes_in: 0,
        bytes_out: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
    };
    let entry = audit::entry(
        actor,
        "register_outline_node",
        "outline_node",
        Some(&node.id),
        serde_json::json!({"name": node.name, "region": region.code, "host": node.host, "port": node.port}),
    );
    let node = db_tx!(db, |conn| {
        let n = diesel::insert_into(outline_nodes::table)
            .values(&node)
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict("a node with this name exists"))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(n)
    })?;
    events
        .publish(outline_event(
            &node,
            &region.code,
            NodeEventKind::Registered,
        ))
        .await;
    Ok((node, token))
}

/// Admin: registers a gateway; returns it and its machine token.
pub async fn register_gateway(
    db: &Db,
    events: &Events,
    actor: &str,
    region_code: &str,
    name: &str,
    public_url: &str,
) -> AppResult<(GatewayNode, String)> {
    let region = region(db, region_code).await?;
    let url = validate::text("publicUrl", public_url, 1, 2048)?;
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(AppError::bad("publicUrl must be an https:// URL"));
    }
    let token = auth::new_token();
    let ts = now();
    let node = GatewayNode {
        id: new_id(),
        region_id: region.id.clone(),
        name: validate::text("name", name, 1, 100)?,
        public_url: url.trim_end_matches('/').to_owned(),
        token_hash: auth::hash_token(&token),
        status: "active".into(),
        health: "unknown".into(),
        last_heartbeat_at: None,
        open_tunnels: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
    };
    let entry = audit::entry(
        actor,
        "register_gateway_node",
        "gateway_node",
        Some(&node.id),
        serde_json::json!({"name": node.name, "region": region.code, "publicUrl": node.public_url}),
    );
    let node = db_tx!(db, |conn| {
        let n = diesel::insert_into(gateway_nodes::table)
            .values(&node)
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict("a gateway with this name exists"))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(n)
    })?;
    events
        .publish(gateway_event(
            &node,
            &region.code,
            NodeEventKind::Registered,
        ))
        .await;
    Ok((node, token))
}

/// Either kind of node, as changed by an admin.
#[derive(Debug, Clone)]
pub enum AnyNode {
    /// An Outline node.
    Outline(OutlineNode),
    /// A gateway.
    Gateway(GatewayNode),
}

/// Admin: sets a node's status (the id may be an Outline node or a gateway).
pub async fn set_status(
    db: &Db,
    events: &Events,
    actor: &str,
    id: &str,
    status: NodeStatus,
) -> AppResult<AnyNode> {
    let id = validate::id("id", id)?;
    let entry = audit::entry(
        actor,
        "set_node_status",
        "node",
        Some(&id),
        serde_json::json!({"status": status.as_str()}),
    );
    let (node, region_code) = db_tx!(db, |conn| {
        let ts = now();
        let o: Option<OutlineNode> = diesel::update(outline_nodes::table.find(&id))
            .set((
                outline_nodes::status.eq(status.as_str()),
                outline_nodes::updated_at.eq(ts),
            ))
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let node = match o {
            Some(o) => AnyNode::Outline(o),
            None => AnyNode::Gateway(
                diesel::update(gateway_nodes::table.find(&id))
                    .set((
                        gateway_nodes::status.eq(status.as_str()),
                        gateway_nodes::updated_at.eq(ts),
                    ))
                    .returning(GatewayNode::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or(AppError::NotFound("node"))?,
            ),
        };
        let region_id = match &node {
            AnyNode::Outline(n) => n.region_id.clone(),
            AnyNode::Gateway(g) => g.region_id.clone(),
        };
        let code: String = regions::table
            .find(&region_id)
            .select(regions::code)
            .first(conn)
            .await?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>((node, code))
    })?;
    let ev = match &node {
        AnyNode::Outline(n) => outline_event(n, &region_code, status.event()),
        AnyNode::Gateway(g) => gateway_event(g, &region_code, status.event()),
    };
    events.publish(ev).await;
    Ok(node)
}

/// Admin: deletes a node; its sessions keep their history.
pub async fn delete(db: &Db, events: &Events, actor: &str, id: &str) -> AppResult<()> {
    let id = validate::id("id", id)?;
    let entry = audit::entry(
        actor,
        "delete_node",
        "node",
        Some(&id),
        serde_json::json!({}),
    );
    let ev = db_tx!(db, |conn| {
        let o: Option<OutlineNode> = diesel::delete(outline_nodes::table.find(&id))
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let ev = match o {
            Some(n) => {
                let code: String = regions::table
                    .find(&n.region_id)
                    .select(regions::code)
                    .first(conn)
                    .await?;
                outline_event(&n, &code, NodeEventKind::Deleted)
            }
            None => {
                let g: GatewayNode = diesel::delete(gateway_nodes::table.find(&id))
                    .returning(GatewayNode::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or(AppError::NotFound("node"))?;
                let code: String = regions::table
                    .find(&g.region_id)
                    .select(regions::code)
                    .first(conn)
                    .await?;
                gateway_event(&g, &code, NodeEventKind::Deleted)
            }
        };
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok::<_, AppError>(ev)
    })?;
    events.publish(ev).await;
    Ok(())
}

/// Admin: replaces a node's machine token; the old one stops working.
pub async fn rotate_token(db: &Db, actor: &str, id: &str) -> AppResult<String> {
    let id = validate::id("id", id)?;
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    let entry = audit::entry(
        actor,
        "rotate_node_token",
        "node",
        Some(&id),
        serde_json::json!({}),
    );
    db_tx!(db, |conn| {
        let n = diesel::update(outline_nodes::table.find(&id))
            .set(outline_nodes::token_hash.eq(&hash))
            .execute(conn)
            .await?
            + diesel::update(gateway_nodes::table.find(&id))
                .set(gateway_nodes::token_hash.eq(&hash))
                .execute(conn)
                .await?;
        if n == 0 {
            return Err(AppError::NotFound("node"));
        }
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(())
    })?;
    Ok(token)
}

/// Filters on the Outline node list.
#[derive(Debug, Default, Clone)]
pub struct NodeFilter {
    /// Only this region (by code).
    pub region: Option<String>,
    /// Only this status.
    pub status: Option<NodeStatus>,
}

async fn region_filter(db: &Db, filter: &NodeFilter) -> AppResult<Option<Option<String>>> {
    Ok(match &filter.region {
        None => None,
        Some(code) => Some(catalogue::region_by_code(db, code).await?.map(|r| r.id)),
    })
}

/// A page of Outline nodes.
pub async fn list_outline(
    db: &Db,
    filter: &NodeFilter,
    page: &PageArgs,
) -> AppResult<Page<OutlineNode>> {
    let region = region_filter(db, filter).await?;
    if let Some(None) = region {
        return Ok(Page {
            rows: vec![],
            has_next: false,
        });
    }
    let rows = db_run!(db, |conn| {
        let mut q = outline_nodes::table
            .select(OutlineNode::as_select())
            .into_boxed();
        if let Some(Some(r)) = &region {
            q = q.filter(outline_nodes::region_id.eq(r.clone()));
        }
        if let Some(s) = filter.status {
            q = q.filter(outline_nodes::status.eq(s.as_str()));
        }
        paginate!(q, outline_nodes, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// A page of gateways.
pub async fn list_gateways(
    db: &Db,
    filter: &NodeFilter,
    page: &PageArgs,
) -> AppResult<Page<GatewayNode>> {
    let region = region_filter(db, filter).await?;
    if let Some(None) = region {
        return Ok(Page {
            rows: vec![],
            has_next: false,
        });
    }
    let rows = db_run!(db, |conn| {
        let mut q = gateway_nodes::table
            .select(GatewayNode::as_select())
            .into_boxed();
        if let Some(Some(r)) = &region {
            q = q.filter(gateway_nodes::region_id.eq(r.clone()));
        }
        if let Some(s) = filter.status {
            q = q.filter(gateway_nodes::status.eq(s.as_str()));
        }
        paginate!(q, gateway_nodes, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads Outline nodes by id.
pub async fn outline_by_ids(db: &Db, ids: &[String]) -> AppResult<Vec<OutlineNode>> {
    Ok(db_run!(db, |conn| outline_nodes::table
        .filter(outline_nodes::id.eq_any(ids))
        .select(OutlineNode::as_select())
        .load(conn)
        .await?))
}

/// Loads gateways by id.
pub async fn gateways_by_ids(db: &Db, ids: &[String]) -> AppResult<Vec<GatewayNode>> {
    Ok(db_run!(db, |conn| gateway_nodes::table
        .filter(gateway_nodes::id.eq_any(ids))
        .select(GatewayNode::as_select())
        .load(conn)
        .await?))
}

/// A machine caller, authenticated by its node token.
#[derive(Debug, Clone)]
pub enum Machine {
    /// A gateway.
    Gateway(GatewayNode),
    /// An Outline node.
    Outline(OutlineNode),
}

/// Finds the node holding `token`; disabled nodes are refused.
pub async fn authenticate_machine(db: &Db, token: &str) -> AppResult<Machine> {
    if !auth::looks_like_token(token) {
        return Err(AppError::Unauthenticated);
    }
    let hash = auth::hash_token(token);
    let (g, o): (Option<GatewayNode>, Option<OutlineNode>) = db_run!(db, |conn| {
        let g = gateway_nodes::table
            .filter(gateway_nodes::token_hash.eq(&hash))
            .select(GatewayNode::as_select())
            .first(conn)
            .await
            .optional()?;
        let o = if g.is_none() {
            outline_nodes::table
                .filter(outline_nodes::token_hash.eq(&hash))
                .select(OutlineNode::as_select())
                .first(conn)
                .await
                .optional()?
        } else {
            None
        };
        (g, o)
    });
    match (g, o) {
        (Some(g), _) if g.status != "disabled" => Ok(Machine::Gateway(g)),
        (_, Some(o)) if o.status != "disabled" => Ok(Machine::Outline(o)),
        (Some(_), _) | (_, Some(_)) => Err(AppError::Forbidden),
        _ => Err(AppError::Unauthenticated),
    }
}

/// How long an authenticated machine token is trusted without asking the
/// database again (revocation applies within this time on the routes that
/// use the cache).
pub const MACHINE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Recently authenticated machine tokens, keyed by hash, so a gateway's burst
/// of validate/assign calls costs one lookup rather than one per call.
#[derive(Clone, Default)]
pub struct MachineCache {
    inner: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Machine)>>,
    >,
}

impl MachineCache {
    /// Like [`authenticate_machine`], answering from the cache when fresh.
    pub async fn authenticate(&self, db: &Db, token: &str) -> AppResult<Machine> {
        if !auth::looks_like_token(token) {
            return Err(AppError::Unauthenticated);
        }
        let hash = auth::hash_token(token);
        {
            let map = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, m)) = map.get(&hash)
                && at.elapsed() < MACHINE_CACHE_TTL
            {
                return Ok(m.clone());
            }
        }
        let machine = authenticate_machine(db, token).await?;
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 10_000 {
            map.retain(|_, (at, _)| at.elapsed() < MACHINE_CACHE_TTL);
        }
        map.insert(hash, (std::time::Instant::now(), machine.clone()));
        Ok(machine)
    }
}
