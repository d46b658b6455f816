//! Start-up: turning validated settings into a running control plane.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::jwt::JwtKeys;
use crate::config::Settings;
use crate::db::{self, Db, Dsn};
use crate::http;
use crate::https::{TlsFront, TlsListener, WATCH_EVERY};
use crate::state::AppState;

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
    if let Dsn::Postgres(url) = &settings.dsn {
        db.events().start_listener(url).await;
    }
    Ok(AppState::new(
        db,
        jwt,
        settings.gateway_url.clone(),
        settings.enroll.clone(),
        settings.debug,
        settings.throttle.clone(),
    ))
}

/// Runs the control plane until `shutdown` completes.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = prepare(&settings).await?;
    let sweeper =
        crate::heartbeats::spawn_sweeper(state.db.clone(), std::time::Duration::from_secs(2));
    let usage_sweeper = crate::usage_accounting::sweeper::spawn(state.db.clone());
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let served = match &settings.tls {
        None => {
            tracing::info!(http.addr = %local, debug = settings.debug, tls = false, "control plane listening");
            http::serve(listener, state, shutdown).await
        }
        Some(files) => {
            let front = TlsFront::load(files.clone()).context("BACKEND_TLS_CERT / BACKEND_TLS_KEY")?;
            let watch = front.spawn_watch(WATCH_EVERY);
            let listener = TlsListener::new(listener, front).context("TLS listener")?;
            tracing::info!(http.addr = %local, debug = settings.debug, tls = true, "control plane listening");
            let served = http::serve(listener, state, shutdown).await;
            watch.abort();
            served
        }
    }
    .context("serving HTTP");
    sweeper.abort();
    usage_sweeper.abort();
    served?;
    tracing::info!("control plane stopped");
    Ok(())
}
