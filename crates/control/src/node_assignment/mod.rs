//! Node assignment: pick a node for a device (requested region, active,
//! healthy, under capacity by the load its heartbeats report, weighted by
//! room, sticky; the decision is [`choice::choose`], without I/O) and open
//! or reuse its session. The cost of a call does not grow with the number
//! of sessions: it reads the region's nodes and the device's open sessions.
//! Calls that arrive together are assigned in one transaction
//! ([`opener`], [`batch`]): one commit for a burst of new sessions, their
//! feed events and `last_seen_at` refreshes.

pub mod batch;
pub mod choice;
mod insert;
pub mod opener;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use httvps_wire::Reason;

use crate::access::Verdict;
use crate::db::Db;
use crate::db::models::{Device, GatewayNode, OutlineNode, Region, Session};
use crate::db::schema::{devices, outline_nodes, regions, sessions, users};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::{DeviceId, RegionId};
use crate::status::{EndReason, NodeStatus};
pub use batch::Ask;
pub use choice::{Choice, HEARTBEAT_INTERVAL_SECS, MISSED_HEARTBEATS, lease};
pub use opener::Opener;

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

/// Assigns a node to a device that passed validation (`owner_email`, read
/// with it, names the owner in the feed event of a new session). `gateway`
/// is the calling gateway (sessions are per device, node and gateway); `region` a
/// requested region code (for a gateway, only its own: another is
/// forbidden); without one, the gateway's region, or for a
/// device asking itself, [`device_region`] (`entry_url`: the configured
/// gateway URL, which decides the default region). The session is opened
/// (or found) in a batch of concurrent calls through `opener` and
/// committed when this returns.
pub async fn assign(
    db: &Db,
    opener: &Opener,
    device: &Device,
    owner_email: String,
    gateway: Option<&GatewayNode>,
    region: Option<&str>,
    entry_url: Option<&str>,
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
            let r = r.ok_or(AppError::NotFound("region"))?;
            // A gateway reaches only its own region's nodes: it is never
            // told another region's node or key.
            if gateway.is_some_and(|g| g.region_id != r) {
                return Err(AppError::Forbidden);
            }
            Some(r)
        }
        // A gateway serves its own region's pool by default.
        None => match gateway {
            Some(g) => Some(g.region_id),
            None => device_region(db, device.id, entry_url).await?,
        },
    };
    let generation = crate::auth::token_generation(device.token_hash.expose());
    // Built again only on the rare second try below (the hot path copies
    // nothing).
    let ask = |user_email: String| Ask {
        device_id: device.id,
        user_id: device.user_id,
        user_email,
        last_seen_at: device.last_seen_at,
        gateway: gateway.map(|g| g.id),
        region: region_id,
        spin: rand::random(),
        token_generation: generation,
    };
    let assigned = opener.assign(db, ask(owner_email)).await?;
    let theirs = assigned.session.token_generation;
    if theirs == 0 || theirs == generation {
        return Ok(assigned);
    }
    // The device's open session was opened with another access token than
    // the one this call was validated with: one of the two was replaced
    // while the other was assigned. Rare, so only now is the device read
    // again.
    let current: Option<(String, String)> = db_run!(db, |conn| devices::table
        .inner_join(users::table)
        .filter(devices::id.eq(device.id))
        .select((devices::token_hash, users::email))
        .first(conn)
        .await
        .optional()?);
    let Some((hash, owner_email)) = current else {
        return Err(AppError::DeviceRefused(Reason::DeviceUnknown));
    };
    if crate::auth::token_generation(&hash) != generation {
        // This call's token is the replaced one: it admits nothing.
        return Err(AppError::DeviceRefused(Reason::DeviceUnknown));
    }
    // The session's is: it ends (its gateway closes its tunnels) and this
    // call gets a session of its own.
    crate::access::closing::end_sessions(db, &[(assigned.session.id, EndReason::DeviceRevoked)])
        .await?;
    opener.assign(db, ask(owner_email)).await
}

/// The region of a device that asks for a node itself without naming one
/// (our client without `--region`): where its newest open session runs on
/// an active node (its placement, so a reconnect stays there), else the
/// default region ([`crate::devices::default_region`]: the region of the
/// gateway the device's tunnels go to, `entry_url` when one is
/// configured). Never "any region": the key the device gets must be one
/// the gateway it uses can reach.
pub async fn device_region(
    db: &Db,
    device: DeviceId,
    entry_url: Option<&str>,
) -> AppResult<Option<RegionId>> {
    let placed: Option<RegionId> = db_run!(db, |conn| sessions::table
        .inner_join(
            outline_nodes::table.on(sessions::outline_node_id.eq(outline_nodes::id.nullable())),
        )
        .filter(sessions::device_id.eq(device))
        .filter(sessions::ended_at.is_null())
        .filter(outline_nodes::status.eq(NodeStatus::Active))
        .order((sessions::started_at.desc(), sessions::id))
        .select(outline_nodes::region_id)
        .first(conn)
        .await
        .optional()?);
    match placed {
        Some(r) => Ok(Some(r)),
        None => crate::devices::default_region(db, entry_url).await,
    }
}

/// Validates and assigns in one call (see [`assign`]); a refused device is
/// an error carrying the reason.
pub async fn validate_and_assign(
    db: &Db,
    opener: &Opener,
    mut verdict: Verdict,
    gateway: Option<&GatewayNode>,
    region: Option<&str>,
    entry_url: Option<&str>,
) -> AppResult<Assignment> {
    let owner_email = verdict.owner_email.take().unwrap_or_default();
    let device = verdict.admitted().map_err(AppError::DeviceRefused)?;
    assign(db, opener, &device, owner_email, gateway, region, entry_url).await
}
