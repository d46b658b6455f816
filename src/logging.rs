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

/// Reports the error a command ends with: one `error: …` line on stderr
/// for whoever started it, and, with JSON logs, the same as a log event
/// for the collector (in the human format that line would say it twice).
#[expect(
    clippy::print_stderr,
    reason = "the command's last word to its terminal"
)]
pub fn exiting(format: LogFormat, e: &anyhow::Error) {
    if matches!(format, LogFormat::Json) {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    eprintln!("error: {e:#}");
}
