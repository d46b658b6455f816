//! Admin changes to the registry. Every change is audited and publishes
//! its node event in its own transaction.

use super::{GATEWAY_NAME_TAKEN, GATEWAY_URL_TAKEN, NODE_NAME_TAKEN};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use httvps_wire::Secret;

use super::address::{host, refuse_address_taken};
use super::enrollment::EnrollmentTtl;
use super::history::{self, Side};
use super::{AnyNode, gateway_event, outline_event, status_event};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode, Region, now};
use crate::db::schema::{audit_log, gateway_nodes, outline_nodes, regions};
use crate::error::{AppError, AppResult};
use crate::events::{AccessChange, NodeEventKind, NodeKind};
use crate::ids::{GatewayNodeId, OutlineNodeId, RegionId};
use crate::status::{EndReason, Health, NodeStatus};
use crate::{audit, auth, catalogue, validate};
use crate::{db_run, db_tx};

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
    pub secret: Option<Secret>,
    /// Most concurrent sessions it should carry.
    pub capacity: i32,
}

async fn region(db: &Db, code: &str) -> AppResult<Region> {
    catalogue::region_by_code(db, code)
        .await?
        .ok_or(AppError::NotFound("region"))
}

/// Admin: registers an Outline node; returns it and its machine token,
/// whose enrollment string works for `ttl` unless redeemed or used.
pub async fn register_outline(
    db: &Db,
    actor: &Actor,
    input: NewOutlineNode,
    ttl: EnrollmentTtl,
) -> AppResult<(OutlineNode, String)> {
    actor.require_admin()?;
    let region = region(db, &input.region).await?;
    validate::range("port", input.port.into(), 1, 65535)?;
    validate::range("capacity", input.capacity.into(), 1, 10_000_000)?;
    let (method, secret, uses_pool_key) = match (
        input.method.as_deref(),
        input.secret.as_ref().map(Secret::expose),
    ) {
        (m, Some(s)) => (
            catalogue::method(m.unwrap_or(catalogue::METHODS[0]))?,
            validate::text("secret", s, 8, 256)?.into(),
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
        id: OutlineNodeId::random(),
        region_id: region.id,
        name: validate::text("name", &input.name, 1, 100)?,
        host: host(&input.host)?,
        port: input.port,
        method,
        secret,
        uses_pool_key,
        status: NodeStatus::Active,
        health: Health::Unknown,
        capacity: input.capacity,
        token_hash: auth::hash_token(&token).into(),
        last_heartbeat_at: None,
        load: 0,
        bytes_in: 0,
        bytes_out: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
        enroll_expires_at: Some(ttl.expires(ts)),
    };
    let entry = audit::entry(
        actor,
        "register_outline_node",
        "outline_node",
        Some(&node.id.to_string()),
        serde_json::json!({"name": node.name, "region": region.code, "host": node.host, "port": node.port}),
    );
    let node = db_tx!(db, |conn, outbox| {
        crate::refuse_taken!(
            conn,
            outline_nodes,
            name,
            &node.name,
            node.id,
            NODE_NAME_TAKEN
        );
        refuse_address_taken!(conn, node.region_id, &node.host, node.port, node.id);
        let n = diesel::insert_into(outline_nodes::table)
            .values(&node)
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(NODE_NAME_TAKEN))
            // The region, deleted since it was read.
            .map_err(|e| e.or_missing(AppError::NotFound("region")))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        outbox.node(outline_event(&n, &region.code, NodeEventKind::Registered));
        Ok::<_, AppError>(n)
    })?;
    Ok((node, token))
}

/// Admin: registers a gateway; returns it and its machine token, whose
/// enrollment string works for `ttl` unless redeemed or used.
pub async fn register_gateway(
    db: &Db,
    actor: &Actor,
    region_code: &str,
    name: &str,
    public_url: &str,
    ttl: EnrollmentTtl,
) -> AppResult<(GatewayNode, String)> {
    actor.require_admin()?;
    let region = region(db, region_code).await?;
    let url = validate::https_url("publicUrl", public_url)?;
    let token = auth::new_token();
    let ts = now();
    let node = GatewayNode {
        id: GatewayNodeId::random(),
        region_id: region.id,
        name: validate::text("name", name, 1, 100)?,
        public_url: url,
        token_hash: auth::hash_token(&token).into(),
        status: NodeStatus::Active,
        health: Health::Unknown,
        last_heartbeat_at: None,
        open_tunnels: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
        enroll_expires_at: Some(ttl.expires(ts)),
    };
    let entry = audit::entry(
        actor,
        "register_gateway_node",
        "gateway_node",
        Some(&node.id.to_string()),
        serde_json::json!({"name": node.name, "region": region.code, "publicUrl": node.public_url}),
    );
    let node = db_tx!(db, |conn, outbox| {
        crate::refuse_taken!(
            conn,
            gateway_nodes,
            name,
            &node.name,
            node.id,
            GATEWAY_NAME_TAKEN
        );
        crate::refuse_taken!(
            conn,
            gateway_nodes,
            public_url,
            &node.public_url,
            node.id,
            GATEWAY_URL_TAKEN
        );
        let n = diesel::insert_into(gateway_nodes::table)
            .values(&node)
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(GATEWAY_NAME_TAKEN))
            // The region, deleted since it was read.
            .map_err(|e| e.or_missing(AppError::NotFound("region")))?;
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        outbox.node(gateway_event(&n, &region.code, NodeEventKind::Registered));
        Ok::<_, AppError>(n)
    })?;
    Ok((node, token))
}

/// Admin: sets a node's status (the id may be an Outline node's or a
/// gateway's: both are UUIDs, and a client knows it only as "a node").
pub async fn set_status(
    db: &Db,
    actor: &Actor,
    id: uuid::Uuid,
    status: NodeStatus,
) -> AppResult<AnyNode> {
    actor.require_admin()?;
    db_tx!(db, |conn, outbox| {
        let ts = now();
        // The status it has already: answered, not audited, no event.
        let same = outline_nodes::table
            .find(OutlineNodeId::from(id))
            .filter(outline_nodes::status.eq(status))
            .select(OutlineNode::as_select())
            .first(conn)
            .await
            .optional()?
            .map(AnyNode::Outline);
        let same = match same {
            Some(n) => Some(n),
            None => gateway_nodes::table
                .find(GatewayNodeId::from(id))
                .filter(gateway_nodes::status.eq(status))
                .select(GatewayNode::as_select())
                .first(conn)
                .await
                .optional()?
                .map(AnyNode::Gateway),
        };
        if let Some(node) = same {
            return Ok(node);
        }
        let o: Option<OutlineNode> =
            diesel::update(outline_nodes::table.find(OutlineNodeId::from(id)))
                .set((
                    outline_nodes::status.eq(status),
                    outline_nodes::updated_at.eq(ts),
                ))
                .returning(OutlineNode::as_returning())
                .get_result(conn)
                .await
                .optional()?;
        let node = match o {
            Some(o) => AnyNode::Outline(o),
            None => AnyNode::Gateway(
                diesel::update(gateway_nodes::table.find(GatewayNodeId::from(id)))
                    .set((
                        gateway_nodes::status.eq(status),
                        gateway_nodes::updated_at.eq(ts),
                    ))
                    .returning(GatewayNode::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or(AppError::NotFound("node"))?,
            ),
        };
        let code: String = regions::table
            .find(node.region_id())
            .select(regions::code)
            .first(conn)
            .await?;
        let entry = audit::entry(
            actor,
            "set_node_status",
            node.audit_type(),
            Some(&id.to_string()),
            serde_json::json!({"status": status.as_str()}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        outbox.node(node.event(&code, status_event(status)));
        if let AnyNode::Outline(o) = &node
            && status != NodeStatus::Active
        {
            outbox.node_withdrawn(&o.id.to_string());
        }
        Ok::<_, AppError>(node)
    })
}

/// Admin: deletes a node. Its open sessions (on an Outline node, or
/// through a gateway) end first with `node_down`, and gateways close their
/// tunnels at once (the devices reconnect elsewhere): a deleted node's
/// sessions would otherwise stay open with no node. Ended sessions keep
/// their history (without the node). Drain or disable a node to let its
/// tunnels finish instead. (A session an assignment commits through a
/// gateway while the gateway is being deleted keeps running, as a session
/// with no gateway, until it idles out.) The ended sessions are detached
/// from the node first, a slice at a time (see [`super::history`]), so
/// the deletion's own transaction stays short however long its history.
/// It runs to its end even when the request that asked for it goes away
/// (a walk stopped halfway would leave part of a live node's history
/// detached).
pub async fn delete(db: &Db, actor: &Actor, id: uuid::Uuid) -> AppResult<()> {
    actor.require_admin()?;
    let (db, actor) = (db.clone(), *actor);
    tokio::spawn(async move { delete_now(&db, &actor, id).await })
        .await
        .map_err(|e| AppError::Internal(format!("node deletion: {e}")))?
}

/// [`delete`], in the task that carries it through.
async fn delete_now(db: &Db, actor: &Actor, id: uuid::Uuid) -> AppResult<()> {
    let (outline, gateway) = (OutlineNodeId::from(id), GatewayNodeId::from(id));
    let side = db_run!(db, |conn| {
        let is_outline: bool =
            diesel::select(diesel::dsl::exists(outline_nodes::table.find(outline)))
                .get_result(conn)
                .await?;
        let is_gateway: bool =
            diesel::select(diesel::dsl::exists(gateway_nodes::table.find(gateway)))
                .get_result(conn)
                .await?;
        if is_outline {
            Some(Side::Outline)
        } else {
            is_gateway.then_some(Side::Gateway)
        }
    });
    if let Some(side) = side {
        let detached = history::detach(db, side, &id.to_string()).await?;
        tracing::debug!(node.id = %id, sessions = detached, "node history detached");
    }
    db_tx!(db, |conn, outbox| {
        // The appliers' lock first: a pass grows sessions (ended ones
        // too) in id order, which the ending and the cascade below would
        // otherwise meet in another order. A heartbeat skips the sessions
        // held here, so it never waits on them.
        crate::apply_lock!(conn);
        let is_outline: bool =
            diesel::select(diesel::dsl::exists(outline_nodes::table.find(outline)))
                .get_result(conn)
                .await?;
        let ended = if is_outline {
            crate::end_sessions_where!(
                conn,
                outbox,
                sessions::outline_node_id.eq(outline),
                EndReason::NodeDown,
                now()
            )
        } else {
            crate::end_sessions_where!(
                conn,
                outbox,
                sessions::gateway_node_id.eq(gateway),
                EndReason::NodeDown,
                now()
            )
        };
        let mut closed = !ended.is_empty();
        let node = if is_outline {
            let node = diesel::delete(outline_nodes::table.find(outline))
                .returning(OutlineNode::as_returning())
                .get_result(conn)
                .await?;
            // A session an assignment inserted on the node after the
            // ending above (its batch read the node before this began) is
            // left open by the cascade with no node: ended too.
            let orphans = crate::end_sessions_where!(
                conn,
                outbox,
                sessions::outline_node_id.is_null(),
                EndReason::NodeDown,
                now()
            );
            closed |= !orphans.is_empty();
            AnyNode::Outline(node)
        } else {
            AnyNode::Gateway(
                diesel::delete(gateway_nodes::table.find(gateway))
                    .returning(GatewayNode::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or(AppError::NotFound("node"))?,
            )
        };
        if closed {
            outbox.access(AccessChange::SessionClosed, None);
        }
        let region: RegionId = node.region_id();
        let code: String = regions::table
            .find(region)
            .select(regions::code)
            .first(conn)
            .await?;
        // What it was, for the record: the row is gone after this.
        let details = match &node {
            AnyNode::Outline(o) => serde_json::json!({
                "name": o.name, "region": code, "host": o.host, "port": o.port,
            }),
            AnyNode::Gateway(g) => serde_json::json!({
                "name": g.name, "region": code, "publicUrl": g.public_url,
            }),
        };
        let entry = audit::entry(
            actor,
            "delete_node",
            node.audit_type(),
            Some(&id.to_string()),
            details,
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        outbox.node(node.event(&code, NodeEventKind::Deleted));
        if let AnyNode::Outline(o) = &node {
            outbox.node_withdrawn(&o.id.to_string());
        }
        Ok::<_, AppError>(())
    })
}

/// Admin: replaces a node's machine token; the old one stops working.
/// Returns the new token, until when it works unless used before (`ttl`
/// from now) and which kind of machine it is.
pub async fn rotate_token(
    db: &Db,
    actor: &Actor,
    id: uuid::Uuid,
    ttl: EnrollmentTtl,
) -> AppResult<(String, chrono::NaiveDateTime, NodeKind)> {
    actor.require_admin()?;
    let token = auth::new_token();
    let hash = auth::hash_token(&token);
    let expires_at = ttl.expires(now());
    let until = Some(expires_at);
    let kind = db_tx!(db, |conn, _| {
        let outline = diesel::update(outline_nodes::table.find(OutlineNodeId::from(id)))
            .set((
                outline_nodes::token_hash.eq(&hash),
                outline_nodes::enroll_expires_at.eq(until),
            ))
            .execute(conn)
            .await?;
        let gateway = diesel::update(gateway_nodes::table.find(GatewayNodeId::from(id)))
            .set((
                gateway_nodes::token_hash.eq(&hash),
                gateway_nodes::enroll_expires_at.eq(until),
            ))
            .execute(conn)
            .await?;
        let (target_type, kind) = match (outline, gateway) {
            (0, 0) => return Err(AppError::NotFound("node")),
            (0, _) => ("gateway_node", NodeKind::Gateway),
            _ => ("outline_node", NodeKind::Outline),
        };
        let entry = audit::entry(
            actor,
            "rotate_node_token",
            target_type,
            Some(&id.to_string()),
            serde_json::json!({}),
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        Ok(kind)
    })?;
    Ok((token, expires_at, kind))
}
