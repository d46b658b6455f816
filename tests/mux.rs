//! The multiplexed client transport end to end on 127.0.0.1: our client
//! with `--mux` (tunnels as WebSocket streams of one HTTP/2 connection,
//! RFC 8441) through a real gateway (TLS, ALPN `h2`), real Shadowsocks
//! nodes and the control plane on PostgreSQL.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::socks_connect;
use httvps_dataplane::backend::Backend;
use httvps_dataplane::gateway;
use plane::Plane;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whether a few bytes come back through an echo tunnel within 2 s.
async fn alive(s: &mut TcpStream) -> bool {
    alive_within(s, Duration::from_secs(2)).await
}

/// Whether a few bytes come back through an echo tunnel within `limit`.
async fn alive_within(s: &mut TcpStream, limit: Duration) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    matches!(
        tokio::time::timeout(limit, s.read_exact(&mut b)).await,
        Ok(Ok(_))
    ) && &b == b"ping"
}

/// `data` sent through an echo tunnel and read back in full, both ways at
/// once; whether every byte came back as sent.
async fn echo_exact(mut s: TcpStream, data: Vec<u8>) -> bool {
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let receive = r.read_to_end(&mut back);
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::try_join!(send, receive)
    })
    .await;
    matches!(done, Ok(Ok(_))) && back == data
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    v
}

/// A figure of the gateway's metrics (0 when absent).
async fn metric(plane: &Plane, name: &str) -> f64 {
    let admin = plane.admin_addr.expect("admin listener");
    common::metric_in(&common::metrics(admin).await, name).unwrap_or(0.0)
}

/// The bytes (up, down) the control plane counted for gateway `gw`'s
/// sessions, once they stop growing below `want` (bounded wait).
async fn usage(plane: &Plane, want: f64) -> (f64, f64) {
    let mut got = (0.0, 0.0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = plane
            .gql(
                "{sessions(first:100){edges{node{bytesUp bytesDown gatewayNode{name}}}}}",
                json!({}),
            )
            .await;
        let edges = r["data"]["sessions"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .clone();
        let sum = |field: &str| -> f64 {
            edges
                .iter()
                .filter(|e| e["node"]["gatewayNode"]["name"] == "gw")
                .filter_map(|e| e["node"][field].as_str()?.parse::<f64>().ok())
                .sum()
        };
        got = (sum("bytesUp"), sum("bytesDown"));
        if got.0 >= want && got.1 >= want {
            break;
        }
    }
    got
}

/// Runs `n` echo tunnels of `len` random bytes each at once through
/// `socks`; all must come back exact.
async fn echo_tunnels(socks: SocketAddr, echo: SocketAddr, n: usize, len: usize) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
            echo_exact(s, random(len)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(t.await.expect("join"), "tunnel {i}: bytes lost or changed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_keeping_two_connections_spreads_its_tunnels_over_them() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux_connections(true, 2).await;
    echo_tunnels(socks, echo, 20, 64 * 1024).await;
    // Both warm connections, and no connection of a tunnel's own.
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        2.0,
        "connections the gateway accepted"
    );
    // Tunnels held open side by side on the pool keep working.
    let mut held = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut held).await);
    let mut beside = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut beside).await);
    assert!(alive(&mut held).await);
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_mux_tunnels_share_one_connection_byte_exact_and_counted_as_single_ones() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let (n, len) = (50, 128 * 1024);
    echo_tunnels(socks, echo, n, len).await;
    // One TCP connection carried them all (the client's warm one).
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        1.0,
        "connections the gateway accepted"
    );
    // Usage: the Shadowsocks bytes each way, as for single-tunnel
    // WebSockets (payload plus at most 1 % of AEAD overhead).
    let moved = (n * len) as f64;
    let (up, down) = usage(&plane, moved).await;
    for (way, v) in [("up", up), ("down", down)] {
        let ratio = v / moved;
        assert!(
            (1.0..1.01).contains(&ratio),
            "{way}: {v} bytes counted for {moved} moved ({ratio})"
        );
    }
    // The same traffic through single-tunnel WebSockets counts the same.
    let single = plane.client().await;
    echo_tunnels(single, echo, n, len).await;
    let (up2, down2) = usage(&plane, 2.0 * moved).await;
    for (way, mux, h1) in [("up", up, up2 - up), ("down", down, down2 - down)] {
        let ratio = mux / h1;
        assert!(
            (0.99..1.01).contains(&ratio),
            "{way}: mux counted {mux}, single tunnels {h1}"
        );
    }
    // The warm one, the single-tunnel client's check at start, and one
    // per single tunnel.
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        2.0 + n as f64,
        "single tunnels take a connection each"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_device_closes_every_mux_tunnel_and_refuses_new_streams() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut tunnels = Vec::new();
    for _ in 0..10 {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(alive(&mut s).await);
        tunnels.push(s);
    }
    plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            json!({"id": plane.device_id}),
        )
        .await;
    let t0 = Instant::now();
    for (i, s) in tunnels.iter_mut().enumerate() {
        let mut closed = false;
        while t0.elapsed() < Duration::from_secs(8) {
            if !alive(s).await {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            closed,
            "tunnel {i} still open {:?} after revoking",
            t0.elapsed()
        );
    }
    let all_closed = t0.elapsed();
    assert!(
        all_closed <= Duration::from_secs(6),
        "closed after {all_closed:?}"
    );
    // A new stream on the same warm connection is refused.
    for _ in 0..3 {
        if let Some(mut s) = socks_connect(socks, echo).await {
            assert!(!alive(&mut s).await, "a new tunnel worked after revoking");
        }
    }
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        1.0
    );
    assert_eq!(metric(&plane, "httvps_gateway_open_tunnels").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mux_client_reconnects_after_the_gateway_restarts() {
    let mut plane = Plane::start_with(1, |o| o.drain_grace = Duration::from_millis(300)).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut s).await);
    stop_gateway(&mut plane).await;
    assert!(!alive(&mut s).await, "the tunnel outlived its gateway");
    // The same address again.
    let listener = TcpListener::bind(plane.gateway_addr).await.expect("rebind");
    plane.spawn_gateway(listener, &|o: &mut gateway::GatewayOptions| {
        o.drain_grace = Duration::from_millis(300);
    });
    let limit = Duration::from_secs(20);
    assert!(
        tunnel_within(socks, echo, limit).await,
        "no tunnel within {limit:?} of the restart"
    );
    // Later tunnels share the new warm connection.
    for _ in 0..5 {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(alive(&mut s).await);
    }
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        1.0,
        "connections the restarted gateway accepted"
    );
}

/// Stops the plane's gateway and waits (bounded) until it has stopped.
async fn stop_gateway(plane: &mut Plane) {
    let _ = plane.gateway_stop.take().expect("stop").send(());
    tokio::time::timeout(Duration::from_secs(15), plane.gateway.take().expect("task"))
        .await
        .expect("gateway stopped")
        .expect("join");
}

/// Whether a tunnel through `socks` to `echo` works within `limit`,
/// trying again every 250 ms.
async fn tunnel_within(socks: SocketAddr, echo: SocketAddr, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(mut s) = socks_connect(socks, echo).await
            && alive(&mut s).await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// What the source sends: well under the test plan's 100 MB allowance
/// (crossing it would close every tunnel of the device).
const BULK: usize = 16 << 20;

/// A target that takes two bytes, then sends [`BULK`] zeros as fast as
/// the peer reads, then closes.
async fn source_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read what the client sent first: unread bytes would
                // turn the close into a reset that discards the tail.
                let mut go = [0u8; 2];
                if s.read_exact(&mut go).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                for _ in 0..BULK / chunk.len() {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the round trips seen are reported for the record"
)]
async fn a_small_round_trip_completes_beside_a_bulk_stream_on_the_same_connection() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let source = source_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut probe = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    let t = Instant::now();
    assert!(alive(&mut probe).await);
    let alone = t.elapsed();
    // A bulk download fills the connection's windows (the first bytes
    // sent carry the target's address: the node connects on them).
    let mut bulk = socks_connect(socks, source).await.expect("SOCKS CONNECT");
    bulk.write_all(b"go").await.expect("first bytes");
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            match bulk.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
            // A reader a little slower than the link: the stream's window
            // stays full while the probes run.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (total, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Correctness with a generous bound: how long a round trip waits
    // behind the bulk stream's window is measured by the benchmarks.
    let limit = Duration::from_secs(10);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert!(
            alive_within(&mut probe, limit).await,
            "round trip beside the bulk stream"
        );
        worst = worst.max(t.elapsed());
        // A new tunnel opens beside it too.
        let mut fresh = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(
            alive_within(&mut fresh, limit).await,
            "new tunnel beside the bulk stream"
        );
    }
    let (total, took) = reading.await.expect("join");
    eprintln!(
        "round trip alone {alone:?}, beside a bulk stream (worst of 5) {worst:?}; bulk moved {total} bytes in {took:?}"
    );
    assert_eq!(total, BULK as u64, "the bulk stream's bytes");
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        1.0
    );
}

/// A target that takes two bytes, then sends zeros for as long as the
/// peer takes them (at most 1 GiB or 90 s), adding what it wrote to
/// `sent`.
async fn endless_source(sent: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut go = [0u8; 2];
                if s.read_exact(&mut go).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                let t = Instant::now();
                for _ in 0..(1usize << 30) / chunk.len() {
                    if t.elapsed() > Duration::from_secs(90) || s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

/// Waits until `sent` has not grown for a second (every download is held
/// by a window), at most 60 s; what it reached.
async fn until_stalled(sent: &AtomicU64) -> u64 {
    let t = Instant::now();
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "downloads nobody reads still moving after 60 s ({now} bytes)"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "what the stalled downloads held is reported for the record"
)]
async fn downloads_whose_readers_stop_do_not_stop_the_other_tunnels_of_their_connection() {
    let plane = Plane::start(1).await;
    // Each stalled download holds tens of MiB along the way: no allowance.
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = NULL")
        .await;
    let echo = plane::echo_server().await;
    let sent = Arc::new(AtomicU64::new(0));
    let source = endless_source(sent.clone()).await;
    // One connection, so every tunnel shares its windows.
    let socks = plane.client_with_mux(true).await;
    // More stalled downloads than a connection window of four stream
    // windows would take: each holds its stream's whole window.
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = socks_connect(socks, source).await.expect("SOCKS CONNECT");
        s.write_all(b"go").await.expect("first bytes");
        stalled.push(s);
    }
    let held = until_stalled(&sent).await;
    eprintln!("six downloads nobody reads stopped after {held} bytes");
    assert!(
        held > 6 * (16 << 20),
        "each stalled download holds at least its stream window: {held} bytes"
    );
    // A new tunnel on the same connection still makes its round trip.
    let mut probe = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(
        alive_within(&mut probe, Duration::from_secs(10)).await,
        "a new tunnel beside six stalled downloads"
    );
    // And a stalled download moves again once read.
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    while read < 32 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), stalled[0].read(&mut buf))
            .await
            .expect("a stalled download resumes")
            .expect("read");
        assert!(n > 0, "the download ended early");
        read += n;
    }
    assert!(
        sent.load(Ordering::Relaxed) > held,
        "reading let the source send again"
    );
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        1.0,
        "every tunnel on the one connection"
    );
}

/// A target that reads nothing until `drain` is notified, then reads and
/// drops everything; each connection is held at most 90 s.
async fn sink_server(drain: Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let drain = drain.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(90), async {
                    drain.notified().await;
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    addr
}

/// Uploads held at once by targets that read nothing, on one connection.
const STALLED_UPLOADS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "what the stalled uploads held is reported for the record"
)]
async fn uploads_to_targets_that_stop_reading_do_not_stop_the_other_tunnels_of_their_connection() {
    let plane = Plane::start(1).await;
    plane
        .sql("UPDATE subscriptions SET traffic_limit_bytes = NULL")
        .await;
    let echo = plane::echo_server().await;
    let drain = Arc::new(tokio::sync::Notify::new());
    let sink = sink_server(drain.clone()).await;
    let socks = plane.client_with_mux(true).await;
    // More stalled uploads than the sixteen stream windows a gateway
    // connection window of 64 MiB held: every stream may hold its whole
    // window without taking another stream's credit.
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..STALLED_UPLOADS {
        let mut s = socks_connect(socks, sink).await.expect("SOCKS CONNECT");
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(90) && s.write_all(&chunk).await.is_ok() {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let held = until_stalled(&sent).await;
    eprintln!("{STALLED_UPLOADS} uploads nobody reads stopped after {held} bytes");
    assert!(
        held > STALLED_UPLOADS as u64 * (4 << 20),
        "each stalled upload holds at least the gateway's stream window: {held} bytes"
    );
    let mut probe = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(
        alive_within(&mut probe, Duration::from_secs(10)).await,
        "a new tunnel beside {STALLED_UPLOADS} stalled uploads"
    );
    // The uploads move again once their targets read.
    drain.notify_waiters();
    let t = Instant::now();
    while sent.load(Ordering::Relaxed) < held + (32 << 20) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the stalled uploads did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in writers {
        w.abort();
    }
}

/// A TLS acceptor for the gateway's certificate that offers HTTP/1.1 only
/// (a gateway from before HTTP/2).
fn http11_only(plane: &Plane) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&plane.cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&plane.key).expect("key");
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_without_http2_gets_one_connection_per_tunnel_from_the_mux_client() {
    let (mut plane, listener) = Plane::prepare(1).await;
    let backend = Backend::new(&plane.server.base, &plane.gateway_token).expect("backend");
    let acceptor = http11_only(&plane);
    let opts = gateway::GatewayOptions {
        public_url: format!("https://localhost:{}", plane.gateway_addr.port()),
        report_every: Duration::from_millis(500),
        heartbeat_every: Duration::from_secs(1),
        cache_ttl: Duration::from_millis(500),
        ..Default::default()
    };
    plane.spawn_gateway_on(listener, backend, acceptor, opts);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let n = 4;
    for _ in 0..n {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(alive(&mut s).await, "a tunnel over HTTP/1.1");
    }
    // Each tunnel had a connection of its own (besides the client's one
    // look at the gateway's protocols).
    assert!(metric(&plane, "httvps_gateway_accepted_connections_total").await >= f64::from(n));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_that_opens_nothing_is_told_to_go_away_and_one_with_a_tunnel_stays() {
    let idle = Duration::from_secs(2);
    let plane = Plane::start_with(1, move |o| o.h2_idle = idle).await;
    // A bare HTTP/2 connection: preface and settings, then nothing.
    let tls = httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"h2".to_vec()])
        .expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name.clone(), tcp).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (_send, connection) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(
        ended.is_ok(),
        "the idle connection was still open after 30 s"
    );
    assert!(
        t0.elapsed() >= idle - Duration::from_millis(200),
        "closed before the idle limit: {:?}",
        t0.elapsed()
    );
    // Requests that open no tunnel (answered 404) do not keep a connection
    // from being idle: one every 300 ms kept it, and its place in the
    // budget, for ever.
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let stream = tls.connect(name.clone(), tcp).await.expect("TLS");
    let (send, connection) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    let asking = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..100 {
            let Ok(mut ready) = send.clone().ready().await else {
                break;
            };
            let req =
                tokio_tungstenite::tungstenite::http::Request::get("https://localhost/nothing")
                    .body(())
                    .expect("request");
            let Ok((answer, _)) = ready.send_request(req, true) else {
                break;
            };
            match answer.await {
                Ok(r) => statuses.push(r.status().as_u16()),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        statuses
    });
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(
        ended.is_ok(),
        "a connection making requests but no tunnel was still open after 30 s"
    );
    let statuses = asking.await.expect("asking");
    assert!(
        statuses.len() >= 3 && statuses.iter().all(|s| *s == 404),
        "{statuses:?}"
    );
    assert!(
        t0.elapsed() >= idle - Duration::from_millis(200) && t0.elapsed() < idle * 4,
        "closed after {:?}, the idle limit is {idle:?}",
        t0.elapsed()
    );
    // A tunnel held without data past the limit keeps its connection.
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut s).await);
    let before = metric(&plane, "httvps_gateway_accepted_connections_total").await;
    tokio::time::sleep(idle * 3).await;
    assert!(
        alive(&mut s).await,
        "the tunnel outlived its connection's idle limit"
    );
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        before,
        "the tunnel's connection was kept"
    );
}

/// An HTTP/1.1 keep-alive connection that only ever asks for pages that
/// are not there (one every 300 ms, each answered 404) is closed once it
/// has carried no tunnel for the idle limit, as an HTTP/2 one is told to
/// go away: it held its place in the connection budget (and its source's
/// share) for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_connection_that_opens_nothing_is_closed_at_the_idle_limit() {
    let idle = Duration::from_secs(2);
    let plane = Plane::start_with(1, move |o| o.h2_idle = idle).await;
    let tls =
        httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"http/1.1".to_vec()])
            .expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = tls.connect(name, tcp).await.expect("TLS");
    let t0 = Instant::now();
    let mut answered = 0;
    let mut buf = vec![0u8; 4096];
    let closed = loop {
        if t0.elapsed() > Duration::from_secs(30) {
            break false;
        }
        let asked = s
            .write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        if asked.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => {
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 404"), "{head}");
                answered += 1;
            }
            Err(_) => panic!("no answer within 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        closed,
        "a connection making requests but no tunnel was still open after 30 s"
    );
    assert!(answered >= 3, "{answered} requests answered");
    assert!(
        t0.elapsed() >= idle - Duration::from_millis(200) && t0.elapsed() < idle * 4,
        "closed after {:?}, the idle limit is {idle:?}",
        t0.elapsed()
    );
}

/// Drives a TLS 1.3 handshake with the gateway offering `alpn`, but never
/// sends the client's `Finished`; returns what the gateway sent as
/// application data in the meantime (waiting at most `wait`).
fn sent_before_finished(
    addr: SocketAddr,
    cert: &std::path::Path,
    alpn: &[&[u8]],
    wait: Duration,
) -> Vec<u8> {
    use std::io::Read as _;
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(httvps_dataplane::tls::roots(Some(cert)).expect("roots"))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // The client hello only: what the client queues after the server's
    // flight (its Finished) is never written.
    tls.write_tls(&mut sock).expect("client hello");
    let mut got = Vec::new();
    let until = Instant::now() + wait;
    while got.is_empty() && Instant::now() < until {
        match tls.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("read: {e}"),
        }
        tls.process_new_packets().expect("TLS");
        let mut buf = [0u8; 4096];
        while let Ok(n) = tls.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_http2_settings_leave_with_its_handshake_and_only_for_http2() {
    let plane = Plane::start(1).await;
    let (addr, cert) = (plane.gateway_addr, plane.cert.clone());
    // Offering h2: the SETTINGS arrive before the client's Finished went
    // out, i.e. with the server's handshake flight (one round trip less).
    let early = tokio::task::spawn_blocking(move || {
        sent_before_finished(addr, &cert, &[b"h2", b"http/1.1"], Duration::from_secs(3))
    })
    .await
    .expect("h2 client");
    assert!(early.len() >= 9, "nothing before Finished: {early:?}");
    assert_eq!(early[3], 0x4, "a SETTINGS frame first: {early:?}");
    assert_eq!(early[4], 0, "not an acknowledgement");
    let len = usize::from(early[0]) << 16 | usize::from(early[1]) << 8 | usize::from(early[2]);
    assert_eq!(early.len(), 9 + len, "that frame alone");
    // ENABLE_CONNECT_PROTOCOL (0x8) = 1 is among them: the client may open
    // its tunnel at once.
    assert!(
        early[9..]
            .chunks(6)
            .any(|s| s == [0x00, 0x08, 0x00, 0x00, 0x00, 0x01]),
        "extended CONNECT enabled: {early:?}"
    );
    // HTTP/1.1 clients (the stock ones) get nothing they did not ask for.
    let cert = plane.cert.clone();
    let none = tokio::task::spawn_blocking(move || {
        sent_before_finished(addr, &cert, &[b"http/1.1"], Duration::from_millis(1_500))
    })
    .await
    .expect("http/1.1 client");
    assert!(none.is_empty(), "sent to an HTTP/1.1 client: {none:?}");
    // A whole HTTP/2 connection still works: had the server's own copy of
    // the SETTINGS gone out too, the client would acknowledge both and
    // the server would end the connection on the acknowledgement it did
    // not expect.
    let tls = httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"h2".to_vec()])
        .expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS");
    let (send, connection) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.expect("ready");
    let req = tokio_tungstenite::tungstenite::http::Request::get("https://localhost/api/v1/health")
        .body(())
        .expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("in time")
        .expect("response");
    assert!(resp.status().as_u16() < 500, "{}", resp.status());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_connection_carries_no_more_tunnels_than_its_window_covers() {
    // 2^31 - 1 bytes of connection window, 16 MiB per stream.
    const PER_CONNECTION: usize = 127;
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut open = Vec::new();
    for i in 0..PER_CONNECTION + 3 {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(
            alive_within(&mut s, Duration::from_secs(10)).await,
            "tunnel {i}"
        );
        open.push(s);
    }
    // The first 127 share the warm connection; each of the last three has a
    // WebSocket connection of its own.
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        4.0
    );
    assert_eq!(metric(&plane, "httvps_gateway_open_tunnels").await, 130.0);
    // Tunnels of the warm connection end: new ones go on it again.
    drop(open.drain(..5));
    for _ in 0..50 {
        if metric(&plane, "httvps_gateway_open_tunnels").await <= 125.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The client counts a tunnel out when its pipe ends, about when the
    // gateway does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(alive(&mut s).await);
        open.push(s);
    }
    assert_eq!(
        metric(&plane, "httvps_gateway_accepted_connections_total").await,
        4.0,
        "room on the warm connection again"
    );
    for s in &mut open {
        assert!(alive(s).await);
    }
}

/// A SOCKS5 client that sends its greeting, its request and its first
/// bytes in one write, without waiting for the replies (the greeting and
/// the request are read through one buffer, which then holds those
/// bytes): they reach the target, over a warm connection and over a
/// connection of the tunnel's own.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_sent_right_behind_the_socks_request_reach_the_target() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let SocketAddr::V4(v4) = echo else {
        panic!("an IPv4 echo server");
    };
    for mux in [true, false] {
        let socks = plane.client_with_mux(mux).await;
        let mut all = vec![5, 1, 0, 5, 1, 0, 1];
        all.extend_from_slice(&v4.ip().octets());
        all.extend_from_slice(&v4.port().to_be_bytes());
        // More than the buffer holds: the rest is read by the tunnel's copy.
        let payload = random(3000);
        all.extend_from_slice(&payload);
        let mut s = TcpStream::connect(socks).await.expect("connect");
        s.write_all(&all).await.expect("write");
        let mut replies = [0u8; 2 + 10];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut replies))
            .await
            .expect("replies in time")
            .expect("replies");
        assert_eq!(replies[..2], [5, 0], "no authentication");
        assert_eq!(replies[2..4], [5, 0], "CONNECT succeeded");
        let mut got = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("echo in time (mux: {mux})"))
            .expect("echo");
        assert!(got == payload, "the bytes came back changed (mux: {mux})");
    }
}

/// A server on 127.0.0.1 that sends to whoever connects until they stop
/// taking it (for 60 s at most).
async fn flood_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while s.write_all(&chunk).await.is_ok() {}
                })
                .await;
            });
        }
    });
    addr
}

/// A tunnel whose client stops reading while its destination keeps
/// sending ends at the gateway's idle limit and gives its place back. The
/// gateway waited for room in the tunnel's queue without watching its idle
/// timer or its close signal (revocation, a spent grant), so such a tunnel
/// held its place for ever.
async fn a_tunnel_whose_client_stops_reading_ends_at_the_idle_limit(mux: bool) {
    let plane = Plane::start_with(1, |o| {
        o.idle_ping = Duration::from_millis(300);
        o.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let flood = flood_server().await;
    let socks = plane.client_with_mux(mux).await;
    let mut stuck = socks_connect(socks, flood).await.expect("tunnel");
    // A first byte: the client sends the tunnel's destination with it.
    stuck.write_all(b"go").await.expect("write");
    let open = || metric(&plane, "httvps_gateway_open_tunnels");
    let t0 = Instant::now();
    while open().await != 1.0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open().await, 1.0, "the tunnel opened");
    let t0 = Instant::now();
    while open().await != 0.0 && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        open().await,
        0.0,
        "the tunnel of a client that stopped reading was still open after {:?}",
        t0.elapsed()
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_whose_client_stops_reading_ends_at_the_idle_limit() {
    a_tunnel_whose_client_stops_reading_ends_at_the_idle_limit(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mux_tunnel_whose_client_stops_reading_ends_at_the_idle_limit() {
    a_tunnel_whose_client_stops_reading_ends_at_the_idle_limit(true).await;
}

/// The HTTP/2 client preface must be whole within the handshake deadline:
/// a preface sent a byte at a time held its connection for as long as the
/// client kept sending.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_preface_sent_a_byte_at_a_time_is_cut_at_the_deadline() {
    let plane = Plane::start_with(1, |o| o.handshake_timeout = Duration::from_secs(2)).await;
    let tls = httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"h2".to_vec()])
        .expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tls.connect(name, tcp).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let t0 = Instant::now();
    let mut cut = None;
    for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        if stream.write_all(&[*b]).await.is_err() || stream.flush().await.is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        // Whatever the gateway sent (its SETTINGS), and whether it closed.
        let mut buf = [0u8; 4096];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            cut = Some(t0.elapsed());
            break;
        }
    }
    let cut = cut.expect("the connection outlived a 12 s preface");
    assert!(
        cut < Duration::from_secs(5),
        "cut after {cut:?}, the deadline is 2 s"
    );
}

/// An HTTP/2 connection from `from` to the gateway, driven in the
/// background: its request handle and the task that ends with it.
async fn h2_from(
    plane: &Plane,
    from: std::net::IpAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tls = httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"h2".to_vec()])
        .expect("connector");
    let tcp = plane::connect_from(Some(from), plane.gateway_addr).await;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS");
    let (send, connection) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, driven)
}

/// Opens a tunnel stream on `send` (answered 200), then resets it.
async fn tunnel_then_reset(send: &h2::client::SendRequest<bytes::Bytes>, token: &str) {
    let req = tokio_tungstenite::tungstenite::http::Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost/ws/{token}/tcp"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    let mut ready = send.clone().ready().await.expect("ready");
    let (answer, mut body) = ready.send_request(req, false).expect("send");
    let answer = answer.await.expect("answer");
    assert_eq!(answer.status().as_u16(), 200);
    body.send_reset(h2::Reason::CANCEL);
    drop(answer);
}

/// A connection whose tunnels have all ended counts again against its
/// source's bound of connections without a tunnel: HTTP/2 connections
/// that open a tunnel now and then and reset it held the whole budget from
/// one source, the bound counting them only until their first tunnel. One
/// whose last tunnel ends while its source is at the bound is told to go.
#[tokio::test(flavor = "multi_thread")]
async fn connections_between_tunnels_count_against_their_sources_bound() {
    let plane = Plane::start_with(1, |o| o.max_connections_per_source = 3).await;
    let from: std::net::IpAddr = "127.0.0.5".parse().expect("ip");
    let mut held = Vec::new();
    for _ in 0..3 {
        let (send, driven) = h2_from(&plane, from).await;
        tunnel_then_reset(&send, &plane.device_token).await;
        held.push((send, driven));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tcp = plane::connect_from(Some(from), plane.gateway_addr).await;
    let fourth = tokio::time::timeout(Duration::from_secs(5), plane.tls_over(tcp)).await;
    assert!(
        matches!(fourth, Ok(Err(_))),
        "a fourth connection of the source got TLS while three sat between tunnels"
    );
    // Four connections each carrying a tunnel are fine (tunnels do not
    // count); when all four end, one has no place left and is told to go.
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut carrying = Vec::new();
    for _ in 0..4 {
        let (send, driven) = h2_from(&plane, from).await;
        let req = tokio_tungstenite::tungstenite::http::Request::builder()
            .method("CONNECT")
            .uri(format!("https://localhost/ws/{}/tcp", plane.device_token))
            .extension(h2::ext::Protocol::from_static("websocket"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        let mut ready = send.clone().ready().await.expect("ready");
        let (answer, body) = ready.send_request(req, false).expect("send");
        assert_eq!(answer.await.expect("answer").status().as_u16(), 200);
        carrying.push((send, driven, body));
    }
    // The handles stay: a connection ends only if the gateway ends it.
    let mut sends = Vec::new();
    let mut drivens = Vec::new();
    for (send, driven, mut body) in carrying {
        body.send_reset(h2::Reason::CANCEL);
        sends.push(send);
        drivens.push(driven);
    }
    let mut ended = 0;
    for driven in drivens {
        if tokio::time::timeout(Duration::from_secs(3), driven)
            .await
            .is_ok()
        {
            ended += 1;
        }
    }
    assert_eq!(ended, 1, "one connection past the bound is told to go");
    drop(sends);
}

/// A plain listener on `addr` that takes connections and drops them,
/// counting them: a port the client must stop dialling.
async fn counting_listener(addr: SocketAddr) -> Arc<AtomicU64> {
    let listener = TcpListener::bind(addr).await.expect("rebind the old port");
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });
    seen
}

/// A client started without `--gateway` goes where the control plane
/// sends it. The gateway moves to another port (stopped on the old one,
/// `updateGatewayNode` to the new URL, started there): the running client
/// follows within seconds, without a restart, and once it has, it no
/// longer dials the old port.
async fn a_running_client_follows_its_gateway_to_a_new_port(mux: bool) {
    let mut plane = Plane::start_unfronted(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.following_client(mux).await;
    let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut s).await, "a tunnel through the first gateway");
    drop(s);
    let r = plane
        .gql("{gatewayNodes{edges{node{id name}}}}", json!({}))
        .await;
    let id = r["data"]["gatewayNodes"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();

    let old = plane.gateway_addr;
    stop_gateway(&mut plane).await;
    let dialled_old = counting_listener(old).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    plane.gateway_addr = listener.local_addr().expect("addr");
    let url = format!("https://localhost:{}", plane.gateway_addr.port());
    let r = plane
        .gql(
            "mutation($id:UUID!,$u:String!){updateGatewayNode(id:$id,input:{publicUrl:$u}){publicUrl}}",
            json!({"id": id, "u": url}),
        )
        .await;
    assert_eq!(r["data"]["updateGatewayNode"]["publicUrl"], url, "{r}");
    plane.spawn_gateway(listener, &|_| {});

    let limit = Duration::from_secs(15);
    assert!(
        tunnel_within(socks, echo, limit).await,
        "no tunnel through the moved gateway within {limit:?}"
    );
    let before = dialled_old.load(Ordering::Relaxed);
    for _ in 0..5 {
        let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
        assert!(alive(&mut s).await, "a tunnel after the move");
    }
    assert_eq!(
        dialled_old.load(Ordering::Relaxed),
        before,
        "connections to the old port once the client had moved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_client_follows_its_gateway_to_a_new_port_per_tunnel() {
    a_running_client_follows_its_gateway_to_a_new_port(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_mux_client_follows_its_gateway_to_a_new_port() {
    a_running_client_follows_its_gateway_to_a_new_port(true).await;
}

/// `httvps-relay connect` as a process for `token`, trusting `ca`, with
/// `extra` flags, its log (stderr) in `log`.
fn connect_process(
    plane: &Plane,
    token: &str,
    ca: &std::path::Path,
    extra: &[&str],
    log: &std::path::Path,
) -> tokio::process::Child {
    common::spawn_logged(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
            .args(["connect", "--backend", &plane.server.base])
            .args(["--device-token", token])
            .args(["--socks", "127.0.0.1:0"])
            .args([
                "--gateway",
                &format!("https://localhost:{}", plane.gateway_addr.port()),
            ])
            .arg("--ca-cert")
            .arg(ca)
            .args(extra),
        log,
    )
}

/// A running client whose device is revoked says why, once, with the
/// control plane's reason (it said only "exchanging the device token",
/// every 2 s for as long as it ran), and asks again less and less often.
/// `httvps-relay connect` as a process, its log read as a user reads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_client_says_why_once_and_asks_less_often() {
    let plane = Plane::start(1).await;
    let dir = common::tempdir::TempDir::new();
    let log = dir.path().join("client.log");
    let mut client = connect_process(&plane, &plane.device_token, &plane.cert, &["--debug"], &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while !read().contains("client ready") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not ready: {}",
            read()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            json!({"id": plane.device_id}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    let _ = client.kill().await;
    let text = read();
    let asked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refreshing parameters"))
        .collect();
    let warned: Vec<&&str> = asked.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].contains("device refused") || warned[0].contains("removed"),
        "no reason: {}",
        warned[0]
    );
    // Every 2 s, 7 times; now after 2, 4, 8 s: at most 4.
    assert!(
        (1..=4).contains(&asked.len()),
        "asked {} times in 14 s:\n{}",
        asked.len(),
        asked.join("\n")
    );
}

/// A client started while no node of its region can take it (its nodes
/// drained for a restart) waits and asks again, saying why, instead of
/// exiting with "control plane unavailable": it is ready once a node takes
/// tunnels again. A wrong device token still ends the start at once, and
/// so does a gateway whose certificate the client does not trust (it said
/// "client ready" and failed every tunnel).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_started_with_no_node_waits_for_one() {
    let plane = Plane::start(1).await;
    let dir = common::tempdir::TempDir::new();
    let start =
        |token: &str, log: &std::path::Path| connect_process(&plane, token, &plane.cert, &[], log);
    let log = dir.path().join("client.log");
    let read = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();

    plane
        .sql("UPDATE outline_nodes SET status = 'disabled'")
        .await;
    let mut client = start(&plane.device_token, &log);
    let t0 = Instant::now();
    while !read(&log).contains("trying again") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", read(&log));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        read(&log).contains("no node of the region can take the device now"),
        "{}",
        read(&log)
    );
    assert!(
        client.try_wait().expect("wait").is_none(),
        "the client waits: {}",
        read(&log)
    );
    // Meanwhile an application is told at once there is no tunnel (its
    // request sat unanswered in the listen queue until the client was
    // ready).
    let text = read(&log);
    let socks: SocketAddr = text
        .split("\"socks\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no SOCKS address in the log: {text}"));
    // The reset may come before the connect itself is done.
    match tokio::net::TcpStream::connect(socks).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(mut early) => {
            let _ = early.write_all(&[5, 1, 0]).await;
            let mut b = [0u8; 2];
            let answered = tokio::time::timeout(Duration::from_secs(3), early.read(&mut b))
                .await
                .expect("an answer within 3 s, not a hang");
            assert!(matches!(answered, Ok(0) | Err(_)), "{answered:?}");
        }
    }

    plane
        .sql("UPDATE outline_nodes SET status = 'active'")
        .await;
    let t0 = Instant::now();
    while !read(&log).contains("client ready") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not ready: {}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = client.kill().await;

    // A token the control plane does not know: no waiting.
    let wrong = dir.path().join("wrong.log");
    let mut client = start(&"x".repeat(43), &wrong);
    let status = tokio::time::timeout(Duration::from_secs(20), client.wait())
        .await
        .expect("the start ends at once")
        .expect("wait");
    assert!(!status.success(), "{}", read(&wrong));

    // A CA that did not sign the gateway's certificate: said at start, not
    // per tunnel after "client ready".
    let (other_cert, other_key) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    httvps_dataplane::tls::ensure_self_signed(&other_cert, &other_key, &["localhost"])
        .expect("another certificate");
    // With `--mux` too: its first warm connection is the check.
    for (name, extra) in [("untrusted", &[][..]), ("untrusted-mux", &["--mux"][..])] {
        let log = dir.path().join(format!("{name}.log"));
        let mut client = connect_process(&plane, &plane.device_token, &other_cert, extra, &log);
        let status = tokio::time::timeout(Duration::from_secs(20), client.wait())
            .await
            .expect("the start ends at once")
            .expect("wait");
        let text = read(&log);
        assert!(!status.success(), "{name}: {text}");
        assert!(
            text.contains("is not trusted: pass --ca-cert"),
            "{name}: {text}"
        );
        assert!(!text.contains("client ready"), "{name}: {text}");
    }
}

/// A target that speaks first (SMTP, FTP, MySQL: a greeting before the
/// client says anything) is dialled and heard at once through our client,
/// with and without `--mux`: the address goes alone when the application
/// sends nothing within a moment. It waited for the application's first
/// bytes, which never came: the node never dialled, and the tunnel was
/// reset after 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_speaks_first_is_heard_at_once() {
    let plane = Plane::start(1).await;
    let greeter = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = greeter.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = greeter.accept().await {
            tokio::spawn(async move {
                s.write_all(b"220 ready\r\n").await.ok()?;
                let mut line = [0u8; 6];
                s.read_exact(&mut line).await.ok()?;
                s.write_all(&line).await.ok()
            });
        }
    });
    for mux in [false, true] {
        let socks = plane.client_with_mux(mux).await;
        let mut s = socks_connect(socks, target).await.expect("SOCKS CONNECT");
        let mut greeting = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
            .await
            .unwrap_or_else(|_| panic!("no greeting in 5 s (mux {mux})"))
            .expect("read");
        assert_eq!(&greeting, b"220 ready\r\n", "mux {mux}");
        // And the conversation goes on.
        s.write_all(b"QUIT\r\n").await.expect("write");
        let mut echo = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("echo in 5 s")
            .expect("read");
        assert_eq!(&echo, b"QUIT\r\n", "mux {mux}");
    }
}

/// A region's only node restarted in a moment (here: stopped, a tunnel
/// tried meanwhile, which the gateway reports unreachable, then started
/// again on its port) takes tunnels again within seconds: the gateway
/// dials a node it could not reach until it answers, and reports it. The
/// control plane held it down for a minute against its own heartbeats,
/// waiting for a gateway to reach it, which no gateway tried: a minute's
/// outage of the region.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_at_once_takes_tunnels_within_seconds() {
    let mut plane = Plane::start(0).await;
    let first = plane.start_node().await;
    let addr = first.addr;
    plane.register_node("only", addr.port(), first).await;
    let key = plane.cipher().await;
    let echo = plane::echo_server().await;
    let socks = plane.client().await;
    let mut s = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut s).await, "a tunnel before the restart");

    plane.nodes[0].1.stop();
    let node_id = plane.nodes[0].0.clone();
    let down = format!(
        "SELECT count(*) AS n FROM outline_nodes WHERE id = '{node_id}' AND health = 'down'"
    );
    let t0 = Instant::now();
    while plane.scalar(&down).await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never reported down"
        );
        if let Some(mut s) = socks_connect(socks, echo).await {
            assert!(!alive(&mut s).await, "a tunnel to a stopped node");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let again = httvps_dataplane::node::start(&httvps_dataplane::node::NodeOptions {
        listen: addr,
        method: key.method(),
        password: key.password().to_owned().into(),
        allow_private: true,
        idle_timeout: httvps_dataplane::node::DEFAULT_IDLE_TIMEOUT,
    })
    .await
    .expect("the node again, on its port");
    let restarted = Instant::now();
    loop {
        if let Some(mut s) = socks_connect(socks, echo).await
            && alive(&mut s).await
        {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "no tunnel in 20 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "took {:?}",
        restarted.elapsed()
    );
    drop(again);
}

/// A destination that resets its connection mid-stream is heard as a
/// reset at the application, through the node, the gateway and our client
/// (with and without `--mux`): the node resets its connection from the
/// gateway, the gateway closes the tunnel with 1011 (a stock client's
/// WebSocket library reads its reason; it took 1014 for a protocol
/// violation), and the client resets the local connection. The reset
/// ended as a normal end at every hop, so a download cut short looked
/// complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_destinations_reset_reaches_the_application_as_a_reset() {
    let plane = Plane::start(1).await;
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = resetter.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            tokio::spawn(async move {
                let mut hello = [0u8; 5];
                s.read_exact(&mut hello).await.ok()?;
                s.write_all(&[7u8; 100_000]).await.ok()?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                // Unread bytes, then a reset.
                s.set_zero_linger().ok()?;
                drop(s);
                Some(())
            });
        }
    });
    for mux in [false, true] {
        let socks = plane.client_with_mux(mux).await;
        let mut s = socks_connect(socks, target).await.expect("SOCKS CONNECT");
        s.write_all(b"hello").await.expect("write");
        let mut got = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => got += n,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no end in 10 s (mux {mux})"));
        assert_eq!(got, 100_000, "what came before the reset (mux {mux})");
        let e = end.expect_err(&format!("a reset, not an end (mux {mux})"));
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "mux {mux}: {e}"
        );
    }
    // A stock client on tungstenite, as the gateway's Close reaches it.
    let path = format!("/ws/{}/tcp", plane.device_token);
    let ws = plane.ws_from(None, &path, None).await.expect("upgrade");
    let mut s = plane::ss_over(ws, &plane.cipher().await, target);
    s.write_all(b"hello").await.expect("write");
    s.flush().await.expect("flush");
    let mut buf = vec![0u8; 16 * 1024];
    let e = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("a normal end"),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("an end within 10 s");
    assert!(
        e.to_string().contains("1011 node connection failed"),
        "the gateway's Close as a stock client reads it: {e}"
    );
}

/// A destination that closes without answering (an empty reply) ends the
/// application's stream normally, as with a stock client, with and without
/// `--mux`: the tunnel ended before the node sent a byte, not even its
/// Shadowsocks salt, and the client took that for a broken tunnel and
/// reset the local connection (curl said "Connection reset by peer" where
/// the stock client's user saw "Empty reply from server").
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_answers_nothing_ends_the_stream_normally() {
    let plane = Plane::start(1).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            tokio::spawn(async move {
                // Reads the request, then closes with a FIN.
                let mut request = [0u8; 5];
                let _ = s.read_exact(&mut request).await;
                let _ = s.shutdown().await;
            });
        }
    });
    for mux in [false, true] {
        let end = hello_to(&plane, target, mux).await;
        assert_eq!(
            end.ok(),
            Some(0),
            "an empty stream, not a reset (mux {mux})"
        );
    }
}

/// Sends "hello" to `target` through our client (with `--mux` when
/// `mux`) and reads to the end: the bytes read, or the error it ended with.
async fn hello_to(plane: &Plane, target: SocketAddr, mux: bool) -> std::io::Result<usize> {
    let socks = plane.client_with_mux(mux).await;
    let mut s = socks_connect(socks, target).await.expect("SOCKS CONNECT");
    s.write_all(b"hello").await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no end in 10 s (mux {mux})"))
}

/// A destination that refuses the connection (a closed port) reaches the
/// application as a reset, with and without `--mux`: the node resets its
/// connection from the gateway (it closed it, as a stock ssserver does,
/// and the application saw an empty reply).
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_refuses_the_connection_is_a_reset() {
    let plane = Plane::start(1).await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = closed.local_addr().expect("addr");
    drop(closed);
    for mux in [false, true] {
        let end = hello_to(&plane, target, mux).await;
        let e = end.expect_err(&format!("a reset, not an empty reply (mux {mux})"));
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "mux {mux}: {e}"
        );
    }
}

/// A port-forwarded connection whose tunnel the gateway refuses (the
/// device revoked) is reset: there is no SOCKS reply to say it, and a
/// normal close looked like a destination that answered nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_forwarded_connection_is_reset() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let local = plane.forwarding_client(echo).await;
    let mut s = TcpStream::connect(local).await.expect("connect");
    assert!(alive(&mut s).await, "forwarded before the revocation");
    plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            json!({"id": plane.device_id}),
        )
        .await;
    let t0 = Instant::now();
    loop {
        let mut s = TcpStream::connect(local).await.expect("connect");
        let _ = s.write_all(b"ping").await;
        let mut b = [0u8; 4];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("an end within 5 s");
        match got {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(0) => panic!("a refused tunnel ended as a normal close"),
            _ => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Floods one HTTP/2 connection to the gateway with `bytes` (whole
/// frames), reading what the server answers: whether the server ended the
/// connection, and how many bytes went out before it did.
async fn flood(plane: &Plane, bytes: &[u8]) -> (bool, usize) {
    let tls = httvps_dataplane::tls::connector_with_alpn(Some(&plane.cert), vec![b"h2".to_vec()])
        .expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Reads everything the server sends until it ends the connection.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    });
    // The preface, SETTINGS with the largest stream window and a
    // connection window as large: answers are never held back for credit
    // (a client that reads and grants as it goes).
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff]);
    start.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0x7f, 0xff, 0, 0]);
    wr.write_all(&start).await.expect("preface");
    let mut sent = 0usize;
    for chunk in bytes.chunks(16 * 1024) {
        if wr.write_all(chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    drop(wr);
    (reader.await.expect("reader"), sent)
}

/// A HEADERS frame on stream `id` asking `GET path` (`POST` when `open`,
/// then the stream is left open for a body) (HPACK: the static table's
/// `:method` and `:scheme https`, a literal path of under 127 bytes and
/// the authority).
fn request(id: u32, path: &str, open: bool) -> Vec<u8> {
    let mut block = vec![if open { 0x83 } else { 0x82 }, 0x87];
    block.extend_from_slice(&[0x04, path.len() as u8]);
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    let len = block.len();
    // END_HEADERS, and END_STREAM unless the stream stays open.
    let flags = if open { 0x4 } else { 0x5 };
    let mut f = vec![0, 0, len as u8, 0x1, flags];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend(block);
    f
}

/// A client that floods its HTTP/2 connection with frames that carry
/// nothing (PINGs, answered by the server, or answers to pings never
/// sent), with window updates on a stream long closed, with requests that
/// open no tunnel, or with 1-byte DATA frames on a request kept open,
/// reading what comes
/// back, is cut once past its budget; such floods kept a gateway thread
/// busy and slowed every `--mux` tunnel of the gateway twentyfold or more.
/// Tunnels of honest clients pass meanwhile and after.
#[tokio::test(flavor = "multi_thread")]
async fn floods_of_cheap_frames_end_their_connection_and_honest_tunnels_pass() {
    let plane = Plane::start(1).await;
    let echo = plane::echo_server().await;
    let socks = plane.client_with_mux(true).await;
    let mut honest = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut honest).await, "a tunnel before the floods");
    let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut pong = ping;
    pong[4] = 0x1;
    let window = [0u8, 0, 4, 8, 0, 0, 0, 0, 99, 0, 0, 0, 1];
    let unknown = [0u8, 0, 1, 0x20, 0, 0, 0, 0, 0, 0];
    // Requests on streams 1, 3, 5 … (ids must grow), each answered 404.
    let requests: Vec<u8> = (0..100_000u32)
        .flat_map(|i| request(2 * i + 1, "/nothing", false))
        .collect();
    // A request left open, then 1-byte DATA frames on it.
    let mut trickle = request(1, "/x", true);
    for _ in 0..1_000_000 {
        trickle.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 1, b'x']);
    }
    for (what, frame) in [
        ("pings", ping.to_vec()),
        ("answers to pings never sent", pong.to_vec()),
        ("window updates on a closed stream", window.to_vec()),
        ("frames of an unknown type", unknown.to_vec()),
    ] {
        let many: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 100_000)
            .collect();
        let (ended, sent) = flood(&plane, &many).await;
        assert!(
            ended,
            "{what}: the flooding connection was not ended ({sent} sent)"
        );
        assert!(
            alive(&mut honest).await,
            "the tunnel after a flood of {what}"
        );
    }
    for (what, bytes) in [
        ("requests that fail", &requests),
        ("1-byte DATA frames", &trickle),
    ] {
        let (ended, sent) = flood(&plane, bytes).await;
        assert!(
            ended,
            "{what}: the flooding connection was not ended ({sent} bytes sent)"
        );
        assert!(
            alive(&mut honest).await,
            "the tunnel after a flood of {what}"
        );
    }
    assert!(alive(&mut honest).await, "the tunnel after the floods");
    let mut fresh = socks_connect(socks, echo).await.expect("SOCKS CONNECT");
    assert!(alive(&mut fresh).await, "a new tunnel after the floods");
}
