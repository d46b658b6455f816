//! `httvps-netlab`: builds a lab of namespace hosts for scripts and
//! benchmarks, prints it as one JSON line, and keeps it up until SIGTERM
//! or SIGINT. See the crate's README for the CLI and the JSON lines.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use httvps_netlab::{Lab, LineParams, Subnet, Topology, netns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

#[derive(Parser)]
#[command(version, about = "Namespace test hosts, links and delay lines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab, print a `ready` JSON line, run until SIGTERM/SIGINT
    /// (SIGUSR1 prints the delay lines' counters), then tear it down.
    Up(UpArgs),
    /// Delete namespaces left by killed runs (those whose process is gone),
    /// or all under a prefix.
    Cleanup {
        /// Delete every namespace starting with this (it must start with
        /// `hv-`), whether its run is alive or not.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// The lab's label in the JSON.
    #[arg(long, default_value = "lab")]
    name: String,
    /// A host, for hosts on no link (others come from --link/--line).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// A link: NAME=HOST,HOST[,HOST...][@SUBNET], e.g. `pool=gw,n1,n2` or
    /// `public=client,gw@203.0.113.0/24`.
    #[arg(long = "link", value_name = "SPEC")]
    links: Vec<String>,
    /// A delay line: NAME=A,B[,delay_ms=MS][,loss=SHARE][,rate_mbit=R]
    /// [,buffer_ms=MS][,seed=N][,offload][,realtime=0|1], e.g.
    /// `wan=client,gw,delay_ms=75,loss=0.01`.
    #[arg(long = "line", value_name = "SPEC")]
    lines: Vec<String>,
    /// A route: A,B,VIA lets A and B reach each other through router VIA.
    #[arg(long = "route", value_name = "A,B,VIA")]
    routes: Vec<String>,
    /// A relay from inside a host to a service outside the lab:
    /// HOST,LISTEN,TARGET, e.g. `cp,127.0.0.1:5432,127.0.0.1:5432` makes
    /// the machine's PostgreSQL answer on 127.0.0.1:5432 inside host cp.
    #[arg(long = "relay", value_name = "HOST,LISTEN,TARGET")]
    relays: Vec<String>,
    /// A sysctl for every host: KEY=VALUE, e.g.
    /// `net.ipv4.tcp_congestion_control=cubic`.
    #[arg(long = "sysctl", value_name = "KEY=VALUE")]
    sysctls: Vec<String>,
    /// Tear the lab down when the process that started this one dies.
    #[arg(long)]
    exit_with_parent: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up(&args),
        Command::Cleanup { prefix } => cleanup(prefix.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "httvps-netlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one JSON line to stdout and flushes it, so that a reader that
/// waits for `ready` sees it at once.
fn emit(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

fn up(args: &UpArgs) -> anyhow::Result<()> {
    let topo = topology(args)?;
    let relays = args
        .relays
        .iter()
        .map(|spec| parse_relay(spec).with_context(|| format!("--relay {spec:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Blocked before any thread starts (the delay lines' threads inherit
    // the mask), so the signals queue for `wait` below instead of killing
    // the process with the namespaces still there.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        signals.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("blocking signals")?;
    if args.exit_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
            .context("setting the parent-death signal")?;
    }
    netns::available().map_err(anyhow::Error::msg)?;
    let lab = Lab::build(&args.name, &topo).context("building the lab")?;
    for (host, listen, target) in &relays {
        lab.relay(host, *listen, *target)
            .with_context(|| format!("--relay {host},{listen},{target}"))?;
    }
    let mut ready = serde_json::to_value(lab.describe()).context("describing the lab")?;
    ready["event"] = "ready".into();
    ready["pid"] = std::process::id().into();
    emit(&ready)?;
    loop {
        let signal = signals.wait().context("waiting for a signal")?;
        emit(&stats(&lab))?;
        if signal != Signal::SIGUSR1 {
            break;
        }
    }
    let prefix = lab.prefix().to_owned();
    drop(lab);
    emit(&serde_json::json!({ "event": "down", "prefix": prefix }))
}

fn stats(lab: &Lab) -> serde_json::Value {
    let lines: serde_json::Map<String, serde_json::Value> = lab
        .plan()
        .lines
        .iter()
        .filter_map(|l| {
            let counts = lab.line_counts(&l.name)?;
            Some((l.name.clone(), serde_json::to_value(counts).ok()?))
        })
        .collect();
    serde_json::json!({ "event": "stats", "lines": lines })
}

fn cleanup(prefix: Option<&str>) -> anyhow::Result<()> {
    let removed = match prefix {
        Some(p) => netns::cleanup(p)?,
        None => netns::cleanup_stale()?,
    };
    emit(&serde_json::json!({ "event": "cleanup", "removed": removed }))
}

fn topology(args: &UpArgs) -> anyhow::Result<Topology> {
    let mut topo = Topology::new();
    for h in &args.hosts {
        topo = topo.host(h);
    }
    for spec in &args.links {
        let (name, rest) = spec
            .split_once('=')
            .with_context(|| format!("--link {spec:?}: expected NAME=HOST,HOST..."))?;
        let (hosts, subnet) = match rest.split_once('@') {
            Some((h, s)) => (
                h,
                Some(
                    s.parse::<Subnet>()
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("--link {spec:?}"))?,
                ),
            ),
            None => (rest, None),
        };
        let hosts: Vec<&str> = hosts.split(',').collect();
        topo = topo.link_in(name, &hosts, subnet);
    }
    for spec in &args.lines {
        let (name, a, b, params) = parse_line(spec).with_context(|| format!("--line {spec:?}"))?;
        topo = topo.delay_line(name, a, b, params);
    }
    for spec in &args.routes {
        let [a, b, via] = spec.split(',').collect::<Vec<_>>()[..] else {
            bail!("--route {spec:?}: expected A,B,VIA");
        };
        topo = topo.route(a, b, via);
    }
    for spec in &args.sysctls {
        let (k, v) = spec
            .split_once('=')
            .with_context(|| format!("--sysctl {spec:?}: expected KEY=VALUE"))?;
        topo = topo.sysctl(k, v);
    }
    Ok(topo)
}

fn parse_relay(spec: &str) -> anyhow::Result<(String, SocketAddr, SocketAddr)> {
    let [host, listen, target] = spec.split(',').collect::<Vec<_>>()[..] else {
        bail!("expected HOST,LISTEN,TARGET");
    };
    Ok((
        host.to_owned(),
        listen.parse().context("LISTEN is not ADDRESS:PORT")?,
        target.parse().context("TARGET is not ADDRESS:PORT")?,
    ))
}

fn parse_line(spec: &str) -> anyhow::Result<(&str, &str, &str, LineParams)> {
    let (name, rest) = spec.split_once('=').context("expected NAME=A,B,...")?;
    let mut parts = rest.split(',');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        bail!("expected two hosts");
    };
    let mut params = LineParams::default();
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let number = || -> anyhow::Result<f64> {
            value
                .parse::<f64>()
                .with_context(|| format!("{key}: {value:?} is not a number"))
        };
        match key {
            "delay_ms" => {
                params.delay =
                    Duration::try_from_secs_f64(number()? / 1000.0).context("a duration in ms")?
            }
            "loss" => params.loss = number()?,
            "rate_mbit" => params.rate_bps = Some((number()? * 1e6) as u64),
            "buffer_ms" => {
                params.buffer =
                    Duration::try_from_secs_f64(number()? / 1000.0).context("a duration in ms")?
            }
            "seed" => params.seed = value.parse().context("seed")?,
            "offload" => params.offload = true,
            "realtime" => {
                params.realtime = match value {
                    "1" => true,
                    "0" => false,
                    _ => bail!("realtime: expected 0 or 1, got {value:?}"),
                }
            }
            other => bail!("unknown setting {other:?}"),
        }
    }
    Ok((name, a, b, params))
}
