//! `httvps`: the control plane.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program talks to its terminal"
)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// What `--check` prints when the settings are valid.
const CHECKED: &str = "configuration ok";
use httvps::cli::LogArgs;
use httvps::enroll::{EnrollArgs, GatewayCommand, NodeCommand};
use httvps_control::accounts::{self, Role};
use httvps_control::actor::Actor;
use httvps_control::config::{DbArgs, HttpArgs, ServeArgs, Settings, ThrottleArgs};
use httvps_control::db;
use httvps_control::devices;
use httvps_control::ids::DeviceId;

/// httvps control plane: users, devices, plans, subscriptions, regions,
/// nodes, sessions and usage over GraphQL and REST.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane (applies migrations first).
    Serve(ServeArgs),
    /// Applies pending migrations and exits.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Account administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Device administration (as the operator: any account's devices).
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Creates a region (its pool key is generated), unless it exists.
    Region {
        /// Region code (e.g. eu).
        #[arg(long)]
        code: String,
        /// Display name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Gateways: add (prints an enrollment string), update, rotate, remove.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        enroll: EnrollArgs,
    },
    /// Shadowsocks nodes: add (prints an enrollment string), update, rotate,
    /// remove.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        enroll: EnrollArgs,
    },
    /// Zero-setup start: SQLite under the data directory, a generated secret,
    /// a first admin (password printed once), the server on 127.0.0.1.
    Up {
        /// Where the database and secret live.
        #[arg(long, env = "HTTVPS_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Port of the control plane.
        #[arg(long, env = "HTTVPS_UP_PORT", default_value_t = 8080)]
        port: u16,
        /// Port of the embedded gateway (TLS).
        #[arg(long, env = "HTTVPS_UP_GATEWAY_PORT", default_value_t = httvps::up::UP_GATEWAY_PORT)]
        gateway_port: u16,
        /// Port of the embedded Shadowsocks node on 127.0.0.1 (0: a free
        /// port, another at each start).
        #[arg(long, env = "HTTVPS_UP_NODE_PORT", default_value_t = 0)]
        node_port: u16,
        /// Throttles on guessing and flooding, as `serve` reads them.
        #[command(flatten)]
        throttle: ThrottleArgs,
        /// HTTP server limits, as `serve` reads them.
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Prints the GraphQL schema (SDL), as committed in schema.graphql.
    Schema,
    /// Prints the OpenAPI document of /api/v1, as committed in docs/openapi.json.
    Openapi,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Creates an admin account; the password is read from standard input.
    Create {
        /// The admin's email.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Revokes a device: its token stops working and gateways close its
    /// tunnels at once (the same use case as the API's revokeDevice).
    Revoke {
        /// The device's id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli: Cli = httvps::cli::parse();
    httvps::logging::init(cli.log.log_format, cli.log.debug);
    let format = cli.log.log_format;
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            httvps::logging::exiting(format, &e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let check = cli.log.check;
    match cli.command {
        Command::Serve(args) => {
            let settings = Settings::from_args(&args, cli.log.debug)?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            httvps_control::app::serve(settings, httvps::shutdown_signal()).await
        }
        Command::Migrate { db: args } => {
            let dsn = args.dsn()?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let n = db::migrate_for_serve(&dsn)
                .await
                .context("applying migrations")?;
            println!("applied {n} migration(s)");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password_stdin: _,
                    db: args,
                },
        } => {
            // Checked before `--check` answers.
            args.dsn()?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']);
            let pool = httvps::enroll::registry(&args).await?;
            // Audited as the operator's, like the other commands that change
            // what the console shows.
            let user =
                accounts::create_by_admin(&pool, &Actor::Operator, &email, password, Role::Admin)
                    .await
                    .map_err(|e| anyhow::anyhow!("creating the admin: {e}"))?;
            println!("created admin {} ({})", user.email, user.id);
            Ok(())
        }
        Command::Device {
            command: DeviceCommand::Revoke { id, db: args },
        } => {
            // Checked before `--check` answers.
            args.dsn()?;
            let id = DeviceId::parse("id", &id).map_err(|e| anyhow::anyhow!("{e}"))?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let pool = httvps::enroll::registry(&args).await?;
            let device = devices::revoke(&pool, &Actor::Operator, id)
                .await
                .map_err(|e| anyhow::anyhow!("revoking device {id}: {e}"))?;
            println!(
                "revoked device {} ({}) of user {}",
                device.id, device.name, device.user_id
            );
            Ok(())
        }
        Command::Up {
            data_dir,
            port,
            gateway_port,
            node_port,
            throttle,
            http,
        } => {
            let limits = httvps::up::UpLimits {
                throttle: throttle.settings()?,
                http: http.limits()?,
            };
            // Each listens on 127.0.0.1: one port for two cannot start.
            let ports = [port, gateway_port, node_port];
            let clash = ports
                .iter()
                .enumerate()
                .any(|(i, p)| *p != 0 && ports[..i].contains(p));
            anyhow::ensure!(
                !clash,
                "--port ({port}), --gateway-port ({gateway_port}) and --node-port ({node_port}) must differ"
            );
            // Before the first admin is made: a start that cannot listen
            // printed its password and then stopped.
            httvps::up::usable_ports(
                &[
                    (port, "HTTVPS_UP_PORT (--port)"),
                    (gateway_port, "HTTVPS_UP_GATEWAY_PORT (--gateway-port)"),
                ],
                (node_port, "HTTVPS_UP_NODE_PORT (--node-port)"),
                check,
            )?;
            if check {
                httvps::up::usable_data_dir(&data_dir)?;
                println!("{CHECKED}");
                return Ok(());
            }
            httvps_dataplane::tls::install_provider();
            let report = httvps::up::prepare_up(&data_dir, port, limits).await?;
            println!(
                "httvps is starting with its data in {}",
                report.data_dir.display()
            );
            let new_admin = report.new_admin.as_ref().map(|(email, _)| email.clone());
            if let Some((email, password)) = &report.new_admin {
                println!(
                    "first admin created (shown once, keep it):\n  email:    {email}\n  password: {}",
                    password.expose()
                );
            }
            let ran = httvps::up::run_up(report, gateway_port, node_port, httvps::shutdown_signal(), |addr, plane| {
                let base = format!("http://{addr}");
                println!("console:       {base}/console/  (sign in as the admin)");
                println!("control plane: {base}  (GraphiQL {base}/graphiql, health {base}/api/v1/health, metrics {base}/metrics)");
                println!("gateway:       https://{}  (self-signed certificate {})", plane.gateway_addr, plane.cert.display());
                println!("node:          {} (region local)", plane.node_addr);
                println!("next steps:");
                println!("  1. in the console (or GraphiQL): as the admin create a plan and grant it (to yourself or a new user),");
                println!("     then, as that user, add a device -> its access token, links and QR codes");
                println!("  2. httvps-relay connect --backend {base} --device-token <accessToken> --socks 127.0.0.1:1080 --ca-cert {}", plane.cert.display());
                println!("  3. curl --socks5-hostname 127.0.0.1:1080 {base}/api/v1/health   (any page, through the tunnel)");
            })
            .await;
            if let (Err(_), Some(email)) = (&ran, new_admin) {
                // The data is kept: the next start prints no password.
                eprintln!(
                    "note: the first admin {email} was created with the password printed above; keep it, it is not shown again"
                );
            }
            ran
        }
        Command::Region { code, name, db } => {
            // Checked before `--check` answers.
            db.dsn()?;
            if check {
                println!("{CHECKED}");
                return Ok(());
            }
            let pool = httvps::enroll::registry(&db).await?;
            if httvps_control::catalogue::region_by_code(&pool, &code)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .is_some()
            {
                println!("region {code} exists");
                return Ok(());
            }
            let r = httvps_control::catalogue::create_region(
                &pool,
                &Actor::Operator,
                &code,
                &name,
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating region {code}: {e}"))?;
            println!("created region {} ({})", r.code, r.id);
            Ok(())
        }
        Command::Gateway {
            command,
            db,
            enroll,
        } => {
            db.dsn()?;
            if check {
                if command.prints_enrollment() {
                    httvps::enroll::target(&enroll)?;
                }
                println!("{CHECKED}");
                return Ok(());
            }
            println!("{}", httvps::enroll::gateway(command, &db, &enroll).await?);
            Ok(())
        }
        Command::Node {
            command,
            db,
            enroll,
        } => {
            db.dsn()?;
            if check {
                if command.prints_enrollment() {
                    httvps::enroll::target(&enroll)?;
                }
                println!("{CHECKED}");
                return Ok(());
            }
            println!("{}", httvps::enroll::node(command, &db, &enroll).await?);
            Ok(())
        }
        // They need no settings: a check has nothing to find.
        Command::Openapi | Command::Schema if check => {
            println!("{CHECKED}");
            Ok(())
        }
        Command::Openapi => {
            print_document(&format!("{}\n", httvps_control::rest::openapi_json_text()))
        }
        Command::Schema => print_document(&httvps_control::graphql::sdl()),
    }
}

/// Writes a document to standard output; a reader that stops early (`|
/// head`) is no error.
fn print_document(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}
