//! The choice of a node, without I/O: among the region's nodes, the healthy
//! active ones; the device's open session through this gateway when one is
//! on such a node (sticky); otherwise the least loaded relative to capacity,
//! pool-key nodes first, never a full one.

use std::collections::HashMap;

use chrono::NaiveDateTime;

use crate::db::models::{OutlineNode, Session};
use crate::ids::{GatewayNodeId, OutlineNodeId};
use crate::status::{Health, NodeStatus};

/// A node stops being healthy when it misses this many heartbeat intervals.
pub const MISSED_HEARTBEATS: i64 = 3;
/// Interval at which nodes and gateways are asked to heartbeat, in seconds.
pub const HEARTBEAT_INTERVAL_SECS: i64 = 5;

/// How long a heartbeat keeps a node healthy.
pub fn lease() -> chrono::Duration {
    chrono::Duration::seconds(HEARTBEAT_INTERVAL_SECS * MISSED_HEARTBEATS)
}

/// Whether a node can take new sessions at `at`: active, not seen down, and
/// not past its lease (a node never heard of is given the benefit of the
/// doubt: stock nodes send no heartbeat).
pub fn eligible(n: &OutlineNode, at: NaiveDateTime) -> bool {
    n.status == NodeStatus::Active
        && n.health != Health::Down
        && n.last_heartbeat_at.is_none_or(|t| t > at - lease())
}

/// What was chosen.
#[derive(Debug, Clone, Copy)]
pub enum Choice<'a> {
    /// Keep the device's open session on its node.
    Sticky {
        /// The node.
        node: &'a OutlineNode,
        /// The session.
        session: &'a Session,
    },
    /// Open a session on this node.
    Fresh(&'a OutlineNode),
}

impl<'a> Choice<'a> {
    /// The chosen node.
    pub fn node(&self) -> &'a OutlineNode {
        match self {
            Choice::Sticky { node, .. } | Choice::Fresh(node) => node,
        }
    }
}

/// Why no node could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoNode {
    /// The region has no active node.
    NoneActive,
    /// None of them is healthy.
    NoneHealthy,
    /// Every healthy one is full.
    AllFull,
}

impl NoNode {
    /// What a caller is told.
    pub fn message(self) -> &'static str {
        match self {
            NoNode::NoneActive => "no active node in the region",
            NoNode::NoneHealthy => "no healthy node in the region",
            NoNode::AllFull => "every node of the region is at capacity",
        }
    }
}

/// Chooses among `nodes` (the region's) at `at` for a device whose open
/// sessions are `current`, called through `gateway`; `open` counts the open
/// sessions per node.
pub fn choose<'a>(
    nodes: &'a [OutlineNode],
    open: &HashMap<OutlineNodeId, i64>,
    current: &'a [Session],
    gateway: Option<GatewayNodeId>,
    at: NaiveDateTime,
) -> Result<Choice<'a>, NoNode> {
    let healthy: Vec<&OutlineNode> = nodes.iter().filter(|n| eligible(n, at)).collect();
    let sticky = current.iter().find_map(|s| {
        let node = healthy.iter().find(|n| Some(n.id) == s.outline_node_id)?;
        (s.gateway_node_id == gateway).then_some(Choice::Sticky { node, session: s })
    });
    if let Some(c) = sticky {
        return Ok(c);
    }
    let load = |n: &OutlineNode| open.get(&n.id).copied().unwrap_or(0);
    let ratio = |n: &OutlineNode| load(n) as f64 / f64::from(n.capacity.max(1));
    healthy
        .iter()
        .filter(|n| load(n) < i64::from(n.capacity))
        .min_by(|a, b| {
            // Pool-key nodes first: clients holding the region key work on any of them.
            (!a.uses_pool_key, ratio(a))
                .partial_cmp(&(!b.uses_pool_key, ratio(b)))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|n| Choice::Fresh(n))
        .ok_or(if nodes.is_empty() {
            NoNode::NoneActive
        } else if healthy.is_empty() {
            NoNode::NoneHealthy
        } else {
            NoNode::AllFull
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::now;
    use crate::ids::{DeviceId, RegionId, SessionId};

    fn node(capacity: i32, pool: bool) -> OutlineNode {
        OutlineNode {
            id: OutlineNodeId::random(),
            region_id: RegionId::random(),
            name: "n".into(),
            host: "127.0.0.1".into(),
            port: 1,
            method: "aes-128-gcm".into(),
            secret: "s".into(),
            uses_pool_key: pool,
            status: NodeStatus::Active,
            health: Health::Up,
            capacity,
            token_hash: "h".into(),
            last_heartbeat_at: Some(now()),
            load: 0,
            bytes_in: 0,
            bytes_out: 0,
            version: None,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn session(on: &OutlineNode, gateway: Option<GatewayNodeId>) -> Session {
        Session {
            id: SessionId::random(),
            device_id: DeviceId::random(),
            outline_node_id: Some(on.id),
            gateway_node_id: gateway,
            started_at: now(),
            last_activity_at: now(),
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            last_seq: 0,
            end_reason: None,
        }
    }

    fn fresh(c: Result<Choice<'_>, NoNode>) -> OutlineNodeId {
        match c {
            Ok(Choice::Fresh(n)) => n.id,
            other => panic!("expected a fresh choice, got {other:?}"),
        }
    }

    #[test]
    fn least_loaded_relative_to_capacity_wins() {
        let nodes = [node(10, true), node(100, true)];
        let open = HashMap::from([(nodes[0].id, 5), (nodes[1].id, 10)]);
        assert_eq!(fresh(choose(&nodes, &open, &[], None, now())), nodes[1].id);
    }

    #[test]
    fn pool_key_nodes_come_first_and_full_nodes_never() {
        let nodes = [node(100, false), node(10, true)];
        let open = HashMap::from([(nodes[1].id, 9)]);
        assert_eq!(fresh(choose(&nodes, &open, &[], None, now())), nodes[1].id);
        let open = HashMap::from([(nodes[1].id, 10)]);
        assert_eq!(fresh(choose(&nodes, &open, &[], None, now())), nodes[0].id);
        let open = HashMap::from([(nodes[0].id, 100), (nodes[1].id, 10)]);
        assert_eq!(
            choose(&nodes, &open, &[], None, now()).err(),
            Some(NoNode::AllFull)
        );
    }

    #[test]
    fn unhealthy_nodes_are_skipped() {
        let t = now();
        let mut down = node(10, true);
        down.health = Health::Down;
        let mut draining = node(10, true);
        draining.status = NodeStatus::Draining;
        let mut silent = node(10, true);
        silent.last_heartbeat_at = Some(t - lease());
        let mut unknown = node(10, true);
        unknown.health = Health::Unknown;
        unknown.last_heartbeat_at = None;
        let nodes = [down, draining, silent];
        assert_eq!(
            choose(&nodes, &HashMap::new(), &[], None, t).err(),
            Some(NoNode::NoneHealthy)
        );
        let with_unknown = [nodes[0].clone(), unknown.clone()];
        assert_eq!(
            fresh(choose(&with_unknown, &HashMap::new(), &[], None, t)),
            unknown.id
        );
        assert_eq!(
            choose(&[], &HashMap::new(), &[], None, t).err(),
            Some(NoNode::NoneActive)
        );
        assert_eq!(
            NoNode::AllFull.message(),
            "every node of the region is at capacity"
        );
    }

    #[test]
    fn sessions_stick_to_their_node_through_the_same_gateway() {
        let gw = Some(GatewayNodeId::random());
        let nodes = [node(100, true), node(100, true)];
        let open = HashMap::from([(nodes[0].id, 50)]);
        let mine = session(&nodes[0], gw);
        let current = [mine.clone()];
        match choose(&nodes, &open, &current, gw, now()) {
            Ok(Choice::Sticky { node, session }) => {
                assert_eq!((node.id, session.id), (nodes[0].id, mine.id));
            }
            other => panic!("expected sticky, got {other:?}"),
        }
        // Through another gateway: a fresh choice (the less loaded node).
        let other_gw = Some(GatewayNodeId::random());
        assert_eq!(
            fresh(choose(&nodes, &open, &current, other_gw, now())),
            nodes[1].id
        );
        // Its node went down: a fresh choice.
        let mut gone = nodes.clone();
        gone[0].health = Health::Down;
        assert_eq!(
            fresh(choose(&gone, &open, &current, gw, now())),
            nodes[1].id
        );
    }
}
