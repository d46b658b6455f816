//! The admin feed: sessions opening and closing, subscriptions reaching
//! their allowance, starting a new period or expiring. Use cases put these in the
//! outbox of the transaction that made the change (see
//! [`events`](crate::events)), like node and access events.

use chrono::{DateTime, Utc};

/// Whether a session opened or closed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum SessionEventKind {
    /// A gateway opened it for a device.
    Opened,
    /// It ended (idle, revoked, quota, node down, closed by an admin…).
    Closed,
}

/// A session opened or closed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent {
    /// Opened or closed.
    pub kind: SessionEventKind,
    /// The session.
    pub session_id: uuid::Uuid,
    /// Its device.
    pub device_id: uuid::Uuid,
    /// The device's owner.
    pub user_id: uuid::Uuid,
    /// The owner's email.
    pub user_email: String,
    /// Region code of the Outline node ("" when it has none).
    pub region: String,
    /// The Outline node.
    pub outline_node_id: Option<uuid::Uuid>,
    /// The gateway.
    pub gateway_node_id: Option<uuid::Uuid>,
    /// Why it closed (as `Session.endReason`); `None` when it opened.
    pub end_reason: Option<String>,
    /// Upload total at the event.
    pub bytes_up: i64,
    /// Download total at the event.
    pub bytes_down: i64,
    /// When (UTC).
    pub at: DateTime<Utc>,
}

/// What happened to a subscription's allowance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum QuotaEventKind {
    /// trafficUsedBytes reached trafficLimitBytes: tunnels are closed.
    QuotaReached,
    /// The traffic period started over (MONTHLY plans).
    PeriodReset,
    /// The subscription reached its expiresAt (marked expired by the
    /// sweeper, or by a grant that replaces it first).
    Expired,
}

/// A subscription reached its allowance, started a new period or expired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaEvent {
    /// What happened.
    pub kind: QuotaEventKind,
    /// The subscription.
    pub subscription_id: uuid::Uuid,
    /// Its account.
    pub user_id: uuid::Uuid,
    /// The account's email.
    pub user_email: String,
    /// The allowance (`None`: unlimited).
    pub traffic_limit_bytes: Option<i64>,
    /// Used in the period after the event.
    pub traffic_used_bytes: i64,
    /// When (UTC).
    pub at: DateTime<Utc>,
}

/// What happened to a device, for its owner's live view.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum DeviceEventKind {
    /// Revoked (by its owner or an admin).
    Revoked,
    /// Its access token was replaced.
    Rotated,
    /// Its name changed (by its owner or an admin).
    Renamed,
    /// A session of it opened.
    SessionOpened,
    /// A session of it closed.
    SessionClosed,
    /// It went beyond its owner's device limit, or came back within it
    /// (`Device.overLimit`).
    LimitChanged,
}

/// A device was revoked, rotated or renamed (session changes come as
/// [`SessionEvent`]s).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceChange {
    /// Revoked, rotated or renamed.
    pub kind: DeviceEventKind,
    /// The device.
    pub device_id: uuid::Uuid,
    /// Its owner.
    pub user_id: uuid::Uuid,
    /// When (UTC).
    pub at: DateTime<Utc>,
}

impl DeviceChange {
    /// A change of `device` (owned by `user`) now.
    pub fn now(
        kind: DeviceEventKind,
        device: crate::ids::DeviceId,
        user: crate::ids::UserId,
    ) -> Self {
        DeviceChange {
            kind,
            device_id: device.uuid(),
            user_id: user.uuid(),
            at: Utc::now(),
        }
    }
}

/// One row of [`session_rows!`](crate::session_rows): what a session event
/// says, read in the transaction that opened or ended the session.
pub type SessionRow = (
    crate::ids::SessionId,
    crate::ids::DeviceId,
    crate::ids::UserId,
    String,
    Option<String>,
    Option<crate::ids::OutlineNodeId>,
    Option<crate::ids::GatewayNodeId>,
    Option<crate::status::EndReason>,
    i64,
    i64,
);

/// Turns rows read by [`session_rows!`](crate::session_rows) into events
/// of `kind` at `at`.
pub fn session_events(
    kind: SessionEventKind,
    rows: Vec<SessionRow>,
    at: chrono::NaiveDateTime,
) -> Vec<SessionEvent> {
    rows.into_iter()
        .map(
            |(session, device, user, email, region, node, gateway, reason, up, down)| {
                SessionEvent {
                    kind,
                    session_id: session.uuid(),
                    device_id: device.uuid(),
                    user_id: user.uuid(),
                    user_email: email,
                    region: region.unwrap_or_default(),
                    outline_node_id: node.map(|n| n.uuid()),
                    gateway_node_id: gateway.map(|g| g.uuid()),
                    end_reason: reason.map(|r| r.as_str().to_owned()),
                    bytes_up: up,
                    bytes_down: down,
                    at: at.and_utc(),
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, SessionId, UserId};
    use crate::status::EndReason;

    #[test]
    fn rows_become_events_with_their_kind_and_reason() {
        let at = chrono::Utc::now().naive_utc();
        let (s, d, u) = (SessionId::random(), DeviceId::random(), UserId::random());
        let row = (
            s,
            d,
            u,
            "a@example.com".to_owned(),
            None,
            None,
            None,
            Some(EndReason::Idle),
            5,
            7,
        );
        let ev = session_events(SessionEventKind::Closed, vec![row], at);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].session_id, s.uuid());
        assert_eq!(ev[0].region, "", "no node: no region");
        assert_eq!(ev[0].end_reason.as_deref(), Some("idle"));
        assert_eq!((ev[0].bytes_up, ev[0].bytes_down), (5, 7));
        let json = serde_json::to_string(&ev[0]).expect("encode");
        let back: SessionEvent = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, ev[0]);
    }
}
