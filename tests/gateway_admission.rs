//! The gateway's admission under hostile traffic, end to end on 127.0.0.1
//! (real TLS, WebSocket and Shadowsocks; the control plane on PostgreSQL):
//! the connection budget sheds before TLS, a tunnel refused at its
//! device's cap costs no node connection and no control-plane call, the
//! cap counts a device's tunnels whatever credential each presents, a
//! source guessing tokens is shut out while every other source is served,
//! checks in flight are shared and bounded, and a known device's stale
//! answer serves its tunnels at once while one refresh runs.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::link::Needles;
use httvps_dataplane::backend::Backend;
use plane::{Plane, echo_server, round_trip, ss_over};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP forwarder to `to` counting the connections it accepts.
async fn counting_forwarder(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// An HTTP proxy of our own in front of the control plane at `base`,
/// counting the requests whose request line is `POST <path>`.
async fn counting_proxy(base: &str, path: &str) -> (String, Arc<AtomicUsize>) {
    holding_proxy(base, path, Duration::ZERO, Duration::ZERO).await
}

/// [`counting_proxy`], holding each of those requests for `hold` before it
/// goes on, and its answer for `hold_answer` (a slow control plane, a slow
/// link back).
async fn holding_proxy(
    base: &str,
    path: &str,
    hold: Duration,
    hold_answer: Duration,
) -> (String, Arc<AtomicUsize>) {
    let upstream: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("control plane address");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let needle: Arc<[u8]> = format!("POST {path} ").into_bytes().into();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (needle, count) = (needle.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut in_r, mut in_w) = inbound.into_split();
                let (mut out_r, mut out_w) = outbound.into_split();
                // Answers owed to those requests on this connection.
                let owed = Arc::new(AtomicUsize::new(0));
                let owing = owed.clone();
                let requests = async move {
                    // Bodies are small JSON: the request line cannot hide in one.
                    let (mut buf, mut lines) = (vec![0u8; 16 * 1024], Needles::new(&needle));
                    while let Ok(n) = in_r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let found = lines.count(&buf[..n]);
                        count.fetch_add(found, Ordering::SeqCst);
                        owing.fetch_add(found, Ordering::SeqCst);
                        if found > 0 {
                            tokio::time::sleep(hold).await;
                        }
                        if out_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = out_w.shutdown().await;
                };
                let answers = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = out_r.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // The first bytes of an owed answer wait.
                        let held = owed
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| o.checked_sub(1))
                            .is_ok();
                        if held {
                            tokio::time::sleep(hold_answer).await;
                        }
                        if in_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = in_w.shutdown().await;
                };
                tokio::join!(requests, answers);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// A device JWT minted through `POST /api/v1/auth/device-token`.
async fn device_jwt(plane: &Plane) -> String {
    Backend::new(&plane.server.base, &plane.device_token)
        .expect("backend")
        .device_jwt()
        .await
        .expect("device JWT")
        .token
        .expose()
        .to_owned()
}

/// The value of `name` on the gateway's admin listener.
async fn gateway_metric(plane: &Plane, name: &str) -> f64 {
    common::metric(plane.admin_addr.expect("admin listener"), name).await
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_budget_are_shed_before_tls_while_a_tunnel_keeps_working() {
    let plane = Plane::start_with(1, |o| {
        o.max_connections = 3;
        o.handshake_timeout = Duration::from_secs(8);
    })
    .await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let path = format!("/ws/{}/tcp", plane.device_token);
    let w = plane.ws_from(None, &path, None).await.expect("a tunnel");
    let mut tunnel = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut tunnel, b"before").await);
    // Two silent connections take the rest of the budget (the tunnel keeps
    // its connection's place); they would wait 8 s for a TLS handshake.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            TcpStream::connect(plane.gateway_addr)
                .await
                .expect("connect"),
        );
    }
    // Connections are accepted in order: make sure both silent ones are.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let tcp = TcpStream::connect(plane.gateway_addr)
            .await
            .expect("connect");
        let handshake = tokio::time::timeout(Duration::from_secs(5), plane.tls_over(tcp)).await;
        assert!(
            matches!(handshake, Ok(Err(_))),
            "a connection beyond the budget got TLS (or waited)"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shed at once: {:?}",
            started.elapsed()
        );
    }
    assert!(
        round_trip(&mut tunnel, b"while shedding").await,
        "the admitted tunnel works"
    );
    assert!(gateway_metric(&plane, "httvps_gateway_shed_connections_total").await >= 5.0);
    // Places come back when connections end.
    drop(silent);
    let mut admitted = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tcp = TcpStream::connect(plane.gateway_addr)
            .await
            .expect("connect");
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), plane.tls_over(tcp)).await,
            Ok(Ok(_))
        ) {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a place freed is taken again");
    assert!(round_trip(&mut tunnel, b"after").await);
}

/// Whether a TLS handshake from `from` (the default source when `None`)
/// succeeds within 5 s.
async fn handshake_from(plane: &Plane, from: Option<IpAddr>) -> bool {
    let tcp = plane::connect_from(from, plane.gateway_addr).await;
    matches!(
        tokio::time::timeout(Duration::from_secs(5), plane.tls_over(tcp)).await,
        Ok(Ok(_))
    )
}

/// One source holds at most its share of connections that carry no tunnel
/// (here 3), however it keeps them busy (requests answered 404 on
/// keep-alive): past it, its new connections are shed before TLS, while
/// its tunnels (which do not count) keep working and other sources are
/// served. One source could hold the whole connection budget this way.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_holds_few_connections_without_a_tunnel_while_its_tunnels_and_others_are_served() {
    let plane = Plane::start_with(1, |o| o.max_connections_per_source = 3).await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let path = format!("/ws/{}/tcp", plane.device_token);
    let mut tunnels = Vec::new();
    for _ in 0..4 {
        let w = plane.ws_from(None, &path, None).await.expect("a tunnel");
        let mut t = ss_over(w, &cfg, echo);
        assert!(round_trip(&mut t, b"a tunnel").await);
        tunnels.push(t);
    }
    let mut bare = Vec::new();
    for i in 0..3 {
        let mut s = plane.tls().await;
        s.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("answer");
        assert_eq!(&head, b"HTTP/1.1 404", "connection {i}");
        bare.push(s);
    }
    for _ in 0..3 {
        assert!(
            !handshake_from(&plane, None).await,
            "a fourth bare connection got TLS"
        );
    }
    assert!(
        handshake_from(&plane, Some("127.0.0.2".parse().expect("ip"))).await,
        "another source is served"
    );
    for t in &mut tunnels {
        assert!(
            round_trip(t, b"still").await,
            "a tunnel of the source works"
        );
    }
    drop(bare.pop());
    let mut admitted = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if handshake_from(&plane, None).await {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "a place given back is taken again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_refused_at_the_device_cap_opens_no_node_connection_and_asks_nothing() {
    let (mut plane, listener) = Plane::prepare(0).await;
    let node = plane.start_node().await;
    let (front, node_connections) = counting_forwarder(node.addr).await;
    plane.register_node("counted", front.port(), node).await;
    let (via, assigns) = counting_proxy(&plane.server.base, "/api/v1/nodes/assign-outline").await;
    plane.spawn_gateway_via(listener, &via, &|o| {
        o.max_tunnels_per_device = 2;
        o.cache_ttl = Duration::from_millis(300);
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let tcp = format!("/ws/{}/tcp", plane.device_token);
    let udp = format!("/ws/{}/udp", plane.device_token);
    let mut open = Vec::new();
    for _ in 0..2 {
        let w = plane
            .ws_from(None, &tcp, None)
            .await
            .expect("under the cap");
        open.push(ss_over(w, &cfg, echo));
    }
    assert!(round_trip(&mut open[0], b"capped").await);
    assert_eq!(node_connections.load(Ordering::SeqCst), 2);
    assert!(assigns.load(Ordering::SeqCst) >= 1);
    // Past the answer's freshness: still no need to ask to refuse.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (asked, connected) = (
        assigns.load(Ordering::SeqCst),
        node_connections.load(Ordering::SeqCst),
    );
    for path in [&tcp, &udp, &tcp, &udp, &tcp] {
        assert_eq!(
            plane.ws_from(None, path, None).await.err(),
            Some(429),
            "{path}"
        );
    }
    assert_eq!(
        assigns.load(Ordering::SeqCst),
        asked,
        "a refusal at the cap asked the control plane"
    );
    assert_eq!(
        node_connections.load(Ordering::SeqCst),
        connected,
        "a refusal at the cap connected to the node"
    );
    // A credential of the same device never seen before is asked about
    // once (to learn whose it is), and still opens nothing.
    let jwt = device_jwt(&plane).await;
    assert_eq!(
        plane.ws_from(None, "/ws/-/tcp", Some(&jwt)).await.err(),
        Some(429)
    );
    assert_eq!(node_connections.load(Ordering::SeqCst), connected);
    // One tunnel ends: the next is admitted and connected.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(w) = plane.ws_from(None, &tcp, None).await {
            reopened = Some(w);
            break;
        }
    }
    let mut again = ss_over(reopened.expect("below the cap again"), &cfg, echo);
    assert!(round_trip(&mut again, b"again").await);
    assert_eq!(node_connections.load(Ordering::SeqCst), connected + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_cap_holds_across_several_device_jwts_of_one_device() {
    let plane = Plane::start_with(1, |o| o.max_tunnels_per_device = 3).await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    // Device JWTs of one second are the same string: mint them apart.
    let mut jwts = Vec::new();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        jwts.push(device_jwt(&plane).await);
    }
    for (i, a) in jwts.iter().enumerate() {
        assert!(!jwts[i + 1..].contains(a), "the JWTs differ");
    }
    let path = format!("/ws/{}/tcp", plane.device_token);
    let mut open = Vec::new();
    for jwt in &jwts[..2] {
        let w = plane
            .ws_from(None, "/ws/-/tcp", Some(jwt))
            .await
            .expect("under the cap");
        open.push(ss_over(w, &cfg, echo));
    }
    let w = plane
        .ws_from(None, &path, None)
        .await
        .expect("under the cap");
    open.push(ss_over(w, &cfg, echo));
    for s in &mut open {
        assert!(round_trip(s, b"one device").await);
    }
    // Three tunnels of one device, by three credentials: the cap is reached
    // for every credential of the device, new or used.
    for jwt in &jwts {
        assert_eq!(
            plane.ws_from(None, "/ws/-/tcp", Some(jwt)).await.err(),
            Some(429),
            "the device is at its cap"
        );
    }
    assert_eq!(plane.ws_from(None, &path, None).await.err(), Some(429));
    assert_eq!(
        plane
            .ws_from(None, &format!("/ws/{}/udp", plane.device_token), None)
            .await
            .err(),
        Some(429)
    );
    // One ends: any credential of the device may take its place.
    drop(open.remove(0));
    let mut reopened = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(w) = plane.ws_from(None, "/ws/-/tcp", Some(&jwts[3])).await {
            reopened = Some(w);
            break;
        }
    }
    let mut s = ss_over(reopened.expect("below the cap again"), &cfg, echo);
    assert!(round_trip(&mut s, b"the fourth JWT").await);
}

/// Sends `request` over TLS from `from`; returns the status and the whole
/// answer (the request asks to close after it).
async fn exchange(plane: &Plane, from: IpAddr, request: &str) -> (u16, String) {
    let tcp = plane::connect_from(Some(from), plane.gateway_addr).await;
    let mut s = plane.tls_over(tcp).await.expect("tls");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// An HTTP/1.1 request head past 32 KiB (one header of 200 KB) is refused
/// (431, or the connection closed) before it is read whole: it was read and
/// held up to hyper's default of about 400 KB per connection, while
/// HTTP/2 caps headers at 16 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_head_is_refused_before_it_is_read_whole() {
    let plane = Plane::start(1).await;
    let tcp = plane::connect_from(None, plane.gateway_addr).await;
    let mut s = plane.tls_over(tcp).await.expect("tls");
    let head = format!(
        "GET /nope HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    // Refused part way, the rest may not be taken.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(head.as_bytes())).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "read whole and answered: {text}"
    );
    // A head a little past the bound, sent in one write (hyper may read it
    // whole in one go), is refused every time, not only when its reads
    // are split past the bound.
    let padded = format!(
        "GET /nope HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(40_000)
    );
    for _ in 0..6 {
        let (status, text) = exchange(&plane, [127, 0, 0, 1].into(), &padded).await;
        assert!(status == 431 || text.is_empty(), "{status}: {text}");
    }
    // A head of the usual size still gets the usual answer.
    assert_eq!(
        exchange(&plane, [127, 0, 0, 1].into(), &get("/nope"))
            .await
            .0,
        404
    );
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// A complete WebSocket upgrade request for `path` (closing after a refusal).
fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn retry_after(answer: &str) -> Option<u64> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_guessing_tokens_gets_429_everywhere_while_other_sources_are_served() {
    // Long enough that a busy machine still runs the checks inside it (one
    // guess comes back every WINDOW / 3).
    const WINDOW: Duration = Duration::from_secs(10);
    let plane = Plane::start_with(1, |o| {
        o.guess_limit = 3;
        o.guess_window = WINDOW;
    })
    .await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    // Another loopback address is the guessing source.
    let guesser: IpAddr = [127, 0, 0, 2].into();
    let legit: IpAddr = [127, 0, 0, 1].into();
    let guess = stranger_path;
    // Only complete upgrade requests are checked, so only they are guesses.
    // Three are allowed at once; on a slow machine one may have come back
    // before the fourth, so guess until refused (bounded).
    let mut allowed = 0;
    let answer = loop {
        let (status, answer) = exchange(&plane, guesser, &upgrade(&guess())).await;
        if status == 429 {
            break answer;
        }
        assert_eq!(status, 404, "within the allowance: {answer}");
        allowed += 1;
        assert!(allowed <= 6, "never refused after {allowed} guesses");
    };
    assert!(allowed >= 3, "refused after {allowed} guesses");
    let retry = retry_after(&answer).unwrap_or_else(|| panic!("no Retry-After: {answer}"));
    assert!((1..=WINDOW.as_secs()).contains(&retry), "{answer}");
    let shut_at = Instant::now();
    // Every request of that source, a valid token the gateway has not
    // admitted yet or not, any path.
    let valid = format!("/ws/{}/tcp", plane.device_token);
    for path in [
        valid.as_str(),
        "/nope",
        &format!("/c/{}", plane.device_token),
        &guess(),
    ] {
        let (status, answer) = exchange(&plane, guesser, &get(path)).await;
        assert_eq!(status, 429, "{path}: {answer}");
        assert!(retry_after(&answer).is_some(), "{answer}");
    }
    assert_eq!(
        plane.ws_from(Some(guesser), &valid, None).await.err(),
        Some(429)
    );
    // Another source: its valid tunnel opens and works, its own guesses
    // and unknown paths get the usual 404.
    let w = plane
        .ws_from(Some(legit), &valid, None)
        .await
        .expect("another source's tunnel");
    let mut s = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut s, b"unaffected").await);
    assert_eq!(exchange(&plane, legit, &get("/nope")).await.0, 404);
    assert_eq!(exchange(&plane, legit, &upgrade(&guess())).await.0, 404);
    // That credential is now in use (admitted, in the cache): from the
    // shut-out source too it is served (a subscriber behind the same NAT
    // as the guesser), while the source's guesses and other paths still
    // get 429.
    let w = plane
        .ws_from(Some(guesser), &valid, None)
        .await
        .expect("a credential in use, from the shut-out source");
    let mut s = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut s, b"behind the same address").await);
    assert_eq!(exchange(&plane, guesser, &upgrade(&guess())).await.0, 429);
    assert_eq!(exchange(&plane, guesser, &get("/nope")).await.0, 429);
    // What drops its verdict (here its session closed by an admin; an
    // access change anywhere does the same) leaves it in use: it still
    // passes (it was shut out with every subscriber behind the address).
    let r = plane
        .gql(
            "{sessions(filter:{open:true}){edges{node{id}}}}",
            serde_json::json!({}),
        )
        .await;
    let open = r["data"]["sessions"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .clone();
    for e in open {
        plane
            .gql(
                "mutation($id:UUID!){closeSession(id:$id){id}}",
                serde_json::json!({"id": e["node"]["id"]}),
            )
            .await;
    }
    for _ in 0..50 {
        if !round_trip(&mut s, b"closed yet?").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !round_trip(&mut s, b"closed").await,
        "the session's tunnel closes"
    );
    let w = plane
        .ws_from(Some(guesser), &valid, None)
        .await
        .expect("a credential in use whose verdict was dropped, from the shut-out source");
    let mut s = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut s, b"still in use").await);
    // A credential in use carries nothing else past the shut-out: the
    // access document reads its path's token only, so a device JWT in use,
    // sent as the header, does not carry a guess of another device's token
    // (here a real one, whose document would give its key away).
    let jwt = device_jwt(&plane).await;
    let w = plane
        .ws_from(Some(legit), "/ws/-/tcp", Some(&jwt))
        .await
        .expect("the JWT's tunnel: now in use");
    drop(w);
    let r = plane
        .gql(
            "mutation{registerDevice(name:\"other\",platform:\"linux\"){accessToken}}",
            serde_json::json!({}),
        )
        .await;
    let other = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    let carried = format!(
        "GET /c/{other} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {jwt}\r\nConnection: close\r\n\r\n"
    );
    let (status, answer) = exchange(&plane, guesser, &carried).await;
    assert_eq!(status, 429, "{answer}");
    assert!(gateway_metric(&plane, "httvps_gateway_throttled_total").await >= 8.0);
    assert!(
        shut_at.elapsed() < WINDOW,
        "the checks ran within the window"
    );
    // After the window the source is served again.
    tokio::time::sleep(WINDOW.saturating_sub(shut_at.elapsed()) + Duration::from_millis(300)).await;
    let w = plane
        .ws_from(Some(guesser), &valid, None)
        .await
        .expect("served after the window");
    let mut s = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut s, b"forgiven").await);
}

/// A path with a well-formed token nobody holds.
fn stranger_path() -> String {
    let t: String = (0..43)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    format!("/ws/{t}/tcp")
}

/// An upgrade request for a stranger's path from `from`, sent in a task of
/// its own: its answer's status.
fn stranger_upgrade(plane: &Arc<Plane>, from: IpAddr) -> tokio::task::JoinHandle<u16> {
    let (plane, path) = (plane.clone(), stranger_path());
    tokio::spawn(async move { exchange(&plane, from, &upgrade(&path)).await.0 })
}

/// Waits (at most 1 s) until `count` reaches `n`.
async fn until_counted(count: &AtomicUsize, n: usize) {
    for _ in 0..50 {
        if count.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plane with one node whose gateway calls the control plane through a
/// [`holding_proxy`] holding `assign-outline` requests for `hold` and their
/// answers for `hold_answer`, gateway settings changed by `customize`;
/// with the count of those requests, once the nodes have beaten.
async fn plane_behind_held_checks(
    hold: Duration,
    hold_answer: Duration,
    customize: &dyn Fn(&mut httvps_dataplane::gateway::GatewayOptions),
) -> (Plane, Arc<AtomicUsize>) {
    let (mut plane, listener) = Plane::prepare(1).await;
    let (via, assigns) = holding_proxy(
        &plane.server.base,
        "/api/v1/nodes/assign-outline",
        hold,
        hold_answer,
    )
    .await;
    plane.spawn_gateway_via(listener, &via, customize);
    tokio::time::sleep(Duration::from_millis(700)).await;
    (plane, assigns)
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnels_opened_at_once_with_one_credential_cost_one_control_plane_call() {
    let (plane, assigns) =
        plane_behind_held_checks(Duration::from_millis(400), Duration::ZERO, &|_| {}).await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let path = format!("/ws/{}/tcp", plane.device_token);
    // Twelve tunnels of a device the gateway has not seen, at once: all
    // wait for the one call about its credential (held 400 ms on the way).
    let opened =
        futures_util::future::join_all((0..12).map(|_| plane.ws_from(None, &path, None))).await;
    assert_eq!(
        assigns.load(Ordering::SeqCst),
        1,
        "one call for twelve tunnels"
    );
    let mut tunnels = Vec::new();
    for w in opened {
        tunnels.push(ss_over(w.expect("admitted"), &cfg, echo));
    }
    for s in &mut tunnels {
        assert!(round_trip(s, b"shared").await);
    }
    // Strangers' requests at once with one unknown token: one call, one
    // guess (the throttle allows 20).
    let unknown = upgrade(&stranger_path());
    let answers = futures_util::future::join_all(
        (0..6).map(|_| exchange(&plane, [127, 0, 0, 2].into(), &unknown)),
    )
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 404), "{answers:?}");
    assert_eq!(assigns.load(Ordering::SeqCst), 2);
    assert_eq!(
        gateway_metric(&plane, "httvps_gateway_checks_shed_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strangers_calls_to_the_control_plane_are_bounded_per_source_and_in_all() {
    const HOLD: Duration = Duration::from_millis(1500);
    let (plane, assigns) = plane_behind_held_checks(HOLD, Duration::ZERO, &|o| {
        o.max_pending_checks = 3;
        o.max_pending_checks_per_source = 2;
    })
    .await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
        [127, 0, 0, 2].into(),
        [127, 0, 0, 3].into(),
        [127, 0, 0, 4].into(),
    );
    let valid = format!("/ws/{}/tcp", plane.device_token);
    let plane = Arc::new(plane);
    // Source a: two unknown tokens wait for their calls (held).
    let waiting = [stranger_upgrade(&plane, a), stranger_upgrade(&plane, a)];
    // Source b: the device's own token, never seen by this gateway yet.
    let p = plane.clone();
    let (v, e, k) = (valid.clone(), echo, cfg.clone());
    let device = tokio::spawn(async move {
        let w = p.ws_from(Some(b), &v, None).await?;
        let mut s = ss_over(w, &k, e);
        Ok::<bool, u16>(round_trip(&mut s, b"after the wait").await)
    });
    until_counted(&assigns, 3).await;
    assert_eq!(assigns.load(Ordering::SeqCst), 3);
    // A third of source a's: past its bound, refused at once, no call.
    let started = Instant::now();
    let (status, answer) = exchange(&plane, a, &upgrade(&stranger_path())).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry_after(&answer), Some(1), "{answer}");
    // Source c has none waiting, but three wait in all.
    let (status, answer) = exchange(&plane, c, &upgrade(&stranger_path())).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        started.elapsed() < HOLD / 2,
        "refused at once: {:?}",
        started.elapsed()
    );
    assert_eq!(
        assigns.load(Ordering::SeqCst),
        3,
        "the refused asked nothing"
    );
    assert_eq!(
        gateway_metric(&plane, "httvps_gateway_checks_shed_total").await,
        2.0
    );
    // The calls come back: the strangers get the unknown path's answer and
    // the device its tunnel.
    for w in waiting {
        assert_eq!(w.await.expect("join"), 404);
    }
    assert_eq!(device.await.expect("join"), Ok(true));
    // Places are free again: source c is served.
    assert_eq!(exchange(&plane, c, &upgrade(&stranger_path())).await.0, 404);
    // Once stale for longer than a stale answer is served (the device's
    // answer is over 2 s old, its lifetime 0.5 s), the device's answer is
    // asked again before its tunnel opens; the device is known,
    // so its requests are not counted against strangers' bounds, and three
    // strangers waiting do not turn it away.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = assigns.load(Ordering::SeqCst);
    let waiting = [a, a, c].map(|from| stranger_upgrade(&plane, from));
    until_counted(&assigns, before + 3).await;
    let w = plane
        .ws_from(Some(b), &valid, None)
        .await
        .expect("a known device is not shed");
    let mut s = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut s, b"known").await);
    for w in waiting {
        assert_eq!(w.await.expect("join"), 404);
    }
}

/// A second device of the plane's owner: its access token and id.
async fn another_device(plane: &Plane, name: &str) -> (String, String) {
    let r = plane
        .gql(
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){accessToken device{id}}}",
            serde_json::json!({"n": name}),
        )
        .await;
    let d = &r["data"]["registerDevice"];
    (
        d["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
        d["device"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
    )
}

async fn revoke(plane: &Plane, device: &str) {
    let r = plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            serde_json::json!({"id": device}),
        )
        .await;
    assert_eq!(r["data"]["revokeDevice"]["status"], "REVOKED", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_asked_for_after_access_changes_does_not_wait_for_a_check_begun_before() {
    // The control plane's answers take 1.5 s to come back.
    const HOLD: Duration = Duration::from_millis(1500);
    let (plane, assigns) = plane_behind_held_checks(Duration::ZERO, HOLD, &|o| {
        o.cache_ttl = Duration::from_secs(30);
    })
    .await;
    let plane = Arc::new(plane);
    let from: IpAddr = [127, 0, 0, 1].into();
    let (token, id) = another_device(&plane, "second").await;
    let path = format!("/ws/{token}/tcp");
    // A tunnel of the device: the control plane says yes at once, the
    // answer is on its way back.
    let (p, first) = (plane.clone(), path.clone());
    let opened = tokio::spawn(async move { p.ws_from(Some(from), &first, None).await.is_ok() });
    until_counted(&assigns, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Access changes while it travels (the event stream is not held).
    revoke(&plane, &id).await;
    // Time for the access event to reach the gateway (milliseconds).
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A tunnel asked for after the change does not wait for the call begun
    // before it: it makes its own and is told no. (Given the answer from
    // before, it would be refused all the same further on, at its
    // session's quota grant; the call count is what tells.)
    let started = Instant::now();
    assert_eq!(
        plane.ws_from(Some(from), &path, None).await.err(),
        Some(404)
    );
    assert!(
        started.elapsed() >= HOLD,
        "it was given the answer of the call begun before the revocation"
    );
    assert_eq!(assigns.load(Ordering::SeqCst), 2);
    // The first tunnel's request came before the change; however it was
    // answered, the device is refused afterwards (that the answer is not
    // cached is shown in validator.rs).
    let _ = opened.await.expect("join");
    assert_eq!(
        plane.ws_from(Some(from), &path, None).await.err(),
        Some(404)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_devices_stale_answer_serves_its_tunnels_at_once_while_one_refresh_runs() {
    // The control plane's answers take 2 s to come back, and are fresh for
    // 2 s.
    const HOLD: Duration = Duration::from_secs(2);
    const TTL: Duration = Duration::from_secs(2);
    let (plane, assigns) = plane_behind_held_checks(Duration::ZERO, HOLD, &|o| {
        o.cache_ttl = TTL;
    })
    .await;
    let (echo, cfg) = (echo_server().await, plane.cipher().await);
    let path = format!("/ws/{}/tcp", plane.device_token);
    // The device's first tunnel waits for the first answer.
    let started = Instant::now();
    let w = plane.ws_from(None, &path, None).await.expect("admitted");
    assert!(started.elapsed() >= HOLD);
    let mut first = ss_over(w, &cfg, echo);
    assert!(round_trip(&mut first, b"first").await);
    // Once the answer is stale, four tunnels at once are admitted on it at
    // once, and one refresh goes to the control plane.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let stale = Instant::now();
    let opened =
        futures_util::future::join_all((0..4).map(|_| plane.ws_from(None, &path, None))).await;
    assert!(
        stale.elapsed() < HOLD / 2,
        "the tunnels waited for the refresh: {:?}",
        stale.elapsed()
    );
    for w in opened {
        let mut s = ss_over(w.expect("admitted on the stale answer"), &cfg, echo);
        assert!(round_trip(&mut s, b"stale").await);
    }
    until_counted(&assigns, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(assigns.load(Ordering::SeqCst), 2, "one refresh for four");
    // The refresh's answer is cached: the next tunnel asks nothing.
    tokio::time::sleep((HOLD + Duration::from_millis(500)).saturating_sub(stale.elapsed())).await;
    let w = plane.ws_from(None, &path, None).await.expect("fresh again");
    assert!(round_trip(&mut ss_over(w, &cfg, echo), b"fresh").await);
    assert_eq!(assigns.load(Ordering::SeqCst), 2);
    // An answer more than a lifetime past its freshness is not used: the
    // device's tunnel waits for its call.
    tokio::time::sleep((HOLD + 2 * TTL + Duration::from_secs(1)).saturating_sub(stale.elapsed()))
        .await;
    let started = Instant::now();
    let w = plane.ws_from(None, &path, None).await.expect("admitted");
    assert!(
        started.elapsed() >= HOLD,
        "served an answer past its revalidation window"
    );
    assert!(round_trip(&mut ss_over(w, &cfg, echo), b"checked").await);
    assert_eq!(assigns.load(Ordering::SeqCst), 3);
}
