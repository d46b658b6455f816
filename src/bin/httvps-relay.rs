//! `httvps-relay`: the data plane: gateway, node and client.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program talks to its terminal"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use httvps::cli::{LogArgs, required};
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
    backend: Option<String>,
    /// This gateway's machine token (from registerGatewayNode).
    #[arg(
        long,
        env = "GATEWAY_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<Secret>,
    /// TLS listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:443")]
    listen: SocketAddr,
    /// Health and metrics listen address.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9443")]
    admin_listen: SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    key: Option<PathBuf>,
    /// Generate a self-signed certificate at --cert/--key if missing (development).
    #[arg(long, env = "GATEWAY_SELF_SIGNED", default_value = "false", value_parser = httvps::cli::parse_bool)]
    self_signed: bool,
    /// Public URL clients use (for access documents).
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    public_url: Option<String>,
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
    /// File keeping unacknowledged usage totals across restarts.
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
    backend: Option<String>,
    /// This node's machine token (from registerOutlineNode).
    #[arg(
        long,
        env = "NODE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<Secret>,
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
    backend: Option<String>,
    /// The device's access token (from registerDevice).
    #[arg(
        long,
        env = "CLIENT_DEVICE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    device_token: Option<Secret>,
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
    let cli: Cli = httvps::cli::parse();
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
    match runtime.block_on(run(cli.command, cli.log.check)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `--check` prints when the settings are valid.
const CHECKED: &str = "configuration ok";

/// The gateway's validated settings: nothing bound yet.
struct GatewaySetup {
    opts: gateway::GatewayOptions,
    backend: Backend,
    acceptor: tls::TlsAcceptor,
    listen: SocketAddr,
    admin_listen: SocketAddr,
}

fn gateway_setup(a: GatewayArgs) -> anyhow::Result<GatewaySetup> {
    let backend_url = required(
        a.backend,
        "GATEWAY_BACKEND_URL",
        "backend",
        "the control plane's URL",
    )?;
    let token = required(
        a.token,
        "GATEWAY_TOKEN",
        "token",
        "this gateway's machine token (registerGatewayNode)",
    )?;
    let cert = required(
        a.cert,
        "GATEWAY_TLS_CERT",
        "cert",
        "the certificate chain (PEM)",
    )?;
    let key = required(a.key, "GATEWAY_TLS_KEY", "key", "the private key (PEM)")?;
    let public_url = required(
        a.public_url,
        "GATEWAY_PUBLIC_URL",
        "public-url",
        "the https:// URL clients use",
    )?;
    client::split_url(&public_url).context("GATEWAY_PUBLIC_URL (--public-url)")?;
    if a.self_signed {
        tls::ensure_self_signed(&cert, &key, &["localhost", "127.0.0.1"])
            .context("GATEWAY_SELF_SIGNED")?;
    }
    let acceptor = tls::acceptor(&cert, &key).context(
        "GATEWAY_TLS_CERT / GATEWAY_TLS_KEY (set GATEWAY_SELF_SIGNED=true to generate them)",
    )?;
    let backend = Backend::new(&backend_url, token.expose()).context("GATEWAY_BACKEND_URL")?;
    let opts = gateway::GatewayOptions {
        public_url,
        max_tunnels: a.max_tunnels,
        max_tunnels_per_device: a.max_tunnels_per_device,
        max_connections: a.max_connections,
        cache_capacity: a.cache_capacity,
        handshake_timeout: Duration::from_secs(a.handshake_timeout_secs.max(1)),
        drain_grace: Duration::from_secs(a.drain_grace_secs),
        spool: a.spool,
        idle_ping: Duration::from_secs(a.idle_ping_secs.max(1)),
        idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
        guess_limit: a.guess_limit,
        guess_window: Duration::from_secs(a.guess_window_secs.max(1)),
        guess_sources: a.guess_sources,
        ..Default::default()
    };
    Ok(GatewaySetup {
        opts,
        backend,
        acceptor,
        listen: a.listen,
        admin_listen: a.admin_listen,
    })
}

fn connect_options(a: ConnectArgs) -> anyhow::Result<client::ClientOptions> {
    let backend = required(
        a.backend,
        "CLIENT_BACKEND_URL",
        "backend",
        "the control plane's URL",
    )?;
    let device_token = required(
        a.device_token,
        "CLIENT_DEVICE_TOKEN",
        "device-token",
        "the device's access token (registerDevice)",
    )?;
    Backend::new(&backend, device_token.expose()).context("CLIENT_BACKEND_URL")?;
    if let Some(g) = &a.gateway {
        client::split_url(g).context("CLIENT_GATEWAY_URL (--gateway)")?;
    }
    if let Some(f) = &a.forward {
        client::parse_destination(f).context("CLIENT_FORWARD (--forward)")?;
    }
    if let Some(ca) = &a.ca_cert {
        tls::connector(Some(ca)).context("CLIENT_CA_CERT (--ca-cert)")?;
    }
    Ok(client::ClientOptions {
        backend,
        device_token,
        gateway: a.gateway,
        ca_cert: a.ca_cert,
        region: a.region,
        forward: a.forward,
    })
}

async fn run(command: Command, check: bool) -> anyhow::Result<()> {
    match command {
        Command::Gateway(a) => {
            let g = gateway_setup(a)?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let listener = tokio::net::TcpListener::bind(g.listen)
                .await
                .with_context(|| format!("binding {} (GATEWAY_LISTEN)", g.listen))?;
            let admin = tokio::net::TcpListener::bind(g.admin_listen)
                .await
                .with_context(|| format!("binding {} (GATEWAY_ADMIN_LISTEN)", g.admin_listen))?;
            tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, "gateway listening");
            gateway::run(
                g.opts,
                g.backend,
                g.acceptor,
                listener,
                Some(admin),
                httvps::shutdown_signal(),
            )
            .await
        }
        Command::Node(a) => {
            let backend_url = required(
                a.backend,
                "NODE_BACKEND_URL",
                "backend",
                "the control plane's URL",
            )?;
            let token = required(
                a.token,
                "NODE_TOKEN",
                "token",
                "this node's machine token (registerOutlineNode)",
            )?;
            let backend = Backend::new(&backend_url, token.expose()).context("NODE_BACKEND_URL")?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
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
