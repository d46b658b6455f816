//! Foundation: storage on both backends, migrations, config, health, the
//! binaries (`serve`, `migrate`, `admin create`, `up`, `schema`).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{TestDb, TestServer, client, gql, httvps_cmd, spawn_listening};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use httvps_control::accounts::{self, Role};
use httvps_control::db::models::{Plan, Subscription, now};
use httvps_control::db::schema::{plans, subscriptions, users};
use httvps_control::db::{self, Db};
use httvps_control::db_run;
use httvps_control::error::AppError;
use httvps_control::ids::{PlanId, SubscriptionId, UserId};
use httvps_control::status::{ResetPeriod, SubscriptionStatus};

async fn storage_invariants(t: &TestDb) {
    let db = t.pool();
    // Users: created, emails normalised, duplicates a typed conflict.
    let u = accounts::create_user(
        &db,
        "  Alice@Example.COM ",
        "correct horse battery",
        Role::User,
    )
    .await
    .expect("create");
    assert_eq!(u.email, "alice@example.com");
    let dup =
        accounts::create_user(&db, "alice@example.com", "another password!", Role::User).await;
    assert!(matches!(dup, Err(AppError::Conflict(_))), "{dup:?}");
    let short = accounts::create_user(&db, "bob@example.com", "short", Role::User).await;
    assert!(matches!(short, Err(AppError::BadRequest(_))));
    let bad_email =
        accounts::create_user(&db, "not-an-email", "long enough password", Role::User).await;
    assert!(matches!(bad_email, Err(AppError::BadRequest(_))));

    // A plan with a negative price breaks a CHECK: bad request, never database text.
    let ts = now();
    let mut plan = Plan {
        id: PlanId::random(),
        name: "basic".into(),
        price_cents: -1,
        currency: "USD".into(),
        duration_days: 30,
        traffic_limit_bytes: Some(10 << 30),
        device_limit: 3,
        reset_period: ResetPeriod::Monthly,
        archived: false,
        created_at: ts,
        updated_at: ts,
    };
    let res: Result<usize, AppError> = async {
        Ok(db_run!(&db, |conn| diesel::insert_into(plans::table)
            .values(&plan)
            .execute(conn)
            .await?))
    }
    .await;
    let err = res.expect_err("check violation");
    assert!(matches!(err, AppError::BadRequest(_)), "{err:?}");
    assert!(
        !err.to_string().to_lowercase().contains("constraint"),
        "database text leaked: {err}"
    );
    plan.price_cents = 500;
    let res: Result<usize, AppError> = async {
        Ok(db_run!(&db, |conn| diesel::insert_into(plans::table)
            .values(&plan)
            .execute(conn)
            .await?))
    }
    .await;
    assert_eq!(res.expect("plan"), 1);

    // Foreign keys are enforced (SQLite too): a subscription of a missing user.
    let sub = |user_id: UserId, status: SubscriptionStatus| Subscription {
        id: SubscriptionId::random(),
        user_id,
        plan_id: plan.id,
        status,
        starts_at: ts,
        expires_at: ts + chrono::Duration::days(30),
        traffic_limit_bytes: plan.traffic_limit_bytes,
        traffic_used_bytes: 0,
        period_start: ts,
        created_at: ts,
        updated_at: ts,
        device_limit: plan.device_limit,
    };
    let insert = |s: Subscription| {
        let db = db.clone();
        async move {
            let r: Result<usize, AppError> = async {
                Ok(db_run!(&db, |conn| diesel::insert_into(
                    subscriptions::table
                )
                .values(&s)
                .execute(conn)
                .await?))
            }
            .await;
            r
        }
    };
    let orphan = insert(sub(UserId::random(), SubscriptionStatus::Active)).await;
    assert!(matches!(orphan, Err(AppError::Conflict(_))), "{orphan:?}");
    // One active subscription per user; cancelled ones don't count.
    insert(sub(u.id, SubscriptionStatus::Active))
        .await
        .expect("first active");
    insert(sub(u.id, SubscriptionStatus::Cancelled))
        .await
        .expect("cancelled alongside");
    let second = insert(sub(u.id, SubscriptionStatus::Active)).await;
    assert!(matches!(second, Err(AppError::Conflict(_))), "{second:?}");

    // Not found is typed.
    let missing = accounts::find_user(&db, UserId::random())
        .await
        .expect("query");
    assert!(missing.is_none());
    let n: i64 = async {
        Ok::<_, AppError>(db_run!(&db, |conn| users::table
            .count()
            .get_result(conn)
            .await?))
    }
    .await
    .expect("count");
    assert_eq!(n, 1);

    // Deleting the user cascades to its subscriptions.
    let left: i64 = async {
        Ok::<_, AppError>(db_run!(&db, |conn| {
            diesel::delete(users::table.find(u.id))
                .execute(conn)
                .await?;
            subscriptions::table.count().get_result(conn).await?
        }))
    }
    .await
    .expect("cascade");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_invariants_postgres() {
    storage_invariants(&TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_invariants_sqlite() {
    storage_invariants(&TestDb::sqlite().await).await;
}

async fn up_down_up(t: &TestDb) {
    let applied = db::migrate(&t.dsn).await.expect("up");
    assert!(applied >= 1);
    assert_eq!(
        db::migrate(&t.dsn).await.expect("up again"),
        0,
        "nothing left to apply"
    );
    let reverted = db::revert_all(&t.dsn).await.expect("down");
    assert_eq!(reverted, applied);
    assert_eq!(db::migrate(&t.dsn).await.expect("up after down"), applied);
    // The schema works after the round trip.
    let db = t.pool();
    accounts::create_user(&db, "x@example.com", "long enough password", Role::Admin)
        .await
        .expect("usable");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_up_down_up_postgres() {
    up_down_up(&TestDb::pg_empty().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_up_down_up_sqlite() {
    up_down_up(&TestDb::sqlite_empty()).await;
}

/// A SQLite migration that commits its own transaction (the device limit's
/// table rebuild) and whose recording was lost (the process stopped between
/// its commit and diesel's record): the next start records it and goes on,
/// instead of running it again into "duplicate column". One that did not
/// commit is run again, whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_migration_committed_but_not_recorded_is_recorded_at_the_next_start() {
    let t = TestDb::sqlite_empty();
    db::migrate(&t.dsn).await.expect("up");
    let db = t.pool();
    let forget = "DELETE FROM __diesel_schema_migrations WHERE version = '20261206000001'";
    let recorded =
        "SELECT count(*) AS n FROM __diesel_schema_migrations WHERE version = '20261206000001'";
    let counted = |db: Db| async move {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: Result<i64, AppError> = async {
            Ok(db_run!(db, |conn| diesel::sql_query(recorded)
                .get_result::<N>(conn)
                .await?
                .n))
        }
        .await;
        n.expect("count")
    };
    let forgot: Result<usize, AppError> = async {
        Ok(db_run!(db, |conn| diesel::sql_query(forget)
            .execute(conn)
            .await?))
    }
    .await;
    assert_eq!(forgot.expect("forget"), 1);
    assert_eq!(counted(db).await, 0);
    assert_eq!(
        db::migrate(&t.dsn).await.expect("the next start migrates"),
        0,
        "nothing is run again"
    );
    let db = t.pool();
    assert_eq!(counted(db.clone()).await, 1);
    accounts::create_user(&db, "x@example.com", "long enough password", Role::Admin)
        .await
        .expect("usable");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ok_then_503_when_database_goes_away() {
    let mut t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let res = client()
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"status": "ok"})
    );
    t.drop_now().await;
    let res = client()
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"status": "unavailable"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_on_sqlite_and_unknown_routes_are_json_404() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let res = client()
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 200);
    let res = client().get(server.url("/nope")).send().await.expect("404");
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "httvps_http_requests_total{method=\"GET\",route=\"/api/v1/health\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    // GraphiQL is off outside debug mode.
    assert_eq!(
        client()
            .get(server.url("/graphiql"))
            .send()
            .await
            .expect("graphiql")
            .status(),
        404
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_start_together_on_a_fresh_database() {
    let t = TestDb::pg_empty().await;
    let procs: Vec<_> = (0..3)
        .map(|_| {
            let mut cmd = httvps_cmd();
            cmd.args(["serve", "--port", "0"])
                .env("BACKEND_DB_DSN", t.url())
                .env("BACKEND_SECRET_KEY", common::TEST_SECRET);
            std::thread::spawn(move || spawn_listening(cmd))
        })
        .collect();
    let procs: Vec<_> = procs
        .into_iter()
        .map(|h| h.join().expect("spawn thread"))
        .collect();
    for p in &procs {
        let addr = p.addr.expect("server came up");
        let res = client()
            .get(format!("http://{addr}/api/v1/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(res.status(), 200);
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = Db::connect(&t.dsn, 1).expect("pool");
    let rows: Row = async {
        Ok::<_, AppError>(db_run!(&db, |conn| diesel::sql_query(
            "SELECT count(*) AS n FROM __diesel_schema_migrations"
        )
        .get_result(conn)
        .await?))
    }
    .await
    .expect("count migrations");
    let expected =
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&db::PG_MIGRATIONS)
            .expect("embedded")
            .len();
    assert_eq!(
        rows.n as usize, expected,
        "each migration applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_bad_config_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[("BACKEND_DB_DSN", "sqlite://x.db")],
            "BACKEND_SECRET_KEY is missing",
        ),
        (
            &[
                ("BACKEND_DB_DSN", "sqlite://x.db"),
                ("BACKEND_SECRET_KEY", "short"),
            ],
            "BACKEND_SECRET_KEY must be at least 32 bytes",
        ),
        (
            &[
                ("BACKEND_DB_DSN", "sqlite://x.db"),
                ("BACKEND_SECRET_KEY", httvps_control::config::EXAMPLE_SECRET),
            ],
            "BACKEND_SECRET_KEY is the example value",
        ),
        (
            &[("BACKEND_SECRET_KEY", common::TEST_SECRET)],
            "BACKEND_DB_DSN is missing",
        ),
        (
            &[
                ("BACKEND_DB_DSN", "mysql://x"),
                ("BACKEND_SECRET_KEY", common::TEST_SECRET),
            ],
            "BACKEND_DB_DSN must start with",
        ),
        (
            &[
                ("BACKEND_DB_DSN", "sqlite://x.db"),
                ("BACKEND_SECRET_KEY", common::TEST_SECRET),
                ("JWT_ALGORITHM", "none"),
            ],
            "JWT_ALGORITHM must be one of HS256, HS384, HS512",
        ),
    ];
    let dir = common::tempdir::TempDir::new();
    for (env, expected) in cases {
        let mut cmd = httvps_cmd();
        cmd.current_dir(dir.path()).arg("serve");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} should be refused");
        assert!(
            stderr.contains(expected),
            "{env:?}: expected {expected:?} in {stderr}"
        );
        assert!(
            !stderr.contains(common::TEST_SECRET),
            "secret leaked into logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_server_cleanly() {
    let t = TestDb::sqlite_empty();
    let mut cmd = httvps_cmd();
    cmd.args(["serve", "--port", "0"])
        .env("BACKEND_DB_DSN", t.url())
        .env("BACKEND_SECRET_KEY", common::TEST_SECRET);
    let mut p = spawn_listening(cmd);
    assert!(p.addr.is_some(), "server came up");
    let pid = p.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = p.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_create_reads_the_password_from_stdin() {
    let t = TestDb::pg().await;
    let mut cmd = httvps_cmd();
    cmd.args([
        "admin",
        "create",
        "--email",
        "root@example.com",
        "--password-stdin",
    ])
    .env("BACKEND_DB_DSN", t.url())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a very good password\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = t.pool();
    let user = accounts::authenticate(&db, "root@example.com", "a very good password")
        .await
        .expect("login");
    assert_eq!(user.role, "admin");
    assert!(user.password_hash.expose().starts_with("$argon2id$"));
    // In the audit trail, as the operator's (no account did it).
    let audited = common::scalar(
        &db,
        &format!(
            "SELECT COUNT(*) AS n FROM audit_log WHERE action = 'create_user' \
             AND target_id = '{}' AND actor_user_id IS NULL",
            user.id
        ),
    )
    .await;
    assert_eq!(audited, 1, "admin create is audited");
    // Without --password-stdin there is no way to set a password: refused.
    let out = httvps_cmd()
        .args(["admin", "create", "--email", "x@example.com"])
        .env("BACKEND_DB_DSN", t.url())
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// On SQLite, `region` and `admin create` refuse a path with no database
/// (a mistyped one would otherwise become a new, empty database) and
/// create nothing; `migrate` (like `serve`) creates a new database readable
/// by its owner only (it holds token hashes and pool keys), after which
/// `region` works.
#[test]
fn the_cli_makes_sqlite_databases_only_on_purpose_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::tempdir::TempDir::new();
    let db = dir.path().join("sub").join("httvps.db");
    let dsn = format!("sqlite://{}", db.display());
    let run = |args: &[&str]| {
        let mut cmd = httvps_cmd();
        cmd.args(args)
            .env("BACKEND_DB_DSN", &dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"a very good password\n");
        child.wait_with_output().expect("wait")
    };
    for args in [
        &["region", "--code", "eu", "--name", "Europe"][..],
        &[
            "admin",
            "create",
            "--email",
            "root@example.com",
            "--password-stdin",
        ],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("no database at"),
            "{args:?}: {err}"
        );
        assert!(!db.exists(), "{args:?} created {}", db.display());
    }
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&db)
        .expect("database")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "database mode {mode:o}");
    let out = run(&["region", "--code", "eu", "--name", "Europe"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("created region eu"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The operator's commands take the database they are given as it is: a
/// new, empty one is migrated (as `serve` would), one that holds another
/// application's tables is refused and gets none of httvps's, and one at
/// an older release's schema is refused rather than upgraded behind its
/// control plane's back.
/// A new PostgreSQL database holding another application's table.
async fn another_applications_database() -> TestDb {
    let db = TestDb::pg_empty().await;
    common::execute(&db.pool(), "CREATE TABLE invoices (id INT PRIMARY KEY)").await;
    db
}

/// Asserts that `db` holds only one table, the other application's.
async fn holds_only_its_own_table(db: &TestDb) {
    let tables = "SELECT CAST(count(*) AS BIGINT) AS n FROM information_schema.tables \
                  WHERE table_schema = current_schema()";
    assert_eq!(
        common::scalar(&db.pool(), tables).await,
        1,
        "only its own table"
    );
}

/// The migrations' record as diesel makes it.
const DIESEL_RECORD: &str = "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) \
                             PRIMARY KEY, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_migrate_only_a_new_database() {
    let run = |dsn: String| {
        let mut cmd = httvps_cmd();
        cmd.args(["region", "--code", "eu", "--name", "Europe"])
            .env("BACKEND_DB_DSN", dsn)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.output().expect("run")
    };
    // Another application's database.
    let other = another_applications_database().await;
    let out = run(other.url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another application's database"),
        "{err}"
    );
    // `device revoke` takes the database as the other commands do.
    let out = httvps_cmd()
        .args(["device", "revoke", &uuid::Uuid::new_v4().to_string()])
        .env("BACKEND_DB_DSN", other.url())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another application's database"),
        "{err}"
    );
    holds_only_its_own_table(&other).await;
    // Another application that keeps its migrations as diesel does.
    let diesel_app = TestDb::pg_empty().await;
    for q in [
        DIESEL_RECORD,
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('20200101000000')",
        "CREATE TABLE invoices (id INT PRIMARY KEY)",
    ] {
        common::execute(&diesel_app.pool(), q).await;
    }
    let out = run(diesel_app.url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another application's database"),
        "{err}"
    );
    // A new database: migrated, and the region made.
    let new = TestDb::pg_empty().await;
    let out = run(new.url());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("created region eu"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An older release's schema: its newest migration not applied.
    let older = TestDb::pg().await;
    common::execute(
        &older.pool(),
        "DELETE FROM __diesel_schema_migrations WHERE version = \
         (SELECT max(version) FROM __diesel_schema_migrations)",
    )
    .await;
    let out = run(older.url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("older release's schema"),
        "{err}"
    );
}

/// `httvps migrate` on `dsn`: whether it succeeded, and what it said.
fn migrate(dsn: &str) -> (bool, String) {
    let out = httvps_cmd()
        .arg("migrate")
        .env("BACKEND_DB_DSN", dsn)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Another application's tables count however httvps's role sees them:
/// kept in a schema of their own, or owned by a role that granted httvps's
/// none (both were unseen, and `migrate` made httvps's tables beside
/// them); an extension's own tables do not make a database another's.
#[tokio::test(flavor = "multi_thread")]
async fn another_applications_tables_count_in_any_schema_and_unseen() {
    let our_tables = "SELECT CAST(count(*) AS BIGINT) AS n FROM pg_catalog.pg_class \
                      WHERE relname = 'users' AND relkind = 'r'";
    // In a schema of its own.
    let schema = TestDb::pg_empty().await;
    common::execute(&schema.pool(), "CREATE SCHEMA billing").await;
    common::execute(
        &schema.pool(),
        "CREATE TABLE billing.invoices (id INT PRIMARY KEY)",
    )
    .await;
    let (ok, err) = migrate(&schema.url());
    assert!(
        !ok && err.contains("another application's database"),
        "{err}"
    );
    assert_eq!(common::scalar(&schema.pool(), our_tables).await, 0);
    // Owned by another role, which granted httvps's role nothing: httvps
    // connects as a role of its own that may create in the database.
    let unseen = TestDb::pg_empty().await;
    let role = format!("httvps_t_{}", std::process::id());
    let db_name = url::Url::parse(&unseen.url()).expect("url").path()[1..].to_owned();
    for q in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT, CREATE ON DATABASE {db_name} TO {role}"),
    ] {
        common::execute(&schema.pool(), &q).await;
    }
    for q in [
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {role}"),
        "CREATE TABLE invoices (id INT PRIMARY KEY)".to_owned(),
    ] {
        common::execute(&unseen.pool(), &q).await;
    }
    let mut as_role = url::Url::parse(&unseen.url()).expect("url");
    as_role.set_username(&role).expect("user");
    as_role.set_password(None).expect("no password");
    let (ok, err) = migrate(as_role.as_str());
    let unseen_ours = common::scalar(&unseen.pool(), our_tables).await;
    // The role goes whatever the outcome.
    common::execute(&unseen.pool(), &format!("DROP OWNED BY {role}")).await;
    common::execute(&schema.pool(), &format!("DROP OWNED BY {role}")).await;
    common::execute(&schema.pool(), &format!("DROP ROLE {role}")).await;
    assert!(
        !ok && err.contains("another application's database"),
        "{err}"
    );
    assert_eq!(unseen_ours, 0);
    // An extension's table alone: a new database.
    let extended = TestDb::pg_empty().await;
    common::execute(
        &extended.pool(),
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    )
    .await;
    let (ok, err) = migrate(&extended.url());
    assert!(ok, "{err}");
    assert_eq!(common::scalar(&extended.pool(), our_tables).await, 1);
}

/// `httvps migrate` (and `serve` and `up`, which prepare the database the
/// same way) refuses another application's database, writing nothing in
/// it, and a database at a newer release's schema (a rollback of the
/// binary), on both backends; it upgrades its own.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_refuses_other_applications_and_newer_schemas() {
    let other = another_applications_database().await;
    let (ok, err) = migrate(&other.url());
    assert!(
        !ok && err.contains("another application's database"),
        "{err}"
    );
    holds_only_its_own_table(&other).await;
    // Only the migrations' record, none applied (a first migration that
    // stopped before its first step): new, migrated.
    let stopped = TestDb::pg_empty().await;
    common::execute(&stopped.pool(), DIESEL_RECORD).await;
    let (ok, err) = migrate(&stopped.url());
    assert!(ok, "{err}");
    let newer = "INSERT INTO __diesel_schema_migrations (version) VALUES ('29991231000001')";
    for t in [TestDb::pg().await, TestDb::sqlite().await] {
        let (ok, err) = migrate(&t.url());
        assert!(ok, "its own, current: {err}");
        common::execute(&t.pool(), newer).await;
        let (ok, err) = migrate(&t.url());
        assert!(
            !ok && err.contains("newer release's schema") && err.contains("29991231000001"),
            "{}: {err}",
            t.url()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_starts_on_sqlite_and_keeps_its_data() {
    let dir = common::tempdir::TempDir::new();
    let data = dir.path().join("data");
    let start = || {
        let mut cmd = httvps_cmd();
        cmd.current_dir(dir.path())
            .args(["up", "--port", "0", "--gateway-port", "0"]);
        spawn_listening(cmd)
    };
    let first = start();
    let addr = first.addr.expect("up came up");
    let res = client()
        .get(format!("http://{addr}/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 200);
    let password_line = first
        .stdout
        .iter()
        .find(|l| l.trim_start().starts_with("password:"))
        .expect("password printed");
    let password = password_line
        .split_whitespace()
        .nth(1)
        .expect("password")
        .to_owned();
    // The printed password logs in as admin.
    let login = gql(
        &format!("http://{addr}"),
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken user{role}}}",
        serde_json::json!({"e": "admin@localhost", "p": password}),
    )
    .await;
    assert_eq!(login["data"]["login"]["user"]["role"], "ADMIN", "{login}");
    // GraphiQL is on in `up`.
    assert_eq!(
        client()
            .get(format!("http://{addr}/graphiql"))
            .send()
            .await
            .expect("graphiql")
            .status(),
        200
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("secret.key"))
            .expect("secret")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The gateway's registered URL is the one it listens at, so links
    // reach it; a restart on another port moves it. The machines are
    // found again by id, under whatever names the operator gave them.
    let registered = async |at: &std::net::SocketAddr, stdout: &[String], names: (&str, &str)| {
        let printed = stdout
            .iter()
            .find_map(|l| l.strip_prefix("gateway:"))
            .and_then(|l| l.split_whitespace().next())
            .expect("gateway line")
            .to_owned();
        let base = format!("http://{at}");
        let login = gql(
            &base,
            None,
            "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
            serde_json::json!({"e": "admin@localhost", "p": password}),
        )
        .await;
        let token = login["data"]["login"]["accessToken"]
            .as_str()
            .expect("token")
            .to_owned();
        let r = gql(
            &base,
            Some(&token),
            "{gatewayNodes{nodes{id name publicUrl}} outlineNodes{nodes{id name}}}",
            serde_json::json!({}),
        )
        .await;
        let gateways = r["data"]["gatewayNodes"]["nodes"]
            .as_array()
            .expect("gateways");
        let nodes = r["data"]["outlineNodes"]["nodes"]
            .as_array()
            .expect("nodes");
        assert_eq!(gateways.len(), 1, "{r}");
        assert_eq!(nodes.len(), 1, "{r}");
        assert_eq!(
            (
                &gateways[0]["name"],
                &gateways[0]["publicUrl"],
                &nodes[0]["name"]
            ),
            (
                &serde_json::json!(names.0),
                &serde_json::json!(printed),
                &serde_json::json!(names.1)
            ),
            "{r}"
        );
        (
            printed,
            base,
            token,
            gateways[0]["id"].clone(),
            nodes[0]["id"].clone(),
        )
    };
    let (_, base, token, gw_id, node_id) =
        registered(&addr, &first.stdout, ("local-gateway", "local-node")).await;
    assert!(data.join("up-machines.json").exists(), "the ids are kept");
    let r = gql(
        &base,
        Some(&token),
        "mutation($g:UUID!,$n:UUID!){updateGatewayNode(id:$g,input:{name:\"my-gw\"}){name} updateOutlineNode(id:$n,input:{name:\"my-node\"}){name}}",
        serde_json::json!({"g": gw_id, "n": node_id}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    // A second `up` on the same data directory stops at once, saying why,
    // instead of moving the first one's machines to its own ports.
    let mut twin = httvps_cmd()
        .current_dir(dir.path())
        .args(["up", "--port", "0", "--gateway-port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut status = None;
    for _ in 0..100 {
        status = twin.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = twin.kill();
        let _ = twin.wait();
        panic!("a second up on the same data directory kept running");
    };
    let mut err = String::new();
    use std::io::Read as _;
    let _ = twin.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(
        !status.success() && err.contains("another `httvps up`"),
        "{status:?}: {err}"
    );
    registered(&addr, &first.stdout, ("my-gw", "my-node")).await;
    drop(first);
    let second = start();
    let again = second.addr.expect("restarted");
    assert!(
        !second.stdout.iter().any(|l| l.contains("password:")),
        "no new password on restart"
    );
    registered(&again, &second.stdout, ("my-gw", "my-node")).await;
    drop(second);
}

/// Cancelling a subscription locks it and then its sessions, the reverse
/// of a usage pass (sessions, then their subscriptions), so it waits for
/// the appliers' lock first: the two never deadlock.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_subscription_waits_for_the_usage_appliers() {
    use httvps_control::actor::Actor;
    use httvps_control::catalogue::{self, NewPlan};
    use httvps_control::subscriptions;
    let t = TestDb::pg().await;
    let db = t.pool();
    let user = accounts::create_user(&db, "c@example.com", "long enough password", Role::User)
        .await
        .expect("user");
    let plan = catalogue::create_plan(
        &db,
        &Actor::Operator,
        NewPlan {
            name: "p".into(),
            price_cents: 0,
            currency: "USD".into(),
            duration_days: 30,
            traffic_limit_bytes: Some(1 << 30),
            device_limit: 1,
            reset_period: ResetPeriod::Monthly,
        },
    )
    .await
    .expect("plan");
    let sub = subscriptions::grant(&db, &Actor::Operator, user.id, plan.id)
        .await
        .expect("grant");
    // An applier's pass holds the lock (taken here for the session).
    let db::DbPool::Pg(pool) = &db.pool else {
        panic!("pg")
    };
    let mut holder = pool.get().await.expect("conn");
    let key = httvps_control::db::APPLY_LOCK_KEY;
    diesel::sql_query(format!("SELECT pg_advisory_lock({key})"))
        .execute(&mut *holder)
        .await
        .expect("lock");
    let cancel = {
        let db = db.clone();
        tokio::spawn(async move { subscriptions::cancel(&db, &Actor::Operator, sub.id).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!cancel.is_finished(), "the cancellation waits for the pass");
    diesel::sql_query(format!("SELECT pg_advisory_unlock({key})"))
        .execute(&mut *holder)
        .await
        .expect("unlock");
    let done = tokio::time::timeout(Duration::from_secs(5), cancel)
        .await
        .expect("the cancellation goes ahead once the pass is over")
        .expect("task")
        .expect("cancel");
    assert_eq!(done.status, SubscriptionStatus::Cancelled);
}

/// `up` runs its control plane with the `BACKEND_*` throttles and HTTP
/// limits `serve` reads, and refuses a bad one by its name.
#[tokio::test(flavor = "multi_thread")]
async fn up_reads_the_backend_throttles_and_limits() {
    let dir = common::tempdir::TempDir::new();
    let up = |vars: &[(&str, &str)]| {
        let mut cmd = httvps_cmd();
        cmd.current_dir(dir.path())
            .args(["up", "--port", "0", "--gateway-port", "0"])
            .envs(vars.iter().copied());
        cmd
    };
    let out = up(&[("BACKEND_LOGIN_PER_SOURCE", "0")])
        .output()
        .expect("run");
    assert!(!out.status.success(), "a zero allowance is refused");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("BACKEND_LOGIN_PER_SOURCE"), "{said}");
    // A write-ahead log left readable by others (an earlier version):
    // made private too.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let wal = dir.path().join("data/httvps.db-wal");
        std::fs::write(&wal, b"").expect("wal");
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).expect("mode");
    }
    let running = spawn_listening(up(&[
        ("BACKEND_LOGIN_PER_SOURCE", "2"),
        ("BACKEND_LOGIN_PER_ACCOUNT", "1000"),
        ("BACKEND_METRICS_TOKEN", "a-metrics-token-of-some-length"),
    ]));
    let base = format!("http://{}", running.addr.expect("up came up"));
    // The HTTP limits too: metrics need their token.
    let metrics = |token: Option<&str>| {
        let mut req = client().get(format!("{base}/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.expect("metrics").status().as_u16() }
    };
    assert_eq!(metrics(None).await, 401);
    assert_eq!(metrics(Some("a-metrics-token-of-some-length")).await, 200);
    // The database (token hashes, pool keys) is its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/httvps.db"))
            .expect("database file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        for side in ["data/httvps.db-wal", "data/httvps.db-shm"] {
            if let Ok(m) = std::fs::metadata(dir.path().join(side)) {
                let mode = m.permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{side}: {mode:o}");
            }
        }
    }
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = gql(
            &base,
            None,
            "mutation{login(email:\"admin@localhost\",password:\"not the password\"){accessToken}}",
            serde_json::json!({}),
        )
        .await;
        codes.push(r["errors"][0]["extensions"]["code"].clone());
    }
    assert_eq!(
        codes,
        ["BAD_REQUEST", "BAD_REQUEST", "LIMIT_EXCEEDED"],
        "two log-ins per source, then throttled"
    );
    drop(running);
}

#[test]
fn schema_graphql_is_up_to_date() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .unwrap_or_default();
    let current = httvps_control::graphql::sdl();
    assert!(
        committed == current,
        "schema.graphql is out of date: regenerate it with `cargo run --bin httvps -- schema > schema.graphql`"
    );
}

#[test]
fn env_example_lists_every_variable_the_code_reads() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"))
        .expect(".env.example");
    let listed: Vec<&str> = example
        .lines()
        .filter_map(|l| l.trim_start_matches('#').trim().split_once('='))
        .map(|(k, _)| k.trim())
        .collect();
    let mut read = vec!["RUST_LOG".to_owned()];
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for marker in ["env = \"", "var(\"", "env!(\""] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    if let Some(end) = rest.find('"') {
                        let name = &rest[..end];
                        if name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                            && !name.starts_with("CARGO")
                        {
                            read.push(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    assert!(read.len() > 8, "the scan found the variables: {read:?}");
    for name in read {
        assert!(
            listed.contains(&name.as_str()),
            "{name} is read by the code but not documented in .env.example"
        );
    }
}

/// The ledger's move to one row per session and hour keeps every byte:
/// per-report rows written before it are summed into their hours.
#[tokio::test(flavor = "multi_thread")]
async fn hourly_ledger_migration_sums_earlier_rows_into_hours() {
    use diesel_migrations::MigrationHarness;
    let t = TestDb::pg_empty().await;
    db::migrate(&t.dsn).await.expect("up");
    let db::Dsn::Postgres(url) = &t.dsn else {
        panic!("pg")
    };
    let conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url)
        .await
        .expect("connect");
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    // Back to before the hourly ledger: every later migration first.
    let mut reverted = 0;
    loop {
        let version = harness
            .revert_last_migration(db::PG_MIGRATIONS)
            .expect("revert")
            .to_string();
        reverted += 1;
        if version == "20261127000002" {
            break;
        }
        assert!(
            version.as_str() > "20261127000002" && reverted < 50,
            "reverted {version} looking for the hourly ledger"
        );
    }
    let mut conn: diesel_async::AsyncPgConnection = harness.into_inner();
    for q in [
        "INSERT INTO users (id, email, password_hash, role, status, token_version, created_at, updated_at) VALUES ('u1', 'u1@example.com', 'x', 'user', 'active', 0, now(), now())",
        "INSERT INTO devices (id, user_id, name, platform, status, token_hash, created_at) VALUES ('d1', 'u1', 'd', 'linux', 'active', 'h', now())",
        "INSERT INTO sessions (id, device_id, started_at, last_activity_at) VALUES ('s1', 'd1', '2026-11-01 09:00:00', '2026-11-01 11:10:00')",
        "INSERT INTO usage_ledger VALUES ('l1', 's1', 1, 100, 10, 100, 10, '2026-11-01 10:05:00'), \
         ('l2', 's1', 2, 300, 30, 200, 20, '2026-11-01 10:40:00'), ('l3', 's1', 3, 700, 70, 400, 40, '2026-11-01 11:10:00')",
    ] {
        diesel::sql_query(q).execute(&mut conn).await.expect(q);
    }
    assert_eq!(db::migrate(&t.dsn).await.expect("up again"), reverted);
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Hour {
        #[diesel(sql_type = diesel::sql_types::Text)]
        hour: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        delta: i64,
    }
    let hours: Vec<Hour> = diesel::sql_query(
        "SELECT CAST(recorded_at AS TEXT) AS hour, seq, total_up + total_down AS total, \
         delta_up + delta_down AS delta FROM usage_ledger ORDER BY recorded_at",
    )
    .load(&mut conn)
    .await
    .expect("ledger");
    let hour = |h: &str, seq, total, delta| Hour {
        hour: h.into(),
        seq,
        total,
        delta,
    };
    assert_eq!(
        hours,
        vec![
            hour("2026-11-01 10:00:00", 2, 330, 330),
            hour("2026-11-01 11:00:00", 3, 770, 440)
        ]
    );
}

#[derive(diesel::QueryableByName)]
struct Spelled {
    #[diesel(sql_type = diesel::sql_types::Text)]
    v: String,
}

/// A statement that uses `$1` twice, run through `Prepared`.
const TWICE: db::Statement = db::Statement {
    pg: "SELECT $1::text || $2::text || $1::text AS v",
    sqlite: "SELECT ?1 || ?2 || ?1 AS v",
};

#[tokio::test(flavor = "multi_thread")]
async fn raw_statements_stay_prepared_and_bind_a_reused_number_twice() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let t = TestDb::pg().await;
    let mut conn = AsyncPgConnection::establish(&t.url())
        .await
        .expect("connect");
    for _ in 0..3 {
        let row: Spelled = TWICE
            .prepared(&conn)
            .text("a")
            .text("b")
            .get_result(&mut conn)
            .await
            .expect("prepared");
        assert_eq!(row.v, "aba");
    }
    // diesel's own raw query is prepared and closed on every run; ours is
    // prepared once and kept.
    let kept: Spelled = diesel::sql_query(
        "SELECT count(*)::text AS v FROM pg_prepared_statements \
         WHERE statement LIKE 'SELECT $1::text || $2::text || $3::text%'",
    )
    .get_result(&mut conn)
    .await
    .expect("count");
    assert_eq!(kept.v, "1", "one statement prepared for three runs");
    let lite = TestDb::sqlite().await;
    let db = lite.pool();
    let row: Result<Spelled, AppError> = async {
        Ok(db_run!(db, |conn| TWICE
            .prepared(conn)
            .text("x")
            .text("y")
            .get_result(conn)
            .await?))
    }
    .await;
    assert_eq!(row.expect("sqlite").v, "xyx");
}
