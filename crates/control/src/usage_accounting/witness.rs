//! The node as a second witness of every session's bytes.
//!
//! A gateway links each connection it opens to a node (its local address
//! and port, which the node sees as the peer) to the session it carries
//! ([`link`]); a node reports the cumulative totals of each connection it
//! serves ([`witness`]). A connection counts for the session its peer was
//! linked to when the connection was first reported, or when the link came,
//! whichever is later; once tied, it stays tied.
//!
//! ## The rule
//!
//! Per session and direction, the ledger records the larger of the two
//! witnesses' cumulative totals: the gateway's (its usage reports) and the
//! node's (the sum over the session's connections). Both count the same
//! bytes at the two ends of the gateway-node connection, so while both are
//! alive they differ only by what is in flight between them; a witness
//! that dies (or restarts without its spool) only ever falls behind, never
//! ahead, so the larger is the survivor's. Witness totals enter the usage
//! inbox as ordinary session totals, so the applier's merge (the largest
//! totals win) and its "add only the increase over what is stored" apply
//! the rule, batched, and nothing is counted twice: replays, reorderings
//! and a witness arriving before or after the gateway change nothing.
//! [`recorded`] states the rule for one session.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use diesel_async::RunQueryDsl;
use httvps_wire::witness::{ConnTotals, MAX_WITNESS_BATCH, SessionLink};

use super::inbox::to_json;
use super::plan::{InboxTotals, Totals};
use super::statements::{INBOX_INSERT, Inserted, KNOWN, Known};
use crate::db::models::now;
use crate::db::{Db, Statement};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::{GatewayNodeId, OutlineNodeId, SessionId};

/// What the ledger records for a session from the gateway's totals and the
/// node's: the larger of each direction (see the module's note).
pub fn recorded(gateway: Totals, node: Totals) -> Totals {
    Totals {
        seq: gateway.seq.max(node.seq),
        up: gateway.up.max(node.up),
        down: gateway.down.max(node.down),
    }
}

/// A peer as both sides spell it: `ip:port`, IPv4-mapped IPv6 as IPv4.
pub fn canonical_peer(text: &str) -> Option<String> {
    let a: SocketAddr = text.trim().parse().ok()?;
    Some(SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
}

/// The node's totals of each session, as inbox totals (sequence 0: the
/// node's totals never move a session's sequence).
pub fn as_inbox(sums: &[WitnessSum]) -> InboxTotals {
    sums.iter()
        .map(|s| (s.session_id, 0, s.up.max(0), s.down.max(0)))
        .collect()
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

/// Ties the node's connections reported before their link came.
const LINK_ATTRIBUTE: Statement = Statement {
    pg: "UPDATE node_witness SET session_id = l.session_id FROM witness_links l \
         WHERE node_witness.session_id IS NULL AND l.outline_node_id = node_witness.outline_node_id \
         AND l.peer = node_witness.peer \
         AND l.session_id = ANY(ARRAY(SELECT json_array_elements_text($1::json))) \
         RETURNING node_witness.session_id",
    sqlite: "UPDATE node_witness SET session_id = l.session_id FROM witness_links l \
             WHERE node_witness.session_id IS NULL AND l.outline_node_id = node_witness.outline_node_id \
             AND l.peer = node_witness.peer \
             AND l.session_id IN (SELECT value FROM json_each(?1)) \
             RETURNING node_witness.session_id",
};

/// Stores a node's connection totals (the largest win), tying new ones to
/// their peer's session; returns the sessions of the rows.
const WITNESS_UPSERT: Statement = Statement {
    pg: "INSERT INTO node_witness \
         (outline_node_id, conn, peer, session_id, bytes_up, bytes_down, updated_at) \
         SELECT $2, x.conn, x.peer, l.session_id, x.up, x.down, $3 \
         FROM json_to_recordset($1::json) AS x(conn bigint, peer text, up bigint, down bigint) \
         LEFT JOIN witness_links l ON l.outline_node_id = $2 AND l.peer = x.peer \
         ON CONFLICT (outline_node_id, conn) DO UPDATE SET \
         bytes_up = GREATEST(node_witness.bytes_up, excluded.bytes_up), \
         bytes_down = GREATEST(node_witness.bytes_down, excluded.bytes_down), \
         session_id = COALESCE(node_witness.session_id, excluded.session_id), \
         updated_at = excluded.updated_at \
         RETURNING session_id",
    sqlite: "INSERT INTO node_witness \
             (outline_node_id, conn, peer, session_id, bytes_up, bytes_down, updated_at) \
             SELECT ?2, json_extract(x.value, '$.conn'), json_extract(x.value, '$.peer'), \
             l.session_id, json_extract(x.value, '$.up'), json_extract(x.value, '$.down'), ?3 \
             FROM json_each(?1) AS x LEFT JOIN witness_links l \
             ON l.outline_node_id = ?2 AND l.peer = json_extract(x.value, '$.peer') WHERE true \
             ON CONFLICT (outline_node_id, conn) DO UPDATE SET \
             bytes_up = max(node_witness.bytes_up, excluded.bytes_up), \
             bytes_down = max(node_witness.bytes_down, excluded.bytes_down), \
             session_id = COALESCE(node_witness.session_id, excluded.session_id), \
             updated_at = excluded.updated_at \
             RETURNING session_id",
};

/// The node's totals of sessions: the sum over their connections.
const SUMS: Statement = Statement {
    pg: "SELECT session_id, CAST(SUM(bytes_up) AS BIGINT) AS up, \
         CAST(SUM(bytes_down) AS BIGINT) AS down FROM node_witness \
         WHERE session_id = ANY(ARRAY(SELECT json_array_elements_text($1::json))) \
         GROUP BY session_id",
    sqlite: "SELECT session_id, CAST(SUM(bytes_up) AS BIGINT) AS up, \
             CAST(SUM(bytes_down) AS BIGINT) AS down FROM node_witness \
             WHERE session_id IN (SELECT value FROM json_each(?1)) GROUP BY session_id",
};

/// A session a statement returned (none for connections not yet linked).
#[derive(diesel::QueryableByName)]
struct Tied {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    session_id: Option<SessionId>,
}

/// A session's totals as the node witnessed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel::QueryableByName)]
pub struct WitnessSum {
    /// The session.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub session_id: SessionId,
    /// Bytes the node received over the session's connections.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub up: i64,
    /// Bytes the node sent over them.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub down: i64,
}

#[derive(serde::Serialize)]
struct LinkRow<'a> {
    session_id: SessionId,
    peer: &'a str,
}

#[derive(serde::Serialize)]
struct ConnRow<'a> {
    conn: i64,
    peer: &'a str,
    up: i64,
    down: i64,
}

/// Stores what the node witnessed for `sessions` as one inbox row (the
/// applier merges it with the gateway's totals); `None` when there is
/// nothing to store.
async fn submit_sums(db: &Db, source: &str, sessions: &[SessionId]) -> AppResult<Option<i64>> {
    if sessions.is_empty() {
        return Ok(None);
    }
    let ids_json = to_json(&sessions)?;
    let sums: Vec<WitnessSum> = db_run!(db, |conn| diesel::sql_query(SUMS.text(conn))
        .bind::<diesel::sql_types::Text, _>(&ids_json)
        .load(conn)
        .await?);
    if sums.is_empty() {
        return Ok(None);
    }
    let totals = to_json(&as_inbox(&sums))?;
    let row: Inserted = db_run!(db, |conn| diesel::sql_query(INBOX_INSERT.text(conn))
        .bind::<diesel::sql_types::Text, _>(source)
        .bind::<diesel::sql_types::Text, _>(&totals)
        .bind::<diesel::sql_types::Timestamp, _>(now())
        .get_result(conn)
        .await?);
    Ok(Some(row.id))
}

/// Stores `links` from `gateway`: every session must exist and be this
/// gateway's, or nothing is stored. Connections the node reported before
/// their link are tied now. Returns the links stored and the inbox row of
/// the node's totals this tied, if any.
pub async fn link(
    db: &Db,
    gateway: GatewayNodeId,
    links: &[SessionLink],
) -> AppResult<(usize, Option<i64>)> {
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
        return Ok((0, None));
    }
    let mut sessions: Vec<SessionId> = by_peer.values().copied().collect();
    sessions.sort_unstable();
    sessions.dedup();
    let ids_json = to_json(&sessions)?;
    let known: Vec<Known> = db_run!(db, |conn| diesel::sql_query(KNOWN.text(conn))
        .bind::<diesel::sql_types::Text, _>(&ids_json)
        .load(conn)
        .await?);
    if known.len() != sessions.len() {
        return Err(AppError::NotFound("session"));
    }
    if known.iter().any(|s| s.gateway_node_id != Some(gateway)) {
        return Err(AppError::Forbidden);
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
    let tied: Vec<Tied> = db_run!(db, |conn| {
        diesel::sql_query(LINK_INSERT.text(conn))
            .bind::<diesel::sql_types::Text, _>(&rows)
            .bind::<diesel::sql_types::Timestamp, _>(ts)
            .execute(conn)
            .await?;
        diesel::sql_query(LINK_ATTRIBUTE.text(conn))
            .bind::<diesel::sql_types::Text, _>(&ids_json)
            .load(conn)
            .await?
    });
    let mut tied: Vec<SessionId> = tied.into_iter().filter_map(|t| t.session_id).collect();
    tied.sort_unstable();
    tied.dedup();
    let row = submit_sums(db, &gateway.to_string(), &tied).await?;
    Ok((by_peer.len(), row))
}

/// What a node's witness report did.
#[derive(Debug, Clone, Default)]
pub struct Witnessed {
    /// Connection totals received.
    pub accepted: usize,
    /// Of them, those tied to a session.
    pub linked: usize,
    /// The inbox row of the sessions' new node totals, if any.
    pub row: Option<i64>,
}

/// Stores `conns` from `node` (the largest totals of each connection win)
/// and the node's new totals of their sessions as one inbox row.
pub async fn witness(db: &Db, node: OutlineNodeId, conns: &[ConnTotals]) -> AppResult<Witnessed> {
    if conns.len() > MAX_WITNESS_BATCH {
        return Err(AppError::bad(format!(
            "at most {MAX_WITNESS_BATCH} connection totals per report"
        )));
    }
    let mut by_conn: BTreeMap<i64, (String, i64, i64)> = BTreeMap::new();
    for c in conns {
        if c.conn < 0 || c.bytes_up < 0 || c.bytes_down < 0 {
            return Err(AppError::bad("conn and byte totals must not be negative"));
        }
        let Some(peer) = canonical_peer(&c.peer) else {
            return Err(AppError::bad("peer must be an ip:port address"));
        };
        let e = by_conn.entry(c.conn).or_insert((peer, 0, 0));
        e.1 = e.1.max(c.bytes_up);
        e.2 = e.2.max(c.bytes_down);
    }
    if by_conn.is_empty() {
        return Ok(Witnessed::default());
    }
    let rows: Vec<ConnRow> = by_conn
        .iter()
        .map(|(conn, (peer, up, down))| ConnRow {
            conn: *conn,
            peer,
            up: *up,
            down: *down,
        })
        .collect();
    let rows = to_json(&rows)?;
    let tied: Vec<Tied> = db_run!(db, |conn| diesel::sql_query(WITNESS_UPSERT.text(conn))
        .bind::<diesel::sql_types::Text, _>(&rows)
        .bind::<diesel::sql_types::Text, _>(node)
        .bind::<diesel::sql_types::Timestamp, _>(now())
        .load(conn)
        .await?);
    let mut sessions: Vec<SessionId> = tied.iter().filter_map(|t| t.session_id).collect();
    let linked = sessions.len();
    sessions.sort_unstable();
    sessions.dedup();
    let row = submit_sums(db, &node.to_string(), &sessions).await?;
    Ok(Witnessed {
        accepted: conns.len(),
        linked,
        row,
    })
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Latest, Stored, merge, plan_chunk};
    use super::*;

    fn t(seq: i64, up: i64, down: i64) -> Totals {
        Totals { seq, up, down }
    }

    /// Applies reports, in order, pass by pass, to one session stored at
    /// zero; returns the recorded totals and what was charged.
    fn ledger(passes: &[&[Totals]]) -> (i64, i64, i64) {
        let id = SessionId::random();
        let user = crate::ids::UserId::random();
        let (mut up, mut down, mut seq, mut charged) = (0, 0, 0, 0);
        for pass in passes {
            let mut latest = Latest::new();
            merge(&mut latest, pass.iter().map(|t| (id, *t)));
            let merged: Vec<_> = latest.into_iter().collect();
            let stored = Stored {
                id,
                user_id: user,
                bytes_up: up,
                bytes_down: down,
                last_seq: seq,
                end_reason: None,
                hour_start: None,
                hour_up: 0,
                hour_down: 0,
            };
            let plan = plan_chunk(&[stored], &merged, now());
            if let Some(g) = <[_]>::first(&plan.grown) {
                (up, down, seq) = (g.up, g.down, g.seq);
            }
            charged += plan.charges.iter().map(|c| c.delta).sum::<i64>();
        }
        assert_eq!(charged, up + down, "charged exactly what is recorded");
        (up, down, seq)
    }

    #[test]
    fn the_larger_witness_wins_each_direction() {
        // The gateway counts up when written to the node, the node counts
        // down when written to the gateway: each is ahead in one direction.
        assert_eq!(recorded(t(9, 100, 40), t(0, 90, 50)), t(9, 100, 50));
        assert_eq!(recorded(t(1, 0, 0), t(0, 0, 0)), t(1, 0, 0));
    }

    #[test]
    fn both_witnesses_alive_count_once() {
        let (up, down, seq) = ledger(&[
            &[t(1, 100, 1_000), t(0, 100, 1_000)],
            &[t(0, 150, 1_600)],
            &[t(2, 160, 1_500)],
            &[t(2, 160, 1_500), t(0, 150, 1_600)],
        ]);
        assert_eq!((up, down, seq), (160, 1_600, 2));
    }

    #[test]
    fn a_killed_gateway_is_covered_by_the_node() {
        // The gateway's last report was at 1,000; the node saw the
        // connection run to 5,000 before it ended with the gateway.
        let (up, down, _) = ledger(&[
            &[t(1, 10, 1_000)],
            &[t(0, 12, 3_000)],
            &[t(0, 12, 5_000)],
            // A restarted gateway without its spool reports from zero: it
            // never takes bytes back, and it never adds the node's again.
            &[t(7, 2, 300)],
        ]);
        assert_eq!((up, down), (12, 5_000));
    }

    #[test]
    fn a_restarted_gateway_without_spool_and_its_new_connections_are_counted_by_the_node() {
        // After the restart the gateway counts from zero, the node sums
        // every connection of the session: old and new.
        let (_, down, _) = ledger(&[
            &[t(1, 0, 1_000), t(0, 0, 1_200)],
            &[t(9, 0, 500)],
            &[t(0, 0, 1_700), t(10, 0, 500)],
        ]);
        assert_eq!(down, 1_700);
    }

    #[test]
    fn a_killed_node_is_covered_by_the_gateway() {
        let (up, down, _) = ledger(&[&[t(0, 500, 5)], &[t(3, 900, 9)], &[t(0, 500, 5)]]);
        assert_eq!((up, down), (900, 9));
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
    fn node_sums_enter_the_inbox_with_sequence_zero() {
        let s = SessionId::random();
        let sums = [WitnessSum {
            session_id: s,
            up: 3,
            down: -1,
        }];
        assert_eq!(as_inbox(&sums), vec![(s, 0, 3, 0)]);
    }
}
