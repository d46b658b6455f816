//! What a pass of the applier changes, decided without I/O: reports merged
//! per session (the largest totals win; the node's per epoch), the node's
//! count of each session folded across its epochs, the increase of each
//! session over what is stored (the larger of the gateway's and the node's
//! count in each direction), the session's current hour (rolled into a ledger row when
//! a new hour begins), one charge per account (saturating at `i64::MAX`),
//! and which sessions end when their owner's allowance is spent.

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDateTime, Timelike};
use httvps_wire::CloseOrder;

use super::RowOutcome;
use crate::access;
use crate::ids::{SessionId, SubscriptionId, UserId};
use crate::status::EndReason;

/// Cumulative totals of a session as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Sequence number of the report.
    pub seq: i64,
    /// Bytes from the client.
    pub up: i64,
    /// Bytes to the client.
    pub down: i64,
}

impl Totals {
    /// The larger of each of `self` and `other` (totals only grow, so the
    /// larger is the newer).
    pub fn max(self, other: Totals) -> Totals {
        Totals {
            seq: self.seq.max(other.seq),
            up: self.up.max(other.up),
            down: self.down.max(other.down),
        }
    }
}

/// What the ledger records for a session from the gateway's totals and the
/// node's: the larger of each direction (see [`witness`](super::witness)), with the
/// node's surplus over the gateway cut where both together would pass
/// `cap`, the limit of the session's quota grant as stored (in the
/// ledger's terms, see `grants::ledger_offset`), or the gateway's own
/// total, if larger. The gateway lets no byte through past its grant, so
/// what the node counts beyond it never reached the client: it sat in the
/// sockets between the node and a gateway that had stopped reading at the
/// cut-off. The download surplus is cut first (that is where those bytes
/// are), then the upload's. Without a cap (an unlimited subscription)
/// nothing is cut; a limited one's session without a grant has a cap of
/// 0 (see `statements::READ`): the node adds nothing to the gateway's.
pub fn recorded(gateway: Totals, node: Totals, cap: Option<i64>) -> Totals {
    let r = gateway.max(node);
    let Some(cap) = cap else {
        return r;
    };
    // In i128: two totals near the bound do not overflow.
    let wide = |t: Totals| (i128::from(t.up), i128::from(t.down));
    let ((g_up, g_down), (r_up, r_down)) = (wide(gateway), wide(r));
    let bound = i128::from(cap).max(g_up + g_down);
    let mut excess = r_up + r_down - bound;
    if excess <= 0 {
        return r;
    }
    let cut_down = excess.min(r_down - g_down);
    excess -= cut_down;
    let cut_up = excess.min(r_up - g_up);
    // Each cut leaves at least the gateway's total, an i64.
    let narrow = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    Totals {
        seq: r.seq,
        up: narrow(r_up - cut_up),
        down: narrow(r_down - cut_down),
    }
}

/// Per session, the largest totals seen (sorted by session id).
pub type Latest = BTreeMap<SessionId, Totals>;

/// A stored report: `[session_id, seq, bytes_up, bytes_down]` per session
/// (the inbox's JSON form).
pub type InboxTotals = Vec<(SessionId, i64, i64, i64)>;

/// A node's cumulative totals of a session in one of its epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeTotals {
    /// The epoch (a node counting a session anew takes a larger one).
    pub epoch: i64,
    /// Bytes from the client.
    pub up: i64,
    /// Bytes to the client.
    pub down: i64,
}

/// A stored node report: `[session_id, epoch, bytes_up, bytes_down]` per
/// session (the inbox's JSON form, under the key `node`).
pub type InboxNodeTotals = Vec<(SessionId, i64, i64, i64)>;

/// What one pass merged for a session: the gateway's newest totals, if it
/// reported, and the node's largest totals of each epoch it reported, in
/// epoch order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Merged {
    /// The gateway's largest totals.
    pub gateway: Option<Totals>,
    /// The node's largest totals per epoch, ascending.
    pub node: Vec<NodeTotals>,
}

/// Per session, what a pass merged (sorted by session id).
pub type MergedLatest = BTreeMap<SessionId, Merged>;

/// Merges gateway totals into `latest` (see [`merge`]).
pub fn merge_gateway(latest: &mut MergedLatest, totals: impl Iterator<Item = (SessionId, Totals)>) {
    for (id, t) in totals {
        let m = latest.entry(id).or_default();
        m.gateway = Some(m.gateway.map_or(t, |e| e.max(t)));
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

/// The node's count of a session as stored: the epoch it counts in, what
/// the earlier epochs counted (the base), and the count so far (the base
/// plus the current epoch's totals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCount {
    /// The epoch of the latest totals folded in.
    pub epoch: i64,
    /// Bytes up counted in earlier epochs.
    pub base_up: i64,
    /// Bytes down counted in earlier epochs.
    pub base_down: i64,
    /// Bytes up counted so far.
    pub up: i64,
    /// Bytes down counted so far.
    pub down: i64,
}

impl NodeCount {
    /// Folds in an epoch's totals: of the current epoch, the larger count
    /// wins (a replay changes nothing); a later epoch starts from the count
    /// so far; an earlier one is over and changes nothing.
    pub fn fold(self, t: NodeTotals) -> NodeCount {
        let (up, down) = (t.up.max(0), t.down.max(0));
        if t.epoch < self.epoch {
            self
        } else if t.epoch == self.epoch {
            NodeCount {
                up: self.up.max(self.base_up.saturating_add(up)),
                down: self.down.max(self.base_down.saturating_add(down)),
                ..self
            }
        } else {
            NodeCount {
                epoch: t.epoch,
                base_up: self.up,
                base_down: self.down,
                up: self.up.saturating_add(up),
                down: self.down.saturating_add(down),
            }
        }
    }
}

/// Merges cumulative totals: per session, the largest of each is the
/// latest (totals only grow, so an older or replayed report changes nothing).
pub fn merge(latest: &mut Latest, totals: impl Iterator<Item = (SessionId, Totals)>) {
    for (id, t) in totals {
        latest.entry(id).and_modify(|e| *e = e.max(t)).or_insert(t);
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
    /// The limit of the session's quota grant, if it has one: the most the
    /// gateway could let through, so the most the node's count may record
    /// (see [`recorded`]).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub witness_cap: Option<i64>,
}

impl Stored {
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
/// the larger of the gateway's and the node's count over what is recorded
/// (the node's within the session's grant; nothing for replays and older
/// totals), its hour, and its owner's
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
        let t = m.gateway.unwrap_or_default();
        let node = Totals {
            seq: 0,
            up: count.up,
            down: count.down,
        };
        let r = recorded(t, node, s.witness_cap);
        let delta_up = (r.up - s.bytes_up).max(0);
        let delta_down = (r.down - s.bytes_down).max(0);
        if delta_up == 0 && delta_down == 0 && count == before {
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
            for (sid, _, up, down) in totals {
                let newest = newest_of(merged, *sid)
                    .and_then(|m| m.gateway)
                    .is_some_and(|l| l.up == *up && l.down == *down);
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
