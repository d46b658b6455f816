//! The control plane's CLI for machines: `httvps gateway
//! add|update|rotate|remove` and `httvps node add|update|rotate|remove`.
//! Adding or rotating prints a
//! one-time enrollment string (control-plane URL, certificate pin, token)
//! that `httvps-relay gateway|node --enroll` redeems on first start.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use httvps_control::actor::Actor;
use httvps_control::config::DbArgs;
use httvps_control::db::{self, Db};
use httvps_control::error::AppError;
use httvps_control::nodes::{self, EnrollmentTtl, NewOutlineNode};
use httvps_dataplane::link::{Link, Pin};
use httvps_wire::enroll::Enrollment;

/// Where the printed strings send machines, and how they trust it.
#[derive(Debug, Clone, Args)]
pub struct EnrollArgs {
    /// The control plane's URL as gateways and nodes reach it
    /// (https://, or http:// over a loopback or private link).
    #[arg(long, env = "BACKEND_PUBLIC_URL", global = true)]
    pub control_url: Option<String>,
    /// The pin (sha256:<hex>) put in enrollment strings; default: the last
    /// certificate of --tls-cert (the private CA when the chain ends with
    /// it), none when the control plane has no certificate of its own.
    #[arg(long, env = "BACKEND_ENROLL_PIN", global = true)]
    pub enroll_pin: Option<Pin>,
    /// The control plane's certificate chain (see `httvps serve --help`).
    #[arg(long, env = "BACKEND_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
}

/// How long a printed enrollment string works.
#[derive(Debug, Args)]
pub struct Lifetime {
    /// Hours the enrollment string works unless redeemed or used (1-720).
    #[arg(long = "ttl-hours", value_name = "HOURS", default_value_t = EnrollmentTtl::default(), value_parser = ttl_hours)]
    ttl: EnrollmentTtl,
}

/// `--ttl-hours`, checked as the control plane checks it.
fn ttl_hours(value: &str) -> Result<EnrollmentTtl, String> {
    let hours = value.parse().map_err(|e| format!("{e}"))?;
    EnrollmentTtl::hours("--ttl-hours", Some(hours)).map_err(|e| e.to_string())
}

/// `httvps gateway …`.
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Registers a gateway and prints its enrollment string.
    Add {
        /// Region code.
        #[arg(long)]
        region: String,
        /// Unique name.
        #[arg(long)]
        name: String,
        /// The https:// URL clients connect to.
        #[arg(long)]
        public_url: String,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Changes a gateway's name or public URL (the links handed out from
    /// now on; set the gateway's own GATEWAY_PUBLIC_URL on its host too).
    #[command(group(clap::ArgGroup::new("changes").required(true).multiple(true)))]
    Update {
        /// The gateway's id.
        id: uuid::Uuid,
        /// New unique name.
        #[arg(long, group = "changes")]
        name: Option<String>,
        /// New https:// URL clients connect to (refused while
        /// BACKEND_GATEWAY_URL names its current one).
        #[arg(long, group = "changes")]
        public_url: Option<String>,
    },
    /// Replaces a gateway's token (the old one stops working) and prints a
    /// new enrollment string.
    Rotate {
        /// The gateway's id.
        id: uuid::Uuid,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Deletes a gateway; its token stops working.
    Remove {
        /// The gateway's id.
        id: uuid::Uuid,
    },
}

/// `httvps node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Registers a Shadowsocks node (with its region's pool key) and prints
    /// its enrollment string.
    Add {
        /// Region code.
        #[arg(long)]
        region: String,
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Address the gateways reach it at.
        #[arg(long)]
        host: String,
        /// Its port.
        #[arg(long)]
        port: i32,
        /// Most concurrent sessions.
        #[arg(long, default_value_t = 1000)]
        capacity: i32,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Changes a node's name, address or capacity (new tunnels go to a new
    /// address; open ones keep theirs).
    #[command(group(clap::ArgGroup::new("changes").required(true).multiple(true)))]
    Update {
        /// The node's id.
        id: uuid::Uuid,
        /// New unique name.
        #[arg(long, group = "changes")]
        name: Option<String>,
        /// New address the gateways reach it at.
        #[arg(long, group = "changes")]
        host: Option<String>,
        /// New port (1-65535).
        #[arg(long, group = "changes", allow_negative_numbers = true)]
        port: Option<i32>,
        /// New most concurrent sessions.
        #[arg(long, group = "changes", allow_negative_numbers = true)]
        capacity: Option<i32>,
    },
    /// Replaces a node's token and prints a new enrollment string.
    Rotate {
        /// The node's id.
        id: uuid::Uuid,
        #[command(flatten)]
        lifetime: Lifetime,
    },
    /// Deletes a node; its token stops working.
    Remove {
        /// The node's id.
        id: uuid::Uuid,
    },
}

impl GatewayCommand {
    /// Whether it prints an enrollment string (and so needs
    /// BACKEND_PUBLIC_URL and the pin).
    pub fn prints_enrollment(&self) -> bool {
        matches!(
            self,
            GatewayCommand::Add { .. } | GatewayCommand::Rotate { .. }
        )
    }
}

impl NodeCommand {
    /// Whether it prints an enrollment string (and so needs
    /// BACKEND_PUBLIC_URL and the pin).
    pub fn prints_enrollment(&self) -> bool {
        matches!(self, NodeCommand::Add { .. } | NodeCommand::Rotate { .. })
    }
}

/// The URL and pin that go in enrollment strings, checked as the machine
/// will check them.
pub fn target(args: &EnrollArgs) -> anyhow::Result<(String, Option<Pin>)> {
    let url = crate::cli::required(
        args.control_url.clone(),
        "BACKEND_PUBLIC_URL",
        "control-url",
        "the control plane's URL as gateways and nodes reach it",
    )?;
    let pin = match (&args.enroll_pin, &args.tls_cert) {
        (Some(p), _) => Some(*p),
        (None, Some(cert))
            if url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://")) =>
        {
            Some(Pin::of_chain_end(cert).context("BACKEND_TLS_CERT")?)
        }
        _ => None,
    };
    let link = Link {
        pin,
        // The operator vouches for the link when printing an http:// URL
        // for another host; the machine still has to say so itself.
        private_link: true,
        ..Link::default()
    };
    // As the URL parser writes it (scheme and host in lower case), as
    // `serve` keeps it.
    let url = link.check_url(&url).context("BACKEND_PUBLIC_URL")?;
    Ok((url.as_str().trim_end_matches('/').to_owned(), pin))
}

fn string(kind: &str, url: &str, pin: Option<Pin>, token: String) -> String {
    Enrollment {
        kind: kind.to_owned(),
        url: url.to_owned(),
        pin: pin.map(|p| p.to_string()),
        token: token.into(),
    }
    .encode()
}

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    let text = e.to_string();
    // The registry names its inputs as GraphQL does; the command line's
    // flag is what its operator typed.
    match text.strip_prefix("publicUrl ") {
        Some(rest) => anyhow::anyhow!("--public-url {rest}"),
        None => anyhow::anyhow!("{text}"),
    }
}

/// The kinds of machine the commands name.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gateway,
    Outline,
}

/// Refuses `id` unless it is a machine of `kind`: `gateway rotate|remove`
/// given a node's id (or `node …` a gateway's) would otherwise replace
/// that machine's token or delete it (the registry's operations take
/// either kind, as GraphQL's do).
async fn is_a(pool: &Db, kind: Kind, id: uuid::Uuid) -> anyhow::Result<()> {
    let found = match kind {
        Kind::Gateway => !nodes::gateways_by_ids(pool, &[id.into()])
            .await
            .map_err(fail)?
            .is_empty(),
        Kind::Outline => !nodes::outline_by_ids(pool, &[id.into()])
            .await
            .map_err(fail)?
            .is_empty(),
    };
    if found {
        return Ok(());
    }
    Err(fail(AppError::NotFound(match kind {
        Kind::Gateway => "gateway",
        Kind::Outline => "outline node",
    })))
}

/// The control plane's database for a command that changes what is in
/// it; it must exist (see [`existing`]): an SQLite file that is not there
/// is a mistyped `BACKEND_DB_DSN`, not a database to create. A new, empty
/// one is migrated; one that holds another application's tables, or
/// httvps's at an older release, is refused (see
/// [`db::migrate_for_command`]).
pub async fn registry(db: &DbArgs) -> anyhow::Result<Db> {
    let dsn = db.dsn()?;
    existing(&dsn)?;
    db::migrate_for_command(&dsn)
        .await
        .context("BACKEND_DB_DSN")?;
    Ok(Db::connect(&dsn, 1)?)
}

/// Refuses an SQLite `dsn` with no database there, for the commands that
/// change what is in one (opening it would make a new, empty one).
pub fn existing(dsn: &db::Dsn) -> anyhow::Result<()> {
    if let db::Dsn::Sqlite(path) = dsn
        && !std::path::Path::new(path).exists()
    {
        anyhow::bail!(
            "no database at {path} (BACKEND_DB_DSN): give the one the control plane uses \
             (`httvps up` keeps it in its data directory as httvps.db), or make a new one \
             there with `httvps migrate`"
        );
    }
    Ok(())
}

/// Runs `httvps gateway …`; returns what to print (the enrollment string
/// or a confirmation).
pub async fn gateway(cmd: GatewayCommand, db: &DbArgs, e: &EnrollArgs) -> anyhow::Result<String> {
    let pool = registry(db).await?;
    let op = Actor::Operator;
    match cmd {
        GatewayCommand::Add {
            region,
            name,
            public_url,
            lifetime,
        } => {
            let (url, pin) = target(e)?;
            let (g, token) =
                nodes::register_gateway(&pool, &op, &region, &name, &public_url, lifetime.ttl)
                    .await
                    .map_err(fail)?;
            tracing::info!(
                gateway.id = %g.id,
                enrollment.expires_at = %expiry(g.enroll_expires_at),
                "gateway registered"
            );
            Ok(string("gateway", &url, pin, token))
        }
        GatewayCommand::Update {
            id,
            name,
            public_url,
        } => {
            let changes = nodes::GatewayChanges { name, public_url };
            // As the control plane would refuse it: BACKEND_GATEWAY_URL,
            // where it is set for this command too (the environment or
            // `.env`), names the gateway links are built on.
            let configured = std::env::var("BACKEND_GATEWAY_URL").ok();
            let configured = configured.as_deref().filter(|u| !u.trim().is_empty());
            let g = nodes::update_gateway(&pool, &op, id.into(), changes, configured)
                .await
                .map_err(fail)?;
            Ok(format!(
                "updated {id}: name {}, public URL {}",
                g.name, g.public_url
            ))
        }
        GatewayCommand::Rotate { id, lifetime } => {
            let (url, pin) = target(e)?;
            is_a(&pool, Kind::Gateway, id).await?;
            let (token, until, _) = nodes::rotate_token(&pool, &op, id, lifetime.ttl)
                .await
                .map_err(fail)?;
            tracing::info!(enrollment.expires_at = %expiry(Some(until)), "token rotated");
            Ok(string("gateway", &url, pin, token))
        }
        GatewayCommand::Remove { id } => {
            is_a(&pool, Kind::Gateway, id).await?;
            nodes::delete(&pool, &op, id).await.map_err(fail)?;
            Ok(format!("removed {id}"))
        }
    }
}

/// When a string printed now stops working (RFC 3339, UTC), for the log.
fn expiry(at: Option<chrono::NaiveDateTime>) -> String {
    at.map_or_else(|| "never".to_owned(), |t| t.and_utc().to_rfc3339())
}

/// Runs `httvps node …`, like [`gateway`].
pub async fn node(cmd: NodeCommand, db: &DbArgs, e: &EnrollArgs) -> anyhow::Result<String> {
    let pool = registry(db).await?;
    let op = Actor::Operator;
    match cmd {
        NodeCommand::Add {
            region,
            name,
            host,
            port,
            capacity,
            lifetime,
        } => {
            let (url, pin) = target(e)?;
            let input = NewOutlineNode {
                region,
                name,
                host,
                port,
                method: None,
                secret: None,
                capacity,
            };
            let (n, token) = nodes::register_outline(&pool, &op, input, lifetime.ttl)
                .await
                .map_err(fail)?;
            tracing::info!(
                node.id = %n.id,
                enrollment.expires_at = %expiry(n.enroll_expires_at),
                "node registered"
            );
            Ok(string("node", &url, pin, token))
        }
        NodeCommand::Update {
            id,
            name,
            host,
            port,
            capacity,
        } => {
            let changes = nodes::OutlineChanges {
                name,
                host,
                port,
                capacity,
            };
            let n = nodes::update_outline(&pool, &op, id.into(), changes)
                .await
                .map_err(fail)?;
            Ok(format!(
                "updated {id}: name {}, host {}, port {}, capacity {}",
                n.name, n.host, n.port, n.capacity
            ))
        }
        NodeCommand::Rotate { id, lifetime } => {
            let (url, pin) = target(e)?;
            is_a(&pool, Kind::Outline, id).await?;
            let (token, until, _) = nodes::rotate_token(&pool, &op, id, lifetime.ttl)
                .await
                .map_err(fail)?;
            tracing::info!(enrollment.expires_at = %expiry(Some(until)), "token rotated");
            Ok(string("node", &url, pin, token))
        }
        NodeCommand::Remove { id } => {
            is_a(&pool, Kind::Outline, id).await?;
            nodes::delete(&pool, &op, id).await.map_err(fail)?;
            Ok(format!("removed {id}"))
        }
    }
}
