//! The control plane's HTTP server under idle and slow sockets: `httvps
//! serve` (a real process, short deadlines) holds 5,000 sockets that send
//! nothing, half a header or half a body, keeps answering health in under a
//! second, and closes every one of them after its deadline, an idle
//! keep-alive connection included; beyond its connection budget, or its
//! share for one source, it closes new connections at once. It raises its soft open-file limit to the hard
//! one. Bodies sent a byte at a time cost their bytes, not a read buffer
//! per byte. Request heads past their bounds are refused in the routes'
//! error shape.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TEST_SECRET, TestDb, httvps_cmd, spawn_listening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELD: usize = 5_000;

/// `httvps serve` with a budget of `max_connections` and at most
/// `per_source` from one source (0: no bound).
fn serve(db: &TestDb, max_connections: usize, per_source: usize) -> common::Proc {
    let mut cmd = httvps_cmd();
    cmd.args(["serve", "--port", "0"])
        .env("BACKEND_DB_DSN", db.url())
        .env("BACKEND_SECRET_KEY", TEST_SECRET)
        .env("BACKEND_HEADER_TIMEOUT_SECS", "2")
        .env("BACKEND_BODY_TIMEOUT_SECS", "2")
        .env("BACKEND_WS_IDLE_SECS", "2")
        .env("BACKEND_MAX_CONNECTIONS", max_connections.to_string())
        .env("BACKEND_MAX_CONNECTIONS_PER_SOURCE", per_source.to_string());
    let p = spawn_listening(cmd);
    assert!(p.addr.is_some(), "the server did not start");
    p
}

/// What a slow socket sends before it stalls.
fn stall(i: usize) -> &'static [u8] {
    match i % 3 {
        0 => b"",
        1 => b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        _ => b"POST /api/v1/gateway/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"vers",
    }
}

/// One health request on a fresh connection; its time.
async fn health(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("health answered within 5 s")
        .expect("read");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    start.elapsed()
}

/// Whether the peer closed `s` (EOF or reset) within `within`; what it sent
/// before is read and ignored.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_under_5000_slow_sockets_and_they_are_closed() {
    let limit = httvps_control::listener::raise_nofile_limit().unwrap_or(0);
    assert!(
        limit > HELD as u64 + 500,
        "this test needs {HELD}+ descriptors"
    );
    let db = TestDb::sqlite().await;
    // Every socket comes from 127.0.0.1: no per-source bound here.
    let p = serve(&db, 8192, 0);
    let addr = p.addr.expect("addr");
    // Open and stall 5,000 sockets, 250 at a time.
    let mut held = Vec::with_capacity(HELD);
    let opened_at = Instant::now();
    for chunk in 0..HELD / 250 {
        let batch: Vec<_> = (0..250)
            .map(|j| {
                let i = chunk * 250 + j;
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    s.write_all(stall(i)).await.expect("write");
                    s
                })
            })
            .collect();
        for t in batch {
            held.push(t.await.expect("task"));
        }
    }
    let opened = opened_at.elapsed();
    // Health keeps answering while they are held.
    // The median of five: a starved server fails them all, a busy machine
    // may slow one.
    let mut took = Vec::with_capacity(5);
    for _ in 0..5 {
        took.push(health(addr).await);
    }
    took.sort();
    assert!(took[2] < Duration::from_secs(1), "health took {took:?}");
    // Every slow socket is closed after its 2 s deadline (counted from when
    // it was opened: allow for the time opening them all took).
    let within = Duration::from_secs(6) + opened;
    let checks: Vec<_> = held
        .into_iter()
        .map(|mut s| tokio::spawn(async move { closed_within(&mut s, within).await }))
        .collect();
    let mut open = [0usize; 3];
    for (i, c) in checks.into_iter().enumerate() {
        if !c.await.expect("task") {
            open[i % 3] += 1;
        }
    }
    assert_eq!(
        open,
        [0, 0, 0],
        "sockets left open after the deadline (nothing, half a header, half a body)"
    );
    assert!(health(addr).await < Duration::from_secs(5));
    #[expect(clippy::print_stderr, reason = "the figures of the run")]
    {
        eprintln!("opened {HELD} slow sockets in {opened:?}; health {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_budget_are_closed_at_once() {
    let db = TestDb::sqlite().await;
    let p = serve(&db, 20, 0);
    let addr = p.addr.expect("addr");
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Let the server take them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(1)).await,
        "a connection beyond the budget was kept"
    );
    // Places come back when connections go.
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "health never answered after the connections left");
    let shed = common::metric(addr, "httvps_http_shed_connections_total").await;
    assert!(shed > 0.0, "{shed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_token_guards_metrics_only() {
    let db = TestDb::sqlite().await;
    let mut cmd = httvps_cmd();
    cmd.args(["serve", "--port", "0"])
        .env("BACKEND_DB_DSN", db.url())
        .env("BACKEND_SECRET_KEY", TEST_SECRET)
        .env("BACKEND_METRICS_TOKEN", "metrics-token-0123456789");
    let p = spawn_listening(cmd);
    let addr = p.addr.expect("the server did not start");
    let client = common::client();
    let url = format!("http://{addr}/metrics");
    for token in [None, Some("wrong-token-0123456789")] {
        let mut req = client.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("send");
        assert_eq!(res.status().as_u16(), 401, "token {token:?}");
        let v: serde_json::Value = res.json().await.expect("json");
        assert_eq!(v["error"]["code"], "UNAUTHENTICATED");
    }
    let res = client
        .get(&url)
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.text()
            .await
            .expect("text")
            .contains("httvps_db_pool_connections")
    );
    let health = client
        .get(format!("http://{addr}/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s` (bounded):
/// its head and body.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no content-length: {head}"));
                if buf.len() >= end + 4 + len {
                    return (head, buf[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = s.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .expect("answered within 5 s")
}

/// A keep-alive connection that was answered and then says nothing is
/// closed after the header deadline (2 s here), neither at once nor never.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_its_deadline() {
    let db = TestDb::sqlite().await;
    let p = serve(&db, 64, 0);
    let addr = p.addr.expect("addr");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let answered = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)).await,
        "an idle keep-alive connection was kept past its deadline"
    );
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1500),
        "closed {idle:?} after the answer: before its deadline"
    );
}

/// The soft and hard open-file limits of process `pid`, from
/// /proc/`pid`/limits.
fn nofile_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let parse = |f: &str| f.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    (parse(fields[3]), parse(fields[4]))
}

/// `httvps serve`, started with its soft open-file limit below the hard
/// one, raises it to the hard one before it listens.
#[tokio::test(flavor = "multi_thread")]
async fn serve_raises_its_open_file_limit_to_the_hard_one() {
    common::apt_install(&["util-linux"], &[("prlimit", "--version")]);
    let (_, hard) = nofile_limits("self");
    let soft = (hard / 2).min(1024);
    let lowered = format!("--nofile={soft}:{hard}");
    // The wrapper does lower it: a shell started the same way says so.
    let out = std::process::Command::new("prlimit")
        .args([lowered.as_str(), "--", "sh", "-c", "ulimit -Sn"])
        .output()
        .expect("prlimit");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        soft.to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = TestDb::sqlite().await;
    let mut inner = httvps_cmd();
    inner
        .args(["serve", "--port", "0"])
        .env("BACKEND_DB_DSN", db.url())
        .env("BACKEND_SECRET_KEY", TEST_SECRET);
    // prlimit sets the limits and execs the server: one process, one pid.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args([lowered.as_str(), "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let p = spawn_listening(cmd);
    assert!(p.addr.is_some(), "the server did not start");
    let pid = p.child.id().to_string();
    assert!(
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .expect("exe")
            .ends_with("httvps"),
        "the pid is the server's"
    );
    assert_eq!(nofile_limits(&pid), (hard, hard), "soft limit not raised");
}

/// A connection to `to` from the local address `from`.
async fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Health over a fresh connection from `from`: whether it answered 200.
async fn health_from(from: std::net::IpAddr, addr: SocketAddr) -> bool {
    let mut s = connect_from(from, addr).await;
    let _ = s
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_source_holds_no_more_than_its_share_while_others_are_served() {
    let db = TestDb::sqlite().await;
    let p = serve(&db, 8192, 20);
    let addr = p.addr.expect("addr");
    let (here, there): (std::net::IpAddr, std::net::IpAddr) =
        ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(here, addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The source's 21st is closed at once, unanswered.
    let mut extra = connect_from(here, addr).await;
    let _ = extra
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut out)).await;
    assert!(out.is_empty(), "answered past the source's share");
    // Another source is served meanwhile.
    assert!(health_from(there, addr).await, "another source refused");
    // Places come back when connections go.
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if health_from(here, addr).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "the source was not served again after its connections left"
    );
}

/// `n` calls at once through `backend` (session links, empty); how many
/// failed.
async fn calls_failed(backend: &httvps_dataplane::backend::Backend, n: usize) -> usize {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let b = backend.clone();
            let links = httvps_wire::witness::SessionLinks { links: Vec::new() };
            tokio::spawn(async move { b.session_links(&links).await })
        })
        .collect();
    let mut failed = 0;
    for c in calls {
        if c.await.expect("call task").is_err() {
            failed += 1;
        }
    }
    failed
}

/// A gateway's calls to its control plane are bounded in flight, so a
/// burst of them (every session asking at once) stays within the
/// control plane's share for one source instead of being cut off there.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_gateway_calls_stays_within_the_control_planes_share_for_its_source() {
    use httvps_control::{actor::Actor, catalogue, nodes};
    use httvps_dataplane::backend::Backend;
    let db = TestDb::sqlite().await;
    let p = serve(&db, 8192, 8);
    let base = format!("http://{}", p.addr.expect("addr"));
    let pool = db.pool();
    catalogue::create_region(&pool, &Actor::Operator, "eu", "EU", None)
        .await
        .expect("region");
    let (_, token) = nodes::register_gateway(
        &pool,
        &Actor::Operator,
        "eu",
        "gw",
        "https://gw.example.com",
        nodes::EnrollmentTtl::default(),
    )
    .await
    .expect("gateway");
    // Bounded to the share, every call of a burst gets through (the
    // connections of its turns; heartbeats wait for none, and none is
    // sent here).
    let bounded = Backend::new(&base, &token)
        .expect("client")
        .max_in_flight(8);
    assert_eq!(calls_failed(&bounded, 200).await, 0);
    // Its connections (idle in its pool) give their places back.
    drop(bounded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Beyond the share the control plane closes connections at once: the
    // same burst unbounded loses calls (the bound above is needed).
    let unbounded = Backend::new(&base, &token)
        .expect("client")
        .max_in_flight(200);
    assert!(
        calls_failed(&unbounded, 200).await > 0,
        "200 calls at once over 200 connections all got through a share of 8"
    );
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 200 clients that send a GraphQL body a byte at a time (30,000 bytes in
/// all, each its own read): the server's memory stays within 32 MiB of
/// where it was. A body kept as the frames it came in held a whole read
/// buffer per byte: about 4 KiB a byte, 120 MB here, most of it kept after
/// the clients left.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_sent_a_byte_at_a_time_cost_no_more_than_their_bytes() {
    const CLIENTS: usize = 200;
    const ROUNDS: usize = 150;
    let db = TestDb::sqlite().await;
    let p = serve(&db, 1024, 0);
    let addr = p.addr.expect("addr");
    health(addr).await;
    let before = rss_kib(p.child.id());
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65000\r\n\r\n",
        )
        .await
        .expect("head");
        clients.push(s);
    }
    for _ in 0..ROUNDS {
        for s in &mut clients {
            // A client the server gave up on (its deadline) is left alone.
            let _ = s.write_all(b" ").await;
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let during = rss_kib(p.child.id());
    drop(clients);
    let grown = during.saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "{grown} KiB more for {} bytes of bodies (from {before} KiB)",
        CLIENTS * ROUNDS
    );
}

/// A client that asks for responses and never reads them (a tiny receive
/// window) holds nothing for long: once a response's write has made no
/// progress for the body deadline (2 s here) the connection is closed,
/// with most of what it asked for never sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_responses_is_closed_after_the_deadline() {
    let db = TestDb::sqlite_empty();
    let mut cmd = httvps_cmd();
    cmd.args(["serve", "--port", "0"])
        .env("BACKEND_DB_DSN", db.url())
        .env("BACKEND_SECRET_KEY", TEST_SECRET)
        .env("BACKEND_DEBUG", "true")
        .env("BACKEND_HEADER_TIMEOUT_SECS", "2")
        .env("BACKEND_BODY_TIMEOUT_SECS", "2");
    let p = spawn_listening(cmd);
    let addr = p.addr.expect("the server did not start");
    // GraphiQL's script, the largest file served (in debug mode).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console/dist/assets");
    let (name, size) = std::fs::read_dir(&dir)
        .expect("console assets")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with("graphiql") && name.ends_with(".js"))
                .then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .max_by_key(|(_, size)| *size)
        .expect("GraphiQL's script");
    let asked: u64 = 40;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small window");
    let mut s = socket.connect(addr).await.expect("connect");
    let one = format!("GET /console/assets/{name} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(one.repeat(usize::try_from(asked).unwrap_or(1)).as_bytes())
        .await
        .expect("requests");
    // Past the deadline, with nothing read.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut taken: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => taken += n as u64,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection stayed open");
    assert!(
        taken < asked * size / 2,
        "{taken} bytes of {} came: the server waited for the reader",
        asked * size
    );
}

/// A body that does not arrive by the body deadline (2 s here) gets 408
/// `REQUEST_TIMEOUT`, not a 400 that says the body was malformed.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_arriving_gets_408() {
    let db = TestDb::sqlite_empty();
    let p = serve(&db, 100, 0);
    let addr = p.addr.expect("listening");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\"",
    )
    .await
    .expect("write");
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 408"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "REQUEST_TIMEOUT",
        "{v}"
    );
}

/// Sends `head` (a whole request head) on a fresh connection; the status
/// and JSON body of the answer.
async fn answer_to(addr: SocketAddr, head: &[u8]) -> (String, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head).await.expect("write");
    let (head, body) = read_response(&mut s).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{head}: not JSON ({e}): {body:?}"));
    (status, body)
}

/// Request heads past their bounds (a target over 8 KiB, more than 100
/// header fields, header fields over 32 KiB, up to 128 KiB in all) are
/// refused with 414 or 431 and a JSON body in the shape of the route
/// (GraphQL's on `/graphql`, our envelope elsewhere), where hyper's own
/// answers had no body and a 300 KB header was served; heads within the
/// bounds are served.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_are_refused_in_the_routes_error_shape() {
    let db = TestDb::sqlite_empty();
    let p = serve(&db, 100, 0);
    let addr = p.addr.expect("listening");
    let fields = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("x-f{i}: v\r\n").into_bytes())
            .collect()
    };
    let get = |target: &str, extra: &[u8]| -> Vec<u8> {
        let mut h = format!("GET {target} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        h.extend_from_slice(extra);
        h.extend_from_slice(b"\r\n");
        h
    };
    let big = |n: usize| format!("x-big: {}\r\n", "a".repeat(n)).into_bytes();

    // Within the bounds: served.
    let (status, body) = answer_to(addr, &get("/api/v1/health", &fields(90))).await;
    assert_eq!(status, "200", "{body}");
    let (status, _) = answer_to(
        addr,
        &get(&format!("/api/v1/health?{}", "q".repeat(7_000)), b""),
    )
    .await;
    assert_eq!(status, "200");

    const LARGE: &str = "REQUEST_HEADER_FIELDS_TOO_LARGE";
    let long_target = get(&format!("/api/v1/health?{}", "q".repeat(9_000)), b"");
    let cases = [
        (long_target, "414", "URI_TOO_LONG"),
        (get("/api/v1/health", &fields(150)), "431", LARGE),
        (get("/api/v1/health", &big(40_000)), "431", LARGE),
        (get("/api/v1/health", &big(120_000)), "431", LARGE),
        (get("/console/", &fields(400)), "431", LARGE),
    ];
    for (head, want, code) in cases {
        let (status, body) = answer_to(addr, &head).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (status, body) =
        answer_to(addr, &get("/graphql?query=%7B__typename%7D", &big(40_000))).await;
    assert_eq!(status, "431", "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "REQUEST_HEADER_FIELDS_TOO_LARGE",
        "{body}"
    );

    // Past what hyper reads it answers alone (a bare 431, which a reset
    // may overtake: the rest of the head is never read), serves nothing,
    // and the server goes on.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&get("/api/v1/health", &big(300_000)))
        .await
        .ok();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(health(addr).await < Duration::from_secs(2));
}

/// A graphql-transport-ws socket to `addr`, acknowledged (anonymous).
async fn acked_socket(addr: SocketAddr) -> common::Ws {
    use futures_util::SinkExt;
    let req = common::live_request(&format!("http://{addr}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    let init = serde_json::json!({"type": "connection_init"}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(init.into()))
        .await
        .expect("init");
    assert_eq!(common::live_next(&mut ws).await["type"], "connection_ack");
    ws
}

/// How `ws` ends within `within`: its close code (None: cut without one).
async fn close_code(ws: &mut common::Ws, within: Duration) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(_) => return None,
            Err(_) => panic!("the socket is still open after {within:?}"),
        }
    }
}

/// A GraphQL WebSocket keeps the place in the connection budget (and its
/// source's share) of the connection it was upgraded from: with a budget
/// of 6, six acknowledged sockets leave no room, a seventh connection is
/// closed at once; the sockets, running no operation, are closed (1000)
/// after the idle deadline (2 s here), and their places are free again.
/// Before, an upgrade gave the places back: one address held 241
/// anonymous sockets past a budget of 128, for good, until the server ran
/// out of descriptors.
#[tokio::test(flavor = "multi_thread")]
async fn websockets_keep_their_place_in_the_budget_and_close_when_idle() {
    let db = TestDb::sqlite_empty();
    let p = serve(&db, 6, 0);
    let addr = p.addr.expect("listening");
    let mut sockets = Vec::new();
    for _ in 0..6 {
        sockets.push(acked_socket(addr).await);
    }
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut s, Duration::from_secs(1)).await,
        "a seventh connection was served beside six WebSockets"
    );
    let t0 = Instant::now();
    for ws in &mut sockets {
        assert_eq!(close_code(ws, Duration::from_secs(6)).await, Some(1000));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed before the idle deadline: {:?}",
        t0.elapsed()
    );
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(health(addr).await < Duration::from_secs(2));
}

/// A client that shuts its side once its request is sent gets the answer
/// (before, the request ran and its answer was dropped).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_sent_before_a_half_close_is_answered() {
    let db = TestDb::sqlite_empty();
    let p = serve(&db, 100, 0);
    let addr = p.addr.expect("listening");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    s.shutdown().await.expect("half-close");
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).expect("json")["status"],
        "ok"
    );
}

/// An answer given before its request's body was read (here an unknown
/// gateway token refused before the body is needed) says `Connection:
/// close`, and the connection does close, where a pooling client used to
/// send its next request down it and lose it; an answer after the body
/// was read keeps the connection for the next request. A body in a
/// transfer coding the server does not decode (`gzip, chunked`) is refused
/// with 501, where it was read as plain JSON. A GraphQL WebSocket whose
/// key is not 16 bytes in base64 is refused, where it was upgraded.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_the_body_close_and_unknown_codings_are_refused() {
    let db = TestDb::sqlite_empty();
    let p = serve(&db, 100, 0);
    let addr = p.addr.expect("listening");

    // The head alone, then the body once the answer came: refused unread.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let token = "x".repeat(43);
    s.write_all(
        format!(
            "POST /api/v1/usage/report HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
    let _ = s.write_all(b"{\"reports\":[]}").await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "the connection closes after the answer it announced"
    );

    // The body read (a malformed one): answered, and the connection
    // carries the next request.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"q\":")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // A coding the server does not decode.
    let chunked = b"{\"query\":\"{settings{signUpEnabled}}\"}";
    let mut req = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        chunked.len()
    )
    .into_bytes();
    req.extend_from_slice(chunked);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, body) = answer_to(addr, &req).await;
    assert_eq!(status, "501", "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_IMPLEMENTED",
        "{body}"
    );
    // Chunked alone is read.
    req = String::from_utf8(req)
        .expect("ascii")
        .replace("gzip, chunked", "chunked")
        .into_bytes();
    let (status, body) = answer_to(addr, &req).await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["data"]["settings"]["signUpEnabled"], true, "{body}");

    // A WebSocket key that is not one.
    let ws = |key: &str| {
        format!(
            "GET /graphql/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
        .into_bytes()
    };
    let (status, body) = answer_to(addr, &ws("x")).await;
    assert_eq!(status, "400", "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_REQUEST",
        "{body}"
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&ws("dGhlIHNhbXBsZSBub25jZQ=="))
        .await
        .expect("write");
    let mut got = [0u8; 12];
    s.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"HTTP/1.1 101");
}
