//! The node registry: Outline (Shadowsocks) nodes and gateways.
//! [`registry`] registers, sets the status of, deletes and re-keys them
//! (admins), publishing a node event in the transaction of each change;
//! [`changes`] changes their names, addresses and capacity;
//! [`listing`] lists and loads them; [`machines`] authenticates the machine
//! tokens they call `/api/v1` with; [`enrollment`] trades a one-time
//! enrollment token for a machine's own.

mod address;
mod changes;
pub mod enrollment;
mod history;
pub mod listing;
pub mod machines;
pub mod registry;

use crate::db::models::{GatewayNode, OutlineNode};

/// An Outline node's name held by another (in any case).
const NODE_NAME_TAKEN: &str = "a node with this name exists";
/// A gateway's name held by another (in any case).
const GATEWAY_NAME_TAKEN: &str = "a gateway with this name exists";
/// A gateway's public URL held by another (in any case): links and the
/// region a device gets follow the gateway a URL belongs to.
const GATEWAY_URL_TAKEN: &str = "a gateway with this public URL exists";
use crate::events::{NodeEvent, NodeEventKind, NodeKind};
pub use crate::status::{Health, NodeStatus};
pub use changes::{GatewayChanges, OutlineChanges, update_gateway, update_outline};
pub use enrollment::EnrollmentTtl;
pub use listing::{NodeFilter, gateways_by_ids, list_gateways, list_outline, outline_by_ids};
pub use machines::{MACHINE_CACHE_TTL, Machine, MachineCache, authenticate_machine};
pub use registry::{
    NewOutlineNode, delete, register_gateway, register_outline, rotate_token, set_status,
};

/// The event announcing that a node was set to `status`.
pub fn status_event(status: NodeStatus) -> NodeEventKind {
    match status {
        NodeStatus::Active => NodeEventKind::Active,
        NodeStatus::Draining => NodeEventKind::Draining,
        NodeStatus::Disabled => NodeEventKind::Disabled,
    }
}

/// The event describing an Outline node's current state.
pub fn outline_event(n: &OutlineNode, region: &str, kind: NodeEventKind) -> NodeEvent {
    NodeEvent {
        node_id: n.id.to_string(),
        node_kind: NodeKind::Outline,
        region: region.to_owned(),
        kind,
        status: n.status.as_str().to_owned(),
        health: n.health.as_str().to_owned(),
        load: n.load,
        capacity: n.capacity,
        at: chrono::Utc::now(),
    }
}

/// The event describing a gateway's current state.
pub fn gateway_event(g: &GatewayNode, region: &str, kind: NodeEventKind) -> NodeEvent {
    NodeEvent {
        node_id: g.id.to_string(),
        node_kind: NodeKind::Gateway,
        region: region.to_owned(),
        kind,
        status: g.status.as_str().to_owned(),
        health: g.health.as_str().to_owned(),
        load: g.open_tunnels,
        capacity: 0,
        at: chrono::Utc::now(),
    }
}

/// Either kind of node, as changed by an admin.
#[derive(Debug, Clone)]
pub enum AnyNode {
    /// An Outline node.
    Outline(OutlineNode),
    /// A gateway.
    Gateway(GatewayNode),
}

impl AnyNode {
    /// The event describing its current state.
    pub fn event(&self, region: &str, kind: NodeEventKind) -> NodeEvent {
        match self {
            AnyNode::Outline(n) => outline_event(n, region, kind),
            AnyNode::Gateway(g) => gateway_event(g, region, kind),
        }
    }

    /// The audit log's target type for it, as its registration recorded.
    pub fn audit_type(&self) -> &'static str {
        match self {
            AnyNode::Outline(_) => "outline_node",
            AnyNode::Gateway(_) => "gateway_node",
        }
    }

    /// Its region.
    pub fn region_id(&self) -> crate::ids::RegionId {
        match self {
            AnyNode::Outline(n) => n.region_id,
            AnyNode::Gateway(g) => g.region_id,
        }
    }
}
