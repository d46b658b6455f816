//! The access-event stream a gateway follows
//! (`GET /api/v1/gateway/access-events`, newline-delimited JSON): a `hello`
//! line at once, an `access` line whenever someone's right to connect
//! shrinks or an Outline node is withdrawn, a `keepalive` line now and
//! then, and `lagged` when the server dropped events for a slow reader.

use serde::{Deserialize, Serialize};

/// Someone's right to connect shrank (device revoked or its token rotated,
/// account disabled, subscription cancelled or replaced, quota used up), or
/// where one may connect did (an Outline node drained, disabled or deleted),
/// or how much one may still move did (an allowance lowered). Gateways
/// forget every cached validation when they hear one and ask the control
/// plane which of their open sessions to close; for a node's withdrawal
/// (`node_id` set) they forget only the validations routing to that node,
/// and for a lowered allowance (`regrant` set) nothing: they ask for the
/// listed sessions' quota grants again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessEvent {
    /// Always `access`.
    pub kind: String,
    /// What changed (`device_revoked`, `user_disabled`, ...).
    pub reason: String,
    /// The account concerned.
    pub user_id: Option<String>,
    /// The Outline node concerned, when the change is only that a node
    /// takes no more new tunnels: only the answers routing to it go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Open sessions whose allowance shrank (it is not used up: that
    /// ends them): a gateway holding one asks for its next quota grant
    /// now instead of when its current one runs low, and keeps its cached
    /// validations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regrant: Vec<String>,
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
            node_id: None,
            regrant: Vec::new(),
            at: chrono::Utc::now(),
        }
    }

    /// An access event asking gateways to ask for the grants of `sessions`
    /// again (`user_id`'s allowance shrank), with the reason
    /// [`ALLOWANCE_LOWERED`].
    pub fn regrant(user_id: Option<&str>, sessions: Vec<String>) -> Self {
        AccessEvent {
            regrant: sessions,
            ..AccessEvent::new(ALLOWANCE_LOWERED, user_id)
        }
    }

    /// The event that says events were missed (a reader too slow, the
    /// control plane's own listener reconnected): kind `lagged`, read as
    /// [`Scope::Missed`].
    pub fn missed(reason: &str) -> Self {
        AccessEvent {
            kind: LAGGED_KIND.into(),
            ..AccessEvent::new(reason, None)
        }
    }

    /// An access event about the Outline node `node_id` only.
    pub fn node(reason: &str, node_id: &str) -> Self {
        AccessEvent {
            node_id: Some(node_id.to_owned()),
            ..AccessEvent::new(reason, None)
        }
    }
}

/// What a line of the stream asks a gateway to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Nothing (`hello`, `keepalive`).
    Nothing,
    /// The answers routing to this Outline node.
    Node(String),
    /// Nothing cached: the grants of these sessions are asked for again.
    Regrant(Vec<String>),
    /// Every answer.
    Everything,
    /// Events were missed: every answer, and every grant is asked for
    /// again (an allowance may have shrunk unseen).
    Missed,
}

/// What a line of the stream asks a gateway to drop: nothing for `hello`
/// and `keepalive`, the answers routing to one node for an access event
/// naming only a node, the grants of the sessions an access event lists to
/// ask again, everything and every grant when events were missed
/// (`lagged`), and everything for anything else, including lines not
/// understood (missing an event is worse than dropping a cache).
pub fn scope(line: &[u8]) -> Scope {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Line {
        kind: String,
        #[serde(default)]
        user_id: Option<String>,
        #[serde(default)]
        node_id: Option<String>,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        regrant: Vec<String>,
    }
    match serde_json::from_slice::<Line>(line) {
        Ok(Line { kind, .. }) if kind == "hello" || kind == "keepalive" => Scope::Nothing,
        Ok(Line { kind, .. }) if kind == LAGGED_KIND => Scope::Missed,
        Ok(Line {
            kind,
            user_id: None,
            node_id: Some(node),
            regrant,
            ..
        }) if kind == "access" && regrant.is_empty() => Scope::Node(node),
        Ok(Line {
            kind,
            reason,
            node_id: None,
            regrant,
            ..
        }) if kind == "access" && reason == ALLOWANCE_LOWERED && !regrant.is_empty() => {
            Scope::Regrant(regrant)
        }
        _ => Scope::Everything,
    }
}

/// The reason of the one access event that lists sessions to ask grants
/// for again ([`AccessEvent::regrant`]).
pub const ALLOWANCE_LOWERED: &str = "allowance_lowered";

/// The first line of the stream.
pub const HELLO_LINE: &str = r#"{"kind":"hello"}"#;
/// The line that says the stream is alive.
pub const KEEPALIVE_LINE: &str = r#"{"kind":"keepalive"}"#;
/// The kind of the line that says events were missed.
pub const LAGGED_KIND: &str = "lagged";
/// The line that says events were dropped for a slow reader.
pub const LAGGED_LINE: &str = r#"{"kind":"lagged"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_keepalive_change_nothing_everything_else_does() {
        assert_eq!(scope(HELLO_LINE.as_bytes()), Scope::Nothing);
        assert_eq!(scope(KEEPALIVE_LINE.as_bytes()), Scope::Nothing);
        assert_eq!(scope(LAGGED_LINE.as_bytes()), Scope::Missed);
        let missed =
            serde_json::to_vec(&AccessEvent::missed("listener_reconnected")).expect("json");
        assert_eq!(scope(&missed), Scope::Missed);
        let ev = serde_json::to_vec(&AccessEvent::new("device_revoked", Some("u"))).expect("json");
        assert_eq!(scope(&ev), Scope::Everything);
        assert_eq!(scope(b"not json"), Scope::Everything);
        assert_eq!(scope(br#"{"kind":"something new"}"#), Scope::Everything);
    }

    #[test]
    fn an_event_listing_sessions_asks_their_grants_again_and_drops_nothing() {
        let ev = AccessEvent::regrant(Some("u"), vec!["s1".into(), "s2".into()]);
        let line = serde_json::to_vec(&ev).expect("json");
        assert_eq!(scope(&line), Scope::Regrant(vec!["s1".into(), "s2".into()]));
        // Without sessions, or naming a node as well: everything.
        let none = serde_json::to_vec(&AccessEvent::regrant(Some("u"), vec![])).expect("json");
        assert!(!String::from_utf8_lossy(&none).contains("regrant"));
        assert_eq!(scope(&none), Scope::Everything);
        assert_eq!(
            scope(br#"{"kind":"access","nodeId":"n1","regrant":["s1"]}"#),
            Scope::Everything
        );
        assert_eq!(
            scope(br#"{"kind":"other","regrant":["s1"]}"#),
            Scope::Everything
        );
    }

    #[test]
    fn an_event_naming_only_a_node_drops_that_nodes_answers() {
        let ev = serde_json::to_vec(&AccessEvent::node("node_status_changed", "n1")).expect("json");
        assert_eq!(scope(&ev), Scope::Node("n1".into()));
        let user =
            serde_json::to_vec(&AccessEvent::new("device_revoked", Some("u"))).expect("json");
        assert!(!String::from_utf8_lossy(&user).contains("nodeId"));
        assert_eq!(scope(&user), Scope::Everything);
        // Anything else naming a node still drops everything.
        assert_eq!(
            scope(br#"{"kind":"access","userId":"u","nodeId":"n1"}"#),
            Scope::Everything
        );
        assert_eq!(
            scope(br#"{"kind":"other","nodeId":"n1"}"#),
            Scope::Everything
        );
        assert_eq!(scope(HELLO_LINE.as_bytes()), Scope::Nothing);
    }
}
