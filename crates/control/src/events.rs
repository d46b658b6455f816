//! Live events: node events (for dashboards and clients) and access
//! events (for gateways, which drop cached validations at once). On
//! PostgreSQL they travel through NOTIFY, so every replica's subscribers see
//! changes made on any replica; on SQLite (one process) they stay in process.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::db::{Db, DbPool};
pub use httvps_wire::events::AccessEvent;

/// The NOTIFY channel of node events.
pub const CHANNEL: &str = "httvps_node_events";

/// The NOTIFY channel of access events.
pub const ACCESS_CHANNEL: &str = "httvps_access_events";

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

/// Publishes and fans out node and access events.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<NodeEvent>,
    access_tx: broadcast::Sender<AccessEvent>,
    db: Db,
}

impl Events {
    /// A broker publishing through `db` (NOTIFY on PostgreSQL).
    pub fn new(db: Db) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let (access_tx, _) = broadcast::channel(1024);
        Events { tx, access_tx, db }
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

    /// Publishes a node event to every replica. Failures are logged: events
    /// are advisory, the database stays the truth.
    pub async fn publish(&self, event: NodeEvent) {
        if let DbPool::Sqlite(_) = &self.db.pool {
            let _ = self.tx.send(event);
            return;
        }
        self.notify(CHANNEL, &event).await;
    }

    /// Publishes an access event to every replica. Failures are logged:
    /// gateways also learn of closures from their heartbeats.
    pub async fn access_changed(&self, event: AccessEvent) {
        if let DbPool::Sqlite(_) = &self.db.pool {
            let _ = self.access_tx.send(event);
            return;
        }
        self.notify(ACCESS_CHANNEL, &event).await;
    }

    async fn notify(&self, channel: &str, event: &impl serde::Serialize) {
        let DbPool::Pg(pool) = &self.db.pool else {
            return;
        };
        let payload = match serde_json::to_string(event) {
            Ok(p) => p,
            Err(e) => return tracing::warn!(error = %e, "encoding an event"),
        };
        let sent = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<diesel::sql_types::Text, _>(channel)
                .bind::<diesel::sql_types::Text, _>(payload)
                .execute(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, channel, "publishing an event");
        }
    }

    /// On PostgreSQL, listens on a dedicated connection (not a pooled one:
    /// transaction poolers drop LISTEN) and forwards to local subscribers,
    /// reconnecting after failures. Returns once the first LISTEN is in place.
    pub async fn start_listener(&self, url: &str) {
        let tx = self.tx.clone();
        let access_tx = self.access_tx.clone();
        let url = url.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match AsyncPgConnection::establish(&url).await {
                    Ok(mut conn) => {
                        if let Err(e) = conn
                            .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {ACCESS_CHANNEL}"))
                            .await
                        {
                            tracing::warn!(error = %e, "LISTEN failed");
                        } else {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                            let mut stream = std::pin::pin!(conn.notifications_stream());
                            while let Some(n) = stream.next().await {
                                match n {
                                    Ok(n) if n.channel == ACCESS_CHANNEL => {
                                        match serde_json::from_str::<AccessEvent>(&n.payload) {
                                            Ok(ev) => {
                                                let _ = access_tx.send(ev);
                                            }
                                            Err(e) => {
                                                tracing::warn!(error = %e, "undecodable event")
                                            }
                                        }
                                    }
                                    Ok(n) => match serde_json::from_str::<NodeEvent>(&n.payload) {
                                        Ok(ev) => {
                                            let _ = tx.send(ev);
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "undecodable node event")
                                        }
                                    },
                                    Err(e) => {
                                        tracing::warn!(error = %e, "event listener");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "event listener cannot connect"),
                }
                if let Some(r) = ready.take() {
                    // Don't hold start-up hostage to the listener.
                    let _ = r.send(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    }
}
