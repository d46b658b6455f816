//! The REST compatibility routes against a real server on PostgreSQL:
//! assignment policy, the usage ledger under replays and concurrency,
//! enforcement, leases, the auth matrix and bad input.

mod common;

use common::{TestDb, TestServer, client, gql, live, live_event, live_next};
use httvps_control::accounts::{self, Role};
use httvps_control::heartbeats;
use httvps_control::usage_accounting::sweeper::sweep_at;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

struct World {
    server: TestServer,
    admin: String,
    gateway: String,
    plan_id: String,
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

impl World {
    async fn new() -> World {
        Self::on(TestDb::pg().await).await
    }

    async fn on(db: TestDb) -> World {
        let server = TestServer::start(db.dsn.clone(), false).await;
        Self::around(server, db).await
    }

    /// A world whose control plane has no configured gateway URL: links
    /// carry the registered gateway's own.
    async fn without_front(db: TestDb) -> World {
        let mut settings = common::settings(db.dsn.clone(), false);
        settings.gateway_url = None;
        let server = TestServer::start_with(settings, ([127, 0, 0, 1], 0).into()).await;
        Self::around(server, db).await
    }

    async fn around(server: TestServer, db: TestDb) -> World {
        accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
            .await
            .expect("admin");
        let admin = login(&server.base, "root@example.com").await;
        let r = gql(&server.base, Some(&admin), "mutation{a:createRegion(code:\"eu\",name:\"EU\"){id} b:createRegion(code:\"us\",name:\"US\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"1000000\",deviceLimit:5}){id}}", json!({})).await;
        let plan_id = r["data"]["createPlan"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let r = gql(&server.base, Some(&admin), "mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw1\",publicUrl:\"https://gw1.example.com\"}){token node{id}}}", json!({})).await;
        let gateway = r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .expect("gw token")
            .to_owned();
        World {
            server,
            admin,
            gateway,
            plan_id,
            _db: db,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn gql(&self, q: &str, vars: Value) -> Value {
        gql(&self.server.base, Some(&self.admin), q, vars).await
    }

    /// A user with a subscription and one device; returns (user id, device id, device token).
    async fn device(&self) -> (String, String, String) {
        self.device_on(&self.plan_id.clone()).await
    }

    /// A user on `plan` with one device: (user id, device id, access token).
    async fn device_on(&self, plan: &str) -> (String, String, String) {
        let email = format!("u-{}@example.com", uuid::Uuid::new_v4().simple());
        let user = accounts::create_user(&self.server.state.db, &email, PASSWORD, Role::User)
            .await
            .expect("user");
        self.gql(
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": user.id, "p": plan}),
        )
        .await;
        let tok = login(&self.server.base, &email).await;
        let r = gql(
            &self.server.base,
            Some(&tok),
            "mutation{registerDevice(name:\"d\",platform:\"linux\"){accessToken device{id}}}",
            json!({}),
        )
        .await;
        let d = &r["data"]["registerDevice"];
        (
            user.id.to_string(),
            d["device"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
            d["accessToken"].as_str().expect("token").to_owned(),
        )
    }

    /// A signed-in subscriber's access token (an account with no plan).
    async fn subscriber(&self) -> String {
        let email = format!("s-{}@example.com", uuid::Uuid::new_v4().simple());
        accounts::create_user(&self.server.state.db, &email, PASSWORD, Role::User)
            .await
            .expect("user");
        login(&self.server.base, &email).await
    }

    /// Registers an Outline node; returns (id, token).
    async fn node(&self, region: &str, name: &str, capacity: i32) -> (String, String) {
        let r = self
            .gql(
                "mutation($r:String!,$n:String!,$h:String!,$c:Int!){registerOutlineNode(input:{region:$r,name:$n,host:$h,port:8388,capacity:$c}){token node{id}}}",
                json!({"r": region, "n": name, "h": format!("{name}.nodes.example.com"), "c": capacity}),
            )
            .await;
        let n = &r["data"]["registerOutlineNode"];
        (
            n["node"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
            n["token"].as_str().expect("token").to_owned(),
        )
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = client().post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn beat(&self, node_token: &str, load: i32) {
        let (s, b) = self
            .post(
                "/api/v1/outline/heartbeat",
                Some(node_token),
                json!({"load": load, "version": "test"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    async fn assign(&self, device_token: &str, region: Option<&str>) -> (u16, Value) {
        self.post(
            "/api/v1/nodes/assign-outline",
            Some(&self.gateway),
            json!({"device_token": device_token, "region": region}),
        )
        .await
    }

    /// Waits (at most 20 s) until every stored usage report is applied.
    async fn usage_settled(&self) {
        for _ in 0..400 {
            if self.scalar("SELECT count(*) AS n FROM usage_inbox").await == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("usage inbox not drained in 20 s");
    }

    async fn sql(&self, q: &str) {
        common::execute(&self.server.state.db, q).await;
    }

    async fn scalar(&self, q: &str) -> i64 {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        match &self.server.state.db.pool {
            httvps_control::db::DbPool::Pg(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q)
                    .get_result::<N>(&mut *conn)
                    .await
                    .expect("sql")
                    .n
            }
            httvps_control::db::DbPool::Sqlite(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q)
                    .get_result::<N>(&mut *conn)
                    .await
                    .expect("sql")
                    .n
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn assignment_policy() {
    let w = World::new().await;
    let (n1, t1) = w.node("eu", "n1", 10).await;
    let (n2, t2) = w.node("eu", "n2", 10).await;
    let (n3, t3) = w.node("eu", "draining", 10).await;
    let (n4, t4) = w.node("eu", "disabled", 10).await;
    let (n5, t5) = w.node("eu", "dead", 10).await;
    let (n6, t6) = w.node("eu", "full", 1).await;
    let (us1, tu) = w.node("us", "us1", 10).await;
    for t in [&t1, &t2, &t3, &t4, &t5, &t6, &tu] {
        w.beat(t, 0).await;
    }
    w.gql("mutation($a:UUID!,$b:UUID!){a:setNodeStatus(id:$a,status:DRAINING){__typename} b:setNodeStatus(id:$b,status:DISABLED){__typename}}", json!({"a": n3, "b": n4})).await;
    // n5 stops heartbeating: its lease runs out and the sweeper marks it down.
    w.sql(&format!("UPDATE outline_nodes SET last_heartbeat_at = last_heartbeat_at - interval '1 minute' WHERE id = '{n5}'")).await;
    heartbeats::sweep(&w.server.state.db).await.expect("sweep");
    // n6 is full: its heartbeat reports as many connections as its capacity.
    w.beat(&t6, 1).await;
    // n1 is full too: the next device goes to n2.
    w.beat(&t1, 10).await;
    let (_, _, dev) = w.device().await;
    let (s, b) = w.assign(&dev, None).await;
    assert_eq!(s, 200, "{b}");
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let picked: i64 = w
        .scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{sid}' AND outline_node_id = '{n2}'"
        ))
        .await;
    assert_eq!(picked, 1, "the only node with room: n2 ({b})");
    assert_eq!(b["region"], "eu");
    assert_eq!(b["host"], "n2.nodes.example.com");
    assert!(
        b.get("gateway_url").is_none(),
        "gateways get the node address, not the gateway URL"
    );
    // Sticky: the same device keeps its node and session.
    for _ in 0..3 {
        let (_, again) = w.assign(&dev, None).await;
        assert_eq!(again["session_id"], sid.as_str());
    }
    // Excluded nodes never got a session.
    for bad in [&n3, &n4, &n5] {
        assert_eq!(
            w.scalar(&format!(
                "SELECT count(*) AS n FROM sessions WHERE outline_node_id = '{bad}'"
            ))
            .await,
            0,
            "{bad}"
        );
    }
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE outline_node_id IN ('{n1}', '{n6}')"
        ))
        .await,
        0,
        "full nodes get no new session"
    );
    // A gateway is assigned nodes of its own region only: naming another
    // region is forbidden and opens nothing there.
    let (s, b) = w.assign(&dev, Some("us")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{b}"
    );
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE outline_node_id = '{us1}'"
        ))
        .await,
        0
    );
    let (s, b) = w.assign(&dev, Some("eu")).await;
    assert_eq!((s, b["region"].as_str()), (200, Some("eu")), "{b}");
    // The region is respected for a gateway of that region.
    let r = w.gql("mutation{registerGatewayNode(input:{region:\"us\",name:\"gw-us\",publicUrl:\"https://gw-us.example.com\"}){token}}", json!({})).await;
    let gw_us = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let (s, b) = w
        .post(
            "/api/v1/nodes/assign-outline",
            Some(&gw_us),
            json!({"device_token": dev, "region": "us"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["region"], "us");
    let sid_us = b["session_id"].as_str().expect("session");
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{sid_us}' AND outline_node_id = '{us1}'"
        ))
        .await,
        1
    );
    let (s, b) = w.assign(&dev, Some("mars")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("NOT_FOUND")));
    // The sticky node drains: the device moves to a healthy node of the
    // region with room (n1 has room again).
    w.beat(&t1, 0).await;
    w.gql(
        "mutation($a:UUID!){setNodeStatus(id:$a,status:DRAINING){__typename}}",
        json!({"a": n2}),
    )
    .await;
    let (_, b) = w.assign(&dev, None).await;
    let moved = b["session_id"].as_str().expect("session");
    assert_ne!(moved, sid);
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{moved}' AND outline_node_id = '{n1}'"
        ))
        .await,
        1,
        "{b}"
    );
    // Nothing healthy left: 503 with a reason.
    w.gql(
        "mutation($a:UUID!){setNodeStatus(id:$a,status:DISABLED){__typename}}",
        json!({"a": n1}),
    )
    .await;
    w.gql(
        "mutation($a:UUID!){setNodeStatus(id:$a,status:DISABLED){__typename}}",
        json!({"a": n6}),
    )
    .await;
    let (s, b) = w.assign(&dev, None).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "NO_NODE");
    assert_eq!(b["error"]["reason"], "no_node_available");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_ledger_counts_once_under_replays_reordering_and_concurrency() {
    usage_ledger_counts_once(World::new().await).await;
}

/// Property: whatever the history of cumulative reports (any growth, any
/// order, duplicates, any batching), each session ends with the largest
/// totals, the ledger's deltas add up to them, and the owner's subscription
/// is charged exactly that.
#[tokio::test(flavor = "multi_thread")]
async fn usage_ledger_arithmetic_holds_for_random_report_histories() {
    use proptest::strategy::{Just, Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};
    let w = World::on(TestDb::sqlite().await).await;
    let (_, t1) = w.node("eu", "n1", 1000).await;
    w.beat(&t1, 0).await;
    let mut runner = TestRunner::new(Config::with_cases(12));
    let growth = proptest::collection::vec(
        proptest::collection::vec((0i64..5_000_000, 0i64..5_000_000), 1..8),
        1..4,
    );
    for _ in 0..12 {
        let increments = growth.new_tree(&mut runner).expect("case").current();
        // One session per device; cumulative totals with growing seq.
        let mut expected = Vec::new();
        let mut reports = Vec::new();
        for steps in &increments {
            let (uid, _, tok) = w.device().await;
            // Making accounts is slow on a busy machine: keep the node's
            // lease fresh.
            w.beat(&t1, 0).await;
            let (_, b) = w.assign(&tok, None).await;
            let sid = b["session_id"]
                .as_str()
                .unwrap_or_else(|| panic!("session: {b}"))
                .to_owned();
            let (mut up, mut down) = (0i64, 0i64);
            for (seq, (du, dd)) in steps.iter().enumerate() {
                up += du;
                down += dd;
                let r =
                    json!({"session_id": sid, "seq": seq + 1, "bytes_up": up, "bytes_down": down});
                reports.push(r.clone());
                if seq % 2 == 0 {
                    reports.push(r); // a replay
                }
            }
            expected.push((sid, uid, up, down));
        }
        let shuffled = Just(reports)
            .prop_shuffle()
            .new_tree(&mut runner)
            .expect("shuffle")
            .current();
        let cut = (shuffled.len() / 3).max(1);
        for batch in shuffled.chunks(cut) {
            let (s, b) = w
                .post(
                    "/api/v1/usage/report",
                    Some(&w.gateway),
                    json!({"reports": batch}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
        }
        for (sid, uid, up, down) in expected {
            let got_up = w
                .scalar(&format!(
                    "SELECT bytes_up AS n FROM sessions WHERE id = '{sid}'"
                ))
                .await;
            let got_down = w
                .scalar(&format!(
                    "SELECT bytes_down AS n FROM sessions WHERE id = '{sid}'"
                ))
                .await;
            assert_eq!((got_up, got_down), (up, down), "{increments:?}");
            let ledger = w.scalar(&format!("SELECT CAST(COALESCE(SUM(delta_up + delta_down), 0) AS BIGINT) AS n FROM usage_hours WHERE session_id = '{sid}'")).await;
            assert_eq!(ledger, up + down, "{increments:?}");
            let used = w.scalar(&format!("SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{uid}' AND status = 'active'")).await;
            assert_eq!(used, up + down, "{increments:?}");
        }
    }
}

/// Reports stored together merge into one pass, and a row applied twice (a stop between applying and deleting
/// it) changes nothing; a row naming a session deleted since is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn usage_inbox_merges_rows_and_reapplies_harmlessly() {
    usage_inbox_merges(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_inbox_merges_rows_and_reapplies_harmlessly_on_sqlite() {
    usage_inbox_merges(World::on(TestDb::sqlite().await).await).await;
}

async fn usage_inbox_merges(w: World) {
    let (_, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (uid, _, tok) = w.device().await;
    let (_, b) = w.assign(&tok, None).await;
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let rows = |totals: &[(i64, i64, i64)]| {
        let values: Vec<String> = totals
            .iter()
            .map(|(seq, up, down)| {
                format!(
                    "((SELECT id FROM gateway_nodes LIMIT 1), '[[\"{sid}\",{seq},{up},{down}]]', CURRENT_TIMESTAMP)"
                )
            })
            .collect();
        format!(
            "INSERT INTO usage_inbox (gateway_node_id, totals, received_at) VALUES {}",
            values.join(", ")
        )
    };
    let state = || {
        let q = [
            format!("SELECT bytes_up AS n FROM sessions WHERE id = '{sid}'"),
            format!("SELECT bytes_down AS n FROM sessions WHERE id = '{sid}'"),
            format!("SELECT count(*) AS n FROM usage_hours WHERE session_id = '{sid}'"),
            format!(
                "SELECT CAST(COALESCE(SUM(delta_up + delta_down), 0) AS BIGINT) AS n FROM usage_hours WHERE session_id = '{sid}'"
            ),
            format!(
                "SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{uid}' AND status = 'active'"
            ),
        ];
        let w = &w;
        async move {
            let mut out = Vec::new();
            for q in q {
                out.push(w.scalar(&q).await);
            }
            out
        }
    };
    // Three reports of one session, out of order, stored in one statement.
    let stored = rows(&[(1, 100, 100), (3, 300, 900), (2, 200, 500)]);
    w.sql(&stored).await;
    w.usage_settled().await;
    assert_eq!(
        state().await,
        vec![300, 900, 1, 1200, 1200],
        "merged into one pass"
    );
    // The same rows again: nothing changes.
    w.sql(&stored).await;
    w.usage_settled().await;
    assert_eq!(state().await, vec![300, 900, 1, 1200, 1200], "re-applied");
    // A later report still counts, and one for a session deleted since
    // the report was stored is skipped without holding the inbox back.
    w.sql(&rows(&[(4, 1300, 900)])).await;
    w.sql(&format!("INSERT INTO usage_inbox (gateway_node_id, totals, received_at) VALUES ((SELECT id FROM gateway_nodes LIMIT 1), '[[\"{}\",1,5,5]]', CURRENT_TIMESTAMP)", uuid::Uuid::new_v4())).await;
    w.usage_settled().await;
    let now = state().await;
    assert_eq!((now[0], now[1], now[3], now[4]), (1300, 900, 2200, 2200));
    // One row per session and hour (two if the hour turned meanwhile).
    assert!((1..=2).contains(&now[2]), "{now:?}");
    // When the session's next hour begins, the last one moves to the ledger
    // whole, and usage by hour shows both.
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(2))
        .naive_utc()
        .format("%Y-%m-%d %H:00:00")
        .to_string();
    w.sql(&format!(
        "DELETE FROM usage_ledger WHERE session_id = '{sid}'"
    ))
    .await;
    w.sql(&format!("UPDATE sessions SET hour_start = '{earlier}', hour_up = 1300, hour_down = 900 WHERE id = '{sid}'")).await;
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": sid, "seq": 5, "bytes_up": 1400, "bytes_down": 950}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    w.usage_settled().await;
    let ledger = |c: &str| {
        format!("SELECT CAST({c} AS BIGINT) AS n FROM usage_ledger WHERE session_id = '{sid}'")
    };
    assert_eq!(w.scalar(&ledger("count(*)")).await, 1);
    assert_eq!(w.scalar(&ledger("SUM(delta_up + delta_down)")).await, 2200);
    assert_eq!(w.scalar(&ledger("MAX(total_up + total_down)")).await, 2200);
    let now = state().await;
    assert_eq!(
        (now[0], now[1], now[2], now[3], now[4]),
        (1400, 950, 2, 2350, 2350)
    );
    let day = chrono::Duration::days(1);
    let r = w
        .gql(
            "query($f:DateTime!,$t:DateTime!){usage(from:$f,to:$t,granularity:HOUR){bytesUp bytesDown}}",
            json!({"f": (chrono::Utc::now() - day).to_rfc3339(), "t": (chrono::Utc::now() + day).to_rfc3339()}),
        )
        .await;
    let hours: Vec<(String, String)> = r["data"]["usage"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|h| {
            (
                h["bytesUp"].as_str().unwrap_or("").to_owned(),
                h["bytesDown"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        hours,
        vec![("1300".into(), "900".into()), ("100".into(), "50".into())],
        "{r}"
    );
    // A range that starts within the current hour counts that hour whole
    // (it was left out: the ledger keeps hours).
    let hour =
        chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::TimeDelta::hours(1))
            .expect("hour");
    let r = w
        .gql(
            "query($f:DateTime!,$t:DateTime!){usage(from:$f,to:$t,granularity:HOUR){bytesUp bytesDown}}",
            json!({"f": (hour + chrono::Duration::seconds(1)).to_rfc3339(), "t": (hour + chrono::Duration::minutes(59)).to_rfc3339()}),
        )
        .await;
    assert_eq!(r["data"]["usage"][0]["bytesUp"], "100", "{r}");
    assert_eq!(r["data"]["usage"][0]["bytesDown"], "50", "{r}");
    // Totals at the largest value a report takes, on two sessions: taken
    // (no error), cut to what each session could have moved (10 Gbit/s
    // over its life), so the sums neither fail nor saturate.
    let (_, _, other) = w.device().await;
    let (_, b) = w.assign(&other, None).await;
    let sid2 = b["session_id"].as_str().expect("session").to_owned();
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [
                {"session_id": sid, "seq": 6, "bytes_up": i64::MAX, "bytes_down": i64::MAX},
                {"session_id": sid2, "seq": 1, "bytes_up": i64::MAX, "bytes_down": i64::MAX},
            ]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    w.usage_settled().await;
    let max = i64::MAX / 4;
    for granularity in ["HOUR", "DAY"] {
        let r = w
            .gql(
                &format!("query($f:DateTime!,$t:DateTime!){{usage(from:$f,to:$t,granularity:{granularity}){{bytesUp bytesDown}}}}"),
                json!({"f": (chrono::Utc::now() - day).to_rfc3339(), "t": (chrono::Utc::now() + day).to_rfc3339()}),
            )
            .await;
        let buckets = r["data"]["usage"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"));
        let n = |v: &Value| v.as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        let (up, down) = buckets.iter().fold((0i64, 0i64), |(u, d), h| {
            (
                u.saturating_add(n(&h["bytesUp"])),
                d.saturating_add(n(&h["bytesDown"])),
            )
        });
        assert!((1_000_000..max).contains(&up), "{r}");
        assert!((1_000_000..max).contains(&down), "{r}");
    }
}

/// Many gateways reporting at once, each report growing, to two control
/// planes on one database (two appliers taking turns): whatever merged
/// where, every session ends with its largest totals, the ledger adds up
/// to them and the accounts are charged exactly that.
#[tokio::test(flavor = "multi_thread")]
async fn usage_reports_under_load_on_two_replicas_count_exactly_once() {
    let w = World::new().await;
    let second = TestServer::start(w._db.dsn.clone(), false).await;
    let (_, t1) = w.node("eu", "n1", 1000).await;
    w.beat(&t1, 0).await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        let (uid, _, tok) = w.device().await;
        // Making users (argon2) is slow on a loaded machine: the node keeps
        // beating meanwhile, as a live one does, so its lease holds.
        w.beat(&t1, 0).await;
        let (s, b) = w.assign(&tok, None).await;
        assert_eq!(s, 200, "{b}");
        sessions.push((b["session_id"].as_str().expect("session").to_owned(), uid));
    }
    let ids: Vec<String> = sessions.iter().map(|(s, _)| s.clone()).collect();
    let bases = [w.server.base.clone(), second.base.clone()];
    // 16 callers, 25 rounds each; in round r every session reports
    // r * 100 up and r * 300 down (cumulative).
    let tasks: Vec<_> = (0..16)
        .map(|caller| {
            let (ids, base, gw) = (ids.clone(), bases[caller % 2].clone(), w.gateway.clone());
            tokio::spawn(async move {
                let mut pending = 0;
                for round in 1..=25i64 {
                    let r = round * 16 + caller as i64;
                    let batch: Vec<Value> = ids
                        .iter()
                        .map(|s| json!({"session_id": s, "seq": r, "bytes_up": r * 100, "bytes_down": r * 300}))
                        .collect();
                    let res = client()
                        .post(format!("{base}/api/v1/usage/report"))
                        .bearer_auth(&gw)
                        .json(&json!({"reports": batch}))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(res.status().as_u16(), 200);
                    let body: Value = res.json().await.expect("json");
                    assert_eq!(body["accepted"], 40, "{body}");
                    if body["applied"] == json!(false) {
                        pending += 1;
                    }
                }
                pending
            })
        })
        .collect();
    let mut pending = 0;
    for t in tasks {
        pending += t.await.expect("task");
    }
    w.usage_settled().await;
    let top = 25 * 16 + 15;
    for (sid, uid) in &sessions {
        let q = |c: &str| format!("SELECT {c} AS n FROM sessions WHERE id = '{sid}'");
        assert_eq!(
            w.scalar(&q("bytes_up")).await,
            top * 100,
            "{pending} answers pending"
        );
        assert_eq!(w.scalar(&q("bytes_down")).await, top * 300);
        assert_eq!(w.scalar(&format!("SELECT CAST(SUM(delta_up + delta_down) AS BIGINT) AS n FROM usage_hours WHERE session_id = '{sid}'")).await, top * 400);
        assert_eq!(w.scalar(&format!("SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{uid}' AND status = 'active'")).await, top * 400);
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_count_without_a_grant_is_capped_on_a_limited_plan_on_postgres() {
    witness_without_a_grant(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_count_without_a_grant_is_capped_on_a_limited_plan_on_sqlite() {
    witness_without_a_grant(World::on(TestDb::sqlite().await).await).await;
}

/// A node's count of a session for which its gateway asked no quota
/// grant: on a limited plan it adds nothing to the gateway's own count
/// (the gateway let nothing through on a grant, so the rest never reached
/// the client); on an unlimited plan it is recorded whole.
async fn witness_without_a_grant(w: World) {
    let (_, node) = w.node("eu", "n1", 100).await;
    w.beat(&node, 0).await;
    let (limited_user, _, limited) = w.device().await;
    let r = w
        .gql(
            "mutation{createPlan(input:{name:\"unlimited\",priceCents:\"0\",durationDays:30,trafficLimitBytes:null,deviceLimit:3}){id}}",
            json!({}),
        )
        .await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .expect("plan")
        .to_owned();
    let (free_user, _, free) = w.device_on(&plan).await;
    let mut sessions = Vec::new();
    for tok in [&limited, &free] {
        let (s, a) = w.assign(tok, None).await;
        assert_eq!(s, 200, "{a}");
        sessions.push(a["session_id"].as_str().expect("session").to_owned());
    }
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": sessions[0], "seq": 1, "bytes_up": 0, "bytes_down": 1000}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = w
        .post(
            "/api/v1/outline/witness",
            Some(&node),
            json!({"sessions": [
                {"session_id": sessions[0], "epoch": 1, "bytes_up": 0, "bytes_down": 5_000_000_000i64},
                {"session_id": sessions[1], "epoch": 1, "bytes_up": 0, "bytes_down": 5_000_000},
            ]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    w.usage_settled().await;
    let used = "SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = ";
    assert_eq!(
        w.scalar(&format!("{used}'{limited_user}'")).await,
        1000,
        "the gateway's count, no more"
    );
    assert_eq!(
        w.scalar(&format!("{used}'{free_user}'")).await,
        5_000_000,
        "the node's count, whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_past_what_a_session_could_move_is_cut_on_postgres() {
    unbelievable_totals(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_past_what_a_session_could_move_is_cut_on_sqlite() {
    unbelievable_totals(World::on(TestDb::sqlite().await).await).await;
}

/// Totals past what a session could have moved (2^63 - 1 bytes for a
/// session seconds old, from its gateway or its node) are believed only
/// up to 10 Gbit/s over the session's life: a stolen or broken machine
/// cannot record such a count, which spent the allowance at once and
/// saturated every traffic total it was summed in.
async fn unbelievable_totals(w: World) {
    const CEILING: i64 = 20_000_000_000;
    let (_, node) = w.node("eu", "n1", 100).await;
    w.beat(&node, 0).await;
    let (user, _, tok) = w.device().await;
    let (s, a) = w.assign(&tok, None).await;
    assert_eq!(s, 200, "{a}");
    let session = a["session_id"].as_str().expect("session").to_owned();
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": session, "seq": 1, "bytes_up": i64::MAX, "bytes_down": i64::MAX}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = w
        .post(
            "/api/v1/outline/witness",
            Some(&node),
            json!({"sessions": [{"session_id": session, "epoch": 1, "bytes_up": i64::MAX, "bytes_down": i64::MAX}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    w.usage_settled().await;
    let up = w
        .scalar(&format!(
            "SELECT bytes_up AS n FROM sessions WHERE id = '{session}'"
        ))
        .await;
    assert!((1..CEILING).contains(&up), "session bytes up: {up}");
    let used = w
        .scalar(&format!(
            "SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{user}'"
        ))
        .await;
    assert!((1..2 * CEILING).contains(&used), "used: {used}");
    // A session that lived a second an hour ago is believed over that
    // second (and the minute after its end), not over the hour since
    // (the times are set in PostgreSQL's terms).
    if w.server.state.db.backend() != "postgres" {
        return;
    }
    let (_, _, tok2) = w.device().await;
    let (s, a) = w.assign(&tok2, None).await;
    assert_eq!(s, 200, "{a}");
    let ended = a["session_id"].as_str().expect("session").to_owned();
    w.sql(&format!(
        "UPDATE sessions SET started_at = started_at - interval '1 hour', \
         ended_at = started_at - interval '1 hour' + interval '1 second', \
         end_reason = 'closed_by_admin' WHERE id = '{ended}'"
    ))
    .await;
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": ended, "seq": 1, "bytes_up": i64::MAX, "bytes_down": 0}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    w.usage_settled().await;
    let up = w
        .scalar(&format!(
            "SELECT bytes_up AS n FROM sessions WHERE id = '{ended}'"
        ))
        .await;
    // 61 s at 10 Gbit/s and 64 MiB: about 76 GB (an hour: 4.5 TB).
    assert!(
        (1..80_000_000_000).contains(&up),
        "ended session bytes up: {up}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_ledger_counts_once_on_sqlite() {
    usage_ledger_counts_once(World::on(TestDb::sqlite().await).await).await;
}

async fn usage_ledger_counts_once(w: World) {
    let (n1, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let mut sessions = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..4 {
        let (uid, _, tok) = w.device().await;
        let (_, b) = w.assign(&tok, None).await;
        sessions.push(b["session_id"].as_str().expect("session").to_owned());
        subs.push(uid);
    }
    // Five reports per session with growing cumulative totals.
    let mut batch = Vec::new();
    for s in &sessions {
        for seq in 1..=5i64 {
            batch.push(json!({"session_id": s, "seq": seq, "bytes_up": seq * 1000, "bytes_down": seq * 3000}));
        }
    }
    let send = |b: Vec<Value>| {
        let url = w.url("/api/v1/usage/report");
        let gw = w.gateway.clone();
        async move {
            let res = client()
                .post(url)
                .bearer_auth(gw)
                .json(&json!({"reports": b}))
                .send()
                .await
                .expect("send");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    // The same batch 3 times, one of them reversed.
    for order in 0..3 {
        let mut b = batch.clone();
        if order == 1 {
            b.reverse();
        }
        let (s, body) = send(b).await;
        assert_eq!(s, 200, "{body}");
    }
    // And from 8 concurrent tasks.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut b = batch.clone();
            b.rotate_left((i * 3) % batch.len());
            tokio::spawn(send(b))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").0, 200);
    }
    w.usage_settled().await;
    for s in &sessions {
        assert_eq!(
            w.scalar(&format!(
                "SELECT bytes_up AS n FROM sessions WHERE id = '{s}'"
            ))
            .await,
            5000
        );
        assert_eq!(
            w.scalar(&format!(
                "SELECT bytes_down AS n FROM sessions WHERE id = '{s}'"
            ))
            .await,
            15000
        );
        assert_eq!(w.scalar(&format!("SELECT CAST(SUM(delta_up + delta_down) AS BIGINT) AS n FROM usage_hours WHERE session_id = '{s}'")).await, 20000);
    }
    for u in &subs {
        assert_eq!(
            w.scalar(&format!(
                "SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{u}'"
            ))
            .await,
            20000
        );
    }
    // The usage report in GraphQL sees the same bytes.
    let r = w.gql("{usage(from:\"2026-01-01T00:00:00Z\",to:\"2030-01-01T00:00:00Z\",granularity:DAY){bytesUp bytesDown}}", json!({})).await;
    let up: i64 = r["data"]["usage"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| {
            p["bytesUp"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(up, 4 * 5000, "{r}");
    // A subscriber's own usage, on the node it used and on another: the
    // node filter applies to everyone (it was once dropped for
    // non-admins, who then got all their usage as if it were one node's).
    let r = w
        .gql("query($u:UUID!){user(id:$u){email}}", json!({"u": subs[0]}))
        .await;
    let email = r["data"]["user"]["email"].as_str().expect("email");
    let user = login(&w.server.base, email).await;
    let q = "query($n:UUID){usage(nodeId:$n,from:\"2026-01-01T00:00:00Z\",to:\"2030-01-01T00:00:00Z\",granularity:DAY){bytesUp}}";
    for (node, want) in [
        (json!(n1), 5000),
        (json!(uuid::Uuid::new_v4()), 0),
        (Value::Null, 5000),
    ] {
        let r = gql(&w.server.base, Some(&user), q, json!({"n": node})).await;
        let up: i64 = r["data"]["usage"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .filter_map(|p| p["bytesUp"].as_str()?.parse::<i64>().ok())
            .sum();
        assert_eq!(up, want, "node {node}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_device_answers_50_concurrent_callers_without_errors() {
    let w = World::new().await;
    let mut tokens = Vec::new();
    for _ in 0..5 {
        tokens.push(w.device().await.2);
    }
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (url, gw, tok) = (
                w.url("/api/v1/auth/validate-device"),
                w.gateway.clone(),
                tokens[i % tokens.len()].clone(),
            );
            tokio::spawn(async move {
                let c = client();
                let mut valid = 0;
                for _ in 0..20 {
                    let res = c
                        .post(&url)
                        .bearer_auth(&gw)
                        .json(&json!({"device_token": tok}))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(res.status().as_u16(), 200);
                    let v: Value = res.json().await.expect("json");
                    if v["valid"] == true {
                        valid += 1;
                    }
                }
                valid
            })
        })
        .collect();
    let mut valid = 0;
    for t in tasks {
        valid += t.await.expect("task");
    }
    assert_eq!(
        valid, 1000,
        "every one of 1,000 concurrent checks answered valid"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monthly_allowance_starts_over_when_a_period_ends_pg() {
    monthly_allowance_starts_over(
        World::new().await,
        "now() - interval '31 days'",
        "now() - interval '10 days'",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monthly_allowance_starts_over_when_a_period_ends_sqlite() {
    monthly_allowance_starts_over(
        World::on(TestDb::sqlite().await).await,
        "datetime('now', '-31 days')",
        "datetime('now', '-10 days')",
    )
    .await;
}

async fn monthly_allowance_starts_over(w: World, long_ago: &str, recently: &str) {
    let (_, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let r = w.gql("mutation{createPlan(input:{name:\"monthly\",priceCents:\"0\",durationDays:365,trafficLimitBytes:\"1000000\",deviceLimit:5,resetPeriod:MONTHLY}){id}}", json!({})).await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let (uid, _, tok) = w.device_on(&plan).await;
    let (_, b) = w.assign(&tok, None).await;
    let sid = b["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{b}"))
        .to_owned();
    let used_q = format!(
        "SELECT traffic_used_bytes AS n FROM subscriptions WHERE user_id = '{uid}' AND status = 'active'"
    );
    let used = || w.scalar(&used_q);
    // A period ended: the allowance starts over with this report's bytes.
    w.sql(&format!("UPDATE subscriptions SET traffic_used_bytes = 900000, period_start = {long_ago} WHERE user_id = '{uid}'")).await;
    let report = |seq: i64, up: i64| {
        w.post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": sid, "seq": seq, "bytes_up": up, "bytes_down": 0}]}),
        )
    };
    let (s, b) = report(1, 300_000).await;
    assert_eq!((s, &b["close_sessions"]), (200, &json!([])), "{b}");
    // An idle applier: the answer waits for the pass and tells what it did.
    assert_eq!(
        (&b["applied"], &b["counted"]),
        (&json!(true), &json!(1)),
        "{b}"
    );
    assert_eq!(used().await, 300_000, "a new period counts from zero");
    // Within a period: bytes add up, and crossing the allowance closes.
    w.sql(&format!("UPDATE subscriptions SET traffic_used_bytes = 900000, period_start = {recently} WHERE user_id = '{uid}'")).await;
    let (s, b) = report(2, 600_000).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(used().await, 1_200_000);
    assert_eq!(
        b["close_sessions"],
        json!([{"session_id": sid, "reason": "quota_exceeded"}]),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enforcement_quota_revocation_and_disabled_users() {
    let w = World::new().await;
    let (_, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (uid, did, tok) = w.device().await;
    let (_, b) = w.assign(&tok, None).await;
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let (_, other_dev, other_tok) = w.device().await;
    let (_, b) = w.assign(&other_tok, None).await;
    let other_sid = b["session_id"].as_str().expect("session").to_owned();
    // Within quota: nothing to close.
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&w.gateway),
            json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": 100, "bytes_down": 100}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["close_sessions"], json!([]));
    // Crossing the 1,000,000-byte quota puts the session in the answer's close list.
    let (_, b) = w.post("/api/v1/usage/report", Some(&w.gateway), json!({"reports": [{"session_id": sid, "seq": 2, "bytes_up": 400_000, "bytes_down": 700_000}]})).await;
    assert_eq!(
        b["close_sessions"],
        json!([{"session_id": sid, "reason": "quota_exceeded"}]),
        "{b}"
    );
    let (_, v) = w
        .post(
            "/api/v1/auth/validate-device",
            Some(&w.gateway),
            json!({"device_token": tok}),
        )
        .await;
    assert_eq!(
        (v["valid"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("quota_exceeded")),
        "{v}"
    );
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(
        (s, b["error"]["reason"].as_str()),
        (403, Some("quota_exceeded")),
        "{b}"
    );
    // The gateway's heartbeat keeps listing it while the gateway holds it open.
    let (_, hb) = w
        .post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"open_tunnels": 2, "open_sessions": [sid, other_sid]}),
        )
        .await;
    assert_eq!(
        hb["close_sessions"],
        json!([{"session_id": sid, "reason": "quota_exceeded"}]),
        "{hb}"
    );
    // Revoking a device fails its next validation at once.
    let (_, v) = w
        .post(
            "/api/v1/auth/validate-device",
            Some(&w.gateway),
            json!({"device_token": other_tok}),
        )
        .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["subscription"]["traffic_limit_bytes"], 1_000_000);
    let owner_of_other: String = w
        .scalar_text(&format!(
            "SELECT user_id AS t FROM devices WHERE id = '{other_dev}'"
        ))
        .await;
    w.gql(
        "mutation($id:UUID!){revokeDevice(id:$id){status}}",
        json!({"id": other_dev}),
    )
    .await;
    let (_, v) = w
        .post(
            "/api/v1/auth/validate-device",
            Some(&w.gateway),
            json!({"device_token": other_tok}),
        )
        .await;
    assert_eq!(v["reason"], "device_revoked", "{v}");
    let (_, hb) = w
        .post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"open_sessions": [other_sid]}),
        )
        .await;
    assert_eq!(hb["close_sessions"][0]["reason"], "device_revoked", "{hb}");
    // A disabled user and an unknown token.
    w.gql(
        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
        json!({"id": uid}),
    )
    .await;
    let (_, v) = w
        .post(
            "/api/v1/auth/validate-device",
            Some(&w.gateway),
            json!({"device_token": tok}),
        )
        .await;
    assert_eq!(v["reason"], "user_disabled", "{v}");
    let (_, v) = w
        .post(
            "/api/v1/auth/validate-device",
            Some(&w.gateway),
            json!({"device_token": "A".repeat(43)}),
        )
        .await;
    assert_eq!(
        (v["valid"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("device_unknown"))
    );
    let _ = (did, owner_of_other);
}

impl World {
    async fn scalar_text(&self, q: &str) -> String {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct T {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let httvps_control::db::DbPool::Pg(pool) = &self.server.state.db.pool else {
            panic!("pg")
        };
        let mut conn = pool.get().await.expect("conn");
        diesel::sql_query(q)
            .get_result::<T>(&mut *conn)
            .await
            .expect("sql")
            .t
    }
}

/// The next event of `kind` (earlier events of other kinds are skipped).
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<httvps_control::events::NodeEvent>,
    kind: httvps_control::events::NodeEventKind,
) -> httvps_control::events::NodeEvent {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("event in time")
            .expect("event");
        if ev.kind == kind {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_end_with_their_event_and_active_ones_stay() {
    let w = World::new().await;
    let (_, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (_, _, idle_tok) = w.device().await;
    let (_, _, busy_tok) = w.device().await;
    let (s, b) = w.assign(&idle_tok, None).await;
    assert_eq!(s, 200, "{b}");
    let idle = b["session_id"].as_str().expect("session").to_owned();
    let (s, b) = w.assign(&busy_tok, None).await;
    assert_eq!(s, 200, "{b}");
    let busy = b["session_id"].as_str().expect("session").to_owned();
    let mut events = w.server.state.db.events().subscribe_sessions();
    // Nothing idle yet: nothing ends.
    let db = &w.server.state.db;
    assert_eq!(heartbeats::end_idle_sessions(db).await.expect("sweep"), 0);
    // One session saw nothing for longer than the idle limit, the other a
    // minute short of it.
    w.sql(&format!(
        "UPDATE sessions SET last_activity_at = last_activity_at - interval '11 minutes' WHERE id = '{idle}'"
    ))
    .await;
    w.sql(&format!(
        "UPDATE sessions SET last_activity_at = last_activity_at - interval '9 minutes' WHERE id = '{busy}'"
    ))
    .await;
    assert_eq!(heartbeats::end_idle_sessions(db).await.expect("sweep"), 1);
    // The OPENED events of the assignments may still be on their way.
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.expect("event");
            if ev.kind == httvps_control::feed::SessionEventKind::Closed {
                return ev;
            }
        }
    })
    .await
    .expect("CLOSED in time");
    assert_eq!(ev.session_id.to_string(), idle);
    assert_eq!(ev.end_reason.as_deref(), Some("idle"), "{ev:?}");
    let ended = |id: &str| {
        format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{id}' AND ended_at IS NOT NULL AND end_reason = 'idle'"
        )
    };
    assert_eq!(w.scalar(&ended(&idle)).await, 1);
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{busy}' AND ended_at IS NULL"
        ))
        .await,
        1
    );
    // Ended once: a second sweep finds nothing, and the device's next
    // assignment opens a new session.
    assert_eq!(heartbeats::end_idle_sessions(db).await.expect("sweep"), 0);
    let (s, b) = w.assign(&idle_tok, None).await;
    assert_eq!(s, 200, "{b}");
    assert_ne!(b["session_id"].as_str(), Some(idle.as_str()));
}

/// A control plane that starts (or whose database comes back) after its
/// machines' heartbeats and its sessions' reports could not be written
/// judges only what it watched: a node whose last heartbeat is a minute
/// old stays up for a lease, and a session with no activity written for
/// 11 minutes stays open (the first sweep marked the node down, a one-node
/// region refusing new subscribers, and ended every session that rode out
/// the outage as idle); a node that stays silent goes down once a lease
/// has been watched.
#[tokio::test(flavor = "multi_thread")]
async fn sweeps_after_a_start_judge_only_what_they_watched() {
    let w = World::new().await;
    let (n1, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (_, _, tok) = w.device().await;
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(s, 200, "{b}");
    let session = b["session_id"].as_str().expect("session").to_owned();
    w.sql(&format!("UPDATE outline_nodes SET last_heartbeat_at = last_heartbeat_at - interval '1 minute' WHERE id = '{n1}'")).await;
    w.sql(&format!("UPDATE sessions SET last_activity_at = last_activity_at - interval '11 minutes' WHERE id = '{session}'")).await;
    let db = w.server.state.db.clone();
    let started = std::time::Instant::now();
    let sweeper = heartbeats::spawn_sweeper(db, std::time::Duration::from_millis(200));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let down = format!(
        "SELECT CAST(count(*) AS BIGINT) AS n FROM outline_nodes WHERE id = '{n1}' AND health = 'down'"
    );
    let open =
        format!("SELECT count(*) AS n FROM sessions WHERE id = '{session}' AND ended_at IS NULL");
    assert_eq!(
        w.scalar(&down).await,
        0,
        "marked down before a lease was watched"
    );
    assert_eq!(w.scalar(&open).await, 1, "ended as idle at the first sweep");
    // Still silent a lease later: down.
    let mut went_down = None;
    while started.elapsed() < std::time::Duration::from_secs(30) {
        if w.scalar(&down).await == 1 {
            went_down = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    sweeper.abort();
    let went_down = went_down.expect("down once a lease was watched");
    assert!(
        went_down >= std::time::Duration::from_secs(14),
        "{went_down:?}"
    );
    assert_eq!(
        w.scalar(&open).await,
        1,
        "the session is judged after 10 minutes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_lease_expiry_publishes_down_and_stops_assignments() {
    let w = World::new().await;
    let (n1, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (_, _, tok) = w.device().await;
    let mut events = w.server.state.db.events().subscribe();
    w.sql(&format!("UPDATE outline_nodes SET last_heartbeat_at = last_heartbeat_at - interval '1 minute' WHERE id = '{n1}'")).await;
    heartbeats::sweep(&w.server.state.db).await.expect("sweep");
    use httvps_control::events::NodeEventKind;
    let ev = next_event(&mut events, NodeEventKind::Down).await;
    assert_eq!(ev.node_id, n1);
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(s, 503, "{b}");
    // The next heartbeat brings it back up.
    w.beat(&t1, 1).await;
    next_event(&mut events, NodeEventKind::Up).await;
    assert_eq!(w.assign(&tok, None).await.0, 200);
    let gateway_says = |beat: serde_json::Value| {
        let w = &w;
        async move {
            let (s, b) = w
                .post("/api/v1/gateway/heartbeat", Some(&w.gateway), beat)
                .await;
            assert_eq!(s, 200, "{b}");
        }
    };
    // A gateway reporting the node unreachable takes it down too.
    gateway_says(json!({"unreachable_nodes": [n1]})).await;
    next_event(&mut events, NodeEventKind::Down).await;
    // Its own heartbeats do not bring it back up while that report is
    // recent: it runs, but the gateways cannot reach it (it showed up
    // again within 5 s, through a total outage of its tunnels).
    let down = format!(
        "SELECT CAST(count(*) AS BIGINT) AS n FROM outline_nodes WHERE id = '{n1}' AND health = 'down'"
    );
    for load in 2..4 {
        w.beat(&t1, load).await;
        assert_eq!(w.scalar(&down).await, 1, "a heartbeat brought it up");
    }
    assert_eq!(w.assign(&tok, None).await.0, 503);
    // A gateway that reaches it brings it up.
    gateway_says(json!({"reachable_nodes": [n1]})).await;
    next_event(&mut events, NodeEventKind::Up).await;
    assert_eq!(w.scalar(&down).await, 0);
    // So does its heartbeat once the report is old.
    gateway_says(json!({"unreachable_nodes": [n1]})).await;
    next_event(&mut events, NodeEventKind::Down).await;
    w.sql(&format!("UPDATE outline_nodes SET unreachable_at = unreachable_at - interval '2 minutes' WHERE id = '{n1}'")).await;
    w.beat(&t1, 5).await;
    next_event(&mut events, NodeEventKind::Up).await;
    assert_eq!(w.scalar(&down).await, 0);
}

/// Two gateways of one region that see two new nodes the other way round
/// (each reaches the node the other cannot), heartbeating at the same
/// moment: both are answered, round after round (the nodes' rows are
/// changed in one order, so neither transaction waits on the other's).
#[tokio::test(flavor = "multi_thread")]
async fn crossed_node_reports_from_two_gateways_are_both_answered() {
    let w = World::new().await;
    let (a, _) = w.node("eu", "a", 100).await;
    let (b, _) = w.node("eu", "b", 100).await;
    let r = w.gql("mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw2\",publicUrl:\"https://gw2.example.com\"}){token}}", json!({})).await;
    let gw2 = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for round in 0..40 {
        w.sql(&format!(
            "UPDATE outline_nodes SET health = 'unknown' WHERE id IN ('{a}', '{b}')"
        ))
        .await;
        let one = w.post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"unreachable_nodes": [a], "reachable_nodes": [b]}),
        );
        let two = w.post(
            "/api/v1/gateway/heartbeat",
            Some(&gw2),
            json!({"unreachable_nodes": [b], "reachable_nodes": [a]}),
        );
        let ((s1, b1), (s2, b2)) = tokio::join!(one, two);
        assert_eq!((s1, s2), (200, 200), "round {round}: {b1} {b2}");
    }
}

/// A gateway's heartbeat marks the open sessions it names active (the idle
/// sweep then leaves them), on both backends.
async fn a_heartbeat_marks_its_sessions_active(db: TestDb) {
    let w = World::on(db).await;
    let (_, t) = w.node("eu", "n1", 100).await;
    w.beat(&t, 0).await;
    let (_, _, tok) = w.device().await;
    let (_, b) = w.assign(&tok, None).await;
    let sid = b["session_id"].as_str().expect("session").to_owned();
    w.sql(&format!(
        "UPDATE sessions SET last_activity_at = '2000-01-01 00:00:00' WHERE id = '{sid}'"
    ))
    .await;
    let (s, b) = w
        .post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"open_sessions": [sid]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let touched = w
        .scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{sid}' AND last_activity_at > '2001-01-01'"
        ))
        .await;
    assert_eq!(touched, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_marks_its_sessions_active_on_postgres() {
    a_heartbeat_marks_its_sessions_active(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_marks_its_sessions_active_on_sqlite() {
    a_heartbeat_marks_its_sessions_active(TestDb::sqlite().await).await;
}

/// A gateway deleted while it heartbeats with its open sessions: the
/// deletion goes through, and every heartbeat is answered (200 before the
/// deletion, 401 after), never a failure of the database's making (the
/// heartbeat skips sessions the deletion holds; the deletion takes the
/// appliers' lock first).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_deleted_while_it_heartbeats() {
    let w = World::new().await;
    let (_, t) = w.node("eu", "n1", 100).await;
    w.beat(&t, 0).await;
    let mut devices = Vec::new();
    for _ in 0..3 {
        devices.push(w.device().await.2);
    }
    for round in 0..8 {
        let name = format!("gw-doomed-{round}");
        let r = w
            .gql(
                "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token node{id}}}",
                json!({"n": name, "u": format!("https://{name}.example.com")}),
            )
            .await;
        let token = r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let id = r["data"]["registerGatewayNode"]["node"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let mut sessions = Vec::new();
        for d in &devices {
            let (s, b) = w
                .post(
                    "/api/v1/nodes/assign-outline",
                    Some(&token),
                    json!({"device_token": d}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            sessions.push(b["session_id"].clone());
        }
        let beats = (0..6).map(|_| {
            w.post(
                "/api/v1/gateway/heartbeat",
                Some(&token),
                json!({"open_sessions": sessions}),
            )
        });
        let delete = w.gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": id}));
        let (answers, deleted) = tokio::join!(futures_util::future::join_all(beats), delete);
        assert_eq!(
            deleted["data"]["deleteNode"], true,
            "round {round}: {deleted}"
        );
        for (s, b) in answers {
            assert!(s == 200 || s == 401, "round {round}: {s} {b}");
        }
    }
    // The interleaving the rounds above may or may not meet, on cue: the
    // token checked, then the deletion committed (its sessions' gateway is
    // now NULL), then the heartbeat's own transaction. It is a 401, not a
    // 403 for sessions taken as another gateway's.
    let r = w
        .gql(
            "mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw-late\",publicUrl:\"https://gw-late.example.com\"}){token node{id}}}",
            json!({}),
        )
        .await;
    let token = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let id = r["data"]["registerGatewayNode"]["node"]["id"].clone();
    let (s, b) = w
        .post(
            "/api/v1/nodes/assign-outline",
            Some(&token),
            json!({"device_token": devices[0]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let db = &w.server.state.db;
    let g = gateway_of(db, &token).await;
    let r = w
        .gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": id}))
        .await;
    assert_eq!(r["data"]["deleteNode"], true, "{r}");
    // The audit says what was deleted: the row is gone (it said `{}`).
    let r = w
        .gql(
            "query($id:String!){auditLog(filter:{action:\"delete_node\",targetId:$id}){edges{node{targetId details}}}}",
            json!({"id": id}),
        )
        .await;
    let entry = &r["data"]["auditLog"]["edges"][0]["node"];
    assert_eq!(entry["targetId"], json!(id), "{r}");
    let details: serde_json::Value =
        serde_json::from_str(entry["details"].as_str().unwrap_or_default()).expect("details");
    assert!(
        details["name"].is_string() && details["publicUrl"].is_string(),
        "{details}"
    );
    let beat = httvps_wire::heartbeat::GatewayBeat {
        open_sessions: vec![b["session_id"].as_str().expect("session").to_owned()],
        ..Default::default()
    };
    let late = heartbeats::gateway(db, &g, &beat).await;
    assert!(
        matches!(late, Err(httvps_control::error::AppError::Unauthenticated)),
        "{late:?}"
    );
    // So is its usage report, in the same place.
    let totals = || httvps_wire::SessionTotals {
        session_id: beat.open_sessions[0].clone(),
        seq: 1,
        bytes_up: 10,
        bytes_down: 10,
        epoch: 0,
    };
    let late = httvps_control::usage_accounting::receive(db, g.id, &[totals()]).await;
    assert!(
        matches!(late, Err(httvps_control::error::AppError::Unauthenticated)),
        "{late:?}"
    );
    // And its grant request.
    let grant = httvps_wire::grant::GrantRequest {
        session_id: beat.open_sessions[0].clone(),
        used: 0,
        want: 1,
        release: false,
        afresh: false,
    };
    let late = httvps_control::usage_accounting::grant_store::grant(db, g.id, &grant).await;
    assert!(
        matches!(late, Err(httvps_control::error::AppError::Unauthenticated)),
        "{late:?}"
    );
    // While another gateway, alive, reporting that session is refused as
    // for a session it does not know (it drops the totals, not resends).
    let other = gateway_of(db, &w.gateway).await;
    let foreign = httvps_control::usage_accounting::receive(db, other.id, &[totals()]).await;
    assert!(
        matches!(foreign, Err(httvps_control::error::AppError::NotFound(_))),
        "{foreign:?}"
    );
}

/// The gateway a machine token names, as a route's check finds it.
async fn gateway_of(
    db: &httvps_control::db::Db,
    token: &str,
) -> httvps_control::db::models::GatewayNode {
    match httvps_control::nodes::authenticate_machine(db, token).await {
        Ok(httvps_control::nodes::Machine::Gateway(g)) => g,
        other => panic!("a gateway's token names a gateway: {:?}", other.is_ok()),
    }
}

/// A heartbeat that names a node both reachable and unreachable is
/// refused whole, and the node keeps its health.
#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_that_contradicts_itself_is_refused() {
    let w = World::new().await;
    let (a, _) = w.node("eu", "a", 100).await;
    let (s, b) = w
        .post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"unreachable_nodes": [a], "reachable_nodes": [a]}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "BAD_REQUEST", "{b}");
    let unknown = w
        .scalar(&format!(
            "SELECT count(*) AS n FROM outline_nodes WHERE id = '{a}' AND health = 'unknown'"
        ))
        .await;
    assert_eq!(unknown, 1, "nothing changed");
}

/// Deleting a node ends its open sessions (`node_down`) in the same
/// transaction, so none is left open without a node; the device's next
/// assignment opens a new session on a node that is still there.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_node_ends_its_open_sessions() {
    let w = World::new().await;
    let (n1, t1) = w.node("eu", "n1", 100).await;
    let (n2, t2) = w.node("eu", "n2", 100).await;
    w.beat(&t1, 0).await;
    w.beat(&t2, 0).await;
    let (_, _, tok) = w.device().await;
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(s, 200, "{b}");
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let on = b["node_id"].as_str().expect("node").to_owned();
    let other = if on == n1 { n2 } else { n1 };
    let r = w
        .gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": on}))
        .await;
    assert_eq!(r["data"]["deleteNode"], true, "{r}");
    let ended = w
        .scalar(&format!(
            "SELECT count(*) AS n FROM sessions WHERE id = '{sid}' AND end_reason = 'node_down'"
        ))
        .await;
    assert_eq!(ended, 1, "the session ended with its node");
    let open = w
        .scalar(
            "SELECT count(*) AS n FROM sessions WHERE ended_at IS NULL AND outline_node_id IS NULL",
        )
        .await;
    assert_eq!(open, 0, "no open session without a node");
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(s, 200, "{b}");
    assert_ne!(b["session_id"].as_str(), Some(sid.as_str()));
    assert_eq!(b["node_id"].as_str(), Some(other.as_str()), "{b}");
}

impl World {
    /// A session of a device on a node through the gateway, and behind
    /// it `n` sessions of the same device, node and gateway that ended a
    /// day before and one that ended as it started: the open session's
    /// id, the node's and the gateway's.
    async fn long_history(&self, n: usize) -> (String, String, String) {
        let (node, t) = self.node("eu", "n1", 100).await;
        self.beat(&t, 0).await;
        let (_, _, tok) = self.device().await;
        let (s, b) = self.assign(&tok, None).await;
        assert_eq!(s, 200, "{b}");
        let sid = b["session_id"].as_str().expect("session").to_owned();
        let gateway = gateway_of(&self.server.state.db, &self.gateway)
            .await
            .id
            .to_string();
        let (new_id, day_before, numbers) = match self.server.state.db.pool {
            httvps_control::db::DbPool::Pg(_) => (
                "gen_random_uuid()::text",
                "s.started_at - interval '1 day'",
                format!("generate_series(1, {n}) AS i(v)"),
            ),
            httvps_control::db::DbPool::Sqlite(_) => (
                "lower(printf('%s-%s-%s-%s-%s', hex(randomblob(4)), hex(randomblob(2)), \
                 hex(randomblob(2)), hex(randomblob(2)), hex(randomblob(6))))",
                "strftime('%Y-%m-%d %H:%M:%f', s.started_at, '-1 day')",
                format!(
                    "(WITH RECURSIVE c(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM c WHERE v < {n}) SELECT v FROM c) AS i"
                ),
            ),
        };
        self.sql(&format!(
            "INSERT INTO sessions (id, device_id, outline_node_id, gateway_node_id, started_at, \
             last_activity_at, ended_at, end_reason) \
             SELECT {new_id}, s.device_id, s.outline_node_id, s.gateway_node_id, {day_before}, \
                    {day_before}, {day_before}, 'idle' \
             FROM sessions s, {numbers} WHERE s.id = '{sid}'"
        ))
        .await;
        self.sql(&format!(
            "INSERT INTO sessions (id, device_id, outline_node_id, gateway_node_id, started_at, \
             last_activity_at, ended_at, end_reason) \
             SELECT {new_id}, device_id, outline_node_id, gateway_node_id, started_at, \
                    started_at, started_at, 'idle' FROM sessions WHERE id = '{sid}'"
        ))
        .await;
        (sid, node, gateway)
    }

    /// Session `sid` ended with its gateway (`node_down`), and `n` ended
    /// sessions are kept without their node and gateway.
    async fn history_kept(&self, sid: &str, n: i64) {
        let ended = self
            .scalar(&format!(
                "SELECT count(*) AS n FROM sessions WHERE id = '{sid}' AND end_reason = 'node_down'"
            ))
            .await;
        assert_eq!(ended, 1, "the open session ended with its gateway");
        let kept = self
            .scalar(
                "SELECT count(*) AS n FROM sessions WHERE end_reason = 'idle' \
                 AND outline_node_id IS NULL AND gateway_node_id IS NULL",
            )
            .await;
        assert_eq!(kept, n, "the history is kept, without the nodes");
    }

    /// Deletes node `id` (its reference: `column`) while an applier pass
    /// holds the appliers' lock: its sessions that ended a day before
    /// session `sid` started are detached before the deletion waits on
    /// it, the one that ended as `sid` started is left to the deletion,
    /// and the deletion completes once the pass is over.
    async fn delete_beside_a_pass(&self, sid: &str, column: &str, id: &str) {
        use diesel_async::RunQueryDsl;
        let httvps_control::db::DbPool::Pg(pool) = &self.server.state.db.pool else {
            panic!("pg")
        };
        let attached = |older: bool| {
            let cmp = if older { "<" } else { ">=" };
            format!(
                "SELECT count(*) AS n FROM sessions WHERE {column} = '{id}' AND end_reason = 'idle' \
                 AND ended_at {cmp} (SELECT started_at FROM sessions WHERE id = '{sid}') - interval '1 hour'"
            )
        };
        let mut pass = pool.get().await.expect("conn");
        let key = httvps_control::db::APPLY_LOCK_KEY;
        diesel::sql_query(format!("SELECT pg_advisory_lock({key})"))
            .execute(&mut *pass)
            .await
            .expect("the appliers' lock");
        let deletion = self.gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": id}));
        tokio::pin!(deletion);
        let t0 = std::time::Instant::now();
        loop {
            tokio::select! {
                r = &mut deletion => panic!("deleted while the appliers' lock was held: {r}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
            if self.scalar(&attached(true)).await == 0 {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(15),
                "the history is detached before the deletion takes the appliers' lock"
            );
        }
        tokio::select! {
            r = &mut deletion => panic!("deleted while the appliers' lock was held: {r}"),
            () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
        }
        assert_eq!(
            self.scalar(&attached(false)).await,
            1,
            "a session that ended lately is left to the deletion"
        );
        diesel::sql_query(format!("SELECT pg_advisory_unlock({key})"))
            .execute(&mut *pass)
            .await
            .expect("unlock");
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), deletion)
            .await
            .expect("the deletion completes after the pass");
        assert_eq!(r["data"]["deleteNode"], true, "{r}");
    }
}

/// Deleting a node with a long session history does not hold the usage
/// appliers' lock for the length of it: its ended sessions are detached
/// (their reference to it set to NULL, as before) a slice at a time
/// before the deletion takes the lock, so the deletion's transaction
/// stays short. Checked with a pass holding the lock: the history is
/// detached meanwhile, the deletion waits, then completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_long_history_is_detached_before_the_appliers_lock() {
    let w = World::new().await;
    let (sid, node, gateway) = w.long_history(30_000).await;
    w.delete_beside_a_pass(&sid, "gateway_node_id", &gateway)
        .await;
    w.history_kept(&sid, 0).await;
    w.delete_beside_a_pass(&sid, "outline_node_id", &node).await;
    w.history_kept(&sid, 30_001).await;
}

/// The same on SQLite (one writer, no appliers' lock): the history is
/// kept without the nodes, across more than one slice.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_long_history_is_deleted_on_sqlite() {
    let w = World::on(TestDb::sqlite().await).await;
    let (sid, node, gateway) = w.long_history(45_000).await;
    for id in [&gateway, &node] {
        let r = w
            .gql("mutation($id:UUID!){deleteNode(id:$id)}", json!({"id": id}))
            .await;
        assert_eq!(r["data"]["deleteNode"], true, "{r}");
    }
    w.history_kept(&sid, 45_001).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_and_scoping_on_postgres() {
    auth_matrix_and_scoping(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_and_scoping_on_sqlite() {
    auth_matrix_and_scoping(TestDb::sqlite().await).await;
}

async fn auth_matrix_and_scoping(db: TestDb) {
    let w = World::on(db).await;
    let (_, node_tok) = w.node("eu", "n1", 100).await;
    w.beat(&node_tok, 0).await;
    let (_, _, dev_tok) = w.device().await;
    let (_, b) = w.assign(&dev_tok, None).await;
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let r = w.gql("mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw2\",publicUrl:\"https://gw2.example.com\"}){token}}", json!({})).await;
    let gw_b = r["data"]["registerGatewayNode"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let user_jwt = w.admin.clone();
    let routes = [
        (
            "/api/v1/auth/validate-device",
            json!({"device_token": dev_tok}),
        ),
        (
            "/api/v1/nodes/assign-outline",
            json!({"device_token": dev_tok}),
        ),
        ("/api/v1/usage/report", json!({"reports": []})),
        ("/api/v1/gateway/heartbeat", json!({})),
        ("/api/v1/outline/heartbeat", json!({})),
        ("/api/v1/usage/links", json!({"links": []})),
        ("/api/v1/outline/witness", json!({"conns": []})),
    ];
    for (path, body) in &routes {
        assert_eq!(
            w.post(path, None, body.clone()).await.0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            w.post(path, Some(&user_jwt), body.clone()).await.0,
            401,
            "{path} with a user JWT"
        );
        assert_eq!(
            w.post(path, Some("not-a-token"), body.clone()).await.0,
            401,
            "{path} with junk"
        );
    }
    // Each machine only on its own routes.
    assert_eq!(
        w.post(
            "/api/v1/outline/witness",
            Some(&w.gateway),
            json!({"conns": []})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        w.post("/api/v1/usage/links", Some(&node_tok), json!({"links": []}))
            .await
            .0,
        403
    );
    assert_eq!(
        w.post("/api/v1/outline/heartbeat", Some(&w.gateway), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        w.post("/api/v1/gateway/heartbeat", Some(&node_tok), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        w.post(
            "/api/v1/usage/report",
            Some(&node_tok),
            json!({"reports": []})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        w.post(
            "/api/v1/nodes/assign-outline",
            Some(&node_tok),
            json!({"device_token": dev_tok})
        )
        .await
        .0,
        403
    );
    // Gateway B reporting usage for gateway A's session: 404, as for a
    // session it does not know (it drops those totals), nothing written.
    let (s, b) = w
        .post(
            "/api/v1/usage/report",
            Some(&gw_b),
            json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": 5, "bytes_down": 5}]}),
        )
        .await;
    assert_eq!((s, &b["error"]["code"]), (404, &json!("NOT_FOUND")), "{b}");
    assert_eq!(
        w.scalar(&format!(
            "SELECT bytes_up AS n FROM sessions WHERE id = '{sid}'"
        ))
        .await,
        0
    );
    assert_eq!(w.scalar("SELECT count(*) AS n FROM usage_hours").await, 0);
    // Nor may it name A's session anywhere else: heartbeat, links, grants
    // (a grant answers as for a session that does not exist).
    let foreign = [
        (
            "/api/v1/gateway/heartbeat",
            json!({"open_sessions": [sid]}),
            "FORBIDDEN",
        ),
        (
            "/api/v1/usage/links",
            json!({"links": [{"session_id": sid, "local": "10.0.0.9:40000"}]}),
            "FORBIDDEN",
        ),
        (
            "/api/v1/quota/grant",
            json!({"session_id": sid, "used": 0}),
            "NOT_FOUND",
        ),
    ];
    for (path, body, code) in &foreign {
        let (s, b) = w.post(path, Some(&gw_b), body.clone()).await;
        assert_eq!(b["error"]["code"], *code, "{path}: {b}");
        let want = if *code == "FORBIDDEN" { 403 } else { 404 };
        assert_eq!(s, want, "{path}: {b}");
    }
    assert_eq!(
        w.scalar("SELECT count(*) AS n FROM witness_links").await,
        0,
        "a refused link is not stored"
    );
    // A node witnessing another node's session: 403, nothing stored.
    let (_, other_node) = w.node("eu", "n2", 100).await;
    let (s, b) = w
        .post(
            "/api/v1/outline/witness",
            Some(&other_node),
            json!({"sessions": [{"session_id": sid, "epoch": 1, "bytes_up": 9, "bytes_down": 9}]}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(w.scalar("SELECT count(*) AS n FROM usage_inbox").await, 0);
    // Health leaks nothing and needs no token.
    let res = client()
        .get(w.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        res.json::<Value>().await.expect("json"),
        json!({"status": "ok"})
    );
    // A device calls with its own device JWT (exchanged for its access token).
    let (s, t) = w
        .post("/api/v1/auth/device-token", Some(&dev_tok), json!({}))
        .await;
    assert_eq!(s, 200, "{t}");
    let device_jwt = t["token"].as_str().expect("jwt").to_owned();
    let (s, v) = w
        .post("/api/v1/auth/validate-device", Some(&device_jwt), json!({}))
        .await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(true)), "{v}");
    let (s, a) = w
        .post("/api/v1/nodes/assign-outline", Some(&device_jwt), json!({}))
        .await;
    assert_eq!(s, 200, "{a}");
    assert!(
        a.get("host").is_none(),
        "clients never see node addresses: {a}"
    );
    assert_eq!(a["gateway_url"], "https://gw.test.example");
    // A device JWT is not a machine token.
    assert_eq!(
        w.post(
            "/api/v1/usage/report",
            Some(&device_jwt),
            json!({"reports": []})
        )
        .await
        .0,
        403
    );
    // A deleted gateway's token stops working.
    let r = w
        .gql("{gatewayNodes{edges{node{id name}}}}", json!({}))
        .await;
    let gw2 = r["data"]["gatewayNodes"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["node"]["name"] == "gw2")
        .expect("gw2")["node"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    w.gql(
        "mutation($id:UUID!){deleteNode(id:$id)}",
        json!({"id": gw2}),
    )
    .await;
    assert_eq!(
        w.post("/api/v1/gateway/heartbeat", Some(&gw_b), json!({}))
            .await
            .0,
        401
    );
}

/// A gateway's credential retired: its open access-event stream ends
/// without another line (the event that follows is not sent to it), the
/// hot routes' cache of it is dropped by the change made here, and a
/// gateway deleted where the cache still trusts it (the CLI, another
/// replica) gets 401 from assign-outline, not a batch's 409.
#[tokio::test(flavor = "multi_thread")]
async fn a_retired_gateway_credential_gets_nothing_more() {
    let w = World::new().await;
    let (_, node) = w.node("eu", "n1", 100).await;
    w.beat(&node, 0).await;
    let (_, device, tok) = w.device().await;
    let gateway = |name: &'static str| {
        let w = &w;
        async move {
            let r = w
                .gql(
                    "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token node{id}}}",
                    json!({"n": name, "u": format!("https://{name}.example.com")}),
                )
                .await;
            let g = &r["data"]["registerGatewayNode"];
            (
                g["node"]["id"].as_str().expect("id").to_owned(),
                g["token"].as_str().expect("token").to_owned(),
            )
        }
    };
    let (rotated, rotated_tok) = gateway("rotated").await;
    let mut stream = client()
        .get(w.url("/api/v1/gateway/access-events"))
        .bearer_auth(&rotated_tok)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let hello = stream.chunk().await.expect("hello").expect("a line");
    assert!(String::from_utf8_lossy(&hello).contains("hello"));
    let validate = |t: String| {
        let w = &w;
        let tok = tok.clone();
        async move {
            w.post(
                "/api/v1/auth/validate-device",
                Some(&t),
                json!({"device_token": tok}),
            )
            .await
            .0
        }
    };
    assert_eq!(validate(rotated_tok.clone()).await, 200, "cached from now");
    let r = w
        .gql(
            "mutation($i:UUID!){rotateNodeToken(id:$i)}",
            json!({"i": rotated}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    assert_eq!(
        validate(rotated_tok.clone()).await,
        401,
        "not from the cache"
    );
    let r = w
        .gql(
            "mutation($d:UUID!){revokeDevice(id:$d){id}}",
            json!({"d": device}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let next = tokio::time::timeout(std::time::Duration::from_secs(15), stream.chunk())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(next, Ok(Some(_))),
        "no line after the credential was retired: {next:?}"
    );

    // Deleted where this process's cache still holds it.
    let (deleted, deleted_tok) = gateway("deleted").await;
    let (_, _, other) = w.device().await;
    let (s, a) = w
        .post(
            "/api/v1/nodes/assign-outline",
            Some(&deleted_tok),
            json!({"device_token": other}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    httvps_control::nodes::delete(
        &w.server.state.db,
        &httvps_control::actor::Actor::Operator,
        deleted.parse().expect("uuid"),
    )
    .await
    .expect("deleted");
    let (_, _, third) = w.device().await;
    let (s, a) = w
        .post(
            "/api/v1/nodes/assign-outline",
            Some(&deleted_tok),
            json!({"device_token": third}),
        )
        .await;
    assert_eq!(
        (s, &a["error"]["code"]),
        (401, &json!("UNAUTHENTICATED")),
        "{a}"
    );
    // Others' assignments go on.
    let (s, a) = w.assign(&third, None).await;
    assert_eq!(s, 200, "{a}");
}

/// An anonymous request is answered 401 before its body is read: no
/// `100 Continue`, no wait for a body that never comes.
#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_request_is_refused_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::on(TestDb::sqlite().await).await;
    let addr = w.server.base.trim_start_matches("http://").to_owned();
    for (auth, expect) in [
        ("", ""),
        (
            "authorization: Bearer not-a-token\r\n",
            "expect: 100-continue\r\n",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /api/v1/usage/report HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n{auth}{expect}\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        let mut got = vec![0u8; 4096];
        // The body deadline is 30 s: an answer within 15 s came without it.
        let n = tokio::time::timeout(std::time::Duration::from_secs(15), s.read(&mut got))
            .await
            .expect("answered without the body")
            .expect("read");
        let answer = String::from_utf8_lossy(&got[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    // The scheme's name in any case.
    let (s, b) = w.post("/api/v1/gateway/heartbeat", None, json!({})).await;
    assert_eq!(s, 401, "{b}");
    let res = client()
        .post(w.url("/api/v1/gateway/heartbeat"))
        .header("authorization", format!("BEARER {}", w.gateway))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_typed_4xx_and_writes_nothing() {
    let w = World::new().await;
    let (_, node_tok) = w.node("eu", "n1", 100).await;
    w.beat(&node_tok, 0).await;
    let (_, _, dev_tok) = w.device().await;
    let (_, b) = w.assign(&dev_tok, None).await;
    let sid = b["session_id"].as_str().expect("session").to_owned();
    let raw = |path: &'static str, token: String, body: String, ctype: &'static str| {
        let url = w.url(path);
        async move {
            let res = client()
                .post(url)
                .bearer_auth(token)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await;
            // The server may answer 413 and close before the whole body is
            // sent; the client then sees the connection go (status 0 here).
            let Ok(res) = res else {
                return (0, Value::Null);
            };
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let gw = w.gateway.clone();
    let cases: Vec<(&'static str, String, &'static str, u16)> = vec![
        ("/api/v1/usage/report", "{not json".into(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": "x"}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [], "extra": 1}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": -5, "bytes_down": 0}]}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": "9223372036854775808", "bytes_down": 0}]}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": 1e30, "bytes_down": 0}]}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": "'; DROP TABLE sessions; --", "seq": 1, "bytes_up": 1, "bytes_down": 1}]}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": uuid::Uuid::new_v4().to_string(), "seq": 1, "bytes_up": 1, "bytes_down": 1}]}).to_string(), "application/json", 404),
        ("/api/v1/usage/report", json!({"reports": []}).to_string(), "text/plain", 400),
        ("/api/v1/usage/report", format!("{{\"reports\":[],\"pad\":\"{}\"}}", "x".repeat(70_000)), "application/json", 413),
        ("/api/v1/gateway/heartbeat", json!({"open_tunnels": -1}).to_string(), "application/json", 400),
        ("/api/v1/gateway/heartbeat", json!({"open_sessions": ["<script>"]}).to_string(), "application/json", 400),
        ("/api/v1/gateway/heartbeat", json!({"version": "v\u{0000}1"}).to_string(), "application/json", 400),
        ("/api/v1/gateway/heartbeat", json!({"open_tunnels": 4294967296u64}).to_string(), "application/json", 400),
        ("/api/v1/nodes/assign-outline", json!({}).to_string(), "application/json", 400),
        ("/api/v1/nodes/assign-outline", json!({"device_token": 5}).to_string(), "application/json", 400),
        // Longer than the schema's maxLength.
        ("/api/v1/auth/validate-device", json!({"device_token": "x".repeat(4097)}).to_string(), "application/json", 400),
        ("/api/v1/auth/validate-device", json!({"device_jwt": "x".repeat(4097)}).to_string(), "application/json", 400),
        // Ids only in their hyphenated form: an answer names them as sent.
        ("/api/v1/usage/report", json!({"reports": [{"session_id": format!("{{{sid}}}"), "seq": 1, "bytes_up": 1, "bytes_down": 1}]}).to_string(), "application/json", 400),
        ("/api/v1/usage/report", json!({"reports": [{"session_id": format!("urn:uuid:{sid}"), "seq": 1, "bytes_up": 1, "bytes_down": 1}]}).to_string(), "application/json", 400),
        ("/api/v1/quota/grant", json!({"session_id": sid.replace('-', ""), "used": 0, "want": 1}).to_string(), "application/json", 400),
    ];
    for (path, body, ctype, expected) in cases {
        let (s, b) = raw(path, gw.clone(), body.clone(), ctype).await;
        let s = if expected == 413 && s == 0 { 413 } else { s };
        assert_eq!(s, expected, "{path} {}: {b}", &body[..body.len().min(80)]);
        if expected != 413 {
            assert!(
                b["error"]["code"].is_string(),
                "{path}: no error envelope: {b}"
            );
        }
    }
    let (s, b) = raw(
        "/api/v1/outline/heartbeat",
        node_tok.clone(),
        json!({"load": -1}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(
        w.scalar(&format!(
            "SELECT bytes_up AS n FROM sessions WHERE id = '{sid}'"
        ))
        .await,
        0,
        "nothing written"
    );
    assert_eq!(w.scalar("SELECT count(*) AS n FROM usage_hours").await, 0);
    assert_eq!(w.scalar("SELECT count(*) AS n FROM sessions").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_is_served_and_up_to_date() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap_or_default();
    let current = httvps_control::rest::openapi_json_text();
    assert!(
        committed.trim_end() == current.trim_end(),
        "docs/openapi.json is out of date: regenerate it with `cargo run --bin httvps -- openapi > docs/openapi.json`"
    );
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let served: Value = client()
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    for path in [
        "/api/v1/health",
        "/api/v1/auth/validate-device",
        "/api/v1/nodes/assign-outline",
        "/api/v1/usage/report",
        "/api/v1/gateway/heartbeat",
        "/api/v1/outline/heartbeat",
    ] {
        assert!(
            served["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_shows_where_its_open_session_runs_on_postgres() {
    device_placement(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_shows_where_its_open_session_runs_on_sqlite() {
    device_placement(World::on(TestDb::sqlite().await).await).await;
}

async fn device_placement(w: World) {
    let (node, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let (uid, device, tok) = w.device().await;
    let (_, _, other_tok) = w.device().await;
    assert_eq!(
        placement(&w, &uid, &device).await,
        Value::Null,
        "no session yet"
    );
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(s, 200, "{b}");
    let sid = b["session_id"].as_str().expect("session").to_owned();
    // Another device's session does not show on this one.
    let (s, _) = w.assign(&other_tok, None).await;
    assert_eq!(s, 200);
    let p = placement(&w, &uid, &device).await;
    assert_eq!(p["sessionId"], json!(sid), "{p}");
    assert_eq!(p["region"], "eu");
    assert_eq!(p["nodeId"], json!(node));
    assert_eq!(p["nodeName"], "n1");
    assert_eq!(p["nodeHealth"], "up");
    assert!(p["since"].is_string(), "{p}");
    assert!(p.get("host").is_none() && p.get("secret").is_none());
    // The device asking for itself (our client, at each start) opens a
    // newer session with no gateway, which carries no tunnel: the device
    // is still placed where its tunnels run.
    let (s, b) = w
        .post("/api/v1/auth/device-token", Some(&tok), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let jwt = b["token"].as_str().expect("jwt").to_owned();
    let (s, b) = w
        .post("/api/v1/nodes/assign-outline", Some(&jwt), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let own = b["session_id"].as_str().expect("session").to_owned();
    assert_ne!(own, sid);
    let p = placement(&w, &uid, &device).await;
    assert_eq!(p["sessionId"], json!(sid), "{p}");
    w.sql(&format!(
        "UPDATE sessions SET ended_at = started_at, end_reason = 'idle' WHERE id = '{own}'"
    ))
    .await;
    // Once the session ends, the device is placed nowhere.
    w.sql(&format!(
        "UPDATE sessions SET ended_at = started_at, end_reason = 'idle' WHERE id = '{sid}'"
    ))
    .await;
    assert_eq!(
        placement(&w, &uid, &device).await,
        Value::Null,
        "an ended session still shows"
    );
}

/// The `placement` of the only device of user `uid`, read by an admin.
async fn placement(w: &World, uid: &str, device: &str) -> Value {
    let q = "query($u:UUID!){devices(first:5,filter:{userId:$u}){edges{node{id placement{sessionId region regionName nodeId nodeName nodeHealth since}}}}}";
    let r = w.gql(q, json!({"u": uid})).await;
    let edges = r["data"]["devices"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(edges.len(), 1, "{r}");
    assert_eq!(edges[0]["node"]["id"], json!(device));
    edges[0]["node"]["placement"].clone()
}

/// The owner's live view hears of devices marked beyond the device limit
/// and back within it (`LIMIT_CHANGED`), so a console shows the mark
/// without reloading.
#[tokio::test(flavor = "multi_thread")]
async fn owners_see_device_limit_marks_live() {
    let w = World::new().await;
    let base = w.server.base.clone();
    let email = format!("marks-{}@example.com", uuid::Uuid::new_v4().simple());
    let user = accounts::create_user(&w.server.state.db, &email, PASSWORD, Role::User)
        .await
        .expect("user");
    let user_tok = login(&base, &email).await;
    let r = w
        .gql(
            "mutation{a:createPlan(input:{name:\"three\",priceCents:\"0\",durationDays:30,deviceLimit:3}){id} b:createPlan(input:{name:\"one\",priceCents:\"0\",durationDays:30,deviceLimit:1}){id}}",
            json!({}),
        )
        .await;
    let (three, one) = (r["data"]["a"]["id"].clone(), r["data"]["b"]["id"].clone());
    let r = w
        .gql(
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": user.id, "p": three}),
        )
        .await;
    let first_sub = r["data"]["grantSubscription"]["id"].clone();
    let mut ids = Vec::new();
    for name in ["old", "new"] {
        let r = gql(
            &base,
            Some(&user_tok),
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){device{id}}}",
            json!({"n": name}),
        )
        .await;
        ids.push(
            r["data"]["registerDevice"]["device"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
        );
    }
    let mut mine = live(
        &base,
        &user_tok,
        "subscription{myDeviceEvents{kind deviceId}}",
    )
    .await;
    // Renames until one is heard: the subscription is live from then on.
    let mut heard = false;
    for i in 0..20 {
        let r = gql(
            &base,
            Some(&user_tok),
            "mutation($d:UUID!,$n:String!){renameDevice(id:$d,name:$n){name}}",
            json!({"d": ids[0], "n": format!("old-{i}")}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
        if let Ok(v) =
            tokio::time::timeout(std::time::Duration::from_secs(2), live_next(&mut mine)).await
        {
            assert_eq!(
                v["payload"]["data"]["myDeviceEvents"]["kind"], "RENAMED",
                "{v}"
            );
            heard = true;
            break;
        }
    }
    assert!(heard, "the live view never answered");

    // A one-device plan in place of the three-device one: the newer device
    // is marked.
    w.gql(
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": first_sub}),
    )
    .await;
    w.gql(
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": user.id, "p": one}),
    )
    .await;
    let ev = live_event(&mut mine, "myDeviceEvents").await;
    assert_eq!(
        (ev["kind"].as_str(), ev["deviceId"].as_str()),
        (Some("LIMIT_CHANGED"), Some(ids[1].as_str())),
        "{ev}"
    );
    // Revoking the older one brings the newer back within the limit.
    let r = gql(
        &base,
        Some(&user_tok),
        "mutation($d:UUID!){revokeDevice(id:$d){id}}",
        json!({"d": ids[0]}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let ev = live_event(&mut mine, "myDeviceEvents").await;
        got.push((
            ev["kind"].as_str().unwrap_or_default().to_owned(),
            ev["deviceId"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("LIMIT_CHANGED".to_owned(), ids[1].clone()),
            ("REVOKED".to_owned(), ids[0].clone())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_feed_and_owners_see_sessions_quota_and_devices_live_on_postgres() {
    live_feed(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_feed_and_owners_see_sessions_quota_and_devices_live_on_sqlite() {
    live_feed(World::on(TestDb::sqlite().await).await).await;
}

async fn live_feed(w: World) {
    let base = w.server.base.clone();
    let (node, t1) = w.node("eu", "n1", 100).await;
    w.beat(&t1, 0).await;
    let email = format!("feed-{}@example.com", uuid::Uuid::new_v4().simple());
    accounts::create_user(&w.server.state.db, &email, PASSWORD, Role::User)
        .await
        .expect("user");
    let user_tok = login(&base, &email).await;
    let r = w
        .gql(
            "query($e:String!){users(first:1,filter:{emailContains:$e}){edges{node{id}}}}",
            json!({"e": email}),
        )
        .await;
    let uid = r["data"]["users"]["edges"][0]["node"]["id"]
        .as_str()
        .expect("uid")
        .to_owned();
    w.gql(
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": uid, "p": w.plan_id}),
    )
    .await;
    let r = gql(
        &base,
        Some(&user_tok),
        "mutation{registerDevice(name:\"d\",platform:\"linux\"){accessToken device{id}}}",
        json!({}),
    )
    .await;
    let device = r["data"]["registerDevice"]["device"]["id"]
        .as_str()
        .expect("device")
        .to_owned();
    let device_tok = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .expect("tok")
        .to_owned();

    // Only admins follow the feed.
    let mut refused = live(&base, &user_tok, "subscription{sessionEvents{kind}}").await;
    let v = live_next(&mut refused).await;
    assert_eq!(v["payload"]["data"], Value::Null, "{v}");
    assert_eq!(
        v["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{v}"
    );

    let mut sessions = live(&base, &w.admin, "subscription{sessionEvents(region:\"eu\"){kind sessionId deviceId userId userEmail region outlineNodeId endReason bytesUp bytesDown at}}").await;
    let mut quota = live(&base, &w.admin, "subscription{quotaEvents{kind subscriptionId userId userEmail trafficLimitBytes trafficUsedBytes}}").await;
    let mut mine = live(
        &base,
        &user_tok,
        "subscription{myDeviceEvents{kind deviceId placement{nodeId nodeName region}}}",
    )
    .await;
    // Subscriptions are in place once an event of another kind flows; give
    // the server a beat to register them (bounded: the assignment below
    // is retried until an event arrives).
    let mut sid = None;
    for _ in 0..20 {
        let (s, b) = w.assign(&device_tok, None).await;
        assert_eq!(s, 200, "{b}");
        sid = b["session_id"].as_str().map(str::to_owned);
        if let Ok(v) = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            live_next(&mut sessions),
        )
        .await
        {
            let ev = &v["payload"]["data"]["sessionEvents"];
            assert_eq!(ev["kind"], "OPENED", "{v}");
            assert_eq!(ev["sessionId"], json!(sid));
            assert_eq!(ev["deviceId"], json!(device));
            assert_eq!(ev["userId"], json!(uid));
            assert_eq!(ev["userEmail"], json!(email));
            assert_eq!(ev["region"], "eu");
            assert_eq!(ev["outlineNodeId"], json!(node));
            assert_eq!(ev["endReason"], Value::Null);
            break;
        }
        // Not subscribed yet when the session opened: end it and retry.
        w.sql(&format!(
            "UPDATE sessions SET ended_at = started_at, end_reason = 'idle' WHERE id = '{}'",
            sid.clone().unwrap_or_default()
        ))
        .await;
        sid = None;
    }
    let sid = sid.expect("an OPENED event");
    // The owner sees the device placed (earlier tries may show first).
    let mut placed = false;
    for _ in 0..40 {
        let ev = live_event(&mut mine, "myDeviceEvents").await;
        assert_eq!(ev["deviceId"], json!(device), "{ev}");
        if ev["kind"] == "SESSION_OPENED" && ev["placement"]["nodeId"] == json!(node) {
            assert_eq!(ev["placement"]["region"], "eu");
            placed = true;
            break;
        }
    }
    assert!(placed, "no SESSION_OPENED with a placement");

    // Crossing the 1,000,000-byte allowance: QUOTA_REACHED, then the
    // session closes with its reason.
    let (s, b) = w
        .post("/api/v1/usage/report", Some(&w.gateway), json!({"reports": [{"session_id": sid, "seq": 1, "bytes_up": 400_000, "bytes_down": 700_000}]}))
        .await;
    assert_eq!(s, 200, "{b}");
    let ev = live_event(&mut quota, "quotaEvents").await;
    assert_eq!(ev["kind"], "QUOTA_REACHED", "{ev}");
    assert_eq!(ev["userId"], json!(uid));
    assert_eq!(ev["userEmail"], json!(email));
    assert_eq!(ev["trafficLimitBytes"], "1000000");
    assert_eq!(ev["trafficUsedBytes"], "1100000");
    let ev = live_event(&mut sessions, "sessionEvents").await;
    assert_eq!(ev["kind"], "CLOSED", "{ev}");
    assert_eq!(ev["sessionId"], json!(sid));
    assert_eq!(ev["endReason"], "quota_exceeded");
    assert_eq!(
        (ev["bytesUp"].as_str(), ev["bytesDown"].as_str()),
        (Some("400000"), Some("700000"))
    );
    let ev = live_event(&mut mine, "myDeviceEvents").await;
    assert_eq!(ev["kind"], "SESSION_CLOSED", "{ev}");
    assert_eq!(ev["placement"], Value::Null, "{ev}");

    // A rename (here an admin's) reaches the owner's view.
    let r = gql(
        &base,
        Some(&w.admin),
        "mutation($d:UUID!){renameDevice(id:$d,name:\"laptop\"){name}}",
        json!({"d": device}),
    )
    .await;
    assert_eq!(r["data"]["renameDevice"]["name"], "laptop", "{r}");
    let ev = live_event(&mut mine, "myDeviceEvents").await;
    assert_eq!(
        (ev["kind"].as_str(), ev["deviceId"].as_str()),
        (Some("RENAMED"), Some(device.as_str())),
        "{ev}"
    );

    // A revocation reaches the owner's view.
    let r = gql(
        &base,
        Some(&user_tok),
        "mutation($d:UUID!){revokeDevice(id:$d){id}}",
        json!({"d": device}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let ev = live_event(&mut mine, "myDeviceEvents").await;
    assert_eq!(
        (ev["kind"].as_str(), ev["deviceId"].as_str()),
        (Some("REVOKED"), Some(device.as_str())),
        "{ev}"
    );

    // The subscription reaches its expiry (the sweeper run at a later
    // time): EXPIRED once, and it shows as expired.
    let later = httvps_control::db::models::now() + chrono::Duration::days(4000);
    let swept = sweep_at(&w.server.state.db, later).await.expect("sweep");
    assert!(swept.expired >= 1, "{swept:?}");
    let mut expired = None;
    for _ in 0..5 {
        let ev = live_event(&mut quota, "quotaEvents").await;
        if ev["kind"] == "EXPIRED" {
            expired = Some(ev);
            break;
        }
    }
    let ev = expired.expect("an EXPIRED event");
    assert_eq!(ev["userId"], json!(uid), "{ev}");
    assert_eq!(ev["userEmail"], json!(email));
    assert_eq!(ev["trafficUsedBytes"], "1100000");
    let again = sweep_at(&w.server.state.db, later).await.expect("sweep");
    assert_eq!(again.expired, 0, "expired once");
    let r = w
        .gql(
            "query($u:UUID!){subscriptions(filter:{userId:$u}){nodes{status}}}",
            json!({"u": uid}),
        )
        .await;
    assert_eq!(
        r["data"]["subscriptions"]["nodes"][0]["status"], "EXPIRED",
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_change_in_place_on_postgres() {
    nodes_change_in_place(World::without_front(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_change_in_place_on_sqlite() {
    nodes_change_in_place(World::without_front(TestDb::sqlite().await).await).await;
}

/// The audit actions recorded for `target`, oldest first.
async fn trail(w: &World, target: &str) -> Vec<(String, Value)> {
    let r = w
        .gql(
            "query($t:UUID!){auditLog(first:50,filter:{targetId:$t}){nodes{action details createdAt}}}",
            json!({"t": target}),
        )
        .await;
    let mut entries: Vec<(String, String, Value)> = r["data"]["auditLog"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| {
            let details = e["details"]
                .as_str()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or_else(|| e["details"].clone());
            (
                e["createdAt"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
                details,
            )
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, a, d)| (a, d)).collect()
}

fn code(r: &Value) -> &str {
    r["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

/// An Outline node's address, name and capacity and a gateway's name and
/// URL change in place: new tunnels go to the new address (the gateways'
/// answers routing to the node are withdrawn), new links carry the new
/// URL, each change is audited once, a change that changes nothing is
/// neither audited nor published, and a bad value changes nothing.
async fn nodes_change_in_place(w: World) {
    use httvps_control::events::NodeEventKind;
    let (node, nt) = w.node("eu", "n1", 100).await;
    w.node("us", "taken", 100).await;
    w.beat(&nt, 0).await;
    let (_, device, tok) = w.device().await;
    let (s, b) = w.assign(&tok, None).await;
    assert_eq!(
        (s, &b["host"], &b["port"]),
        (200, &json!("n1.nodes.example.com"), &json!(8388)),
        "{b}"
    );
    // A gateway could not reach it at its old address: down, and out of
    // rotation until reached again.
    let (s, _) = w
        .post(
            "/api/v1/gateway/heartbeat",
            Some(&w.gateway),
            json!({"unreachable_nodes": [node]}),
        )
        .await;
    assert_eq!(s, 200);
    let mut events = w.server.state.db.events().subscribe();
    let mut access = w.server.state.db.events().subscribe_access();

    let update = "mutation($i:UUID!,$in:UpdateOutlineNodeInput!){updateOutlineNode(id:$i,input:$in){id name host port capacity health}}";
    let r = w
        .gql(
            update,
            json!({"i": node, "in": {"host": "[2001:db8::7]", "port": 8389, "capacity": 50}}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let n = &r["data"]["updateOutlineNode"];
    assert_eq!(
        (&n["name"], &n["host"], &n["port"], &n["capacity"]),
        (
            &json!("n1"),
            &json!("2001:db8::7"),
            &json!(8389),
            &json!(50)
        ),
        "{r}"
    );
    assert_eq!(
        n["health"], "unknown",
        "a new address is not known to be down: {r}"
    );
    let ev = next_event(&mut events, NodeEventKind::Updated).await;
    assert_eq!((ev.node_id.as_str(), ev.capacity), (node.as_str(), 50));
    let withdrawn = tokio::time::timeout(std::time::Duration::from_secs(5), access.recv())
        .await
        .expect("an access event in time")
        .expect("event");
    assert_eq!(
        (withdrawn.reason.as_str(), withdrawn.node_id.as_deref()),
        ("node_withdrawn", Some(node.as_str()))
    );
    // The open session's device and a new one both reach the new address.
    let (_, again) = w.assign(&tok, None).await;
    assert_eq!(
        (&again["host"], &again["port"]),
        (&json!("2001:db8::7"), &json!(8389)),
        "{again}"
    );
    let (_, _, other) = w.device().await;
    let (s, fresh) = w.assign(&other, None).await;
    assert_eq!((s, &fresh["host"]), (200, &json!("2001:db8::7")), "{fresh}");

    // Changing nothing (no field, or every field as it is): no entry, no event.
    for same in [
        json!({}),
        json!({"host": "2001:db8::7", "port": 8389, "name": "n1"}),
    ] {
        let r = w.gql(update, json!({"i": node, "in": same})).await;
        assert_eq!(r["data"]["updateOutlineNode"]["host"], "2001:db8::7", "{r}");
    }
    // A capacity-only change has no new address: nothing is withdrawn.
    let r = w
        .gql(
            update,
            json!({"i": node, "in": {"name": "n1b", "capacity": 60}}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let ev = next_event(&mut events, NodeEventKind::Updated).await;
    assert_eq!(
        ev.capacity, 60,
        "the first event after the no-ops is the rename's"
    );
    // On PostgreSQL the events come through LISTEN one after another: a
    // withdrawal would be close behind the update's event.
    let withdrawn = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        loop {
            match access.recv().await {
                Ok(e) if e.reason == "node_withdrawn" => break e,
                Ok(_) => {}
                Err(_) => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(
        withdrawn.is_err(),
        "no address change, nothing withdrawn: {withdrawn:?}"
    );
    let actions = trail(&w, &node).await;
    let updates: Vec<&Value> = actions
        .iter()
        .filter(|(a, _)| a == "update_outline_node")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(updates.len(), 2, "{actions:?}");
    assert_eq!(
        updates[0],
        &json!({"host": "2001:db8::7", "port": 8389, "capacity": 50})
    );
    assert_eq!(updates[1], &json!({"name": "n1b", "capacity": 60}));

    // Bad values: a typed error and nothing changed.
    for (bad, want) in [
        (json!({"port": 0}), "BAD_REQUEST"),
        (json!({"port": 65536}), "BAD_REQUEST"),
        (json!({"host": "10.1.0.9:80"}), "BAD_REQUEST"),
        (json!({"host": "0.0.0.0"}), "BAD_REQUEST"),
        (json!({"capacity": 0}), "BAD_REQUEST"),
        (json!({"name": " "}), "BAD_REQUEST"),
        (json!({"name": "taken", "port": 9000}), "CONFLICT"),
    ] {
        let r = w.gql(update, json!({"i": node, "in": bad})).await;
        assert_eq!(code(&r), want, "{bad}: {r}");
    }
    let r = w
        .gql(update, json!({"i": device, "in": {"port": 9000}}))
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = w
        .gql(
            "{outlineNodes(first:10){nodes{id name host port capacity}}}",
            json!({}),
        )
        .await;
    let kept = r["data"]["outlineNodes"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == json!(node))
        .cloned()
        .expect("the node");
    assert_eq!(
        kept,
        json!({"id": node, "name": "n1b", "host": "2001:db8::7", "port": 8389, "capacity": 60})
    );

    // The gateway: a new URL goes into the links handed out from now on.
    let r = w.gql("{gatewayNodes(first:5){nodes{id}}}", json!({})).await;
    let gw = r["data"]["gatewayNodes"]["nodes"][0]["id"]
        .as_str()
        .expect("gateway")
        .to_owned();
    let gupdate = "mutation($i:UUID!,$in:UpdateGatewayNodeInput!){updateGatewayNode(id:$i,input:$in){name publicUrl}}";
    let r = w
        .gql(
            gupdate,
            json!({"i": gw, "in": {"publicUrl": "https://GW2.example.com:8443/"}}),
        )
        .await;
    assert_eq!(
        r["data"]["updateGatewayNode"],
        json!({"name": "gw1", "publicUrl": "https://gw2.example.com:8443"}),
        "{r}"
    );
    let r = w
        .gql(
            "mutation($d:UUID!){rotateDeviceToken(id:$d){links{sip002}}}",
            json!({"d": device}),
        )
        .await;
    let link = r["data"]["rotateDeviceToken"]["links"]["sip002"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(link.contains("gw2.example.com"), "{link}");
    assert!(!link.contains("gw1.example.com"), "{link}");
    for (bad, want) in [
        (
            json!({"publicUrl": "http://gw3.example.com"}),
            "BAD_REQUEST",
        ),
        (
            json!({"publicUrl": "https://gw3.example.com/path"}),
            "BAD_REQUEST",
        ),
        (json!({"name": ""}), "BAD_REQUEST"),
    ] {
        let r = w.gql(gupdate, json!({"i": gw, "in": bad})).await;
        assert_eq!(code(&r), want, "{bad}: {r}");
    }
    // An Outline node's id is not a gateway's, and the other way round.
    let r = w
        .gql(gupdate, json!({"i": node, "in": {"name": "x"}}))
        .await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let r = w.gql(update, json!({"i": gw, "in": {"name": "x"}})).await;
    assert_eq!(code(&r), "NOT_FOUND", "{r}");
    let gtrail = trail(&w, &gw).await;
    let gupdates: Vec<&Value> = gtrail
        .iter()
        .filter(|(a, _)| a == "update_gateway_node")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        gupdates,
        vec![&json!({"publicUrl": "https://gw2.example.com:8443"})]
    );

    // Subscribers cannot change nodes.
    let user = w.subscriber().await;
    let r = gql(
        &w.server.base,
        Some(&user),
        update,
        json!({"i": node, "in": {"port": 1}}),
    )
    .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = gql(
        &w.server.base,
        Some(&user),
        gupdate,
        json!({"i": gw, "in": {"name": "mine"}}),
    )
    .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_are_renamed_and_deleted_on_postgres() {
    regions_renamed_and_deleted(World::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn regions_are_renamed_and_deleted_on_sqlite() {
    regions_renamed_and_deleted(World::on(TestDb::sqlite().await).await).await;
}

/// A region is renamed with its code and key kept (the same name again is
/// not audited again); it is deleted only while nothing belongs to it, and
/// its code can then be created anew.
async fn regions_renamed_and_deleted(w: World) {
    async fn regions(w: &World) -> std::collections::BTreeMap<String, Value> {
        let r = w
            .gql("{regions(first:10){nodes{id code name}}}", json!({}))
            .await;
        r["data"]["regions"]["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|n| (n["code"].as_str().unwrap_or_default().to_owned(), n.clone()))
            .collect()
    }
    let before = regions(&w).await;
    let (eu, us) = (before["eu"]["id"].clone(), before["us"]["id"].clone());
    let rename = "mutation($i:UUID!,$n:String!){renameRegion(id:$i,name:$n){id code name}}";
    for _ in 0..2 {
        let r = w.gql(rename, json!({"i": eu, "n": " Europe "})).await;
        assert_eq!(
            r["data"]["renameRegion"],
            json!({"id": eu, "code": "eu", "name": "Europe"}),
            "{r}"
        );
    }
    let renames = trail(&w, eu.as_str().expect("id")).await;
    assert_eq!(
        renames.iter().filter(|(a, _)| a == "rename_region").count(),
        1,
        "the same name again is not a change: {renames:?}"
    );
    for (vars, want) in [
        (json!({"i": eu, "n": ""}), "BAD_REQUEST"),
        (json!({"i": eu, "n": "a\u{202e}b"}), "BAD_REQUEST"),
        (json!({"i": uuid::Uuid::new_v4(), "n": "x"}), "NOT_FOUND"),
    ] {
        let r = w.gql(rename, vars.clone()).await;
        assert_eq!(code(&r), want, "{vars}: {r}");
    }
    // A gateway belongs to eu: it stays, with the reason.
    let delete = "mutation($i:UUID!){deleteRegion(id:$i)}";
    let r = w.gql(delete, json!({"i": eu})).await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("delete them first")),
        "{r}"
    );
    assert_eq!(regions(&w).await["eu"]["name"], "Europe");
    // A node keeps us until it goes.
    let (node, _) = w.node("us", "us1", 10).await;
    assert_eq!(code(&w.gql(delete, json!({"i": us})).await), "CONFLICT");
    let r = w
        .gql("mutation($i:UUID!){deleteNode(id:$i)}", json!({"i": node}))
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let r = w.gql(delete, json!({"i": us})).await;
    assert_eq!(r["data"]["deleteRegion"], true, "{r}");
    assert!(!regions(&w).await.contains_key("us"));
    assert_eq!(code(&w.gql(delete, json!({"i": us})).await), "NOT_FOUND");
    let deletions = trail(&w, us.as_str().expect("id")).await;
    assert!(
        deletions
            .iter()
            .any(|(a, d)| a == "delete_region" && d["code"] == "us"),
        "{deletions:?}"
    );
    let r = w
        .gql(
            "mutation{createRegion(code:\"us\",name:\"US again\"){code}}",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["createRegion"]["code"], "us", "{r}");
    // Subscribers can do neither.
    let user = w.subscriber().await;
    let r = gql(
        &w.server.base,
        Some(&user),
        rename,
        json!({"i": eu, "n": "mine"}),
    )
    .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
    let r = gql(&w.server.base, Some(&user), delete, json!({"i": eu})).await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");
}

/// The gateway `BACKEND_GATEWAY_URL` names keeps its URL: links are built
/// on the setting, and a gateway moved away from it would leave them on a
/// URL no gateway is registered at, with another region's key. Its name
/// may change, and so may another gateway's URL.
#[tokio::test(flavor = "multi_thread")]
async fn the_configured_gateway_keeps_its_url() {
    let w = World::new().await;
    let r = w
        .gql(
            "mutation{a:registerGatewayNode(input:{region:\"us\",name:\"front\",publicUrl:\"https://GW.test.example/\"}){node{id}} b:registerGatewayNode(input:{region:\"us\",name:\"other\",publicUrl:\"https://other.example.com\"}){node{id}}}",
            json!({}),
        )
        .await;
    let (front, other) = (
        r["data"]["a"]["node"]["id"].clone(),
        r["data"]["b"]["node"]["id"].clone(),
    );
    assert!(front.is_string() && other.is_string(), "{r}");
    let update = "mutation($i:UUID!,$in:UpdateGatewayNodeInput!){updateGatewayNode(id:$i,input:$in){name publicUrl}}";
    let r = w
        .gql(
            update,
            json!({"i": front, "in": {"publicUrl": "https://moved.example.com"}}),
        )
        .await;
    assert_eq!(code(&r), "CONFLICT", "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("BACKEND_GATEWAY_URL")),
        "{r}"
    );
    let r = w
        .gql(update, json!({"i": front, "in": {"name": "front-1"}}))
        .await;
    assert_eq!(
        r["data"]["updateGatewayNode"],
        json!({"name": "front-1", "publicUrl": "https://gw.test.example"}),
        "{r}"
    );
    let r = w
        .gql(
            update,
            json!({"i": other, "in": {"publicUrl": "https://other-2.example.com"}}),
        )
        .await;
    assert_eq!(
        r["data"]["updateGatewayNode"]["publicUrl"], "https://other-2.example.com",
        "{r}"
    );
}
