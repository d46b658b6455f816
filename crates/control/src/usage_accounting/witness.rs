//! The node as a second witness of every session's bytes.
//!
//! A gateway links each connection it opens to a node (its local address
//! and port, which the node sees as the peer) to the session it carries
//! ([`link`]). A node asks for the session of each new connection (by its
//! peer, [`witness`]); the answer ties the connection to the session, and
//! from then on the node counts the connection in the session's totals and
//! reports those, cumulative per session and epoch. A node report is stored
//! like a gateway's, as one inbox row, and the applier merges both in the
//! same pass: the node's witness costs one update per active session per
//! pass, the one the gateway's totals cost anyway, not a write per
//! connection.
//!
//! ## The rule
//!
//! Once the gateway has reported a session, the ledger records the
//! gateway's count (its usage reports, across its epochs): it counts what
//! it let through, UDP included. The node's count (across its epochs: a
//! node that restarts, or forgets a session and meets it again, counts it
//! from zero under a larger epoch, added to what the earlier epochs
//! counted) fills in where the gateway's is lost: a session no gateway
//! reported is recorded as the node counted it, and a gateway counting a
//! session from zero again starts from the larger of what was recorded
//! and the node's count. The node counts TCP only, and what it wrote
//! toward a gateway that stopped reading (a cancelled download, a
//! cut-off): as the record while the gateway reported, it charged bytes
//! nobody relayed and absorbed the gateway's UDP. Totals of one epoch
//! only grow and the applier adds only the increase over what is stored,
//! so replays, reorderings and a witness arriving before or after the
//! gateway count nothing twice. The node's count is taken only as far as
//! the session's quota grant, the most the gateway could let through.
//! [`recorded`](super::plan::recorded) bounds the node's count for one
//! session; [`plan`](super::plan) applies the rule, batched.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use diesel_async::RunQueryDsl;
use httvps_wire::witness::{ConnTie, MAX_WITNESS_BATCH, SessionLink, WitnessReport};

use super::inbox::{Sender, not_the_senders, to_json};
use super::plan::InboxNodeTotals;
use super::statements::{INBOX_INSERT, Inserted, KNOWN, Known};
use crate::db::models::now;
use crate::db::{Db, Statement};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::{GatewayNodeId, OutlineNodeId, SessionId};

/// A link made more than this before a connection was accepted (by the
/// connection's age as the node reports it, measured against this clock)
/// belongs to an earlier connection from the same address and port. The
/// margin covers the time the report takes to arrive.
pub const LINK_SLACK: chrono::Duration = chrono::Duration::seconds(10);

/// A peer as both sides spell it: `ip:port`, IPv4-mapped IPv6 as IPv4.
pub fn canonical_peer(text: &str) -> Option<String> {
    let a: SocketAddr = text.trim().parse().ok()?;
    Some(SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
}

/// Whether a link made at `linked_at` can be the link of a connection
/// accepted `age_ms` before `now`.
pub fn link_fits(
    linked_at: chrono::NaiveDateTime,
    age_ms: i64,
    now: chrono::NaiveDateTime,
) -> bool {
    let accepted = now - chrono::Duration::milliseconds(age_ms.clamp(0, 365 * 86_400_000));
    linked_at >= accepted - LINK_SLACK
}

/// Stores links, replacing the last link of the same node and peer.
const LINK_INSERT: Statement = Statement {
    pg: "INSERT INTO witness_links (outline_node_id, peer, session_id, linked_at) \
         SELECT s.outline_node_id, x.peer, x.session_id, $2 \
         FROM json_to_recordset($1::json) AS x(session_id text, peer text) \
         JOIN sessions s ON s.id = x.session_id WHERE s.outline_node_id IS NOT NULL \
         ON CONFLICT (outline_node_id, peer) DO UPDATE SET \
         session_id = excluded.session_id, linked_at = excluded.linked_at",
    sqlite: "INSERT INTO witness_links (outline_node_id, peer, session_id, linked_at) \
             SELECT s.outline_node_id, json_extract(value, '$.peer'), s.id, ?2 \
             FROM json_each(?1) JOIN sessions s ON s.id = json_extract(value, '$.session_id') \
             WHERE s.outline_node_id IS NOT NULL \
             ON CONFLICT (outline_node_id, peer) DO UPDATE SET \
             session_id = excluded.session_id, linked_at = excluded.linked_at",
};

/// The links of a node's peers.
const LINKS_OF: Statement = Statement {
    pg: "SELECT peer, session_id, linked_at FROM witness_links WHERE outline_node_id = $1 \
         AND peer = ANY(ARRAY(SELECT json_array_elements_text($2::json)))",
    sqlite: "SELECT peer, session_id, linked_at FROM witness_links WHERE outline_node_id = ?1 \
             AND peer IN (SELECT value FROM json_each(?2))",
};

/// A link as [`LINKS_OF`] reads it.
#[derive(diesel::QueryableByName)]
struct LinkRead {
    #[diesel(sql_type = diesel::sql_types::Text)]
    peer: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    session_id: SessionId,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    linked_at: chrono::NaiveDateTime,
}

#[derive(serde::Serialize)]
struct LinkRow<'a> {
    session_id: SessionId,
    peer: &'a str,
}

/// Stores `links` from `gateway`: every session must exist and be this
/// gateway's, or nothing is stored. Returns the links stored.
pub async fn link(db: &Db, gateway: GatewayNodeId, links: &[SessionLink]) -> AppResult<usize> {
    if links.len() > MAX_WITNESS_BATCH {
        return Err(AppError::bad(format!(
            "at most {MAX_WITNESS_BATCH} links per report"
        )));
    }
    // One link per peer (the last wins), so one statement never updates a
    // row twice.
    let mut by_peer: BTreeMap<String, SessionId> = BTreeMap::new();
    for l in links {
        let Ok(id) = l.session_id.parse::<SessionId>() else {
            return Err(AppError::bad("session_id is not a valid id"));
        };
        let Some(peer) = canonical_peer(&l.local) else {
            return Err(AppError::bad("local must be an ip:port address"));
        };
        by_peer.insert(peer, id);
    }
    if by_peer.is_empty() {
        return Ok(0);
    }
    let mut sessions: Vec<SessionId> = by_peer.values().copied().collect();
    sessions.sort_unstable();
    sessions.dedup();
    let ids_json = to_json(&sessions)?;
    let known: Vec<Known> = db_run!(db, |conn| KNOWN
        .prepared(conn)
        .text(&ids_json)
        .load(conn)
        .await?);
    if known.len() != sessions.len() {
        return Err(AppError::NotFound("session"));
    }
    if known.iter().any(|s| s.gateway_node_id != Some(gateway)) {
        return Err(not_the_senders(db, Sender::Gateway(gateway)).await);
    }
    let rows: Vec<LinkRow> = by_peer
        .iter()
        .map(|(peer, id)| LinkRow {
            session_id: *id,
            peer,
        })
        .collect();
    let rows = to_json(&rows)?;
    let ts = now();
    db_run!(db, |conn| LINK_INSERT
        .prepared(conn)
        .text(&rows)
        .timestamp(ts)
        .execute(conn)
        .await?);
    Ok(by_peer.len())
}

/// What a node's witness report did.
#[derive(Debug, Clone, Default)]
pub struct Witnessed {
    /// Session totals stored.
    pub accepted: usize,
    /// Connections asked about that a gateway has linked, with their
    /// sessions.
    pub ties: Vec<ConnTie>,
    /// The inbox row of the session totals, if any.
    pub row: Option<i64>,
}

/// The session totals of a report, checked and merged: per session and
/// epoch the largest of each direction.
pub fn node_totals(report: &WitnessReport) -> AppResult<InboxNodeTotals> {
    let mut merged: BTreeMap<(SessionId, i64), (i64, i64)> = BTreeMap::new();
    for t in &report.sessions {
        if t.epoch < 0 || t.bytes_up < 0 || t.bytes_down < 0 {
            return Err(AppError::bad("epoch and byte totals must not be negative"));
        }
        let Ok(id) = t.session_id.parse::<SessionId>() else {
            return Err(AppError::bad("session_id is not a valid id"));
        };
        let e = merged.entry((id, t.epoch)).or_insert((0, 0));
        *e = (e.0.max(t.bytes_up), e.1.max(t.bytes_down));
    }
    Ok(merged
        .into_iter()
        .map(|((id, epoch), (up, down))| (id, epoch, up, down))
        .collect())
}

/// Takes a report from `node`: its session totals (every known session
/// must be this node's; sessions deleted since are skipped) stored as one
/// inbox row, and the sessions of the connections it asks about, from the
/// gateways' links.
pub async fn witness(db: &Db, node: OutlineNodeId, report: &WitnessReport) -> AppResult<Witnessed> {
    if report.sessions.len() + report.conns.len() > MAX_WITNESS_BATCH {
        return Err(AppError::bad(format!(
            "at most {MAX_WITNESS_BATCH} entries per report"
        )));
    }
    let mut asked: Vec<(i64, String, i64)> = Vec::with_capacity(report.conns.len());
    for c in &report.conns {
        if c.conn < 0 || c.age_ms < 0 || c.bytes_up < 0 || c.bytes_down < 0 {
            return Err(AppError::bad(
                "conn, age_ms and byte totals must not be negative",
            ));
        }
        let Some(peer) = canonical_peer(&c.peer) else {
            return Err(AppError::bad("peer must be an ip:port address"));
        };
        asked.push((c.conn, peer, c.age_ms));
    }
    let mut totals = node_totals(report)?;
    let mut out = Witnessed::default();
    if !totals.is_empty() {
        let mut ids: Vec<SessionId> = totals.iter().map(|t| t.0).collect();
        ids.dedup();
        let ids_json = to_json(&ids)?;
        let known: Vec<Known> = db_run!(db, |conn| KNOWN
            .prepared(conn)
            .text(&ids_json)
            .load(conn)
            .await?);
        if known.iter().any(|s| s.outline_node_id != Some(node)) {
            return Err(not_the_senders(db, Sender::Node(node)).await);
        }
        if known.len() != ids.len() {
            let known: std::collections::HashSet<SessionId> = known.iter().map(|k| k.id).collect();
            totals.retain(|t| known.contains(&t.0));
        }
        // Believed up to what the session could have moved (as a
        // gateway's report is).
        let at = now();
        let bounds: HashMap<SessionId, i64> = known
            .iter()
            .map(|k| (k.id, super::bounds::bound(k.started_at, k.ended_at, at)))
            .collect();
        for t in &mut totals {
            if let Some(bound) = bounds.get(&t.0) {
                (t.2, t.3) = (t.2.min(*bound), t.3.min(*bound));
            }
        }
        if !totals.is_empty() {
            out.accepted = totals.len();
            let body = to_json(&serde_json::json!({ "node": totals }))?;
            let row: Inserted = db_run!(db, |conn| INBOX_INSERT
                .prepared(conn)
                .text(node.to_string())
                .text(&body)
                .timestamp(now())
                .get_result(conn)
                .await?);
            out.row = Some(row.id);
        }
    }
    if !asked.is_empty() {
        let mut peers: Vec<&str> = asked.iter().map(|(_, p, _)| p.as_str()).collect();
        peers.sort_unstable();
        peers.dedup();
        let peers_json = to_json(&peers)?;
        let links: Vec<LinkRead> = db_run!(db, |conn| LINKS_OF
            .prepared(conn)
            .text(node.to_string())
            .text(&peers_json)
            .load(conn)
            .await?);
        let links: HashMap<&str, &LinkRead> = links.iter().map(|l| (l.peer.as_str(), l)).collect();
        let ts = now();
        out.ties = asked
            .iter()
            .filter_map(|(conn, peer, age)| {
                let l = links.get(peer.as_str())?;
                link_fits(l.linked_at, *age, ts).then(|| ConnTie {
                    conn: *conn,
                    session_id: l.session_id.to_string(),
                })
            })
            .collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use httvps_wire::witness::SessionWitness;

    use super::*;
    use crate::usage_accounting::plan::{Totals, recorded};

    fn t(seq: i64, up: i64, down: i64) -> Totals {
        Totals { seq, up, down }
    }

    #[test]
    fn the_larger_witness_wins_each_direction() {
        // The gateway counts up when written to the node, the node counts
        // down when written to the gateway: each is ahead in one direction.
        assert_eq!(recorded(t(9, 100, 40), t(0, 90, 50), None), t(9, 100, 50));
        assert_eq!(recorded(t(1, 0, 0), t(0, 0, 0), None), t(1, 0, 0));
        // Within the grant, the cap changes nothing.
        assert_eq!(
            recorded(t(9, 100, 40), t(0, 90, 50), Some(150)),
            t(9, 100, 50)
        );
    }

    #[test]
    fn the_node_counts_no_further_than_the_grant() {
        // Cut off at a 1,000-byte grant: the gateway forwarded 100 up and
        // 890 down; the node wrote 3,000 down toward it.
        assert_eq!(
            recorded(t(4, 100, 890), t(0, 100, 3_000), Some(1_000)),
            t(4, 100, 900)
        );
        // The gateway died: only the node tells, up to the grant, the
        // download's surplus cut first.
        assert_eq!(
            recorded(t(0, 0, 0), t(0, 700, 3_000), Some(1_000)),
            t(0, 700, 300)
        );
        assert_eq!(
            recorded(t(0, 0, 0), t(0, 1_500, 3_000), Some(1_000)),
            t(0, 1_000, 0)
        );
        // The gateway's own count stands even past the grant (a grant
        // released at the gateway's count, or a last frame over it).
        assert_eq!(
            recorded(t(2, 600, 600), t(0, 600, 900), Some(1_000)),
            t(2, 600, 600)
        );
        // Never below the gateway's count, and no overflow at the bounds.
        assert_eq!(
            recorded(t(1, i64::MAX, i64::MAX), t(0, i64::MAX, i64::MAX), Some(0)),
            t(1, i64::MAX, i64::MAX)
        );
        assert_eq!(
            recorded(t(0, 0, 0), t(0, i64::MAX, i64::MAX), Some(i64::MAX)),
            t(0, i64::MAX, 0)
        );
    }

    #[test]
    fn peers_are_spelled_one_way() {
        assert_eq!(
            canonical_peer(" 127.0.0.1:4000").as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(
            canonical_peer("[::ffff:10.0.0.1]:80").as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(
            canonical_peer("[2001:db8::1]:80").as_deref(),
            Some("[2001:db8::1]:80")
        );
        assert_eq!(canonical_peer("10.0.0.1"), None);
        assert_eq!(canonical_peer("host:80"), None);
    }

    #[test]
    fn a_link_older_than_the_connection_belongs_to_another() {
        let now = now();
        let age = 30_000;
        // Linked as the connection opened, or after.
        assert!(link_fits(now - chrono::Duration::seconds(30), age, now));
        assert!(link_fits(now, age, now));
        // Within the slack for the report's way here.
        assert!(link_fits(now - chrono::Duration::seconds(39), age, now));
        // A link of the same address and port a minute before.
        assert!(!link_fits(now - chrono::Duration::seconds(90), age, now));
        // Absurd ages do not overflow.
        assert!(link_fits(now, i64::MAX, now));
    }

    #[test]
    fn session_totals_merge_per_epoch_and_refuse_bad_input() {
        let s = SessionId::random();
        let w = |epoch, up, down| SessionWitness {
            session_id: s.to_string(),
            epoch,
            bytes_up: up,
            bytes_down: down,
        };
        let report = WitnessReport {
            sessions: vec![w(5, 10, 20), w(5, 30, 1), w(6, 0, 0)],
            conns: Vec::new(),
        };
        assert_eq!(
            node_totals(&report).expect("totals"),
            vec![(s, 5, 30, 20), (s, 6, 0, 0)]
        );
        for bad in [w(-1, 0, 0), w(1, -1, 0), w(1, 0, -1)] {
            let r = WitnessReport {
                sessions: vec![bad],
                conns: Vec::new(),
            };
            assert!(matches!(node_totals(&r), Err(AppError::BadRequest(_))));
        }
        let r = WitnessReport {
            sessions: vec![SessionWitness {
                session_id: "nope".into(),
                ..w(1, 1, 1)
            }],
            conns: Vec::new(),
        };
        assert!(node_totals(&r).is_err());
    }
}
