//! `httvps-relay`: the data plane: gateway, node and client.
#![expect(
    clippy::print_stderr,
    reason = "a command-line program reports fatal errors on its terminal"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use httvps::cli::LogArgs;
use httvps_dataplane::backend::Backend;
use httvps_dataplane::{client, gateway, node, tls};
use httvps_wire::Secret;

/// httvps data plane: the TLS/WebSocket gateway, the Shadowsocks node, and a
/// SOCKS5 client.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Terminates TLS and WebSocket and pipes tunnels to the node pool.
    Gateway(GatewayArgs),
    /// Runs a Shadowsocks node registered in the control plane.
    Node(NodeArgs),
    /// A local SOCKS5 proxy tunnelling through a gateway.
    Connect(ConnectArgs),
}

// Tokens are `Secret`s: a `{:?}` of the arguments shows none of them.
#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// Control plane base URL.
    #[arg(long, env = "GATEWAY_BACKEND_URL")]
    backend: String,
    /// This gateway's machine token (from registerGatewayNode).
    #[arg(
        long,
        env = "GATEWAY_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Secret,
    /// TLS listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:443")]
    listen: SocketAddr,
    /// Health and metrics listen address.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9443")]
    admin_listen: SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    key: PathBuf,
    /// Generate a self-signed certificate at --cert/--key if missing (development).
    #[arg(long, env = "GATEWAY_SELF_SIGNED", default_value = "false", value_parser = httvps::cli::parse_bool)]
    self_signed: bool,
    /// Public URL clients use (for access documents).
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    public_url: String,
    /// Most open tunnels in all.
    #[arg(long, env = "GATEWAY_MAX_TUNNELS", default_value_t = 10_000)]
    max_tunnels: usize,
    /// Most open tunnels per device.
    #[arg(long, env = "GATEWAY_MAX_TUNNELS_PER_DEVICE", default_value_t = 512)]
    max_tunnels_per_device: usize,
    /// Most devices whose validation answers are cached.
    #[arg(long, env = "GATEWAY_CACHE_CAPACITY", default_value_t = 100_000)]
    cache_capacity: usize,
    /// Most open client connections (handshakes, requests and tunnels);
    /// beyond it new connections are closed at once, before TLS. Keep it
    /// under half the open-file limit: a tunnel holds two descriptors.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 12_000)]
    max_connections: usize,
    /// Deadline for the TLS handshake, headers and upgrade, in seconds.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    handshake_timeout_secs: u64,
    /// On SIGTERM, seconds open tunnels get to finish before they are closed.
    #[arg(long, env = "GATEWAY_DRAIN_GRACE_SECS", default_value_t = 10)]
    drain_grace_secs: u64,
    /// Directory of the gateway's own files (the usage spool); created if
    /// missing.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// File keeping usage totals across restarts, even SIGKILL (written and
    /// fsync'd every 0.5 s and before each report); default:
    /// `<data-dir>/gateway-spool.json`.
    #[arg(long, env = "GATEWAY_SPOOL")]
    spool: Option<PathBuf>,
    /// Seconds without data before a tunnel gets a WebSocket Ping.
    #[arg(long, env = "GATEWAY_IDLE_PING_SECS", default_value_t = 30)]
    idle_ping_secs: u64,
    /// Seconds without data before a tunnel (TCP or UDP) is closed.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Unknown device tokens one source (IPv4 address, IPv6 /64) may present
    /// per window; past it the source gets 429 on every request for the window.
    #[arg(long, env = "GATEWAY_GUESS_LIMIT", default_value_t = 20)]
    guess_limit: u32,
    /// The window of --guess-limit, in seconds.
    #[arg(long, env = "GATEWAY_GUESS_WINDOW_SECS", default_value_t = 60)]
    guess_window_secs: u64,
    /// Most sources whose guesses are tracked (bounds the throttle's memory;
    /// when full, new guessing sources are shut out at once).
    #[arg(long, env = "GATEWAY_GUESS_SOURCES", default_value_t = 100_000)]
    guess_sources: usize,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Control plane base URL.
    #[arg(long, env = "NODE_BACKEND_URL")]
    backend: String,
    /// This node's machine token (from registerOutlineNode).
    #[arg(
        long,
        env = "NODE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Secret,
    /// Listen address; default: 0.0.0.0 on the registered port.
    #[arg(long, env = "NODE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Allow private, loopback and link-local destinations (tests on one machine).
    #[arg(long, env = "NODE_ALLOW_PRIVATE", default_value = "false", value_parser = httvps::cli::parse_bool)]
    allow_private: bool,
}

#[derive(clap::Args, Debug)]
struct ConnectArgs {
    /// Control plane base URL.
    #[arg(long, env = "CLIENT_BACKEND_URL")]
    backend: String,
    /// The device's access token (from registerDevice).
    #[arg(
        long,
        env = "CLIENT_DEVICE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    device_token: Secret,
    /// Local SOCKS5 address.
    #[arg(long, env = "CLIENT_SOCKS", default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
    /// Gateway URL; default: the one the control plane names.
    #[arg(long, env = "CLIENT_GATEWAY_URL")]
    gateway: Option<String>,
    /// Extra trusted certificate (PEM), for a self-signed gateway.
    #[arg(long, env = "CLIENT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Region wanted.
    #[arg(long, env = "CLIENT_REGION")]
    region: Option<String>,
    /// Forward every connection on the --socks address to this host:port
    /// through the tunnel, instead of speaking SOCKS5.
    #[arg(long, env = "CLIENT_FORWARD")]
    forward: Option<String>,
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    httvps::logging::init(cli.log.log_format, cli.log.debug);
    tls::install_provider();
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gateway(a) => {
            if a.self_signed {
                tls::ensure_self_signed(&a.cert, &a.key, &["localhost", "127.0.0.1"])?;
            }
            let acceptor = tls::acceptor(&a.cert, &a.key)?;
            let spool = a
                .spool
                .unwrap_or_else(|| a.data_dir.join("gateway-spool.json"));
            if let Some(dir) = spool.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {} (GATEWAY_DATA_DIR)", dir.display()))?;
            }
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("binding {}", a.listen))?;
            let admin = tokio::net::TcpListener::bind(a.admin_listen)
                .await
                .with_context(|| format!("binding {}", a.admin_listen))?;
            tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, "gateway listening");
            let opts = gateway::GatewayOptions {
                public_url: a.public_url,
                max_tunnels: a.max_tunnels,
                max_tunnels_per_device: a.max_tunnels_per_device,
                max_connections: a.max_connections,
                cache_capacity: a.cache_capacity,
                handshake_timeout: Duration::from_secs(a.handshake_timeout_secs.max(1)),
                drain_grace: Duration::from_secs(a.drain_grace_secs),
                spool: Some(spool),
                idle_ping: Duration::from_secs(a.idle_ping_secs.max(1)),
                idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
                guess_limit: a.guess_limit,
                guess_window: Duration::from_secs(a.guess_window_secs.max(1)),
                guess_sources: a.guess_sources,
                ..Default::default()
            };
            let backend = Backend::new(&a.backend, a.token.expose())?;
            gateway::run(
                opts,
                backend,
                acceptor,
                listener,
                Some(admin),
                httvps::shutdown_signal(),
            )
            .await
        }
        Command::Node(a) => {
            let backend = Backend::new(&a.backend, a.token.expose())?;
            let cfg = backend
                .outline_config()
                .await
                .context("fetching this node's settings")?;
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
            })
            .await
            .with_context(|| format!("starting the Shadowsocks server on {listen}"))?;
            tracing::info!(addr = %running.addr, node.id = %cfg.node_id, region = %cfg.region, "node listening");
            let running = Arc::new(running);
            let beats = node::spawn_heartbeats(backend, running.clone(), Duration::from_secs(5));
            httvps::shutdown_signal().await;
            beats.abort();
            running.stop();
            Ok(())
        }
        Command::Connect(a) => {
            let listener = tokio::net::TcpListener::bind(a.socks)
                .await
                .with_context(|| format!("binding {}", a.socks))?;
            tracing::info!(socks = %listener.local_addr()?, "SOCKS5 proxy listening");
            let opts = client::ClientOptions {
                backend: a.backend,
                device_token: a.device_token,
                gateway: a.gateway,
                ca_cert: a.ca_cert,
                region: a.region,
                forward: a.forward,
            };
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
            let cli = Cli::try_parse_from(&args).expect("arguments");
            let shown = format!("{cli:?} {cli:#?}");
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
            let token = match &cli.command {
                Command::Gateway(a) => &a.token,
                Command::Node(a) => &a.token,
                Command::Connect(a) => &a.device_token,
            };
            assert_eq!(token.expose(), SECRET, "the value itself is kept");
            assert!(!token.to_string().contains(SECRET));
        }
    }
}
