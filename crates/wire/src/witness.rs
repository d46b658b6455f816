//! The second witness of usage: nodes report the cumulative bytes of every
//! connection they serve, keyed by the peer address they see; gateways say
//! which of their connections to a node (by its local address) carries
//! which session. The control plane joins the two, so a session's usage
//! survives the death of either the gateway or the node.

use serde::{Deserialize, Serialize};

/// Most entries one witness report or one links report may carry.
pub const MAX_WITNESS_BATCH: usize = 10_000;

/// Entries a node or a gateway puts in one witness or links report: at the
/// longest each entry can be (IPv6 peers, 19-digit counters) that many fit
/// [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES) with room to spare, so no
/// report is ever refused for its size.
pub const WITNESS_CHUNK: usize = 200;

/// One connection's cumulative totals as the node counted them.
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
    /// Cumulative bytes the node received from the peer.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_up: i64,
    /// Cumulative bytes the node sent to the peer.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub bytes_down: i64,
}

/// Body of `outline/witness`: the node's connections whose totals changed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WitnessReport {
    /// Cumulative totals per connection (at most 10,000).
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub conns: Vec<ConnTotals>,
}

/// Answer of `outline/witness`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WitnessResponse {
    /// Connection totals received (stored; none is lost from here on).
    pub accepted: usize,
    /// Of them, those already tied to a session.
    pub linked: usize,
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
            conns: vec![
                ConnTotals {
                    conn: i64::MAX,
                    peer: peer.clone(),
                    bytes_up: i64::MAX,
                    bytes_down: i64::MAX,
                };
                WITNESS_CHUNK
            ],
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
            serde_json::to_vec(&links).expect("json").len(),
        ] {
            assert!(len < crate::MAX_BODY_BYTES / 2, "{len} bytes");
        }
    }

    #[test]
    fn bodies_refuse_unknown_fields_and_round_trip() {
        let r: WitnessReport = serde_json::from_str(
            r#"{"conns":[{"conn":1,"peer":"127.0.0.1:5000","bytes_up":3,"bytes_down":4}]}"#,
        )
        .expect("report");
        assert_eq!(r.conns[0].peer, "127.0.0.1:5000");
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
