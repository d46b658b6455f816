//! The database as httvps's commands take it. The operator's commands
//! (`region`, `node add`, `admin create` …): a new, empty one is migrated,
//! as `serve` would; one at this release's schema is used as it is;
//! anything else is refused before a table is written. `serve`, `migrate`
//! and `up` also upgrade an older release's schema. Every one of them
//! refuses another application's database and one at a newer release's
//! schema. They used to apply every migration to whatever
//! `BACKEND_DB_DSN` named: another application's database got httvps's
//! tables, a newer binary run against a production database upgraded it
//! before its control plane was, and an older binary (a rollback) ran on
//! tables whose shape it did not know.

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
/// is the migrations' record, and (if it is) the migrations not applied
/// and the newest applied one this release does not have.
struct Found {
    tables: i64,
    recorded: bool,
    pending: usize,
    /// How many migrations this release has.
    ours: usize,
    /// The newest applied migration that is not this release's.
    unknown: Option<String>,
}

/// Whether a command may only use the database, or also upgrade it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// The operator's commands: migrate only a new, empty database.
    Command,
    /// `serve`, `migrate`, `up`: upgrade an older schema too.
    Serve,
}

/// The tables of the database (PostgreSQL).
///
/// Read from the catalogue, in every schema, whatever the role may read
/// (`information_schema` shows only the tables the role has a right to,
/// in one schema: another application's tables owned by another role, or
/// kept in a schema of their own, went unseen and the database was
/// migrated); an extension's own tables and views (PostGIS'
/// `spatial_ref_sys`, pg_stat_statements') do not count.
const PG_TABLES: &str = "SELECT CAST(count(*) AS BIGINT) AS n FROM pg_catalog.pg_class c \
                         JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
                         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                         AND s.nspname NOT IN ('pg_catalog', 'information_schema') \
                         AND s.nspname NOT LIKE 'pg\\_toast%' \
                         AND s.nspname NOT LIKE 'pg\\_temp\\_%' \
                         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                         WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                         AND d.objid = c.oid AND d.deptype = 'e')";
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
    prepare(dsn, Use::Command).await
}

/// Prepares the database `dsn` names for `serve`, `migrate` and `up`:
/// migrates a new one and upgrades an older release's schema, and refuses
/// another application's database and one at a newer release's schema.
/// Returns the migrations applied.
pub async fn migrate_for_serve(dsn: &Dsn) -> Result<usize, SetupError> {
    prepare(dsn, Use::Serve).await
}

async fn prepare(dsn: &Dsn, using: Use) -> Result<usize, SetupError> {
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
                    let read = recorded(&mut harness, &PG_MIGRATIONS);
                    conn = harness.into_inner();
                    read.map(|(pending, unknown)| Found {
                        tables,
                        recorded: true,
                        pending,
                        ours: ours::<diesel::pg::Pg>(&PG_MIGRATIONS),
                        unknown,
                    })
                }
                Ok((tables, false)) => Ok(Found {
                    tables,
                    recorded: false,
                    pending: 0,
                    ours: 0,
                    unknown: None,
                }),
                Err(e) => Err(e),
            };
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .await
                .map_err(SetupError::Query)?;
            found?
        }
        // A file not there yet, or one of SQLite's own names: new (the
        // migration creates the file, its owner's only).
        Dsn::Sqlite(path)
            if path == ":memory:"
                || path.starts_with("file:")
                || !std::path::Path::new(path).exists() =>
        {
            return super::migrate(dsn).await;
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
        // Only the record, none of its migrations applied: a first
        // migration that stopped before its first step (diesel makes the
        // record on its own) is new.
        Found {
            tables: 1,
            pending,
            ours,
            ..
        } if pending == ours => super::migrate(dsn).await,
        Found { pending, ours, .. } if pending == ours => Err(foreign()),
        Found {
            unknown: Some(v), ..
        } => Err(SetupError::Migration(format!(
            "this database is at a newer release's schema (its migration {v} is not this \
             httvps's): run the release that made it, or restore a backup taken with this one"
        ))),
        Found { pending: 0, .. } => Ok(0),
        Found { .. } if using == Use::Serve => super::migrate(dsn).await,
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
    let is_recorded = count(&mut conn, SQLITE_RECORD)? > 0;
    let (pending, unknown) = if is_recorded {
        recorded(&mut conn, &SQLITE_MIGRATIONS)?
    } else {
        (0, None)
    };
    Ok(Found {
        tables,
        recorded: is_recorded,
        pending,
        ours: ours::<diesel::sqlite::Sqlite>(&SQLITE_MIGRATIONS),
        unknown,
    })
}

/// The migrations of `source` not applied, and the newest applied one
/// that is not in `source`.
fn recorded<DB: diesel::backend::Backend>(
    harness: &mut impl MigrationHarness<DB>,
    source: &impl diesel::migration::MigrationSource<DB>,
) -> Result<(usize, Option<String>), SetupError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| SetupError::Migration(e.to_string());
    let ours: std::collections::HashSet<String> = source
        .migrations()
        .map_err(failed)?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let applied: Vec<String> = harness
        .applied_migrations()
        .map_err(failed)?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let done = applied.iter().filter(|v| ours.contains(*v)).count();
    let unknown = applied.into_iter().filter(|v| !ours.contains(v)).max();
    Ok((ours.len().saturating_sub(done), unknown))
}
