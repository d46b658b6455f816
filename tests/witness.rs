//! The node as a second witness of every byte: a gateway SIGKILLed
//! mid-transfer (its spool lost too) and restarted, or a node SIGKILLed
//! mid-transfer, loses nothing the client moved and counts nothing twice.
//! The only excess is what sat inside the killed process and the kernel
//! buffers of the sockets between the client and the node, bounded here by
//! the kernel's own socket buffer limits.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use httvps_dataplane::wsio::WsIo;
use plane::Plane;
use serde_json::json;
use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::Context as SsContext;
use shadowsocks_service::shadowsocks::relay::Address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

/// Bytes through the tunnels, as each party counts them.
#[derive(Default)]
struct Counts {
    /// Ciphertext the client handed the WebSocket.
    client_up: AtomicU64,
    /// Ciphertext the client read from the WebSocket.
    client_down: AtomicU64,
    /// Plaintext the destination received.
    dest_up: AtomicU64,
}

/// The client's WebSocket, counting what goes in and comes out.
struct Counting<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counts
            .client_down
            .fetch_add(n as u64, Ordering::Relaxed);
        r
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
            self.counts
                .client_up
                .fetch_add(*n as u64, Ordering::Relaxed);
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

/// A destination that sends without end and counts what it receives.
async fn destination(counts: Arc<Counts>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (mut r, mut w) = s.into_split();
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counts.dest_up.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            tokio::spawn(async move {
                let chunk = vec![7u8; 16 * 1024];
                while w.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// Full-speed tunnels both ways until stopped or broken.
struct Traffic {
    counts: Arc<Counts>,
    run: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
}

impl Traffic {
    fn new(counts: Arc<Counts>) -> Self {
        Traffic {
            counts,
            run: Arc::new(AtomicBool::new(true)),
            open: Arc::default(),
        }
    }

    async fn start(
        &self,
        port: u16,
        cert: &Path,
        token: &str,
        cfg: &ServerConfig,
        to: SocketAddr,
        n: usize,
    ) {
        let ctx = SsContext::new_shared(ServerType::Local);
        let path = format!("/ws/{token}/tcp");
        for _ in 0..n {
            let ws = common::gateway_ws(port, cert, &path).await;
            let io = Counting {
                inner: WsIo::new(ws),
                counts: self.counts.clone(),
            };
            let stream =
                ProxyClientStream::from_stream(ctx.clone(), io, cfg, Address::SocketAddress(to));
            let (mut r, mut w) = tokio::io::split(stream);
            let (run, open) = (self.run.clone(), self.open.clone());
            open.fetch_add(2, Ordering::Relaxed);
            let writer_open = open.clone();
            let writer_run = run.clone();
            tokio::spawn(async move {
                let chunk = vec![42u8; 8 * 1024];
                while writer_run.load(Ordering::Relaxed) {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
                writer_open.fetch_sub(1, Ordering::Relaxed);
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while run.load(Ordering::Relaxed) {
                    match r.read(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
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

    /// Waits (bounded) until every tunnel has ended by itself.
    async fn ended(&self) {
        for _ in 0..100 {
            if self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop().await;
    }
}

/// `httvps-relay node` as a process, registered as `name` on `port`.
async fn spawn_node(plane: &Plane, token: &str, port: u16, dir: &Path) -> common::GatewayProc {
    let log = dir.join("node.log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args(["node", "--backend", &plane.server.base, "--token", token])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--allow-private")
        .arg("--credentials")
        .arg(dir.join("node-credentials.json"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(&log)
                .map(std::process::Stdio::from)
                .expect("log"),
        )
        .spawn()
        .expect("httvps-relay node");
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return common::GatewayProc { child };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no node: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A node registered in region `eu` on a free port, with its token.
async fn register_node(plane: &Plane, name: &str) -> (String, u16) {
    let port = common::stable_port();
    let r = plane
        .gql(
            "mutation($n:String!,$p:Int!){registerOutlineNode(input:{region:\"eu\",name:$n,host:\"127.0.0.1\",port:$p}){token}}",
            json!({"n": name, "p": port}),
        )
        .await;
    let token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    (token, port)
}

/// The third number of a `/proc/sys/net/ipv4/tcp_*mem` file: the most a
/// socket's buffer grows to.
fn buffer_max(file: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
        .unwrap_or(6 * 1024 * 1024)
}

/// What can be in flight per tunnel, one way, between the node's counter
/// and the client's: the send and receive buffers of the node-gateway and
/// gateway-client sockets at the kernel's limits, and the gateway's own
/// queue (8 frames of 64 KiB, the frame being written and TLS records).
fn in_flight_bound() -> u64 {
    let socket_pair =
        buffer_max("/proc/sys/net/ipv4/tcp_wmem") + buffer_max("/proc/sys/net/ipv4/tcp_rmem");
    2 * socket_pair + 1024 * 1024
}

/// Recorded totals (up, down) once they, and the node's count, have not
/// changed for 7 s (the node reports a session within a second of its
/// last connection closing; bounded).
async fn settled(plane: &Plane) -> (i64, i64) {
    let sums = "SELECT CAST(COALESCE(SUM(bytes_up), 0) AS BIGINT) AS n FROM sessions";
    let down = "SELECT CAST(COALESCE(SUM(bytes_down), 0) AS BIGINT) AS n FROM sessions";
    let node =
        "SELECT CAST(COALESCE(SUM(witness_up + witness_down), 0) AS BIGINT) AS n FROM sessions";
    let (mut last, mut stable) = ((-1, -1, -1), 0);
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            plane.scalar(sums).await,
            plane.scalar(down).await,
            plane.scalar(node).await,
        );
        if now == last {
            stable += 1;
            if stable >= 14 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    (last.0, last.1)
}

/// Checks the recorded totals against what the client and the destination
/// counted, and prints the figures.
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
fn check(what: &str, tunnels: usize, counts: &Counts, recorded: (i64, i64)) {
    let client_up = i64::try_from(counts.client_up.load(Ordering::Relaxed)).expect("up");
    let client_down = i64::try_from(counts.client_down.load(Ordering::Relaxed)).expect("down");
    let dest_up = i64::try_from(counts.dest_up.load(Ordering::Relaxed)).expect("dest");
    let bound = i64::try_from(in_flight_bound() * tunnels as u64).expect("bound");
    let (up, down) = recorded;
    eprintln!(
        "witness ({what}): {tunnels} tunnels; down: client read {client_down}, recorded {down} \
         (excess {}); up: client wrote {client_up}, destination got {dest_up} (plaintext), \
         recorded {up} (client's excess {}); in-flight bound {bound}",
        down - client_down,
        client_up - up
    );
    assert!(
        client_down > 20_000_000,
        "too little traffic down: {client_down}"
    );
    assert!(dest_up > 20_000_000, "too little traffic up: {dest_up}");
    assert!(
        down >= client_down,
        "lost download: recorded {down} < client {client_down}"
    );
    assert!(
        down - client_down <= bound,
        "download over-counted: {down} vs {client_down} (bound {bound})"
    );
    assert!(
        up >= dest_up,
        "lost upload: recorded {up} < arrived {dest_up}"
    );
    assert!(
        up <= client_up,
        "upload counted twice: {up} > client {client_up}"
    );
    assert!(
        client_up - up <= bound,
        "upload under-counted: {up} vs {client_up} (bound {bound})"
    );
}

/// A plane with a node process that witnesses, a gateway process, and a
/// destination that sends without end: what each test below starts from.
struct Witnessed {
    plane: Plane,
    dir: common::tempdir::TempDir,
    node: common::GatewayProc,
    gw: common::GatewayProc,
    cfg: ServerConfig,
    counts: Arc<Counts>,
    target: SocketAddr,
    port: u16,
    cert: std::path::PathBuf,
}

impl Witnessed {
    /// Starts it, the subscription's allowance set to `allowance` bytes
    /// (`None`: unlimited).
    async fn start(allowance: Option<i64>) -> Witnessed {
        let (plane, listener) = Plane::prepare(0).await;
        drop(listener);
        let limit = allowance.map_or("NULL".to_owned(), |b| b.to_string());
        plane
            .sql(&format!(
                "UPDATE subscriptions SET traffic_limit_bytes = {limit}"
            ))
            .await;
        let dir = common::tempdir::TempDir::new();
        let (node_token, node_port) = register_node(&plane, "witness").await;
        let node = spawn_node(&plane, &node_token, node_port, dir.path()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cfg = plane.cipher().await;
        let counts = Arc::new(Counts::default());
        let target = destination(counts.clone()).await;
        let port = common::stable_port();
        let cert = dir.path().join("gw.crt");
        let gw =
            common::GatewayProc::spawn(&plane.server.base, &plane.gateway_token, dir.path(), port)
                .await;
        Witnessed {
            plane,
            dir,
            node,
            gw,
            cfg,
            counts,
            target,
            port,
            cert,
        }
    }

    /// A tunnel through the gateway to `to`, its request sent (a first
    /// write, flushed), counting in `counts`.
    async fn request(&self, to: SocketAddr) -> impl AsyncRead + AsyncWrite + Unpin {
        let ctx = SsContext::new_shared(ServerType::Local);
        let path = format!("/ws/{}/tcp", self.plane.device_token);
        let ws = common::gateway_ws(self.port, &self.cert, &path).await;
        let io = Counting {
            inner: WsIo::new(ws),
            counts: self.counts.clone(),
        };
        let mut stream =
            ProxyClientStream::from_stream(ctx, io, &self.cfg, Address::SocketAddress(to));
        stream.write_all(b"GET").await.expect("write");
        stream.flush().await.expect("flush");
        stream
    }

    /// SIGKILLs the gateway and starts it again on the same port and data
    /// (its spool kept).
    async fn restart_gateway(&mut self) {
        self.restart_gateway_after(|| {}).await;
    }

    /// [`Witnessed::restart_gateway`], running `meanwhile` while it is
    /// down.
    async fn restart_gateway_after(&mut self, meanwhile: impl FnOnce()) {
        let _ = self.gw.child.start_kill();
        let _ = self.gw.child.wait().await;
        meanwhile();
        self.gw = common::GatewayProc::spawn(
            &self.plane.server.base,
            &self.plane.gateway_token,
            self.dir.path(),
            self.port,
        )
        .await;
    }

    /// Starts `n` full-speed tunnels through the gateway.
    async fn traffic(&self, traffic: &Traffic, n: usize) {
        traffic
            .start(
                self.port,
                &self.cert,
                &self.plane.device_token,
                &self.cfg,
                self.target,
                n,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_sigkilled_mid_transfer_without_its_spool_is_covered_by_the_node() {
    gateway_sigkilled_without_its_spool(None).await;
}

/// The same on a limited plan: the restarted gateway counts the session
/// from zero and asks for grants from there, and the node's count, which
/// goes on from the whole session, is still recorded (the grants' bound on
/// it is in the ledger's terms).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_sigkilled_without_its_spool_on_a_limited_plan_is_covered_by_the_node() {
    gateway_sigkilled_without_its_spool(Some(1 << 40)).await;
}

/// A gateway SIGKILLed mid-transfer, its spool deleted, restarted: what
/// is recorded matches what the client and the destination saw.
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn gateway_sigkilled_without_its_spool(allowance: Option<i64>) {
    const TUNNELS: usize = 3;
    let w = Witnessed::start(allowance).await;
    let traffic = Traffic::new(w.counts.clone());
    w.traffic(&traffic, TUNNELS).await;
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    w.gw.sigkill().await;
    // The gateway's own record is gone: only the node can tell.
    let _ = std::fs::remove_file(w.dir.path().join("spool.json"));
    traffic.ended().await;
    // The node's last totals of the first gateway's connections reach the
    // ledger (and, acknowledged, let the node forget the session).
    settled(&w.plane).await;

    // Restarted, it counts the session from zero; the node counts it under
    // a new epoch.
    let plane = &w.plane;
    let gw = common::GatewayProc::spawn(
        &plane.server.base,
        &plane.gateway_token,
        w.dir.path(),
        w.port,
    )
    .await;
    let (cert, cfg) = (&w.cert, &w.cfg);
    traffic
        .start(w.port, cert, &plane.device_token, cfg, w.target, TUNNELS)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.stop().await;
    let recorded = settled(plane).await;
    for q in [
        "SELECT CAST(COALESCE(SUM(witness_up), 0) AS BIGINT) AS n FROM sessions",
        "SELECT CAST(COALESCE(SUM(witness_down), 0) AS BIGINT) AS n FROM sessions",
        "SELECT CAST(COALESCE(MAX(witness_epoch), 0) AS BIGINT) AS n FROM sessions",
        "SELECT COUNT(*) AS n FROM witness_links",
        "SELECT COUNT(*) AS n FROM sessions",
    ] {
        eprintln!("{q}: {}", plane.scalar(q).await);
    }
    check("gateway SIGKILL, spool lost", TUNNELS, &w.counts, recorded);
    let linked = plane
        .scalar("SELECT COUNT(*) AS n FROM witness_links")
        .await;
    assert!(
        linked >= 2 * TUNNELS as i64,
        "every connection linked: {linked}"
    );
    let based = plane
        .scalar("SELECT COUNT(*) AS n FROM sessions WHERE witness_base_down > 0")
        .await;
    assert!(
        based >= 1,
        "the node counted the session's second gateway's connections under a new epoch"
    );
    gw.sigkill().await;
    w.node.sigkill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_sigkilled_mid_transfer_is_covered_by_the_gateway() {
    const TUNNELS: usize = 3;
    let w = Witnessed::start(None).await;
    let traffic = Traffic::new(w.counts.clone());
    w.traffic(&traffic, TUNNELS).await;
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    w.node.sigkill().await;
    // The tunnels die with the node; the gateway lives on and reports.
    traffic.ended().await;
    let recorded = settled(&w.plane).await;
    check("node SIGKILL", TUNNELS, &w.counts, recorded);
    w.gw.sigkill().await;
}

/// More connections moving bytes in one report interval than one request
/// body could hold at the old batch size, all of one session: the node
/// splits its questions and its report, ties every connection and counts
/// every byte of them for the session (no gateway reports here, so what is
/// recorded is the node's count alone: on an unlimited plan, since on a
/// limited one a session without a grant is recorded no further than the
/// gateway's count).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_ties_and_counts_more_connections_than_one_body_holds() {
    const CONNS: usize = 1_200;
    let (plane, listener) = Plane::prepare(0).await;
    drop(listener);
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = NULL")
        .await;
    let dir = common::tempdir::TempDir::new();
    let (node_token, node_port) = register_node(&plane, "busy").await;
    let node = spawn_node(&plane, &node_token, node_port, dir.path()).await;
    let gw = httvps_dataplane::backend::Backend::new(&plane.server.base, &plane.gateway_token)
        .expect("backend");
    // The only node: the session is placed on it once it has beaten.
    let mut session = String::new();
    for _ in 0..100 {
        match gw.assign(&plane.device_token).await {
            Ok(a) => {
                session = a.session_id;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(!session.is_empty(), "a session on the node");
    // Each connection sends 100 bytes (not Shadowsocks: the server closes
    // it after its header times out, the counter has counted them); the
    // test links each as the gateway would.
    let mut conns = Vec::with_capacity(CONNS);
    let mut links = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", node_port))
            .await
            .expect("connect to the node");
        links.push(httvps_wire::witness::SessionLink {
            session_id: session.clone(),
            local: s.local_addr().expect("local").to_string(),
        });
        s.write_all(&[0u8; 100]).await.expect("send");
        conns.push(s);
    }
    for part in links.chunks(200) {
        gw.session_links(&httvps_wire::witness::SessionLinks {
            links: part.to_vec(),
        })
        .await
        .expect("links stored");
    }
    let mut seen = 0;
    for _ in 0..300 {
        seen = plane
            .scalar(&format!(
                "SELECT witness_up AS n FROM sessions WHERE id = '{session}'"
            ))
            .await;
        if seen >= 100 * CONNS as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conns);
    assert_eq!(seen, 100 * CONNS as i64, "every byte of every connection");
    assert_eq!(
        plane
            .scalar(&format!(
                "SELECT bytes_up AS n FROM sessions WHERE id = '{session}'"
            ))
            .await,
        100 * CONNS as i64,
        "recorded: the node's count, the only witness here"
    );
    node.sigkill().await;
}

/// A 5 MiB allowance spent by full-speed tunnels both ways through a
/// gateway and a node that witnesses: at the cut-off the node has written
/// more toward the gateway than the gateway let through (it sits in the
/// sockets between them), and the ledger records the node's count only as
/// far as the session's grant. Recorded usage passes the allowance by no
/// more than 1 MiB, as without the witness (`tests/quota_grants.rs`).
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the overshoot is reported for the record"
)]
async fn the_node_witness_records_no_more_than_the_grants_let_through_at_a_cut_off() {
    const TUNNELS: usize = 2;
    const ALLOWANCE: i64 = 5 * 1024 * 1024;
    let w = Witnessed::start(Some(ALLOWANCE)).await;
    let (plane, counts) = (&w.plane, &w.counts);
    let traffic = Traffic::new(counts.clone());
    w.traffic(&traffic, TUNNELS).await;
    // The gateway cuts the tunnels when the grants run out.
    traffic.ended().await;
    let (up, down) = settled(plane).await;
    let used = plane
        .scalar("SELECT CAST(SUM(traffic_used_bytes) AS BIGINT) AS n FROM subscriptions")
        .await;
    let node_count = plane
        .scalar("SELECT CAST(SUM(witness_up + witness_down) AS BIGINT) AS n FROM sessions")
        .await;
    let client_down = i64::try_from(counts.client_down.load(Ordering::Relaxed)).expect("down");
    eprintln!(
        "cut-off with the node witnessing: recorded {up} up + {down} down, charged {used} of \
         {ALLOWANCE}; the node counted {node_count}, the client read {client_down}"
    );
    assert!(
        node_count > 0,
        "the node witnessed the session (else this test shows nothing)"
    );
    assert!(used >= ALLOWANCE, "the allowance is spent: {used}");
    assert!(
        used - ALLOWANCE <= 1024 * 1024,
        "charged {used} B for a {ALLOWANCE} B allowance"
    );
    assert!(
        down >= client_down,
        "recorded {down} down, but the client read {client_down}"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// A download the client stops reading, then closes (a cancelled one):
/// the node has written more toward the gateway than the gateway let
/// through (it sits in the sockets between them). What the gateway let
/// through is recorded, not the node's count: the node's count was taken
/// while the gateway reported, and charged megabytes nobody relayed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_download_is_recorded_as_the_gateway_let_it_through() {
    let w = Witnessed::start(None).await;
    // The request, then 1 MiB read.
    let mut stream = w.request(w.target).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    while read < 1024 * 1024 {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            other => panic!("the download stopped: {other:?}"),
        }
    }
    // Stalled for a few report intervals, then cancelled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(stream);
    let (_, down) = settled(&w.plane).await;
    let node_down = w
        .plane
        .scalar("SELECT CAST(SUM(witness_down) AS BIGINT) AS n FROM sessions")
        .await;
    let client_down = i64::try_from(w.counts.client_down.load(Ordering::Relaxed)).expect("down");
    assert!(down >= client_down, "recorded {down} < read {client_down}");
    assert!(
        down + 64 * 1024 < node_down,
        "recorded {down}, the node wrote {node_down}: the node's count was charged"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// A source of `len` bytes per connection, which then waits for the
/// client to close.
async fn fixed_source(len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&vec![9u8; len]).await;
                let mut rest = [0u8; 1024];
                while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// One whole download of `from` through the gateway, read to its end.
async fn download(w: &Witnessed, from: SocketAddr) {
    let mut stream = w.request(from).await;
    let mut sink = vec![0u8; 10 * 1024 * 1024];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut sink))
        .await
        .expect("in time")
        .expect("read");
}

/// Two whole downloads, the gateway SIGKILLed between them with its spool
/// lost and restarted: the node reports the second download's connection
/// as soon as it closes, often before the new gateway's first report.
/// Recorded is what the client read, once (the node's count taken as the
/// new count's base counted the second download twice).
#[tokio::test(flavor = "multi_thread")]
async fn downloads_around_a_gateway_restart_without_its_spool_count_once() {
    let mut w = Witnessed::start(None).await;
    let source = fixed_source(10 * 1024 * 1024).await;
    download(&w, source).await;
    settled(&w.plane).await;
    w.gw.sigkill().await;
    let _ = std::fs::remove_file(w.dir.path().join("spool.json"));
    w.gw = common::GatewayProc::spawn(
        &w.plane.server.base,
        &w.plane.gateway_token,
        w.dir.path(),
        w.port,
    )
    .await;
    download(&w, source).await;
    let (_, down) = settled(&w.plane).await;
    let client_down = i64::try_from(w.counts.client_down.load(Ordering::Relaxed)).expect("down");
    assert!(
        (client_down..=client_down + 64 * 1024).contains(&down),
        "recorded {down} down, the client read {client_down}"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// Downloads of `len` bytes from `from` through the gateway at `port`,
/// each a new tunnel read to its end, one after the other until `run` is
/// cleared (a tunnel that cannot open, the gateway being away, is tried
/// again 50 ms later), counting in `counts`.
#[expect(clippy::too_many_arguments, reason = "a task's whole world, owned")]
async fn short_downloads(
    port: u16,
    cert: std::path::PathBuf,
    token: String,
    cfg: ServerConfig,
    counts: Arc<Counts>,
    from: SocketAddr,
    len: usize,
    run: Arc<AtomicBool>,
) {
    let ctx = SsContext::new_shared(ServerType::Local);
    let path = format!("/ws/{token}/tcp");
    let mut buf = vec![0u8; 64 * 1024];
    while run.load(Ordering::Relaxed) {
        // The gateway away: try_gateway_ws takes the TCP connection and
        // the TLS handshake as given (it panics, on a task of its own).
        let (c, p) = (cert.clone(), path.clone());
        let opened = tokio::spawn(async move { common::try_gateway_ws(port, &c, &p).await }).await;
        let Ok(Ok(ws)) = opened else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let io = Counting {
            inner: WsIo::new(ws),
            counts: counts.clone(),
        };
        let mut stream =
            ProxyClientStream::from_stream(ctx.clone(), io, &cfg, Address::SocketAddress(from));
        if stream.write_all(b"GET").await.is_err() || stream.flush().await.is_err() {
            continue;
        }
        let mut got = 0;
        while got < len {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got += n,
                _ => break,
            }
        }
    }
}

/// Short tunnels one after the other (a browser's, a download loop's),
/// three devices' worth, through a gateway SIGKILLed and restarted from
/// its spool: what moved after the spool's last write is the node's to
/// tell, and the node ties a connection to its session only by the link
/// the gateway sends. Links of the tunnels opened in the gateway's last
/// fraction of a second were held in its memory only, and the node let go
/// of closed connections it could not tie after three asks (3 s, before
/// the gateway was back): 6-18 MB lost per crash at 100 MB/s.
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn short_tunnels_through_a_gateway_crash_lose_nothing() {
    let mut w = Witnessed::start(None).await;
    let source = fixed_source(2 * 1024 * 1024).await;
    short_tunnels_through_a_crash(&mut w, source).await;
    let (_, down) = settled(&w.plane).await;
    let client_down = i64::try_from(w.counts.client_down.load(Ordering::Relaxed)).expect("down");
    eprintln!(
        "short tunnels through a crash: the client read {client_down} B, recorded {down} B \
         (excess {})",
        down - client_down
    );
    assert!(
        client_down > 20_000_000,
        "too little traffic: {client_down}"
    );
    assert!(
        down >= client_down,
        "lost download: recorded {down} < client {client_down}"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// Runs three loops of [`short_downloads`] of 2 MiB from `source`, the
/// gateway SIGKILLed and restarted from its spool after 3 s, for 3 s more;
/// returns when the loops have ended.
async fn short_tunnels_through_a_crash(w: &mut Witnessed, source: SocketAddr) {
    let run = Arc::new(AtomicBool::new(true));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(short_downloads(
                w.port,
                w.cert.clone(),
                w.plane.device_token.clone(),
                w.cfg.clone(),
                w.counts.clone(),
                source,
                2 * 1024 * 1024,
                run.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.restart_gateway().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.store(false, Ordering::Relaxed);
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs(15), l).await;
    }
}

/// Whether one download of `len` bytes from `from` goes through whole.
async fn downloads(w: &Witnessed, from: SocketAddr, len: usize) -> bool {
    let counts = Arc::new(Counts::default());
    let run = Arc::new(AtomicBool::new(true));
    let (port, cert, token, cfg) = (
        w.port,
        w.cert.clone(),
        w.plane.device_token.clone(),
        w.cfg.clone(),
    );
    let ctx = SsContext::new_shared(ServerType::Local);
    let path = format!("/ws/{token}/tcp");
    let opened =
        tokio::spawn(async move { common::try_gateway_ws(port, &cert, &path).await }).await;
    let Ok(Ok(ws)) = opened else {
        return false;
    };
    let io = Counting {
        inner: WsIo::new(ws),
        counts,
    };
    let mut stream = ProxyClientStream::from_stream(ctx, io, &cfg, Address::SocketAddress(from));
    if stream.write_all(b"GET").await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < len && run.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    got >= len
}

/// After a gateway crash among short tunnels, a device whose allowance
/// has megabytes left gets them once the lost grants' doubt is over
/// (30 s): it was refused "allowance used up" for minutes, 20-30 MB held
/// back, while the API showed them left.
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn after_a_crash_among_short_tunnels_the_allowance_left_is_given_within_the_doubt() {
    let mut w = Witnessed::start(Some(50_000_000_000)).await;
    let source = fixed_source(2 * 1024 * 1024).await;
    short_tunnels_through_a_crash(&mut w, source).await;
    let restarted = tokio::time::Instant::now() - Duration::from_secs(3);
    settled(&w.plane).await;
    // Five megabytes left, as the API shows them.
    w.plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = traffic_used_bytes + 5000000")
        .await;
    let small = fixed_source(1024 * 1024).await;
    let mut given = None;
    for _ in 0..60 {
        if downloads(&w, small, 1024 * 1024).await {
            given = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("after a crash among short tunnels: 5 MB left given {given:?} after the restart");
    let given = given.expect("the allowance left was never given (60 s)");
    assert!(
        given <= Duration::from_secs(45),
        "the allowance left was given {given:?} after the restart"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// A links' file holding a session that is not this gateway's (a data
/// directory kept from another registration): the control plane refuses
/// that link (403), and the gateway drops it, so the links of its own
/// tunnels are taken behind it. Resent, it held every later link back,
/// and the file kept it across restarts.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_link_in_the_links_file_holds_no_other_back() {
    let mut w = Witnessed::start(None).await;
    let source = fixed_source(1024 * 1024).await;
    assert!(downloads(&w, source, 1024 * 1024).await, "a first download");
    settled(&w.plane).await;
    // Another gateway's session: the device's, copied, of no gateway.
    w.plane
        .sql(
            "INSERT INTO sessions SELECT (json_populate_record(s, \
             '{\"id\": \"00000000-0000-7000-8000-000000000001\", \"gateway_node_id\": null}'::json)).* \
             FROM sessions s LIMIT 1",

        )
        .await;
    let file = w.dir.path().join("spool.json.links");
    w.restart_gateway_after(|| {
        let mut lines = std::fs::read_to_string(&file).unwrap_or_default();
        lines.push_str("00000000-0000-7000-8000-000000000001 127.0.0.1:9\n");
        std::fs::write(&file, lines).expect("write");
    })
    .await;
    let linked = "SELECT COUNT(*) AS n FROM witness_links";
    let before = w.plane.scalar(linked).await;
    for _ in 0..3 {
        assert!(downloads(&w, source, 1024 * 1024).await, "a download");
    }
    let mut after = before;
    for _ in 0..50 {
        after = w.plane.scalar(linked).await;
        if after >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        after >= before + 3,
        "the new tunnels' links were not taken ({before} -> {after})"
    );
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(!kept.contains("0000-000000000001"), "{kept}");
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// Uploads through one new tunnel to `to` at full speed until the gateway
/// cuts it (or refuses it, or 20 s pass); what the tunnel took.
async fn upload_until_cut(w: &Witnessed, to: SocketAddr) -> u64 {
    upload_as(w, &w.plane.device_token, to, u64::MAX).await
}

/// [`upload_until_cut`] as the device of access token `token`, stopping
/// (and closing) after `cap` bytes.
async fn upload_as(w: &Witnessed, token: &str, to: SocketAddr, cap: u64) -> u64 {
    let ctx = SsContext::new_shared(ServerType::Local);
    let path = format!("/ws/{token}/tcp");
    let Ok(ws) = common::try_gateway_ws(w.port, &w.cert, &path).await else {
        return 0;
    };
    let io = Counting {
        inner: WsIo::new(ws),
        counts: w.counts.clone(),
    };
    let mut stream = ProxyClientStream::from_stream(ctx, io, &w.cfg, Address::SocketAddress(to));
    let chunk = vec![42u8; 8 * 1024];
    let mut sent = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while sent < cap
        && tokio::time::Instant::now() < until
        && stream.write_all(&chunk).await.is_ok()
    {
        sent += chunk.len() as u64;
    }
    let _ = stream.flush().await;
    sent
}

/// A gateway SIGKILLed while its session had most of a grant left, and
/// restarted from its spool. The grant's whole limit is taken as spent
/// at first (the lost count could have let it all through), which held
/// the device's last megabytes back for the session's life: a subscriber
/// refused "allowance used up" with megabytes shown left. Once the node
/// has told what passed, the rest of the allowance is given, and no more.
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn after_a_gateway_crash_the_node_gives_back_what_the_lost_grant_held() {
    const ALLOWANCE: u64 = 24_000_000;
    const FIRST: usize = 2_000_000;
    const MIB: u64 = 1024 * 1024;
    let mut w = Witnessed::start(Some(ALLOWANCE as i64)).await;
    let (target, received) = common::counting_sink().await;
    // 2 MB through one tunnel, then idle: the grant asked for holds about
    // 8 MiB more.
    let mut first = w.request(target).await;
    first.write_all(&vec![42u8; FIRST]).await.expect("write");
    first.flush().await.expect("flush");
    for _ in 0..100 {
        if received.load(Ordering::Relaxed) >= FIRST as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Spooled, reported and witnessed.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    drop(first);
    w.restart_gateway().await;
    let restarted = tokio::time::Instant::now();
    // At full speed until cut: held to the lost grant's limit.
    upload_until_cut(&w, target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = received.load(Ordering::Relaxed);
    // Once the doubt is over (30 s), the node's count of what passed
    // before the crash takes the grant's limit's place.
    tokio::time::sleep_until(restarted + Duration::from_secs(32)).await;
    for _ in 0..5 {
        if upload_until_cut(&w, target).await == 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = received.load(Ordering::Relaxed);
    let charged = w
        .plane
        .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
        .await;
    eprintln!(
        "crash with a grant out: {FIRST} B before it, {held} B through while in doubt, \
         {total} B in all (charged {charged} B), allowance {ALLOWANCE} B"
    );
    assert!(
        held <= ALLOWANCE + MIB,
        "{held} B through during the doubt of an allowance of {ALLOWANCE} B"
    );
    assert!(
        total <= ALLOWANCE + MIB,
        "{total} B through of an allowance of {ALLOWANCE} B"
    );
    assert!(
        total + MIB >= ALLOWANCE,
        "{total} B through of an allowance of {ALLOWANCE} B: the lost grant still holds the rest"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}

/// [`upload_as`] by two devices at once; what they took.
async fn both(w: &Witnessed, tokens: [&str; 2], to: SocketAddr, cap: u64) -> u64 {
    let (x, y) = tokio::join!(
        upload_as(w, tokens[0], to, cap),
        upload_as(w, tokens[1], to, cap)
    );
    x + y
}

/// Two devices of one subscription, their gateway SIGKILLed twice, the
/// second time while the first crash's bound still held: once the bounds
/// give way, the two are granted no more than the allowance has left
/// together. (The count in the ledger's terms fell below what the ledger
/// had recorded, so each grant held back less than the room it gave, and
/// each device was granted most of the remainder: 3-7 MiB past a 30 MiB
/// allowance.) And nothing is counted twice.
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn two_devices_through_two_gateway_crashes_stay_within_the_allowance() {
    const ALLOWANCE: u64 = 30_000_000;
    const MIB: u64 = 1024 * 1024;
    let mut w = Witnessed::start(Some(ALLOWANCE as i64)).await;
    let r = w
        .plane
        .gql(
            "mutation{registerDevice(name:\"phone\",platform:\"android\"){accessToken}}",
            json!({}),
        )
        .await;
    let second = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let first = w.plane.device_token.clone();
    let (target, received) = common::counting_sink().await;
    // Both devices move a few megabytes, then the gateway dies with their
    // grants out, twice, the second time while the first bound holds.
    for _ in 0..2 {
        both(&w, [&first, &second], target, 2_000_000).await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        w.restart_gateway().await;
    }
    let restarted = tokio::time::Instant::now();
    both(&w, [&first, &second], target, u64::MAX).await;
    tokio::time::sleep_until(restarted + Duration::from_secs(33)).await;
    for _ in 0..5 {
        if both(&w, [&first, &second], target, u64::MAX).await == 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = received.load(Ordering::Relaxed);
    let charged = w
        .plane
        .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
        .await;
    eprintln!(
        "two devices, two crashes: {total} B through in all (charged {charged} B), \
         allowance {ALLOWANCE} B"
    );
    assert!(
        total <= ALLOWANCE + MIB,
        "{total} B through of an allowance of {ALLOWANCE} B"
    );
    // And the rest is given: the second crash's bound is in doubt too
    // (it took the first bound as known, and held the devices to it for
    // good: refused "allowance used up" with megabytes shown left).
    assert!(
        total + 2 * MIB >= ALLOWANCE,
        "{total} B through of an allowance of {ALLOWANCE} B: the lost grants still hold the rest"
    );
    // Nothing counted twice: the new counts' first reports (at zero, at
    // once) came before the node's reports of their bytes had raised the
    // record their base is taken from (52 MB charged for 30 MB moved).
    assert!(
        u64::try_from(charged).expect("charged") <= ALLOWANCE,
        "{charged} B charged for {total} B through"
    );
    w.gw.sigkill().await;
    w.node.sigkill().await;
}
