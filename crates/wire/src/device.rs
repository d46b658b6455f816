//! Device checks and node assignment: `POST /auth/validate-device`,
//! `POST /auth/device-token`, `POST /nodes/assign-outline`.

use serde::{Deserialize, Serialize};

use crate::{Reason, Secret};

/// Body of validate-device and assign-outline.
#[derive(Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// The device's access token (from the tunnel URL): required when a
    /// gateway calls, absent when the device calls with its device JWT.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub device_token: Option<String>,
    /// Instead of `device_token`: the device JWT a client presented to the
    /// gateway as `Authorization: Bearer` (gateways only).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub device_jwt: Option<String>,
    /// assign-outline: the region wanted (default: the calling gateway's
    /// region; for a device asking itself, the region of its open session,
    /// else the first active gateway's region).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 32, pattern = r"^\s*[A-Za-z0-9_-]+\s*$")
    )]
    pub region: Option<String>,
}

/// Longest credential (`device_token`, `device_jwt`) a [`DeviceRequest`]
/// may carry, in characters, as its schema says.
pub const MAX_CREDENTIAL_LEN: usize = 4096;

impl DeviceRequest {
    /// The name of a credential longer than [`MAX_CREDENTIAL_LEN`], if one
    /// is.
    pub fn too_long(&self) -> Option<&'static str> {
        let long = |c: &Option<String>| {
            c.as_deref().is_some_and(|t| {
                t.len() > MAX_CREDENTIAL_LEN && t.chars().count() > MAX_CREDENTIAL_LEN
            })
        };
        if long(&self.device_token) {
            Some("device_token")
        } else if long(&self.device_jwt) {
            Some("device_jwt")
        } else {
            None
        }
    }
}

/// Shows whether the credentials are there, never what they are.
impl std::fmt::Debug for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |c: &Option<String>| c.as_ref().map(|_| crate::secret::REDACTED);
        f.debug_struct("DeviceRequest")
            .field("device_token", &shown(&self.device_token))
            .field("device_jwt", &shown(&self.device_jwt))
            .field("region", &self.region)
            .finish()
    }
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
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub token: Secret,
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
    /// The device's id: only to gateways, which count a device's tunnels
    /// together whatever credential each one presents (its access token or
    /// any of its device JWTs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The gateway to connect through: only to clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// Shadowsocks cipher.
    pub method: String,
    /// Shadowsocks password.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub password: Secret,
    /// Region code.
    pub region: String,
    /// Whether the key is the region's pool key (any node of the region fits).
    pub pool_key: bool,
    /// When the subscription runs out (UTC): a gateway trusts this answer
    /// no longer than that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "node-pool-key-0123456789";
    const TOKEN: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkIn0.c2lnbmF0dXJl";

    fn assignment() -> AssignResponse {
        AssignResponse {
            session_id: "s1".into(),
            host: Some("10.0.0.1".into()),
            port: Some(8388),
            node_id: Some("n1".into()),
            device_id: Some("d1".into()),
            gateway_url: None,
            method: "aes-256-gcm".into(),
            password: KEY.into(),
            region: "eu".into(),
            pool_key: true,
            valid_until: None,
        }
    }

    #[test]
    fn debug_shows_no_credential_or_key() {
        let shown = [
            format!("{:?}", assignment()),
            format!("{:#?}", assignment()),
            format!(
                "{:?}",
                DeviceTokenResponse {
                    token: JWT.into(),
                    expires_in: 900,
                }
            ),
            format!(
                "{:?}",
                DeviceRequest {
                    device_token: Some(TOKEN.into()),
                    device_jwt: Some(JWT.into()),
                    region: Some("eu".into()),
                }
            ),
        ];
        for s in shown {
            for secret in [KEY, TOKEN, JWT] {
                assert!(!s.contains(secret), "{s}");
            }
        }
    }

    #[test]
    fn the_json_is_that_of_plain_strings() {
        let v = serde_json::to_value(assignment()).expect("json");
        assert_eq!(v["password"], KEY);
        assert_eq!(v["device_id"], "d1");
        let back: AssignResponse = serde_json::from_value(v).expect("back");
        assert_eq!(back.password.expose(), KEY);
        // An answer without the device (an older control plane) still reads.
        let mut old = serde_json::to_value(assignment()).expect("json");
        old.as_object_mut().map(|o| o.remove("device_id"));
        let back: AssignResponse = serde_json::from_value(old).expect("old answer");
        assert_eq!(back.device_id, None);
        let mut none = assignment();
        none.device_id = None;
        let v = serde_json::to_value(none).expect("json");
        assert!(v.get("device_id").is_none(), "skipped when absent: {v}");
        let t = serde_json::to_value(DeviceTokenResponse {
            token: JWT.into(),
            expires_in: 900,
        })
        .expect("json");
        assert_eq!(t, serde_json::json!({"token": JWT, "expires_in": 900}));
    }
}
