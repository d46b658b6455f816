//! `httvps-relay`: the data plane: gateway, node and client.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program talks to its terminal"
)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use httvps::cli::LogArgs;
use httvps::relay::{
    ConnectArgs, GatewayArgs, NodeArgs, connect_options, gateway_setup, node_backend,
};
use httvps_dataplane::backend::BackendError;
use httvps_dataplane::{client, gateway, node, tls};

/// httvps data plane: the TLS/WebSocket gateway, the Shadowsocks node, and a
/// SOCKS5 client.
#[derive(Parser, Debug)]
#[command(name = "httvps-relay", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Terminates TLS and WebSocket and pipes tunnels to the node pool.
    Gateway(Box<GatewayArgs>),
    /// Runs a Shadowsocks node registered in the control plane.
    Node(NodeArgs),
    /// A local SOCKS5 proxy tunnelling through a gateway.
    Connect(ConnectArgs),
}

/// What `--check` prints when the settings are valid.
const CHECKED: &str = "configuration ok";

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli: Cli = httvps::cli::parse();
    httvps::logging::init(cli.log.log_format, cli.log.debug);
    let format = cli.log.log_format;
    tls::install_provider();
    // Before any socket: tunnels need descriptors, not the default 1,024.
    httvps_dataplane::nofile::raise();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Seeding takes a while once per process; the runtime waits for it
    // when it shuts down.
    runtime.spawn_blocking(tls::seed_random);
    match runtime.block_on(run(cli.command, cli.log.check)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            httvps::logging::exiting(format, &e);
            ExitCode::FAILURE
        }
    }
}

/// What a machine (`kind`: gateway or node) whose token the control plane
/// refuses is told: removed, rotated or mistyped (401), or another kind
/// of machine's (403, `other`); `None` for any other failure.
fn refused_token(kind: &str, other: &str, e: &BackendError) -> Option<anyhow::Error> {
    match e {
        BackendError::Status { status: 401, .. } => Some(anyhow::anyhow!(
            "the control plane refuses this {kind}'s token ({e}): it was removed, rotated or \
             mistyped; enroll the {kind} again with a new string (`httvps {kind} rotate <id>`)"
        )),
        BackendError::Status { status: 403, .. } => Some(anyhow::anyhow!(
            "the control plane refuses this {kind}'s token ({e}): it is not a {kind}'s (a \
             {other}'s?); give the {kind}'s own token or enrollment string"
        )),
        _ => None,
    }
}

async fn run(command: Command, check: bool) -> anyhow::Result<()> {
    match command {
        Command::Gateway(a) => {
            let g = gateway_setup(*a, check).await?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            // A token the control plane refuses (removed, rotated, mistyped)
            // can never serve a tunnel: said and ended here, as a node does.
            // An unreachable control plane is an outage the gateway rides
            // out, so it starts.
            // An empty heartbeat is refused (403) only to a token of
            // another kind of caller.
            if let Err(e) = g.backend.gateway_heartbeat(&Default::default()).await
                && let Some(refused) = refused_token("gateway", "node", &e)
            {
                return Err(refused);
            }
            let listener = tokio::net::TcpListener::bind(g.listen)
                .await
                .with_context(|| format!("binding {} (GATEWAY_LISTEN)", g.listen))?;
            let admin = tokio::net::TcpListener::bind(g.admin_listen)
                .await
                .with_context(|| format!("binding {} (GATEWAY_ADMIN_LISTEN)", g.admin_listen))?;
            tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, "gateway listening");
            let watch = g.certs.spawn_watch(httvps_dataplane::certs::WATCH_EVERY);
            // Started once listening: the ACME server validates on our port.
            let acme = g.acme.map(httvps_dataplane::acme::Acme::spawn);
            let served = gateway::run(
                g.opts,
                g.backend,
                g.acceptor,
                listener,
                Some(admin),
                httvps::shutdown_signal(),
            )
            .await;
            watch.abort();
            if let Some(task) = acme {
                task.abort();
            }
            if served.is_ok() {
                tracing::info!("gateway stopped");
            }
            served
        }
        Command::Node(a) => {
            // A listen address given is checked before an enrollment string
            // is spent (the registered port is known only from the control
            // plane); in a check, a port in use may be the node's own.
            if let Some(listen) = a.listen {
                httvps::ports::usable_node_addr(listen, "NODE_LISTEN (--listen)", check)?;
            }
            let backend = node_backend(&a, check).await?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            // A control plane that is down (a power cut brought every host
            // up at once) is waited for, as a gateway rides it out; a
            // refusal (a wrong or retired token) or a control plane that
            // is not trusted (its certificate, the pin) ends the start at
            // once.
            let mut wait = Duration::from_secs(1);
            let cfg = loop {
                match backend.outline_config().await {
                    Ok(cfg) => break cfg,
                    Err(e) if e.is_outage() && !e.is_untrusted() => {
                        tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "fetching this node's settings: trying again");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = httvps::shutdown_signal() => return Ok(()),
                        }
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => {
                        return Err(refused_token("node", "gateway", &e).unwrap_or_else(|| {
                            anyhow::Error::new(e).context("fetching this node's settings")
                        }));
                    }
                }
            };
            let method = node::parse_method(&cfg.method).context("unsupported cipher")?;
            let port = u16::try_from(cfg.port).context("registered port")?;
            let listen = a
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
            let running = node::start(&node::NodeOptions {
                listen,
                method,
                password: cfg.secret,
                allow_private: a.allow_private,
                idle_timeout: Duration::from_secs(a.idle_timeout_secs),
            })
            .await
            .with_context(|| {
                let from = match a.listen {
                    Some(_) => "NODE_LISTEN (--listen)",
                    None => "the registered port; another with NODE_LISTEN (--listen)",
                };
                format!("starting the Shadowsocks server on {listen} ({from})")
            })?;
            tracing::info!(addr = %running.addr, node.id = %cfg.node_id, region = %cfg.region, "node listening");
            let running = Arc::new(running);
            let witness = node::witness::spawn_reports(
                backend.clone(),
                running.witness.clone(),
                node::witness::ASK_EVERY,
                node::witness::TOTALS_EVERY,
            );
            let beats = node::spawn_heartbeats(backend, running.clone(), Duration::from_secs(5));
            httvps::shutdown_signal().await;
            beats.abort();
            witness.abort();
            // Open tunnels are reset, so their clients see the cut.
            running.shut_down(Duration::from_secs(2)).await;
            tracing::info!("node stopped");
            Ok(())
        }
        Command::Connect(a) => {
            let socks = a.socks;
            let opts = connect_options(a)?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let listener = tokio::net::TcpListener::bind(socks)
                .await
                .with_context(|| format!("binding {socks} (CLIENT_SOCKS)"))?;
            tracing::info!(socks = %listener.local_addr()?, "SOCKS5 proxy listening");
            client::run(opts, listener, httvps::shutdown_signal()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tok-3kQ9vX2mR7pL4wN8sT1yZ6bC5dF0gH3jK9nP2qWxYz";

    #[test]
    fn formatted_arguments_show_no_token() {
        for args in [
            vec![
                "httvps-relay",
                "gateway",
                "--backend",
                "http://127.0.0.1:1",
                "--token",
                SECRET,
                "--cert",
                "c",
                "--key",
                "k",
                "--public-url",
                "https://gw",
            ],
            vec![
                "httvps-relay",
                "node",
                "--backend",
                "http://127.0.0.1:1",
                "--token",
                SECRET,
            ],
            vec![
                "httvps-relay",
                "connect",
                "--backend",
                "http://127.0.0.1:1",
                "--device-token",
                SECRET,
            ],
        ] {
            let cli: Cli = httvps::cli::parse_from(&args).expect("arguments");
            let shown = format!("{cli:?} {cli:#?}");
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
            let token = match &cli.command {
                Command::Gateway(a) => a.token.as_ref(),
                Command::Node(a) => a.token.as_ref(),
                Command::Connect(a) => a.device_token.as_ref(),
            }
            .expect("token");
            assert_eq!(token.expose(), SECRET, "the value itself is kept");
            assert!(!token.to_string().contains(SECRET));
        }
    }
}
