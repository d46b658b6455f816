//! Access events belong to the change that implies them: published when its
//! transaction commits and never when it rolls back, on both backends; and
//! they reach gateways whoever makes the change. Here the operator runs
//! `httvps device revoke` (another process, straight on the database) while
//! the device has a tunnel open through a real gateway; the revocation's
//! event travels through PostgreSQL to the control plane and on to the
//! gateway, which closes the tunnel within 5 seconds. The gateway heartbeats
//! only once a minute there, so nothing but the event can close it that fast.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestDb, TestServer, gql};
use diesel_async::{AsyncConnection, RunQueryDsl};
use httvps_control::accounts::{self, Role};
use httvps_control::db::{Db, Dsn};
use httvps_control::error::AppError;
use httvps_control::events::AccessChange;
use httvps_control::ids::UserId;
use httvps_dataplane::backend::Backend;
use httvps_dataplane::{client, gateway, node, tls};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "correct horse battery staple";

fn text(r: &Value, path: &[&str]) -> String {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} in {r}"))
        .to_owned()
}

/// An echo server on 127.0.0.1.
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

/// Whether 4 bytes go round the echo tunnel within a second.
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

/// Two transactions each put an access event in their outbox; the first
/// rolls back. Only the second event is heard.
async fn events_follow_their_transaction(t: &TestDb) {
    let db = Db::connect(&t.dsn, 2).expect("pool");
    if let Dsn::Postgres(url) = &t.dsn {
        db.events().start_listener(url).await;
    }
    let mut heard = db.events().subscribe_access();
    let (rolled_back, committed) = (UserId::random(), UserId::random());
    let failed: Result<(), AppError> = async {
        httvps_control::db_tx!(db, |_conn, outbox| {
            outbox.access(AccessChange::DeviceRevoked, Some(rolled_back));
            Err::<(), _>(AppError::Conflict("changed my mind".into()))
        })
    }
    .await;
    assert!(failed.is_err());
    let done: Result<(), AppError> = async {
        httvps_control::db_tx!(db, |_conn, outbox| {
            outbox.access(AccessChange::UserDisabled, Some(committed));
            Ok::<_, AppError>(())
        })
    }
    .await;
    done.expect("commit");
    let ev = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("an event in time")
        .expect("an event");
    assert_eq!(ev.reason, "user_disabled");
    assert_eq!(ev.user_id, Some(committed.to_string()));
    // Nothing else follows: the rolled-back event never existed.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), heard.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_published_at_commit_and_never_on_rollback_postgres() {
    events_follow_their_transaction(&TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_published_at_commit_and_never_on_rollback_sqlite() {
    events_follow_their_transaction(&TestDb::sqlite().await).await;
}

/// Events published while the control plane's LISTEN connection was down
/// never reach it: once the listener is back, its subscribers (every
/// gateway's stream) hear that events were missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_reconnects_says_events_were_missed() {
    let t = TestDb::pg().await;
    let Dsn::Postgres(url) = &t.dsn else {
        panic!("pg")
    };
    let db = Db::connect(&t.dsn, 2).expect("pool");
    db.events().start_listener(url).await;
    let mut heard = db.events().subscribe_access();
    let dbname = url.rsplit('/').next().expect("database name").to_owned();
    let killed = end_listener(&dbname).await;
    assert_eq!(killed, 1, "the listener was found");
    let ev = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("an event within 10 s")
        .expect("an event");
    assert_eq!(ev.kind, "lagged", "{ev:?}");
    let line = serde_json::to_vec(&ev).expect("json");
    assert_eq!(
        httvps_wire::events::scope(&line),
        httvps_wire::events::Scope::Missed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_revoked_from_the_command_line_loses_its_open_tunnel_within_5_seconds() {
    tls::install_provider();
    let db = TestDb::pg().await;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let base = server.base.clone();

    // An admin with a subscription and a device.
    let root = accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let login = gql(
        &base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": "root@example.com", "p": PASSWORD}),
    )
    .await;
    let admin = text(&login, &["data", "login", "accessToken"]);
    let r = gql(&base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,deviceLimit:3}){id}}", json!({})).await;
    let plan = text(&r, &["data", "createPlan", "id"]);
    gql(
        &base,
        Some(&admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": root.id, "p": plan}),
    )
    .await;
    let r = gql(
        &base,
        Some(&admin),
        "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){accessToken device{id}}}",
        json!({}),
    )
    .await;
    let device_token = text(&r, &["data", "registerDevice", "accessToken"]);
    let device_id = text(&r, &["data", "registerDevice", "device", "id"]);

    // A node with its own key, registered where it listens.
    let secret = "node-secret-0123456789".to_owned();
    let running = node::start(&node::NodeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        method: node::parse_method("aes-128-gcm").expect("method"),
        password: secret.clone().into(),
        allow_private: true,
        idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
    })
    .await
    .expect("node");
    let r = gql(
        &base,
        Some(&admin),
        "mutation($p:Int!,$s:String!){registerOutlineNode(input:{region:\"eu\",name:\"n\",host:\"127.0.0.1\",port:$p,method:\"aes-128-gcm\",secret:$s}){node{id}}}",
        json!({"p": running.addr.port(), "s": secret}),
    )
    .await;
    text(&r, &["data", "registerOutlineNode", "node", "id"]);

    // A gateway that heartbeats once a minute and trusts its cache as long.
    let dir = common::tempdir::TempDir::new();
    let (cert, key) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    tls::ensure_self_signed(&cert, &key, &["localhost", "127.0.0.1"]).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway_url = format!(
        "https://localhost:{}",
        listener.local_addr().expect("addr").port()
    );
    let r = gql(&base, Some(&admin), "mutation($u:String!){registerGatewayNode(input:{region:\"eu\",name:\"gw\",publicUrl:$u}){token}}", json!({"u": gateway_url})).await;
    let gateway_token = text(&r, &["data", "registerGatewayNode", "token"]);
    let opts = gateway::GatewayOptions {
        public_url: gateway_url.clone(),
        heartbeat_every: Duration::from_secs(60),
        cache_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let acceptor = tls::acceptor(&cert, &key).expect("acceptor");
    let backend = Backend::new(&base, &gateway_token).expect("backend");
    let gateway_task = tokio::spawn(async move {
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

    // Our client forwarding a local port to an echo server through the gateway.
    let echo = echo_server().await;
    let local = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let local_addr = local.local_addr().expect("addr");
    let client_opts = client::ClientOptions {
        backend: base.clone(),
        device_token: device_token.into(),
        gateway: Some(gateway_url),
        ca_cert: Some(cert.clone()),
        region: None,
        forward: Some(echo.to_string()),
        link: Default::default(),
        mux: false,
        mux_connections: client::DEFAULT_MUX_CONNECTIONS,
    };
    let client_task = tokio::spawn(async move {
        let _ = client::run(client_opts, local, std::future::pending::<()>()).await;
    });
    let started = Instant::now();
    let mut tunnel = loop {
        if let Ok(mut s) = TcpStream::connect(local_addr).await
            && alive(&mut s).await
        {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no tunnel through the gateway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(alive(&mut tunnel).await, "the tunnel carries bytes");

    // The operator revokes the device from the command line.
    let mut cmd = common::httvps_cmd();
    cmd.args(["device", "revoke", &device_id, "--db-dsn", &db.url()]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("httvps device revoke");
    assert!(
        out.status.success(),
        "httvps device revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("revoked device {device_id}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let revoked = Instant::now();

    // The gateway closes the tunnel: the client sees its end.
    let mut buf = [0u8; 64];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(6), tunnel.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break Some(revoked.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => break None,
        }
    };
    let closed = closed.expect("the open tunnel was not closed");
    assert!(
        closed <= Duration::from_secs(5),
        "the tunnel closed only after {closed:?}"
    );
    // The device shows as revoked to its owner.
    let r = gql(
        &base,
        Some(&admin),
        "{devices{edges{node{id status}}}}",
        json!({}),
    )
    .await;
    assert_eq!(
        r["data"]["devices"]["edges"][0]["node"]["status"],
        "REVOKED"
    );

    client_task.abort();
    gateway_task.abort();
    drop(running);
    server.stop().await;
}

/// A live operation on a replica whose listener lost its connection (and
/// made it again) ends with an `UNAVAILABLE` error, then completes: events
/// published meanwhile never came, and a subscription that went on showed
/// a stale state without a word. Its client reads again and subscribes
/// afresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_operation_ends_when_its_replica_may_have_missed_events() {
    let db = TestDb::pg().await;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let base = server.base.clone();
    accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let login = gql(
        &base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": "root@example.com", "p": PASSWORD}),
    )
    .await;
    let admin = text(&login, &["data", "login", "accessToken"]);
    let mut ws = common::live(&base, &admin, "subscription{nodeEvents{nodeId}}").await;
    let Dsn::Postgres(url) = &db.dsn else {
        panic!("pg")
    };
    let dbname = url.rsplit('/').next().expect("database name").to_owned();
    let killed = end_listener(&dbname).await;
    assert_eq!(killed, 1, "the listener was found");
    let v = common::live_next(&mut ws).await;
    assert_eq!(v["type"], "next", "{v}");
    assert_eq!(
        v["payload"]["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{v}"
    );
    let v = common::live_next(&mut ws).await;
    assert_eq!(v["type"], "complete", "{v}");
    // Subscribed again, it hears events as before.
    let mut ws = common::live(&base, &admin, "subscription{nodeEvents{nodeId}}").await;
    let r = gql(
        &base,
        Some(&admin),
        "mutation{createRegion(code:\"eu\",name:\"EU\"){id} registerOutlineNode(input:{region:\"eu\",name:\"n\",host:\"10.0.0.1\",port:8388}){node{id}}}",
        json!({}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let v = common::live_next(&mut ws).await;
    assert_eq!(v["type"], "next", "{v}");
    assert!(
        v["payload"]["data"]["nodeEvents"]["nodeId"].is_string(),
        "{v}"
    );
    server.stop().await;
}

/// Ends the LISTEN connection(s) a control plane holds on database
/// `dbname`, as a failover or an administrator would; how many.
async fn end_listener(dbname: &str) -> usize {
    let mut admin = diesel_async::AsyncPgConnection::establish(&common::pg_admin_url())
        .await
        .expect("admin connection");
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{dbname}' AND query LIKE 'LISTEN%'"
    ))
    .execute(&mut admin)
    .await
    .expect("terminate")
}
