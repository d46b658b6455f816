//! The node's and the gateway's counts of a session across their epochs:
//! each counts a session from zero again when it restarts (the gateway
//! without its spool) or forgets the session and meets it again, and says
//! so with a larger epoch; what earlier epochs counted is kept as a base,
//! so a new count adds to it instead of having to pass it. And what the
//! ledger records from the two counts ([`recorded`], [`within_grant`]).

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

/// The gateway's count of a session as stored: the epoch it counts in and
/// what was recorded for the session before that epoch began (the base).
/// Its count is the base plus the epoch's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GatewayCount {
    /// The epoch of the latest totals folded in.
    pub epoch: i64,
    /// Bytes up recorded before it.
    pub base_up: i64,
    /// Bytes down recorded before it.
    pub base_down: i64,
}

impl GatewayCount {
    /// Folds in a pass's totals per epoch (ascending) over what was
    /// `recorded` (up, down): of the current epoch the largest, and a later
    /// epoch (a gateway counting the session from zero again) starts from
    /// what was recorded so far; an earlier one is over and adds nothing.
    /// While the gateway has `reported` nothing of the session, its first
    /// epoch starts from zero: what is recorded then is the node's count of
    /// the same bytes. Returns the count and its totals in the ledger's
    /// terms.
    pub fn fold(
        self,
        recorded: (i64, i64),
        reported: bool,
        epochs: &[(i64, Totals)],
    ) -> (GatewayCount, Totals) {
        let mut count = self;
        let mut reported = reported;
        let mut current = Totals::default();
        let mut seq = 0;
        for &(epoch, t) in epochs {
            seq = seq.max(t.seq);
            if epoch < count.epoch {
                continue;
            }
            if epoch > count.epoch {
                let (base_up, base_down) = if reported {
                    (
                        recorded.0.max(count.base_up.saturating_add(current.up)),
                        recorded.1.max(count.base_down.saturating_add(current.down)),
                    )
                } else {
                    (0, 0)
                };
                count = GatewayCount {
                    epoch,
                    base_up,
                    base_down,
                };
                current = Totals::default();
            }
            current = current.max(t);
            reported = true;
        }
        let totals = Totals {
            seq,
            up: count.base_up.saturating_add(current.up),
            down: count.base_down.saturating_add(current.down),
        };
        (count, totals)
    }
}

/// What is known of a session from the gateway's totals and the node's
/// where the gateway's count is lost (no gateway report yet, or a gateway
/// counting it from zero again: see [`witness`](super::witness)): the
/// larger of each direction, with the
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

/// The increases `up` and `down` of a session (its grant's `cap` and its
/// `stored` totals), cut so that what is
/// recorded over all passes goes no further than [`recorded`] allows in
/// one: the session's grant, or the gateway's own total `gateway` if
/// larger. Recorded totals only grow, each direction on its own, so a node
/// surplus recorded in one direction while the gateway's count was small
/// (TCP the node wrote toward a gateway that had stopped reading, its
/// grant spent on UDP, which the node does not see) stayed when the
/// gateway's count in the other direction grew, and the total passed the
/// grant (7.9 MB charged for a 5 MiB allowance). The download's increase
/// is cut first. Without a grant's cap nothing is cut.
pub(super) fn within_grant(
    cap: Option<i64>,
    stored: (i64, i64),
    gateway: Totals,
    up: i64,
    down: i64,
) -> (i64, i64) {
    let Some(cap) = cap else {
        return (up, down);
    };
    let bound = i128::from(cap).max(i128::from(gateway.up) + i128::from(gateway.down));
    let room = (bound - i128::from(stored.0) - i128::from(stored.1)).max(0);
    let excess = i128::from(up) + i128::from(down) - room;
    if excess <= 0 {
        return (up, down);
    }
    let cut_down = excess.min(i128::from(down));
    let cut_up = (excess - cut_down).min(i128::from(up));
    let narrow = |v: i128| i64::try_from(v).unwrap_or(0);
    (
        narrow(i128::from(up) - cut_up),
        narrow(i128::from(down) - cut_down),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(seq: i64, up: i64, down: i64) -> Totals {
        Totals { seq, up, down }
    }

    #[test]
    fn a_gateway_count_adds_epochs_and_ignores_replays_and_the_past() {
        let start = GatewayCount::default();
        // Earlier gateways (epoch 0): the largest totals, no base.
        let (c, t) = start.fold(
            (0, 0),
            false,
            &[(0, totals(1, 5, 50)), (0, totals(2, 7, 40))],
        );
        // A gateway's first report starts from zero, whatever the node's
        // count recorded before it (the same bytes).
        let (first, t1) = start.fold((900, 900), false, &[(10, totals(1, 5, 50))]);
        assert_eq!(
            first,
            GatewayCount {
                epoch: 10,
                base_up: 0,
                base_down: 0
            }
        );
        assert_eq!(t1, totals(1, 5, 50));
        assert_eq!((c, t), (start, totals(2, 7, 50)));
        // A count from zero in a later epoch starts from what was recorded
        // (here more than the gateway counted: the node saw more).
        let (c, t) = c.fold((9, 60), true, &[(10, totals(3, 1, 2))]);
        assert_eq!(
            c,
            GatewayCount {
                epoch: 10,
                base_up: 9,
                base_down: 60
            }
        );
        assert_eq!(t, totals(3, 10, 62));
        // A replay of the epoch, or a late report of an earlier one, adds
        // nothing; the current one grows.
        let (c2, t) = c.fold(
            (10, 62),
            true,
            &[(0, totals(4, 99, 99)), (10, totals(1, 1, 2))],
        );
        assert_eq!((c2, t), (c, totals(4, 10, 62)));
        let (c2, t) = c.fold((10, 62), true, &[(10, totals(5, 4, 2))]);
        assert_eq!((c2, t), (c, totals(5, 13, 62)));
        // Two counts in one pass: the first's last totals go into the base.
        let (c3, t) = c.fold(
            (10, 62),
            true,
            &[(10, totals(6, 5, 8)), (20, totals(7, 1, 1))],
        );
        assert_eq!(
            c3,
            GatewayCount {
                epoch: 20,
                base_up: 14,
                base_down: 68
            }
        );
        assert_eq!(t, totals(7, 15, 69));
    }

    fn node(epoch: i64, up: i64, down: i64) -> NodeTotals {
        NodeTotals { epoch, up, down }
    }

    #[test]
    fn a_node_count_adds_epochs_and_ignores_replays_and_the_past() {
        let c = NodeCount::default()
            .fold(node(10, 100, 1_000))
            .fold(node(10, 90, 1_100));
        assert_eq!((c.epoch, c.up, c.down), (10, 100, 1_100));
        // The node restarted: the new epoch counts on top.
        let c = c.fold(node(20, 5, 50));
        assert_eq!(
            c,
            NodeCount {
                epoch: 20,
                base_up: 100,
                base_down: 1_100,
                up: 105,
                down: 1_150
            }
        );
        // A replay of either epoch changes nothing; the current one grows.
        assert_eq!(c.fold(node(10, 500, 5_000)), c);
        assert_eq!(c.fold(node(20, 5, 50)), c);
        assert_eq!(c.fold(node(20, 6, 50)).up, 106);
    }

    #[test]
    fn the_grant_bounds_the_total_across_passes_not_only_within_one() {
        let cap = Some(1_000);
        // The node wrote 900 down (TCP the gateway stopped reading) while
        // the gateway had moved 50 each way: recorded, within the grant.
        assert_eq!(
            within_grant(cap, (0, 0), totals(1, 50, 50), 50, 900),
            (50, 900)
        );
        // The gateway then spends the rest of the grant both ways (UDP,
        // which the node does not see): the total stays at the grant.
        assert_eq!(
            within_grant(cap, (50, 900), totals(2, 500, 500), 450, 0),
            (50, 0)
        );
        // The cut takes the download's increase first.
        assert_eq!(
            within_grant(cap, (50, 900), totals(2, 0, 0), 30, 40),
            (30, 20)
        );
        // A larger grant (or the gateway's own count past it) leaves room.
        let more = Some(2_000);
        assert_eq!(
            within_grant(more, (50, 900), totals(3, 1_100, 900), 1_050, 0),
            (1_050, 0)
        );
        // Without a cap (an unlimited plan) nothing is cut.
        assert_eq!(within_grant(None, (50, 900), totals(4, 0, 0), 7, 9), (7, 9));
    }
}
