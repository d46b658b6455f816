//! Revocation reaches every tunnel: rotating a device's token closes every
//! tunnel opened with the old token or with a device JWT exchanged for it,
//! on every gateway, within 5 seconds (production timings); both old
//! credentials are refused at once afterwards, the new token works. An
//! admin closing one session closes its tunnels within 5 seconds too (on a
//! gateway that heartbeats once a minute: the access event does it), and
//! the device's next tunnel gets a new session.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::link::ControlLink;
use httvps_control::accounts::{self, Role};
use httvps_dataplane::backend::Backend;
use httvps_dataplane::{gateway, tls};
use plane::{GatewayWs, Plane, SsStream, echo_server, round_trip, ss_over};
use serde_json::json;
use shadowsocks_service::shadowsocks::config::ServerConfig as Key;
use tokio::net::{TcpListener, TcpStream};

/// Production timings: 5 s heartbeats and cache, 2 s reports.
fn production(o: &mut gateway::GatewayOptions) {
    let d = gateway::GatewayOptions::default();
    o.report_every = d.report_every;
    o.heartbeat_every = d.heartbeat_every;
    o.cache_ttl = d.cache_ttl;
}

/// A second gateway of region `eu` on the same control plane; its address.
async fn second_gateway(plane: &Plane) -> SocketAddr {
    let token = plane.register_gateway("gw2").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut opts = gateway::GatewayOptions {
        public_url: format!("https://localhost:{}", addr.port()),
        max_frame: 64 * 1024,
        ..Default::default()
    };
    production(&mut opts);
    let acceptor = tls::acceptor(&plane.cert, &plane.key).expect("acceptor");
    let backend = Backend::new(&plane.server.base, &token).expect("backend");
    tokio::spawn(async move {
        let _ = gateway::run(
            opts,
            backend,
            acceptor,
            listener,
            None,
            std::future::pending::<()>(),
        )
        .await;
    });
    addr
}

/// A WebSocket upgrade on the gateway at `gw` with the path token or, when
/// given, a device JWT as `Authorization: Bearer`; the refusal's status.
async fn ws_at(
    plane: &Plane,
    gw: SocketAddr,
    token: &str,
    bearer: Option<&str>,
) -> Result<GatewayWs, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(gw).await.expect("connect");
    let s = plane.tls_over(tcp).await.map_err(|_| 0u16)?;
    let mut req = format!("wss://localhost/ws/{token}/tcp")
        .into_client_request()
        .expect("request");
    if let Some(b) = bearer {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {b}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::client_async(req, s).await {
        Ok((w, _)) => Ok(w),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// An echo tunnel that works.
async fn tunnel(
    plane: &Plane,
    gw: SocketAddr,
    token: &str,
    bearer: Option<&str>,
    key: &Key,
    echo: SocketAddr,
) -> SsStream {
    let w = ws_at(plane, gw, token, bearer).await.expect("tunnel opens");
    let mut s = ss_over(w, key, echo);
    assert!(round_trip(&mut s, b"hello").await, "tunnel echoes");
    s
}

/// How long until `s` stops echoing, polling every 50 ms up to `limit`.
async fn closed_within(s: &mut SsStream, limit: Duration, since: Instant) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while since.elapsed() < limit {
        let exchange = async {
            s.write_all(b"ping").await?;
            s.flush().await?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(Duration::from_millis(500), exchange).await {
            Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return Some(since.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the closing times are reported for the record"
)]
async fn rotating_a_token_closes_old_tunnels_on_every_gateway_within_5_seconds() {
    let plane = Plane::start_with(1, production).await;
    let gw2 = second_gateway(&plane).await;
    let gw1 = plane.gateway_addr;
    let key = plane.cipher().await;
    let echo = echo_server().await;
    let old = plane.device_token.clone();
    let jwt = Backend::new(&plane.server.base, &old)
        .expect("backend")
        .device_jwt()
        .await
        .expect("device JWT")
        .token
        .expose()
        .to_owned();
    let mut tunnels = vec![
        (
            "gateway 1, old token",
            tunnel(&plane, gw1, &old, None, &key, echo).await,
        ),
        (
            "gateway 2, old token",
            tunnel(&plane, gw2, &old, None, &key, echo).await,
        ),
        (
            "gateway 1, old token again",
            tunnel(&plane, gw1, &old, None, &key, echo).await,
        ),
        (
            "gateway 2, device JWT",
            tunnel(&plane, gw2, &old, Some(&jwt), &key, echo).await,
        ),
    ];

    let rotated = Instant::now();
    let r = plane
        .gql(
            "mutation($d:UUID!){rotateDeviceToken(id:$d){accessToken}}",
            json!({"d": plane.device_id}),
        )
        .await;
    let new = r["data"]["rotateDeviceToken"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for (what, s) in &mut tunnels {
        let took = closed_within(s, Duration::from_secs(5), rotated).await;
        eprintln!("{what}: closed after {took:?}");
        assert!(took.is_some(), "{what}: still open 5 s after the rotation");
    }
    // Both old credentials are refused everywhere, the new token works.
    for gw in [gw1, gw2] {
        assert_eq!(ws_at(&plane, gw, &old, None).await.err(), Some(404));
        assert_eq!(ws_at(&plane, gw, &old, Some(&jwt)).await.err(), Some(404));
        let mut s = tunnel(&plane, gw, &new, None, &key, echo).await;
        assert!(round_trip(&mut s, b"new token").await);
    }
}

/// Revokes the plane's device.
async fn revoke(plane: &Plane) {
    plane
        .gql(
            "mutation($d:UUID!){revokeDevice(id:$d){status}}",
            json!({"d": plane.device_id}),
        )
        .await;
}

/// The gateway metric counting the tunnels that hold places.
const OPEN_TUNNELS: &str = "httvps_gateway_open_tunnels";

/// Waits until the gateway whose admin listener is `admin` counts no open
/// tunnel, failing once `limit` has passed since `since` (`what` says
/// since when, for the message).
async fn until_no_tunnel_is_open(admin: SocketAddr, since: Instant, limit: Duration, what: &str) {
    while common::metric(admin, OPEN_TUNNELS).await > 0.0 {
        assert!(
            since.elapsed() < limit,
            "tunnels still open {limit:?} {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A destination that, once spoken to, sends as fast as it can; when
/// each of its connections ended (its writes failed).
async fn flood() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ended = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ended.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_ok() {
                    let chunk = vec![0u8; 64 * 1024];
                    while s.write_all(&chunk).await.is_ok() {}
                }
                seen.lock().expect("ended").push(Instant::now());
            });
        }
    });
    (addr, ended)
}

/// Revoking a device whose tunnels' clients read nothing (their queues
/// full, the node's connections and the destinations' waiting) ends the
/// destinations' connections within 5 s: the gateway drops a tunnel's
/// node connection when the tunnel closes. It waited for the frames
/// queued ahead of the Close and for the client's answer, 3 s each: a
/// slow reader's destination was read from for 6 s after a revocation.
#[tokio::test(flavor = "multi_thread")]
#[expect(
    clippy::print_stderr,
    reason = "the closing times are reported for the record"
)]
async fn revoking_a_device_ends_its_destinations_within_5_seconds_whoever_reads_slowly() {
    use tokio::io::AsyncWriteExt;
    let plane = Plane::start_with(1, production).await;
    let key = plane.cipher().await;
    let (target, ended) = flood().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let w = ws_at(&plane, plane.gateway_addr, &plane.device_token, None)
            .await
            .expect("tunnel");
        let mut s = ss_over(w, &key, target);
        s.write_all(b"go").await.expect("write");
        s.flush().await.expect("flush");
        // Never read: the gateway's queue, the sockets and the node's
        // connection fill up.
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ended.lock().expect("ended").is_empty(), "both still open");
    let revoked = Instant::now();
    revoke(&plane).await;
    let limit = Duration::from_secs(5);
    while ended.lock().expect("ended").len() < 2 && revoked.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended: Vec<Duration> = ended
        .lock()
        .expect("ended")
        .iter()
        .map(|t| t.saturating_duration_since(revoked))
        .collect();
    eprintln!("destinations' connections ended after {ended:?}");
    assert_eq!(ended.len(), 2, "ended within {limit:?}: {ended:?}");
    // The tunnels themselves, whose clients still read nothing, give their
    // places back once their Close has waited 3 s for room, while their
    // sockets wait for the writer: they held them about a minute (30 s
    // for a frame written, 30 s more for an answer to a Close never sent).
    let admin = plane.admin_addr.expect("admin listener");
    until_no_tunnel_is_open(
        admin,
        revoked,
        Duration::from_secs(10),
        "after the revocation",
    )
    .await;
    eprintln!("tunnels closed after {:?}", revoked.elapsed());
    drop(held);
}

/// A tunnel cut at its allowance's end whose client reads nothing gives
/// its places back within seconds too (it held them 30 s: the quota's
/// cut ended the tunnel by another path than a revocation's).
#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_cut_at_its_allowance_gives_its_places_back_while_its_client_reads_nothing() {
    use tokio::io::AsyncWriteExt;
    let plane = Plane::start_with(1, production).await;
    let key = plane.cipher().await;
    let admin = plane.admin_addr.expect("admin listener");
    let (target, _) = flood().await;
    let r = plane
        .gql("{subscriptions{edges{node{id}}}}", json!({}))
        .await;
    let sub = r["data"]["subscriptions"]["edges"][0]["node"]["id"].clone();
    let r = plane
        .gql(
            "mutation($id:UUID!){setSubscriptionTrafficLimit(id:$id,trafficLimitBytes:\"1000000\"){id}}",
            json!({ "id": sub }),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let w = ws_at(&plane, plane.gateway_addr, &plane.device_token, None)
        .await
        .expect("tunnel");
    let mut s = ss_over(w, &key, target);
    s.write_all(b"go").await.expect("write");
    s.flush().await.expect("flush");
    // Never read: the allowance is spent into the queue and the sockets.
    let t0 = Instant::now();
    until_no_tunnel_is_open(admin, t0, Duration::from_secs(15), "after it started").await;
    drop(s);
}

/// Revoking a device whose upload waits for a slow destination (the
/// node's connection full) ends the tunnel within 5 s: the cut shuts the
/// node connection's writing half, so the upload waiting on it fails at
/// once (it held the tunnel, and the node connection, until the deadline
/// for the client's answer, 30 s after the last frame).
#[tokio::test(flavor = "multi_thread")]
async fn revoking_a_device_ends_a_blocked_upload_within_5_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let plane = Plane::start_with(1, production).await;
    let key = plane.cipher().await;
    let admin = plane.admin_addr.expect("admin listener");
    // Takes a kilobyte every 200 ms.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf).await, Ok(1..)) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let w = ws_at(&plane, plane.gateway_addr, &plane.device_token, None)
        .await
        .expect("tunnel");
    let mut s = ss_over(w, &key, target);
    s.write_all(b"go").await.expect("write");
    s.flush().await.expect("flush");
    let uploader = tokio::spawn(async move {
        let chunk = vec![0u8; 16 * 1024];
        while s.write_all(&chunk).await.is_ok() && s.flush().await.is_ok() {}
    });
    // The node's connection and the sockets fill up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(common::metric(admin, OPEN_TUNNELS).await, 1.0);
    let revoked = Instant::now();
    revoke(&plane).await;
    until_no_tunnel_is_open(
        admin,
        revoked,
        Duration::from_secs(5),
        "after the revocation",
    )
    .await;
    uploader.abort();
}

/// A client that reads slowly through a revocation, pinging now and then,
/// gets what was queued for it and then the Close (1008 "session
/// closed"), not a reset: the tunnel reads the client's bytes to their
/// end once it is cut, where it stopped reading them, and the socket's
/// close with the client's Pings unread turned into a reset that cost the
/// client the end of its queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_gets_its_close_after_a_revocation() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let plane = Plane::start_with(1, production).await;
    let key = plane.cipher().await;
    let (target, _) = flood().await;
    let w = ws_at(&plane, plane.gateway_addr, &plane.device_token, None)
        .await
        .expect("tunnel");
    // The Shadowsocks request by hand: a stream to `target` and one byte.
    let (mut ws, request) = {
        use tokio::io::AsyncWriteExt;
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut s = shadowsocks_service::shadowsocks::ProxyClientStream::from_stream(
            shadowsocks_service::shadowsocks::context::Context::new_shared(
                shadowsocks_service::shadowsocks::config::ServerType::Local,
            ),
            client,
            &key,
            target,
        );
        s.write_all(b"go").await.expect("write");
        s.flush().await.expect("flush");
        let mut request = vec![0u8; 64 * 1024];
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut request)
            .await
            .expect("request");
        request.truncate(n);
        (w, request)
    };
    ws.send(Message::Binary(request.into()))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(1)).await;
    revoke(&plane).await;
    // About 400 KB/s, a Ping every 2 s (as WebSocket libraries keep a
    // connection alive): the queue and the socket buffers take seconds.
    let t0 = Instant::now();
    let mut pinged = Instant::now();
    let close = loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "no end in 60 s");
        if pinged.elapsed() > Duration::from_secs(2) {
            let _ = ws.send(Message::Ping(Vec::new().into())).await;
            pinged = Instant::now();
        }
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(150)).await,
            other => panic!("the stream ended without a Close: {other:?}"),
        }
    };
    let frame = close.expect("a code");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1008, "session closed")
    );
}

/// The open sessions: each one's id and its gateway's public URL.
async fn open_sessions(plane: &Plane) -> Vec<(String, String)> {
    let r = plane
        .gql(
            "{sessions(filter:{open:true}){nodes{id gatewayNode{publicUrl}}}}",
            json!({}),
        )
        .await;
    r["data"]["sessions"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|n| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (text(&n["id"]), text(&n["gatewayNode"]["publicUrl"]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_closes_one_session_its_tunnels_close_and_the_device_gets_a_new_one() {
    const CLOSE: &str = "mutation($id:UUID!){closeSession(id:$id){id endedAt endReason}}";
    // The first gateway beats and reports once a minute: only the close's
    // access event can make it close the tunnel within seconds.
    let plane = Plane::start_with(1, |o| {
        production(o);
        o.heartbeat_every = Duration::from_secs(60);
        o.report_every = Duration::from_secs(60);
    })
    .await;
    let gw2 = second_gateway(&plane).await;
    let gw1 = plane.gateway_addr;
    let key = plane.cipher().await;
    let echo = echo_server().await;
    let token = plane.device_token.clone();
    let mut one = tunnel(&plane, gw1, &token, None, &key, echo).await;
    let mut two = tunnel(&plane, gw2, &token, None, &key, echo).await;
    let open = open_sessions(&plane).await;
    assert_eq!(open.len(), 2, "a session per gateway: {open:?}");
    let on_gw1 = format!("https://localhost:{}", gw1.port());
    let (sid, _) = open
        .iter()
        .find(|(_, url)| *url == on_gw1)
        .cloned()
        .unwrap_or_else(|| panic!("no session through {on_gw1}: {open:?}"));

    // A user may not; an unknown session is NOT_FOUND; nothing changed.
    let email = "someone@example.com";
    accounts::create_user(&plane.server.state.db, email, plane::PASSWORD, Role::User)
        .await
        .expect("user");
    let user = plane::login(&plane.server.base, email).await;
    let r = common::gql(&plane.server.base, Some(&user), CLOSE, json!({"id": sid})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN", "{r}");
    let r = plane.gql(CLOSE, json!({"id": uuid::Uuid::new_v4()})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "NOT_FOUND", "{r}");
    assert_eq!(open_sessions(&plane).await.len(), 2);

    let closed = Instant::now();
    let r = plane.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(
        r["data"]["closeSession"]["endReason"], "closed_by_admin",
        "{r}"
    );
    let ended_at = r["data"]["closeSession"]["endedAt"].clone();
    assert!(ended_at.is_string(), "{r}");
    let took = closed_within(&mut one, Duration::from_secs(5), closed).await;
    assert!(took.is_some(), "its tunnel still open 5 s after the close");
    assert!(
        round_trip(&mut two, b"the other session").await,
        "the device's other session runs on"
    );
    // Closed again: answered as it is, its end unchanged.
    let r = plane.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(r["data"]["closeSession"]["endedAt"], ended_at, "{r}");
    let q = format!(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'close_session' AND target_id = '{sid}'"
    );
    assert_eq!(plane.scalar(&q).await, 1, "audited once");

    // The device connects again through the same gateway: a new session.
    let mut again = tunnel(&plane, gw1, &token, None, &key, echo).await;
    assert!(round_trip(&mut again, b"back").await);
    let open = open_sessions(&plane).await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(
        open.iter().all(|(id, _)| *id != sid),
        "a new session, not the closed one"
    );
}

/// Closes one session, as an admin.
const CLOSE: &str = "mutation($id:UUID!){closeSession(id:$id){endReason}}";

/// A plane whose gateway hears no access event (its stream withheld by the
/// link, which must live as long as the plane), heartbeats and reports a
/// minute apart and caches answers for a minute.
async fn deaf_gateway() -> (Plane, ControlLink) {
    let (mut plane, listener) = Plane::prepare(1).await;
    let link = ControlLink::start(&plane.server.base).await;
    link.withhold_events(true);
    plane.spawn_gateway_via(listener, &link.url, &|o| {
        o.heartbeat_every = Duration::from_secs(60);
        o.report_every = Duration::from_secs(60);
        o.cache_ttl = Duration::from_secs(60);
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    (plane, link)
}

/// A gateway that never hears of the close (its event stream withheld,
/// heartbeats and reports a minute apart, answers cached for a minute):
/// the first tunnel after the close meets the ended session's refused
/// grant, which drops the answer cached for the device, and the gateway
/// admits the tunnel once more, on a new session: the device is never
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_missed_a_close_moves_the_device_to_a_new_session() {
    let (plane, _link) = deaf_gateway().await;
    let (gw, key, echo) = (
        plane.gateway_addr,
        plane.cipher().await,
        echo_server().await,
    );
    let token = plane.device_token.clone();
    drop(tunnel(&plane, gw, &token, None, &key, echo).await);
    // The grant goes back 2 s after the session's last tunnel (a request
    // of its own): then the next tunnel has to ask for one.
    let asked = plane.grant_requests().await;
    let t0 = Instant::now();
    while plane.grant_requests().await == asked && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        plane.grant_requests().await > asked,
        "the grant was given back"
    );
    let open = open_sessions(&plane).await;
    assert_eq!(open.len(), 1, "{open:?}");
    let sid = open[0].0.clone();
    let r = plane.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(
        r["data"]["closeSession"]["endReason"], "closed_by_admin",
        "{r}"
    );

    // The first tunnel after the close already works, on a new session.
    let mut s = tunnel(&plane, gw, &token, None, &key, echo).await;
    assert!(round_trip(&mut s, b"a new session").await);
    let open = open_sessions(&plane).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_ne!(open[0].0, sid, "a new session");
}

/// The body of `GET path` on the plane's gateway.
async fn document(plane: &Plane, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = plane.tls().await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all).await;
    String::from_utf8_lossy(&all).into_owned()
}

/// A tunnel that learns from its own grant's answer that an admin closed
/// its session (the gateway missed the event) is closed; the access
/// document asked for afterwards is the key, not the closed session's
/// refusal: the session is forgotten and the device routed anew.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_a_tunnel_found_closed_does_not_refuse_the_access_document() {
    let (plane, _link) = deaf_gateway().await;
    let (key, echo) = (plane.cipher().await, echo_server().await);
    let token = plane.device_token.clone();
    let mut s = tunnel(&plane, plane.gateway_addr, &token, None, &key, echo).await;
    let open = open_sessions(&plane).await;
    assert_eq!(open.len(), 1, "{open:?}");
    let r = plane.gql(CLOSE, json!({"id": open[0].0})).await;
    assert_eq!(
        r["data"]["closeSession"]["endReason"], "closed_by_admin",
        "{r}"
    );
    // The plan's allowance is sliced (8 MiB a grant): the tunnel asks for
    // its next grant once it moved half of one, and hears of the close.
    let chunk = vec![7u8; 64 * 1024];
    let mut moved = 0;
    while moved < 64 && round_trip(&mut s, &chunk).await {
        moved += 1;
    }
    assert!(moved < 64, "the tunnel closed once its grant was refused");
    let doc = document(&plane, &format!("/c/{token}")).await;
    assert!(doc.contains("transport:"), "the key, not a refusal: {doc}");
    assert!(!doc.contains("error:"), "{doc}");
    // The document routed the device anew: a new session is open.
    let now_open = open_sessions(&plane).await;
    assert_eq!(now_open.len(), 1, "{now_open:?}");
    assert_ne!(now_open[0].0, open[0].0, "a new session");
}
