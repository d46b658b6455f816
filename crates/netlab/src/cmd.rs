//! Running iproute2 (and sysctl) the way the lab needs: failures carry the
//! command line and its stderr, and many changes to one namespace go
//! through one `ip -batch` process instead of one fork each.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs a command to completion; an error names it and quotes its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// Runs `ip ARGS` (in the caller's namespace; pass `-n NS` to aim at one).
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs every line of `lines` as one `ip` command inside namespace `ns`
/// (or the caller's namespace for `None`), in one process: a lab of a few
/// hosts needs dozens of changes, and a fork per change is what makes
/// namespace set-ups slow.
pub(crate) fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    batch("ip", ns, lines)
}

/// [`ip_batch`] for iproute2's `bridge`.
pub(crate) fn bridge_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    batch("bridge", ns, lines)
}

fn batch(program: &str, ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    // -force: carry on after an error so that stderr lists every failure,
    // while the exit status still reports that one happened.
    args.extend(["-force", "-batch", "-"]);
    let mut input = lines.join("\n");
    input.push('\n');
    run_with_input(program, &args, Some(&input)).map(drop)
}

/// Sets sysctls inside namespace `ns` (`key=value` pairs). /proc/sys/net
/// shows the namespace of the process that opens it, so this runs
/// `sysctl` under `ip netns exec`.
pub(crate) fn sysctl(ns: &str, settings: &[String]) -> Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
    args.extend(settings.iter().map(String::as_str));
    ip(&args).map(drop)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    tracing::debug!(command = %line, "netlab.run");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("starting `{line}`"), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("writing to `{line}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{line}`"), e))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if let Some(text) = input {
            stderr.push_str(&format!(" [batch: {}]", text.trim().replace('\n', "; ")));
        }
        return Err(Error::Command {
            command: line,
            status: out.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
