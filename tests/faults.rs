//! Faults under traffic: the gateway process killed with SIGKILL and
//! restarted, the control plane stopped for 30 s, the database (a scratch
//! PostgreSQL cluster this test starts on its own port) stopped for 60 s.
//! Bytes move through many tunnels the whole time; afterwards the usage in
//! the database equals what crossed the gateway, up to what the last report
//! interval before the SIGKILL could hold, and never more.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{TestServer, gql};
use httvps_control::accounts::{self, Role};
use httvps_control::db::Dsn;
use httvps_dataplane::backend::Backend;
use httvps_dataplane::wsio::WsIo;
use httvps_dataplane::{node, tls};
use serde_json::{Value, json};
use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::Context as SsContext;
use shadowsocks_service::shadowsocks::relay::Address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

const PASSWORD: &str = "correct horse battery staple";

/// A PostgreSQL cluster of our own: initdb in a temporary directory,
/// started and stopped with pg_ctl on a free port.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: common::tempdir::TempDir,
}

fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb")
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root
/// (the server refuses to run as root).
fn as_postgres(tool: &Path) -> std::process::Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        std::process::Command::new(tool)
    }
}

impl Cluster {
    fn create() -> Cluster {
        let dir = common::tempdir::TempDir::new();
        let data = dir.path().join("pgdata");
        std::fs::create_dir_all(&data).expect("data dir");
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let _ = std::process::Command::new("chmod")
            .args(["755"])
            .arg(dir.path())
            .status();
        let bin = pg_bin();
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Restarted on the same port after a minute: keep it out of the
        // ephemeral range, where outgoing connections could take it.
        let port = common::stable_port();
        let c = Cluster {
            bin,
            data,
            port,
            _dir: dir,
        };
        c.start();
        c
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs pg_ctl on this cluster with `args`.
    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("pg_ctl")
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.display()
        );
        let log = self.data.join("log");
        let log = log.to_string_lossy();
        let out = self.pg_ctl(&["-o", &opts, "-l", &log, "-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "60", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts what is written into (and read from) the WebSocket: the bytes
/// the gateway sees as payload.
struct Counting<S> {
    inner: S,
    up: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.up.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A server that reads and discards.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// What the test drives: tunnels that send as long as `run` is set,
/// counting every byte the gateway was handed.
struct Traffic {
    up: Arc<AtomicU64>,
    run: Arc<AtomicBool>,
    open: Arc<AtomicU64>,
}

impl Traffic {
    /// Opens `n` tunnels through the gateway at `port` to `target`.
    async fn start(
        &self,
        port: u16,
        cert: &Path,
        token: &str,
        cfg: &ServerConfig,
        target: SocketAddr,
        n: usize,
    ) {
        let ctx = SsContext::new_shared(ServerType::Local);
        for _ in 0..n {
            let ws = common::gateway_ws(port, cert, &format!("/ws/{token}/tcp")).await;
            let io = Counting {
                inner: WsIo::new(ws),
                up: self.up.clone(),
            };
            let mut stream = ProxyClientStream::from_stream(
                ctx.clone(),
                io,
                cfg,
                Address::SocketAddress(target),
            );
            let run = self.run.clone();
            let open = self.open.clone();
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let chunk = vec![42u8; 8 * 1024];
                while run.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = stream.shutdown().await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Stops every tunnel and waits (bounded) until all ended.
    async fn stop(&self) {
        self.run.store(false, Ordering::Relaxed);
        for _ in 0..100 {
            if self.open.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.run.store(true, Ordering::Relaxed);
    }
}

async fn db_totals(server: &TestServer) -> Option<(i64, i64)> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        up: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        down: i64,
    }
    let httvps_control::db::DbPool::Pg(pool) = &server.state.db.pool else {
        panic!("pg")
    };
    let mut conn = pool.get().await.ok()?;
    diesel::sql_query("SELECT CAST(COALESCE(SUM(bytes_up), 0) AS BIGINT) AS up, CAST(COALESCE(SUM(bytes_down), 0) AS BIGINT) AS down FROM sessions")
        .get_result::<T>(&mut *conn)
        .await
        .ok()
        .map(|t| (t.up, t.down))
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn usage_survives_gateway_sigkill_control_plane_and_database_outages() {
    tls::install_provider();
    let cluster = Cluster::create();
    let dsn = Dsn::parse(&cluster.url()).expect("dsn");
    let cp_addr = SocketAddr::from(([127, 0, 0, 1], common::stable_port()));
    let mut server = TestServer::start_at(dsn.clone(), false, cp_addr).await;
    let base = server.base.clone();
    let root = accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let r = gql(
        &base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": "root@example.com", "p": PASSWORD}),
    )
    .await;
    let admin = r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let q = |query: &'static str, vars: Value| {
        let (base, admin) = (base.clone(), admin.clone());
        async move {
            let r = gql(&base, Some(&admin), query, vars).await;
            assert!(r["errors"].is_null(), "{r}");
            r["data"].clone()
        }
    };
    let d = q("mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,deviceLimit:3}){id}}", json!({})).await;
    q(
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": root.id, "p": d["createPlan"]["id"]}),
    )
    .await;
    let device = q(
        "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await["registerDevice"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    // A node (in process: it is not under test here).
    let node_port = common::stable_port();
    let n = q("mutation($p:Int!){registerOutlineNode(input:{region:\"eu\",name:\"n1\",host:\"127.0.0.1\",port:$p}){token node{method secret}}}", json!({"p": node_port})).await;
    let n = &n["registerOutlineNode"];
    let method = node::parse_method(n["node"]["method"].as_str().expect("m")).expect("method");
    let secret = n["node"]["secret"].as_str().expect("s").to_owned();
    let running = Arc::new(
        node::start(&node::NodeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], node_port)),
            method,
            password: secret.as_str().into(),
            allow_private: true,
            idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
        })
        .await
        .expect("node"),
    );
    let _beats = node::spawn_heartbeats(
        Backend::new(&base, n["token"].as_str().expect("t")).expect("backend"),
        running.clone(),
        Duration::from_secs(1),
    );
    let gw_port = common::stable_port();
    let gw_token = q(
        "mutation($u:String!){registerGatewayNode(input:{region:\"eu\",name:\"gw\",publicUrl:$u}){token}}",
        json!({"u": format!("https://localhost:{gw_port}")}),
    )
    .await["registerGatewayNode"]["token"]
        .as_str()
        .expect("gw token")
        .to_owned();
    let dir = common::tempdir::TempDir::new();
    let cert = dir.path().join("gw.crt");
    let cfg =
        ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), secret, method).expect("cfg");
    let target = sink().await;
    let traffic = Traffic {
        up: Arc::new(AtomicU64::new(0)),
        run: Arc::new(AtomicBool::new(true)),
        open: Arc::new(AtomicU64::new(0)),
    };
    const TUNNELS: usize = 16;

    // (a) SIGKILL under traffic, then a restart on the same spool.
    let gw = common::GatewayProc::spawn(&base, &gw_token, dir.path(), gw_port).await;
    traffic
        .start(gw_port, &cert, &device, &cfg, target, TUNNELS)
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_window = traffic.up.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The gateway reports every 2 s, writing the spool first: what arrived
    // in the last interval (plus what was in flight) may be lost.
    gw.sigkill().await;
    let at_kill = traffic.up.load(Ordering::Relaxed);
    let loss_bound = at_kill - before_window;
    traffic.stop().await;
    let after_kill = traffic.up.load(Ordering::Relaxed);
    let gw = common::GatewayProc::spawn(&base, &gw_token, dir.path(), gw_port).await;
    traffic
        .start(gw_port, &cert, &device, &cfg, target, TUNNELS)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // (b) The control plane stops for 30 s: tunnels keep moving bytes.
    server.halt().await;
    let open_before = traffic.open.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let open_during_cp = traffic.open.load(Ordering::Relaxed);
    server = TestServer::start_at(dsn.clone(), false, cp_addr).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // (c) The database stops for 60 s: tunnels keep moving bytes; reports
    // fail and are sent again once it is back.
    cluster.stop();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let open_during_db = traffic.open.load(Ordering::Relaxed);
    cluster.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.stop().await;
    let moved = traffic.up.load(Ordering::Relaxed);

    // Everything reported: wait (bounded) until the totals stop growing.
    let mut last = (-1, -1);
    let mut stable = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = db_totals(&server).await.unwrap_or((-1, -1));
        if now == last && now.0 >= 0 {
            stable += 1;
            if stable >= 6 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    let (db_up, db_down) = last;
    let lost = i64::try_from(moved).expect("moved") - db_up;
    eprintln!(
        "faults: moved {moved} bytes up through {TUNNELS} tunnels; database holds {db_up} up, {db_down} down; \
         lost {lost} (bound {loss_bound}: what arrived in the last 3 s before SIGKILL, of {after_kill} by then); \
         tunnels open before/while control plane down/while database down: {open_before}/{open_during_cp}/{open_during_db}"
    );
    assert_eq!(
        open_during_cp, open_before,
        "tunnels closed while the control plane was down"
    );
    assert_eq!(
        open_during_db, open_before,
        "tunnels closed while the database was down"
    );
    assert!(
        db_up <= i64::try_from(moved).expect("moved"),
        "counted more than moved"
    );
    assert!(
        lost >= 0 && lost <= i64::try_from(loss_bound).expect("bound"),
        "lost {lost} > bound {loss_bound}"
    );
    assert!(
        moved > 50_000_000,
        "too little traffic to mean anything: {moved}"
    );
    gw.sigkill().await;
    server.stop().await;
    drop(cluster);
}
