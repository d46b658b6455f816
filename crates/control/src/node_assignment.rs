//! Node assignment: pick a node for a device (requested region, active,
//! healthy, under capacity, least loaded relative to capacity, sticky) and
//! open or reuse its session.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::device_validation::{self, Reason};
use crate::db::Db;
use crate::db::models::{Device, GatewayNode, OutlineNode, Region, Session, new_id, now};
use crate::db::schema::{devices, outline_nodes, regions, sessions};
use crate::error::{AppError, AppResult};
use crate::{db_run, db_tx};

/// A node stops being healthy when it misses this many heartbeat intervals.
pub const MISSED_HEARTBEATS: i64 = 3;
/// Interval at which nodes and gateways are asked to heartbeat, in seconds.
pub const HEARTBEAT_INTERVAL_SECS: i64 = 5;

/// How long a heartbeat keeps a node healthy.
pub fn lease() -> chrono::Duration {
    chrono::Duration::seconds(HEARTBEAT_INTERVAL_SECS * MISSED_HEARTBEATS)
}

/// The region's active nodes, their open-session counts, and the device's
/// open sessions.
type Snapshot = (Vec<OutlineNode>, Vec<(Option<String>, i64)>, Vec<Session>);

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

/// Whether a node can take new sessions now.
fn eligible(n: &OutlineNode, at: chrono::NaiveDateTime) -> bool {
    n.status == "active"
        && n.health != "down"
        && n.last_heartbeat_at.is_none_or(|t| t > at - lease())
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
    let region_id: Option<String> = match region {
        Some(code) => {
            let code = code.trim().to_lowercase();
            let r: Option<String> = db_run!(db, |conn| regions::table
                .filter(regions::code.eq(&code))
                .select(regions::id)
                .first(conn)
                .await
                .optional()?);
            Some(r.ok_or(AppError::NotFound("region"))?)
        }
        // A gateway serves its own region's pool by default.
        None => gateway.map(|g| g.region_id.clone()),
    };
    let gateway_id = gateway.map(|g| g.id.clone());
    let ts = now();
    let (nodes, open_counts, current): Snapshot = db_run!(db, |conn| {
        let mut q = outline_nodes::table
            .filter(outline_nodes::status.eq("active"))
            .into_boxed();
        if let Some(r) = &region_id {
            q = q.filter(outline_nodes::region_id.eq(r.clone()));
        }
        let nodes: Vec<OutlineNode> = q.select(OutlineNode::as_select()).load(conn).await?;
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let counts: Vec<(Option<String>, i64)> = sessions::table
            .filter(sessions::ended_at.is_null())
            .filter(sessions::outline_node_id.eq_any(&ids))
            .group_by(sessions::outline_node_id)
            .select((sessions::outline_node_id, diesel::dsl::count_star()))
            .load(conn)
            .await?;
        let current: Vec<Session> = sessions::table
            .filter(sessions::device_id.eq(&device.id))
            .filter(sessions::ended_at.is_null())
            .select(Session::as_select())
            .load(conn)
            .await?;
        (nodes, counts, current)
    });
    let open: HashMap<String, i64> = open_counts
        .into_iter()
        .filter_map(|(id, n)| id.map(|id| (id, n)))
        .collect();
    let healthy: Vec<&OutlineNode> = nodes.iter().filter(|n| eligible(n, ts)).collect();
    // Sticky: an open session on a still-healthy node of the region, through this gateway.
    let sticky = current.iter().find_map(|s| {
        let node = healthy
            .iter()
            .find(|n| Some(&n.id) == s.outline_node_id.as_ref())?;
        (s.gateway_node_id == gateway_id).then(|| ((*node).clone(), Some(s.clone())))
    });
    let (node, existing) = match sticky {
        Some(found) => found,
        None => {
            let best = healthy
                .iter()
                .filter(|n| open.get(&n.id).copied().unwrap_or(0) < i64::from(n.capacity))
                .min_by(|a, b| {
                    let ratio = |n: &OutlineNode| {
                        open.get(&n.id).copied().unwrap_or(0) as f64 / f64::from(n.capacity.max(1))
                    };
                    // Pool-key nodes first: clients holding the region key work on any of them.
                    (!a.uses_pool_key, ratio(a))
                        .partial_cmp(&(!b.uses_pool_key, ratio(b)))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .ok_or_else(|| {
                    AppError::Unavailable(if nodes.is_empty() {
                        "no active node in the region".into()
                    } else if healthy.is_empty() {
                        "no healthy node in the region".into()
                    } else {
                        "every node of the region is at capacity".into()
                    })
                })?;
            ((*best).clone(), None)
        }
    };
    let session = match existing {
        Some(s) => s,
        None => open_session(db, &device.id, &node.id, gateway_id.as_deref()).await?,
    };
    let region: Region = db_run!(db, |conn| regions::table
        .find(&node.region_id)
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
    device_id: &str,
    node_id: &str,
    gateway_id: Option<&str>,
) -> AppResult<Session> {
    db_tx!(db, |conn| {
        let ts = now();
        let fresh = Session {
            id: new_id(),
            device_id: device_id.to_owned(),
            outline_node_id: Some(node_id.to_owned()),
            gateway_node_id: gateway_id.map(str::to_owned),
            started_at: ts,
            last_activity_at: ts,
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            last_seq: 0,
            end_reason: None,
        };
        diesel::insert_into(sessions::table)
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
            Some(g) => q.filter(sessions::gateway_node_id.eq(g.to_owned())),
            None => q.filter(sessions::gateway_node_id.is_null()),
        };
        let s: Session = q.select(Session::as_select()).first(conn).await?;
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
    verdict: device_validation::Verdict,
    gateway: Option<&GatewayNode>,
    region: Option<&str>,
) -> AppResult<Assignment> {
    match (verdict.reason, verdict.device) {
        (None, Some(device)) => assign(db, &device, gateway, region).await,
        (Some(reason), _) => Err(AppError::DeviceRefused(reason)),
        (None, None) => Err(AppError::DeviceRefused(Reason::DeviceUnknown)),
    }
}
