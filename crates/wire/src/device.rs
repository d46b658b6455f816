//! Device checks and node assignment: `POST /auth/validate-device`,
//! `POST /auth/device-token`, `POST /nodes/assign-outline`.

use serde::{Deserialize, Serialize};

use crate::Reason;

/// Body of validate-device and assign-outline.
#[derive(Debug, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// The device's access token (from the tunnel URL): required when a
    /// gateway calls, absent when the device calls with its device JWT.
    #[serde(default)]
    pub device_token: Option<String>,
    /// Instead of `device_token`: the device JWT a client presented to the
    /// gateway as `Authorization: Bearer` (gateways only).
    #[serde(default)]
    pub device_jwt: Option<String>,
    /// assign-outline: the region wanted (default: the gateway's region, or any).
    #[serde(default)]
    pub region: Option<String>,
}

/// A device as machine callers see it.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Device id.
    pub id: String,
    /// Owner's id.
    pub user_id: String,
    /// Name.
    pub name: String,
    /// active or revoked.
    pub status: String,
}

/// A subscription as machine callers see it.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriptionInfo {
    /// Subscription id.
    pub id: String,
    /// Stored status.
    pub status: String,
    /// Expiry (UTC).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Bytes used in the current period.
    pub traffic_used_bytes: i64,
    /// Allowance in bytes; null is unlimited.
    pub traffic_limit_bytes: Option<i64>,
}

/// Answer of validate-device.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ValidateDeviceResponse {
    /// Whether the device may connect now.
    pub valid: bool,
    /// Why not, when not.
    pub reason: Option<Reason>,
    /// The device, when known.
    pub device: Option<DeviceInfo>,
    /// The owner's current subscription, when any.
    pub subscription: Option<SubscriptionInfo>,
}

/// Answer of device-token.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceTokenResponse {
    /// A short-lived device JWT (audience `httvps:device`).
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
}

/// Answer of assign-outline.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignResponse {
    /// The session to report usage for.
    pub session_id: String,
    /// The node's address: only to gateways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The node's port: only to gateways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// The node's id: only to gateways (to report it unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The gateway to connect through: only to clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// Shadowsocks cipher.
    pub method: String,
    /// Shadowsocks password.
    pub password: String,
    /// Region code.
    pub region: String,
    /// Whether the key is the region's pool key (any node of the region fits).
    pub pool_key: bool,
    /// When the subscription runs out (UTC): a gateway trusts this answer
    /// no longer than that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<chrono::DateTime<chrono::Utc>>,
}
