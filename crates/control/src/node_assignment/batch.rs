//! Assigning a batch of devices: one read of the active nodes and one of
//! the devices' open sessions (pipelined on PostgreSQL: one round trip),
//! then, when there is anything to write, one transaction: the
//! `last_seen_at` refresh, one multi-row INSERT of the new sessions and
//! their OPENED feed events (built from what the batch holds, not read
//! back), all committed together (one commit, one WAL flush for the whole
//! batch; on PostgreSQL the transaction is a single statement, so one
//! round trip). A caller that gets a session id back finds it committed,
//! and the feed hears of a session exactly when it exists.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::choice::{self, Choice};
use super::insert::{self, InsertSessions};
use super::{Assignment, LAST_SEEN_STEP};
use crate::db::models::{OutlineNode, Region, Session, now};
use crate::db::schema::{devices, outline_nodes, regions, sessions};
use crate::db::{Db, DbPool};
use crate::error::{AppError, AppResult};
use crate::feed::{self, SessionEventKind, SessionRow};
use crate::ids::{DeviceId, GatewayNodeId, RegionId, SessionId, UserId};
use crate::status::NodeStatus;
use crate::{db_run, db_tx};

/// One device to assign: who, through which gateway, in which region.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The device (it passed validation).
    pub device_id: DeviceId,
    /// Its owner, and the owner's email as read with the validation (the
    /// feed event of a new session names both; no second read).
    pub user_id: UserId,
    /// See `user_id`.
    pub user_email: String,
    /// When it was last seen, as read with its validation.
    pub last_seen_at: Option<NaiveDateTime>,
    /// The calling gateway (sessions are per device, node and gateway).
    pub gateway: Option<GatewayNodeId>,
    /// The region to pick from (`None`: any region).
    pub region: Option<RegionId>,
    /// The random draw of a fresh choice, in `[0, 1)`.
    pub spin: f64,
    /// The generation of the access token it was validated with (stored
    /// on a new session, so a replaced token's session is closed).
    pub token_generation: i64,
}

/// An open session's lane: the device, the gateway, and the device's open
/// session through that gateway the session was opened beside (the newest
/// one the batch saw, on a node that no longer takes new tunnels), if any.
/// Through a gateway at most one session is open per lane (the unique
/// index `sessions_one_open`): two batches that both saw no open session
/// of a device (or the same one on a node gone) open one session between
/// them, even when they chose different nodes.
type Lane = (DeviceId, Option<GatewayNodeId>, Option<SessionId>);

fn lane(s: &Session) -> Lane {
    (s.device_id, s.gateway_node_id, s.supersedes)
}

/// What one ask comes to before the writes: a session that is already
/// open, a new one to insert (by its lane: another batch may open it
/// first, on another node), or no node at all.
enum Plan {
    Sticky(Session, usize),
    Fresh(Lane),
    NoNode(String),
}

/// Assigns every ask, writing (when there is anything to write) in one
/// transaction; the answers are in the order of `asks`. An error of a read
/// or of the transaction fails the whole batch.
pub async fn assign_all(db: &Db, asks: &[Ask]) -> AppResult<Vec<AppResult<Assignment>>> {
    let ts = now();
    let any_region = asks.iter().any(|a| a.region.is_none());
    let mut region_ids: Vec<RegionId> = asks.iter().filter_map(|a| a.region).collect();
    region_ids.sort();
    region_ids.dedup();
    let mut device_ids: Vec<DeviceId> = asks.iter().map(|a| a.device_id).collect();
    device_ids.sort();
    device_ids.dedup();
    // Devices whose `last_seen_at` is stale (a write per call would be a
    // write per tunnel burst), in id order like every lock taken here.
    let mut stale: Vec<DeviceId> = asks
        .iter()
        .filter(|a| a.last_seen_at.is_none_or(|t| t < ts - LAST_SEEN_STEP))
        .map(|a| a.device_id)
        .collect();
    stale.sort();
    stale.dedup();
    // The reads come first, outside a transaction (in one, each statement
    // would read what was committed when it began all the same): a batch
    // whose devices all have their session open and were seen lately
    // writes nothing, and then needs no BEGIN and COMMIT.
    let (nodes, current) = read(db, any_region, &region_ids, &device_ids).await?;
    let (plans, fresh) = plan(asks, &nodes, current, ts);
    let open = if fresh.is_empty() && stale.is_empty() {
        HashMap::new()
    } else {
        write(db, asks, &nodes, fresh, &stale, ts).await?
    };
    Ok(plans
        .into_iter()
        .map(|p| match p {
            Plan::Sticky(session, at) => Ok(assignment(session, &nodes[at])),
            Plan::Fresh(l) => {
                let placed = open.get(&l).and_then(|s| {
                    let at = nodes
                        .iter()
                        .position(|(n, _)| Some(n.id) == s.outline_node_id)?;
                    Some(assignment(s.clone(), &nodes[at]))
                });
                // Opened by another batch on a node this one did not read
                // as active, or opened and ended again before our insert
                // saw it.
                placed.ok_or_else(|| {
                    AppError::Conflict(
                        "the session changed while it was assigned; try again".into(),
                    )
                })
            }
            Plan::NoNode(m) => Err(AppError::NoNode(m)),
        })
        .collect())
}

/// The active nodes (with their regions) of `region_ids`, or of every
/// region.
macro_rules! active_nodes {
    ($any_region:expr, $region_ids:expr, $conn:expr) => {{
        let active = outline_nodes::table
            .inner_join(regions::table)
            .filter(outline_nodes::status.eq(NodeStatus::Active))
            .select((OutlineNode::as_select(), Region::as_select()))
            .order(outline_nodes::id);
        // Two plain queries rather than one boxed: PostgreSQL keeps each
        // prepared.
        if $any_region {
            active.load($conn).await
        } else {
            active
                .filter(outline_nodes::region_id.eq_any($region_ids))
                .load($conn)
                .await
        }
    }};
}

/// The open sessions of `device_ids`.
macro_rules! open_sessions_of {
    ($device_ids:expr) => {
        sessions::table
            .filter(sessions::device_id.eq_any($device_ids))
            .filter(sessions::ended_at.is_null())
            .select(Session::as_select())
    };
}

/// A batch's reads: the active nodes of its regions (of all, when an ask
/// names none) and its devices' open sessions; on PostgreSQL both sent at
/// once on one connection (pipelined: one round trip).
async fn read(
    db: &Db,
    any_region: bool,
    region_ids: &[RegionId],
    device_ids: &[DeviceId],
) -> AppResult<(Vec<(OutlineNode, Region)>, Vec<Session>)> {
    match &db.pool {
        DbPool::Pg(pool) => {
            let conn = crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
            let (mut a, mut b) = (&**conn, &**conn);
            let nodes = async { active_nodes!(any_region, region_ids, &mut a) };
            let current = open_sessions_of!(device_ids).load(&mut b);
            Ok(futures_util::try_join!(nodes, current)?)
        }
        DbPool::Sqlite(pool) => {
            let mut conn = crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
            let nodes = active_nodes!(any_region, region_ids, &mut **conn)?;
            let current = open_sessions_of!(device_ids).load(&mut **conn).await?;
            Ok((nodes, current))
        }
    }
}

/// The writes of a batch, in one transaction: the `last_seen_at` refresh
/// of the `stale` devices, the `fresh` sessions (a lane another transaction
/// opened first is taken from it) and their OPENED feed events. On
/// PostgreSQL the transaction is one statement
/// ([`insert::open_sessions`]). Returns the open session of every fresh
/// lane.
async fn write(
    db: &Db,
    asks: &[Ask],
    nodes: &[(OutlineNode, Region)],
    fresh: HashMap<Lane, Session>,
    stale: &[DeviceId],
    ts: NaiveDateTime,
) -> AppResult<HashMap<Lane, Session>> {
    let mut rows: Vec<Session> = fresh.into_values().collect();
    // Inserted in device order: two batches never wait on each other in
    // opposite orders.
    rows.sort_by_key(|r| (r.device_id, r.id));
    let made: Vec<Session> = match &db.pool {
        DbPool::Pg(pool) => {
            let events: HashMap<SessionId, String> =
                feed::session_events(SessionEventKind::Opened, feed_rows(asks, nodes, &rows), ts)
                    .into_iter()
                    .filter_map(|e| {
                        Some((
                            SessionId::from(e.session_id),
                            serde_json::to_string(&e).ok()?,
                        ))
                    })
                    .collect();
            let mut conn = crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
            insert::open_sessions(&mut conn, &rows, stale, ts, &events).await?
        }
        DbPool::Sqlite(_) => db_tx!(db, |conn, outbox| {
            // Before the insert: the insert's foreign-key check then finds
            // the device rows already locked by this transaction.
            if !stale.is_empty() {
                diesel::update(devices::table.filter(devices::id.eq_any(stale)))
                    .set(devices::last_seen_at.eq(ts))
                    .execute(conn)
                    .await?;
            }
            let made: Vec<Session> = if rows.is_empty() {
                Vec::new()
            } else {
                conn.insert_sessions(&rows).await?
            };
            if !made.is_empty() {
                outbox.sessions(feed::session_events(
                    SessionEventKind::Opened,
                    feed_rows(asks, nodes, &made),
                    ts,
                ));
            }
            Ok::<_, AppError>(made)
        })?,
    };
    let mut open: HashMap<Lane, Session> = made.iter().map(|s| (lane(s), s.clone())).collect();
    // A concurrent transaction opened some of them first (on the same node
    // or another): use its.
    let lost: Vec<DeviceId> = rows
        .iter()
        .filter(|r| !open.contains_key(&lane(r)))
        .map(|r| r.device_id)
        .collect();
    if !lost.is_empty() {
        let theirs: Vec<Session> = db_run!(db, |conn| sessions::table
            .filter(sessions::device_id.eq_any(&lost))
            .filter(sessions::ended_at.is_null())
            .select(Session::as_select())
            .load(conn)
            .await?);
        for s in theirs {
            open.entry(lane(&s)).or_insert(s);
        }
    }
    Ok(open)
}

/// The feed rows of the sessions a batch opened, from what the batch holds:
/// each session's ask (its owner) and node (its region), as
/// [`session_rows!`](crate::session_rows) would read them back.
fn feed_rows(asks: &[Ask], nodes: &[(OutlineNode, Region)], made: &[Session]) -> Vec<SessionRow> {
    let owners: HashMap<DeviceId, &Ask> = asks.iter().map(|a| (a.device_id, a)).collect();
    made.iter()
        .filter_map(|s| {
            let ask = owners.get(&s.device_id)?;
            let region = nodes
                .iter()
                .find(|(n, _)| Some(n.id) == s.outline_node_id)
                .map(|(_, r)| r.code.clone());
            Some((
                s.id,
                s.device_id,
                ask.user_id,
                ask.user_email.clone(),
                region,
                s.outline_node_id,
                s.gateway_node_id,
                None,
                0,
                0,
            ))
        })
        .collect()
}

fn assignment(session: Session, (node, region): &(OutlineNode, Region)) -> Assignment {
    Assignment {
        session,
        node: node.clone(),
        region: region.clone(),
    }
}

/// Decides every ask without I/O: the sessions to insert (one per lane),
/// and per ask its plan. A device asked twice in the batch sticks to the
/// session its first ask opens, as it would across two calls.
fn plan(
    asks: &[Ask],
    nodes: &[(OutlineNode, Region)],
    current: Vec<Session>,
    ts: NaiveDateTime,
) -> (Vec<Plan>, HashMap<Lane, Session>) {
    let mut by_device: HashMap<DeviceId, Vec<Session>> = HashMap::new();
    for s in current {
        by_device.entry(s.device_id).or_default().push(s);
    }
    let mut fresh: HashMap<Lane, Session> = HashMap::new();
    let mut plans = Vec::with_capacity(asks.len());
    for ask in asks {
        let (candidates, places): (Vec<OutlineNode>, Vec<usize>) = nodes
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| ask.region.is_none_or(|r| n.region_id == r))
            .map(|(i, (n, _))| (n.clone(), i))
            .unzip();
        let mine = by_device.entry(ask.device_id).or_default();
        let at = |node: &OutlineNode| {
            let i = candidates.iter().position(|n| n.id == node.id).unwrap_or(0);
            places[i]
        };
        let p = match choice::choose(&candidates, mine, ask.gateway, ts, ask.spin) {
            Ok(Choice::Sticky { node, session }) => {
                let l = lane(session);
                if fresh.get(&l).is_some_and(|f| f.id == session.id) {
                    Plan::Fresh(l)
                } else {
                    Plan::Sticky(session.clone(), at(node))
                }
            }
            Ok(Choice::Fresh(node)) => {
                // Every open session of the device through this gateway is
                // on a node that takes no new tunnels (else it would have
                // been kept): the new one goes beside the newest. Batches
                // that read the same sessions name the same one.
                let supersedes = mine
                    .iter()
                    .filter(|s| s.gateway_node_id == ask.gateway)
                    .map(|s| s.id)
                    .max();
                let s = Session {
                    id: SessionId::ordered(),
                    device_id: ask.device_id,
                    outline_node_id: Some(node.id),
                    gateway_node_id: ask.gateway,
                    started_at: ts,
                    last_activity_at: ts,
                    ended_at: None,
                    bytes_up: 0,
                    bytes_down: 0,
                    last_seq: 0,
                    end_reason: None,
                    token_generation: ask.token_generation,
                    supersedes,
                };
                let l = lane(&s);
                fresh.insert(l, s.clone());
                mine.push(s);
                Plan::Fresh(l)
            }
            Err(none) => Plan::NoNode(none.message().into()),
        };
        plans.push(p);
    }
    (plans, fresh)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
