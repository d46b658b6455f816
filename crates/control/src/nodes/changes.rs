//! Admin changes to a registered node's description: an Outline node's
//! name, address and capacity, a gateway's name and public URL. Keys,
//! tokens and status have their own calls ([`super::registry`]).
//!
//! A change that changes nothing (no field given, or every field as it
//! is) answers the node as it is, with no audit entry and no event. A
//! change publishes `UPDATED`; a new address of an Outline node also
//! withdraws the node from gateways' cached answers, so no new tunnel goes
//! to the old address (open tunnels keep their connection), and makes its
//! health unknown (it has not been reached there yet).

use super::{GATEWAY_NAME_TAKEN, GATEWAY_URL_TAKEN, NODE_NAME_TAKEN};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::address::{host, refuse_address_taken};
use super::{gateway_event, outline_event};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode, now};
use crate::db::schema::{audit_log, gateway_nodes, outline_nodes, regions};
use crate::db_tx;
use crate::devices::links::same_url;
use crate::error::{AppError, AppResult};
use crate::events::NodeEventKind;
use crate::ids::{GatewayNodeId, OutlineNodeId};
use crate::status::Health;
use crate::{audit, validate};

/// Changes to an Outline node; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct OutlineChanges {
    /// New unique name.
    pub name: Option<String>,
    /// New address gateways reach it at.
    pub host: Option<String>,
    /// New port.
    pub port: Option<i32>,
    /// New capacity.
    pub capacity: Option<i32>,
}

/// Changes to a gateway; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct GatewayChanges {
    /// New unique name.
    pub name: Option<String>,
    /// New URL clients connect to (the links handed out from now on).
    pub public_url: Option<String>,
}

/// Fields that differ from `row`, as (column, new value) pairs for the
/// audit entry; the new values are `Some` only where they differ.
#[derive(Default)]
struct Diff {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Diff {
    /// Keeps `new` when it is given and differs from `old`.
    fn field<T>(&mut self, key: &str, old: &T, new: Option<T>) -> Option<T>
    where
        T: PartialEq + Into<serde_json::Value> + Clone,
    {
        let new = new.filter(|v| v != old)?;
        self.fields.insert(key.to_owned(), new.clone().into());
        Some(new)
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

fn name(value: Option<String>) -> AppResult<Option<String>> {
    value
        .map(|n| validate::text("name", &n, 1, 100))
        .transpose()
}

/// Inside a change's transaction: records the audit `entry` and evaluates
/// to the code of the node's `region` (for its event).
macro_rules! audited {
    ($conn:ident, $entry:expr, $region:expr) => {{
        diesel::insert_into(audit_log::table)
            .values(&$entry)
            .execute($conn)
            .await?;
        regions::table
            .find($region)
            .select(regions::code)
            .first::<String>($conn)
            .await?
    }};
}

/// Admin: changes an Outline node's name, address or capacity.
pub async fn update_outline(
    db: &Db,
    actor: &Actor,
    id: OutlineNodeId,
    changes: OutlineChanges,
) -> AppResult<OutlineNode> {
    actor.require_admin()?;
    let new_name = name(changes.name)?;
    let new_host = changes.host.as_deref().map(host).transpose()?;
    if let Some(p) = changes.port {
        validate::range("port", p.into(), 1, 65535)?;
    }
    if let Some(c) = changes.capacity {
        validate::range("capacity", c.into(), 1, 10_000_000)?;
    }
    db_tx!(db, |conn, outbox| {
        // Locks the row (a no-op write) and reads it as it is.
        let old: OutlineNode = diesel::update(outline_nodes::table.find(id))
            .set(outline_nodes::updated_at.eq(outline_nodes::updated_at))
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("outline node"))?;
        let mut diff = Diff::default();
        let name = diff.field("name", &old.name, new_name);
        let host = diff.field("host", &old.host, new_host);
        let port = diff.field("port", &old.port, changes.port);
        let capacity = diff.field("capacity", &old.capacity, changes.capacity);
        if diff.is_empty() {
            return Ok(old);
        }
        // A new address has not been reached yet: whatever its health was
        // (down after a gateway failed to reach the old one, which would
        // keep it out of rotation for good when it sends no heartbeats),
        // it is unknown again, and taken.
        if let Some(name) = &name {
            crate::refuse_taken!(conn, outline_nodes, name, name, id, NODE_NAME_TAKEN);
        }
        let moved = host.is_some() || port.is_some();
        if moved {
            let at_host = host.as_deref().unwrap_or(&old.host);
            let at_port = port.unwrap_or(old.port);
            refuse_address_taken!(conn, old.region_id, at_host, at_port, id);
        }
        let node = diesel::update(outline_nodes::table.find(id))
            .set((
                name.map(|v| outline_nodes::name.eq(v)),
                host.as_ref().map(|v| outline_nodes::host.eq(v)),
                port.map(|v| outline_nodes::port.eq(v)),
                capacity.map(|v| outline_nodes::capacity.eq(v)),
                moved.then_some(outline_nodes::health.eq(Health::Unknown)),
                outline_nodes::updated_at.eq(now()),
            ))
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(NODE_NAME_TAKEN))?;
        let entry = audit::entry(
            actor,
            "update_outline_node",
            "outline_node",
            Some(&id.to_string()),
            serde_json::Value::Object(diff.fields),
        );
        let code = audited!(conn, entry, node.region_id);
        outbox.node(outline_event(&node, &code, NodeEventKind::Updated));
        if moved {
            outbox.node_withdrawn(&node.id.to_string());
        }
        Ok::<_, AppError>(node)
    })
}

/// Admin: changes a gateway's name or public URL. The URL is what links
/// handed out from now on carry; the gateway's own `GATEWAY_PUBLIC_URL`
/// (its access-key documents, its certificate's name) is set on its host.
/// `configured` is the control plane's `BACKEND_GATEWAY_URL`: links are
/// built on it, so the gateway it names keeps its URL (CONFLICT) until the
/// setting names another (moving it would leave links on the setting's
/// URL with no gateway registered there, and another region's key).
pub async fn update_gateway(
    db: &Db,
    actor: &Actor,
    id: GatewayNodeId,
    changes: GatewayChanges,
    configured: Option<&str>,
) -> AppResult<GatewayNode> {
    actor.require_admin()?;
    let new_name = name(changes.name)?;
    let new_url = changes
        .public_url
        .as_deref()
        .map(|u| validate::https_url("publicUrl", u))
        .transpose()?;
    // The setting as the control plane reads it (`:443` dropped, the host
    // in lower case), to compare with the stored URL as it was checked.
    let configured = configured.and_then(|c| validate::https_url("BACKEND_GATEWAY_URL", c).ok());
    db_tx!(db, |conn, outbox| {
        let old: GatewayNode = diesel::update(gateway_nodes::table.find(id))
            .set(gateway_nodes::updated_at.eq(gateway_nodes::updated_at))
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("gateway"))?;
        let mut diff = Diff::default();
        let name = diff.field("name", &old.name, new_name);
        let url = diff.field("publicUrl", &old.public_url, new_url);
        if diff.is_empty() {
            return Ok(old);
        }
        if url.is_some()
            && configured
                .as_deref()
                .is_some_and(|c| same_url(c, &old.public_url))
        {
            return Err(AppError::Conflict(
                "BACKEND_GATEWAY_URL names this gateway's URL, and links are built on it: \
                 change the setting first"
                    .into(),
            ));
        }
        if let Some(name) = &name {
            crate::refuse_taken!(conn, gateway_nodes, name, name, id, GATEWAY_NAME_TAKEN);
        }
        if let Some(url) = &url {
            crate::refuse_taken!(conn, gateway_nodes, public_url, url, id, GATEWAY_URL_TAKEN);
        }
        let node = diesel::update(gateway_nodes::table.find(id))
            .set((
                name.map(|v| gateway_nodes::name.eq(v)),
                url.map(|v| gateway_nodes::public_url.eq(v)),
                gateway_nodes::updated_at.eq(now()),
            ))
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await
            .map_err(AppError::on_conflict(GATEWAY_NAME_TAKEN))?;
        let entry = audit::entry(
            actor,
            "update_gateway_node",
            "gateway_node",
            Some(&id.to_string()),
            serde_json::Value::Object(diff.fields),
        );
        let code = audited!(conn, entry, node.region_id);
        outbox.node(gateway_event(&node, &code, NodeEventKind::Updated));
        Ok::<_, AppError>(node)
    })
}
