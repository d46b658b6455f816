//! Usage reports: per-session *cumulative* byte totals with a sequence
//! number (so replays and reordering never double count), and the close
//! orders the control plane answers with.

use serde::{Deserialize, Serialize};

/// Most session totals one report may carry.
pub const MAX_BATCH: usize = 10_000;

/// One session's cumulative totals.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionTotals {
    /// The session (from assign-outline).
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub session_id: String,
    /// Increasing per session; later reports carry larger numbers.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub seq: i64,
    /// Cumulative bytes from the client since the session started.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_up: i64,
    /// Cumulative bytes to the client since the session started.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_down: i64,
    /// The count the totals belong to: a gateway that starts counting a
    /// session from zero again (it restarted without its spool, or forgot
    /// the session and met it again) takes a larger one, and its totals
    /// then add to what was recorded before instead of having to pass it.
    /// Totals of an earlier count than the latest one seen are ignored.
    /// 0 (the default) for gateways that do not say, and not sent then (a
    /// control plane of an earlier release refuses the field).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub epoch: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A session the gateway must close, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloseOrder {
    /// The session.
    pub session_id: String,
    /// Why (a session end reason).
    pub reason: String,
}

/// Body of usage/report.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// Cumulative totals per session (at most 10,000).
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub reports: Vec<SessionTotals>,
}

/// Answer of usage/report.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReportResponse {
    /// Totals received (stored; none is lost from here on).
    pub accepted: usize,
    /// Whether the totals were already applied to sessions and accounts when
    /// this answer was written. Under load they are stored first and merged
    /// into a later pass, within seconds.
    #[serde(default)]
    pub applied: bool,
    /// Totals that added bytes (the rest were replays or older); 0 while not
    /// applied.
    pub counted: usize,
    /// Sessions the gateway must close now: ended already, or whose owner
    /// used up the allowance with this report (when applied).
    pub close_sessions: Vec<CloseOrder>,
}
