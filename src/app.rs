//! Start-up: turning validated settings into a running control plane, and
//! the zero-setup `up` mode (SQLite, generated secret, first admin).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::jwt::JwtKeys;
use crate::config::{SecretKey, Settings, validate_secret};
use crate::control::accounts::{self, Role};
use crate::control::events::Events;
use crate::control::http::{self, AppState};
use crate::db::{self, Db, Dsn};

/// Connects, migrates and builds the state for `settings`.
pub async fn prepare(settings: &Settings) -> anyhow::Result<AppState> {
    let applied = db::migrate(&settings.dsn)
        .await
        .context("applying migrations")?;
    tracing::info!(
        db.backend = settings.dsn.backend(),
        migrations.applied = applied,
        "database ready"
    );
    let db = Db::connect(&settings.dsn, settings.pool_size).context("opening the database pool")?;
    let jwt = JwtKeys::new(
        &settings.secret,
        settings.jwt_algorithm,
        settings.jwt_expire_minutes * 60,
    );
    let events = Events::new(db.clone());
    if let Dsn::Postgres(url) = &settings.dsn {
        events.start_listener(url).await;
    }
    Ok(AppState::new(
        db,
        jwt,
        events,
        settings.gateway_url.clone(),
        settings.debug,
    ))
}

/// Runs the control plane until `shutdown` completes.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = prepare(&settings).await?;
    let sweeper = crate::control::heartbeats::spawn_sweeper(
        state.db.clone(),
        state.api.events.clone(),
        std::time::Duration::from_secs(2),
    );
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(http.addr = %local, debug = settings.debug, "control plane listening");
    let served = http::serve(listener, state, shutdown)
        .await
        .context("serving HTTP");
    sweeper.abort();
    served?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// What `up` prepared, for the binary to print.
#[derive(Debug)]
pub struct UpReport {
    /// Settings the server runs with.
    pub settings: Settings,
    /// The first admin's email and password, when created by this start.
    pub new_admin: Option<(String, String)>,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// Where `up`'s embedded gateway listens.
pub const UP_GATEWAY_URL: &str = "https://127.0.0.1:8443";

/// Email of the admin `up` creates on first start.
pub const UP_ADMIN_EMAIL: &str = "admin@localhost";

/// Prepares the zero-setup mode: the data directory, a secret kept there
/// (mode 0600), the SQLite database, and a first admin with a random
/// password on the first start only.
pub async fn prepare_up(data_dir: &Path, port: u16) -> anyhow::Result<UpReport> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let secret = load_or_create_secret(&data_dir.join("secret.key"))?;
    let db_path = data_dir.join("httvps.db");
    let dsn = Dsn::Sqlite(db_path.to_string_lossy().into_owned());
    let settings = Settings {
        dsn: dsn.clone(),
        pool_size: 1,
        secret,
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        port,
        jwt_algorithm: jsonwebtoken::Algorithm::HS256,
        jwt_expire_minutes: 60,
        debug: true,
        gateway_url: Some(UP_GATEWAY_URL.to_owned()),
    };
    db::migrate(&dsn).await.context("applying migrations")?;
    let db = Db::connect(&dsn, 1).context("opening the database")?;
    let new_admin = if accounts::admin_exists(&db)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        None
    } else {
        let password = crate::auth::random_secret(15);
        accounts::create_user(&db, UP_ADMIN_EMAIL, &password, Role::Admin)
            .await
            .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
        Some((UP_ADMIN_EMAIL.to_owned(), password))
    };
    Ok(UpReport {
        settings,
        new_admin,
        data_dir: data_dir.to_owned(),
    })
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<SecretKey> {
    match std::fs::read_to_string(path) {
        Ok(raw) => {
            validate_secret(Some(raw.trim())).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = crate::auth::random_secret(48);
            write_private(path, secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(SecretKey::new(secret))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
