//! Structured logs through tracing: JSON by default, a human format on
//! request; `BACKEND_DEBUG` raises the default level; `RUST_LOG` overrides.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Call once, from a binary's `main`.
pub fn init(format: LogFormat, debug: bool) {
    let default = if debug {
        "debug,hyper=info,h2=info,tokio_postgres=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
