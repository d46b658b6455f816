//! Heartbeats of gateways and nodes, and the configuration a node fetches.

use serde::{Deserialize, Serialize};

use crate::{CloseOrder, Secret};

/// What a gateway reports.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GatewayBeat {
    /// Software version (1 to 64 characters, no control characters).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub version: Option<String>,
    /// Open tunnels (WebSockets).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub open_tunnels: i32,
    /// Sessions with tunnels open on this gateway.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000, format = "uuid"))]
    pub open_sessions: Vec<String>,
    /// Outline nodes the gateway failed to reach since its last heartbeat.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000, format = "uuid"))]
    pub unreachable_nodes: Vec<String>,
    /// Outline nodes the gateway reached since its last heartbeat.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1000, format = "uuid"))]
    pub reachable_nodes: Vec<String>,
}

/// What an Outline node reports.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OutlineBeat {
    /// Software version (1 to 64 characters, no control characters).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub version: Option<String>,
    /// Open client connections.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub load: i32,
    /// Bytes received since the node started.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_in: i64,
    /// Bytes sent since the node started.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_out: i64,
}

/// Answer of both heartbeats.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// Sessions to close now (always empty for Outline nodes).
    pub close_sessions: Vec<CloseOrder>,
    /// When to send the next heartbeat, in seconds.
    pub heartbeat_interval_secs: i64,
    /// A gateway's public URL as registered (absent for Outline nodes and
    /// from older control planes): the URL subscription links name, which
    /// the gateway's own `--public-url` (the one its access documents
    /// name) should be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// What an Outline node needs to run.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutlineConfig {
    /// The node's id.
    pub node_id: String,
    /// Registered host.
    pub host: String,
    /// Registered port (listen on it).
    pub port: i32,
    /// Shadowsocks cipher.
    pub method: String,
    /// Shadowsocks password.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub secret: Secret,
    /// Region code.
    pub region: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_config_shows_no_key_but_sends_it() {
        let cfg = OutlineConfig {
            node_id: "n1".into(),
            host: "10.0.0.1".into(),
            port: 8388,
            method: "chacha20-ietf-poly1305".into(),
            secret: "the-node-key-42".into(),
            region: "eu".into(),
        };
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(!shown.contains("the-node-key-42"), "{shown}");
        }
        let v = serde_json::to_value(&cfg).expect("json");
        assert_eq!(v["secret"], "the-node-key-42");
    }
}
