//! The data plane end to end on 127.0.0.1: control plane (PostgreSQL),
//! gateway (real TLS and WebSocket), Shadowsocks nodes, our SOCKS5 client
//! and a stock client (ss-local with ss-v2ray-plugin).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, TestServer, gql};
use futures_util::{SinkExt, StreamExt};
use httvps::control::accounts::{self, Role};
use httvps::relay::backend::Backend;
use httvps::relay::{client, gateway, node, tls};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery staple";

struct Plane {
    server: TestServer,
    admin: String,
    gateway_addr: SocketAddr,
    cert: std::path::PathBuf,
    device_token: String,
    device_id: String,
    nodes: Vec<(String, Arc<node::RunningNode>, tokio::task::JoinHandle<()>)>,
    _gateway: tokio::task::JoinHandle<()>,
    _dir: common::tempdir::TempDir,
    _db: TestDb,
}

async fn login(base: &str, email: &str) -> String {
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

impl Plane {
    /// Control plane, `nodes` pool nodes in region `eu`, a gateway, and a
    /// device with a subscription.
    async fn start(nodes: usize) -> Plane {
        tls::install_provider();
        let db = TestDb::pg().await;
        let server = TestServer::start(db.dsn.clone(), false).await;
        let base = server.base.clone();
        let root =
            accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
                .await
                .expect("admin");
        let admin = login(&base, "root@example.com").await;
        let r = gql(&base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"100000000\",deviceLimit:3}){id}}", json!({})).await;
        let plan = r["data"]["createPlan"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let me = root.id;
        gql(
            &base,
            Some(&admin),
            "mutation($u:ID!,$p:ID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": me, "p": plan}),
        )
        .await;
        let r = gql(
            &base,
            Some(&admin),
            "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){accessToken device{id}}}",
            json!({}),
        )
        .await;
        let device_token = r["data"]["registerDevice"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let device_id = r["data"]["registerDevice"]["device"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let mut plane_nodes = Vec::new();
        for i in 0..nodes {
            // Start the node first (port 0), then register it where it listens.
            let region = gql(&base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"eu\",name:\"probe\",host:\"127.0.0.1\",port:1}){node{id method secret}}}", json!({})).await;
            let probe = &region["data"]["registerOutlineNode"]["node"];
            let (method, secret) = (
                probe["method"].as_str().expect("m").to_owned(),
                probe["secret"].as_str().expect("s").to_owned(),
            );
            gql(
                &base,
                Some(&admin),
                "mutation($id:ID!){deleteNode(id:$id)}",
                json!({"id": probe["id"]}),
            )
            .await;
            let running = node::start(&node::NodeOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                method: node::parse_method(&method).expect("method"),
                password: secret,
                allow_private: true,
            })
            .await
            .expect("node");
            let r = gql(
                &base,
                Some(&admin),
                "mutation($n:String!,$p:Int!){registerOutlineNode(input:{region:\"eu\",name:$n,host:\"127.0.0.1\",port:$p}){token node{id}}}",
                json!({"n": format!("node{i}"), "p": running.addr.port()}),
            )
            .await;
            let token = r["data"]["registerOutlineNode"]["token"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned();
            let id = r["data"]["registerOutlineNode"]["node"]["id"]
                .as_str()
                .expect("id")
                .to_owned();
            let running = Arc::new(running);
            let beats = node::spawn_heartbeats(
                Backend::new(&base, &token).expect("backend"),
                running.clone(),
                Duration::from_millis(500),
            );
            plane_nodes.push((id, running, beats));
        }
        let dir = common::tempdir::TempDir::new();
        let cert = dir.path().join("gw.crt");
        let key = dir.path().join("gw.key");
        tls::ensure_self_signed(&cert, &key, &["localhost", "127.0.0.1"]).expect("cert");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gateway_addr = listener.local_addr().expect("addr");
        let r = gql(&base, Some(&admin), "mutation($u:String!){registerGatewayNode(input:{region:\"eu\",name:\"gw\",publicUrl:$u}){token}}", json!({"u": format!("https://localhost:{}", gateway_addr.port())})).await;
        let gw_token = r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let opts = gateway::GatewayOptions {
            public_url: format!("https://localhost:{}", gateway_addr.port()),
            report_every: Duration::from_millis(500),
            heartbeat_every: Duration::from_secs(1),
            cache_ttl: Duration::from_millis(500),
            max_frame: 64 * 1024,
            ..Default::default()
        };
        let acceptor = tls::acceptor(&cert, &key).expect("acceptor");
        let backend = Backend::new(&base, &gw_token).expect("backend");
        let gw = tokio::spawn(async move {
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
        // Wait for the nodes' first heartbeats.
        tokio::time::sleep(Duration::from_millis(700)).await;
        Plane {
            server,
            admin,
            gateway_addr,
            cert,
            device_token,
            device_id,
            nodes: plane_nodes,
            _gateway: gw,
            _dir: dir,
            _db: db,
        }
    }

    /// Our client on a free local port; returns the SOCKS address.
    async fn client(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = client::ClientOptions {
            backend: self.server.base.clone(),
            device_token: self.device_token.clone(),
            gateway: Some(format!("https://localhost:{}", self.gateway_addr.port())),
            ca_cert: Some(self.cert.clone()),
            region: None,
        };
        tokio::spawn(async move {
            if let Err(e) = client::run(opts, listener, std::future::pending::<()>()).await {
                panic!("client: {e:#}");
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        addr
    }

    async fn gql(&self, q: &str, vars: Value) -> Value {
        gql(&self.server.base, Some(&self.admin), q, vars).await
    }
}

/// A SOCKS5 CONNECT to `target` through the proxy at `socks`.
async fn socks_connect(socks: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(socks).await.expect("socks connect");
    s.write_all(&[5, 1, 0]).await.expect("greet");
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await.expect("greet reply");
    assert_eq!(r, [5, 0]);
    let SocketAddr::V4(v4) = target else {
        panic!("v4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.expect("request");
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.expect("reply");
    assert_eq!(rep[1], 0, "SOCKS CONNECT refused");
    s
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
    let mut s = socks_connect(socks, target).await;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut all))
        .await
        .expect("in time")
        .expect("read");
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    all.split_off(at)
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
    let r = plane
        .gql("{subscriptions{edges{node{trafficUsedBytes}}}}", json!({}))
        .await;
    let used: f64 = r["data"]["subscriptions"]["edges"][0]["node"]["trafficUsedBytes"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("used");
    assert!(used >= moved, "subscription charged {used}");
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

#[tokio::test(flavor = "multi_thread")]
async fn udp_associate_round_trips_a_datagram() {
    let plane = Plane::start(1).await;
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let socks = plane.client().await;
    let mut control = TcpStream::connect(socks).await.expect("connect");
    control.write_all(&[5, 1, 0]).await.expect("greet");
    let mut r = [0u8; 2];
    control.read_exact(&mut r).await.expect("reply");
    control
        .write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .expect("associate");
    let mut rep = [0u8; 10];
    control.read_exact(&mut rep).await.expect("reply");
    assert_eq!(rep[1], 0, "UDP ASSOCIATE refused");
    let relay = SocketAddr::from((
        [rep[4], rep[5], rep[6], rep[7]],
        u16::from_be_bytes([rep[8], rep[9]]),
    ));
    let local = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let SocketAddr::V4(v4) = echo_addr else {
        panic!("v4")
    };
    let mut packet = vec![0, 0, 0, 1];
    packet.extend_from_slice(&v4.ip().octets());
    packet.extend_from_slice(&v4.port().to_be_bytes());
    packet.extend_from_slice(b"ping through the tunnel");
    let mut answer = vec![0u8; 2048];
    let mut got = None;
    for _ in 0..10 {
        local.send_to(&packet, relay).await.expect("send");
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(500), local.recv_from(&mut answer)).await
        {
            got = Some(answer[..n].to_vec());
            break;
        }
    }
    let got = got.expect("an answer through UDP ASSOCIATE");
    assert!(got.ends_with(b"ping through the tunnel"), "{got:?}");
    assert_eq!(&got[..4], &[0, 0, 0, 1]);
    drop(control);
}

async fn https_get(plane: &Plane, path: &str) -> (u16, String) {
    let connector = tls::connector(Some(&plane.cert)).expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("tls");
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
async fn access_document_has_the_outline_structure_and_errors_for_revoked_devices() {
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
    plane
        .gql(
            "mutation($id:ID!){revokeDevice(id:$id){status}}",
            json!({"id": plane.device_id}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = https_get(&plane, &format!("/c/{}", plane.device_token)).await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&body).expect("YAML");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(doc["error"]["details"].as_str(), Some("device_revoked"));
    assert!(doc.get("transport").is_none());
}

async fn ws(
    plane: &Plane,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, String>
{
    let connector = tls::connector(Some(&plane.cert)).expect("connector");
    let tcp = TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = connector.connect(name, tcp).await.expect("tls");
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
    if std::process::Command::new("ss-local")
        .arg("-h")
        .output()
        .is_err()
        || std::process::Command::new("ss-v2ray-plugin")
            .arg("-version")
            .output()
            .is_err()
    {
        let status = std::process::Command::new("sh")
            .args(["-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shadowsocks-libev shadowsocks-v2ray-plugin >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shadowsocks-libev shadowsocks-v2ray-plugin)"])
            .status()
            .expect("apt-get");
        assert!(
            status.success(),
            "installing shadowsocks-libev and shadowsocks-v2ray-plugin failed"
        );
    }
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
    let mut child = tokio::process::Command::new("ss-local")
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
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
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
    let got = fetch(local, web).await;
    assert_eq!(got.len(), body.len(), "length");
    assert_eq!(sha2::Sha256::digest(&got), sha2::Sha256::digest(&*body));
    let _ = child.kill().await;
}
