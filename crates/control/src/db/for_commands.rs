//! The database as the operator's commands (`region`, `node add`,
//! `admin create` …) take it: a new, empty one is migrated, as `serve`
//! would; one at this release's schema is used as it is; anything else
//! is refused before a table is written. They used to apply every
//! migration to whatever `BACKEND_DB_DSN` named: another application's
//! database got httvps's tables, and a newer binary run against a
//! production database upgraded it before its control plane was.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_migrations::MigrationHarness;

use super::{Dsn, MIGRATION_LOCK_KEY, PG_MIGRATIONS, SQLITE_MIGRATIONS, SetupError};

/// A count read from the catalogue.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// What the catalogue says of a database: its tables, whether one of them
/// is the migrations' record, and (if it is) the migrations not applied.
struct Found {
    tables: i64,
    recorded: bool,
    pending: usize,
    /// How many migrations this release has.
    ours: usize,
}

/// The tables of the connection's schema (PostgreSQL).
const PG_TABLES: &str = "SELECT CAST(count(*) AS BIGINT) AS n FROM information_schema.tables \
                         WHERE table_schema = current_schema()";
/// Whether the migrations' record is one of them (PostgreSQL).
const PG_RECORD: &str = "SELECT CAST(count(*) AS BIGINT) AS n FROM information_schema.tables \
                         WHERE table_schema = current_schema() \
                         AND table_name = '__diesel_schema_migrations'";
/// The tables of an SQLite database.
const SQLITE_TABLES: &str = "SELECT count(*) AS n FROM sqlite_master \
                             WHERE type = 'table' AND name NOT LIKE 'sqlite_%'";
/// Whether the migrations' record is one of them (SQLite).
const SQLITE_RECORD: &str = "SELECT count(*) AS n FROM sqlite_master \
                             WHERE type = 'table' AND name = '__diesel_schema_migrations'";

/// Prepares the database `dsn` names for an operator's command: migrates
/// it when it is new (no table at all), and refuses one that holds tables
/// but not httvps's, or httvps's at an older release (its control plane
/// upgrades it: `httvps migrate`, or `serve`). Returns the migrations
/// applied. On PostgreSQL it waits for a control plane migrating at the
/// same moment (the migrations' advisory lock).
pub async fn migrate_for_command(dsn: &Dsn) -> Result<usize, SetupError> {
    let found = match dsn {
        Dsn::Postgres(url) => {
            use diesel_async::RunQueryDsl;
            let mut conn = crate::pg::connect(url).await?;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .await
                .map_err(SetupError::Query)?;
            let read = async {
                let tables = diesel::sql_query(PG_TABLES)
                    .get_result::<Count>(&mut conn)
                    .await?
                    .n;
                let recorded = diesel::sql_query(PG_RECORD)
                    .get_result::<Count>(&mut conn)
                    .await?
                    .n
                    > 0;
                Ok::<_, diesel::result::Error>((tables, recorded))
            };
            let read = read.await.map_err(SetupError::Query);
            let found = match read {
                Ok((tables, true)) => {
                    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
                    let pending = harness
                        .pending_migrations(PG_MIGRATIONS)
                        .map(|p| p.len())
                        .map_err(|e| SetupError::Migration(e.to_string()));
                    conn = harness.into_inner();
                    pending.map(|pending| Found {
                        tables,
                        recorded: true,
                        pending,
                        ours: ours::<diesel::pg::Pg>(&PG_MIGRATIONS),
                    })
                }
                Ok((tables, false)) => Ok(Found {
                    tables,
                    recorded: false,
                    pending: 0,
                    ours: 0,
                }),
                Err(e) => Err(e),
            };
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .await
                .map_err(SetupError::Query)?;
            found?
        }
        Dsn::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || sqlite_found(&path))
                .await
                .map_err(|e| SetupError::Migration(e.to_string()))??
        }
    };
    match found {
        Found { tables: 0, .. } => super::migrate(dsn).await,
        // No migrations' record, or one that names none of this
        // release's migrations (another application that keeps its
        // migrations the same way).
        Found {
            recorded: false, ..
        } => Err(foreign()),
        Found { pending, ours, .. } if pending == ours => Err(foreign()),
        Found { pending: 0, .. } => Ok(0),
        Found { pending, .. } => Err(SetupError::Migration(format!(
            "this database is at an older release's schema ({pending} migrations behind this \
             httvps): upgrade it first with this release's `httvps migrate` (or by starting its \
             `httvps serve`), after a backup"
        ))),
    }
}

/// The refusal of another application's database.
fn foreign() -> SetupError {
    SetupError::Migration(
        "this database holds tables but none of httvps's: BACKEND_DB_DSN names another \
         application's database (`httvps migrate` makes httvps's tables in a new, empty one)"
            .into(),
    )
}

/// How many migrations `source` holds.
fn ours<DB: diesel::backend::Backend>(
    source: &impl diesel::migration::MigrationSource<DB>,
) -> usize {
    source.migrations().map_or(0, |m| m.len())
}

/// [`Found`] for an SQLite database (blocking).
fn sqlite_found(path: &str) -> Result<Found, SetupError> {
    use diesel::RunQueryDsl;
    let mut conn = super::open_sqlite(path)?;
    let count = |conn: &mut diesel::SqliteConnection, q: &str| {
        diesel::sql_query(q)
            .get_result::<Count>(conn)
            .map(|c| c.n)
            .map_err(SetupError::Query)
    };
    let tables = count(&mut conn, SQLITE_TABLES)?;
    let recorded = count(&mut conn, SQLITE_RECORD)? > 0;
    let pending = if recorded {
        conn.pending_migrations(SQLITE_MIGRATIONS)
            .map(|p| p.len())
            .map_err(|e| SetupError::Migration(e.to_string()))?
    } else {
        0
    };
    Ok(Found {
        tables,
        recorded,
        pending,
        ours: ours::<diesel::sqlite::Sqlite>(&SQLITE_MIGRATIONS),
    })
}
