//! The wire contract between httvps's planes: what gateways and nodes send
//! to the control plane's `/api/v1` routes and what they get back. Both
//! planes depend on this crate and on nothing of each other, so a change of
//! the contract is a change here. No storage, no HTTP framework; OpenAPI
//! schemas behind the `openapi` feature.
//!
//! Map of the crate:
//! - [`error`]: the JSON error envelope of every REST answer.
//! - [`reason`]: why a device may not connect, and why the control plane
//!   cannot answer now (stable codes).
//! - [`device`]: validate-device, device-token and assign-outline bodies.
//! - [`enroll`]: the one-time enrollment string and its redemption.
//! - [`usage`]: usage reports (cumulative totals) and close orders.
//! - [`grant`]: quota grants, slices of an allowance counted at the gateway.
//! - [`witness`]: the node's per-connection totals and the gateway's links
//!   of node connections to sessions (the second witness of usage).
//! - [`heartbeat`]: gateway and node heartbeats, the node's configuration.
//! - [`events`]: the access-event stream gateways follow.
//! - [`token`]: the shape of opaque access tokens.
//! - [`source`]: what one source of traffic is, for per-source bounds.
//! - [`secret`]: secrets (node keys, device JWTs) redacted when formatted.
//! - [`head`]: the size of an HTTP/1.1 request head, for its bound.

pub mod device;
pub mod enroll;
pub mod error;
pub mod events;
pub mod grant;
pub mod head;
pub mod heartbeat;
pub mod reason;
pub mod secret;
pub mod source;
pub mod token;
pub mod usage;
pub mod witness;

/// Largest request body the control plane accepts anywhere (GraphQL and
/// REST), in bytes: senders size their batches to fit it.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub use error::{ErrorBody, ErrorDetail};
pub use reason::{Reason, Unavailable};
pub use secret::Secret;
pub use usage::{CloseOrder, SessionTotals};

/// Body of the health route.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthBody {
    /// `ok` or `unavailable`.
    pub status: String,
}
