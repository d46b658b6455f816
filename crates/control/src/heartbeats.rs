//! Heartbeats from gateways and Outline nodes, and the sweeper that marks
//! nodes down when their lease runs out and (less often) ends idle
//! sessions. Every health change publishes its node event in the
//! transaction that makes it.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::access::closing;
use super::node_assignment::lease;
use super::nodes::{gateway_event, outline_event};
use crate::db::models::{GatewayNode, OutlineNode, now};
use crate::db::schema::{gateway_nodes, outline_nodes, regions, sessions};
use crate::db::{Db, Statement};
use crate::db_tx;
use crate::error::{AppError, AppResult};
use crate::events::NodeEventKind;
use crate::ids::{GatewayNodeId, OutlineNodeId, SessionId};
use crate::status::{EndReason, Health};
use httvps_wire::CloseOrder;
use httvps_wire::heartbeat::{GatewayBeat, OutlineBeat};

/// A session with no tunnel and no report for this long is ended as idle.
pub const SESSION_IDLE: chrono::Duration = chrono::Duration::minutes(10);

fn check_version(v: &Option<String>) -> AppResult<Option<String>> {
    v.as_deref()
        .map(|v| super::validate::text("version", v, 1, 64))
        .transpose()
}

/// Parses the ids of a heartbeat (all or nothing).
fn parse_ids<T: std::str::FromStr>(ids: &[String]) -> AppResult<Vec<T>> {
    ids.iter()
        .map(|id| {
            id.parse()
                .map_err(|_| AppError::bad("ids must be valid ids"))
        })
        .collect()
}

/// Marks a gateway's open sessions (`$2`, a JSON array of ids; `$3` the
/// gateway) active at `$1`. On PostgreSQL a session whose row another
/// transaction holds is skipped, not waited for: that one is growing it
/// (which marks it active too) or ending it, and a heartbeat that waited
/// on sessions, holding its gateway's row, could close a cycle with it
/// (a node's deletion, an applier's pass). Locked in id order.
const TOUCH_SESSIONS: Statement = Statement {
    pg: "UPDATE sessions SET last_activity_at = $1 WHERE id IN ( \
           SELECT id FROM sessions \
           WHERE id = ANY (ARRAY(SELECT json_array_elements_text($2::json))) \
             AND gateway_node_id = $3 AND ended_at IS NULL \
           ORDER BY id FOR NO KEY UPDATE SKIP LOCKED)",
    sqlite: "UPDATE sessions SET last_activity_at = ?1 \
             WHERE id IN (SELECT value FROM json_each(?2)) \
               AND gateway_node_id = ?3 AND ended_at IS NULL",
};

/// What a gateway's heartbeat says of nodes, in id order: each node once
/// (the heartbeat names none in both lists), up when it is named
/// reachable, down when unreachable.
fn judged(
    unreachable: &[OutlineNodeId],
    reachable: &[OutlineNodeId],
) -> Vec<(OutlineNodeId, Health, NodeEventKind)> {
    let mut all: std::collections::BTreeMap<OutlineNodeId, (Health, NodeEventKind)> =
        std::collections::BTreeMap::new();
    for id in unreachable {
        all.insert(*id, (Health::Down, NodeEventKind::Down));
    }
    for id in reachable {
        all.insert(*id, (Health::Up, NodeEventKind::Up));
    }
    all.into_iter().map(|(id, (h, k))| (id, h, k)).collect()
}

/// Records a gateway's heartbeat; returns the sessions it must close.
pub async fn gateway(db: &Db, g: &GatewayNode, beat: &GatewayBeat) -> AppResult<Vec<CloseOrder>> {
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
    let open: Vec<SessionId> = parse_ids(&beat.open_sessions)?;
    let unreachable: Vec<OutlineNodeId> = parse_ids(&beat.unreachable_nodes)?;
    let reachable: Vec<OutlineNodeId> = parse_ids(&beat.reachable_nodes)?;
    if reachable.iter().any(|id| unreachable.contains(id)) {
        return Err(AppError::bad(
            "a node is named both reachable and unreachable",
        ));
    }
    let was_up = g.health == Health::Up;
    db_tx!(db, |conn, outbox| {
        let ts = now();
        let updated = diesel::update(gateway_nodes::table.find(g.id))
            .set((
                gateway_nodes::health.eq(Health::Up),
                gateway_nodes::last_heartbeat_at.eq(ts),
                gateway_nodes::open_tunnels.eq(beat.open_tunnels),
                gateway_nodes::version.eq(&version),
                gateway_nodes::updated_at.eq(ts),
            ))
            .returning(GatewayNode::as_returning())
            .get_result(conn)
            .await
            .optional()?
            // Deleted since its token was checked: the token is gone too.
            // First, before the checks below: a deletion sets its
            // sessions' gateway to NULL, which they would take for
            // another gateway's sessions (a 403 where the answer is 401).
            // The row stays held, so no deletion commits meanwhile.
            .ok_or(AppError::Unauthenticated)?;
        // A gateway speaks only for the nodes of its own region: one foreign
        // node refuses the whole heartbeat (its transaction writes nothing).
        let named: Vec<OutlineNodeId> = unreachable.iter().chain(&reachable).copied().collect();
        if !named.is_empty() {
            let foreign: i64 = outline_nodes::table
                .filter(outline_nodes::id.eq_any(&named))
                .filter(outline_nodes::region_id.ne(g.region_id))
                .count()
                .get_result(conn)
                .await?;
            if foreign > 0 {
                return Err(AppError::Forbidden);
            }
        }
        // And only for its own sessions (one ended or deleted since is not
        // foreign: it is simply not refreshed).
        if !open.is_empty() {
            let foreign: i64 = sessions::table
                .filter(sessions::id.eq_any(&open))
                .filter(
                    sessions::gateway_node_id
                        .ne(g.id)
                        .or(sessions::gateway_node_id.is_null()),
                )
                .count()
                .get_result(conn)
                .await?;
            if foreign > 0 {
                return Err(AppError::Forbidden);
            }
        }
        if !open.is_empty() {
            TOUCH_SESSIONS
                .prepared(conn)
                .timestamp(ts)
                .json(&open)?
                .text(g.id.to_string())
                .execute(conn)
                .await?;
        }
        if !was_up {
            let code: String = regions::table
                .find(updated.region_id)
                .select(regions::code)
                .first(conn)
                .await?;
            outbox.node(gateway_event(&updated, &code, NodeEventKind::Up));
        }
        // Nodes judged by what the gateway saw: stock nodes send no
        // heartbeat. One row at a time in id order, as every gateway does:
        // two gateways that see two nodes the other way round would
        // otherwise each lock one and wait for the other's (a deadlock).
        for (id, health, kind) in judged(&unreachable, &reachable) {
            // When it was last found unreachable: now, or never since a
            // gateway reached it (see [`UNREACHABLE_HOLD`]).
            let unreachable_at = (health == Health::Down).then_some(ts);
            let changed: Option<OutlineNode> = diesel::update(outline_nodes::table.find(id))
                .filter(outline_nodes::health.ne(health))
                .set((
                    outline_nodes::health.eq(health),
                    outline_nodes::unreachable_at.eq(unreachable_at),
                    outline_nodes::updated_at.eq(ts),
                ))
                .returning(OutlineNode::as_returning())
                .get_result(conn)
                .await
                .optional()?;
            // Already down: the report's time moves on. (An up node has
            // no report to clear: whatever brings a node up clears it.)
            if changed.is_none() && health == Health::Down {
                diesel::update(outline_nodes::table.find(id))
                    .set(outline_nodes::unreachable_at.eq(ts))
                    .execute(conn)
                    .await?;
            }
            if let Some(n) = changed {
                let code: String = regions::table
                    .find(n.region_id)
                    .select(regions::code)
                    .first(conn)
                    .await?;
                outbox.node(outline_event(&n, &code, kind));
            }
        }
        Ok::<_, AppError>(())
    })?;
    closing::close_orders(db, g.id, &open).await
}

/// How long a gateway's report that it could not reach a node keeps the
/// node down whatever the node's own heartbeats say: a node that runs but
/// that no gateway reaches (a wrong registered port, a firewall) is down
/// for the tunnels, and shows so. A gateway that reaches it again, or no
/// report for this long, lets its heartbeats bring it up.
pub const UNREACHABLE_HOLD: chrono::Duration = chrono::Duration::seconds(60);

/// Records an Outline node's heartbeat: it is up, unless a gateway
/// reported it unreachable within [`UNREACHABLE_HOLD`].
pub async fn outline(db: &Db, n: &OutlineNode, beat: &OutlineBeat) -> AppResult<()> {
    let version = check_version(&beat.version)?;
    if beat.load < 0 || beat.bytes_in < 0 || beat.bytes_out < 0 {
        return Err(AppError::bad("load and byte counters must not be negative"));
    }
    db_tx!(db, |conn, outbox| {
        let ts = now();
        let unreachable_at: Option<chrono::NaiveDateTime> = outline_nodes::table
            .find(n.id)
            .select(outline_nodes::unreachable_at)
            .first(conn)
            .await
            .optional()?
            .flatten();
        let held_down = unreachable_at.is_some_and(|at| at > ts - UNREACHABLE_HOLD);
        let health = if held_down { n.health } else { Health::Up };
        let kind = if health == Health::Up && n.health != Health::Up {
            Some(NodeEventKind::Up)
        } else if n.load != beat.load {
            Some(NodeEventKind::Load)
        } else {
            None
        };
        let updated = diesel::update(outline_nodes::table.find(n.id))
            .set((
                outline_nodes::health.eq(health),
                // Kept while it holds the node down, cleared once it is up.
                outline_nodes::unreachable_at.eq(unreachable_at.filter(|_| held_down)),
                outline_nodes::last_heartbeat_at.eq(ts),
                outline_nodes::load.eq(beat.load),
                outline_nodes::bytes_in.eq(beat.bytes_in),
                outline_nodes::bytes_out.eq(beat.bytes_out),
                outline_nodes::version.eq(&version),
                outline_nodes::updated_at.eq(ts),
            ))
            .returning(OutlineNode::as_returning())
            .get_result(conn)
            .await
            .optional()?
            // Deleted since its token was checked: the token is gone too.
            .ok_or(AppError::Unauthenticated)?;
        if let Some(kind) = kind {
            let code: String = regions::table
                .find(updated.region_id)
                .select(regions::code)
                .first(conn)
                .await?;
            outbox.node(outline_event(&updated, &code, kind));
        }
        Ok::<_, AppError>(())
    })
}

/// One full sweep: [`sweep_leases`], then [`end_idle_sessions`].
pub async fn sweep(db: &Db) -> AppResult<()> {
    sweep_leases(db).await?;
    end_idle_sessions(db).await?;
    Ok(())
}

/// The rows of `$table` (model `$model`, ids `$id`) that are up with a
/// heartbeat older than `$expired`, marked down at `$ts` on `$conn` one
/// row at a time in id order; expands to the rows changed.
macro_rules! lapsed {
    ($conn:expr, $table:ident, $model:ty, $id:ty, $expired:expr, $ts:expr) => {{
        let ids: Vec<$id> = $table::table
            .filter($table::health.eq(Health::Up))
            .filter($table::last_heartbeat_at.lt($expired))
            .order($table::id)
            .select($table::id)
            .load($conn)
            .await?;
        let mut down: Vec<$model> = Vec::with_capacity(ids.len());
        for id in ids {
            let row: Option<$model> = diesel::update($table::table.find(id))
                .filter($table::health.eq(Health::Up))
                .filter($table::last_heartbeat_at.lt($expired))
                .set(($table::health.eq(Health::Down), $table::updated_at.eq($ts)))
                .returning(<$model>::as_returning())
                .get_result($conn)
                .await
                .optional()?;
            down.extend(row);
        }
        down
    }};
}

/// Nodes and gateways whose lease ran out go down (each change published
/// once, even with several replicas sweeping).
pub async fn sweep_leases(db: &Db) -> AppResult<()> {
    db_tx!(db, |conn, outbox| {
        let ts = now();
        let expired = ts - lease();
        // Row by row, gateways then nodes, each in id order: the order a
        // gateway's heartbeat takes them in (its own row, then the nodes
        // it judges), so the two never wait on each other.
        let gateways = lapsed!(conn, gateway_nodes, GatewayNode, GatewayNodeId, expired, ts);
        let nodes = lapsed!(conn, outline_nodes, OutlineNode, OutlineNodeId, expired, ts);
        for n in nodes {
            let code: String = regions::table
                .find(n.region_id)
                .select(regions::code)
                .first(conn)
                .await?;
            outbox.node(outline_event(&n, &code, NodeEventKind::Down));
        }
        for g in gateways {
            let code: String = regions::table
                .find(g.region_id)
                .select(regions::code)
                .first(conn)
                .await?;
            outbox.node(gateway_event(&g, &code, NodeEventKind::Down));
        }
        Ok::<_, AppError>(())
    })
}

/// Ends the sessions with no tunnel and no report for [`SESSION_IDLE`]
/// (their CLOSED events in the same transaction); returns how many. It
/// reads the whole sessions table, so it runs every [`IDLE_SWEEP_EVERY`],
/// not with every lease sweep.
pub async fn end_idle_sessions(db: &Db) -> AppResult<usize> {
    db_tx!(db, |conn, outbox| {
        let ts = now();
        let idle: Vec<SessionId> = diesel::update(sessions::table)
            .filter(sessions::ended_at.is_null())
            .filter(sessions::last_activity_at.lt(ts - SESSION_IDLE))
            .set((
                sessions::ended_at.eq(ts),
                sessions::end_reason.eq(EndReason::Idle),
            ))
            .returning(sessions::id)
            .get_results(conn)
            .await?;
        if !idle.is_empty() {
            let rows = crate::session_rows!(conn, &idle);
            outbox.sessions(crate::feed::session_events(
                crate::feed::SessionEventKind::Closed,
                rows,
                ts,
            ));
        }
        Ok::<_, AppError>(idle.len())
    })
}

/// How often idle sessions are looked for: a session ends between
/// [`SESSION_IDLE`] and this much later. The search reads the whole
/// sessions table (`last_activity_at` changes with every report, so an
/// index on it would cost every report its in-place update): once a
/// minute, not with every 2 s lease sweep.
pub const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs [`sweep_leases`] every `every` and [`end_idle_sessions`] every
/// [`IDLE_SWEEP_EVERY`] until the task is dropped. Each judges only what
/// this process watched for a whole period with the database reachable:
/// leases from a lease after it started or its database came back, idle
/// sessions from [`SESSION_IDLE`] after. A heartbeat or a report that
/// came while the process was stopped or its database away could not be
/// written, so its row looks older than it is: the first sweep after an
/// outage of more than 10 minutes ended every session as idle, tunnels
/// running through it included, and the first after any outage marked
/// healthy nodes down (a one-node region refused new subscribers). While
/// it may not judge, a sweep only looks whether the database answers.
pub fn spawn_sweeper(db: Db, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_due = tokio::time::Instant::now();
        // Since when the database has answered every sweep (None: the last
        // one failed).
        let mut watching = Some(tokio::time::Instant::now());
        let watched = |since: Option<tokio::time::Instant>, period: chrono::Duration| {
            since.is_some_and(|s| s.elapsed() >= period.to_std().unwrap_or(Duration::MAX))
        };
        loop {
            tick.tick().await;
            let swept = if watched(watching, lease()) {
                sweep_leases(&db).await
            } else if db.ping(every).await {
                Ok(())
            } else {
                Err(AppError::Unavailable("the database did not answer".into()))
            };
            match swept {
                Ok(()) => {
                    watching.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweep failed");
                    // A transaction undone for another's sake is no outage.
                    if !e.is_race() {
                        watching = None;
                    }
                    continue;
                }
            }
            if watched(watching, SESSION_IDLE) && tokio::time::Instant::now() >= idle_due {
                idle_due = tokio::time::Instant::now() + IDLE_SWEEP_EVERY;
                match end_idle_sessions(&db).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(sessions = n, "idle sessions ended"),
                    Err(e) => tracing::warn!(error = %e, "idle session sweep failed"),
                }
            }
        }
    })
}
