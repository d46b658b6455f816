//! The second witness of usage: gateways say which of their connections to
//! a node (by its local address) carries which session; a node counts every
//! connection it serves, learns from the control plane which session each
//! connection carries (by its peer address, the gateway's local one), and
//! from then on reports cumulative totals per session. The control plane
//! takes the larger of the gateway's and the node's count, so a session's
//! usage survives the death of either.

use serde::{Deserialize, Serialize};

/// Most entries one witness report or one links report may carry.
pub const MAX_WITNESS_BATCH: usize = 10_000;

/// Entries (sessions and connections together) a node, or links a
/// gateway, puts in one report: at the
/// longest each entry can be (IPv6 peers, 19-digit counters) that many fit
/// in two thirds of [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES), so no
/// report is ever refused for its size.
pub const WITNESS_CHUNK: usize = 200;

/// A connection the node has not yet learned the session of, with its
/// cumulative totals.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnTotals {
    /// The node's id of the connection, unique on this node across its
    /// restarts.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub conn: i64,
    /// The peer's address and port as the node sees them (`ip:port`).
    pub peer: String,
    /// How long ago the node accepted the connection, in milliseconds: a
    /// link older than that belongs to an earlier connection from the same
    /// address and port.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub age_ms: i64,
    /// Cumulative bytes the node received from the peer.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_up: i64,
    /// Cumulative bytes the node sent to the peer.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_down: i64,
}

/// A session's cumulative totals as the node counted them: the sum over
/// every connection of the session the node served since it began counting
/// the session under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionWitness {
    /// The session.
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub session_id: String,
    /// The node's count of this session: totals of one epoch only grow; a
    /// node that restarts, or forgets a session and meets it again, counts
    /// from zero under a larger epoch, and the control plane adds the new
    /// epoch's totals to what the earlier ones counted.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub epoch: i64,
    /// Cumulative bytes the node received for the session in this epoch.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_up: i64,
    /// Cumulative bytes the node sent for the session in this epoch.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_down: i64,
}

/// Body of `outline/witness`: the node's sessions whose totals changed, and
/// its connections not yet tied to a session.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WitnessReport {
    /// Cumulative totals per session (together with `conns`, at most
    /// 10,000 entries).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub sessions: Vec<SessionWitness>,
    /// Connections whose session the node asks for, with their totals.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub conns: Vec<ConnTotals>,
}

/// A connection and the session it carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnTie {
    /// The node's id of the connection.
    pub conn: i64,
    /// The session a gateway linked the connection's peer to.
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub session_id: String,
}

/// Answer of `outline/witness`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WitnessResponse {
    /// Session totals stored (none is lost from here on).
    pub accepted: usize,
    /// Of the connections asked about, those a gateway has linked: from now
    /// on the node counts them in their session's totals.
    pub ties: Vec<ConnTie>,
}

/// A gateway's connection to a node and the session it carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionLink {
    /// The session (from assign-outline).
    #[cfg_attr(feature = "openapi", schema(format = "uuid"))]
    pub session_id: String,
    /// The gateway's local address and port of the connection (`ip:port`),
    /// which the node sees as its peer.
    pub local: String,
}

/// Body of `usage/links`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionLinks {
    /// New node connections (at most 10,000).
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub links: Vec<SessionLink>,
}

/// Answer of `usage/links`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionLinksResponse {
    /// Links stored.
    pub accepted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_the_longest_entries_fits_the_body_limit() {
        let peer = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535".to_owned();
        let conns = WitnessReport {
            sessions: Vec::new(),
            conns: vec![
                ConnTotals {
                    conn: i64::MAX,
                    peer: peer.clone(),
                    age_ms: i64::MAX,
                    bytes_up: i64::MAX,
                    bytes_down: i64::MAX,
                };
                WITNESS_CHUNK
            ],
        };
        let sessions = WitnessReport {
            sessions: vec![
                SessionWitness {
                    session_id: "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
                    epoch: i64::MAX,
                    bytes_up: i64::MAX,
                    bytes_down: i64::MAX,
                };
                WITNESS_CHUNK
            ],
            conns: Vec::new(),
        };
        let links = SessionLinks {
            links: vec![
                SessionLink {
                    session_id: "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
                    local: peer,
                };
                WITNESS_CHUNK
            ],
        };
        for len in [
            serde_json::to_vec(&conns).expect("json").len(),
            serde_json::to_vec(&sessions).expect("json").len(),
            serde_json::to_vec(&links).expect("json").len(),
        ] {
            assert!(len < crate::MAX_BODY_BYTES * 2 / 3, "{len} bytes");
        }
    }

    #[test]
    fn bodies_refuse_unknown_fields_and_round_trip() {
        let r: WitnessReport = serde_json::from_str(
            r#"{"conns":[{"conn":1,"peer":"127.0.0.1:5000","age_ms":5,"bytes_up":3,"bytes_down":4}]}"#,
        )
        .expect("report");
        assert_eq!(r.conns[0].peer, "127.0.0.1:5000");
        assert!(r.sessions.is_empty(), "either list may be left out");
        assert!(serde_json::from_str::<WitnessReport>(r#"{"conns":[],"x":1}"#).is_err());
        let l = SessionLinks {
            links: vec![SessionLink {
                session_id: "s".into(),
                local: "10.0.0.1:40000".into(),
            }],
        };
        let back: SessionLinks =
            serde_json::from_str(&serde_json::to_string(&l).expect("json")).expect("links");
        assert_eq!(back.links, l.links);
    }
}
