//! The gateway's own durability: the usage spool is on by default (under
//! `--data-dir`), so a gateway process SIGKILLed at full speed and
//! restarted loses at most what it counted in the last spool interval
//! (0.5 s) and counts nothing twice.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use httvps_dataplane::wsio::WsIo;
use plane::Plane;
use shadowsocks_service::shadowsocks::ProxyClientStream;
use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::Context as SsContext;
use shadowsocks_service::shadowsocks::relay::Address;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Counts what is written into the WebSocket: the bytes the gateway sees
/// as payload.
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
    common::counting_sink().await.0
}

/// `httvps-relay gateway` as a process, with no `--spool`: the default
/// spool under `data_dir`.
/// The bytes queued in the kernel (sent but not acknowledged, or received
/// but not read) on every TCP connection to or from `port`, from
/// /proc/net/tcp and tcp6.
fn queued_on_port(port: u16) -> u64 {
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || (port_of(f[1]) != Some(port) && port_of(f[2]) != Some(port)) {
                continue;
            }
            let mut queues = f[4].split(':');
            for q in [queues.next(), queues.next()] {
                total += q.and_then(|q| u64::from_str_radix(q, 16).ok()).unwrap_or(0);
            }
        }
    }
    total
}

async fn spawn_gateway(
    plane: &Plane,
    port: u16,
    data_dir: &Path,
    log: &Path,
) -> common::GatewayProc {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args(["gateway", "--backend", &plane.server.base])
        .args(["--token", &plane.gateway_token])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&plane.cert)
        .arg("--key")
        .arg(&plane.key)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--public-url", &format!("https://localhost:{port}")])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map(std::process::Stdio::from)
                .expect("log"),
        )
        .spawn()
        .expect("httvps-relay gateway");
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
        "no gateway: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Full-speed tunnels counting what they hand the gateway.
struct Traffic {
    up: Arc<AtomicU64>,
    run: Arc<AtomicBool>,
    open: Arc<AtomicU64>,
}

impl Traffic {
    fn new() -> Self {
        Traffic {
            up: Arc::new(AtomicU64::new(0)),
            run: Arc::new(AtomicBool::new(true)),
            open: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn start(
        &self,
        port: u16,
        plane: &Plane,
        cfg: &ServerConfig,
        target: SocketAddr,
        n: usize,
    ) {
        let refused = self.start_or_refused(port, plane, cfg, target, n).await;
        assert_eq!(refused, 0, "the gateway refused {refused} of {n} tunnels");
    }

    /// [`Traffic::start`], where the gateway may refuse the device (with
    /// the unknown path's 404): how many tunnels it refused.
    async fn start_or_refused(
        &self,
        port: u16,
        plane: &Plane,
        cfg: &ServerConfig,
        target: SocketAddr,
        n: usize,
    ) -> usize {
        let ctx = SsContext::new_shared(ServerType::Local);
        let path = format!("/ws/{}/tcp", plane.device_token);
        let mut refused = 0;
        for _ in 0..n {
            let ws = match common::try_gateway_ws(port, &plane.cert, &path).await {
                Ok(ws) => ws,
                Err(404) => {
                    refused += 1;
                    continue;
                }
                Err(status) => panic!("the gateway answered the upgrade with {status}"),
            };
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
            let (run, open) = (self.run.clone(), self.open.clone());
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let chunk = vec![42u8; 8 * 1024];
                while run.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown().await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        refused
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

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn a_gateway_sigkilled_at_full_speed_loses_at_most_one_spool_interval_and_recounts_nothing() {
    const TUNNELS: usize = 4;
    let (plane, listener) = Plane::prepare(1).await;
    drop(listener);
    // Full speed on loopback goes far past the test plan's 100 MB.
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = NULL")
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cfg = plane.cipher().await;
    let target = sink().await;
    let dir = common::tempdir::TempDir::new();
    let data = dir.path().join("data");
    let log = dir.path().join("gateway.log");
    let port = common::stable_port();
    let traffic = Traffic::new();
    // What the client had handed the gateway, every 20 ms.
    let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let sampler = {
        let (samples, up) = (samples.clone(), traffic.up.clone());
        tokio::spawn(async move {
            loop {
                let at = (Instant::now(), up.load(Ordering::Relaxed));
                samples.lock().expect("samples").push(at);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let gw = spawn_gateway(&plane, port, &data, &log).await;
    traffic.start(port, &plane, &cfg, target, TUNNELS).await;
    tokio::time::sleep(Duration::from_millis(3300)).await;
    // What sits in the kernel's buffers on the gateway's connections dies
    // with it unread: taken right before the kill.
    let queued = queued_on_port(port);
    gw.sigkill().await;
    let killed = Instant::now();
    let at_kill = traffic.up.load(Ordering::Relaxed);
    traffic.stop().await;
    // The spool interval (0.5 s) and as much again for scheduling on a
    // busy machine: what the client handed over in the last second.
    let window = Duration::from_secs(1);
    let before_window = samples
        .lock()
        .expect("samples")
        .iter()
        .rev()
        .find(|(at, _)| killed.duration_since(*at) >= window)
        .map(|(_, up)| *up)
        .expect("a sample a second before the kill");
    let loss_bound = at_kill - before_window + queued;
    assert!(
        data.join("gateway-spool.json").exists(),
        "the spool is on by default, under the data directory"
    );

    let gw = spawn_gateway(&plane, port, &data, &log).await;
    traffic.start(port, &plane, &cfg, target, TUNNELS).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.stop().await;
    sampler.abort();
    let moved = traffic.up.load(Ordering::Relaxed);

    // Everything reported: wait (bounded) until the totals stop growing.
    let total = "SELECT CAST(COALESCE(SUM(bytes_up), 0) AS BIGINT) AS n FROM sessions";
    let (mut last, mut stable) = (-1, 0);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = plane.scalar(total).await;
        if now == last {
            stable += 1;
            if stable >= 6 {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    let moved = i64::try_from(moved).expect("moved");
    let lost = moved - last;
    eprintln!(
        "spool: moved {moved} bytes up through {TUNNELS} tunnels at full speed; recorded {last}; \
         lost {lost} (bound {loss_bound}: what the client handed over in the last second before SIGKILL, \
         of {at_kill} by then, plus {queued} queued in socket buffers)"
    );
    assert!(last <= moved, "counted more than moved: {last} > {moved}");
    assert!(
        lost <= i64::try_from(loss_bound).expect("bound"),
        "lost {lost} > bound {loss_bound}"
    );
    assert!(
        moved > 20_000_000,
        "too little traffic to mean anything: {moved}"
    );
    gw.sigkill().await;
}

/// A spool naming another gateway's session (a data directory kept while
/// the gateway was re-registered under a new identity, or its old identity
/// deleted): the control plane answers those totals as unknown, the
/// gateway drops them, and its own sessions' usage is still recorded (a
/// refusal it took for "try again" held every report back for ever).
#[tokio::test(flavor = "multi_thread")]
async fn another_gateways_sessions_in_the_spool_do_not_hold_back_its_own() {
    let (plane, listener) = Plane::prepare(1).await;
    drop(listener);
    let r = plane
        .gql(
            "mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw-before\",publicUrl:\"https://gw-before.example.com\"}){token}}",
            serde_json::json!({}),
        )
        .await;
    let before = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let res = common::client()
        .post(format!("{}/api/v1/nodes/assign-outline", plane.server.base))
        .bearer_auth(&before)
        .json(&serde_json::json!({"device_token": plane.device_token}))
        .send()
        .await
        .expect("assign");
    let b: serde_json::Value = res.json().await.expect("json");
    let foreign = b["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{b}"))
        .to_owned();
    let dir = common::tempdir::TempDir::new();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("gateway-spool.json"),
        serde_json::json!({"sessions": {&foreign: [1000, 2000]}}).to_string(),
    )
    .expect("spool");
    let log = dir.path().join("gateway.log");
    let port = common::stable_port();
    let gw = spawn_gateway(&plane, port, &data, &log).await;
    let cfg = plane.cipher().await;
    let target = sink().await;
    let traffic = Traffic::new();
    traffic.start(port, &plane, &cfg, target, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic.stop().await;
    let ours = format!(
        "SELECT CAST(COALESCE(SUM(bytes_up), 0) AS BIGINT) AS n FROM sessions WHERE id <> '{foreign}'"
    );
    let mut recorded = 0;
    for _ in 0..60 {
        recorded = plane.scalar(&ours).await;
        if recorded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        recorded > 0,
        "the gateway's own usage was never recorded: {log_text}"
    );
    assert_eq!(
        plane
            .scalar(&format!(
                "SELECT bytes_up + bytes_down AS n FROM sessions WHERE id = '{foreign}'"
            ))
            .await,
        0,
        "nothing counted for the other gateway's session"
    );
    assert!(log_text.contains("usage refused; dropped"), "{log_text}");
    gw.sigkill().await;
}

/// The allowance holds across a gateway's crash. The gateway is SIGKILLed
/// at full speed a third of the way into a 60 MB allowance and restarted,
/// with its spool (which lags what it let through by up to one spool
/// interval) or without it (it counts the session from zero), and its
/// tunnels go on at full speed until cut: the target receives no more
/// than the allowance in all (within a mebibyte). Before, a gateway back
/// from a crash was granted as if what its lost count had let through
/// was never spent: the spool's lag past the allowance (several MB at
/// full speed), or, without the spool, everything recorded before the
/// crash again.
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn the_allowance_holds_across_a_gateway_crash(keep_spool: bool) {
    const ALLOWANCE: u64 = 60_000_000;
    const TUNNELS: usize = 4;
    let (plane, listener) = Plane::prepare(1).await;
    drop(listener);
    plane
        .sql(&format!(
            "UPDATE subscriptions SET traffic_limit_bytes = {ALLOWANCE}"
        ))
        .await;
    let cfg = plane.cipher().await;
    let (target, received) = common::counting_sink().await;
    let dir = common::tempdir::TempDir::new();
    let data = dir.path().join("data");
    let log = dir.path().join("gateway.log");
    let port = common::stable_port();
    let traffic = Traffic::new();

    let gw = spawn_gateway(&plane, port, &data, &log).await;
    traffic.start(port, &plane, &cfg, target, TUNNELS).await;
    let t0 = Instant::now();
    while received.load(Ordering::Relaxed) < ALLOWANCE / 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "20 MB not through in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.sigkill().await;
    let at_kill = received.load(Ordering::Relaxed);
    traffic.stop().await;
    if !keep_spool {
        std::fs::remove_file(data.join("gateway-spool.json")).expect("remove the spool");
    }

    let gw = spawn_gateway(&plane, port, &data, &log).await;
    let refused = traffic
        .start_or_refused(port, &plane, &cfg, target, TUNNELS)
        .await;
    if refused == TUNNELS {
        // A loaded machine may see the whole allowance through before the
        // kill: then the device is refused, as it should be, and only for
        // that reason. (Some tunnels may be: for 30 s the restarted
        // session is held to what its lost count could have let through,
        // which the first tunnels may spend before the last opens.)
        let used = plane
            .scalar("SELECT traffic_used_bytes AS n FROM subscriptions")
            .await;
        assert!(
            used >= ALLOWANCE as i64,
            "{refused} tunnels refused after the restart with {used} B of {ALLOWANCE} B used"
        );
    }
    let t1 = Instant::now();
    while traffic.open.load(Ordering::Relaxed) > 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "the tunnels were not cut within 60 s; {} B received",
            received.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What was on its way to the target arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = received.load(Ordering::Relaxed);
    eprintln!(
        "crash (spool kept: {keep_spool}): {at_kill} B through before SIGKILL, {total} B in all, \
         allowance {ALLOWANCE} B"
    );
    assert!(
        total <= ALLOWANCE + 1024 * 1024,
        "{total} B through of an allowance of {ALLOWANCE} B (spool kept: {keep_spool})"
    );
    gw.sigkill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allowance_holds_across_a_gateway_crash_with_its_spool() {
    the_allowance_holds_across_a_gateway_crash(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allowance_holds_across_a_gateway_crash_without_its_spool() {
    the_allowance_holds_across_a_gateway_crash(false).await;
}
