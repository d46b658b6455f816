//! Heartbeats from gateways and Outline nodes, and the sweeper that marks
//! nodes down when their lease runs out and ends idle sessions. Every health
//! change is published as a node event.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::events::{Events, NodeEventKind};
use super::node_assignment::lease;
use super::nodes::{gateway_event, outline_event};
use super::usage_accounting;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode, now};
use crate::db::schema::{gateway_nodes, outline_nodes, regions, sessions};
use crate::db_run;
use crate::error::{AppError, AppResult};
use httvps_wire::CloseOrder;
use httvps_wire::heartbeat::{GatewayBeat, OutlineBeat};

/// A session with no tunnel and no report for this long is ended as idle.
pub const SESSION_IDLE: chrono::Duration = chrono::Duration::minutes(10);

fn check_version(v: &Option<String>) -> AppResult<Option<String>> {
    v.as_deref()
        .map(|v| super::validate::text("version", v, 1, 64))
        .transpose()
}

async fn region_code(db: &Db, region_id: &str) -> AppResult<String> {
    Ok(db_run!(db, |conn| regions::table
        .find(region_id)
        .select(regions::code)
        .first(conn)
        .await?))
}

/// Records a gateway's heartbeat; returns the sessions it must close.
pub async fn gateway(
    db: &Db,
    events: &Events,
    g: &GatewayNode,
    beat: &GatewayBeat,
) -> AppResult<Vec<CloseOrder>> {
    let version = check_version(&beat.version)?;
    if beat.open_tunnels < 0 {
        return Err(AppError::bad("open_tunnels must not be negative"));
    }
    if beat.open_sessions.len() > httvps_wire::usage::MAX_BATCH
        || beat.unreachable_nodes.len() > 1000
        || beat.reachable_nodes.len() > 1000
    {
        return Err(AppError::bad("too many ids in one heartbeat"));
    }
    for id in beat
        .open_sessions
        .iter()
        .chain(&beat.unreachable_nodes)
        .chain(&beat.reachable_nodes)
    {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(AppError::bad("ids must be valid ids"));
        }
    }
    let ts = now();
    let was_up = g.health == "up";
    let updated: GatewayNode = db_run!(db, |conn| {
        let g = diesel::update(gateway_nodes::table.find(&g.id))
            .set((
                gateway_nodes::health.eq("up"),
                gateway_nodes::last_heartbeat_at.eq(ts),
                gateway_nodes::open_tunnels.eq(beat.open_tunnels),
                gateway_nodes::version.eq(&version),
                gateway_nodes::updated_at.eq(ts),
            ))
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await?;
        if !beat.open_sessions.is_empty() {
            diesel::update(sessions::table)
                .filter(sessions::id.eq_any(&beat.open_sessions))
                .filter(sessions::gateway_node_id.eq(&g.id))
                .filter(sessions::ended_at.is_null())
                .set(sessions::last_activity_at.eq(ts))
                .execute(conn)
                .await?;
        }
        g
    });
    if !was_up {
        let code = region_code(db, &updated.region_id).await?;
        events
            .publish(gateway_event(&updated, &code, NodeEventKind::Up))
            .await;
    }
    // Nodes judged by what the gateway saw: stock nodes send no heartbeat.
    for (ids, health, kind) in [
        (&beat.unreachable_nodes, "down", NodeEventKind::Down),
        (&beat.reachable_nodes, "up", NodeEventKind::Up),
    ] {
        if ids.is_empty() {
            continue;
        }
        let changed: Vec<OutlineNode> = db_run!(db, |conn| diesel::update(outline_nodes::table)
            .filter(outline_nodes::id.eq_any(ids))
            .filter(outline_nodes::health.ne(health))
            .set((
                outline_nodes::health.eq(health),
                outline_nodes::updated_at.eq(ts)
            ))
            .returning(OutlineNode::as_returning())
            .get_results(conn)
            .await?);
        for n in changed {
            let code = region_code(db, &n.region_id).await?;
            events.publish(outline_event(&n, &code, kind)).await;
        }
    }
    usage_accounting::close_orders(db, &g.id, &beat.open_sessions).await
}

/// Records an Outline node's heartbeat.
pub async fn outline(
    db: &Db,
    events: &Events,
    n: &OutlineNode,
    beat: &OutlineBeat,
) -> AppResult<()> {
    let version = check_version(&beat.version)?;
    if beat.load < 0 || beat.bytes_in < 0 || beat.bytes_out < 0 {
        return Err(AppError::bad("load and byte counters must not be negative"));
    }
    let ts = now();
    let updated: OutlineNode = db_run!(db, |conn| diesel::update(outline_nodes::table.find(&n.id))
        .set((
            outline_nodes::health.eq("up"),
            outline_nodes::last_heartbeat_at.eq(ts),
            outline_nodes::load.eq(beat.load),
            outline_nodes::bytes_in.eq(beat.bytes_in),
            outline_nodes::bytes_out.eq(beat.bytes_out),
            outline_nodes::version.eq(&version),
            outline_nodes::updated_at.eq(ts),
        ))
        .returning(OutlineNode::as_returning())
        .get_result(conn)
        .await?);
    let kind = if n.health != "up" {
        Some(NodeEventKind::Up)
    } else if n.load != beat.load {
        Some(NodeEventKind::Load)
    } else {
        None
    };
    if let Some(kind) = kind {
        let code = region_code(db, &updated.region_id).await?;
        events.publish(outline_event(&updated, &code, kind)).await;
    }
    Ok(())
}

/// One sweep: nodes and gateways whose lease ran out go down (each change
/// published once, even with several replicas sweeping), idle sessions end.
pub async fn sweep(db: &Db, events: &Events) -> AppResult<()> {
    let ts = now();
    let expired = ts - lease();
    let (nodes, gateways): (Vec<OutlineNode>, Vec<GatewayNode>) = db_run!(db, |conn| {
        let n = diesel::update(outline_nodes::table)
            .filter(outline_nodes::health.eq("up"))
            .filter(outline_nodes::last_heartbeat_at.lt(expired))
            .set((
                outline_nodes::health.eq("down"),
                outline_nodes::updated_at.eq(ts),
            ))
            .returning(OutlineNode::as_returning())
            .get_results(conn)
            .await?;
        let g = diesel::update(gateway_nodes::table)
            .filter(gateway_nodes::health.eq("up"))
            .filter(gateway_nodes::last_heartbeat_at.lt(expired))
            .set((
                gateway_nodes::health.eq("down"),
                gateway_nodes::updated_at.eq(ts),
            ))
            .returning(GatewayNode::as_returning())
            .get_results(conn)
            .await?;
        diesel::update(sessions::table)
            .filter(sessions::ended_at.is_null())
            .filter(sessions::last_activity_at.lt(ts - SESSION_IDLE))
            .set((sessions::ended_at.eq(ts), sessions::end_reason.eq("idle")))
            .execute(conn)
            .await?;
        (n, g)
    });
    for n in nodes {
        let code = region_code(db, &n.region_id).await?;
        events
            .publish(outline_event(&n, &code, NodeEventKind::Down))
            .await;
    }
    for g in gateways {
        let code = region_code(db, &g.region_id).await?;
        events
            .publish(gateway_event(&g, &code, NodeEventKind::Down))
            .await;
    }
    Ok(())
}

/// Runs [`sweep`] every `every` until the task is dropped.
pub fn spawn_sweeper(db: Db, events: Events, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&db, &events).await {
                tracing::warn!(error = %e, "sweep failed");
            }
        }
    })
}
