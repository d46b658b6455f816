//! Node assignment: pick a node for a device (requested region, active,
//! healthy, under capacity, least loaded relative to capacity, sticky; the
//! decision is [`choice::choose`], without I/O) and open or reuse its
//! session.

pub mod choice;

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::access::Verdict;
use crate::db::Db;
use crate::db::models::{Device, GatewayNode, OutlineNode, Region, Session, now};
use crate::db::schema::{devices, outline_nodes, regions, sessions};
use crate::error::{AppError, AppResult};
use crate::feed::{self, SessionEventKind};
use crate::ids::{DeviceId, GatewayNodeId, OutlineNodeId, RegionId, SessionId};
use crate::status::NodeStatus;
use crate::{db_run, db_tx};
pub use choice::{Choice, HEARTBEAT_INTERVAL_SECS, MISSED_HEARTBEATS, lease};

/// The region's active nodes, their open-session counts, and the device's
/// open sessions.
type Snapshot = (
    Vec<OutlineNode>,
    Vec<(Option<OutlineNodeId>, i64)>,
    Vec<Session>,
);

/// What was assigned.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The (new or reused) session.
    pub session: Session,
    /// The node.
    pub node: OutlineNode,
    /// The node's region.
    pub region: Region,
}

/// Assigns a node to a device that passed validation. `gateway` is the
/// calling gateway (sessions are per device, node and gateway); `region` a
/// requested region code.
pub async fn assign(
    db: &Db,
    device: &Device,
    gateway: Option<&GatewayNode>,
    region: Option<&str>,
) -> AppResult<Assignment> {
    let region_id: Option<RegionId> = match region {
        Some(code) => {
            let code = crate::validate::code("region", code)?;
            let r: Option<RegionId> = db_run!(db, |conn| regions::table
                .filter(regions::code.eq(&code))
                .select(regions::id)
                .first(conn)
                .await
                .optional()?);
            Some(r.ok_or(AppError::NotFound("region"))?)
        }
        // A gateway serves its own region's pool by default.
        None => gateway.map(|g| g.region_id),
    };
    let gateway_id = gateway.map(|g| g.id);
    let ts = now();
    let (nodes, open_counts, current): Snapshot = db_run!(db, |conn| {
        let mut q = outline_nodes::table
            .filter(outline_nodes::status.eq(NodeStatus::Active))
            .into_boxed();
        if let Some(r) = region_id {
            q = q.filter(outline_nodes::region_id.eq(r));
        }
        let nodes: Vec<OutlineNode> = q.select(OutlineNode::as_select()).load(conn).await?;
        let ids: Vec<OutlineNodeId> = nodes.iter().map(|n| n.id).collect();
        let counts: Vec<(Option<OutlineNodeId>, i64)> = sessions::table
            .filter(sessions::ended_at.is_null())
            .filter(sessions::outline_node_id.eq_any(&ids))
            .group_by(sessions::outline_node_id)
            .select((sessions::outline_node_id, diesel::dsl::count_star()))
            .load(conn)
            .await?;
        let current: Vec<Session> = sessions::table
            .filter(sessions::device_id.eq(device.id))
            .filter(sessions::ended_at.is_null())
            .select(Session::as_select())
            .load(conn)
            .await?;
        (nodes, counts, current)
    });
    let open: HashMap<OutlineNodeId, i64> = open_counts
        .into_iter()
        .filter_map(|(id, n)| id.map(|id| (id, n)))
        .collect();
    let (node, session) = match choice::choose(&nodes, &open, &current, gateway_id, ts) {
        Ok(Choice::Sticky { node, session }) => (node.clone(), session.clone()),
        Ok(Choice::Fresh(node)) => {
            let session = open_session(db, device.id, node.id, gateway_id).await?;
            (node.clone(), session)
        }
        Err(none) => return Err(AppError::NoNode(none.message().into())),
    };
    let region: Region = db_run!(db, |conn| regions::table
        .find(node.region_id)
        .select(Region::as_select())
        .first(conn)
        .await?);
    Ok(Assignment {
        session,
        node,
        region,
    })
}

/// Opens the session of (device, node, gateway), or returns the open one
/// (concurrent callers end up with the same session).
async fn open_session(
    db: &Db,
    device_id: DeviceId,
    node_id: OutlineNodeId,
    gateway_id: Option<GatewayNodeId>,
) -> AppResult<Session> {
    db_tx!(db, |conn, outbox| {
        let ts = now();
        let fresh = Session {
            id: SessionId::random(),
            device_id,
            outline_node_id: Some(node_id),
            gateway_node_id: gateway_id,
            started_at: ts,
            last_activity_at: ts,
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            last_seq: 0,
            end_reason: None,
        };
        let inserted = diesel::insert_into(sessions::table)
            .values(&fresh)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        let mut q = sessions::table
            .filter(sessions::device_id.eq(device_id))
            .filter(sessions::outline_node_id.eq(node_id))
            .filter(sessions::ended_at.is_null())
            .into_boxed();
        q = match gateway_id {
            Some(g) => q.filter(sessions::gateway_node_id.eq(g)),
            None => q.filter(sessions::gateway_node_id.is_null()),
        };
        let s: Session = q.select(Session::as_select()).first(conn).await?;
        if inserted == 1 && s.id == fresh.id {
            let rows = crate::session_rows!(conn, vec![s.id]);
            outbox.sessions(feed::session_events(SessionEventKind::Opened, rows, ts));
        }
        diesel::update(devices::table.find(device_id))
            .set(devices::last_seen_at.eq(ts))
            .execute(conn)
            .await?;
        Ok::<_, AppError>(s)
    })
}

/// Validates and assigns in one call; a refused device is an error carrying
/// the reason.
pub async fn validate_and_assign(
    db: &Db,
    verdict: Verdict,
    gateway: Option<&GatewayNode>,
    region: Option<&str>,
) -> AppResult<Assignment> {
    let device = verdict.admitted().map_err(AppError::DeviceRefused)?;
    assign(db, &device, gateway, region).await
}
