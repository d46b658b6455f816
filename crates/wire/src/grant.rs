//! Quota grants (credit control, like 3GPP Gy "granted units"): the
//! gateway asks for a slice of a subscription's remaining allowance for
//! one session, counts the session's bytes against it locally and asks
//! again before it runs out; what it did not use returns as its totals
//! are reported, and when it says the session is over.

use serde::{Deserialize, Serialize};

use crate::Reason;

/// Body of quota/grant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The session (from assign-outline), of the calling gateway.
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub session_id: String,
    /// Bytes both ways the gateway counted for the session so far
    /// (cumulative, as usage reports carry them: up plus down).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub used: i64,
    /// Bytes the gateway would like on top of `used` (a hint: the answer
    /// may give less).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub want: i64,
    /// The session has no tunnel left: return what `used` did not spend.
    #[serde(default)]
    pub release: bool,
    /// The gateway counts the session afresh: this is its first question
    /// about it since it started (its count restored from its spool, which
    /// may lag what it let through before a crash) or since it forgot the
    /// session. Whatever an earlier grant of the session let through is
    /// then taken as spent, up to that grant's limit, so the allowance
    /// holds across the gateway's restart. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub afresh: bool,
}

/// Answer of quota/grant.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantResponse {
    /// The session.
    pub session_id: String,
    /// The session's cumulative bytes (up plus down) the gateway may let
    /// through; `null`: no allowance to count against (an unlimited plan).
    /// Equal to `used` when nothing more is granted.
    pub limit: Option<i64>,
    /// How long the grant holds, in milliseconds (never past the
    /// subscription's end nor its traffic period's). After that the
    /// gateway asks again before letting more bytes through.
    pub valid_ms: i64,
    /// Why nothing more was granted, when that is the case.
    pub reason: Option<Reason>,
    /// The session's share of what the subscription's allowance had left
    /// beyond this grant when it was made (not held by other sessions'
    /// grants nor charged; all of it for a lone session, part of it each
    /// when the owner has several devices or sessions): while the
    /// control plane cannot be asked, the gateway lets the session move at
    /// most `limit` plus this. Left out for an unlimited plan, and by
    /// control planes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub left: Option<i64>,
    /// The session has ended (an admin closed it, say), whatever `reason`
    /// says: the gateway routes the device afresh (a new session, if it
    /// may have one). Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}
