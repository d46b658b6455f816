//! Node assignment: pick a node for a device (requested region, active,
//! healthy, under capacity by the load its heartbeats report, weighted by
//! room, sticky; the decision is [`choice::choose`], without I/O) and open
//! or reuse its session. The cost of a call does not grow with the number
//! of sessions: it reads the region's nodes and the device's open sessions.

pub mod choice;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::access::Verdict;
use crate::db::Db;
use crate::db::models::{Device, GatewayNode, OutlineNode, Region, Session, now};
use crate::db::schema::{devices, outline_nodes, regions, sessions};
use crate::error::{AppError, AppResult};
use crate::feed::{self, SessionEventKind};
use crate::ids::{GatewayNodeId, OutlineNodeId, RegionId, SessionId};
use crate::status::NodeStatus;
use crate::{db_run, db_tx};
pub use choice::{Choice, HEARTBEAT_INTERVAL_SECS, MISSED_HEARTBEATS, lease};

/// The region's active nodes with their regions, and the device's open
/// sessions.
type Snapshot = (Vec<(OutlineNode, Region)>, Vec<Session>);

/// How stale a device's `last_seen_at` may get before an assignment
/// refreshes it (a write per call would be a write per tunnel burst).
const LAST_SEEN_STEP: chrono::Duration = chrono::Duration::minutes(1);

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
    let (rows, current): Snapshot = db_run!(db, |conn| {
        let mut q = outline_nodes::table
            .inner_join(regions::table)
            .filter(outline_nodes::status.eq(NodeStatus::Active))
            .into_boxed();
        if let Some(r) = region_id {
            q = q.filter(outline_nodes::region_id.eq(r));
        }
        let rows: Vec<(OutlineNode, Region)> = q
            .select((OutlineNode::as_select(), Region::as_select()))
            .load(conn)
            .await?;
        let current: Vec<Session> = sessions::table
            .filter(sessions::device_id.eq(device.id))
            .filter(sessions::ended_at.is_null())
            .select(Session::as_select())
            .load(conn)
            .await?;
        (rows, current)
    });
    let (nodes, regions): (Vec<OutlineNode>, Vec<Region>) = rows.into_iter().unzip();
    let spin: f64 = rand::random();
    let (at, session) = match choice::choose(&nodes, &current, gateway_id, ts, spin) {
        Ok(Choice::Sticky { node, session }) => (node_index(&nodes, node), session.clone()),
        Ok(Choice::Fresh(node)) => {
            let session = open_session(db, device, node.id, gateway_id).await?;
            (node_index(&nodes, node), session)
        }
        Err(none) => return Err(AppError::NoNode(none.message().into())),
    };
    Ok(Assignment {
        session,
        node: nodes[at].clone(),
        region: regions[at].clone(),
    })
}

/// Where `node` (one of `nodes`) is in the list.
fn node_index(nodes: &[OutlineNode], node: &OutlineNode) -> usize {
    nodes.iter().position(|n| n.id == node.id).unwrap_or(0)
}

/// Opens the session of (device, node, gateway), or returns the open one
/// (concurrent callers end up with the same session, the unique index on
/// open sessions deciding). One statement when the session is new.
async fn open_session(
    db: &Db,
    device: &Device,
    node_id: OutlineNodeId,
    gateway_id: Option<GatewayNodeId>,
) -> AppResult<Session> {
    let ts = now();
    let fresh = Session {
        id: SessionId::random(),
        device_id: device.id,
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
    let seen_long_ago = device.last_seen_at.is_none_or(|t| t < ts - LAST_SEEN_STEP);
    let (session, opened) = db_run!(db, |conn| {
        let made: Option<Session> = diesel::insert_into(sessions::table)
            .values(&fresh)
            .on_conflict_do_nothing()
            .returning(Session::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let session = match made.clone() {
            Some(s) => s,
            None => {
                let mut q = sessions::table
                    .filter(sessions::device_id.eq(device.id))
                    .filter(sessions::outline_node_id.eq(node_id))
                    .filter(sessions::ended_at.is_null())
                    .into_boxed();
                q = match gateway_id {
                    Some(g) => q.filter(sessions::gateway_node_id.eq(g)),
                    None => q.filter(sessions::gateway_node_id.is_null()),
                };
                q.select(Session::as_select()).first(conn).await?
            }
        };
        if seen_long_ago {
            diesel::update(devices::table.find(device.id))
                .set(devices::last_seen_at.eq(ts))
                .execute(conn)
                .await?;
        }
        Ok::<_, AppError>((session, made.is_some()))
    })?;
    if opened {
        // The admin feed hears of a new session in a transaction of its
        // own, so reused sessions (most calls) cost no transaction at all.
        db_tx!(db, |conn, outbox| {
            let rows = crate::session_rows!(conn, vec![session.id]);
            outbox.sessions(feed::session_events(SessionEventKind::Opened, rows, ts));
            Ok::<_, AppError>(())
        })?;
    }
    Ok(session)
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
