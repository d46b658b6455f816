//! Live events: node events (for dashboards and clients) and access
//! events (for gateways, which drop cached validations at once).
//!
//! A use case never publishes an event itself: it puts what its change
//! implies in the [`Outbox`] of its transaction (see
//! [`db_tx!`](crate::db_tx)), so the event exists exactly when the change
//! does. On PostgreSQL the outbox becomes `pg_notify` calls on the
//! transaction's own connection (delivered at commit, dropped on rollback),
//! and every replica's listener fans them out; on SQLite (one process) it is
//! broadcast here after a successful commit.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::feed::{DeviceChange, QuotaEvent, SessionEvent};
use crate::ids::{SessionId, UserId};
pub use httvps_wire::events::AccessEvent;

/// The NOTIFY channel of node events.
pub const CHANNEL: &str = "httvps_node_events";

/// The NOTIFY channel of access events.
pub const ACCESS_CHANNEL: &str = "httvps_access_events";

/// The NOTIFY channel of session events (the admin feed).
pub const SESSION_CHANNEL: &str = "httvps_session_events";

/// The NOTIFY channel of quota events (the admin feed).
pub const QUOTA_CHANNEL: &str = "httvps_quota_events";

/// The NOTIFY channel of device changes (owners' live views).
pub const DEVICE_CHANNEL: &str = "httvps_device_events";
/// The NOTIFY channel of account events.
pub const ACCOUNT_CHANNEL: &str = "httvps_account_events";

/// Most sessions one regrant event lists: a NOTIFY payload must stay under
/// 8,000 bytes, and a session id takes 39 of them in the list.
pub const REGRANT_PER_EVENT: usize = 100;

/// An account's sign-in credentials changed (log-out, password or role
/// change, a refresh family revoked, enabled or disabled): live sockets
/// signed in as it check their token again. Not sent to gateways (tunnels
/// do not depend on these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountEvent {
    /// The account.
    pub user_id: String,
}

/// What happened to a node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum NodeEventKind {
    /// Registered.
    Registered,
    /// Healthy again (heartbeat or reachable).
    Up,
    /// Missed its lease or unreachable.
    Down,
    /// Set to draining: no new sessions.
    Draining,
    /// Set to active.
    Active,
    /// Set to disabled.
    Disabled,
    /// Load changed (heartbeat).
    Load,
    /// Its name, address or capacity (an Outline node), or its name or
    /// public URL (a gateway), changed.
    Updated,
    /// Deleted.
    Deleted,
}

/// Which kind of node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum NodeKind {
    /// A Shadowsocks node of the pool.
    Outline,
    /// A TLS/WebSocket gateway.
    Gateway,
}

/// One node event.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, async_graphql::SimpleObject,
)]
#[serde(rename_all = "camelCase")]
pub struct NodeEvent {
    /// The node's id.
    pub node_id: String,
    /// Outline node or gateway.
    pub node_kind: NodeKind,
    /// Code of the node's region.
    pub region: String,
    /// What happened.
    pub kind: NodeEventKind,
    /// Admin status after the event: active, draining or disabled.
    pub status: String,
    /// Health after the event: unknown, up or down.
    pub health: String,
    /// Open tunnels or connections.
    pub load: i32,
    /// Capacity (0 for gateways).
    pub capacity: i32,
    /// When it happened (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Why someone's right to connect changed (the `reason` of an access event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessChange {
    /// A device was revoked.
    DeviceRevoked,
    /// A device's token was replaced.
    DeviceTokenRotated,
    /// An account was disabled.
    UserDisabled,
    /// A new subscription replaced the one before (it may allow less).
    SubscriptionReplaced,
    /// A subscription was extended (gateways may hold a cached refusal).
    SubscriptionExtended,
    /// A subscription was cancelled.
    SubscriptionCancelled,
    /// Subscriptions reached their expiry.
    SubscriptionExpired,
    /// Accounts used up their allowance.
    QuotaExceeded,
    /// An Outline node was drained, disabled or deleted: the answers
    /// gateways keep that route to it are asked again.
    NodeWithdrawn,
    /// A subscription's allowance shrank without being used up: gateways
    /// ask for its open sessions' grants again.
    AllowanceLowered,
    /// An admin ended a session: gateways close its tunnels and forget
    /// the answer that routed its device to it.
    SessionClosed,
    /// Devices of an account went beyond its device limit or came back
    /// within it.
    DeviceLimit,
}

impl AccessChange {
    /// The text gateways see.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessChange::DeviceRevoked => "device_revoked",
            AccessChange::DeviceTokenRotated => "device_token_rotated",
            AccessChange::UserDisabled => "user_disabled",
            AccessChange::SubscriptionReplaced => "subscription_replaced",
            AccessChange::SubscriptionExtended => "subscription_extended",
            AccessChange::SubscriptionCancelled => "subscription_cancelled",
            AccessChange::SubscriptionExpired => "subscription_expired",
            AccessChange::QuotaExceeded => "quota_exceeded",
            AccessChange::NodeWithdrawn => "node_withdrawn",
            AccessChange::AllowanceLowered => httvps_wire::events::ALLOWANCE_LOWERED,
            AccessChange::SessionClosed => "session_closed",
            AccessChange::DeviceLimit => "device_limit",
        }
    }
}

/// The events one transaction's changes imply, collected while it runs and
/// published only if it commits (see the module documentation).
#[derive(Debug, Default)]
#[must_use = "an outbox holds events until its transaction commits"]
pub struct Outbox {
    node: Vec<NodeEvent>,
    access: Vec<AccessEvent>,
    session: Vec<SessionEvent>,
    quota: Vec<QuotaEvent>,
    device: Vec<DeviceChange>,
    account: Vec<AccountEvent>,
}

impl Outbox {
    /// A node changed.
    pub fn node(&mut self, event: NodeEvent) {
        self.node.push(event);
    }

    /// Someone's right to connect changed (`user`: whose, when one account).
    pub fn access(&mut self, change: AccessChange, user: Option<UserId>) {
        let user = user.map(|u| u.to_string());
        self.access
            .push(AccessEvent::new(change.as_str(), user.as_deref()));
    }

    /// `user`'s allowance shrank: gateways holding one of `sessions` ask
    /// for its grant again (in events of at most [`REGRANT_PER_EVENT`]).
    pub fn regrant(&mut self, user: UserId, sessions: &[SessionId]) {
        let user = user.to_string();
        for chunk in sessions.chunks(REGRANT_PER_EVENT) {
            self.access.push(AccessEvent::regrant(
                Some(&user),
                chunk.iter().map(ToString::to_string).collect(),
            ));
        }
    }

    /// The Outline node `node` takes no more new tunnels (drained, disabled
    /// or deleted): gateways drop the answers routing to it.
    pub fn node_withdrawn(&mut self, node: &str) {
        self.access.push(AccessEvent::node(
            AccessChange::NodeWithdrawn.as_str(),
            node,
        ));
    }

    /// Sessions opened or closed.
    pub fn sessions(&mut self, events: impl IntoIterator<Item = SessionEvent>) {
        self.session.extend(events);
    }

    /// A subscription reached its allowance or started a new period.
    pub fn quota(&mut self, event: QuotaEvent) {
        self.quota.push(event);
    }

    /// A device was revoked, rotated or renamed.
    pub fn device(&mut self, change: DeviceChange) {
        self.device.push(change);
    }

    /// `user`'s sign-in credentials changed.
    pub fn account(&mut self, user: UserId) {
        self.account.push(AccountEvent {
            user_id: user.to_string(),
        });
    }

    /// Whether nothing was put in.
    pub fn is_empty(&self) -> bool {
        self.node.is_empty()
            && self.access.is_empty()
            && self.account.is_empty()
            && self.session.is_empty()
            && self.quota.is_empty()
            && self.device.is_empty()
    }

    /// Every event as its channel and JSON payload, in publishing order
    /// (PostgreSQL sends them with `pg_notify` in the transaction, see
    /// [`db::notify`](crate::db::notify)).
    pub fn payloads(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let node = self
            .node
            .iter()
            .map(|e| (CHANNEL, serde_json::to_string(e)));
        let access = self
            .access
            .iter()
            .map(|e| (ACCESS_CHANNEL, serde_json::to_string(e)));
        let session = self
            .session
            .iter()
            .map(|e| (SESSION_CHANNEL, serde_json::to_string(e)));
        let quota = self
            .quota
            .iter()
            .map(|e| (QUOTA_CHANNEL, serde_json::to_string(e)));
        let device = self
            .device
            .iter()
            .map(|e| (DEVICE_CHANNEL, serde_json::to_string(e)));
        let account = self
            .account
            .iter()
            .map(|e| (ACCOUNT_CHANNEL, serde_json::to_string(e)));
        node.chain(access)
            .chain(account)
            .chain(session)
            .chain(quota)
            .chain(device)
            .filter_map(|(channel, json)| match json {
                Ok(json) => Some((channel, json)),
                Err(e) => {
                    tracing::warn!(error = %e, "encoding an event");
                    None
                }
            })
    }
}

/// This process's fan-out of events to its subscribers (GraphQL live
/// operations, gateways' access-event streams).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<NodeEvent>,
    access_tx: broadcast::Sender<AccessEvent>,
    session_tx: broadcast::Sender<SessionEvent>,
    quota_tx: broadcast::Sender<QuotaEvent>,
    device_tx: broadcast::Sender<DeviceChange>,
    account_tx: broadcast::Sender<AccountEvent>,
    /// How many times this process may have missed events: its LISTEN
    /// connection was lost and made again (events published meanwhile, on
    /// other replicas or through other connections, never came).
    gaps: tokio::sync::watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A fan-out with no subscriber yet.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        let (access_tx, _) = broadcast::channel(1024);
        let (session_tx, _) = broadcast::channel(1024);
        let (quota_tx, _) = broadcast::channel(256);
        let (device_tx, _) = broadcast::channel(256);
        let (account_tx, _) = broadcast::channel(1024);
        Events {
            tx,
            access_tx,
            account_tx,
            session_tx,
            quota_tx,
            device_tx,
            gaps: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Receives every node event from now on (slow receivers skip old ones).
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.tx.subscribe()
    }

    /// Receives every access event from now on (a slow receiver learns it
    /// lagged, which gateways treat as an event).
    pub fn subscribe_access(&self) -> broadcast::Receiver<AccessEvent> {
        self.access_tx.subscribe()
    }

    /// Receives every session event from now on (slow receivers skip old ones).
    pub fn subscribe_sessions(&self) -> broadcast::Receiver<SessionEvent> {
        self.session_tx.subscribe()
    }

    /// Receives every quota event from now on (slow receivers skip old ones).
    pub fn subscribe_quota(&self) -> broadcast::Receiver<QuotaEvent> {
        self.quota_tx.subscribe()
    }

    /// Receives every device change from now on (slow receivers skip old ones).
    pub fn subscribe_devices(&self) -> broadcast::Receiver<DeviceChange> {
        self.device_tx.subscribe()
    }

    /// Receives every account event from now on (a slow receiver learns it
    /// lagged, which live sockets treat as an event).
    pub fn subscribe_accounts(&self) -> broadcast::Receiver<AccountEvent> {
        self.account_tx.subscribe()
    }

    /// Changes each time events may have been missed (see [`Events::gap`]):
    /// live operations end then, so their clients read again what they
    /// show and subscribe afresh.
    pub fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gaps.subscribe()
    }

    /// Events may have been missed (the listener's connection was made
    /// again): access-event subscribers get a `missed` event, every other
    /// subscriber hears of it through [`Events::gaps`].
    pub fn gap(&self, why: &str) {
        let _ = self.access_tx.send(AccessEvent::missed(why));
        self.gaps.send_modify(|g| *g += 1);
    }

    /// Hands a committed transaction's events to this process's subscribers
    /// (SQLite; on PostgreSQL the listener does it for every replica).
    pub fn deliver(&self, outbox: Outbox) {
        for e in outbox.node {
            let _ = self.tx.send(e);
        }
        for e in outbox.access {
            let _ = self.access_tx.send(e);
        }
        for e in outbox.session {
            let _ = self.session_tx.send(e);
        }
        for e in outbox.quota {
            let _ = self.quota_tx.send(e);
        }
        for e in outbox.device {
            let _ = self.device_tx.send(e);
        }
        for e in outbox.account {
            let _ = self.account_tx.send(e);
        }
    }

    /// On PostgreSQL, listens on a dedicated connection (not a pooled one:
    /// transaction poolers drop LISTEN) and forwards to local subscribers,
    /// reconnecting after failures. Returns once the first LISTEN is in place.
    pub async fn start_listener(&self, url: &str) {
        let events = self.clone();
        let url = url.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                events.listen_once(&url, &mut ready).await;
                if let Some(r) = ready.take() {
                    // Don't hold start-up hostage to the listener.
                    let _ = r.send(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    }

    /// One connection's worth of listening: returns when it fails.
    /// After a reconnect, local subscribers of access events are told that
    /// events may have been missed meanwhile (gateways then drop what they
    /// cached and ask for their grants again).
    async fn listen_once(&self, url: &str, ready: &mut Option<tokio::sync::oneshot::Sender<()>>) {
        let reconnecting = ready.is_none();
        let mut conn = match crate::pg::connect(url).await {
            Ok(conn) => conn,
            Err(e) => return tracing::warn!(error = %e, "event listener cannot connect"),
        };
        let listen = format!(
            "LISTEN {CHANNEL}; LISTEN {ACCESS_CHANNEL}; LISTEN {ACCOUNT_CHANNEL}; LISTEN {SESSION_CHANNEL}; LISTEN {QUOTA_CHANNEL}; LISTEN {DEVICE_CHANNEL}"
        );
        if let Err(e) = conn.batch_execute(&listen).await {
            return tracing::warn!(error = %e, "LISTEN failed");
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if reconnecting {
            self.gap("listener_reconnected");
        }
        let mut stream = std::pin::pin!(conn.notifications_stream());
        while let Some(n) = stream.next().await {
            let n = match n {
                Ok(n) => n,
                Err(e) => return tracing::warn!(error = %e, "event listener"),
            };
            match n.channel.as_str() {
                ACCOUNT_CHANNEL => forward(&self.account_tx, &n.payload),
                ACCESS_CHANNEL => forward(&self.access_tx, &n.payload),
                SESSION_CHANNEL => forward(&self.session_tx, &n.payload),
                QUOTA_CHANNEL => forward(&self.quota_tx, &n.payload),
                DEVICE_CHANNEL => forward(&self.device_tx, &n.payload),
                _ => forward(&self.tx, &n.payload),
            }
        }
    }
}

/// Decodes one notification's payload and hands it to local subscribers.
fn forward<T: serde::de::DeserializeOwned>(tx: &broadcast::Sender<T>, payload: &str) {
    match serde_json::from_str::<T>(payload) {
        Ok(ev) => {
            let _ = tx.send(ev);
        }
        Err(e) => tracing::warn!(error = %e, "undecodable event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_events_reach_subscribers_once() {
        let events = Events::new();
        let mut access = events.subscribe_access();
        let mut outbox = Outbox::default();
        assert!(outbox.is_empty());
        let user = UserId::random();
        outbox.access(AccessChange::DeviceRevoked, Some(user));
        assert_eq!(outbox.payloads().count(), 1);
        events.deliver(outbox);
        let got = access.try_recv().expect("one event");
        assert_eq!(got.reason, "device_revoked");
        assert_eq!(got.user_id, Some(user.to_string()));
        assert!(access.try_recv().is_err());
    }
}
