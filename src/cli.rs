//! Command-line settings shared by both binaries: logging flags, the
//! boolean parser every `true/false` variable uses, and parsing that treats
//! a set-but-empty variable as unset (so `.env.example`'s `NAME=` lines
//! mean "use the default"), with errors that name the variable.

use std::ffi::OsString;

use clap::{Args, Parser, ValueEnum};

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
    /// Debug mode: verbose logs (and, in the control plane, GraphQL
    /// introspection, suggestions and GraphiQL on).
    #[arg(long, env = "BACKEND_DEBUG", default_value = "false", value_parser = parse_bool, global = true)]
    pub debug: bool,
    /// Validate the settings (flags, environment, `.env`), print what is
    /// wrong naming the variable, and exit without starting.
    #[arg(long, global = true)]
    pub check: bool,
}

/// Accepts true/false, 1/0, yes/no, on/off (any case).
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Parses the process's command line as [`parse_from`] does; prints the
/// error or help and exits when it does not parse.
pub fn parse<T: Parser>() -> T {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parses `args` with every set-but-empty (or blank) variable treated as
/// unset, and an invalid value taken from a variable reported with the
/// variable's name.
pub fn parse_from<T, I, A>(args: I) -> Result<T, clap::Error>
where
    T: Parser,
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let mut cmd = without_empty_env(T::command());
    let matches = match cmd.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(e) => return Err(name_the_variable(&cmd, e)),
    };
    T::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Whether `name` is set to nothing but blanks.
fn is_blank(name: &std::ffi::OsStr) -> bool {
    std::env::var_os(name).is_some_and(|v| v.to_str().is_some_and(|s| s.trim().is_empty()))
}

/// `cmd` (and its subcommands) with the `env` of every argument whose
/// variable is blank removed, so clap uses the default or reports it missing.
fn without_empty_env(cmd: clap::Command) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut cmd = cmd.mut_args(|a| match a.get_env() {
        Some(name) if is_blank(name) => a.env(None),
        _ => a,
    });
    for name in subs {
        cmd = cmd.mut_subcommand(name, without_empty_env);
    }
    cmd
}

/// Every argument of `cmd` and its subcommands: (long flag, variable).
fn env_args(cmd: &clap::Command, out: &mut Vec<(String, String)>) {
    for a in cmd.get_arguments() {
        if let (Some(long), Some(env)) = (a.get_long(), a.get_env()) {
            out.push((long.to_owned(), env.to_string_lossy().into_owned()));
        }
    }
    for s in cmd.get_subcommands() {
        env_args(s, out);
    }
}

/// Clap names the flag of an invalid value; when the value came from a
/// variable, say which one, since that is what an operator has to fix.
fn name_the_variable(cmd: &clap::Command, e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let shown = e.to_string();
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => Some(v.clone()),
        _ => None,
    };
    let mut args = Vec::new();
    env_args(cmd, &mut args);
    // The argument clap names, whose variable holds the refused value.
    let hit = args.into_iter().find(|(long, env)| {
        (shown.contains(&format!("'--{long} <")) || shown.contains(&format!("'--{long}'")))
            && std::env::var(env).is_ok_and(|v| value.as_deref().is_none_or(|x| x == v))
    });
    match hit {
        Some((long, env)) => {
            let why = shown.trim_start_matches("error: ").trim_end();
            clap::Error::raw(e.kind(), format!("{env} (--{long}): {why}\n"))
        }
        None => e,
    }
}

/// A required setting: its value, or an error naming the variable and flag.
pub fn required<T>(value: Option<T>, var: &str, flag: &str, what: &str) -> anyhow::Result<T> {
    value.ok_or_else(|| anyhow::anyhow!("{var} (--{flag}) is missing: {what}"))
}

/// The gateway's usage spool: `spool` (GATEWAY_SPOOL) or the default file
/// under `data_dir`, its directory made (with `check`, only found
/// usable). A directory where the file goes is refused: never written
/// over, the spool would be off, said every half second; so is a
/// directory this process may not write in, before a start spends its
/// enrollment string.
pub fn spool_path(
    spool: Option<std::path::PathBuf>,
    data_dir: &std::path::Path,
    check: bool,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let var = if spool.is_some() {
        "GATEWAY_SPOOL (--spool)"
    } else {
        "GATEWAY_DATA_DIR (--data-dir)"
    };
    let spool = spool.unwrap_or_else(|| data_dir.join("gateway-spool.json"));
    anyhow::ensure!(
        !spool.is_dir(),
        "{var}: {} is a directory; the spool is a file",
        spool.display()
    );
    if let Some(dir) = spool.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !check {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{var}: creating {}", dir.display()))?;
        }
        crate::up::usable_dir(dir, var)?;
        if !check {
            // The rights say yes to root wherever the file system says no
            // (sysfs, a full disk): a file made and removed is the answer.
            let probe = dir.join(format!(".httvps-write-check-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .with_context(|| format!("{var}: {} is not writable", dir.display()))?;
        }
    }
    Ok(spool)
}
