//! The data plane's command-line settings (`httvps-relay gateway`, `node`,
//! `connect`): flags with their variables, validated into what each
//! command runs with, every error naming its variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use httvps_dataplane::acme::{self, Acme, AcmeOptions};
use httvps_dataplane::backend::Backend;
use httvps_dataplane::certs::CertFiles;
use httvps_dataplane::link::{Link, Pin};
use httvps_dataplane::{client, gateway, tls};
use httvps_wire::Secret;

use crate::cli::required;
use crate::credentials::{self, Sources};
use crate::gateway_certs::file_certs;

// Tokens are `Secret`s: a `{:?}` of the arguments shows none of them.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Control plane base URL.
    #[arg(long, env = "GATEWAY_BACKEND_URL")]
    pub backend: Option<String>,
    /// One-time enrollment string (`httvps gateway add` prints it): redeemed
    /// on first start into --credentials, which later starts use.
    #[arg(long, env = "GATEWAY_ENROLL", hide_env_values = true)]
    pub enroll: Option<String>,
    /// Where the credentials an enrollment gave are kept (owner-only).
    #[arg(
        long,
        env = "GATEWAY_CREDENTIALS",
        default_value = "/var/lib/httvps/gateway-credentials.json"
    )]
    pub credentials: PathBuf,
    /// Extra trusted CA certificate (PEM) for the control plane's HTTPS
    /// (a private CA).
    #[arg(long, env = "GATEWAY_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
    /// SHA-256 pin of a certificate in the control plane's chain
    /// (`sha256:` and 64 hex digits): that certificate becomes the only
    /// trusted root for the control plane.
    #[arg(long, env = "GATEWAY_BACKEND_PIN")]
    pub backend_pin: Option<Pin>,
    /// Allow a plain http:// control-plane URL to a host that is not
    /// loopback: the network between the planes is private.
    #[arg(long, env = "GATEWAY_PRIVATE_LINK", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub private_link: bool,
    /// This gateway's machine token (from registerGatewayNode).
    #[arg(
        long,
        env = "GATEWAY_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<Secret>,
    /// TLS listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:443")]
    pub listen: SocketAddr,
    /// Health and metrics listen address.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9443")]
    pub admin_listen: SocketAddr,
    /// Certificate chain (PEM).
    #[arg(long, env = "GATEWAY_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate at --cert/--key if missing, for
    /// localhost, 127.0.0.1 and the host of --public-url (development).
    #[arg(long, env = "GATEWAY_SELF_SIGNED", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub self_signed: bool,
    /// Obtain and renew the certificate by ACME (TLS-ALPN-01 on --listen's
    /// port) for these DNS names (repeated or comma separated); then
    /// --cert, --key and --self-signed are not used.
    #[arg(long, env = "GATEWAY_ACME_DOMAIN", value_delimiter = ',')]
    pub acme_domain: Vec<String>,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, env = "GATEWAY_ACME_DIRECTORY", default_value = acme::LETS_ENCRYPT)]
    pub acme_directory: String,
    /// ACME account contacts (`mailto:` URLs; repeated or comma separated).
    #[arg(long, env = "GATEWAY_ACME_CONTACT", value_delimiter = ',')]
    pub acme_contact: Vec<String>,
    /// Where the ACME account, certificate and key are kept; default:
    /// `<data-dir>/acme`.
    #[arg(long, env = "GATEWAY_ACME_CACHE")]
    pub acme_cache: Option<PathBuf>,
    /// Extra trusted CA certificate (PEM) for the ACME directory's HTTPS
    /// (a private ACME server, such as Pebble).
    #[arg(long, env = "GATEWAY_ACME_DIRECTORY_CA")]
    pub acme_directory_ca: Option<PathBuf>,
    /// Public URL clients use (for access documents).
    #[arg(long, env = "GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Most open tunnels in all.
    #[arg(long, env = "GATEWAY_MAX_TUNNELS", default_value_t = 10_000, value_parser = at_least_one)]
    pub max_tunnels: usize,
    /// Most open tunnels per device.
    #[arg(long, env = "GATEWAY_MAX_TUNNELS_PER_DEVICE", default_value_t = 512, value_parser = at_least_one)]
    pub max_tunnels_per_device: usize,
    /// Most devices whose validation answers are cached.
    #[arg(long, env = "GATEWAY_CACHE_CAPACITY", default_value_t = 100_000, value_parser = at_least_one)]
    pub cache_capacity: usize,
    /// Most open client connections (handshakes, requests and tunnels);
    /// beyond it new connections are closed at once, before TLS. Keep it
    /// under half the open-file limit: a tunnel holds two descriptors.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 12_000, value_parser = at_least_one)]
    pub max_connections: usize,
    /// Most connections from one source address (an IPv4 address, an IPv6
    /// /64) that carry no tunnel yet (handshakes, plain requests, idle
    /// keep-alives); beyond it new ones from that source are closed at
    /// once, before TLS. Connections carrying a tunnel do not count.
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 256,
        value_parser = at_least_one
    )]
    pub max_connections_per_source: usize,
    /// Deadline for the TLS handshake, headers and upgrade, in seconds.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = at_least_one_second())]
    pub handshake_timeout_secs: u64,
    /// On SIGTERM, seconds open tunnels get to finish before they are closed.
    #[arg(long, env = "GATEWAY_DRAIN_GRACE_SECS", default_value_t = 10)]
    pub drain_grace_secs: u64,
    /// Directory of the gateway's own files (the usage spool, the ACME
    /// cache); created if missing, relative to the working directory.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "/var/lib/httvps")]
    pub data_dir: PathBuf,
    /// File keeping usage totals across restarts, even SIGKILL (written and
    /// fsync'd every 0.5 s and before each report); default:
    /// `<data-dir>/gateway-spool.json`.
    #[arg(long, env = "GATEWAY_SPOOL")]
    pub spool: Option<PathBuf>,
    /// Seconds without data before a tunnel gets a WebSocket Ping.
    #[arg(long, env = "GATEWAY_IDLE_PING_SECS", default_value_t = 30, value_parser = at_least_one_second())]
    pub idle_ping_secs: u64,
    /// Seconds without data before a tunnel (TCP or UDP) is closed.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECS", default_value_t = 600, value_parser = at_least_one_second())]
    pub idle_timeout_secs: u64,
    /// Seconds a connection may carry no tunnel before it is told to go
    /// away (HTTP/2) or closed (HTTP/1.1), whatever other requests it
    /// makes (our client opens a new one).
    #[arg(long, env = "GATEWAY_H2_IDLE_SECS", default_value_t = 60, value_parser = at_least_one_second())]
    pub h2_idle_secs: u64,
    /// Unknown device tokens one source (IPv4 address, IPv6 /64) may present
    /// per window; past it the source gets 429 on every request for the window.
    #[arg(long, env = "GATEWAY_GUESS_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub guess_limit: u32,
    /// The window of --guess-limit, in seconds.
    #[arg(long, env = "GATEWAY_GUESS_WINDOW_SECS", default_value_t = 60, value_parser = at_least_one_second())]
    pub guess_window_secs: u64,
    /// Most sources whose guesses are tracked (bounds the throttle's memory;
    /// when full, new guessing sources are shut out at once).
    #[arg(long, env = "GATEWAY_GUESS_SOURCES", default_value_t = 100_000, value_parser = at_least_one)]
    pub guess_sources: usize,
    /// Most control-plane calls in flight at once about credentials never
    /// seen accepted (requests about one credential share one call); past
    /// it, 503 with Retry-After at once.
    #[arg(long, env = "GATEWAY_MAX_PENDING_CHECKS", default_value_t = 512, value_parser = at_least_one)]
    pub max_pending_checks: usize,
    /// The same, for calls caused by one source (IPv4 address, IPv6 /64);
    /// four times as many of its HTTP/2 streams may wait on such calls in
    /// all.
    #[arg(
        long,
        env = "GATEWAY_MAX_PENDING_CHECKS_PER_SOURCE",
        default_value_t = 16,
        value_parser = at_least_one
    )]
    pub max_pending_checks_per_source: usize,
}

/// A count, at least 1: a bound of 0 would refuse everything (tunnels)
/// or, as some bounds took it, bound nothing; it is refused, naming the
/// variable.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A number of seconds, at least 1 (0 is refused, naming the variable,
/// rather than taken as 1).
fn at_least_one_second() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Control plane base URL.
    #[arg(long, env = "NODE_BACKEND_URL")]
    pub backend: Option<String>,
    /// One-time enrollment string (`httvps node add` prints it): redeemed
    /// on first start into --credentials, which later starts use.
    #[arg(long, env = "NODE_ENROLL", hide_env_values = true)]
    pub enroll: Option<String>,
    /// Where the credentials an enrollment gave are kept (owner-only).
    #[arg(
        long,
        env = "NODE_CREDENTIALS",
        default_value = "/var/lib/httvps/node-credentials.json"
    )]
    pub credentials: PathBuf,
    /// Extra trusted CA certificate (PEM) for the control plane's HTTPS
    /// (a private CA).
    #[arg(long, env = "NODE_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
    /// SHA-256 pin of a certificate in the control plane's chain
    /// (`sha256:` and 64 hex digits): that certificate becomes the only
    /// trusted root for the control plane.
    #[arg(long, env = "NODE_BACKEND_PIN")]
    pub backend_pin: Option<Pin>,
    /// Allow a plain http:// control-plane URL to a host that is not
    /// loopback: the network between the planes is private.
    #[arg(long, env = "NODE_PRIVATE_LINK", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub private_link: bool,
    /// This node's machine token (from registerOutlineNode).
    #[arg(
        long,
        env = "NODE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<Secret>,
    /// Listen address; default: 0.0.0.0 on the registered port.
    #[arg(long, env = "NODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Allow private, loopback and link-local destinations (tests on one machine).
    #[arg(long, env = "NODE_ALLOW_PRIVATE", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub allow_private: bool,
    /// Close a connection (and its destination's) that moves no byte
    /// either way for this many seconds (at least 1; there is no "never").
    #[arg(long, env = "NODE_IDLE_TIMEOUT_SECS", default_value_t = 600, value_parser = at_least_one_second())]
    pub idle_timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// Control plane base URL.
    #[arg(long, env = "CLIENT_BACKEND_URL")]
    pub backend: Option<String>,
    /// Extra trusted CA certificate (PEM) for the control plane's HTTPS
    /// (a private CA).
    #[arg(long, env = "CLIENT_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
    /// SHA-256 pin of a certificate in the control plane's chain
    /// (`sha256:` and 64 hex digits): that certificate becomes the only
    /// trusted root for the control plane.
    #[arg(long, env = "CLIENT_BACKEND_PIN")]
    pub backend_pin: Option<Pin>,
    /// Allow a plain http:// control-plane URL to a host that is not
    /// loopback: the network between the planes is private.
    #[arg(long, env = "CLIENT_PRIVATE_LINK", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub private_link: bool,
    /// The device's access token (from registerDevice).
    #[arg(
        long,
        env = "CLIENT_DEVICE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub device_token: Option<Secret>,
    /// Local SOCKS5 address.
    #[arg(long, env = "CLIENT_SOCKS", default_value = "127.0.0.1:1080")]
    pub socks: SocketAddr,
    /// Gateway URL, `https://HOST[:PORT]`; default: the one the control
    /// plane names.
    #[arg(long, env = "CLIENT_GATEWAY_URL")]
    pub gateway: Option<String>,
    /// Extra trusted certificate (PEM), for a self-signed gateway.
    #[arg(long, env = "CLIENT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Region wanted; default: the device's open session's, else the
    /// control plane's default (the configured gateway URL's, else the
    /// first active gateway's, else the first created; never random).
    #[arg(long, env = "CLIENT_REGION")]
    pub region: Option<String>,
    /// Forward every connection on the --socks address to this host:port
    /// through the tunnel, instead of speaking SOCKS5.
    #[arg(long, env = "CLIENT_FORWARD")]
    pub forward: Option<String>,
    /// Carry every TCP tunnel as a stream of a warm HTTP/2 connection to
    /// the gateway (see --mux-connections) (WebSockets over extended CONNECT, RFC 8441): a new
    /// tunnel costs no TCP, TLS or WebSocket handshake. Falls back to one
    /// connection per tunnel when the gateway does not offer it.
    #[arg(long, env = "CLIENT_MUX", default_value = "false", value_parser = crate::cli::parse_bool)]
    pub mux: bool,
    /// With --mux: how many warm HTTP/2 connections to keep; a new tunnel
    /// goes to the one carrying the fewest, so a bulk download and the
    /// small requests beside it travel apart (a loss on one TCP
    /// connection holds back every stream on it).
    #[arg(long, env = "CLIENT_MUX_CONNECTIONS", default_value_t = client::DEFAULT_MUX_CONNECTIONS as u16,
          value_parser = clap::value_parser!(u16).range(1..=client::MAX_MUX_CONNECTIONS as i64))]
    pub mux_connections: u16,
}

/// The gateway's validated settings: nothing bound yet.
pub struct GatewaySetup {
    pub opts: gateway::GatewayOptions,
    pub backend: Backend,
    pub acceptor: tls::TlsAcceptor,
    /// The certificate files behind it, to reload on change.
    pub certs: CertFiles,
    /// The ACME task keeping those files, to start once listening.
    pub acme: Option<Acme>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
}

/// The gateway's settings checked and its credentials resolved (with
/// `check`, an enrollment string is read but not redeemed). Its own
/// settings (URL, certificate, ACME, data directory) are checked before
/// the string is redeemed, so a mistake in them leaves the string unspent.
pub async fn gateway_setup(a: GatewayArgs, check: bool) -> anyhow::Result<GatewaySetup> {
    let public_url = required(
        a.public_url,
        "GATEWAY_PUBLIC_URL",
        "public-url",
        "the https:// URL clients use",
    )?;
    let (public_host, _) =
        client::split_public_url(&public_url).context("GATEWAY_PUBLIC_URL (--public-url)")?;
    let (certs, acceptor, acme) = if a.acme_domain.is_empty() {
        let (certs, acceptor) = file_certs(a.cert, a.key, a.self_signed, &public_host, check)?;
        (certs, acceptor, None)
    } else {
        if !crate::gateway_certs::acme_covers(&a.acme_domain, &public_host) {
            // A front (a CDN, a proxy) may answer for the public URL, so
            // this is said, not refused: without one, every client's
            // handshake fails on the name.
            tracing::warn!(
                public_host,
                acme_domains = a.acme_domain.join(","),
                "GATEWAY_ACME_DOMAIN does not name GATEWAY_PUBLIC_URL's host: clients that reach this gateway by that name will not trust its certificate"
            );
        }
        let opts = AcmeOptions {
            domains: a.acme_domain,
            directory: a.acme_directory,
            contact: a.acme_contact,
            cache: a.acme_cache.unwrap_or_else(|| a.data_dir.join("acme")),
            directory_ca: a.acme_directory_ca,
        };
        if let Err((setting, e)) = opts.validate() {
            let var = match setting {
                acme::Setting::Domains => "GATEWAY_ACME_DOMAIN (--acme-domain)",
                acme::Setting::Directory => "GATEWAY_ACME_DIRECTORY (--acme-directory)",
                acme::Setting::Contact => "GATEWAY_ACME_CONTACT (--acme-contact)",
                acme::Setting::DirectoryCa => "GATEWAY_ACME_DIRECTORY_CA (--acme-directory-ca)",
            };
            return Err(e.context(var));
        }
        let (task, certs, acceptor) =
            Acme::prepare(opts, !check).context("GATEWAY_ACME_CACHE (--acme-cache)")?;
        (certs, acceptor, Some(task))
    };
    let spool = crate::cli::spool_path(a.spool, &a.data_dir, check)?;
    // The machine's own settings first: a mistake in them ends the start
    // before a one-time enrollment string is spent. Its ports too: one in
    // use is found by binding it a moment (the listeners are bound for
    // good once the credentials are there).
    let (listen, admin) = (a.listen, a.admin_listen);
    // Port 0 (any free one) never clashes.
    if listen.port() != 0
        && listen.port() == admin.port()
        && (listen.ip() == admin.ip()
            || listen.ip().is_unspecified()
            || admin.ip().is_unspecified())
    {
        anyhow::bail!(
            "GATEWAY_ADMIN_LISTEN (--admin-listen) {admin} overlaps GATEWAY_LISTEN (--listen) {listen}: \
             the admin port must be another"
        );
    }
    crate::ports::usable_addrs(
        &[
            (listen, "GATEWAY_LISTEN (--listen)"),
            (admin, "GATEWAY_ADMIN_LISTEN (--admin-listen)"),
        ],
        check,
    )?;
    let backend = credentials::resolve(
        Sources {
            kind: "gateway",
            prefix: "GATEWAY",
            backend: a.backend,
            token: a.token,
            enroll: a.enroll,
            file: &a.credentials,
            link: Link {
                ca_file: a.backend_ca,
                pin: a.backend_pin,
                private_link: a.private_link,
            },
        },
        check,
    )
    .await?;
    let opts = gateway::GatewayOptions {
        public_url,
        max_tunnels: a.max_tunnels,
        max_tunnels_per_device: a.max_tunnels_per_device,
        max_connections: a.max_connections,
        max_connections_per_source: a.max_connections_per_source,
        cache_capacity: a.cache_capacity,
        handshake_timeout: Duration::from_secs(a.handshake_timeout_secs),
        drain_grace: Duration::from_secs(a.drain_grace_secs),
        spool: Some(spool),
        idle_ping: Duration::from_secs(a.idle_ping_secs),
        idle_timeout: Duration::from_secs(a.idle_timeout_secs),
        h2_idle: Duration::from_secs(a.h2_idle_secs),
        guess_limit: a.guess_limit,
        guess_window: Duration::from_secs(a.guess_window_secs),
        guess_sources: a.guess_sources,
        max_pending_checks: a.max_pending_checks,
        max_pending_checks_per_source: a.max_pending_checks_per_source,
        ..Default::default()
    };
    Ok(GatewaySetup {
        opts,
        backend,
        acceptor,
        certs,
        acme,
        listen: a.listen,
        admin_listen: a.admin_listen,
    })
}

pub fn connect_options(a: ConnectArgs) -> anyhow::Result<client::ClientOptions> {
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
    let link = Link {
        ca_file: a.backend_ca,
        pin: a.backend_pin,
        private_link: a.private_link,
    };
    if link.ca_file.is_some() {
        link.client_config()
            .context("CLIENT_BACKEND_CA (--backend-ca)")?;
    }
    Backend::connect(&backend, device_token.expose(), &link).context("CLIENT_BACKEND_URL")?;
    if let Some(g) = &a.gateway {
        client::split_public_url(g).context("CLIENT_GATEWAY_URL (--gateway)")?;
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
        link,
        mux: a.mux,
        mux_connections: usize::from(a.mux_connections),
    })
}

/// The node's control-plane client, from its validated settings (with
/// `check`, an enrollment string is read but not redeemed).
pub async fn node_backend(a: &NodeArgs, check: bool) -> anyhow::Result<Backend> {
    credentials::resolve(
        Sources {
            kind: "node",
            prefix: "NODE",
            backend: a.backend.clone(),
            token: a.token.clone(),
            enroll: a.enroll.clone(),
            file: &a.credentials,
            link: Link {
                ca_file: a.backend_ca.clone(),
                pin: a.backend_pin,
                private_link: a.private_link,
            },
        },
        check,
    )
    .await
}
