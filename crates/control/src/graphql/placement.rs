//! Where a device's tunnels run, as its owner may see it.

use async_graphql::SimpleObject;
use uuid::Uuid;

use crate::sessions::Placement;

/// The device's open session, as its owner may see it (no node address or key).
#[derive(SimpleObject, Debug, Clone)]
pub struct DevicePlacement {
    /// The open session.
    pub session_id: Uuid,
    /// Region code.
    pub region: String,
    /// Region display name.
    pub region_name: String,
    /// The node carrying it.
    pub node_id: Uuid,
    /// The node's name.
    pub node_name: String,
    /// unknown, up or down (as in NodeEvent.health).
    pub node_health: String,
    /// When the session opened (UTC).
    pub since: chrono::DateTime<chrono::Utc>,
}

impl From<Placement> for DevicePlacement {
    fn from(p: Placement) -> Self {
        DevicePlacement {
            session_id: p.session_id.uuid(),
            region: p.region,
            region_name: p.region_name,
            node_id: p.node_id.uuid(),
            node_name: p.node_name,
            node_health: p.node_health.as_str().to_owned(),
            since: p.since.and_utc(),
        }
    }
}
