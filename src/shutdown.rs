//! Shutdown on a signal, shared by both binaries.

use std::sync::atomic::{AtomicBool, Ordering};

/// Completes on SIGTERM or SIGINT. The first such signal asks for a clean
/// stop (a gateway drains its tunnels, a server its requests); a second
/// one, while that runs, ends the process at once with status 130, as a
/// double Ctrl-C is meant (what a gateway counted is in its spool, as
/// after a crash).
pub async fn shutdown_signal() {
    any_signal().await;
    tracing::info!("shutdown requested");
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if !WATCHING.swap(true, Ordering::SeqCst) {
        tokio::spawn(async {
            any_signal().await;
            tracing::warn!("a second signal: stopping at once");
            std::process::exit(130);
        });
    }
}

/// Completes on the next SIGTERM or SIGINT.
async fn any_signal() {
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
}
