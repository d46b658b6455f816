//! Storage: one connection pool over PostgreSQL or SQLite, the embedded
//! migrations, the [`db_run!`](crate::db_run) dispatcher that expands a
//! query body once per backend so both share one set of diesel queries, and
//! [`db_tx!`](crate::db_tx), its transactional twin that publishes the
//! transaction's events when (and only if) it commits. Raw SQL that differs
//! between the dialects is written once per dialect as a [`Statement`].

pub mod dialect;
mod dsn;
mod for_commands;
mod held;
pub mod models;
mod notify;
pub mod prepared;
mod redacted;
mod repair;
pub mod schema;

pub use dialect::{Dialect, Statement};
pub use dsn::Dsn;
pub use for_commands::{migrate_for_command, migrate_for_serve};

/// Key of the PostgreSQL advisory lock that makes the usage appliers of
/// several replicas take turns ("usage" in ASCII, 0x0075_7361_6765).
pub const APPLY_LOCK_KEY: i64 = 504_446_936_933;

/// Takes the usage appliers' lock for the transaction (SQLite has one
/// writer anyway). A pass locks sessions and then their subscriptions; a
/// change that locks a subscription and then its sessions takes this
/// first, so the two never wait on each other in opposite orders.
pub const APPLY_LOCK: Statement = Statement {
    pg: "SELECT pg_advisory_xact_lock(504446936933)",
    sqlite: "",
};
/// Takes [`APPLY_LOCK`] on `$conn` inside a transaction (PostgreSQL; SQLite
/// has one writer anyway). It must come first, before any row lock: a
/// change that ends sessions outside the appliers then never holds a
/// session row an applier pass waits for, nor waits for one it holds.
#[macro_export]
macro_rules! apply_lock {
    ($conn:expr) => {
        if let Some(lock) = $crate::db::APPLY_LOCK.on($conn) {
            diesel::sql_query(lock).execute($conn).await?;
        }
    };
}

pub use held::{Held, SLOW_HOLD, checkout};
pub use notify::notify;
pub use prepared::Prepared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use crate::events::Events;

/// The PostgreSQL migrations, embedded in the binary.
pub const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
/// The SQLite migrations, embedded in the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Key of the PostgreSQL advisory lock that serialises migrations between
/// replicas starting at once ("httvps" in ASCII).
pub(crate) const MIGRATION_LOCK_KEY: i64 = 0x0000_6874_7476_7073;

/// An SQLite connection driven through diesel-async.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// A pool of connections to one of the two supported databases.
#[derive(Clone)]
pub enum DbPool {
    /// PostgreSQL through tokio-postgres.
    Pg(Pool<AsyncPgConnection>),
    /// SQLite through the sync connection wrapper.
    Sqlite(Pool<SqliteConn>),
}

/// The database handle passed to use cases: a pool, a count of the
/// queries it has run (for metrics, and for tests that guard against N+1),
/// and this process's fan-out of the events its transactions publish.
#[derive(Clone)]
pub struct Db {
    /// The pool.
    pub pool: DbPool,
    queries: Arc<AtomicU64>,
    // Shared: a `Db` is cloned into every request, and six channel
    // senders are six reference counts to bump.
    events: Arc<Events>,
}

fn counting(queries: &Arc<AtomicU64>) -> impl diesel::connection::Instrumentation + use<> {
    let queries = queries.clone();
    move |event: diesel::connection::InstrumentationEvent<'_>| {
        if let diesel::connection::InstrumentationEvent::StartQuery { .. } = event {
            queries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Errors of storage set-up (not of queries, which use diesel's error).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The pool could not be built.
    #[error("building the connection pool: {0}")]
    Pool(String),
    /// A connection could not be opened. (Not a `source`: the message
    /// carries it, and error chains would print it twice.)
    #[error("connecting to the database: {0}")]
    Connect(diesel::ConnectionError),
    /// A migration failed.
    #[error("running migrations: {0}")]
    Migration(String),
    /// A statement failed during set-up (not a `source` either).
    #[error("database: {0}")]
    Query(diesel::result::Error),
}

impl From<diesel::ConnectionError> for SetupError {
    fn from(e: diesel::ConnectionError) -> Self {
        SetupError::Connect(e)
    }
}

impl From<diesel::result::Error> for SetupError {
    fn from(e: diesel::result::Error) -> Self {
        SetupError::Query(e)
    }
}

/// Applied to every SQLite connection: enforce foreign keys (off by default in
/// SQLite), WAL for concurrent readers, and wait instead of failing on a lock.
const SQLITE_PRAGMAS: &str = "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL;";

fn open_sqlite(path: &str) -> Result<SqliteConnection, diesel::ConnectionError> {
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute(SQLITE_PRAGMAS)
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

impl Db {
    /// Opens a pool of at most `max_size` connections. SQLite is held to one
    /// connection: writes are serialised anyway, and one writer makes the
    /// read-check-write use cases (device limits) race-free there too.
    pub fn connect(dsn: &Dsn, max_size: usize) -> Result<Self, SetupError> {
        let timeouts = deadpool::managed::Timeouts {
            wait: Some(Duration::from_secs(5)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        };
        let queries = Arc::new(AtomicU64::new(0));
        let pool = match dsn {
            Dsn::Postgres(url) => {
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                // No round trip per checkout: a broken connection is noticed
                // by its failed query and dropped by the pool.
                config.recycling_method = RecyclingMethod::Fast;
                let q = queries.clone();
                config.custom_setup = Box::new(move |url| {
                    let q = q.clone();
                    let url = url.to_owned();
                    async move {
                        let mut conn = crate::pg::connect(&url).await?;
                        conn.set_instrumentation(counting(&q));
                        Ok(conn)
                    }
                    .boxed()
                });
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                    url.clone(),
                    config,
                );
                let pool = Pool::builder(manager)
                    .max_size(max_size.max(1))
                    .timeouts(timeouts)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| SetupError::Pool(e.to_string()))?;
                DbPool::Pg(pool)
            }
            Dsn::Sqlite(path) => {
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        SetupError::Pool(format!("creating {}: {e}", parent.display()))
                    })?;
                }
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(|url| {
                    let url = url.to_owned();
                    async move {
                        tokio::task::spawn_blocking(move || {
                            open_sqlite(&url).map(SyncConnectionWrapper::new)
                        })
                        .await
                        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?
                    }
                    .boxed()
                });
                let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(
                    path.clone(),
                    config,
                );
                let pool = Pool::builder(manager)
                    .max_size(1)
                    .timeouts(timeouts)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| SetupError::Pool(e.to_string()))?;
                DbPool::Sqlite(pool)
            }
        };
        Ok(Db {
            pool,
            queries,
            events: Arc::new(Events::new()),
        })
    }

    /// Where this process's subscribers hear of committed changes.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// How many queries this pool's connections have started.
    pub fn query_count(&self) -> u64 {
        AtomicU64::load(&self.queries, Ordering::Relaxed)
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            DbPool::Pg(_) => "postgres",
            DbPool::Sqlite(_) => "sqlite",
        }
    }

    /// Answers whether the database responds within `deadline`.
    pub async fn ping(&self, deadline: Duration) -> bool {
        let check = async {
            Ok::<_, crate::error::AppError>(crate::db_run!(self, |conn| {
                diesel::sql_query("SELECT 1").execute(conn).await?
            }))
        };
        matches!(tokio::time::timeout(deadline, check).await, Ok(Ok(_)))
    }
}

/// Applies pending migrations and returns how many were applied. On
/// PostgreSQL an advisory lock makes replicas that start together take turns,
/// so each migration runs once. Needs tokio's multi-thread runtime.
pub async fn migrate(dsn: &Dsn) -> Result<usize, SetupError> {
    match dsn {
        Dsn::Postgres(url) => {
            let mut conn = crate::pg::connect(url).await?;
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .await?;
            let mut harness = AsyncMigrationHarness::new(conn);
            let applied = harness
                .run_pending_migrations(PG_MIGRATIONS)
                .map(|v| v.len())
                .map_err(|e| SetupError::Migration(e.to_string()));
            let mut conn = harness.into_inner();
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(&mut conn)
                .await?;
            applied
        }
        Dsn::Sqlite(path) => {
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    SetupError::Migration(format!("creating {}: {e}", parent.display()))
                })?;
            }
            create_private(path)
                .map_err(|e| SetupError::Migration(format!("creating {path}: {e}")))?;
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = open_sqlite(&path)?;
                let recorded = repair::record_committed(&mut conn)
                    .map_err(|e| SetupError::Migration(e.to_string()))?;
                for version in recorded {
                    tracing::warn!(
                        migration = version,
                        "a migration that commits on its own had committed but was not recorded (the process stopped in between): recorded now"
                    );
                }
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(|e| SetupError::Migration(e.to_string()))
            })
            .await
            .map_err(|e| SetupError::Migration(e.to_string()))?
        }
    }
}

/// Creates an SQLite database file that is not there yet readable by its
/// owner only: it holds token hashes and the regions' pool keys, and
/// SQLite gives its write-ahead log and shared memory the database's mode.
/// An existing file keeps its mode; `:memory:` and `file:` URIs are left
/// to SQLite.
fn create_private(path: &str) -> std::io::Result<()> {
    if path == ":memory:" || path.starts_with("file:") {
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reverts every migration (for the up-down-up test and `httvps migrate --revert-all`).
pub async fn revert_all(dsn: &Dsn) -> Result<usize, SetupError> {
    match dsn {
        Dsn::Postgres(url) => {
            let conn = crate::pg::connect(url).await?;
            let mut harness = AsyncMigrationHarness::new(conn);
            harness
                .revert_all_migrations(PG_MIGRATIONS)
                .map(|v| v.len())
                .map_err(|e| SetupError::Migration(e.to_string()))
        }
        Dsn::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = open_sqlite(&path)?;
                conn.revert_all_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(|e| SetupError::Migration(e.to_string()))
            })
            .await
            .map_err(|e| SetupError::Migration(e.to_string()))?
        }
    }
}

/// Runs a body of diesel-async code against whichever backend the pool
/// holds. The body is expanded once per backend, so it type-checks against
/// both; `$conn` is a `&mut` connection. Pool errors convert with `?` into
/// the caller's error type (see [`crate::error::AppError`]).
#[macro_export]
macro_rules! db_run {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &($db).pool {
            $crate::db::DbPool::Pg(pool) => {
                let mut pooled =
                    $crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
                let $conn = &mut **pooled;
                $body
            }
            $crate::db::DbPool::Sqlite(pool) => {
                let mut pooled =
                    $crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
                let $conn = &mut **pooled;
                $body
            }
        }
    };
}

/// Runs a body in a transaction on whichever backend the pool holds:
/// `db_tx!(db, |conn, outbox| body)`, where `conn` is the transaction's
/// connection and `outbox` an [`Outbox`](crate::events::Outbox) for the
/// events the change implies. The body is an expression of type
/// `Result<T, AppError>` (early `return`s leave the body, not the caller).
/// The events are published when the transaction commits and never when it
/// rolls back: on PostgreSQL as `pg_notify` on the transaction's connection,
/// on SQLite by broadcasting after the commit.
#[macro_export]
macro_rules! db_tx {
    ($db:expr, |$conn:ident, $out:pat_param| $body:expr) => {{
        let db: &$crate::db::Db = &$db;
        match &db.pool {
            $crate::db::DbPool::Pg(pool) => {
                let mut pooled =
                    $crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
                diesel_async::AsyncConnection::transaction(&mut **pooled, async |$conn| {
                    let mut outbox = $crate::events::Outbox::default();
                    let value = async {
                        let $out = &mut outbox;
                        $body
                    }
                    .await?;
                    $crate::db::notify($conn, &outbox).await?;
                    Ok::<_, $crate::error::AppError>(value)
                })
                .await
            }
            $crate::db::DbPool::Sqlite(pool) => {
                let mut pooled =
                    $crate::db::checkout(pool.get(), concat!(file!(), ":", line!())).await?;
                diesel_async::AsyncConnection::transaction(&mut **pooled, async |$conn| {
                    let mut outbox = $crate::events::Outbox::default();
                    let value = async {
                        let $out = &mut outbox;
                        $body
                    }
                    .await?;
                    Ok::<_, $crate::error::AppError>((value, outbox))
                })
                .await
                .map(|(value, outbox)| {
                    db.events().deliver(outbox);
                    value
                })
            }
        }
    }};
}
