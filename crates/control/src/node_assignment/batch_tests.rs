//! Unit tests of a batch's plan: lanes, regions, feed rows.

use super::*;
use crate::db::models::now;
use crate::ids::{GatewayNodeId, OutlineNodeId, RegionId, UserId};
use crate::status::Health;

fn node(region: RegionId) -> (OutlineNode, Region) {
    let ts = now();
    let n = OutlineNode {
        id: OutlineNodeId::random(),
        region_id: region,
        name: "n".into(),
        host: "10.0.0.1".into(),
        port: 8388,
        method: "chacha20-ietf-poly1305".into(),
        secret: "s".into(),
        uses_pool_key: false,
        status: NodeStatus::Active,
        health: Health::Up,
        capacity: 100,
        token_hash: String::new().into(),
        last_heartbeat_at: Some(ts),
        load: 0,
        bytes_in: 0,
        bytes_out: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
        enroll_expires_at: None,
    };
    let r = Region {
        id: region,
        code: "r".into(),
        name: "R".into(),
        pool_method: "chacha20-ietf-poly1305".into(),
        pool_secret: "p".into(),
        created_at: ts,
    };
    (n, r)
}

fn ask(device: DeviceId, gateway: Option<GatewayNodeId>, region: Option<RegionId>) -> Ask {
    Ask {
        device_id: device,
        user_id: UserId::random(),
        user_email: "o@example.test".into(),
        last_seen_at: None,
        gateway,
        region,
        spin: 0.5,
        token_generation: 1,
    }
}

#[test]
fn a_device_asked_twice_in_a_batch_gets_one_new_session() {
    let r = RegionId::random();
    let nodes = vec![node(r), node(r)];
    let (d, g) = (DeviceId::random(), Some(GatewayNodeId::random()));
    let (plans, fresh) = plan(
        &[ask(d, g, Some(r)), ask(d, g, Some(r))],
        &nodes,
        vec![],
        now(),
    );
    assert_eq!(fresh.len(), 1, "one session to insert");
    let keys: Vec<Lane> = plans
        .iter()
        .map(|p| match p {
            Plan::Fresh(l) => *l,
            _ => panic!("both asks wait for the new session"),
        })
        .collect();
    assert_eq!(keys[0], keys[1]);
}

#[test]
fn asks_pick_nodes_of_their_own_region_and_an_empty_region_has_none() {
    let (r1, r2) = (RegionId::random(), RegionId::random());
    let nodes = vec![node(r1), node(r2)];
    let asks = [
        ask(DeviceId::random(), None, Some(r2)),
        ask(DeviceId::random(), None, Some(RegionId::random())),
    ];
    let (plans, fresh) = plan(&asks, &nodes, vec![], now());
    assert_eq!(fresh.len(), 1);
    let Plan::Fresh(l) = &plans[0] else {
        panic!("a new session in r2")
    };
    assert_eq!(
        fresh[l].outline_node_id,
        Some(nodes[1].0.id),
        "the node of r2"
    );
    assert!(matches!(plans[1], Plan::NoNode(_)));
}

#[test]
fn feed_rows_name_the_owner_of_the_ask_and_the_region_of_the_node() {
    let (r1, r2) = (RegionId::random(), RegionId::random());
    let mut nodes = vec![node(r1), node(r2)];
    nodes[1].1.code = "second".into();
    let d = DeviceId::random();
    let a = ask(d, None, Some(r2));
    let (_, fresh) = plan(std::slice::from_ref(&a), &nodes, vec![], now());
    let made: Vec<Session> = fresh.into_values().collect();
    let rows = feed_rows(std::slice::from_ref(&a), &nodes, &made);
    assert_eq!(rows.len(), 1);
    let (id, device, user, email, region, node_id, _, reason, up, down) = rows[0].clone();
    assert_eq!((id, device, user), (made[0].id, d, a.user_id));
    assert_eq!(email, a.user_email);
    assert_eq!(region.as_deref(), Some("second"));
    assert_eq!(node_id, Some(nodes[1].0.id));
    assert_eq!((reason, up, down), (None, 0, 0));
}

#[test]
fn an_open_session_on_a_healthy_node_is_reused() {
    let r = RegionId::random();
    let nodes = vec![node(r)];
    let (d, g) = (DeviceId::random(), Some(GatewayNodeId::random()));
    let open = open_on(&nodes[0].0, d, g);
    let ts = open.started_at;
    let (plans, fresh) = plan(&[ask(d, g, Some(r))], &nodes, vec![open.clone()], ts);
    assert!(fresh.is_empty());
    assert!(matches!(&plans[0], Plan::Sticky(s, 0) if s.id == open.id));
}

fn open_on(node: &OutlineNode, d: DeviceId, g: Option<GatewayNodeId>) -> Session {
    let ts = now();
    Session {
        id: SessionId::ordered(),
        device_id: d,
        outline_node_id: Some(node.id),
        gateway_node_id: g,
        started_at: ts,
        last_activity_at: ts,
        ended_at: None,
        bytes_up: 0,
        bytes_down: 0,
        last_seq: 0,
        end_reason: None,
        token_generation: 0,
        supersedes: None,
    }
}

#[test]
fn batches_that_read_the_same_sessions_open_in_one_lane_whatever_node_they_draw() {
    let r = RegionId::random();
    let nodes = vec![node(r), node(r)];
    let (d, g) = (DeviceId::random(), Some(GatewayNodeId::random()));
    let drawn = |spin: f64, current: Vec<Session>| {
        let mut a = ask(d, g, Some(r));
        a.spin = spin;
        let (_, fresh) = plan(&[a], &nodes, current, now());
        let (lane, s) = fresh.into_iter().next().expect("a new session");
        (lane, s.outline_node_id)
    };
    // No open session: two batches drawing different nodes name no
    // predecessor, so the index lets only one of them in.
    let (l1, n1) = drawn(0.1, vec![]);
    let (l2, n2) = drawn(0.9, vec![]);
    assert_ne!(n1, n2, "the draws chose different nodes");
    assert_eq!(l1, l2);
    assert_eq!(l1, (d, g, None));
    // An open session on a node that takes no new tunnels: the new one
    // names it, whichever node it goes to.
    let mut gone = node(r).0;
    gone.status = NodeStatus::Draining;
    let old = open_on(&gone, d, g);
    let (l3, n3) = drawn(0.1, vec![old.clone()]);
    let (l4, n4) = drawn(0.9, vec![old.clone()]);
    assert_ne!(n3, n4);
    assert_eq!(l3, l4);
    assert_eq!(l3, (d, g, Some(old.id)));
}

#[test]
fn an_open_session_through_another_gateway_is_not_a_predecessor() {
    let r = RegionId::random();
    let nodes = vec![node(r)];
    let d = DeviceId::random();
    let (g1, g2) = (Some(GatewayNodeId::random()), Some(GatewayNodeId::random()));
    let elsewhere = open_on(&nodes[0].0, d, g1);
    let (plans, fresh) = plan(&[ask(d, g2, Some(r))], &nodes, vec![elsewhere], now());
    assert!(matches!(plans[0], Plan::Fresh((_, gw, None)) if gw == g2));
    assert_eq!(fresh.len(), 1);
}
