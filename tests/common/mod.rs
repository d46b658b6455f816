//! Shared test support: a fresh PostgreSQL database per test, cloned from a
//! migrated template; SQLite files in a scratch directory; servers bound to
//! 127.0.0.1:0, in process or as real processes of the built binary.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use httvps_control::config::{SecretKey, Settings, ThrottleSettings};
use httvps_control::db::{self, Db, Dsn};
use httvps_control::http::{self, AppState};
use tokio::sync::oneshot;

/// A SOCKS5 CONNECT to the IPv4 `target` through the proxy at `socks`:
/// the stream once the proxy said yes, `None` when it refused or failed.
pub async fn socks_connect(socks: SocketAddr, target: SocketAddr) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(socks).await.ok()?;
    s.write_all(&[5, 1, 0]).await.ok()?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await.ok()?;
    let SocketAddr::V4(v4) = target else {
        return None;
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.ok()?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.ok()?;
    (rep[1] == 0).then_some(s)
}

/// Installs Debian `packages` with apt-get unless every program of
/// `present` (each with an argument it answers to) already runs. One
/// install at a time per test process, and apt-get waits for dpkg's lock
/// instead of failing at once, so tests (and other processes) installing
/// at the same moment do not break each other.
pub fn apt_install(packages: &[&str], present: &[(&str, &str)]) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let runs = |(bin, arg): &(&str, &str)| {
        Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if present.iter().all(runs) {
        return;
    }
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if present.iter().all(runs) {
        return;
    }
    let list = packages.join(" ");
    let apt = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -qq";
    let script = format!("{apt} install {list} || ({apt} update && {apt} install {list})");
    // A mirror's name that does not resolve for a moment is tried again.
    let mut tries = 0;
    loop {
        tries += 1;
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("running apt-get");
        if out.status.success() {
            return;
        }
        assert!(
            tries < 3,
            "installing {list} failed {tries} times: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(5 * tries));
    }
}

/// The PostgreSQL server tests use (trust auth on this machine and in CI).
pub fn pg_admin_url() -> String {
    std::env::var("HTTVPS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn pg_url_for(db_name: &str) -> String {
    let admin = pg_admin_url();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    format!("{base}/{db_name}")
}

/// A fingerprint of the migrations, so a changed migration gets a new template.
fn migrations_fingerprint() -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut entries: Vec<PathBuf> = Vec::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    for dir in std::fs::read_dir(&root).expect("migrations dir").flatten() {
        for f in std::fs::read_dir(dir.path()).expect("migration").flatten() {
            entries.push(f.path());
        }
    }
    entries.sort();
    for p in entries {
        hasher.update(p.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&p).expect("read migration"));
    }
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}
/// The Prometheus text served at `http://{addr}/metrics`.
pub async fn metrics(addr: SocketAddr) -> String {
    client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the metric `name` (a line `name value`) in `text`.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the metric `name` served at `http://{addr}/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = metrics(addr).await;
    metric_in(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Runs the statement `q` on `db`, PostgreSQL or SQLite.
pub async fn execute(db: &Db, q: &str) {
    match &db.pool {
        db::DbPool::Pg(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).execute(&mut *conn).await.expect("sql");
        }
        db::DbPool::Sqlite(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).execute(&mut *conn).await.expect("sql");
        }
    }
}

/// One BIGINT (`n`) from `db`'s PostgreSQL database.
pub async fn scalar(db: &Db, q: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db::DbPool::Pg(pool) = &db.pool else {
        panic!("pg")
    };
    let mut conn = pool.get().await.expect("conn");
    diesel::sql_query(q)
        .get_result::<N>(&mut *conn)
        .await
        .expect("sql")
        .n
}

async fn admin_conn() -> AsyncPgConnection {
    AsyncPgConnection::establish(&pg_admin_url())
        .await
        .expect("PostgreSQL must be reachable at HTTVPS_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres)")
}

async fn ensure_template() -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("httvps_tmpl_{}", migrations_fingerprint());
            let mut conn = admin_conn().await;
            // Test processes may run in parallel: take turns creating the template.
            diesel::sql_query("SELECT pg_advisory_lock(4242)")
                .execute(&mut conn)
                .await
                .expect("lock");
            #[derive(diesel::QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let exists: Count = diesel::sql_query(format!(
                "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
            ))
            .get_result(&mut conn)
            .await
            .expect("query pg_database");
            if exists.n == 0 {
                let building = format!("{name}_building");
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {building}"))
                    .execute(&mut conn)
                    .await;
                diesel::sql_query(format!("CREATE DATABASE {building}"))
                    .execute(&mut conn)
                    .await
                    .expect("create template");
                db::migrate(&Dsn::Postgres(pg_url_for(&building)))
                    .await
                    .expect("migrate template");
                diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("rename template");
            }
            diesel::sql_query("SELECT pg_advisory_unlock(4242)")
                .execute(&mut conn)
                .await
                .expect("unlock");
            name
        })
        .await
        .clone()
}

/// A name for a test database: the test process's id first, so an
/// interrupted run's leftovers can be told from a running suite's databases
/// (`scripts/test.sh` drops only those whose process is gone).
fn test_db_name() -> String {
    format!(
        "httvps_t_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A database for one test, dropped when the value is dropped.
pub struct TestDb {
    /// Its DSN.
    pub dsn: Dsn,
    pg_name: Option<String>,
    _dir: Option<tempdir::TempDir>,
}

impl TestDb {
    /// A fresh PostgreSQL database, already migrated (cloned from the template).
    pub async fn pg() -> Self {
        let template = ensure_template().await;
        let name = test_db_name();
        let mut conn = admin_conn().await;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut conn)
            .await
            .expect("clone template");
        TestDb {
            dsn: Dsn::Postgres(pg_url_for(&name)),
            pg_name: Some(name),
            _dir: None,
        }
    }

    /// A fresh, empty PostgreSQL database (no migrations applied).
    pub async fn pg_empty() -> Self {
        let name = test_db_name();
        let mut conn = admin_conn().await;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create db");
        TestDb {
            dsn: Dsn::Postgres(pg_url_for(&name)),
            pg_name: Some(name),
            _dir: None,
        }
    }

    /// A fresh SQLite file, already migrated.
    pub async fn sqlite() -> Self {
        let t = Self::sqlite_empty();
        db::migrate(&t.dsn).await.expect("migrate sqlite");
        t
    }

    /// A fresh, empty SQLite file.
    pub fn sqlite_empty() -> Self {
        let dir = tempdir::TempDir::new();
        let path = dir.path.join("test.db");
        TestDb {
            dsn: Dsn::Sqlite(path.to_string_lossy().into_owned()),
            pg_name: None,
            _dir: Some(dir),
        }
    }

    /// The raw DSN string.
    pub fn url(&self) -> String {
        match &self.dsn {
            Dsn::Postgres(u) => u.clone(),
            Dsn::Sqlite(p) => format!("sqlite://{p}"),
        }
    }

    /// A pool on this database.
    pub fn pool(&self) -> Db {
        Db::connect(&self.dsn, 8).expect("pool")
    }

    /// Drops the PostgreSQL database now, closing its connections.
    pub async fn drop_now(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let mut conn = admin_conn().await;
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop may run inside a runtime: do the async work on a thread of its own.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        if let Ok(mut conn) = AsyncPgConnection::establish(&pg_admin_url()).await {
                            let _ = diesel::sql_query(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// A scratch directory removed on drop (no extra crate needed).
pub mod group;
pub mod link;
pub mod udp;

pub mod tempdir {
    use std::path::PathBuf;

    /// The directory.
    pub struct TempDir {
        /// Its path.
        pub path: PathBuf,
    }

    impl TempDir {
        /// Creates a new unique directory under the system temp dir.
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("httvps-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir { path }
        }

        /// Its path.
        pub fn path(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A test secret (not the example one).
pub const TEST_SECRET: &str = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz";

/// Settings for an in-process server on `dsn`.
pub fn settings(dsn: Dsn, debug: bool) -> Settings {
    Settings {
        dsn,
        pool_size: 8,
        secret: SecretKey::new(TEST_SECRET.to_owned()),
        host: std::net::IpAddr::from([127, 0, 0, 1]),
        port: 0,
        jwt_algorithm: jsonwebtoken::Algorithm::HS256,
        jwt_expire_minutes: 15,
        debug,
        gateway_url: Some("https://gw.test.example".to_owned()),
        tls: None,
        enroll: None,
        // Every test client comes from 127.0.0.1: the per-source limits
        // (and the per-device one) are the throttle tests' business (they
        // set their own).
        throttle: ThrottleSettings {
            login_per_source: 100_000,
            signup_per_source: 100_000,
            refresh_per_source: 100_000,
            refresh_per_account: 100_000,
            unknown_tokens_per_source: 100_000,
            device_jwts_per_device: 100_000,
            ..ThrottleSettings::default()
        },
        http: Default::default(),
    }
}

/// A control plane served in process on 127.0.0.1:0.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its state (database pool etc.).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Migrates (no-op on a cloned template) and serves.
    pub async fn start(dsn: Dsn, debug: bool) -> Self {
        Self::start_at(dsn, debug, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Like [`TestServer::start`] on a given address (to restart on the same port).
    pub async fn start_at(dsn: Dsn, debug: bool, addr: SocketAddr) -> Self {
        Self::start_with(settings(dsn, debug), addr).await
    }

    /// Like [`TestServer::start_at`] with the given settings.
    pub async fn start_with(settings: Settings, addr: SocketAddr) -> Self {
        let state = httvps_control::app::prepare(&settings)
            .await
            .expect("prepare");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let _ = http::serve(listener, st, async {
                let _ = rx.await;
            })
            .await;
        });
        TestServer {
            base: format!("http://{addr}"),
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops serving (in place), waiting for the server task.
    pub async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// An HTTP client with a bounded timeout.
pub fn client() -> reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        // reqwest's TLS takes the process's crypto provider.
        httvps_dataplane::tls::install_provider();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client")
    })
    .clone()
}

/// A real `httvps` process; killed on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Address from its "listening" log line.
    pub addr: Option<SocketAddr>,
    /// Lines it printed on stdout before listening.
    pub stdout: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built `httvps` binary with a clean environment for our variables.
pub fn httvps_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_httvps"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BACKEND_") || k.starts_with("JWT_") || k.starts_with("HTTVPS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("BACKEND_LOG_FORMAT", "json").env_remove("RUST_LOG");
    cmd
}

/// Spawns `cmd` and waits (bounded) for its "listening" log line.
pub fn spawn_listening(mut cmd: Command) -> Proc {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn httvps");
    let stderr = child.stderr.take().expect("stderr");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "control plane listening"
                && let Some(a) = v["http.addr"].as_str().and_then(|a| a.parse().ok())
            {
                let _ = tx.send(a);
            }
        }
    });
    let (otx, orx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = otx.send(line);
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).ok();
    std::thread::sleep(Duration::from_millis(100));
    let stdout: Vec<String> = orx.try_iter().collect();
    Proc {
        child,
        addr,
        stdout,
    }
}

/// Runs a GraphQL operation and returns the JSON response.
pub async fn gql(
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: serde_json::Value,
) -> serde_json::Value {
    let mut req = client()
        .post(format!("{base}/graphql"))
        .json(&serde_json::json!({"query": query, "variables": variables}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .expect("graphql request")
        .json()
        .await
        .expect("graphql json")
}

/// The gateway as a process of its own, so it can be killed for real.
pub struct GatewayProc {
    /// The process.
    pub child: tokio::process::Child,
}

impl GatewayProc {
    /// Starts `httvps-relay gateway` on 127.0.0.1:`port` with a generated
    /// certificate (`dir`/gw.crt) and a spool in `dir`.
    pub async fn spawn(base: &str, token: &str, dir: &Path, port: u16) -> GatewayProc {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
            .args(["gateway", "--backend", base, "--token", token])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--cert")
            .arg(dir.join("gw.crt"))
            .arg("--key")
            .arg(dir.join("gw.key"))
            .arg("--spool")
            .arg(dir.join("spool.json"))
            .args(["--public-url", &format!("https://localhost:{port}")])
            .args(["--max-tunnels-per-device", "1000"])
            .env("GATEWAY_SELF_SIGNED", "true")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("gateway.log"))
                    .map(std::process::Stdio::from)
                    .unwrap_or_else(|_| std::process::Stdio::null()),
            )
            .spawn()
            .expect("httvps-relay gateway");
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return GatewayProc { child };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the gateway did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
        );
    }

    /// Kills it (SIGKILL) and reaps it.
    pub async fn sigkill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A free port below the kernel's ephemeral range (32768 and up by
/// default), so outgoing connections cannot take it between this probe and
/// the bind of a child process.
pub fn stable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 5000) as u16;
    for _ in 0..10_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed + n * 7) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// An unsigned (`alg: none`) JWT for `sub` and audience `aud`, valid for a
/// minute if its signature were ever skipped.
pub fn alg_none_jwt(sub: &str, aud: &str) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = chrono::Utc::now().timestamp();
    format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(
            &serde_json::json!({"sub": sub, "aud": aud, "iss": "httvps", "exp": now + 60, "iat": now, "ver": 0})
        )
    )
}

/// A WebSocket to the gateway on 127.0.0.1:`port` (TLS trusting `cert`,
/// name `localhost`) at `path`.
pub async fn gateway_ws(
    port: u16,
    cert: &Path,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    try_gateway_ws(port, cert, path).await.expect("websocket")
}

/// [`gateway_ws`], with the gateway's refusal of the upgrade (its answer's
/// status) as the error.
pub async fn try_gateway_ws(
    port: u16,
    cert: &Path,
    path: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let connector = httvps_dataplane::tls::connector(Some(cert)).expect("connector");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("tls");
    match tokio_tungstenite::client_async(format!("wss://localhost:{port}{path}"), tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => Err(answer.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// A WebSocket client of the control plane.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upgrade request of a graphql-transport-ws socket to the control
/// plane at `base`.
pub fn live_request(base: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/graphql/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    req
}

/// A graphql-transport-ws socket signed in with `token`, subscribed to
/// `query` as operation "1".
pub async fn live(base: &str, token: &str, query: &str) -> Ws {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let req = live_request(base);
    let mut ws = tokio_tungstenite::connect_async(req).await.expect("ws").0;
    let init = serde_json::json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    ws.send(Message::Text(init.to_string().into()))
        .await
        .expect("init");
    assert_eq!(live_next(&mut ws).await["type"], "connection_ack");
    let sub = serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": query}});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .expect("subscribe");
    ws
}

/// The next message that is not a keep-alive (15 s at most).
pub async fn live_next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(15), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).expect("json");
            if v["type"] != "ping" && v["type"] != "pong" {
                return v;
            }
        }
    }
}

/// The payload of the next `next` message of operation "1".
pub async fn live_event(ws: &mut Ws, field: &str) -> serde_json::Value {
    let v = live_next(ws).await;
    assert_eq!(v["type"], "next", "{v}");
    v["payload"]["data"][field].clone()
}

/// `cmd` with its stderr written to `log`, its stdout dropped, and the
/// process killed when its handle is dropped; spawned.
pub fn spawn_logged(cmd: &mut tokio::process::Command, log: &Path) -> tokio::process::Child {
    let file = std::fs::File::create(log).expect("log file");
    cmd.kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(file))
        .spawn()
        .expect("spawn")
}

/// A server on 127.0.0.1 that reads and discards, counting what it read
/// (over every connection).
pub async fn counting_sink() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let got = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    got.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (addr, got)
}
