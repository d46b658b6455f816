//! An [`Outbox`]'s events as notifications of the PostgreSQL transaction
//! that made them, so they are delivered at its commit and never without it
//! (SQLite, one process, broadcasts after the commit instead).

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::Statement;
use crate::events::Outbox;

/// One notification.
const NOTIFY_ONE: Statement = Statement {
    pg: "SELECT pg_notify($1, $2)",
    sqlite: "",
};

/// Several notifications, in order, from a JSON array of
/// `[channel, payload]` pairs.
const NOTIFY_MANY: Statement = Statement {
    pg: "SELECT pg_notify(x ->> 0, x ->> 1) FROM json_array_elements($1::json) AS t(x)",
    sqlite: "",
};

/// Queues `outbox`'s events as notifications of the transaction `conn` is
/// in; call it last in the transaction. All of them go in one statement (a
/// batch of assignments publishes one event per new session), in order.
pub async fn notify(conn: &mut AsyncPgConnection, outbox: &Outbox) -> diesel::QueryResult<()> {
    let pairs: Vec<(&str, String)> = outbox.payloads().collect();
    match pairs.as_slice() {
        [] => {}
        [(channel, payload)] => {
            NOTIFY_ONE
                .prepared(conn)
                .text(*channel)
                .text(payload.as_str())
                .execute(conn)
                .await?;
        }
        _ => {
            NOTIFY_MANY
                .prepared(conn)
                .json(&pairs)?
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}
