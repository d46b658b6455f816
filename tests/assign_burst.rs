//! assign-outline under a burst, on PostgreSQL and on SQLite: 200 devices
//! assigned at once (calls that arrive together share a transaction on
//! PostgreSQL) each get a session of their own that is committed when the
//! answer arrives (a usage report for it is accepted and applied), and the
//! admin feed hears of each new session exactly once. A device asking twice
//! in the same burst keeps one session. Then a burst of validate-device
//! calls (checks that arrive together share one query on PostgreSQL), mixing
//! admitted, revoked and unknown devices: each gets its own verdict. And
//! one device asked for by many callers at once, in a region of two nodes,
//! keeps one session.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{TestDb, TestServer, client, gql};
use httvps_control::accounts::{self, Role};
use httvps_control::feed::SessionEventKind;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const DEVICES: usize = 200;

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

async fn post(url: String, token: &str, body: Value) -> (u16, Value) {
    let res = client()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A region with one roomy node, a gateway, and
/// `DEVICES` devices of ten accounts: (gateway token, node token, device
/// tokens).
async fn world(server: &TestServer) -> (String, String, Vec<String>) {
    let base = &server.base;
    accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let admin = login(base, "root@example.com").await;
    let r = gql(base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"1000000000\",deviceLimit:50}){id}}", json!({})).await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(base, Some(&admin), "mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw1\",publicUrl:\"https://gw1.example.com\"}){token}}", json!({})).await;
    let gateway = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"eu\",name:\"n1\",host:\"10.1.0.1\",port:8388,capacity:100000}){token}}", json!({})).await;
    let node = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let mut tokens = Vec::with_capacity(DEVICES);
    for u in 0..DEVICES / 20 {
        let email = format!("u{u}@example.com");
        let user = accounts::create_user(&server.state.db, &email, PASSWORD, Role::User)
            .await
            .expect("user");
        let r = gql(
            base,
            Some(&admin),
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": user.id, "p": plan}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
        let tok = login(base, &email).await;
        for _ in 0..20 {
            let r = gql(
                base,
                Some(&tok),
                "mutation{registerDevice(name:\"d\",platform:\"linux\"){accessToken}}",
                json!({}),
            )
            .await;
            tokens.push(
                r["data"]["registerDevice"]["accessToken"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{r}"))
                    .to_owned(),
            );
        }
    }
    (gateway, node, tokens)
}

async fn scalar(server: &TestServer, q: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let row: N = match &server.state.db.pool {
        httvps_control::db::DbPool::Pg(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).get_result(&mut *conn).await
        }
        httvps_control::db::DbPool::Sqlite(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).get_result(&mut *conn).await
        }
    }
    .expect("sql");
    row.n
}

async fn burst(db: TestDb) {
    let server = TestServer::start(db.dsn.clone(), false).await;
    let (gateway, node, tokens) = world(&server).await;
    // Healthy by a heartbeat now (setting up the accounts may outlast a lease).
    let (s, b) = post(
        server.url("/api/v1/outline/heartbeat"),
        &node,
        json!({"load": 0, "version": "test"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let mut feed = server.state.db.events().subscribe_sessions();
    // Every device once, and the first ten a second time in the same burst.
    let asks: Vec<&String> = tokens.iter().chain(tokens.iter().take(10)).collect();
    let url = server.url("/api/v1/nodes/assign-outline");
    let answers = futures_util::future::join_all(asks.iter().map(|t| {
        post(
            url.clone(),
            &gateway,
            json!({"device_token": t, "region": null}),
        )
    }))
    .await;
    let mut by_device: HashMap<String, String> = HashMap::new();
    let mut sessions: HashSet<String> = HashSet::new();
    let mut device_of: HashMap<&str, String> = HashMap::new();
    for (token, (s, b)) in asks.iter().zip(&answers) {
        assert_eq!(s, &200, "{b}");
        let session = b["session_id"].as_str().expect("session id").to_owned();
        let device = b["device_id"].as_str().expect("device id").to_owned();
        device_of.insert(token.as_str(), device.clone());
        match by_device.get(&device) {
            Some(first) => assert_eq!(first, &session, "{token}: one session per device"),
            None => {
                by_device.insert(device, session.clone());
            }
        }
        sessions.insert(session);
    }
    assert_eq!(by_device.len(), DEVICES);
    assert_eq!(sessions.len(), DEVICES, "a session of its own per device");

    // Committed: the gateway's usage report for every session is accepted
    // and applied to exactly those sessions.
    let reports: Vec<Value> = sessions
        .iter()
        .map(|s| json!({"session_id": s, "seq": 1, "bytes_up": 100, "bytes_down": 200}))
        .collect();
    let (s, b) = post(
        server.url("/api/v1/usage/report"),
        &gateway,
        json!({ "reports": reports }),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], json!(DEVICES), "{b}");
    assert_eq!(b["close_sessions"], json!([]), "{b}");
    let mut applied = 0;
    for _ in 0..400 {
        applied = scalar(
            &server,
            "SELECT count(*) AS n FROM sessions WHERE ended_at IS NULL AND bytes_up = 100 AND bytes_down = 200",
        )
        .await;
        if applied == DEVICES as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        applied, DEVICES as i64,
        "every report applied to its session"
    );

    // The feed: one OPENED event per new session, no more.
    let mut opened: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while opened.len() < DEVICES {
        let e = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .unwrap_or_else(|_| panic!("{} OPENED events in 10 s", opened.len()))
            .expect("feed");
        if e.kind == SessionEventKind::Opened {
            *opened.entry(e.session_id.to_string()).or_default() += 1;
        }
    }
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(300), feed.recv()).await {
        if e.kind == SessionEventKind::Opened {
            *opened.entry(e.session_id.to_string()).or_default() += 1;
        }
    }
    let got: HashSet<String> = opened.keys().cloned().collect();
    assert_eq!(got, sessions, "an OPENED event per session");
    assert!(opened.values().all(|n| *n == 1), "{opened:?}");

    // A validate burst: every fifth device revoked, twenty unknown tokens
    // and a malformed one among the real ones.
    let revoked: HashSet<&str> = tokens.iter().step_by(5).map(String::as_str).collect();
    for t in &revoked {
        exec(
            &server,
            &format!(
                "UPDATE devices SET status = 'revoked' WHERE id = '{}'",
                device_of[t]
            ),
        )
        .await;
    }
    let unknown: Vec<String> = (0..20).map(|i| format!("A{i:042}")).collect();
    let mut checks: Vec<&str> = tokens.iter().map(String::as_str).collect();
    checks.extend(unknown.iter().map(String::as_str));
    checks.push("not a token");
    checks.extend(tokens.iter().take(10).map(String::as_str));
    let url = server.url("/api/v1/auth/validate-device");
    let answers = futures_util::future::join_all(
        checks
            .iter()
            .map(|t| post(url.clone(), &gateway, json!({"device_token": t}))),
    )
    .await;
    for (token, (s, b)) in checks.iter().zip(&answers) {
        assert_eq!(s, &200, "{b}");
        let (valid, reason) = match device_of.get(token) {
            Some(_) if revoked.contains(token) => (false, json!("device_revoked")),
            Some(_) => (true, Value::Null),
            None => (false, json!("device_unknown")),
        };
        assert_eq!(
            (&b["valid"], &b["reason"]),
            (&json!(valid), &reason),
            "{token}: {b}"
        );
        match device_of.get(token) {
            Some(id) => assert_eq!(b["device"]["id"], json!(id), "{token}: its own device"),
            None => assert!(b["device"].is_null(), "{b}"),
        }
    }
    server.stop().await;
}

async fn exec(server: &TestServer, q: &str) {
    use diesel_async::RunQueryDsl;
    match &server.state.db.pool {
        httvps_control::db::DbPool::Pg(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).execute(&mut *conn).await
        }
        httvps_control::db::DbPool::Sqlite(pool) => {
            let mut conn = pool.get().await.expect("conn");
            diesel::sql_query(q).execute(&mut *conn).await
        }
    }
    .expect("sql");
}

/// Many callers asking at once for one device through one gateway, in a
/// region of two nodes: every caller gets the same session, and one
/// session is open. Concurrent batches that each saw no open session used
/// to open one each when their draws picked different nodes.
async fn one_device_asked_at_once_keeps_one_session(db: TestDb) {
    const TRIALS: usize = 20;
    const CALLERS: usize = 30;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let (gateway, node, tokens) = world(&server).await;
    let admin = login(&server.base, "root@example.com").await;
    let r = gql(&server.base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"eu\",name:\"n2\",host:\"10.1.0.2\",port:8388,capacity:100000}){token}}", json!({})).await;
    let second = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for t in [&node, &second] {
        let (s, b) = post(
            server.url("/api/v1/outline/heartbeat"),
            t,
            json!({"load": 0, "version": "test"}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let url = server.url("/api/v1/nodes/assign-outline");
    let mut nodes_seen = HashSet::new();
    for token in tokens.iter().take(TRIALS) {
        let answers = futures_util::future::join_all((0..CALLERS).map(|_| {
            post(
                url.clone(),
                &gateway,
                json!({"device_token": token, "region": null}),
            )
        }))
        .await;
        let mut sessions = HashSet::new();
        for (s, b) in &answers {
            assert_eq!(s, &200, "{b}");
            sessions.insert(b["session_id"].as_str().expect("session id").to_owned());
            nodes_seen.insert(b["node_id"].as_str().expect("node id").to_owned());
        }
        assert_eq!(sessions.len(), 1, "{CALLERS} callers at once: {sessions:?}");
    }
    assert_eq!(nodes_seen.len(), 2, "devices were placed on both nodes");
    let doubled = scalar(
        &server,
        "SELECT count(*) AS n FROM (SELECT device_id FROM sessions WHERE ended_at IS NULL \
         GROUP BY device_id, gateway_node_id HAVING count(*) > 1) AS d",
    )
    .await;
    assert_eq!(
        doubled, 0,
        "devices with two open sessions through one gateway"
    );
    assert_eq!(
        scalar(&server, "SELECT count(*) AS n FROM sessions").await,
        TRIALS as i64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_device_asked_at_once_keeps_one_session_on_postgres() {
    one_device_asked_at_once_keeps_one_session(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_device_asked_at_once_keeps_one_session_on_sqlite() {
    one_device_asked_at_once_keeps_one_session(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_assignments_on_postgres_commits_a_session_and_an_event_each() {
    burst(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_assignments_on_sqlite_commits_a_session_and_an_event_each() {
    burst(TestDb::sqlite().await).await;
}
