//! Structured logs through tracing: JSON by default, a human format on
//! request; `BACKEND_DEBUG` raises the default level; `RUST_LOG` overrides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::subscriber::Interest;
use tracing::{Event, Metadata};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::{FilterExt, LevelFilter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::cli::LogFormat;

/// Most warnings and errors of the Shadowsocks crates written per second;
/// the rest of that second's are dropped. They log one line per bad
/// packet (`decrypt payload failed` for every garbage datagram a client
/// sends through its UDP tunnel): half a million lines, 100 MB, in ten
/// seconds from one client.
const SHADOWSOCKS_LINES_PER_SEC: u64 = 20;

/// The second [`COUNTED`] counts in, and how many lines it let through.
static SECOND: AtomicU64 = AtomicU64::new(0);
static COUNTED: AtomicU64 = AtomicU64::new(0);

/// The filter that holds the Shadowsocks crates to
/// [`SHADOWSOCKS_LINES_PER_SEC`]. It judges events, once each: their
/// records come through the `log` bridge (target `log` until normalized),
/// so a callsite cannot be judged once for all of its events.
struct ShadowsocksRate;

impl<S> Filter<S> for ShadowsocksRate {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == "log" || meta.target().starts_with("shadowsocks") {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        within_rate(normalized.as_ref().unwrap_or_else(|| event.metadata()))
    }

    // No ceiling of its own: the level filter's stands.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

/// Whether an event of `meta` is written: all but the Shadowsocks crates'
/// warnings and errors past [`SHADOWSOCKS_LINES_PER_SEC`] in a second.
fn within_rate(meta: &Metadata<'_>) -> bool {
    if !meta.target().starts_with("shadowsocks") || *meta.level() > tracing::Level::WARN {
        return true;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    admit(now, &SECOND, &COUNTED, SHADOWSOCKS_LINES_PER_SEC)
}

/// One more line in second `now`, of at most `per_sec` a second (`second`
/// and `counted` hold the count's second and the lines so far).
fn admit(now: u64, second: &AtomicU64, counted: &AtomicU64, per_sec: u64) -> bool {
    if second.swap(now, Ordering::Relaxed) != now {
        counted.store(0, Ordering::Relaxed);
    }
    counted.fetch_add(1, Ordering::Relaxed) < per_sec
}

/// Installs the global subscriber. Call once, from a binary's `main`.
pub fn init(format: LogFormat, debug: bool) {
    let default = if debug {
        "debug,hyper=info,h2=info,tokio_postgres=info"
    } else {
        "info"
    };
    let (env, refused) = filter_from(std::env::var("RUST_LOG").ok().as_deref(), default);
    let filter = env.and(ShadowsocksRate);
    let _ = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(
                fmt::layer()
                    // Colours for a terminal only, not into a log file.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Some(why) = refused {
        tracing::warn!(error = %why, "RUST_LOG is not a valid log filter: the default level is used");
    }
}

/// The filter `RUST_LOG` (`given`) sets, else `default`'s; an empty one is
/// unset, an invalid one is set aside with the reason (said once logging
/// is up, where it was ignored without a word).
fn filter_from(given: Option<&str>, default: &str) -> (EnvFilter, Option<String>) {
    match given.map(str::trim).filter(|g| !g.is_empty()) {
        None => (EnvFilter::new(default), None),
        Some(g) => match EnvFilter::try_new(g) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(default), Some(e.to_string())),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_or_empty_rust_log_leaves_the_default() {
        let (f, why) = filter_from(Some("info,httvps=debug"), "warn");
        assert_eq!((f.to_string(), why), ("httvps=debug,info".to_owned(), None));
        for empty in [None, Some(""), Some("  ")] {
            let (f, why) = filter_from(empty, "info");
            assert_eq!((f.to_string(), why), ("info".to_owned(), None), "{empty:?}");
        }
        let (f, why) = filter_from(Some("info,=[{"), "info");
        assert_eq!(f.to_string(), "info");
        assert!(why.is_some(), "an invalid filter passed");
    }

    #[test]
    fn at_most_the_rate_a_second_then_afresh() {
        let (second, counted) = (AtomicU64::new(0), AtomicU64::new(0));
        let first: usize = (0..100).filter(|_| admit(7, &second, &counted, 20)).count();
        assert_eq!(first, 20);
        assert!(admit(8, &second, &counted, 20), "a new second");
        let next: usize = (0..100).filter(|_| admit(8, &second, &counted, 20)).count();
        assert_eq!(next, 19);
    }
}
