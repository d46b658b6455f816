//! Command-line settings shared by both binaries: logging flags and the
//! boolean parser every `true/false` variable uses.

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default, for log collectors).
    Json,
    /// Human-readable lines, for local runs.
    Pretty,
}

/// Logging flags shared by every command.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: json (default) or pretty.
    #[arg(
        long,
        env = "BACKEND_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    /// Debug mode: verbose logs, and GraphQL introspection, suggestions and GraphiQL on.
    #[arg(long, env = "BACKEND_DEBUG", default_value = "false", value_parser = parse_bool, global = true)]
    pub debug: bool,
}

/// Accepts true/false, 1/0, yes/no, on/off (any case).
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}
