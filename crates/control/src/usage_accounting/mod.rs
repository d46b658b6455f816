//! The usage ledger. Gateways report per-session *cumulative* byte totals
//! with a sequence number. A report is checked (every session exists and
//! belongs to the reporting gateway) and stored as one row of the usage
//! inbox; the applier then merges pending rows (per session the largest
//! totals win, so several reports of one session cost one update) and applies
//! only the increase over what is stored to the session, the ledger and the
//! subscription. Applying a row twice changes nothing, so replays,
//! reordering, concurrent duplicates and a crash between applying and
//! deleting a row never double count.
//!
//! The applier is idle most of the time: then a report waits for the pass
//! that applies it and its answer says what it counted and which sessions
//! ran out of allowance. Under load, reports are answered once stored and
//! merged by the next pass; the more pile up, the more they merge, so the
//! database does one update per active session per pass, not per report.
//!
//! Along its seams: [`inbox`] receives and stores reports; [`plan`] decides,
//! without I/O, what a pass changes (merge, deltas, hour rollover, charges);
//! [`statements`] holds the SQL, once per dialect; [`apply`] runs a pass;
//! [`applier`] schedules passes and answers waiting reports; [`sweeper`]
//! moves finished hours to the ledger and resets periods by the clock;
//! [`grants`] sizes quota grants (pure) and [`grant_store`] stores them.
//! [`witness`] takes the node's per-connection totals as a second witness
//! (the larger of the two counts, see its rule). [`allowance`] is the
//! operator's hand on one subscription: its allowance, a new period.

pub mod allowance;
pub mod applier;
pub mod apply;
pub mod bounds;
pub mod counts;
pub mod grant_store;
pub mod grants;
pub mod inbox;
pub mod plan;
pub mod quota;
pub mod statements;
pub mod sweeper;
pub mod witness;

use httvps_wire::CloseOrder;

pub use applier::{APPLY_WAIT, Applier};
pub use apply::apply_pending;
pub use inbox::receive;

/// The length of a monthly traffic period, as the charge statement binds it.
fn subscriptions_period_days() -> i32 {
    i32::try_from(crate::subscriptions::PERIOD_DAYS).unwrap_or(30)
}

/// A stored report.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Its inbox row (none for an empty report).
    pub id: Option<i64>,
    /// Totals it carried.
    pub accepted: usize,
    /// Reported sessions that have already ended.
    pub close: Vec<CloseOrder>,
}

/// What a pass of the applier did for one inbox row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowOutcome {
    /// Totals of the row that added bytes (the rest were replays, older, or
    /// overtaken by a later report in the same pass).
    pub counted: usize,
    /// Sessions of the row that ended in this pass: their owner used up the
    /// allowance.
    pub close: Vec<CloseOrder>,
}

/// What one pass of the applier did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// The inbox rows applied, in id order.
    pub ids: Vec<i64>,
    /// What the wanted rows did.
    pub outcomes: Vec<(i64, RowOutcome)>,
    /// Session totals the rows held.
    pub totals: usize,
    /// Distinct sessions they merged into.
    pub sessions: usize,
    /// Sessions ended because their owner used up the allowance.
    pub quota_closed: usize,
}
