//! Recording SQLite migrations that run outside diesel's transaction.
//!
//! A migration with `run_in_transaction = false` (one that rebuilds a
//! table, which needs foreign keys off, a pragma that does nothing inside
//! a transaction) commits its own transaction, and diesel records it only
//! afterwards. A process that dies between the two leaves the schema
//! changed and the migration unrecorded, and the next start would run it
//! again and stop at its first `ALTER TABLE` ("duplicate column"). Before
//! migrating, each such migration whose change is present but which is
//! not recorded is recorded here: its script is one transaction, so a
//! change present means the whole script committed.

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, RunQueryDsl, SqliteConnection};

/// The SQLite migrations that commit on their own: each one's version (as
/// diesel records it) and a table and column its script adds.
const OWN_TRANSACTION: &[(&str, &str, &str)] =
    &[("20261206000001", "subscriptions", "device_limit")];

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut SqliteConnection, sql: &str, binds: &[&str]) -> diesel::QueryResult<i64> {
    let mut q = diesel::sql_query(sql).into_boxed();
    for b in binds {
        q = q.bind::<Text, _>(b.to_string());
    }
    Ok(q.get_result::<Count>(conn)?.n)
}

/// Records every migration of [`OWN_TRANSACTION`] whose change is in the
/// schema but which diesel has not recorded; returns their versions.
pub(super) fn record_committed(
    conn: &mut SqliteConnection,
) -> diesel::QueryResult<Vec<&'static str>> {
    let tracked = count(
        conn,
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations'",
        &[],
    )?;
    if tracked == 0 {
        return Ok(Vec::new());
    }
    let mut recorded = Vec::new();
    for (version, table, column) in OWN_TRANSACTION {
        let known = count(
            conn,
            "SELECT count(*) AS n FROM __diesel_schema_migrations WHERE version = ?",
            &[version],
        )?;
        let present = count(
            conn,
            "SELECT count(*) AS n FROM pragma_table_info(?) WHERE name = ?",
            &[table, column],
        )?;
        if known == 0 && present > 0 {
            diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES (?)")
                .bind::<Text, _>(*version)
                .execute(conn)?;
            recorded.push(*version);
        }
    }
    Ok(recorded)
}
