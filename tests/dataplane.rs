//! The data plane end to end on 127.0.0.1: control plane (PostgreSQL),
//! gateway (real TLS and WebSocket), Shadowsocks nodes, our SOCKS5 client
//! and a stock client (ss-local with ss-v2ray-plugin).

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::udp::{associate, exchange, socks_datagram, udp_echo, udp_socket};
use common::{TestServer, gql};
use futures_util::{SinkExt, StreamExt};
use httvps_control::accounts::{self, Role};
use httvps_dataplane::backend::Backend;
use httvps_dataplane::{client, gateway, node, tls};
use plane::{PASSWORD, Plane, login};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A SOCKS5 CONNECT to `target` through the proxy at `socks`.
async fn socks_connect(socks: SocketAddr, target: SocketAddr) -> TcpStream {
    common::socks_connect(socks, target)
        .await
        .expect("SOCKS CONNECT refused")
}

/// An HTTP server answering every request with `body`.
async fn http_server(body: Arc<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn fetch(socks: SocketAddr, target: SocketAddr) -> Vec<u8> {
    try_fetch(socks, target).await.expect("headers")
}

/// The body of `GET /` through a SOCKS5 proxy; `None` when the answer has
/// no headers (the proxy closed before relaying anything).
async fn try_fetch(socks: SocketAddr, target: SocketAddr) -> Option<Vec<u8>> {
    let mut s = socks_connect(socks, target).await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all))
        .await
        .expect("in time")
        .expect("read");
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(all.split_off(at))
}

fn random_body(len: usize) -> Arc<Vec<u8>> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
    Arc::new(v)
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the throughput seen is reported for the record"
)]
async fn own_client_moves_10_mb_intact_and_usage_matches() {
    let plane = Plane::start(1).await;
    let body = random_body(10 * 1024 * 1024);
    let web = http_server(body.clone()).await;
    let socks = plane.client().await;
    let started = std::time::Instant::now();
    let got = fetch(socks, web).await;
    let elapsed = started.elapsed();
    assert_eq!(
        sha2::Sha256::digest(&got),
        sha2::Sha256::digest(&*body),
        "the body arrived intact"
    );
    eprintln!(
        "10 MiB through client -> gateway -> node in {elapsed:?} ({:.0} Mbit/s, debug build)",
        80.0 / elapsed.as_secs_f64() * 1.048_576
    );
    // Usage in GraphQL matches the bytes moved within 1 %.
    let moved = body.len() as f64;
    let mut down = 0f64;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = plane
            .gql(
                "{sessions(filter:{open:true}){edges{node{bytesDown gatewayNode{name}}}}}",
                json!({}),
            )
            .await;
        down = r["data"]["sessions"]["edges"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|e| e["node"]["gatewayNode"]["name"] == "gw")
            .filter_map(|e| e["node"]["bytesDown"].as_str()?.parse::<f64>().ok())
            .sum();
        if down >= moved {
            break;
        }
    }
    let ratio = down / moved;
    assert!(
        (1.0..1.01).contains(&ratio),
        "usage {down} vs {moved} bytes moved: ratio {ratio}"
    );
    // The admin listener serves health and the byte counters.
    let admin = plane.admin_addr.expect("admin listener");
    let health = common::client()
        .get(format!("http://{admin}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let down = common::metric(admin, "httvps_gateway_bytes_down").await;
    assert!(
        down >= moved,
        "httvps_gateway_bytes_down {down}, moved {moved}"
    );
    let r = plane
        .gql("{subscriptions{edges{node{trafficUsedBytes}}}}", json!({}))
        .await;
    let used: f64 = r["data"]["subscriptions"]["edges"][0]["node"]["trafficUsedBytes"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("used");
    assert!(used >= moved, "subscription charged {used}");
}

/// A WebSocket upgrade request for `path` with `extra` header lines.
fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Sends raw bytes to the gateway over TLS; returns the answer's status
/// (0 when it closed without answering).
async fn raw_status(plane: &Plane, request: &[u8]) -> u16 {
    let mut s = plane.tls().await;
    if s.write_all(request).await.is_err() {
        return 0;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_to_the_gateway_get_4xx_and_change_nothing() {
    let plane = Plane::start(1).await;
    let sessions = || async {
        let r = plane
            .gql("{sessions(first:100){edges{node{id}}}}", json!({}))
            .await;
        r["data"]["sessions"]["edges"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_else(|| panic!("{r}"))
    };
    let before = sessions().await;
    let device = plane.device_id.clone();
    let keys = httvps_control::auth::jwt::JwtKeys::new(
        &httvps_control::config::SecretKey::new(common::TEST_SECRET.into()),
        jsonwebtoken::Algorithm::HS256,
        60,
    );
    use httvps_control::auth::jwt::Audience;
    let expired = keys
        .issue(Audience::Device, &device, 0, None, -60)
        .expect("jwt");
    let wrong_audience = keys
        .issue(Audience::Access, &device, 0, None, 60)
        .expect("jwt");
    let other_key = httvps_control::auth::jwt::JwtKeys::new(
        &httvps_control::config::SecretKey::new("y".repeat(40)),
        jsonwebtoken::Algorithm::HS256,
        60,
    )
    .issue(Audience::Device, &device, 0, None, 60)
    .expect("jwt");
    let alg_none = common::alg_none_jwt(&device, "httvps:device");
    let upgrade = upgrade_request;
    let good = plane.device_token.clone();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unknown token",
            upgrade(&format!("/ws/{}/tcp", "A".repeat(43)), ""),
        ),
        (
            "emoji and bidi override",
            upgrade("/ws/%F0%9F%98%80%E2%80%AE/tcp", ""),
        ),
        ("raw UTF-8 in the path", upgrade("/ws/\u{e9}\u{e9}/tcp", "")),
        ("NUL", upgrade("/ws/%00/tcp", "")),
        ("SQL", upgrade("/ws/'%20OR%201=1--/tcp", "")),
        (
            "HTML",
            upgrade("/c/%3Cscript%3Ealert(1)%3C%2Fscript%3E", ""),
        ),
        ("traversal", upgrade("/ws/../../etc/passwd/tcp", "")),
        (
            "10 KB token",
            upgrade(&format!("/ws/{}/tcp", "B".repeat(10_000)), ""),
        ),
        ("unknown kind", upgrade(&format!("/ws/{good}/smtp"), "")),
        (
            "no upgrade headers",
            format!("GET /ws/{good}/tcp HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(),
        ),
        (
            "old WebSocket version",
            String::from_utf8_lossy(&upgrade(&format!("/ws/{good}/tcp"), ""))
                .replace("Version: 13", "Version: 8")
                .into_bytes(),
        ),
        (
            "POST",
            format!("POST /ws/{good}/tcp HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        ),
        (
            "garbage request line",
            b"\x16\x03\x01garbage\r\n\r\n".to_vec(),
        ),
        ("negative document id", upgrade("/c/-1", "")),
        (
            "overflowing number",
            upgrade("/c/99999999999999999999999999999999", ""),
        ),
        (
            "unicode host",
            format!(
                "GET /c/{} HTTP/1.1\r\nHost: \u{441}\u{430}\u{439}\u{442}.\u{440}\u{444}\r\n\r\n",
                "A".repeat(43)
            )
            .into_bytes(),
        ),
    ];
    for (name, jwt) in [
        ("expired JWT", &expired),
        ("wrong-audience JWT", &wrong_audience),
        ("JWT of another key", &other_key),
        ("alg none JWT", &alg_none),
    ] {
        cases.push((
            name,
            upgrade(
                "/ws/bearer/tcp",
                &format!("Authorization: Bearer {jwt}\r\n"),
            ),
        ));
        cases.push((name, upgrade(&format!("/ws/{jwt}/tcp"), "")));
    }
    for (name, request) in cases {
        let status = raw_status(&plane, &request).await;
        assert!(
            (400..500).contains(&status),
            "{name}: answered {status}, wanted a 4xx"
        );
        assert_eq!(sessions().await, before, "{name} opened a session");
    }
    assert_eq!(
        sessions().await,
        before,
        "a refused request opened a session"
    );
    // The gateway still serves.
    let socks = plane.client().await;
    let body = random_body(10_000);
    let web = http_server(body.clone()).await;
    assert_eq!(fetch(socks, web).await, *body);
}

/// Property: whatever bytes follow a WebSocket upgrade (frames with any
/// header, claimed length, mask and payload), the gateway ends that tunnel
/// and keeps serving everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn random_frames_never_break_the_gateway() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let plane = Plane::start(1).await;
    let frame = (
        any::<u8>(),
        any::<u8>(),
        prop_oneof![
            Just(Vec::new()),
            any::<u16>().prop_map(|n| n.to_be_bytes().to_vec()),
            any::<u64>().prop_map(|n| n.to_be_bytes().to_vec())
        ],
        any::<[u8; 4]>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(b0, b1, ext, mask, payload)| {
            let mut f = vec![b0, b1];
            f.extend(ext);
            f.extend(mask);
            f.extend(payload);
            f
        });
    let frames = proptest::collection::vec(frame, 1..4);
    let mut runner = TestRunner::new(Config::with_cases(32));
    let token = plane.device_token.clone();
    for _ in 0..32 {
        let bytes: Vec<u8> = frames
            .new_tree(&mut runner)
            .expect("case")
            .current()
            .concat();
        let mut s = plane.tls().await;
        s.write_all(&upgrade_request(&format!("/ws/{token}/tcp"), ""))
            .await
            .expect("upgrade");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "closed before answering");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let _ = s.write_all(&bytes).await;
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    // Still serving.
    let socks = plane.client().await;
    let body = random_body(50_000);
    let web = http_server(body.clone()).await;
    assert_eq!(fetch(socks, web).await, *body);
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_mode_pipes_a_local_port_to_one_destination() {
    let plane = Plane::start(1).await;
    let body = random_body(300_000);
    let target = http_server(body.clone()).await;
    let local = plane.forwarding_client(target).await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(local).await.expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all))
            .await
            .expect("in time")
            .expect("read");
        assert!(all.ends_with(&body), "the body arrived intact");
    }
    assert!(client::parse_destination("example.com:443").is_ok());
    assert!(client::parse_destination("[::1]:80").is_ok());
    for bad in [
        "",
        "no-port",
        "host:",
        "host:99999",
        ":80",
        "a b:80",
        "a/b:1",
    ] {
        assert!(client::parse_destination(bad).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_close_still_receives_the_full_reply() {
    let plane = Plane::start(1).await;
    // A server that reads until EOF, then answers with a digest of what it read.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let reply = format!("{:x}", sha2::Sha256::digest(&all)).repeat(2000);
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    let socks = plane.client().await;
    let mut s = socks_connect(socks, target).await;
    let request = vec![7u8; 300_000];
    s.write_all(&request).await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(
        reply,
        format!("{:x}", sha2::Sha256::digest(&request))
            .repeat(2000)
            .into_bytes()
    );
}

/// A server that answers the first request on each connection with `body`
/// (no length, no framing), then closes when `close` or else keeps the
/// connection until the peer closes it.
async fn reply_server(body: Arc<Vec<u8>>, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(&body).await.is_err() {
                    return;
                }
                if close {
                    let _ = s.shutdown().await;
                } else {
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

/// A server that reads an 8-byte length and that many bytes, answers with
/// their SHA-256 in hex and closes.
async fn digest_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(len) = s.read_u64().await else {
                    return;
                };
                let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
                if s.read_exact(&mut data).await.is_err() {
                    return;
                }
                let digest = format!("{:x}", sha2::Sha256::digest(&data));
                let _ = s.write_all(digest.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `data` to a [`digest_server`] through the SOCKS5 proxy `socks`
/// and reads its answer to the end.
async fn upload(socks: SocketAddr, target: SocketAddr, data: &[u8]) -> String {
    let mut s = socks_connect(socks, target).await;
    s.write_u64(data.len() as u64).await.expect("length");
    s.write_all(data).await.expect("upload");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut answer))
        .await
        .expect("the answer and its end in time")
        .expect("read");
    answer
}

/// When the target closes first, the client sees every byte and then the
/// end of the stream, without closing anything itself. A target that keeps
/// its connection open gives the same bytes and no end: the end seen is
/// the target's, passed on by the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn target_closing_first_ends_the_stream_after_every_byte() {
    let plane = Plane::start(1).await;
    let body = random_body(3 * 1024 * 1024 + 17);
    let closing = reply_server(body.clone(), true).await;
    let open = reply_server(body.clone(), false).await;
    let socks = plane.client().await;
    for round in 0..3 {
        let mut s = socks_connect(socks, closing).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("request");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no end of stream"))
            .expect("read");
        assert!(
            got == *body,
            "round {round}: {} of {} bytes",
            got.len(),
            body.len()
        );
    }
    let mut s = socks_connect(socks, open).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut got = vec![0u8; body.len()];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got))
        .await
        .expect("the reply in time")
        .expect("read");
    assert!(got == *body, "the same bytes from the open target");
    let mut more = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut more))
            .await
            .is_err(),
        "no end while the target keeps its connection"
    );
}

/// The node's load the control plane holds, polled until `want` says yes
/// (bounded); returns the last value seen.
async fn node_load_until(plane: &Plane, want: impl Fn(i64) -> bool) -> i64 {
    let mut load = -1;
    for _ in 0..100 {
        load = plane
            .scalar(&format!(
                "SELECT load::bigint AS n FROM outline_nodes WHERE id = '{}'",
                plane.nodes[0].0
            ))
            .await;
        if want(load) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load
}

/// The node's heartbeat carries its real load: the client connections it
/// holds open, up while tunnels are open and back down when they close.
#[tokio::test(flavor = "multi_thread")]
async fn node_heartbeats_report_its_open_connections() {
    let plane = Plane::start(1).await;
    let echo = echo_server().await;
    let socks = plane.client().await;
    assert_eq!(node_load_until(&plane, |l| l == 0).await, 0, "idle node");
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut s = socks_connect(socks, echo).await;
        assert!(alive(&mut s).await, "tunnel works");
        tunnels.push(s);
    }
    assert_eq!(
        node_load_until(&plane, |l| l == 3).await,
        3,
        "three tunnels open"
    );
    tunnels.clear();
    assert_eq!(node_load_until(&plane, |l| l == 0).await, 0, "all closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_associate_round_trips_a_datagram() {
    let plane = Plane::start(1).await;
    let echo = udp_echo().await;
    let socks = plane.client().await;
    let (control, relay) = associate(socks, 0).await;
    let local = udp_socket().await;
    let packet = socks_datagram(echo, b"ping through the tunnel");
    let got = exchange(&local, relay, &packet, 10)
        .await
        .expect("an answer through UDP ASSOCIATE");
    assert!(got.ends_with(b"ping through the tunnel"), "{got:?}");
    assert_eq!(&got[..4], &[0, 0, 0, 1]);

    // Another socket, once the association has its peer: dropped, and the
    // answers still go to the application that asked.
    let stranger = udp_socket().await;
    let foreign = socks_datagram(echo, b"from a stranger");
    assert_eq!(
        exchange(&stranger, relay, &foreign, 2).await,
        None,
        "a stranger's datagram was relayed"
    );
    let again = exchange(&local, relay, &packet, 10).await.expect("again");
    assert!(again.ends_with(b"ping through the tunnel"), "{again:?}");
    drop(control);
}

/// A request that names its port: datagrams from any other port are
/// dropped, even before the application's first one.
#[tokio::test(flavor = "multi_thread")]
async fn udp_associate_takes_datagrams_from_the_named_port_only() {
    let plane = Plane::start(1).await;
    let echo = udp_echo().await;
    let socks = plane.client().await;
    let local = udp_socket().await;
    let (control, relay) = associate(socks, local.local_addr().expect("addr").port()).await;
    let stranger = udp_socket().await;
    let foreign = socks_datagram(echo, b"from a stranger");
    assert_eq!(
        exchange(&stranger, relay, &foreign, 2).await,
        None,
        "a datagram from another port was relayed"
    );
    let packet = socks_datagram(echo, b"from the named port");
    let got = exchange(&local, relay, &packet, 10)
        .await
        .expect("an answer to the named port");
    assert!(got.ends_with(b"from the named port"), "{got:?}");
    drop(control);
}

async fn https_get(plane: &Plane, path: &str) -> (u16, String) {
    let mut s = plane.tls().await;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn access_document_has_the_outline_structure_tells_an_ended_subscription_and_hides_a_revoked_device()
 {
    let plane = Plane::start(1).await;
    let (status, body) = https_get(&plane, &format!("/c/{}", plane.device_token)).await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&body).expect("YAML");
    let port = plane.gateway_addr.port();
    let token = &plane.device_token;
    let r = plane
        .gql("{outlineNodes{edges{node{method secret}}}}", json!({}))
        .await;
    let (method, secret) = (
        r["data"]["outlineNodes"]["edges"][0]["node"]["method"]
            .as_str()
            .expect("m"),
        r["data"]["outlineNodes"]["edges"][0]["node"]["secret"]
            .as_str()
            .expect("s"),
    );
    let expected: serde_yaml::Value = serde_yaml::from_str(&format!(
        "transport:\n  $type: tcpudp\n  tcp:\n    $type: shadowsocks\n    endpoint: {{$type: websocket, url: \"wss://localhost:{port}/ws/{token}/tcp\"}}\n    cipher: {method}\n    secret: \"{secret}\"\n  udp:\n    $type: shadowsocks\n    endpoint: {{$type: websocket, url: \"wss://localhost:{port}/ws/{token}/udp\"}}\n    cipher: {method}\n    secret: \"{secret}\"\n"
    ))
    .expect("expected YAML");
    assert_eq!(doc, expected);
    // A subscription that ended: the app shows why (status 200, an error
    // document).
    let r = plane
        .gql("{subscriptions{edges{node{id}}}}", json!({}))
        .await;
    let sub = r["data"]["subscriptions"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    plane
        .gql(
            "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
            json!({"id": sub}),
        )
        .await;
    let mut told = (0, String::new());
    for _ in 0..50 {
        told = https_get(&plane, &format!("/c/{}", plane.device_token)).await;
        if told.1.contains("error") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = told;
    assert_eq!(status, 200, "{body}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&body).expect("YAML");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        matches!(
            doc["error"]["details"].as_str(),
            Some("subscription_expired" | "no_subscription")
        ),
        "{body}"
    );
    assert!(doc.get("transport").is_none());
    // A revoked device's token is answered as an unknown one: nothing
    // tells that it was ever valid.
    plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            json!({"id": plane.device_id}),
        )
        .await;
    let unknown = https_get(&plane, "/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(unknown.0, 404);
    let mut revoked = (0, String::new());
    for _ in 0..50 {
        revoked = https_get(&plane, &format!("/c/{}", plane.device_token)).await;
        if revoked.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(revoked, unknown);
}

async fn ws(
    plane: &Plane,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, String>
{
    let s = plane.tls().await;
    tokio_tungstenite::client_async(
        format!("wss://localhost/{}", path.trim_start_matches('/')),
        s,
    )
    .await
    .map(|(w, _)| w)
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_paths_text_and_oversized_frames_are_refused() {
    let plane = Plane::start(1).await;
    // Unknown token, malformed token and unknown path: the same 404.
    let (s1, b1) = https_get(
        &plane,
        "/ws/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/tcp",
    )
    .await;
    let (s2, b2) = https_get(&plane, "/nope").await;
    let (s3, b3) = https_get(&plane, "/ws/short/tcp").await;
    assert_eq!((s1, s2, s3), (404, 404, 404));
    assert_eq!((b1.as_str(), b2.as_str()), (b3.as_str(), b3.as_str()));
    let e = ws(
        &plane,
        "/ws/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/tcp",
    )
    .await
    .expect_err("refused before the upgrade");
    assert!(e.contains("404"), "{e}");
    // A text frame closes the tunnel (1003); nothing is relayed.
    let mut w = ws(&plane, &format!("/ws/{}/tcp", plane.device_token))
        .await
        .expect("upgrade");
    w.send(Message::Text("hello".into())).await.expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("in time");
    match closed {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1003),
        other => panic!("expected a close, got {other:?}"),
    }
    // An oversized frame closes it with 1009 (or a reset, when the gateway
    // closes while the client is still writing the frame).
    let mut w = ws(&plane, &format!("/ws/{}/tcp", plane.device_token))
        .await
        .expect("upgrade");
    if w.send(Message::Binary(vec![0u8; 200 * 1024].into()))
        .await
        .is_ok()
    {
        match tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1009),
            Some(Err(_)) | None => {}
            other => panic!("expected a close, got {other:?}"),
        }
    }
    // Either way the socket is closed.
    let after = w.send(Message::Binary(vec![1u8; 10].into())).await;
    let next = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("in time");
    assert!(
        after.is_err() || !matches!(next, Some(Ok(Message::Binary(_)))),
        "the tunnel stayed open"
    );
    // A frame of exactly the limit (64 KiB here) is taken ("1009 beyond");
    // one byte more is not.
    for (len, refused) in [(64 * 1024, false), (64 * 1024 + 1, true)] {
        let mut w = ws(&plane, &format!("/ws/{}/tcp", plane.device_token))
            .await
            .expect("upgrade");
        // Refused, the frame may meet a reset while it is still being
        // written (as above).
        let sent = w.send(Message::Binary(vec![0u8; len].into())).await;
        let got = tokio::time::timeout(Duration::from_secs(1), w.next()).await;
        let closed_1009 = sent.is_err()
            || matches!(&got, Ok(Some(Ok(Message::Close(Some(f))))) if u16::from(f.code) == 1009);
        assert_eq!(closed_1009, refused, "{len} bytes: {sent:?} {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_going_down_mid_use_moves_tunnels_to_a_healthy_node() {
    let plane = Plane::start(2).await;
    let body = random_body(256 * 1024);
    let web = http_server(body.clone()).await;
    let socks = plane.client().await;
    assert_eq!(fetch(socks, web).await, *body);
    // Which node carried it? Stop that one.
    let r = plane
        .gql(
            "{sessions(filter:{open:true}){edges{node{outlineNode{id} gatewayNode{name}}}}}",
            json!({}),
        )
        .await;
    let used = r["data"]["sessions"]["edges"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|e| e["node"]["gatewayNode"]["name"] == "gw")
        .and_then(|e| e["node"]["outlineNode"]["id"].as_str())
        .expect("a gateway session")
        .to_owned();
    let (_, running, beats) = plane
        .nodes
        .iter()
        .find(|(id, _, _)| *id == used)
        .expect("node");
    beats.abort();
    running.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next fetch succeeds, through the other node.
    assert_eq!(fetch(socks, web).await, *body);
    let r = plane
        .gql("{outlineNodes{edges{node{id health}}}}", json!({}))
        .await;
    let down = r["data"]["outlineNodes"]["edges"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|e| e["node"]["id"] == used.as_str())
        .expect("node")["node"]["health"]
        .clone();
    assert_eq!(down, "down", "the gateway reported the dead node: {r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_ss_local_with_v2ray_plugin_fetches_through_the_gateway() {
    common::apt_install(
        &["shadowsocks-libev", "shadowsocks-v2ray-plugin"],
        &[("ss-local", "-h"), ("ss-v2ray-plugin", "-version")],
    );
    let plane = Plane::start(1).await;
    let body = random_body(10 * 1024 * 1024);
    let web = http_server(body.clone()).await;
    let r = plane
        .gql("{outlineNodes{edges{node{method secret}}}}", json!({}))
        .await;
    let (method, secret) = (
        r["data"]["outlineNodes"]["edges"][0]["node"]["method"]
            .as_str()
            .expect("m"),
        r["data"]["outlineNodes"]["edges"][0]["node"]["secret"]
            .as_str()
            .expect("s"),
    );
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let local = probe.local_addr().expect("addr");
    drop(probe);
    let opts = format!(
        "tls;host=localhost;cert={};path=/ws/{}/tcp;mux=0",
        plane.cert.display(),
        plane.device_token
    );
    // In its own process group: ss-local starts ss-v2ray-plugin, which
    // must end with the test too.
    let mut child = common::group::GroupChild::spawn(
        tokio::process::Command::new("ss-local")
            .args([
                "-s",
                "127.0.0.1",
                "-p",
                &plane.gateway_addr.port().to_string(),
                "-l",
                &local.port().to_string(),
                "-b",
                "127.0.0.1",
            ])
            .args([
                "-k",
                secret,
                "-m",
                method,
                "--plugin",
                "ss-v2ray-plugin",
                "--plugin-opts",
                &opts,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .expect("ss-local");
    let mut ready = false;
    for _ in 0..50 {
        if TcpStream::connect(local).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ss-local did not start");
    // ss-local listens before its plugin does: until the plugin is up, a
    // connection closes without an answer.
    let mut got = None;
    for _ in 0..50 {
        got = try_fetch(local, web).await;
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("headers");
    assert_eq!(got.len(), body.len(), "length");
    assert_eq!(sha2::Sha256::digest(&got), sha2::Sha256::digest(&*body));
    // The node finishes first on every download: each one must still end
    // with every byte (v2ray-core drops what it holds when the WebSocket
    // ends under it), so a few more of them.
    for round in 1..4 {
        let got = fetch(local, web).await;
        assert!(
            got == *body,
            "download {round}: {} of {} bytes",
            got.len(),
            body.len()
        );
    }
    // The other direction: 10 MiB up, the digest back, then the target's end.
    let up = random_body(10 * 1024 * 1024);
    let answer = upload(local, digest_server().await, &up).await;
    assert_eq!(
        answer,
        format!("{:x}", sha2::Sha256::digest(&*up)),
        "upload"
    );
    child.kill_group().await;
}

/// An echo server: everything received goes back.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Whether 4 bytes go round an echo tunnel within a second.
async fn alive(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut b)).await,
        Ok(Ok(_))
    ) && &b == b"ping"
}

/// Waits (bounded) until the tunnel is closed; returns how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if !alive(s).await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

impl Plane {
    /// Another user with a subscription and a device; returns (user id, device token, subscription id).
    async fn other_device(&self) -> (String, String, String) {
        self.other_device_on(None).await
    }

    /// [`Plane::other_device`] on `plan` (default: the first plan).
    async fn other_device_on(&self, plan: Option<&str>) -> (String, String, String) {
        let email = format!("o-{}@example.com", uuid::Uuid::new_v4().simple());
        let u = accounts::create_user(&self.server.state.db, &email, PASSWORD, Role::User)
            .await
            .expect("user");
        let r = self.gql("{plans{edges{node{id name}}}}", json!({})).await;
        let plan = match plan {
            Some(p) => p.to_owned(),
            None => r["data"]["plans"]["edges"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["node"]["name"] == "p"))
                .and_then(|e| e["node"]["id"].as_str())
                .expect("plan")
                .to_owned(),
        };
        let r = self
            .gql(
                "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
                json!({"u": u.id, "p": plan}),
            )
            .await;
        let sub = r["data"]["grantSubscription"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let tok = login(&self.server.base, &email).await;
        let r = gql(
            &self.server.base,
            Some(&tok),
            "mutation{registerDevice(name:\"phone\",platform:\"android\"){accessToken}}",
            json!({}),
        )
        .await;
        (
            u.id.to_string(),
            r["data"]["registerDevice"]["accessToken"]
                .as_str()
                .expect("token")
                .to_owned(),
            sub,
        )
    }

    async fn client_for(&self, device_token: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = client::ClientOptions {
            backend: self.server.base.clone(),
            device_token: device_token.into(),
            gateway: Some(format!("https://localhost:{}", self.gateway_addr.port())),
            ca_cert: Some(self.cert.clone()),
            region: None,
            forward: None,
            link: Default::default(),
            mux: false,
            mux_connections: client::DEFAULT_MUX_CONNECTIONS,
        };
        // Bound already: connections wait in the backlog until it accepts.
        tokio::spawn(async move {
            if let Err(e) = client::run(opts, listener, std::future::pending::<()>()).await {
                panic!("client: {e:#}");
            }
        });
        addr
    }

    /// [`Plane::gateway_bytes_down`] once it reaches `want`, or after
    /// 10 s.
    async fn gateway_bytes_down_reaching(&self, want: i64) -> i64 {
        let mut counted = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            counted = self.gateway_bytes_down().await;
            if counted >= want {
                break;
            }
        }
        counted
    }

    async fn gateway_bytes_down(&self) -> i64 {
        let r = self
            .gql(
                "{sessions(first:100){edges{node{bytesDown gatewayNode{name}}}}}",
                json!({}),
            )
            .await;
        r["data"]["sessions"]["edges"]
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|e| e["node"]["gatewayNode"]["name"] == "gw")
            .filter_map(|e| e["node"]["bytesDown"].as_str()?.parse::<i64>().ok())
            .sum()
    }
}

fn production_timings(o: &mut gateway::GatewayOptions) {
    let d = gateway::GatewayOptions::default();
    o.report_every = d.report_every;
    o.heartbeat_every = d.heartbeat_every;
    o.cache_ttl = d.cache_ttl;
}

/// How long until a direct WebSocket upgrade with `token` is refused
/// (probing every 20 ms), or `None` if it still works after `limit`.
async fn refused_within(plane: &Plane, token: &str, limit: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if ws(plane, &format!("/ws/{token}/tcp")).await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Moves up to `total` bytes through an echo tunnel and back, ending early
/// when the tunnel is cut (crossing a quota may close it on the way: a usage
/// report can land in the middle).
async fn echo_until_cut(s: &mut TcpStream, total: usize) {
    let chunk = vec![7u8; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut moved = 0;
    while moved < total {
        if s.write_all(&chunk).await.is_err() || s.read_exact(&mut back).await.is_err() {
            return;
        }
        moved += chunk.len();
    }
}

/// Moves `total` bytes through an echo tunnel and back.
async fn echo_bytes(s: &mut TcpStream, total: usize) {
    let chunk = vec![7u8; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut moved = 0;
    while moved < total {
        s.write_all(&chunk).await.expect("write");
        s.read_exact(&mut back).await.expect("read");
        moved += chunk.len();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the cut-off and refusal times are reported for the record"
)]
async fn every_loss_of_access_closes_tunnels_within_5_seconds_and_refuses_new_ones_at_once() {
    let plane = Plane::start_with(1, production_timings).await;
    let echo = echo_server().await;
    let r = plane
        .gql(
            "mutation{createPlan(input:{name:\"tiny\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"1000000\",deviceLimit:3}){id}}",
            json!({}),
        )
        .await;
    let tiny = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let (_, bystander_token, _) = plane.other_device().await;
    let bystander = plane.client_for(&bystander_token).await;
    let mut kept = socks_connect(bystander, echo).await;
    // The admin's own device: revoked first.
    let cases = [
        "revoke device",
        "disable user",
        "cancel subscription",
        "expire subscription",
        "cross quota",
    ];
    for case in cases {
        let (user, token, sub) = match case {
            "revoke device" => (String::new(), plane.device_token.clone(), String::new()),
            "cross quota" => plane.other_device_on(Some(&tiny)).await,
            _ => plane.other_device().await,
        };
        if case == "expire subscription" {
            plane
                .sql(&format!(
                    "UPDATE subscriptions SET expires_at = (now() at time zone 'utc') + interval '3 seconds' WHERE id = '{sub}'"
                ))
                .await;
        }
        let socks = plane.client_for(&token).await;
        let mut tunnel = socks_connect(socks, echo).await;
        assert!(alive(&mut tunnel).await, "{case}: tunnel before");
        // The gateway now holds a fresh validation for this token.
        assert!(
            ws(&plane, &format!("/ws/{token}/tcp")).await.is_ok(),
            "{case}"
        );
        match case {
            "revoke device" => {
                plane
                    .gql(
                        "mutation($id:UUID!){revokeDevice(id:$id){status}}",
                        json!({"id": plane.device_id}),
                    )
                    .await;
            }
            "disable user" => {
                plane
                    .gql(
                        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
                        json!({"id": user}),
                    )
                    .await;
            }
            "cancel subscription" => {
                plane
                    .gql(
                        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
                        json!({"id": sub}),
                    )
                    .await;
            }
            "expire subscription" => {
                // Ends 3 s after it was set; wait for that moment.
                while ws(&plane, &format!("/ws/{token}/tcp")).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => echo_until_cut(&mut tunnel, 1_200_000).await,
        }
        let t0 = std::time::Instant::now();
        let refused = refused_within(&plane, &token, Duration::from_secs(6))
            .await
            .unwrap_or_else(|| panic!("{case}: new tunnels still accepted"));
        closed_within(&mut tunnel, Duration::from_secs(6))
            .await
            .unwrap_or_else(|| panic!("{case}: open tunnel not closed"));
        let closed = t0.elapsed();
        eprintln!(
            "{case}: new tunnels refused after {refused:?}, open tunnel closed after {closed:?}"
        );
        assert!(
            closed <= Duration::from_secs(5),
            "{case}: closed after {closed:?}"
        );
        if case != "cross quota" {
            // Quota is judged from usage reports (every 2 s); the rest at once.
            assert!(
                refused <= Duration::from_millis(500),
                "{case}: refused after {refused:?}"
            );
        } else {
            assert!(
                refused <= Duration::from_secs(3),
                "{case}: refused after {refused:?}"
            );
        }
        assert!(
            alive(&mut kept).await,
            "{case}: a bystander's tunnel was closed"
        );
    }
}

/// Removing a gateway ends its sessions (`node_down`) and its open tunnels
/// close: the gateway, refused at its next heartbeat (its token went with
/// it), closes them rather than carry traffic it can no longer report.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_gateway_closes_its_open_tunnels() {
    let plane = Plane::start_with(1, production_timings).await;
    let echo = echo_server().await;
    let socks = plane.client_for(&plane.device_token).await;
    let mut tunnel = socks_connect(socks, echo).await;
    assert!(alive(&mut tunnel).await, "tunnel before");
    let r = plane
        .gql("{gatewayNodes(first:10){edges{node{id}}}}", json!({}))
        .await;
    let id = r["data"]["gatewayNodes"]["edges"][0]["node"]["id"].clone();
    let r = plane
        .gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": id}))
        .await;
    assert_eq!(r["data"]["deleteNode"], true, "{r}");
    closed_within(&mut tunnel, Duration::from_secs(15))
        .await
        .expect("the removed gateway's tunnel is closed");
    let ended = plane
        .gql("{sessions(first:10){edges{node{endReason}}}}", json!({}))
        .await;
    // The tunnel's session (the client's own, asked as the device, runs
    // through no gateway and stays).
    let edges = ended["data"]["sessions"]["edges"]
        .as_array()
        .expect("sessions");
    assert!(
        edges.iter().any(|e| e["node"]["endReason"] == "node_down"),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_control_plane_forgot_does_not_hold_back_the_others() {
    let plane = Plane::start(1).await;
    let echo = echo_server().await;
    let (other_user, other_token, _) = plane.other_device().await;
    let mine = plane.client().await;
    let other = plane.client_for(&other_token).await;
    let mut t1 = socks_connect(mine, echo).await;
    let mut t2 = socks_connect(other, echo).await;
    echo_bytes(&mut t1, 64 * 1024).await;
    echo_bytes(&mut t2, 64 * 1024).await;
    let others = format!(
        "SELECT CAST(COALESCE(SUM(s.bytes_up), 0) AS BIGINT) AS n FROM sessions s \
         JOIN devices d ON d.id = s.device_id WHERE d.user_id = '{other_user}'"
    );
    let mut before = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = plane.scalar(&others).await;
        if before >= 64 * 1024 {
            break;
        }
    }
    assert!(before >= 64 * 1024, "first totals reported: {before}");
    // The control plane loses my session (an operator's cleanup, a restore).
    plane
        .sql(&format!(
            "DELETE FROM sessions WHERE device_id = '{}'",
            plane.device_id
        ))
        .await;
    // Both tunnels move more; the batch naming my session is refused (404),
    // and the other session's bytes are still counted.
    echo_bytes(&mut t1, 256 * 1024).await;
    echo_bytes(&mut t2, 256 * 1024).await;
    let mut after = before;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = plane.scalar(&others).await;
        if after >= before + 256 * 1024 {
            break;
        }
    }
    assert!(
        after >= before + 256 * 1024,
        "the other session's totals moved on: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_device_tunnel_cap_refuses_then_accepts_again() {
    let plane = Plane::start_with(1, |o| o.max_tunnels_per_device = 3).await;
    let path = format!("/ws/{}/tcp", plane.device_token);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ws(&plane, &path).await.expect("under the cap"));
    }
    let refused = ws(&plane, &path).await.expect_err("past the cap");
    assert!(refused.contains("429"), "{refused}");
    drop(open.pop());
    let mut ok = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ws(&plane, &path).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "below the cap again, tunnels are accepted");
}

fn soft_fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the flood size is reported for the record"
)]
async fn idle_and_half_sent_sockets_are_closed_at_the_deadline_while_real_tunnels_work() {
    // The flood comes from the real tunnel's own address: its bound of
    // connections without a tunnel is raised past the flood, so that the
    // deadline, not that bound, is what closes them.
    let plane = Plane::start_with(1, |o| {
        o.handshake_timeout = Duration::from_secs(2);
        o.max_connections_per_source = 2_000;
    })
    .await;
    // Both ends of every socket live in this process.
    let count = 1000.min(soft_fd_limit().saturating_sub(300) / 2);
    eprintln!("flooding the gateway with {count} idle or half-sent sockets");
    let mut flood = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect(plane.gateway_addr)
            .await
            .expect("connect");
        if i % 2 == 1 {
            // Half a TLS record.
            s.write_all(&[0x16, 0x03, 0x01, 0x02]).await.expect("write");
        }
        flood.push(s);
    }
    // Half an HTTP request after a completed TLS handshake.
    let mut half_http = Vec::new();
    for _ in 0..20 {
        let mut s = plane.tls().await;
        s.write_all(b"GET /ws/x/tcp HTTP/1.1\r\nHost: local")
            .await
            .expect("write");
        half_http.push(s);
    }
    let started = std::time::Instant::now();
    // A real tunnel during the flood.
    let body = random_body(512 * 1024);
    let web = http_server(body.clone()).await;
    let socks = plane.client().await;
    assert_eq!(fetch(socks, web).await, *body);
    // Every flood socket is closed by the gateway within the deadline (plus slack).
    for s in &mut flood {
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a flood socket stayed open"
        );
    }
    for s in &mut half_http {
        let mut b = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut b)).await;
        assert!(r.is_ok(), "a half-sent request stayed open");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "closing took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_outage_keeps_tunnels_then_fails_closed_then_recovers() {
    let mut plane = Plane::start_with(1, |o| {
        o.cache_ttl = Duration::from_millis(300);
        o.outage_ttl = Duration::from_secs(3);
    })
    .await;
    let echo = echo_server().await;
    let socks = plane.client().await;
    let mut open = socks_connect(socks, echo).await;
    assert!(alive(&mut open).await);
    // The control plane goes away.
    let addr: SocketAddr = plane
        .server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let dsn = plane._db.dsn.clone();
    plane.server.halt().await;
    let stopped_at = std::time::Instant::now();
    // Open tunnels keep running; new ones use the validation cache.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        alive(&mut open).await,
        "an open tunnel died with the control plane"
    );
    let mut during = socks_connect(socks, echo).await;
    assert!(
        alive(&mut during).await,
        "a new tunnel within the cache's outage TTL"
    );
    // Past the outage TTL: fail closed.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(stopped_at.elapsed()) + Duration::from_millis(500),
    )
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(10), common::socks_connect(socks, echo))
        .await
        .expect("answer in time");
    assert!(
        refused.is_none(),
        "a new tunnel was accepted after the outage TTL"
    );
    assert!(alive(&mut open).await, "open tunnels still run");
    // The control plane comes back on the same address: no restart needed.
    plane.server = TestServer::start_at(dsn, false, addr).await;
    let mut recovered = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut s = common::socks_connect(socks, echo).await;
        if let Some(s) = s.as_mut()
            && alive(s).await
        {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "tunnels work again once the control plane is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_tunnels_with_1001_and_flushes_usage() {
    let mut plane = Plane::start_with(1, |o| {
        o.drain_grace = Duration::from_millis(500);
        o.report_every = Duration::from_secs(3600);
    })
    .await;
    let body = random_body(2 * 1024 * 1024);
    let web = http_server(body.clone()).await;
    let echo = echo_server().await;
    let socks = plane.client().await;
    assert_eq!(fetch(socks, web).await.len(), body.len());
    let mut open = socks_connect(socks, echo).await;
    assert!(alive(&mut open).await);
    assert_eq!(plane.gateway_bytes_down().await, 0, "no report yet");
    let _ = plane.gateway_stop.take().expect("stop").send(());
    let took = closed_within(&mut open, Duration::from_secs(5))
        .await
        .expect("the open tunnel was closed");
    assert!(took < Duration::from_secs(3), "{took:?}");
    tokio::time::timeout(Duration::from_secs(10), plane.gateway.take().expect("task"))
        .await
        .expect("gateway stopped")
        .expect("join");
    // The final flush reported what was moved.
    assert!(plane.gateway_bytes_down().await >= body.len() as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_spool_survives_a_killed_gateway_without_loss_or_double_count() {
    let spool = common::tempdir::TempDir::new();
    let spool_file = spool.path().join("spool.json");
    let sf = spool_file.clone();
    let mut plane = Plane::start_with(1, move |o| o.spool = Some(sf.clone())).await;
    let body = random_body(1024 * 1024);
    let web = http_server(body.clone()).await;
    let socks = plane.client().await;
    for _ in 0..2 {
        assert_eq!(fetch(socks, web).await.len(), body.len());
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(spool_file.exists(), "the spool was written");
    // SIGKILL-like: the task is dropped with no flush and no drain.
    let sf = spool_file.clone();
    plane
        .kill_and_restart_gateway(&move |o: &mut gateway::GatewayOptions| {
            o.spool = Some(sf.clone())
        })
        .await;
    assert_eq!(fetch(socks, web).await.len(), body.len());
    // Everything the node sent through the gateway, counted exactly once.
    let sent = plane.nodes[0].1.tx() as i64;
    let counted = plane.gateway_bytes_down_reaching(sent).await;
    assert_eq!(counted, sent, "bytes the node sent vs bytes in the ledger");
}

/// A gateway restarted without its spool counts the session from zero:
/// its totals add to what was recorded (a new epoch) instead of having to
/// pass it before they count.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_restarted_without_its_spool_counts_on_top_of_what_was_recorded() {
    let mut plane = Plane::start_with(1, |o| o.spool = None).await;
    let body = random_body(1024 * 1024);
    let web = http_server(body.clone()).await;
    let socks = plane.client().await;
    for _ in 0..2 {
        assert_eq!(fetch(socks, web).await.len(), body.len());
    }
    let before = plane.nodes[0].1.tx() as i64;
    let counted = plane.gateway_bytes_down_reaching(before).await;
    assert_eq!(counted, before, "the first run's bytes are recorded");
    plane
        .kill_and_restart_gateway(&|o: &mut gateway::GatewayOptions| o.spool = None)
        .await;
    // Less than the first run moved: under the old rule (the larger
    // total wins) none of it would count.
    assert_eq!(fetch(socks, web).await.len(), body.len());
    let sent = plane.nodes[0].1.tx() as i64;
    assert!(sent > before);
    let counted = plane.gateway_bytes_down_reaching(sent).await;
    assert_eq!(counted, sent, "bytes the node sent vs bytes in the ledger");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_get_pings_and_close_after_silence() {
    let plane = Plane::start_with(1, |o| {
        o.idle_ping = Duration::from_millis(300);
        o.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut w = ws(&plane, &format!("/ws/{}/tcp", plane.device_token))
        .await
        .expect("upgrade");
    let started = std::time::Instant::now();
    let (mut pings, mut close) = (0, None);
    while started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(pings >= 1, "no ping while idle");
    assert_eq!(close, Some(1000), "closed after the silent interval");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_refuse_private_destinations_by_default() {
    use shadowsocks_service::shadowsocks::ProxyClientStream;
    use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
    use shadowsocks_service::shadowsocks::context::Context;
    let echo = echo_server().await;
    let method = node::parse_method("chacha20-ietf-poly1305").expect("method");
    let options = |allow_private| node::NodeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        method,
        password: "a-test-password".into(),
        allow_private,
        idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
    };
    let ctx = Context::new_shared(ServerType::Local);
    let cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        "a-test-password",
        method,
    )
    .expect("cfg");
    for (allow, expect_echo) in [(false, false), (true, true)] {
        let n = node::start(&options(allow)).await.expect("node");
        let tcp = TcpStream::connect(n.addr).await.expect("connect");
        let mut s = ProxyClientStream::from_stream(ctx.clone(), tcp, &cfg, echo);
        let _ = s.write_all(b"ping").await;
        let _ = s.flush().await;
        let mut b = [0u8; 4];
        let got = tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut b)).await;
        let echoed = matches!(got, Ok(Ok(_))) && &b == b"ping";
        assert_eq!(echoed, expect_echo, "allow_private = {allow}");
    }
}

/// Where this process's warnings (every test's in it) go from the first
/// call on: a buffer a failing test can show.
fn warnings_kept() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static KEPT: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = kept.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || Kept(sink.clone()))
            .try_init();
        kept
    })
    .clone()
}

/// A writer appending to a kept buffer.
struct Kept(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Kept {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first MiB is enough to tell why.
        if kept.len() < 1 << 20 {
            kept.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the figures are reported for the record"
)]
async fn two_hundred_concurrent_tunnels_keep_every_byte_and_release_their_sockets() {
    let plane = Plane::start(1).await;
    // The gateway as a process of its own, so its descriptors and memory can
    // be read from /proc.
    let token = plane.register_gateway("gw-load").await;
    let dir = common::tempdir::TempDir::new();
    let port = common::stable_port();
    let gw = common::GatewayProc::spawn(&plane.server.base, &token, dir.path(), port).await;
    let pid = gw.child.id().expect("pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let socks = listener.local_addr().expect("addr");
    let opts = client::ClientOptions {
        backend: plane.server.base.clone(),
        device_token: plane.device_token.as_str().into(),
        gateway: Some(format!("https://localhost:{port}")),
        ca_cert: Some(dir.path().join("gw.crt")),
        region: None,
        forward: None,
        link: Default::default(),
        mux: false,
        mux_connections: client::DEFAULT_MUX_CONNECTIONS,
    };
    // The listener is bound already: connections wait in its backlog
    // until the client accepts them, so no pause is needed.
    tokio::spawn(async move {
        if let Err(e) = client::run(opts, listener, std::future::pending::<()>()).await {
            panic!("client: {e:#}");
        }
    });
    let body = random_body(128 * 1024);
    let web = http_server(body.clone()).await;
    let digest = sha2::Sha256::digest(&*body);
    // A failure says what the gateway and the clients of this process
    // logged (a tunnel that saw no headers was closed before it carried
    // anything: refused or timed out).
    let warnings = warnings_kept();
    let log = dir.path().join("gateway.log");
    let round = || {
        let (log, warnings) = (log.clone(), warnings.clone());
        async move {
            let tasks: Vec<_> = (0..200)
                .map(|_| tokio::spawn(async move { try_fetch(socks, web).await }))
                .collect();
            for t in tasks {
                let body = t.await;
                let said = || {
                    let gateway = std::fs::read_to_string(&log).unwrap_or_default();
                    let here =
                        String::from_utf8_lossy(&warnings.lock().expect("kept")).into_owned();
                    format!("{gateway}\nthis process's warnings:\n{here}")
                };
                let body = match body {
                    Ok(Some(body)) => body,
                    Ok(None) => panic!("no headers; the gateway: {}", said()),
                    Err(e) => panic!("{e}; the gateway: {}", said()),
                };
                assert_eq!(
                    sha2::Sha256::digest(&body),
                    digest,
                    "a tunnel corrupted or lost bytes; the gateway: {}",
                    said()
                );
            }
        }
    };
    // The first round warms the gateway (connection pools, allocator); the
    // baseline is taken after it, and two more rounds (400 tunnels) must
    // leave nothing behind. The memory margin is the allocator's: its
    // arenas keep up to a few MiB of what a round freed (4.5 MiB seen
    // once), while a leak of 16 KiB per tunnel would show as 6.4 MB.
    const MARGIN_KIB: u64 = 6 * 1024;
    round().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (fd_base, rss_base) = (fds(), rss_kib(pid));
    round().await;
    round().await;
    // Back to the baseline (bounded wait: closes finish asynchronously).
    let mut now = (fds(), rss_kib(pid));
    for _ in 0..50 {
        if now.0 <= fd_base + 2 && now.1 <= rss_base + MARGIN_KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = (fds(), rss_kib(pid));
    }
    eprintln!(
        "200 tunnels: gateway fds {fd_base} -> {}, RSS {rss_base} KiB -> {} KiB",
        now.0, now.1
    );
    assert!(
        now.0 <= fd_base + 2,
        "gateway file descriptors: {fd_base} before, {} after",
        now.0
    );
    assert!(
        now.1 <= rss_base + MARGIN_KIB,
        "gateway memory: {rss_base} KiB before, {} KiB after",
        now.1
    );
    gw.sigkill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_jwt_in_the_authorization_header_opens_a_tunnel() {
    use shadowsocks_service::shadowsocks::ProxyClientStream;
    use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
    use shadowsocks_service::shadowsocks::context::Context;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let plane = Plane::start(1).await;
    let echo = echo_server().await;
    let jwt = Backend::new(&plane.server.base, &plane.device_token)
        .expect("backend")
        .device_jwt()
        .await
        .expect("device JWT")
        .token
        .expose()
        .to_owned();
    let r = plane
        .gql("{outlineNodes{edges{node{method secret}}}}", json!({}))
        .await;
    let node = &r["data"]["outlineNodes"]["edges"][0]["node"];
    let method = node::parse_method(node["method"].as_str().expect("m")).expect("method");
    let cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        node["secret"].as_str().expect("s"),
        method,
    )
    .expect("cfg");
    let open = |bearer: String| {
        let plane = &plane;
        async move {
            let s = plane.tls().await;
            let mut req = "wss://localhost/ws/-/tcp"
                .into_client_request()
                .expect("request");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {bearer}").parse().expect("header"),
            );
            tokio_tungstenite::client_async(req, s)
                .await
                .map(|(w, _)| w)
                .map_err(|e| e.to_string())
        }
    };
    let forged = format!("{}x", &jwt[..jwt.len() - 1]);
    let refused = open(forged).await.expect_err("a forged JWT is refused");
    assert!(refused.contains("404"), "{refused}");
    let w = open(jwt).await.expect("upgrade with a device JWT");
    let ctx = Context::new_shared(ServerType::Local);
    let mut s =
        ProxyClientStream::from_stream(ctx, httvps_dataplane::wsio::WsIo::new(w), &cfg, echo);
    s.write_all(b"through the header").await.expect("write");
    s.flush().await.expect("flush");
    let mut b = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&b, b"through the header");
}

/// `gateway --check` finds what its start would refuse, naming the
/// setting: an address this host does not have, a spool whose directory
/// cannot be made, and a public URL with more than a host and port
/// (credentials in it were served to every client in its access keys,
/// said without repeating them).
#[test]
fn the_gateway_check_names_the_settings_its_start_would_refuse() {
    let dir = common::tempdir::TempDir::new();
    let d = dir.path();
    let file = d.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let spool_in_a_file = file.join("spool.json");
    // A directory where the spool file goes: never written over.
    let a_dir = d.join("a-dir");
    std::fs::create_dir_all(&a_dir).expect("dir");
    let (cert, key) = (d.join("gw.crt"), d.join("gw.key"));
    let ok_url = "https://localhost:47777";
    for (listen, spool, url, named) in [
        ("192.0.2.1:47777", None, ok_url, "GATEWAY_LISTEN"),
        (
            "127.0.0.1:0",
            Some(&spool_in_a_file),
            ok_url,
            "GATEWAY_SPOOL",
        ),
        ("127.0.0.1:0", Some(&a_dir), ok_url, "GATEWAY_SPOOL"),
        (
            "127.0.0.1:0",
            None,
            "https://someone:s3cr3tpw@localhost:47777",
            "GATEWAY_PUBLIC_URL",
        ),
        (
            "127.0.0.1:0",
            None,
            "https://localhost:47777/x?y=1",
            "GATEWAY_PUBLIC_URL",
        ),
    ] {
        let mut args = vec![
            "gateway".to_owned(),
            "--backend".into(),
            "http://127.0.0.1:1".into(),
            "--token".into(),
            "t0ken".into(),
            "--listen".into(),
            listen.into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--self-signed".into(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--data-dir".into(),
            d.join("data").display().to_string(),
            "--public-url".into(),
            url.into(),
            "--check".into(),
        ];
        if let Some(spool) = spool {
            args.extend(["--spool".to_owned(), spool.display().to_string()]);
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{listen} {url}: passed the check: {err}"
        );
        assert!(err.contains(named), "{named} not named: {err}");
        assert!(!err.contains("s3cr3tpw"), "a credential repeated: {err}");
    }
}

/// A node given a listen address in use says so, naming NODE_LISTEN,
/// before it asks the control plane anything (an enrollment string is not
/// spent on a start that cannot listen): here the control plane does not
/// answer, which a node otherwise waits out.
#[test]
fn a_node_names_a_listen_address_in_use_before_it_asks_the_control_plane() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    node_refuses_to_start(
        &taken.local_addr().expect("addr").to_string(),
        "NODE_LISTEN",
    );
    // Taken for UDP only: the node's UDP relay shares the port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    node_refuses_to_start(&udp.local_addr().expect("addr").to_string(), "UDP");
    drop((taken, udp));
}

/// A node on `listen` stops within 20 s, its error naming `listen` and
/// holding `said`, while its control plane does not answer.
fn node_refuses_to_start(listen: &str, said: &str) {
    let dir = common::tempdir::TempDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args([
            "node",
            "--backend",
            "http://127.0.0.1:1",
            "--token",
            "t0ken",
        ])
        .args(["--listen", listen, "--credentials"])
        .arg(dir.path().join("creds.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(
        status.is_some_and(|s| !s.success()),
        "the node did not stop: {err}"
    );
    assert!(
        err.contains("NODE_LISTEN") && err.contains(listen) && err.contains(said),
        "NODE_LISTEN not named: {err}"
    );
}

#[test]
fn tokens_that_start_with_a_hyphen_are_taken_as_values() {
    // Tokens are base64url: about one in 32 starts with '-'. Checked
    // (`--check`): a node started for real waits for a control plane it
    // cannot reach.
    for args in [
        vec![
            "node",
            "--backend",
            "http://127.0.0.1:1",
            "--token",
            "-Hx",
            "--check",
        ],
        vec![
            "connect",
            "--backend",
            "http://127.0.0.1:1",
            "--device-token",
            "-Hx",
            "--socks",
            "127.0.0.1:0",
            "--check",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("unexpected argument"),
            "{args:?}: the token was read as a flag: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_binary_runs_with_a_backend_url_and_a_token() {
    let plane = Plane::start(0).await;
    let r = plane
        .gql("mutation{registerOutlineNode(input:{region:\"eu\",name:\"bin\",host:\"127.0.0.1\",port:8388}){token node{id}}}", json!({}))
        .await;
    let token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args([
            "node",
            "--backend",
            &plane.server.base,
            "--token",
            &token,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("BACKEND_LOG_FORMAT", "json")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("httvps-relay node");
    let mut up = false;
    // Bounded generously: other tests load the machine meanwhile.
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = plane
            .gql(
                "{outlineNodes{edges{node{name health version}}}}",
                json!({}),
            )
            .await;
        if r["data"]["outlineNodes"]["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["node"]["name"] == "bin" && e["node"]["health"] == "up")
        {
            up = true;
            break;
        }
    }
    assert!(up, "the node fetched its settings and heartbeated");
    let _ = child.kill().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the memory figures are reported for the record"
)]
async fn a_client_that_stops_reading_gets_backpressure_not_buffering() {
    use shadowsocks_service::shadowsocks::ProxyClientStream;
    use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
    use shadowsocks_service::shadowsocks::relay::Address;
    const TOTAL: u64 = 200 * 1024 * 1024;
    let plane = Plane::start(1).await;
    let token = plane.register_gateway("gw-mem").await;
    // 200 MB is over the default plan's quota: a device on an unlimited plan.
    let r = plane
        .gql(
            "mutation{createPlan(input:{name:\"unlimited\",priceCents:\"0\",durationDays:30,deviceLimit:3}){id}}",
            json!({}),
        )
        .await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let (_, device, _) = plane.other_device_on(Some(&plan)).await;
    let dir = common::tempdir::TempDir::new();
    let port = common::stable_port();
    let gw = common::GatewayProc::spawn(&plane.server.base, &token, dir.path(), port).await;
    let pid = gw.child.id().expect("pid");
    // A server that pushes 200 MB to whoever connects, as fast as it may.
    let pusher = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = pusher.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = pusher.accept().await {
            tokio::spawn(async move {
                let chunk = vec![9u8; 64 * 1024];
                let mut sent = 0u64;
                while sent < TOTAL {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                }
                let _ = s.shutdown().await;
                // Drain what the client sent: closing with unread bytes
                // would reset the connection and lose what is in flight.
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            });
        }
    });
    let r = plane
        .gql("{outlineNodes{edges{node{method secret}}}}", json!({}))
        .await;
    let n = &r["data"]["outlineNodes"]["edges"][0]["node"];
    let method = node::parse_method(n["method"].as_str().expect("m")).expect("method");
    let cfg = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        n["secret"].as_str().expect("s").to_owned(),
        method,
    )
    .expect("cfg");
    let ctx = shadowsocks_service::shadowsocks::context::Context::new_shared(ServerType::Local);
    let open = |dest: SocketAddr| {
        let (cert, device, cfg, ctx) = (
            dir.path().join("gw.crt"),
            device.clone(),
            cfg.clone(),
            ctx.clone(),
        );
        async move {
            let ws = common::gateway_ws(port, &cert, &format!("/ws/{device}/tcp")).await;
            let mut s = ProxyClientStream::from_stream(
                ctx,
                httvps_dataplane::wsio::WsIo::new(ws),
                &cfg,
                Address::SocketAddress(dest),
            );
            s.write_all(b"go").await.expect("request");
            s.flush().await.expect("flush");
            s
        }
    };
    // Warm up (TLS, validation, buffers) on a small echo tunnel first.
    let echo = echo_server().await;
    let mut warm = open(echo).await;
    let mut back = [0u8; 2];
    warm.read_exact(&mut back).await.expect("echo");
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);
    // The client stops reading while the node pushes.
    let mut slow = open(target).await;
    let mut peak = base;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_kib(pid));
    }
    let pushed = plane.nodes[0].1.tx();
    let growth = peak.saturating_sub(base);
    eprintln!(
        "slow reader: gateway RSS {base} KiB -> peak {peak} KiB (growth {growth} KiB); \
         node had sent {pushed} of {TOTAL} bytes"
    );
    assert!(growth < 16 * 1024, "the gateway grew by {growth} KiB");
    assert!(
        pushed < TOTAL / 4,
        "no backpressure: the node sent {pushed} bytes"
    );
    // Reading again, every byte arrives.
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    while got < TOTAL {
        let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
            .await
            .expect("data in time")
            .unwrap_or_else(|e| panic!("read after {got} bytes: {e}"));
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert_eq!(got, TOTAL, "every byte arrived once the client read again");
    gw.sigkill().await;
}

/// `httvps-relay gateway` as a process of its own on `plane` (a
/// self-signed certificate in `dir`, `--public-url https://localhost`),
/// registered under `registered`, draining `drain_secs`; its address, from
/// its log, and its log as it goes on.
async fn gateway_binary(
    plane: &Plane,
    dir: &std::path::Path,
    registered: &str,
    drain_secs: u64,
) -> (
    tokio::process::Child,
    SocketAddr,
    Arc<std::sync::Mutex<String>>,
) {
    let r = plane
        .gql(
            "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token}}",
            json!({"n": format!("gw-bin-{drain_secs}"), "u": registered}),
        )
        .await;
    let token = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args([
            "gateway",
            "--backend",
            &plane.server.base,
            "--token",
            &token,
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(dir.join("c.pem"))
        .arg("--key")
        .arg(dir.join("k.pem"))
        .args(["--public-url", "https://localhost", "--drain-grace-secs"])
        .arg(drain_secs.to_string())
        .env("BACKEND_LOG_FORMAT", "json")
        .env("GATEWAY_SELF_SIGNED", "true")
        .env("GATEWAY_DATA_DIR", dir)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("httvps-relay gateway");
    // Its log line names the bound address.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut addr: Option<SocketAddr> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while addr.is_none() && tokio::time::Instant::now() < deadline {
        let mut line = String::new();
        let n = tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line),
        )
        .await
        .expect("log in time")
        .expect("read");
        if n == 0 {
            break;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "gateway listening"
        {
            addr = v["addr"].as_str().and_then(|a| a.parse().ok());
        }
    }
    // The rest of the log is read on, so the gateway never blocks on it.
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let kept = log.clone();
    tokio::spawn(async move {
        let mut line = String::new();
        while matches!(
            tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await,
            Ok(1..)
        ) {
            kept.lock()
                .expect("log")
                .push_str(&std::mem::take(&mut line));
        }
    });
    (child, addr.expect("the gateway logged its address"), log)
}

/// Sends `signal` (`TERM`, `INT`) to `child`.
fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A second signal during the drain ends the gateway at once (a double
/// Ctrl-C waited out the whole drain grace); what it counted is in its
/// spool for the next start, as after a crash.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_cuts_the_gateway_drain_short() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let plane = Plane::start(1).await;
    let dir = common::tempdir::TempDir::new();
    // Registered under another URL than its own: its first heartbeat's
    // answer makes it say so.
    let (mut child, addr, log) =
        gateway_binary(&plane, dir.path(), "https://gw-bin.localhost:8443", 60).await;
    let said = "differs from the URL this gateway is registered under";
    for _ in 0..100 {
        if log.lock().expect("log").contains(said) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.lock().expect("log").contains(said), "no warning");
    // An open tunnel, which the drain would wait 60 s for.
    let connector = tls::connector(Some(&dir.path().join("c.pem"))).expect("connector");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = connector.connect(name, tcp).await.expect("tls");
    let req = format!("wss://localhost/ws/{}/tcp", plane.device_token)
        .into_client_request()
        .expect("request");
    let (_ws, _) = tokio_tungstenite::client_async(req, s)
        .await
        .expect("a tunnel");
    signal(&child, "TERM");
    // Still draining a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(child.try_wait().expect("wait").is_none(), "no drain");
    let hurried = std::time::Instant::now();
    signal(&child, "INT");
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("ended within 5 s of the second signal")
        .expect("wait");
    assert_eq!(exit.code(), Some(130), "{exit:?}");
    assert!(hurried.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_binary_serves_then_exits_cleanly_on_sigterm() {
    let plane = Plane::start(1).await;
    let dir = common::tempdir::TempDir::new();
    let (mut child, addr, log) = gateway_binary(&plane, dir.path(), "https://localhost", 1).await;
    // It speaks TLS with the generated certificate and refuses unknown paths.
    let connector = tls::connector(Some(&dir.path().join("c.pem"))).expect("connector");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("tls");
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    assert!(
        String::from_utf8_lossy(&all).starts_with("HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&all)
    );
    // SIGTERM: drain, flush, exit 0.
    signal(&child, "TERM");
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exited in time")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    // Registered under its own URL (its first heartbeat was answered
    // before the drain's last report): no warning.
    for _ in 0..50 {
        if log.lock().expect("log").contains("gateway stopped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = log.lock().expect("log").clone();
    assert!(log.contains("gateway stopped"), "{log}");
    assert!(!log.contains("differs from the URL"), "{log}");
}

/// A client frame as raw bytes: masked with a fixed key unless `masked`
/// is false.
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let bit = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(bit | payload.len() as u8);
    } else if let Ok(len) = u16::try_from(payload.len()) {
        out.push(bit | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The code of the first Close the gateway sends on `s` within 5 s
/// (skipping data and Pings), or `None` when it closes without one.
async fn close_code<S: AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).await.ok()?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    s.read_exact(&mut b).await.ok()?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            s.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the gateway answers within 5 s")
}

/// Frames a client may not send (RFC 6455): each fails its tunnel with
/// Close 1002 (1007 for a Close reason that is not UTF-8), over TCP and UDP
/// tunnels; a well-formed Close still gets the ordinary 1000.
#[tokio::test(flavor = "multi_thread")]
async fn frames_that_break_the_websocket_protocol_fail_the_tunnel_with_1002() {
    let plane = Plane::start(1).await;
    let token = plane.device_token.clone();
    let close = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        client_frame(0x88, &p, true)
    };
    let pong_126 = client_frame(0x8a, &[0u8; 126], true);
    let cases: Vec<(&str, &str, Vec<u8>, Option<u16>)> = vec![
        (
            "unmasked binary",
            "tcp",
            client_frame(0x82, b"hello", false),
            Some(1002),
        ),
        (
            "unmasked after a masked frame",
            "tcp",
            [
                client_frame(0x82, b"x", true),
                client_frame(0x82, b"y", false),
            ]
            .concat(),
            Some(1002),
        ),
        (
            "unmasked close",
            "tcp",
            client_frame(0x88, &1000u16.to_be_bytes(), false),
            Some(1002),
        ),
        (
            "continuation without a start",
            "tcp",
            client_frame(0x80, b"abc", true),
            Some(1002),
        ),
        (
            "a new message inside a fragmented one",
            "tcp",
            [
                client_frame(0x02, b"a", true),
                client_frame(0x82, b"b", true),
            ]
            .concat(),
            Some(1002),
        ),
        ("close code 999", "tcp", close(999, b""), Some(1002)),
        ("close code 1005", "tcp", close(1005, b""), Some(1002)),
        (
            "one-byte close",
            "tcp",
            client_frame(0x88, &[3], true),
            Some(1002),
        ),
        (
            "close reason not UTF-8",
            "tcp",
            close(1000, &[0xc3, 0x28]),
            Some(1007),
        ),
        ("pong of 126 bytes", "tcp", pong_126, Some(1002)),
        (
            "reserved bit",
            "tcp",
            client_frame(0xc2, b"z", true),
            Some(1002),
        ),
        (
            "unmasked datagram",
            "udp",
            client_frame(0x82, b"dgram", false),
            Some(1002),
        ),
        ("close code 999 on udp", "udp", close(999, b""), Some(1002)),
        (
            "a well-formed close",
            "udp",
            close(1000, b"bye"),
            Some(1000),
        ),
        (
            "a well-formed close",
            "tcp",
            close(4000, b"bye"),
            Some(1000),
        ),
    ];
    for (name, kind, bytes, want) in cases {
        let mut s = plane.tls().await;
        s.write_all(&upgrade_request(&format!("/ws/{token}/{kind}"), ""))
            .await
            .expect("upgrade");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.expect("read");
            assert!(n > 0, "{name}: closed before answering");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{name}");
        s.write_all(&bytes).await.expect("send");
        assert_eq!(close_code(&mut s).await, want, "{name}");
    }
    // Still serving.
    let socks = plane.client().await;
    let body = random_body(20_000);
    let web = http_server(body.clone()).await;
    assert_eq!(fetch(socks, web).await, *body);
}

/// A datagram sent as a fragmented message (as clients whose write buffer
/// is smaller than the datagram send it) reaches its destination whole,
/// and the answer comes back; a fragmented message past 64 KiB closes the
/// tunnel with 1009.
#[tokio::test(flavor = "multi_thread")]
async fn a_datagram_sent_in_fragments_crosses_a_udp_tunnel_whole() {
    use shadowsocks_service::shadowsocks::config::ServerType;
    use shadowsocks_service::shadowsocks::context::Context;
    use shadowsocks_service::shadowsocks::relay::Address;
    use shadowsocks_service::shadowsocks::relay::udprelay::crypto_io::{
        decrypt_server_payload, encrypt_client_payload,
    };
    use shadowsocks_service::shadowsocks::relay::udprelay::options::UdpSocketControlData;
    let plane = Plane::start(1).await;
    let cfg = plane.cipher().await;
    let ctx = Context::new_shared(ServerType::Local);
    // An echo that answers with the length it received.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(format!("got {n}").as_bytes(), from).await;
        }
    });
    let payload: Vec<u8> = (0..9_000u32).map(|i| (i % 251) as u8).collect();
    let mut packet = bytes::BytesMut::new();
    encrypt_client_payload(
        &ctx,
        cfg.method(),
        cfg.key(),
        &Address::SocketAddress(echo_addr),
        &UdpSocketControlData::default(),
        cfg.identity_keys(),
        &payload,
        &mut packet,
    );
    let token = plane.device_token.clone();
    let open = || async {
        let mut s = plane.tls().await;
        s.write_all(&upgrade_request(&format!("/ws/{token}/udp"), ""))
            .await
            .expect("upgrade");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert!(s.read(&mut b).await.expect("read") > 0, "closed");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        s
    };
    let mut s = open().await;
    // Three fragments, a Ping between two of them.
    let (a, rest) = packet.split_at(4_000);
    let (b, c) = rest.split_at(4_000);
    let mut wire = client_frame(0x02, a, true);
    wire.extend(client_frame(0x89, b"p", true));
    wire.extend(client_frame(0x00, b, true));
    wire.extend(client_frame(0x80, c, true));
    s.write_all(&wire).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await.expect("frame");
            let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
            s.read_exact(&mut payload).await.expect("payload");
            if head[0] & 0x0f == 0x2 {
                return payload;
            }
        }
    })
    .await
    .expect("an answer within 5 s");
    let mut answer = answer;
    let (n, from, _) =
        decrypt_server_payload(&ctx, cfg.method(), cfg.key(), &mut answer).expect("decrypt");
    assert_eq!(from, Address::SocketAddress(echo_addr));
    assert_eq!(&answer[..n], b"got 9000", "the destination got it whole");
    // Past 64 KiB in fragments: 1009.
    let mut s = open().await;
    let mut wire = client_frame(0x02, &[0u8; 40_000], true);
    wire.extend(client_frame(0x80, &[0u8; 30_000], true));
    s.write_all(&wire).await.expect("send");
    assert_eq!(close_code(&mut s).await, Some(1009));
    // Past what one UDP datagram carries (65,507 bytes), as one message
    // or in fragments just past it: 1009 too, never dropped in silence
    // (and charged) as one the node's socket cannot send.
    for wire in [
        client_frame(0x82, &vec![0u8; 100 * 1024], true),
        [
            client_frame(0x02, &[0u8; 40_000], true),
            client_frame(0x80, &[0u8; 25_520], true),
        ]
        .concat(),
    ] {
        let mut s = open().await;
        // The gateway may answer (and close) before the last bytes are
        // taken: a failed write is no failure here.
        let _ = s.write_all(&wire).await;
        assert_eq!(close_code(&mut s).await, Some(1009));
    }
}

/// The client's SOCKS5 front answers a CONNECT that names no destination
/// (port 0, an empty host name) with "host unreachable" instead of
/// "succeeded" and a tunnel to nowhere, and drops a local connection that
/// never sends its request instead of keeping it open.
#[tokio::test(flavor = "multi_thread")]
async fn the_socks_front_refuses_what_names_no_destination_and_drops_the_silent() {
    let plane = Plane::start(1).await;
    let socks = plane.client().await;
    let refused = |request: Vec<u8>| async move {
        let mut s = TcpStream::connect(socks).await.expect("connect");
        s.write_all(&[5, 1, 0]).await.expect("greet");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.expect("method");
        s.write_all(&request).await.expect("request");
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).await.expect("reply");
        rep[1]
    };
    // CONNECT 127.0.0.1:0, then CONNECT "":80 (a zero-length name).
    assert_eq!(refused(vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 0]).await, 4);
    assert_eq!(refused(vec![5, 1, 0, 3, 0, 0, 80]).await, 4);
    // A real destination still gets its tunnel.
    let echo = echo_server().await;
    let mut ok = common::socks_connect(socks, echo)
        .await
        .expect("a CONNECT to a real destination");
    ok.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    ok.read_exact(&mut got).await.expect("echo");
    assert_eq!(&got, b"ping");

    // Connected, silent: closed after the handshake deadline (10 s).
    let mut silent = TcpStream::connect(socks).await.expect("connect");
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a silent SOCKS5 connection stayed open: {closed:?}"
    );
}
