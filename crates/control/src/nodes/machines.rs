//! Machine callers of `/api/v1`: gateways and nodes, authenticated by the
//! token they were registered with (stored hashed), with a small bounded
//! cache for the hot routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::auth;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode, now};
use crate::db::schema::{gateway_nodes, outline_nodes};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::status::NodeStatus;

/// A machine caller, authenticated by its node token.
#[derive(Debug, Clone)]
pub enum Machine {
    /// A gateway.
    Gateway(GatewayNode),
    /// An Outline node.
    Outline(OutlineNode),
}

/// Finds the node holding `token`; disabled nodes are refused, and so is
/// a token whose enrollment string expired before it was redeemed or used.
pub async fn authenticate_machine(db: &Db, token: &str) -> AppResult<Machine> {
    let mut machine = find_machine(db, token).await?;
    settle_enrollment(db, &mut machine, &auth::hash_token(token)).await?;
    Ok(machine)
}

/// The node holding `token`, as [`authenticate_machine`] checks it, but
/// without counting this as the token's first use (for redeeming it).
pub(super) async fn find_machine(db: &Db, token: &str) -> AppResult<Machine> {
    if !auth::looks_like_token(token) {
        return Err(AppError::Unauthenticated);
    }
    let hash = auth::hash_token(token);
    let (g, o): (Option<GatewayNode>, Option<OutlineNode>) = db_run!(db, |conn| {
        let g = gateway_nodes::table
            .filter(gateway_nodes::token_hash.eq(&hash))
            .select(GatewayNode::as_select())
            .first(conn)
            .await
            .optional()?;
        let o = if g.is_none() {
            outline_nodes::table
                .filter(outline_nodes::token_hash.eq(&hash))
                .select(OutlineNode::as_select())
                .first(conn)
                .await
                .optional()?
        } else {
            None
        };
        (g, o)
    });
    let machine = match (g, o) {
        (Some(g), _) if g.status != NodeStatus::Disabled => Machine::Gateway(g),
        (_, Some(o)) if o.status != NodeStatus::Disabled => Machine::Outline(o),
        (Some(_), _) | (_, Some(_)) => return Err(AppError::Forbidden),
        _ => return Err(AppError::Unauthenticated),
    };
    if machine
        .enrollment_pending_until()
        .is_some_and(|until| until <= now())
    {
        return Err(AppError::Unauthenticated);
    }
    Ok(machine)
}

impl Machine {
    /// Its id.
    pub fn id(&self) -> uuid::Uuid {
        match self {
            Machine::Gateway(g) => g.id.uuid(),
            Machine::Outline(o) => o.id.uuid(),
        }
    }

    /// Until when its token's enrollment string works, if the token was
    /// neither redeemed nor used yet.
    pub fn enrollment_pending_until(&self) -> Option<NaiveDateTime> {
        match self {
            Machine::Gateway(g) => g.enroll_expires_at,
            Machine::Outline(o) => o.enroll_expires_at,
        }
    }
}

/// A token still waiting for its enrollment (the one of a string printed
/// by `add` or `rotate`, not expired: [`find_machine`] checked): its first
/// use as the machine's own token counts as the enrollment, and the token
/// stops expiring. The change is made only while the row still holds the
/// token and the string has not expired meanwhile; otherwise the token is
/// refused.
async fn settle_enrollment(db: &Db, machine: &mut Machine, hash: &str) -> AppResult<()> {
    if machine.enrollment_pending_until().is_none() {
        return Ok(());
    }
    let at = now();
    let none = None::<NaiveDateTime>;
    let settled = match machine {
        Machine::Gateway(g) => {
            let id = g.id;
            let n = db_run!(db, |conn| {
                diesel::update(
                    gateway_nodes::table
                        .find(id)
                        .filter(gateway_nodes::token_hash.eq(hash))
                        .filter(
                            gateway_nodes::enroll_expires_at
                                .is_null()
                                .or(gateway_nodes::enroll_expires_at.gt(at)),
                        ),
                )
                .set(gateway_nodes::enroll_expires_at.eq(none))
                .execute(conn)
                .await?
            });
            g.enroll_expires_at = None;
            n
        }
        Machine::Outline(o) => {
            let id = o.id;
            let n = db_run!(db, |conn| {
                diesel::update(
                    outline_nodes::table
                        .find(id)
                        .filter(outline_nodes::token_hash.eq(hash))
                        .filter(
                            outline_nodes::enroll_expires_at
                                .is_null()
                                .or(outline_nodes::enroll_expires_at.gt(at)),
                        ),
                )
                .set(outline_nodes::enroll_expires_at.eq(none))
                .execute(conn)
                .await?
            });
            o.enroll_expires_at = None;
            n
        }
    };
    if settled == 0 {
        // Rotated, redeemed by someone else or expired since it was read.
        return Err(AppError::Unauthenticated);
    }
    Ok(())
}

/// How long an authenticated machine token is trusted without asking the
/// database again (revocation applies within this time on the routes that
/// use the cache).
pub const MACHINE_CACHE_TTL: Duration = Duration::from_secs(5);

/// Most machine tokens the cache holds (far more than gateways and nodes a
/// deployment has; unknown tokens are never cached).
pub const MACHINE_CACHE_CAPACITY: usize = 10_000;

/// Recently authenticated machine tokens, keyed by hash, so a gateway's
/// burst of validate/assign calls costs one lookup rather than one per call.
#[derive(Clone)]
pub struct MachineCache {
    inner: Arc<quick_cache::sync::Cache<String, (Instant, Machine)>>,
}

impl Default for MachineCache {
    fn default() -> Self {
        MachineCache {
            inner: Arc::new(quick_cache::sync::Cache::new(MACHINE_CACHE_CAPACITY)),
        }
    }
}

impl MachineCache {
    /// Like [`authenticate_machine`], answering from the cache when fresh.
    pub async fn authenticate(&self, db: &Db, token: &str) -> AppResult<Machine> {
        if !auth::looks_like_token(token) {
            return Err(AppError::Unauthenticated);
        }
        let hash = auth::hash_token(token);
        if let Some(m) = self.fresh(&hash, Instant::now()) {
            return Ok(m);
        }
        let machine = authenticate_machine(db, token).await?;
        self.inner.insert(hash, (Instant::now(), machine.clone()));
        Ok(machine)
    }

    /// Drops what is cached for the machine `id` (its token was retired,
    /// or it was disabled or deleted): this process's next call with it
    /// asks the database. Other processes (replicas, the CLI's changes)
    /// learn it within [`MACHINE_CACHE_TTL`].
    pub fn forget(&self, id: uuid::Uuid) {
        self.inner.retain(|_, (_, m)| m.id() != id);
    }

    /// The machine cached for `hash`, if it was authenticated less than
    /// [`MACHINE_CACHE_TTL`] before `now`.
    fn fresh(&self, hash: &str, now: Instant) -> Option<Machine> {
        let (at, machine) = self.inner.get(hash)?;
        (now.saturating_duration_since(at) < MACHINE_CACHE_TTL).then_some(machine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{GatewayNodeId, RegionId};
    use crate::status::Health;

    fn gateway() -> Machine {
        Machine::Gateway(GatewayNode {
            id: GatewayNodeId::random(),
            region_id: RegionId::random(),
            name: "gw".into(),
            public_url: "https://gw".into(),
            token_hash: "h".into(),
            status: NodeStatus::Active,
            health: Health::Up,
            last_heartbeat_at: None,
            open_tunnels: 0,
            version: None,
            created_at: now(),
            updated_at: now(),
            enroll_expires_at: None,
        })
    }

    #[test]
    fn entries_are_trusted_for_the_ttl_only() {
        let cache = MachineCache::default();
        let t0 = Instant::now();
        cache.inner.insert("h".into(), (t0, gateway()));
        assert!(cache.fresh("h", t0).is_some());
        assert!(cache.fresh("h", t0 + MACHINE_CACHE_TTL / 2).is_some());
        assert!(cache.fresh("h", t0 + MACHINE_CACHE_TTL).is_none());
        assert!(cache.fresh("other", t0).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = MachineCache::default();
        let t0 = Instant::now();
        for i in 0..MACHINE_CACHE_CAPACITY * 2 {
            cache.inner.insert(i.to_string(), (t0, gateway()));
        }
        assert!(cache.inner.len() <= MACHINE_CACHE_CAPACITY);
    }
}
