//! Start-up: turning validated settings into a running control plane.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::jwt::JwtKeys;
use crate::config::Settings;
use crate::db::{self, Db, Dsn};
use crate::http;
use crate::https::{TlsFront, WATCH_EVERY};
use crate::state::AppState;

/// Connects, migrates and builds the state for `settings`.
pub async fn prepare(settings: &Settings) -> anyhow::Result<AppState> {
    let applied = db::migrate_for_serve(&settings.dsn)
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
    crate::listener::raise_nofile_limit();
    let state = prepare(&settings).await?;
    let sweeper =
        crate::heartbeats::spawn_sweeper(state.db.clone(), std::time::Duration::from_secs(2));
    let usage_sweeper = crate::usage_accounting::sweeper::spawn(state.db.clone());
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let tls = match &settings.tls {
        None => None,
        Some(files) => {
            Some(TlsFront::load(files.clone()).context("BACKEND_TLS_CERT / BACKEND_TLS_KEY")?)
        }
    };
    let watch = tls.as_ref().map(|front| front.spawn_watch(WATCH_EVERY));
    tracing::info!(http.addr = %local, debug = settings.debug, tls = tls.is_some(), "control plane listening");
    let served = http::serve_with(listener, state, settings.http.clone(), tls, shutdown)
        .await
        .context("serving HTTP");
    if let Some(w) = watch {
        w.abort();
    }
    sweeper.abort();
    usage_sweeper.abort();
    served?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Binds with a deep accept queue (4096, as far as the kernel allows), so a
/// burst of connections waits to be accepted (and shed by the budget if
/// need be) instead of overflowing the queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
