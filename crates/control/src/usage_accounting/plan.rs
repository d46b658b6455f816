//! What a pass of the applier changes, decided without I/O: reports merged
//! per session (the largest totals win; the node's per epoch), the node's
//! count of each session folded across its epochs, the increase of each
//! session over what is stored (the gateway's count, the node's where the
//! gateway's is lost: see [`witness`](super::witness)), the session's current hour (rolled into a ledger row when
//! a new hour begins), one charge per account (saturating at `i64::MAX`),
//! and which sessions end when their owner's allowance is spent.

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDateTime, Timelike};
use httvps_wire::CloseOrder;

use super::RowOutcome;
use super::counts::within_grant;
pub use super::counts::{GatewayCount, NodeCount, NodeTotals, Totals, recorded};
use crate::access;
use crate::ids::{SessionId, SubscriptionId, UserId};
use crate::status::EndReason;

/// Per session, the gateway's epoch and its largest totals seen in it
/// (sorted by session id).
pub type Latest = BTreeMap<SessionId, (i64, Totals)>;

/// A stored report: `[session_id, seq, bytes_up, bytes_down, epoch]` per
/// session (the inbox's JSON form, under the key `gateway`).
pub type InboxTotals = Vec<(SessionId, i64, i64, i64, i64)>;

/// A report stored before gateway counts had epochs: `[session_id, seq,
/// bytes_up, bytes_down]` per session (epoch 0), a bare JSON array.
pub type InboxTotalsBefore = Vec<(SessionId, i64, i64, i64)>;

/// A stored node report: `[session_id, epoch, bytes_up, bytes_down]` per
/// session (the inbox's JSON form, under the key `node`).
pub type InboxNodeTotals = Vec<(SessionId, i64, i64, i64)>;

/// What one pass merged for a session: the gateway's largest totals of
/// each epoch it reported, and the node's, in epoch order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merged {
    /// The gateway's largest totals per epoch, ascending.
    pub gateway: Vec<(i64, Totals)>,
    /// The node's largest totals per epoch, ascending.
    pub node: Vec<NodeTotals>,
}

/// Per session, what a pass merged (sorted by session id).
pub type MergedLatest = BTreeMap<SessionId, Merged>;

/// Merges gateway totals (with their epochs) into `latest`: per session
/// and epoch, the largest of each.
pub fn merge_gateway(
    latest: &mut MergedLatest,
    totals: impl Iterator<Item = (SessionId, i64, Totals)>,
) {
    for (id, epoch, t) in totals {
        let gateway = &mut latest.entry(id).or_default().gateway;
        match gateway.binary_search_by_key(&epoch, |g| g.0) {
            Ok(i) => gateway[i].1 = gateway[i].1.max(t),
            Err(i) => gateway.insert(i, (epoch, t)),
        }
    }
}

/// Merges node totals into `latest`: per session and epoch, the largest of
/// each direction.
pub fn merge_node(
    latest: &mut MergedLatest,
    totals: impl Iterator<Item = (SessionId, NodeTotals)>,
) {
    for (id, t) in totals {
        let node = &mut latest.entry(id).or_default().node;
        match node.binary_search_by_key(&t.epoch, |n| n.epoch) {
            Ok(i) => {
                node[i].up = node[i].up.max(t.up);
                node[i].down = node[i].down.max(t.down);
            }
            Err(i) => node.insert(i, t),
        }
    }
}

/// Merges cumulative totals: per session, those of the latest epoch, and
/// of those the largest of each (totals only grow, so an older or
/// replayed report changes nothing).
pub fn merge(latest: &mut Latest, totals: impl Iterator<Item = (SessionId, i64, Totals)>) {
    for (id, epoch, t) in totals {
        latest
            .entry(id)
            .and_modify(|(e, old)| {
                if epoch > *e {
                    (*e, *old) = (epoch, t);
                } else if epoch == *e {
                    *old = old.max(t);
                }
            })
            .or_insert((epoch, t));
    }
}

/// What `merged` (sorted by session id) holds for a session.
pub fn newest_of(merged: &[(SessionId, Merged)], session: SessionId) -> Option<&Merged> {
    merged
        .binary_search_by(|(id, _)| id.cmp(&session))
        .ok()
        .map(|i| &merged[i].1)
}

/// The start of the hour `ts` falls in (the ledger's grain).
pub fn hour_of(ts: NaiveDateTime) -> NaiveDateTime {
    ts.date().and_hms_opt(ts.hour(), 0, 0).unwrap_or(ts)
}

/// A session about to grow, as stored, with its owner.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Stored {
    /// The session.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: SessionId,
    /// Its device's owner.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub user_id: UserId,
    /// Stored cumulative bytes up.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub bytes_up: i64,
    /// Stored cumulative bytes down.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub bytes_down: i64,
    /// Sequence number of the stored totals.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub last_seq: i64,
    /// Why it ended, if it has.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub end_reason: Option<EndReason>,
    /// Start of the hour its current counts belong to.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    pub hour_start: Option<NaiveDateTime>,
    /// Bytes up gained in that hour.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub hour_up: i64,
    /// Bytes down gained in that hour.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub hour_down: i64,
    /// The node's count: its epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub witness_epoch: i64,
    /// The node's count: bytes up of earlier epochs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub witness_base_up: i64,
    /// The node's count: bytes down of earlier epochs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub witness_base_down: i64,
    /// The node's count of bytes up so far.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub witness_up: i64,
    /// The node's count of bytes down so far.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub witness_down: i64,
    /// The gateway's count: its epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub gateway_epoch: i64,
    /// The gateway's count: bytes up recorded before its epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub gateway_base_up: i64,
    /// The gateway's count: bytes down recorded before its epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub gateway_base_down: i64,
    /// When it started: what is recorded goes no further than the session
    /// could have moved since (see `inbox::bound`), however many epochs
    /// the counts add up.
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub started_at: NaiveDateTime,
    /// When it ended, if it has.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
    pub ended_at: Option<NaiveDateTime>,
    /// The limit of the session's quota grant, if it has one: the most the
    /// gateway could let through, so the most the node's count may record
    /// (see [`recorded`]).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub witness_cap: Option<i64>,
}

impl Stored {
    /// The gateway's count as stored.
    pub fn gateway_count(&self) -> GatewayCount {
        GatewayCount {
            epoch: self.gateway_epoch,
            base_up: self.gateway_base_up,
            base_down: self.gateway_base_down,
        }
    }

    /// The node's count as stored.
    pub fn node_count(&self) -> NodeCount {
        NodeCount {
            epoch: self.witness_epoch,
            base_up: self.witness_base_up,
            base_down: self.witness_base_down,
            up: self.witness_up,
            down: self.witness_down,
        }
    }
}

/// A session's new totals, current hour and node count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Growth {
    /// The session.
    pub id: SessionId,
    /// New cumulative bytes up.
    pub up: i64,
    /// New cumulative bytes down.
    pub down: i64,
    /// New sequence number.
    pub seq: i64,
    /// Bytes up of the current hour.
    pub hour_up: i64,
    /// Bytes down of the current hour.
    pub hour_down: i64,
    /// The node's count: its epoch.
    pub w_epoch: i64,
    /// The node's count: bytes up of earlier epochs.
    pub w_base_up: i64,
    /// The node's count: bytes down of earlier epochs.
    pub w_base_down: i64,
    /// The node's count of bytes up so far.
    pub w_up: i64,
    /// The node's count of bytes down so far.
    pub w_down: i64,
    /// The gateway's count: its epoch.
    pub g_epoch: i64,
    /// The gateway's count: bytes up recorded before its epoch.
    pub g_base_up: i64,
    /// The gateway's count: bytes down recorded before its epoch.
    pub g_base_down: i64,
}

/// A session's hour that is over: what goes to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedHour {
    /// The session.
    pub session_id: SessionId,
    /// Sequence number at the end of the hour.
    pub seq: i64,
    /// Cumulative bytes up at the end of the hour.
    pub total_up: i64,
    /// Cumulative bytes down at the end of the hour.
    pub total_down: i64,
    /// Bytes up gained in the hour.
    pub delta_up: i64,
    /// Bytes down gained in the hour.
    pub delta_down: i64,
    /// The hour's start.
    pub hour: NaiveDateTime,
}

/// Bytes to add to an account's current subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Charge {
    /// The account.
    pub user_id: UserId,
    /// Bytes (saturated at `i64::MAX`).
    pub delta: i64,
}

/// What applying a chunk of merged totals changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Sessions that gained bytes.
    pub grown: Vec<Growth>,
    /// Hours that ended, for the ledger.
    pub closed: Vec<ClosedHour>,
    /// One charge per account, in account order.
    pub charges: Vec<Charge>,
}

/// Plans a chunk at `now`: for each `stored` session with reports in
/// `merged`, the node's count folded across its epochs, the increase of
/// the gateway's count over what is recorded (the node's where the
/// gateway's is lost, within the session's grant; nothing for replays and
/// older totals), its hour, and its owner's
/// charge. A session whose node count moved but whose recorded totals did
/// not is still written (the count must survive for the next epoch).
pub fn plan_chunk(
    stored: &[Stored],
    merged: &[(SessionId, Merged)],
    now: NaiveDateTime,
) -> ChunkPlan {
    let hour = hour_of(now);
    let mut plan = ChunkPlan::default();
    let mut by_user: BTreeMap<UserId, i64> = BTreeMap::new();
    for s in stored {
        let Some(m) = newest_of(merged, s.id) else {
            continue;
        };
        let before = s.node_count();
        let count = m.node.iter().fold(before, |c, t| c.fold(*t));
        let node = Totals {
            seq: 0,
            up: count.up,
            down: count.down,
        };
        let g_before = s.gateway_count();
        // The gateway has reported the session before (a later epoch then
        // counts on top of what was recorded).
        let reported = s.gateway_epoch > 0 || s.last_seq > 0;
        let (g_count, t) = g_before.fold((s.bytes_up, s.bytes_down), reported, &m.gateway);
        // Once the gateway reports the session, its count is the record:
        // it counts what it let through, UDP included. The node counts TCP
        // only, and what it wrote toward a gateway that stopped reading
        // (a cancelled download left megabytes in the sockets): taken as
        // the record, it charged those and absorbed the gateway's UDP. The
        // node's count is the record where the gateway's is lost: before
        // the gateway's first report, and in an epoch that follows a lost
        // count (a base), where the larger of the two counts is taken (the
        // node's holds what the lost count missed; its count of the new
        // epoch's bytes catches up with the gateway's, so nothing is
        // counted twice).
        let rebased = g_count.base_up > 0 || g_count.base_down > 0;
        let r = if (reported || !m.gateway.is_empty()) && !rebased {
            t
        } else {
            recorded(t, node, s.witness_cap)
        };
        let most = super::bounds::bound(s.started_at, s.ended_at, now);
        let (delta_up, delta_down) = within_grant(
            s.witness_cap,
            (s.bytes_up, s.bytes_down),
            t,
            (r.up.min(most) - s.bytes_up).max(0),
            (r.down.min(most) - s.bytes_down).max(0),
        );
        if delta_up == 0 && delta_down == 0 && count == before && g_count == g_before {
            continue;
        }
        let (hour_up, hour_down) = match s.hour_start {
            Some(h) if h == hour => (s.hour_up + delta_up, s.hour_down + delta_down),
            earlier => {
                // A new hour for this session: the last one is closed.
                if let Some(h) = earlier.filter(|_| s.hour_up > 0 || s.hour_down > 0) {
                    plan.closed.push(ClosedHour {
                        session_id: s.id,
                        seq: s.last_seq,
                        total_up: s.bytes_up,
                        total_down: s.bytes_down,
                        delta_up: s.hour_up,
                        delta_down: s.hour_down,
                        hour: h,
                    });
                }
                (delta_up, delta_down)
            }
        };
        plan.grown.push(Growth {
            id: s.id,
            up: s.bytes_up + delta_up,
            down: s.bytes_down + delta_down,
            seq: s.last_seq.max(t.seq),
            hour_up,
            hour_down,
            w_epoch: count.epoch,
            w_base_up: count.base_up,
            w_base_down: count.base_down,
            w_up: count.up,
            w_down: count.down,
            g_epoch: g_count.epoch,
            g_base_up: g_count.base_up,
            g_base_down: g_count.base_down,
        });
        if delta_up > 0 || delta_down > 0 {
            let d = by_user.entry(s.user_id).or_insert(0);
            *d = d.saturating_add(delta_up.saturating_add(delta_down));
        }
    }
    plan.charges = by_user
        .into_iter()
        .map(|(user_id, delta)| Charge { user_id, delta })
        .collect();
    plan
}

/// An account's subscription after it was charged.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Charged {
    /// The subscription charged.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id: SubscriptionId,
    /// The account.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub user_id: UserId,
    /// Traffic used in the period, after the charge.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub traffic_used_bytes: i64,
    /// The allowance (`None`: unlimited).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub traffic_limit_bytes: Option<i64>,
    /// Start of the traffic period, after the charge.
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    pub period_start: NaiveDateTime,
}

/// The open sessions among `stored` whose owner just used up the allowance.
pub fn ending(stored: &[Stored], charged: &[Charged]) -> Vec<SessionId> {
    let spent: HashSet<UserId> = charged
        .iter()
        .filter(|c| access::quota_spent(c.traffic_used_bytes, c.traffic_limit_bytes))
        .map(|c| c.user_id)
        .collect();
    stored
        .iter()
        .filter(|s| s.end_reason.is_none() && spent.contains(&s.user_id))
        .map(|s| s.id)
        .collect()
}

/// What each of the `kept` rows did: its totals that were the newest of
/// their session and added bytes, and its sessions that ended.
pub fn outcomes(
    kept: &[(i64, InboxTotals)],
    merged: &[(SessionId, Merged)],
    grown: &HashSet<SessionId>,
    ended: &HashSet<SessionId>,
) -> Vec<(i64, RowOutcome)> {
    kept.iter()
        .map(|(id, totals)| {
            let mut out = RowOutcome::default();
            for (sid, _, up, down, epoch) in totals {
                let newest = newest_of(merged, *sid)
                    .and_then(|m| m.gateway.last())
                    .is_some_and(|(e, l)| e == epoch && l.up == *up && l.down == *down);
                if newest && grown.contains(sid) {
                    out.counted += 1;
                }
                if ended.contains(sid) {
                    out.close.push(CloseOrder {
                        session_id: sid.to_string(),
                        reason: EndReason::QuotaExceeded.as_str().to_owned(),
                    });
                }
            }
            (*id, out)
        })
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
