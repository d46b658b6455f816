//! The access-event stream a gateway follows
//! (`GET /api/v1/gateway/access-events`, newline-delimited JSON): a `hello`
//! line at once, an `access` line whenever someone's right to connect
//! shrinks, a `keepalive` line now and then, and `lagged` when the server
//! dropped events for a slow reader.

use serde::{Deserialize, Serialize};

/// Someone's right to connect shrank (device revoked or its token rotated,
/// account disabled, subscription cancelled or replaced, quota used up), or
/// where one may connect did (an Outline node drained, disabled or deleted).
/// Gateways forget every cached validation when they hear one and ask the
/// control plane which of their open sessions to close.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessEvent {
    /// Always `access`.
    pub kind: String,
    /// What changed (`device_revoked`, `user_disabled`, ...).
    pub reason: String,
    /// The account concerned.
    pub user_id: Option<String>,
    /// When it happened (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

impl AccessEvent {
    /// An access event about `user_id`.
    pub fn new(reason: &str, user_id: Option<&str>) -> Self {
        AccessEvent {
            kind: "access".into(),
            reason: reason.into(),
            user_id: user_id.map(str::to_owned),
            at: chrono::Utc::now(),
        }
    }
}

/// The first line of the stream.
pub const HELLO_LINE: &str = r#"{"kind":"hello"}"#;
/// The line that says the stream is alive.
pub const KEEPALIVE_LINE: &str = r#"{"kind":"keepalive"}"#;
/// The line that says events were dropped for a slow reader.
pub const LAGGED_LINE: &str = r#"{"kind":"lagged"}"#;

/// Whether a line of the stream asks a gateway to drop its validations:
/// anything but `hello` and `keepalive`, including lines not understood
/// (missing an event is worse than dropping a cache).
pub fn is_access_change(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Line {
        kind: String,
    }
    !matches!(
        serde_json::from_slice::<Line>(line),
        Ok(Line { kind }) if kind == "hello" || kind == "keepalive"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_keepalive_change_nothing_everything_else_does() {
        assert!(!is_access_change(HELLO_LINE.as_bytes()));
        assert!(!is_access_change(KEEPALIVE_LINE.as_bytes()));
        assert!(is_access_change(LAGGED_LINE.as_bytes()));
        let ev = serde_json::to_vec(&AccessEvent::new("device_revoked", Some("u"))).expect("json");
        assert!(is_access_change(&ev));
        assert!(is_access_change(b"not json"));
        assert!(is_access_change(br#"{"kind":"something new"}"#));
    }
}
