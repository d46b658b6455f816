//! The JSON error envelope: `{"error": {"code", "message", "reason"?, "request_id"?}}`.

/// The JSON error envelope of every REST route.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code (`BAD_REQUEST`, `NOT_FOUND`, …).
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// Set when a device is refused (a device reason) or the control plane
    /// cannot answer now (`database_unavailable`, `no_node_available`):
    /// the stable reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set on internal errors: quote it when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
