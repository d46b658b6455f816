//! The zero-setup `up` mode: the control plane on SQLite (generated secret,
//! first admin), a gateway with a self-signed certificate and an embedded
//! node, in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use httvps_control::accounts::{self, Role};
use httvps_control::actor::Actor;
use httvps_control::config::{
    HttpLimits, Secret, SecretKey, Settings, ThrottleSettings, validate_secret,
};
use httvps_control::db::{self, Db, Dsn};
use httvps_control::nodes::EnrollmentTtl;
use httvps_control::state::AppState;
use httvps_control::{app, http};
use httvps_dataplane::files::write_private;
use tokio::net::TcpListener;

/// What `up` prepared, for the binary to print.
#[derive(Debug)]
pub struct UpReport {
    /// Settings the server runs with.
    pub settings: Settings,
    /// The first admin's email and password, when created by this start.
    pub new_admin: Option<(String, Secret)>,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// The throttles and HTTP limits `up` runs its control plane with: the
/// `BACKEND_*` settings `serve` reads, with the same defaults.
#[derive(Debug, Clone, Default)]
pub struct UpLimits {
    /// Throttles on guessing and flooding.
    pub throttle: ThrottleSettings,
    /// HTTP deadlines and the connection budget.
    pub http: HttpLimits,
}

/// Email of the admin `up` creates on first start.
pub const UP_ADMIN_EMAIL: &str = "admin@localhost";

/// Prepares the zero-setup mode: the data directory, a secret kept there
/// (mode 0600), the SQLite database, and a first admin with a random
/// password on the first start only; the control plane runs with `limits`.
pub async fn prepare_up(data_dir: &Path, port: u16, limits: UpLimits) -> anyhow::Result<UpReport> {
    std::fs::create_dir_all(data_dir).with_context(|| {
        format!(
            "HTTVPS_DATA_DIR (--data-dir): creating {}",
            data_dir.display()
        )
    })?;
    lock_data_dir(data_dir)?;
    let secret = load_or_create_secret(&data_dir.join("secret.key"))?;
    let db_path = data_dir.join("httvps.db");
    keep_private(&db_path)?;
    let dsn = Dsn::Sqlite(db_path.to_string_lossy().into_owned());
    let settings = Settings {
        dsn: dsn.clone(),
        pool_size: 1,
        secret,
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        port,
        jwt_algorithm: httvps_control::config::Algorithm::HS256,
        jwt_expire_minutes: 60,
        debug: true,
        gateway_url: None,
        tls: None,
        enroll: None,
        throttle: limits.throttle,
        http: limits.http,
    };
    db::migrate_for_serve(&dsn)
        .await
        .context("applying migrations")?;
    let db = Db::connect(&dsn, 1).context("opening the database")?;
    let new_admin = if accounts::admin_exists(&db)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        None
    } else {
        let password = httvps_control::auth::random_secret(15);
        accounts::create_by_admin(
            &db,
            &Actor::Operator,
            UP_ADMIN_EMAIL,
            &password,
            Role::Admin,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
        Some((UP_ADMIN_EMAIL.to_owned(), Secret::new(password)))
    };
    Ok(UpReport {
        settings,
        new_admin,
        data_dir: data_dir.to_owned(),
    })
}

/// Whether `up` can listen on each of its `ports` (on 127.0.0.1; 0 is
/// any free port), each named by its setting (see
/// [`crate::ports::usable_addrs`]); the node's, `node`, takes UDP too.
pub fn usable_ports(ports: &[(u16, &str)], node: (u16, &str), check: bool) -> anyhow::Result<()> {
    let at = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let addrs: Vec<(std::net::SocketAddr, &str)> = ports
        .iter()
        .filter(|(p, _)| *p != 0)
        .map(|&(p, var)| (at(p), var))
        .collect();
    crate::ports::usable_addrs(&addrs, check)?;
    match node {
        (0, _) => Ok(()),
        (p, var) => crate::ports::usable_node_addr(at(p), var, check),
    }
}

/// Whether `up` could make and write `data_dir`, without writing: it, or
/// the nearest directory above it that exists, is a directory this
/// process may write in (for `--check`).
pub fn usable_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    usable_dir(data_dir, "HTTVPS_DATA_DIR (--data-dir)")
}

/// [`usable_data_dir`] for directory `dir`, set by the setting `var`.
pub fn usable_dir(dir: &Path, var: &str) -> anyhow::Result<()> {
    use rustix::fs::{Access, access};
    let mut at = dir;
    loop {
        let here = if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        };
        match std::fs::metadata(here) {
            Ok(m) if m.is_dir() => {
                return access(here, Access::WRITE_OK | Access::EXEC_OK)
                    .with_context(|| format!("{var}: {} is not writable", here.display()));
            }
            Ok(_) => anyhow::bail!("{var}: {} is not a directory", here.display()),
            Err(_) => match at.parent() {
                Some(parent) if at != here || !at.as_os_str().is_empty() => at = parent,
                _ => return Ok(()),
            },
        }
    }
}

/// The data directories' locks this process holds, for its life.
static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// Takes `data_dir`'s lock for the rest of the process's life (`up.lock`,
/// an advisory lock the system drops with the process, however it ends):
/// one `up` per data directory, since a second would move the first one's
/// machines to its own ports. Otherwise says which directory another `up`
/// holds.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("HTTVPS_DATA_DIR (--data-dir): opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            HELD.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(file);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `httvps up` runs on {} (it holds {}): stop it first, or give this one \
             another --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Creates the database file readable by its owner only (it holds token
/// hashes and the regions' pool keys), or makes an existing one so. SQLite
/// gives its write-ahead log and shared-memory files the database's mode.
fn keep_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // With the write-ahead log and shared memory an earlier version or a
    // crash left behind: SQLite reuses them as they are.
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if !suffix.is_empty() && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("making {} private", file.display()));
            }
        }
    }
    Ok(())
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<SecretKey> {
    match std::fs::read_to_string(path) {
        Ok(raw) if raw.trim().is_empty() => anyhow::bail!(
            "{} is empty: restore it from a backup, or remove it to have `up` make a new one \
             (access tokens and device JWTs signed with the old one then stop working)",
            path.display()
        ),
        Ok(raw) => {
            validate_secret(Some(raw.trim())).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = httvps_control::auth::random_secret(48);
            write_private(path, secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(SecretKey::new(secret))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Port of the embedded gateway in `up`.
pub const UP_GATEWAY_PORT: u16 = 8443;

/// What `up` runs besides the control plane.
pub struct UpDataPlane {
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    /// The node's address.
    pub node_addr: SocketAddr,
    /// The gateway's certificate (trust it in clients).
    pub cert: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _node: std::sync::Arc<httvps_dataplane::node::RunningNode>,
}

impl Drop for UpDataPlane {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `up`'s embedded node and gateway in region `local`, registered in
/// the control plane at `backend_url` like any other (fresh machine tokens
/// at each start), the node on 127.0.0.1:`node_port` (0: a free port). The
/// node allows private destinations: everything in `up` listens on
/// 127.0.0.1, and it lets a newcomer fetch a local page. The gateway
/// takes at most `gateway_budget` connections and as many tunnels.
pub async fn start_up_data_plane(
    state: &AppState,
    data_dir: &Path,
    backend_url: &str,
    gateway: TcpListener,
    node_port: u16,
    gateway_budget: usize,
) -> anyhow::Result<UpDataPlane> {
    use httvps_control::{catalogue, nodes};
    use httvps_dataplane::{backend::Backend, gateway as gw, node, tls};

    let db = &state.db;
    let fail = |e: httvps_control::error::AppError| anyhow::anyhow!("{e}");
    let region = catalogue::ensure_region(db, "local", "Local")
        .await
        .map_err(fail)?;
    // `up` acts as its first admin, so the audit log says who registered.
    let admin = Actor::Account {
        user_id: accounts::first_admin(db)
            .await
            .map_err(fail)?
            .context("up has no admin account")?,
        role: Role::Admin,
    };
    let method = node::parse_method(&region.pool_method).context("region cipher")?;
    let running = node::start(&node::NodeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], node_port)),
        method,
        password: region.pool_secret.expose().into(),
        allow_private: true,
        idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
    })
    .await
    .with_context(|| format!("starting the embedded node on 127.0.0.1:{node_port}"))?;
    let node_addr = running.addr;
    let mut machines = crate::up_machines::Local::open(db, admin, data_dir)?;
    let node_id = machines.node(i32::from(node_addr.port())).await?;
    let (node_token, ..) =
        nodes::rotate_token(db, &admin, node_id.uuid(), EnrollmentTtl::default())
            .await
            .map_err(fail)?;
    let gateway_addr = gateway.local_addr()?;
    let public_url = format!("https://{gateway_addr}");
    let gw_id = machines.gateway(&public_url).await?;
    let (gw_token, ..) = nodes::rotate_token(db, &admin, gw_id.uuid(), EnrollmentTtl::default())
        .await
        .map_err(fail)?;
    let cert = data_dir.join("gateway.crt");
    let key = data_dir.join("gateway.key");
    tls::ensure_self_signed(&cert, &key, &["localhost", "127.0.0.1"])?;
    let acceptor = tls::acceptor(&cert, &key)?;
    let running = std::sync::Arc::new(running);
    let node_backend = Backend::new(backend_url, &node_token)?;
    let witness = node::witness::spawn_reports(
        node_backend.clone(),
        running.witness.clone(),
        node::witness::ASK_EVERY,
        node::witness::TOTALS_EVERY,
    );
    let beats = node::spawn_heartbeats(node_backend, running.clone(), Duration::from_secs(5));
    let opts = gw::GatewayOptions {
        public_url,
        spool: Some(data_dir.join("gateway-spool.json")),
        max_connections: gateway_budget,
        max_tunnels: gateway_budget,
        ..Default::default()
    };
    let gw_backend = Backend::new(backend_url, &gw_token)?;
    let gw_task = tokio::spawn(async move {
        if let Err(e) = gw::run(
            opts,
            gw_backend,
            acceptor,
            gateway,
            None,
            std::future::pending::<()>(),
        )
        .await
        {
            tracing::error!(error = %e, "embedded gateway stopped");
        }
    });
    Ok(UpDataPlane {
        gateway_addr,
        node_addr,
        cert,
        tasks: vec![beats, witness, gw_task],
        _node: running,
    })
}

/// Descriptors `up` keeps aside from the connection budgets: the
/// database, the spool and certificate files, the node's and gateway's
/// own connections to the control plane, the listeners.
const NOFILE_RESERVE: u64 = 512;

/// The control plane's connection budget (at most `control_wanted`) and
/// the embedded gateway's (connections and tunnels alike) within `nofile`
/// descriptors: the control plane takes at most a quarter of what the
/// reserve leaves, and every gateway tunnel holds four (the client's
/// connection, the gateway's to the node, the node's two), so neither
/// can run the process out of descriptors, which refused everyone
/// (the defaults, 8,192 and 12,000, are more than a limit of 20,000
/// holds).
fn fit_budgets(nofile: u64, control_wanted: usize) -> (usize, usize) {
    let left = usize::try_from(nofile.saturating_sub(NOFILE_RESERVE)).unwrap_or(usize::MAX);
    let control = control_wanted.min(left / 4).max(1);
    let gateway = (left.saturating_sub(control) / 4).clamp(1, 12_000);
    (control, gateway)
}

/// Runs everything `up` starts (control plane, gateway on `gateway_port`,
/// node on `node_port`, 0 for a free one) until `shutdown`; `ready` is
/// called once all listen, with the control plane's address and the data
/// plane.
pub async fn run_up(
    report: UpReport,
    gateway_port: u16,
    node_port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr, &UpDataPlane),
) -> anyhow::Result<()> {
    // As `serve`: the connection budget, not the descriptor table, sheds;
    // here one table holds the control plane's, the gateway's and the
    // node's descriptors, so the budgets are fitted to it together.
    let nofile = httvps_control::listener::raise_nofile_limit().unwrap_or(1024);
    let mut settings = report.settings;
    let (control, gateway_budget) = fit_budgets(nofile, settings.http.max_connections);
    settings.http.max_connections = control;
    // One address must not hold the whole (smaller) budget: a quarter of
    // it at most, as the defaults keep (2,048 of 8,192).
    let per_source = (control / 4).max(1);
    if settings.http.max_connections_per_source == 0
        || settings.http.max_connections_per_source > per_source
    {
        settings.http.max_connections_per_source = per_source;
    }
    tracing::info!(
        nofile,
        control.max_connections = control,
        control.max_connections_per_source = settings.http.max_connections_per_source,
        gateway.max_connections = gateway_budget,
        gateway.max_tunnels = gateway_budget,
        "connection budgets within the open-file limit"
    );
    let gw_addr = SocketAddr::new(settings.host, gateway_port);
    let gw_listener = TcpListener::bind(gw_addr)
        .await
        .with_context(|| format!("binding {gw_addr}"))?;
    // In the form the gateway's registration stores (`:443` dropped), so
    // the two are seen to be the same.
    let gateway_url = format!("https://{}", gw_listener.local_addr()?);
    settings.gateway_url = Some(
        httvps_control::validate::https_url("the gateway's URL", &gateway_url)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let state = app::prepare(&settings).await?;
    let addr = SocketAddr::new(settings.host, settings.port);
    let listener = app::bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let sweeper =
        httvps_control::heartbeats::spawn_sweeper(state.db.clone(), Duration::from_secs(2));
    let usage_sweeper = httvps_control::usage_accounting::sweeper::spawn(state.db.clone());
    let server = tokio::spawn(http::serve_with(
        listener,
        state.clone(),
        settings.http.clone(),
        None,
        shutdown,
    ));
    let plane = start_up_data_plane(
        &state,
        &report.data_dir,
        &format!("http://{local}"),
        gw_listener,
        node_port,
        gateway_budget,
    )
    .await?;
    tracing::info!(http.addr = %local, gateway.addr = %plane.gateway_addr, node.addr = %plane.node_addr, "control plane listening");
    ready(local, &plane);
    let served = server
        .await
        .context("control plane task")?
        .context("serving HTTP");
    sweeper.abort();
    usage_sweeper.abort();
    drop(plane);
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budgets_fit_the_open_file_limit_together() {
        for nofile in [1_024, 4_096, 20_000, 65_536, 1 << 20] {
            let (control, gateway) = fit_budgets(nofile, 8_192);
            // Worst case: every control connection open, every gateway
            // connection carrying a tunnel of four descriptors.
            let used = (control + 4 * gateway) as u64 + NOFILE_RESERVE;
            assert!(used <= nofile, "{nofile}: {control} + 4 x {gateway}");
            assert!(control >= 1 && gateway >= 1);
        }
        // A high limit leaves the defaults as they are.
        assert_eq!(fit_budgets(1 << 20, 8_192), (8_192, 12_000));
        // 20,000, as here: the control plane a quarter, the gateway the rest.
        assert_eq!(fit_budgets(20_000, 8_192), (4_872, 3_654));
        assert_eq!(fit_budgets(20_000, 100), (100, 4_847));
    }
}
