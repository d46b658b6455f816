//! The choice of a node, without I/O: among the region's nodes, the healthy
//! active ones; the device's open session through this gateway when one is
//! on such a node (sticky); otherwise one with room, pool-key nodes first,
//! never a full one.
//!
//! A node's load is what its last heartbeat reported (its open client
//! connections), so a choice reads the region's node rows and nothing that
//! grows with the sessions. That load is up to a heartbeat interval old:
//! picking "the least loaded" would send every new session of that interval
//! to the same node, so the pick is random, weighted by each node's room
//! (capacity minus load): the emptier a node relative to its size, the more
//! new sessions it takes, and a burst spreads over the pool.

use chrono::NaiveDateTime;

use crate::db::models::{OutlineNode, Session};
use crate::ids::GatewayNodeId;
use crate::status::{Health, NodeStatus};

pub use crate::status::{HEARTBEAT_INTERVAL_SECS, MISSED_HEARTBEATS, lease};

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

/// The room a node has for new connections (0 when full).
fn room(n: &OutlineNode) -> i64 {
    (i64::from(n.capacity) - i64::from(n.load)).max(0)
}

/// Chooses among `nodes` (the region's) at `at` for a device whose open
/// sessions are `current`, called through `gateway`. `spin`, in `[0, 1)`,
/// is the random draw of a fresh choice.
pub fn choose<'a>(
    nodes: &'a [OutlineNode],
    current: &'a [Session],
    gateway: Option<GatewayNodeId>,
    at: NaiveDateTime,
    spin: f64,
) -> Result<Choice<'a>, NoNode> {
    let healthy: Vec<&OutlineNode> = nodes.iter().filter(|n| eligible(n, at)).collect();
    // The newest such session: a device may hold an older one too, on a
    // node that took no new tunnels when the newer one was opened and has
    // taken them again since; new tunnels stay with the newer.
    let sticky = current
        .iter()
        .filter(|s| s.gateway_node_id == gateway)
        .filter_map(|s| {
            Some((
                s,
                *healthy.iter().find(|n| Some(n.id) == s.outline_node_id)?,
            ))
        })
        .max_by_key(|(s, _)| (s.started_at, s.id))
        .map(|(session, node)| Choice::Sticky { node, session });
    if let Some(c) = sticky {
        return Ok(c);
    }
    let open: Vec<&OutlineNode> = healthy.iter().copied().filter(|n| room(n) > 0).collect();
    // Pool-key nodes first: clients holding the region key work on any of them.
    let pool: Vec<&OutlineNode> = open.iter().copied().filter(|n| n.uses_pool_key).collect();
    let candidates = if pool.is_empty() { open } else { pool };
    let total: i64 = candidates.iter().map(|n| room(n)).sum();
    // The point on the line of all rooms laid end to end that `spin` hits.
    let mut at_room = (spin.clamp(0.0, 1.0) * total as f64) as i64;
    for n in &candidates {
        if at_room < room(n) {
            return Ok(Choice::Fresh(n));
        }
        at_room -= room(n);
    }
    candidates
        .last()
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
    use crate::ids::{DeviceId, OutlineNodeId, RegionId, SessionId};

    fn node(capacity: i32, pool: bool) -> OutlineNode {
        loaded(capacity, 0, pool)
    }

    fn loaded(capacity: i32, load: i32, pool: bool) -> OutlineNode {
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
            load,
            bytes_in: 0,
            bytes_out: 0,
            version: None,
            created_at: now(),
            updated_at: now(),
            enroll_expires_at: None,
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
            token_generation: 0,
            supersedes: None,
        }
    }

    fn fresh(c: Result<Choice<'_>, NoNode>) -> OutlineNodeId {
        match c {
            Ok(Choice::Fresh(n)) => n.id,
            other => panic!("expected a fresh choice, got {other:?}"),
        }
    }

    #[test]
    fn new_sessions_spread_in_proportion_to_room() {
        // Rooms 5 and 90: spins below 5/95 land on the first node.
        let nodes = [loaded(10, 5, true), loaded(100, 10, true)];
        assert_eq!(fresh(choose(&nodes, &[], None, now(), 0.0)), nodes[0].id);
        assert_eq!(fresh(choose(&nodes, &[], None, now(), 0.05)), nodes[0].id);
        assert_eq!(fresh(choose(&nodes, &[], None, now(), 0.06)), nodes[1].id);
        assert_eq!(fresh(choose(&nodes, &[], None, now(), 0.999)), nodes[1].id);
        // Over an even sweep of spins, each node's share is its share of the room.
        let picks = (0..950)
            .filter(|i| {
                fresh(choose(&nodes, &[], None, now(), f64::from(*i) / 950.0)) == nodes[0].id
            })
            .count();
        assert_eq!(picks, 50);
    }

    #[test]
    fn pool_key_nodes_come_first_and_full_nodes_never() {
        let nodes = [node(100, false), loaded(10, 9, true)];
        for spin in [0.0, 0.5, 0.99] {
            assert_eq!(fresh(choose(&nodes, &[], None, now(), spin)), nodes[1].id);
        }
        let nodes = [node(100, false), loaded(10, 10, true)];
        assert_eq!(fresh(choose(&nodes, &[], None, now(), 0.0)), nodes[0].id);
        // A load past capacity (connections are not refused) is full too.
        let nodes = [loaded(100, 100, false), loaded(10, 12, true)];
        assert_eq!(
            choose(&nodes, &[], None, now(), 0.3).err(),
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
            choose(&nodes, &[], None, t, 0.5).err(),
            Some(NoNode::NoneHealthy)
        );
        let with_unknown = [nodes[0].clone(), unknown.clone()];
        assert_eq!(fresh(choose(&with_unknown, &[], None, t, 0.5)), unknown.id);
        assert_eq!(
            choose(&[], &[], None, t, 0.5).err(),
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
        let nodes = [loaded(100, 100, true), node(100, true)];
        let mine = session(&nodes[0], gw);
        let current = [mine.clone()];
        // Sticky even when its node is full: the device is already there.
        match choose(&nodes, &current, gw, now(), 0.0) {
            Ok(Choice::Sticky { node, session }) => {
                assert_eq!((node.id, session.id), (nodes[0].id, mine.id));
            }
            other => panic!("expected sticky, got {other:?}"),
        }
        // Through another gateway: a fresh choice (the one with room).
        let other_gw = Some(GatewayNodeId::random());
        assert_eq!(
            fresh(choose(&nodes, &current, other_gw, now(), 0.0)),
            nodes[1].id
        );
        // Its node went down: a fresh choice.
        let mut gone = nodes.clone();
        gone[0].health = Health::Down;
        gone[0].load = 0;
        assert_eq!(fresh(choose(&gone, &current, gw, now(), 0.0)), nodes[1].id);
    }

    #[test]
    fn of_two_sessions_on_healthy_nodes_the_newer_is_kept_in_either_order() {
        let gw = Some(GatewayNodeId::random());
        let nodes = [node(100, true), node(100, true)];
        // The older one's node took no tunnels when the newer one was
        // opened, and takes them again now.
        let mut older = session(&nodes[0], gw);
        older.started_at -= chrono::Duration::minutes(5);
        let newer = session(&nodes[1], gw);
        for current in [
            [older.clone(), newer.clone()],
            [newer.clone(), older.clone()],
        ] {
            match choose(&nodes, &current, gw, now(), 0.0) {
                Ok(Choice::Sticky { session, .. }) => assert_eq!(session.id, newer.id),
                other => panic!("expected sticky, got {other:?}"),
            }
        }
    }
}
