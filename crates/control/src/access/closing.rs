//! The rule applied to open sessions: of the sessions a gateway holds, which
//! it must close (ended already, or whose device may no longer connect).
//! Newly refused sessions are ended here with their reason, and so is a
//! session an admin closes.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use httvps_wire::CloseOrder;

use super::{Facts, judge, query};
use crate::actor::Actor;
use crate::db::Db;
use crate::db::models::{Session, now};
use crate::db::schema::{audit_log, devices, sessions};
use crate::error::{AppError, AppResult};
use crate::events::AccessChange;
use crate::ids::{DeviceId, GatewayNodeId, SessionId};
use crate::status::EndReason;
use crate::{db_run, db_tx};

/// A session a gateway says it holds, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct Held {
    /// The session.
    pub id: SessionId,
    /// Its device.
    pub device_id: DeviceId,
    /// Why it ended, if it has.
    pub end_reason: Option<EndReason>,
    /// The generation of the access token it was opened with (0: not
    /// recorded).
    pub token_generation: i64,
}

/// What to tell the gateway, and which sessions to end now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closing {
    /// Sessions the gateway must close, with why.
    pub orders: Vec<(SessionId, EndReason)>,
    /// Sessions to end now (a subset of the orders).
    pub to_end: Vec<(SessionId, EndReason)>,
}

/// Whether `held` was opened with an access token other than the one its
/// device holds now.
fn replaced(held: &Held, device: &Facts) -> bool {
    held.token_generation != 0
        && held.token_generation != crate::auth::token_generation(device.device.token_hash.expose())
}

/// Decides, at `at`, what happens to `held` sessions given the `facts`
/// about their devices (a device without facts no longer exists).
pub fn decide(held: &[Held], facts: &[Facts], at: NaiveDateTime) -> Closing {
    let by_device: HashMap<DeviceId, &Facts> = facts.iter().map(|f| (f.device.id, f)).collect();
    let mut out = Closing::default();
    for s in held {
        if let Some(reason) = s.end_reason {
            out.orders.push((s.id, reason));
            continue;
        }
        let refusal = match by_device.get(&s.device_id) {
            // Opened with an access token replaced since (an assignment
            // that committed just after the replacement ended the
            // device's sessions): the token no longer admits anything.
            Some(f) if replaced(s, f) => Some(super::Reason::DeviceUnknown),
            Some(f) => judge(f, at),
            None => Some(super::Reason::DeviceUnknown),
        };
        if let Some(r) = refusal {
            let reason = EndReason::from(r);
            out.orders.push((s.id, reason));
            out.to_end.push((s.id, reason));
        }
    }
    out
}

/// Of `session_ids` (of `gateway`), the ones the gateway must close; the
/// newly refused ones are ended with their reason.
pub async fn close_orders(
    db: &Db,
    gateway: GatewayNodeId,
    session_ids: &[SessionId],
) -> AppResult<Vec<CloseOrder>> {
    if session_ids.is_empty() {
        return Ok(vec![]);
    }
    let held: Vec<Held> = db_run!(db, |conn| sessions::table
        .filter(sessions::id.eq_any(session_ids))
        .filter(sessions::gateway_node_id.eq(gateway))
        .select((
            sessions::id,
            sessions::device_id,
            sessions::end_reason,
            sessions::token_generation,
        ))
        .load(conn)
        .await?);
    let mut devices: Vec<DeviceId> = held.iter().map(|s| s.device_id).collect();
    devices.sort_unstable();
    devices.dedup();
    let facts = query::by_devices(db, &devices).await?;
    let closing = decide(&held, &facts, now());
    end_sessions(db, &closing.to_end).await?;
    Ok(closing
        .orders
        .into_iter()
        .map(|(id, reason)| CloseOrder {
            session_id: id.to_string(),
            reason: reason.as_str().to_owned(),
        })
        .collect())
}

/// Ends the open ones of `sessions`, each with its reason (one statement
/// per reason).
pub async fn end_sessions(db: &Db, sessions: &[(SessionId, EndReason)]) -> AppResult<()> {
    if sessions.is_empty() {
        return Ok(());
    }
    let mut by_reason: BTreeMap<&str, (EndReason, Vec<SessionId>)> = BTreeMap::new();
    for (id, reason) in sessions {
        by_reason
            .entry(reason.as_str())
            .or_insert_with(|| (*reason, Vec::new()))
            .1
            .push(*id);
    }
    db_tx!(db, |conn, outbox| {
        crate::apply_lock!(conn);
        let ts = now();
        for (reason, ids) in by_reason.values() {
            crate::end_sessions_where!(conn, outbox, sessions::id.eq_any(ids), *reason, ts);
        }
        Ok::<_, crate::error::AppError>(())
    })
}

/// Admin: ends the open session `id` now (`closed_by_admin`). Gateways
/// forget what routed its device there and close its tunnels at once; the
/// device's next tunnel opens a new session, perhaps on another node. A
/// session that has ended already is answered as it is.
pub async fn close_by_admin(db: &Db, actor: &Actor, id: SessionId) -> AppResult<Session> {
    actor.require_admin()?;
    db_tx!(db, |conn, outbox| {
        crate::apply_lock!(conn);
        let ended = crate::end_sessions_where!(
            conn,
            outbox,
            sessions::id.eq(id),
            EndReason::ClosedByAdmin,
            now()
        );
        let session: Session = sessions::table
            .find(id)
            .select(Session::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(AppError::NotFound("session"))?;
        if ended.is_empty() {
            // Ended already: its end stands.
            return Ok(session);
        }
        let user: crate::ids::UserId = devices::table
            .find(session.device_id)
            .select(devices::user_id)
            .first(conn)
            .await?;
        let details = serde_json::json!({"deviceId": session.device_id, "userId": user});
        let entry = crate::audit::entry(
            actor,
            "close_session",
            "session",
            Some(&id.to_string()),
            details,
        );
        diesel::insert_into(audit_log::table)
            .values(&entry)
            .execute(conn)
            .await?;
        outbox.access(AccessChange::SessionClosed, Some(user));
        Ok::<_, AppError>(session)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::Device;
    use crate::ids::UserId;
    use crate::status::{DeviceStatus, UserStatus};

    fn device(id: DeviceId, status: DeviceStatus) -> Facts {
        Facts {
            device: Device {
                id,
                user_id: UserId::random(),
                name: "d".into(),
                platform: "p".into(),
                status,
                token_hash: "h".into(),
                last_seen_at: None,
                created_at: now(),
                revoked_at: None,
                over_limit: false,
            },
            user_status: UserStatus::Active,
            user_email: "d@example.test".into(),
            subscription: None,
        }
    }

    #[test]
    fn ended_sessions_are_repeated_refused_ones_ended_admitted_ones_kept() {
        let (a, b, c) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
        let ended = Held {
            id: SessionId::random(),
            device_id: a,
            end_reason: Some(EndReason::Idle),
            token_generation: 0,
        };
        let revoked = Held {
            id: SessionId::random(),
            device_id: b,
            end_reason: None,
            token_generation: 0,
        };
        let gone = Held {
            id: SessionId::random(),
            device_id: c,
            end_reason: None,
            token_generation: 0,
        };
        let facts = [
            device(a, DeviceStatus::Active),
            device(b, DeviceStatus::Revoked),
        ];
        let out = decide(
            &[ended.clone(), revoked.clone(), gone.clone()],
            &facts,
            now(),
        );
        assert_eq!(
            out.orders,
            vec![
                (ended.id, EndReason::Idle),
                (revoked.id, EndReason::DeviceRevoked),
                (gone.id, EndReason::DeviceRevoked),
            ]
        );
        assert_eq!(
            out.to_end,
            vec![
                (revoked.id, EndReason::DeviceRevoked),
                (gone.id, EndReason::DeviceRevoked)
            ]
        );
        // No subscription: the session ends as its subscription did.
        let open = Held {
            id: SessionId::random(),
            device_id: a,
            end_reason: None,
            token_generation: 0,
        };
        let out = decide(std::slice::from_ref(&open), &facts, now());
        assert_eq!(out.to_end, vec![(open.id, EndReason::SubscriptionEnded)]);
    }

    #[test]
    fn a_session_of_a_replaced_token_is_closed() {
        let d = DeviceId::random();
        let mut facts = device(d, DeviceStatus::Active);
        facts.device.token_hash = "00000000000002a0ffff".into();
        let current = crate::auth::token_generation(facts.device.token_hash.expose());
        let held = |token_generation| Held {
            id: SessionId::random(),
            device_id: d,
            end_reason: None,
            token_generation,
        };
        let (stale, unrecorded, fresh) = (held(current + 1), held(0), held(current));
        let out = decide(
            &[stale.clone(), unrecorded.clone(), fresh.clone()],
            std::slice::from_ref(&facts),
            now(),
        );
        // The stale one is closed as a revoked token's; the others are
        // judged by the rule (here: no subscription).
        assert_eq!(out.to_end[0], (stale.id, EndReason::DeviceRevoked));
        assert_eq!(out.to_end[1], (unrecorded.id, EndReason::SubscriptionEnded));
        assert_eq!(out.to_end[2], (fresh.id, EndReason::SubscriptionEnded));
    }
}
