//! A device's sessions follow what happens to it, on PostgreSQL and on
//! SQLite: revoking the device, disabling its owner or cancelling the
//! owner's subscription ends its open session rows in the same change
//! (not when a gateway next reports), and usage a gateway reports later
//! for those sessions is still charged. An admin's `closeSession` ends
//! one session (`closed_by_admin`), and only that one. A device that asks for a node
//! itself without naming a region lands in a region chosen by a rule
//! (its placement, else the first gateway's region), never at random,
//! and is sent to a gateway of that region.
//! A session opened with a token replaced meanwhile is closed at the
//! gateway's next heartbeat, or by the device's next assignment with its
//! current token, which does not join it.
//! A plan covering fewer devices than an account has leaves the oldest
//! working and refuses the newest (`device_limit`) until one is revoked.

mod common;

use common::{TestDb, TestServer, client, gql, live, live_event};
use httvps_control::accounts::{self, Role};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

struct World {
    server: TestServer,
    admin: String,
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

/// A user with a subscription and one device.
struct Owner {
    user_id: String,
    subscription_id: String,
    device_id: String,
    token: String,
    /// The owner's access JWT.
    login: String,
}

impl World {
    /// A control plane with regions `eu` then `us` and a plan.
    async fn on(db: TestDb) -> World {
        // No configured gateway URL: the registered gateways are the
        // entry points.
        Self::entering_at(db, None).await
    }

    /// As [`World::on`], with `entry` as the configured gateway URL.
    async fn entering_at(db: TestDb, entry: Option<&str>) -> World {
        let mut settings = common::settings(db.dsn.clone(), false);
        settings.gateway_url = entry.map(str::to_owned);
        let server =
            TestServer::start_with(settings, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await;
        accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
            .await
            .expect("admin");
        let admin = login(&server.base, "root@example.com").await;
        let r = gql(&server.base, Some(&admin), "mutation{a:createRegion(code:\"eu\",name:\"EU\"){id} b:createRegion(code:\"us\",name:\"US\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"100000000\",deviceLimit:5}){id}}", json!({})).await;
        let plan_id = r["data"]["createPlan"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        World {
            server,
            admin,
            plan_id,
            _db: db,
        }
    }

    async fn gql(&self, q: &str, vars: Value) -> Value {
        let r = gql(&self.server.base, Some(&self.admin), q, vars).await;
        assert!(r["errors"].is_null(), "{r}");
        r
    }

    /// Registers a gateway in `region`; returns its token.
    async fn gateway(&self, region: &str, url: &str) -> String {
        let r = self
            .gql(
                "mutation($r:String!,$u:String!){registerGatewayNode(input:{region:$r,name:$u,publicUrl:$u}){token}}",
                json!({"r": region, "u": url}),
            )
            .await;
        r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    }

    /// Registers an Outline node in `region`.
    async fn node(&self, region: &str, name: &str) {
        // A server of its own per node (one address is one node).
        self.gql(
            "mutation($r:String!,$n:String!,$h:String!){registerOutlineNode(input:{region:$r,name:$n,host:$h,port:8388,capacity:100}){token}}",
            json!({"r": region, "n": name, "h": format!("{name}.nodes.example.com")}),
        )
        .await;
    }

    /// A new user with a subscription and one device.
    async fn owner(&self) -> Owner {
        let email = format!("u-{}@example.com", uuid::Uuid::new_v4().simple());
        let user = accounts::create_user(&self.server.state.db, &email, PASSWORD, Role::User)
            .await
            .expect("user");
        let r = self
            .gql(
                "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
                json!({"u": user.id, "p": self.plan_id}),
            )
            .await;
        let subscription_id = r["data"]["grantSubscription"]["id"]
            .as_str()
            .expect("subscription")
            .to_owned();
        let tok = login(&self.server.base, &email).await;
        let r = gql(
            &self.server.base,
            Some(&tok),
            "mutation{registerDevice(name:\"d\",platform:\"linux\"){accessToken device{id}}}",
            json!({}),
        )
        .await;
        let d = &r["data"]["registerDevice"];
        Owner {
            user_id: user.id.to_string(),
            subscription_id,
            device_id: d["device"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
            token: d["accessToken"].as_str().expect("token").to_owned(),
            login: tok,
        }
    }

    async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let res = client()
            .post(self.server.url(path))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A session for `device_token` through the gateway holding `gateway`.
    async fn session(&self, gateway: &str, device_token: &str) -> String {
        let (s, b) = self
            .post(
                "/api/v1/nodes/assign-outline",
                gateway,
                json!({"device_token": device_token}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["session_id"].as_str().expect("session").to_owned()
    }

    /// A cumulative usage report of `gateway` for `session`.
    async fn report(&self, gateway: &str, session: &str, seq: i64, up: i64, down: i64) {
        let (s, b) = self
            .post(
                "/api/v1/usage/report",
                gateway,
                json!({"reports": [{"session_id": session, "seq": seq, "bytes_up": up, "bytes_down": down}]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// The device asks for a node itself (with its device JWT).
    async fn assign_as_device(&self, device_token: &str, region: Option<&str>) -> Value {
        let (s, b) = self
            .post("/api/v1/auth/device-token", device_token, json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
        let jwt = b["token"].as_str().expect("jwt").to_owned();
        let (s, b) = self
            .post(
                "/api/v1/nodes/assign-outline",
                &jwt,
                json!({"region": region}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    /// Waits (at most 20 s) until every stored usage report is applied.
    async fn usage_settled(&self) {
        for _ in 0..400 {
            if self.int("SELECT count(*) AS n FROM usage_inbox").await == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("usage inbox not drained in 20 s");
    }

    /// What validate-device says of `device_token`: valid, and the reason.
    async fn validate(&self, gateway: &str, device_token: &str) -> (bool, Value) {
        let (s, b) = self
            .post(
                "/api/v1/auth/validate-device",
                gateway,
                json!({"device_token": device_token}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        (b["valid"].as_bool().expect("valid"), b["reason"].clone())
    }

    /// Runs a statement that changes rows.
    async fn exec(&self, q: &str) {
        use diesel_async::RunQueryDsl;
        match &self.server.state.db.pool {
            httvps_control::db::DbPool::Pg(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q).execute(&mut *conn).await.expect("sql");
            }
            httvps_control::db::DbPool::Sqlite(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q).execute(&mut *conn).await.expect("sql");
            }
        }
    }

    async fn int(&self, q: &str) -> i64 {
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

    /// The session's end reason (`None`: open), checked against `ended_at`.
    async fn end_reason(&self, session: &str) -> Option<String> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            reason: Option<String>,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            ended: i64,
        }
        let q = format!(
            "SELECT end_reason AS reason, CAST(CASE WHEN ended_at IS NULL THEN 0 ELSE 1 END AS BIGINT) AS ended FROM sessions WHERE id = '{session}'"
        );
        let r: R = match &self.server.state.db.pool {
            httvps_control::db::DbPool::Pg(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q)
                    .get_result(&mut *conn)
                    .await
                    .expect("sql")
            }
            httvps_control::db::DbPool::Sqlite(pool) => {
                let mut conn = pool.get().await.expect("conn");
                diesel::sql_query(q)
                    .get_result(&mut *conn)
                    .await
                    .expect("sql")
            }
        };
        assert_eq!(r.ended == 1, r.reason.is_some(), "{session}");
        r.reason
    }
}

/// Each change ends the sessions in its own transaction; a late report for
/// an ended session is charged to the session and to the subscription.
async fn changes_end_sessions_at_once(w: World) {
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    w.node("eu", "n1").await;

    // Revoking a device.
    let a = w.owner().await;
    let sid = w.session(&gw, &a.token).await;
    w.report(&gw, &sid, 1, 1_000, 2_000).await;
    w.usage_settled().await;
    assert_eq!(w.end_reason(&sid).await, None);
    w.gql(
        "mutation($id:UUID!){revokeDevice(id:$id){status}}",
        json!({"id": a.device_id}),
    )
    .await;
    assert_eq!(
        w.end_reason(&sid).await.as_deref(),
        Some("device_revoked"),
        "the session should end with the revocation"
    );
    // Revoked again (by the admin): answered as it is, its time and its
    // one audit entry standing.
    let revoked_at = |r: &Value| r["data"]["revokeDevice"]["revokedAt"].clone();
    let revoke = "mutation($id:UUID!){revokeDevice(id:$id){status revokedAt}}";
    let first = w.gql(revoke, json!({"id": a.device_id})).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = w.gql(revoke, json!({"id": a.device_id})).await;
    assert_eq!(
        again["data"]["revokeDevice"]["status"], "REVOKED",
        "{again}"
    );
    assert!(revoked_at(&first).is_string(), "{first}");
    assert_eq!(revoked_at(&again), revoked_at(&first), "{again}");
    assert_eq!(
        w.int(&format!(
            "SELECT CAST(count(*) AS BIGINT) AS n FROM audit_log \
             WHERE action = 'revoke_device' AND target_id = '{}'",
            a.device_id
        ))
        .await,
        1,
        "one audit entry"
    );
    // The gateway's last report arrives after the revocation: charged.
    w.report(&gw, &sid, 2, 5_000, 7_000).await;
    w.usage_settled().await;
    let used = |sub: &str| {
        format!(
            "SELECT CAST(traffic_used_bytes AS BIGINT) AS n FROM subscriptions WHERE id = '{sub}'"
        )
    };
    assert_eq!(
        w.int(&format!(
            "SELECT CAST(bytes_up + bytes_down AS BIGINT) AS n FROM sessions WHERE id = '{sid}'"
        ))
        .await,
        12_000
    );
    assert_eq!(w.int(&used(&a.subscription_id)).await, 12_000);

    // Disabling the owner.
    let b = w.owner().await;
    let sid = w.session(&gw, &b.token).await;
    w.gql(
        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
        json!({"id": b.user_id}),
    )
    .await;
    assert_eq!(w.end_reason(&sid).await.as_deref(), Some("user_disabled"));
    w.report(&gw, &sid, 1, 300, 400).await;
    w.usage_settled().await;
    assert_eq!(w.int(&used(&b.subscription_id)).await, 700);

    // Cancelling the owner's subscription.
    let c = w.owner().await;
    let sid = w.session(&gw, &c.token).await;
    w.gql(
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": c.subscription_id}),
    )
    .await;
    assert_eq!(
        w.end_reason(&sid).await.as_deref(),
        Some("subscription_ended")
    );

    // Someone else's session stays open through all of it.
    let (d, e) = (w.owner().await, w.owner().await);
    let kept = w.session(&gw, &d.token).await;
    let gone = w.session(&gw, &e.token).await;
    w.gql(
        "mutation($id:UUID!){revokeDevice(id:$id){status}}",
        json!({"id": e.device_id}),
    )
    .await;
    assert_eq!(w.end_reason(&gone).await.as_deref(), Some("device_revoked"));
    assert_eq!(w.end_reason(&kept).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_disabling_or_cancelling_ends_sessions_at_once_postgres() {
    changes_end_sessions_at_once(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_disabling_or_cancelling_ends_sessions_at_once_sqlite() {
    changes_end_sessions_at_once(World::on(TestDb::sqlite().await).await).await;
}

/// A plan covering fewer devices than the account has, granted after a
/// larger one: the oldest devices keep working, the newest are refused
/// with `device_limit` and their open sessions end with it; revoking one
/// frees a place for the next in line; a later change of the plan leaves
/// the subscription's limit as it was granted.
async fn a_smaller_plan_leaves_the_oldest_devices(w: World) {
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    w.node("eu", "n1").await;
    let small = w
        .gql(
            "mutation{createPlan(input:{name:\"small\",priceCents:\"0\",durationDays:30,deviceLimit:2}){id}}",
            json!({}),
        )
        .await["data"]["createPlan"]["id"]
        .as_str()
        .expect("plan")
        .to_owned();
    let a = w.owner().await;
    let mut tokens = vec![a.token.clone()];
    let mut ids = vec![a.device_id.clone()];
    for name in ["b", "c"] {
        let r = gql(
            &w.server.base,
            Some(&a.login),
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){accessToken device{id}}}",
            json!({"n": name}),
        )
        .await;
        let d = &r["data"]["registerDevice"];
        tokens.push(
            d["accessToken"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
        );
        ids.push(d["device"]["id"].as_str().expect("id").to_owned());
    }
    let oldest = w.session(&gw, &tokens[0]).await;
    let newest = w.session(&gw, &tokens[2]).await;

    // The five-device subscription lapses with the sessions still open,
    // and the two-device plan is granted.
    w.exec(&format!(
        "UPDATE subscriptions SET starts_at = '2020-01-01 00:00:00', expires_at = '2020-02-01 00:00:00' WHERE id = '{}'",
        a.subscription_id
    ))
    .await;
    let r = w
        .gql(
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id deviceLimit}}",
            json!({"u": a.user_id, "p": small}),
        )
        .await;
    assert_eq!(r["data"]["grantSubscription"]["deviceLimit"], 2, "{r}");
    let small_sub = r["data"]["grantSubscription"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        w.end_reason(&newest).await.as_deref(),
        Some("device_limit"),
        "the newest device's session ends with the grant"
    );
    assert_eq!(
        w.end_reason(&oldest).await,
        None,
        "the oldest keeps its session"
    );

    assert_eq!(w.validate(&gw, &tokens[0]).await, (true, Value::Null));
    assert_eq!(w.validate(&gw, &tokens[1]).await, (true, Value::Null));
    assert_eq!(
        w.validate(&gw, &tokens[2]).await,
        (false, json!("device_limit"))
    );
    let (s, b) = w
        .post(
            "/api/v1/nodes/assign-outline",
            &gw,
            json!({"device_token": tokens[2]}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["reason"].as_str()),
        (403, Some("device_limit")),
        "{b}"
    );
    let marks = gql(
        &w.server.base,
        Some(&a.login),
        "{devices{edges{node{name overLimit}}}}",
        json!({}),
    )
    .await;
    let mut marked: Vec<(String, bool)> = marks["data"]["devices"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{marks}"))
        .iter()
        .map(|e| {
            (
                e["node"]["name"].as_str().expect("name").to_owned(),
                e["node"]["overLimit"].as_bool().expect("overLimit"),
            )
        })
        .collect();
    marked.sort();
    assert_eq!(
        marked,
        [("b".into(), false), ("c".into(), true), ("d".into(), false)]
    );
    // Three active devices under a limit of two: no fourth.
    let r = gql(
        &w.server.base,
        Some(&a.login),
        "mutation{registerDevice(name:\"e\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{r}"
    );

    // Lowering the plan now leaves the granted subscription as it is.
    w.gql(
        "mutation($id:UUID!){updatePlan(id:$id,input:{deviceLimit:1}){deviceLimit}}",
        json!({"id": small}),
    )
    .await;
    assert_eq!(w.validate(&gw, &tokens[1]).await, (true, Value::Null));

    // Revoking the oldest frees its place for the newest.
    w.gql(
        "mutation($id:UUID!){revokeDevice(id:$id){status}}",
        json!({"id": ids[0]}),
    )
    .await;
    assert_eq!(w.validate(&gw, &tokens[2]).await, (true, Value::Null));
    let again = w.session(&gw, &tokens[2]).await;
    assert_eq!(w.end_reason(&again).await, None);

    // The two-device subscription runs out; a five-device one takes its
    // place and a third device is registered under it; when that one is
    // cancelled and the two-device one extended, the newest is beyond the
    // limit again.
    w.exec(&format!(
        "UPDATE subscriptions SET status = 'expired' WHERE id = '{small_sub}'"
    ))
    .await;
    let r = w
        .gql(
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": a.user_id, "p": w.plan_id}),
        )
        .await;
    let big_sub = r["data"]["grantSubscription"]["id"].as_str().expect("id");
    let r = gql(
        &w.server.base,
        Some(&a.login),
        "mutation{registerDevice(name:\"f\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await;
    let third = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    w.gql(
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": big_sub}),
    )
    .await;
    w.gql(
        "mutation($id:UUID!){extendSubscription(id:$id,days:30){status}}",
        json!({"id": small_sub}),
    )
    .await;
    assert_eq!(w.validate(&gw, &tokens[2]).await, (true, Value::Null));
    assert_eq!(
        w.validate(&gw, &third).await,
        (false, json!("device_limit"))
    );

    // With no subscription in force, no device is beyond a limit.
    w.gql(
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": small_sub}),
    )
    .await;
    let marks = gql(
        &w.server.base,
        Some(&a.login),
        "{devices{edges{node{name overLimit}}}}",
        json!({}),
    )
    .await;
    let over: Vec<&Value> = marks["data"]["devices"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{marks}"))
        .iter()
        .filter(|e| e["node"]["overLimit"] == true)
        .collect();
    assert!(over.is_empty(), "{marks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smaller_plan_leaves_the_oldest_devices_postgres() {
    a_smaller_plan_leaves_the_oldest_devices(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smaller_plan_leaves_the_oldest_devices_sqlite() {
    a_smaller_plan_leaves_the_oldest_devices(World::on(TestDb::sqlite().await).await).await;
}

/// A session opened with an access token that was replaced before the
/// session committed (the replacement's transaction ended the sessions it
/// saw, not this one) is closed at its gateway's next heartbeat, as a
/// revoked device's; a session of the current token is kept.
async fn a_replaced_tokens_late_session_is_closed(w: World) {
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    w.node("eu", "n1").await;
    let a = w.owner().await;
    let b = w.owner().await;
    let late = w.session(&gw, &a.token).await;
    let kept = w.session(&gw, &b.token).await;
    // The replacement as it lands when the session commits just after it:
    // a new token hash, the session still open.
    w.exec(&format!(
        "UPDATE devices SET token_hash = '{}' WHERE id = '{}'",
        "ab".repeat(32),
        a.device_id
    ))
    .await;
    assert_eq!(w.end_reason(&late).await, None);
    let (s, body) = w
        .post(
            "/api/v1/gateway/heartbeat",
            &gw,
            json!({"open_tunnels": 2, "open_sessions": [late, kept]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["close_sessions"],
        json!([{"session_id": late, "reason": "device_revoked"}]),
        "{body}"
    );
    assert_eq!(w.end_reason(&late).await.as_deref(), Some("device_revoked"));
    assert_eq!(w.end_reason(&kept).await, None);
}

/// The same late session met by the device's next assignment with its
/// current token: that call does not join it, it ends it and gets a
/// session of its own.
async fn the_current_token_does_not_join_a_replaced_tokens_session(w: World) {
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    w.node("eu", "n1").await;
    let a = w.owner().await;
    let late = w.session(&gw, &a.token).await;
    let r = gql(
        &w.server.base,
        Some(&a.login),
        "mutation($id:UUID!){rotateDeviceToken(id:$id){accessToken}}",
        json!({"id": a.device_id}),
    )
    .await;
    let current = r["data"]["rotateDeviceToken"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    assert_eq!(w.end_reason(&late).await.as_deref(), Some("device_revoked"));
    // As it stands when the old token's session commits just after the
    // rotation ended the device's sessions: open.
    w.exec(&format!(
        "UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = '{late}'"
    ))
    .await;
    let own = w.session(&gw, &current).await;
    assert_ne!(
        own, late,
        "the current token joined the replaced one's session"
    );
    assert_eq!(w.end_reason(&late).await.as_deref(), Some("device_revoked"));
    assert_eq!(w.end_reason(&own).await, None);
    // And it keeps it.
    assert_eq!(w.session(&gw, &current).await, own);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_current_token_does_not_join_a_replaced_tokens_session_postgres() {
    the_current_token_does_not_join_a_replaced_tokens_session(World::on(TestDb::pg().await).await)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_current_token_does_not_join_a_replaced_tokens_session_sqlite() {
    the_current_token_does_not_join_a_replaced_tokens_session(
        World::on(TestDb::sqlite().await).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_tokens_late_session_is_closed_postgres() {
    a_replaced_tokens_late_session_is_closed(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_tokens_late_session_is_closed_sqlite() {
    a_replaced_tokens_late_session_is_closed(World::on(TestDb::sqlite().await).await).await;
}

/// `closeSession` ends the one session, audited once; closing it again,
/// an unknown session or a user's attempt change nothing; the device's
/// next ask opens a new session; usage reported later is charged.
async fn an_admin_closes_one_session(w: World) {
    const CLOSE: &str = "mutation($id:UUID!){closeSession(id:$id){id endedAt endReason bytesUp}}";
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    let gw2 = w.gateway("eu", "https://gw2-eu.example.com").await;
    w.node("eu", "n1").await;
    let a = w.owner().await;
    let sid = w.session(&gw, &a.token).await;
    let other = w.session(&gw2, &a.token).await;
    assert_ne!(sid, other);

    let r = gql(&w.server.base, Some(&a.login), CLOSE, json!({"id": sid})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN", "{r}");
    let admin = |vars: Value| gql(&w.server.base, Some(&w.admin), CLOSE, vars);
    let r = admin(json!({"id": uuid::Uuid::new_v4()})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "NOT_FOUND", "{r}");
    let r = admin(json!({"id": "not-an-id"})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{r}");
    assert_eq!(w.end_reason(&sid).await, None, "nothing changed");

    let r = w.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(
        r["data"]["closeSession"]["endReason"], "closed_by_admin",
        "{r}"
    );
    let ended_at = r["data"]["closeSession"]["endedAt"].clone();
    assert!(ended_at.is_string(), "{r}");
    assert_eq!(w.end_reason(&sid).await.as_deref(), Some("closed_by_admin"));
    assert_eq!(
        w.end_reason(&other).await,
        None,
        "the other session runs on"
    );
    // Its gateway's next grant ask is refused as ended (so it drops the
    // answers routing there); the other session is granted as before.
    let grant_ask = |sid: &str| json!({"session_id": sid, "used": 0, "want": 1_000_000});
    let (s, b) = w.post("/api/v1/quota/grant", &gw, grant_ask(&sid)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((&b["ended"], &b["limit"]), (&json!(true), &json!(0)), "{b}");
    let (s, b) = w.post("/api/v1/quota/grant", &gw2, grant_ask(&other)).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["ended"].is_null() && b["reason"].is_null(), "{b}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = w.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(
        again["data"]["closeSession"]["endedAt"], ended_at,
        "{again}"
    );
    let audited = w
        .int(&format!(
            "SELECT count(*) AS n FROM audit_log WHERE action = 'close_session' AND target_id = '{sid}'"
        ))
        .await;
    assert_eq!(audited, 1);

    // Usage reported after the close is charged; the next ask is new.
    w.report(&gw, &sid, 1, 1_000, 2_000).await;
    w.usage_settled().await;
    let r = w.gql(CLOSE, json!({"id": sid})).await;
    assert_eq!(r["data"]["closeSession"]["bytesUp"], "1000", "{r}");
    let next = w.session(&gw, &a.token).await;
    assert_ne!(next, sid, "a new session");
    assert_eq!(w.end_reason(&next).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_closes_one_session_postgres() {
    an_admin_closes_one_session(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_closes_one_session_sqlite() {
    an_admin_closes_one_session(World::on(TestDb::sqlite().await).await).await;
}

/// Regions `eu` (first) and `us`, a node in each; the only gateway first is
/// in `us`. A device without a region lands in `us` every time (eight
/// devices: a random region would split them); after a gateway of `eu`
/// places a device there, its own asks stay in `eu` and name the `eu`
/// gateway; a region named explicitly wins.
async fn a_device_without_a_region_lands_by_rule(w: World) {
    w.node("eu", "eu-1").await;
    w.node("us", "us-1").await;
    w.gateway("us", "https://gw-us.example.com").await;
    for _ in 0..8 {
        let o = w.owner().await;
        let a = w.assign_as_device(&o.token, None).await;
        assert_eq!(a["region"], "us", "{a}");
        assert_eq!(a["gateway_url"], "https://gw-us.example.com", "{a}");
    }
    let eu_gw = w.gateway("eu", "https://gw-eu.example.com").await;
    let o = w.owner().await;
    // Not placed yet: still the first gateway's region.
    let fresh = w.owner().await;
    assert_eq!(w.assign_as_device(&fresh.token, None).await["region"], "us");
    // Placed in eu by the eu gateway: the device's own asks follow.
    w.session(&eu_gw, &o.token).await;
    for _ in 0..3 {
        let a = w.assign_as_device(&o.token, None).await;
        assert_eq!(a["region"], "eu", "{a}");
        assert_eq!(a["gateway_url"], "https://gw-eu.example.com", "{a}");
    }
    let a = w.assign_as_device(&o.token, Some("us")).await;
    assert_eq!(a["region"], "us", "{a}");
    assert_eq!(a["gateway_url"], "https://gw-us.example.com", "{a}");
}

/// The configured gateway URL is a registered gateway of `us` (as `up`'s
/// embedded one is), registered after one of `eu`: a device that names no
/// region gets `us`, the configured gateway's region, and its links carry
/// `us`'s key; one that names `eu` is sent to `eu`'s gateway, never to the
/// configured one with `eu`'s key. With the configured gateway disabled,
/// `eu`'s is the entry point, and `us` has no gateway to name.
#[tokio::test(flavor = "multi_thread")]
async fn the_configured_gateway_carries_only_its_own_region() {
    const US: &str = "https://gw-us.example.com";
    const EU: &str = "https://gw-eu.example.com";
    let w = World::entering_at(TestDb::pg().await, Some(US)).await;
    w.node("eu", "eu-1").await;
    w.node("us", "us-1").await;
    w.gateway("eu", EU).await;
    w.gateway("us", US).await;
    let o = w.owner().await;
    let a = w.assign_as_device(&o.token, None).await;
    assert_eq!(
        (&a["region"], &a["gateway_url"]),
        (&json!("us"), &json!(US)),
        "{a}"
    );
    let us_key = a["password"].as_str().expect("key").to_owned();
    let a = w.assign_as_device(&o.token, Some("eu")).await;
    assert_eq!(
        (&a["region"], &a["gateway_url"]),
        (&json!("eu"), &json!(EU)),
        "{a}"
    );
    let eu_key = a["password"].as_str().expect("key").to_owned();
    assert_ne!(us_key, eu_key, "a key per region");
    let links = |r: &Value| {
        r["data"]["rotateDeviceToken"]["links"]["sip002"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    };
    let rotate = "mutation($d:UUID!){rotateDeviceToken(id:$d){links{sip002}}}";
    let sip = links(&w.gql(rotate, json!({"d": o.device_id})).await);
    assert!(sip.contains("gw-us.example.com"), "{sip}");
    assert!(sip_key(&sip).ends_with(&format!(":{us_key}")), "{sip}");

    let us_id = w
        .gql("{gatewayNodes{nodes{id publicUrl}}}", json!({}))
        .await["data"]["gatewayNodes"]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["publicUrl"] == US))
        .and_then(|n| n["id"].as_str())
        .expect("the us gateway")
        .to_owned();
    w.gql(
        "mutation($id:UUID!){setNodeStatus(id:$id,status:DISABLED){__typename}}",
        json!({"id": us_id}),
    )
    .await;
    let fresh = w.owner().await;
    let a = w.assign_as_device(&fresh.token, None).await;
    assert_eq!(
        (&a["region"], &a["gateway_url"]),
        (&json!("eu"), &json!(EU)),
        "{a}"
    );
    let a = w.assign_as_device(&fresh.token, Some("us")).await;
    assert_eq!(a["gateway_url"], Value::Null, "no gateway of us: {a}");
    let sip = links(&w.gql(rotate, json!({"d": fresh.device_id})).await);
    assert!(sip.contains("gw-eu.example.com"), "{sip}");
    assert!(sip_key(&sip).ends_with(&format!(":{eu_key}")), "{sip}");
}

/// The `method:password` of a SIP002 link (its user info, base64url).
fn sip_key(sip: &str) -> String {
    use base64::Engine;
    let info = sip
        .strip_prefix("ss://")
        .and_then(|r| r.split('@').next())
        .unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(info.trim_end_matches('='))
        .unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_without_a_region_lands_by_rule_postgres() {
    a_device_without_a_region_lands_by_rule(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_without_a_region_lands_by_rule_sqlite() {
    a_device_without_a_region_lands_by_rule(World::on(TestDb::sqlite().await).await).await;
}

/// A device's owner watching it live (`myDeviceEvents`, on the console's
/// WebSocket) while replacing its token: on SQLite's single connection the
/// socket's check of its own credential and the live view's placement
/// lookup used to wait on each other for the pool's whole 5 s wait, so the
/// new token came back without its links ("database unavailable") and
/// every other query of the process waited too.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_view_does_not_hold_up_its_owners_changes_sqlite() {
    let w = World::on(TestDb::sqlite().await).await;
    w.node("eu", "eu-1").await;
    w.gateway("eu", "https://gw-eu.example.com").await;
    let o = w.owner().await;
    let base = w.server.base.clone();
    let mut mine = live(
        &base,
        &o.login,
        "subscription{myDeviceEvents{kind deviceId placement{nodeName}}}",
    )
    .await;
    // Renames until one is heard: the view is live from then on.
    let mut heard = false;
    for i in 0..20 {
        let r = gql(
            &base,
            Some(&o.login),
            "mutation($d:UUID!,$n:String!){renameDevice(id:$d,name:$n){name}}",
            json!({"d": o.device_id, "n": format!("d-{i}")}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
        if tokio::time::timeout(
            std::time::Duration::from_secs(2),
            live_event(&mut mine, "myDeviceEvents"),
        )
        .await
        .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "the live view never answered");
    for i in 0..12 {
        let r = gql(
            &base,
            Some(&o.login),
            "mutation($d:UUID!){rotateDeviceToken(id:$d){accessToken links{sip002}}}",
            json!({"d": o.device_id}),
        )
        .await;
        assert!(r["errors"].is_null(), "rotation {i}: {r}");
        assert!(
            r["data"]["rotateDeviceToken"]["links"]["sip002"].is_string(),
            "rotation {i} came back without its links: {r}"
        );
        let ev = live_event(&mut mine, "myDeviceEvents").await;
        assert_eq!(ev["kind"], "ROTATED", "{ev}");
    }
}

/// A console that stops reading its WebSocket while its live view has
/// much to say is dropped once [`QUEUE`]-many messages wait for it, rather
/// than holding the socket's engine (and any database connection an
/// operation of it holds) until the write deadline; the control plane
/// answers everyone else throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_does_not_read_is_dropped_sqlite() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const VIEWS: usize = 20;
    const RENAMES: usize = 600;
    let w = World::on(TestDb::sqlite().await).await;
    let o = w.owner().await;
    let base = w.server.base.clone();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small window");
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("address");
    let tcp = socket.connect(addr).await.expect("connect");
    let req = common::live_request(&base);
    let (mut slow, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket");
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", o.login)}});
    slow.send(Message::Text(init.to_string().into()))
        .await
        .expect("init");
    assert_eq!(common::live_next(&mut slow).await["type"], "connection_ack");
    // Each view asks for the device's id under many names: about 1.5 KB
    // an event, so that what waits outgrows the sockets' buffers.
    let fields: String = (0..28).map(|i| format!(" d{i}:deviceId")).collect();
    let query = format!("subscription{{myDeviceEvents{{kind{fields}}}}}");
    for id in 0..VIEWS {
        let sub = json!({"id": id.to_string(), "type": "subscribe", "payload": {"query": query}});
        slow.send(Message::Text(sub.to_string().into()))
            .await
            .expect("subscribe");
    }
    let rename = |i: usize| {
        gql(
            &base,
            Some(&o.login),
            "mutation($d:UUID!,$n:String!){renameDevice(id:$d,name:$n){name}}",
            json!({"d": o.device_id, "n": format!("d-{i}")}),
        )
    };
    // Renames until the views are live (every one answers each rename).
    let mut heard = false;
    for i in 0..20 {
        assert!(rename(i).await["errors"].is_null());
        if tokio::time::timeout(
            std::time::Duration::from_secs(2),
            common::live_next(&mut slow),
        )
        .await
        .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "the live views never answered");
    // From here the client reads nothing while its views get VIEWS
    // messages per rename.
    for i in 0..RENAMES {
        let r = rename(i).await;
        assert!(
            r["errors"].is_null(),
            "rename {i} while a socket does not read: {r}"
        );
    }
    // The socket was dropped: reading now ends (after what the kernel
    // buffered), well short of everything the views had to say.
    let mut got = 0usize;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(Ok(msg)) = slow.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            got += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket stayed open after {got} messages");
    assert!(got < VIEWS * RENAMES, "{got} messages: nothing was dropped");
}

/// A subscription moved to another plan in place takes the plan's
/// allowance and device limit and keeps what its period used, its period
/// and its expiry: over the new allowance its tunnels close
/// (`quota_exceeded`), and devices beyond the smaller limit are refused
/// (`device_limit`); moved back, all of them connect again at once.
/// Archived and unknown plans, cancelled subscriptions and subscribers are
/// refused, and nothing changes then.
async fn a_plan_changed_in_place(w: World) {
    let gw = w.gateway("eu", "https://gw-eu.example.com").await;
    w.node("eu", "n1").await;
    let small = w
        .gql(
            "mutation{createPlan(input:{name:\"small\",priceCents:\"0\",durationDays:7,trafficLimitBytes:\"4000\",deviceLimit:1,resetPeriod:MONTHLY}){id}}",
            json!({}),
        )
        .await["data"]["createPlan"]["id"]
        .as_str()
        .expect("plan")
        .to_owned();
    let a = w.owner().await;
    let r = gql(
        &w.server.base,
        Some(&a.login),
        "mutation{registerDevice(name:\"second\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await;
    let second = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let oldest = w.session(&gw, &a.token).await;
    let newest = w.session(&gw, &second).await;
    w.exec(&format!(
        "UPDATE subscriptions SET traffic_used_bytes = 5000 WHERE id = '{}'",
        a.subscription_id
    ))
    .await;
    let fields = "id plan{id} trafficLimitBytes trafficUsedBytes deviceLimit expiresAt status";
    let before = w
        .gql(
            &format!("query($u:UUID!){{subscriptions(filter:{{userId:$u}}){{edges{{node{{{fields}}}}}}}}}"),
            json!({"u": a.user_id}),
        )
        .await["data"]["subscriptions"]["edges"][0]["node"]
        .clone();

    // What is refused changes nothing.
    let change = format!(
        "mutation($id:UUID!,$p:UUID!){{changeSubscriptionPlan(id:$id,planId:$p){{{fields}}}}}"
    );
    let refused = |r: &Value, code: &str| {
        assert_eq!(r["errors"][0]["extensions"]["code"], code, "{r}");
        assert!(r["data"].is_null(), "{r}");
    };
    let r = gql(
        &w.server.base,
        Some(&a.login),
        &change,
        json!({"id": a.subscription_id, "p": small}),
    )
    .await;
    refused(&r, "FORBIDDEN");
    let r = gql(
        &w.server.base,
        Some(&w.admin),
        &change,
        json!({"id": a.subscription_id, "p": uuid::Uuid::new_v4()}),
    )
    .await;
    refused(&r, "NOT_FOUND");
    let archived = w
        .gql(
            "mutation{createPlan(input:{name:\"old\",priceCents:\"0\",durationDays:30,deviceLimit:9}){id}}",
            json!({}),
        )
        .await["data"]["createPlan"]["id"]
        .as_str()
        .expect("plan")
        .to_owned();
    w.gql(
        "mutation($id:UUID!){archivePlan(id:$id){archived}}",
        json!({"id": archived}),
    )
    .await;
    let r = gql(
        &w.server.base,
        Some(&w.admin),
        &change,
        json!({"id": a.subscription_id, "p": archived}),
    )
    .await;
    refused(&r, "CONFLICT");
    assert_eq!(w.validate(&gw, &second).await, (true, Value::Null));
    assert_eq!(w.end_reason(&oldest).await, None);

    // The small plan: one device, 4,000 bytes, of which 5,000 are used.
    let r = w
        .gql(&change, json!({"id": a.subscription_id, "p": small}))
        .await;
    let after = &r["data"]["changeSubscriptionPlan"];
    assert_eq!(after["plan"]["id"], small.as_str(), "{r}");
    assert_eq!(after["trafficLimitBytes"], "4000", "{r}");
    assert_eq!(after["deviceLimit"], 1, "{r}");
    assert_eq!(
        after["trafficUsedBytes"], "5000",
        "what was used stays: {r}"
    );
    assert_eq!(
        after["expiresAt"], before["expiresAt"],
        "the expiry stays: {r}"
    );
    assert_eq!(after["status"], "ACTIVE", "{r}");
    assert_eq!(
        w.end_reason(&newest).await.as_deref(),
        Some("device_limit"),
        "the newest device is beyond the limit"
    );
    assert_eq!(
        w.end_reason(&oldest).await.as_deref(),
        Some("quota_exceeded"),
        "the period has used more than the new allowance"
    );
    assert_eq!(
        w.validate(&gw, &a.token).await,
        (false, json!("quota_exceeded"))
    );
    let audit = w
        .gql(
            "{auditLog(filter:{action:\"change_subscription_plan\"}){edges{node{details}}}}",
            json!({}),
        )
        .await;
    let details = &audit["data"]["auditLog"]["edges"][0]["node"]["details"];
    let details: Value = match details {
        Value::String(s) => serde_json::from_str(s).expect("details"),
        other => other.clone(),
    };
    assert_eq!(details["previousPlanId"], w.plan_id.as_str(), "{audit}");
    assert_eq!(details["planId"], small.as_str(), "{audit}");

    // Back on the first plan: both devices connect again at once.
    let r = w
        .gql(&change, json!({"id": a.subscription_id, "p": w.plan_id}))
        .await;
    let back = &r["data"]["changeSubscriptionPlan"];
    assert_eq!(
        back["trafficLimitBytes"], before["trafficLimitBytes"],
        "{r}"
    );
    assert_eq!(back["deviceLimit"], 5, "{r}");
    assert_eq!(w.validate(&gw, &a.token).await, (true, Value::Null));
    assert_eq!(w.validate(&gw, &second).await, (true, Value::Null));
    // Its own plan, whose terms it has: answered as it is, not audited.
    let audited = "SELECT count(*) AS n FROM audit_log WHERE action = 'change_subscription_plan'";
    let before = w.int(audited).await;
    let r = w
        .gql(&change, json!({"id": a.subscription_id, "p": w.plan_id}))
        .await;
    assert_eq!(r["data"]["changeSubscriptionPlan"]["deviceLimit"], 5, "{r}");
    assert_eq!(
        w.int(audited).await,
        before,
        "a change that changes nothing"
    );

    // A cancelled subscription keeps its terms.
    w.gql(
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": a.subscription_id}),
    )
    .await;
    let r = gql(
        &w.server.base,
        Some(&w.admin),
        &change,
        json!({"id": a.subscription_id, "p": small}),
    )
    .await;
    refused(&r, "CONFLICT");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_changed_in_place_postgres() {
    a_plan_changed_in_place(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_changed_in_place_sqlite() {
    a_plan_changed_in_place(World::on(TestDb::sqlite().await).await).await;
}

/// Links and the gateway a client is told go to a gateway that reports
/// over one registered earlier that never did (registered ahead of its
/// deployment) and over one that stopped reporting, and a new device's
/// region is the live gateway's, not that of an earlier one in another
/// region that never reported (the device was placed in a region with no
/// node, and every client of it stopped with `no_node_available`).
async fn links_go_to_a_gateway_that_reports(w: World) {
    // Registered first, in another region, never started.
    w.gateway("us", "https://gw-us.example.com").await;
    // Registered next in `eu`, never started.
    w.gateway("eu", "https://gw-early.example.com").await;
    let live = w.gateway("eu", "https://gw-live.example.com").await;
    w.node("eu", "n1").await;
    let (s, b) = w
        .post(
            "/api/v1/gateway/heartbeat",
            &live,
            json!({"open_tunnels": 0}),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    let a = w.owner().await;
    let r = gql(
        &w.server.base,
        Some(&a.login),
        "mutation{registerDevice(name:\"phone\",platform:\"ios\"){links{ssconf}}}",
        json!({}),
    )
    .await;
    let ssconf = r["data"]["registerDevice"]["links"]["ssconf"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        ssconf.starts_with("ssconf://gw-live.example.com/c/"),
        "{ssconf}"
    );
    let b = w.assign_as_device(&a.token, None).await;
    assert_eq!(b["gateway_url"], "https://gw-live.example.com", "{b}");
    assert_eq!(b["region"], "eu", "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn links_go_to_a_gateway_that_reports_postgres() {
    links_go_to_a_gateway_that_reports(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn links_go_to_a_gateway_that_reports_sqlite() {
    links_go_to_a_gateway_that_reports(World::on(TestDb::sqlite().await).await).await;
}

/// A plan, node or gateway name that another holds in another case, a
/// gateway URL another gateway holds, and a node's host and port another
/// node has, are refused with CONFLICT (they
/// were taken: "Pro" beside "pro", two gateways at one URL, which sent
/// links to the other's region), on creation and on change; distinct
/// names still pass.
async fn names_differing_only_in_case_are_taken(w: World) {
    let conflict = |r: &Value| {
        assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT", "{r}");
        assert!(r["data"].is_null(), "{r}");
    };
    let q = |query: &'static str, vars: Value| {
        let (base, admin) = (w.server.base.clone(), w.admin.clone());
        async move { gql(&base, Some(&admin), query, vars).await }
    };
    let plan = "mutation($n:String!){createPlan(input:{name:$n,priceCents:\"0\",durationDays:30,deviceLimit:1}){id}}";
    let pro = q(plan, json!({"n": "Pro"})).await["data"]["createPlan"]["id"].clone();
    assert!(pro.is_string());
    conflict(&q(plan, json!({"n": "pro"})).await);
    // Unicode case too, on both backends (SQLite's lower() folds ASCII
    // only).
    assert!(q(plan, json!({"n": "Ärger"})).await["data"]["createPlan"]["id"].is_string());
    conflict(&q(plan, json!({"n": "ärger"})).await);
    let other = q(plan, json!({"n": "Basic"})).await["data"]["createPlan"]["id"].clone();
    conflict(
        &q(
            "mutation($id:UUID!){updatePlan(id:$id,input:{name:\"PRO\"}){id}}",
            json!({"id": other}),
        )
        .await,
    );
    // Its own name in another case is a rename.
    let r = q(
        "mutation($id:UUID!){updatePlan(id:$id,input:{name:\"BASIC\"}){name}}",
        json!({"id": other}),
    )
    .await;
    assert_eq!(r["data"]["updatePlan"]["name"], "BASIC", "{r}");

    let node = "mutation($n:String!,$p:Int!){registerOutlineNode(input:{region:\"eu\",name:$n,host:\"10.1.0.1\",port:$p}){node{id}}}";
    q(node, json!({"n": "n1", "p": 8388})).await["data"]["registerOutlineNode"]["node"]["id"]
        .as_str()
        .expect("node");
    conflict(&q(node, json!({"n": "N1", "p": 8389})).await);
    // One server is one node: its host and port under another name are
    // refused, on creation and on change (it was counted twice).
    let r = q(node, json!({"n": "n2", "p": 8388})).await;
    conflict(&r);
    assert_eq!(
        r["errors"][0]["message"], "a node of this region with this host and port exists",
        "{r}"
    );
    let n2 =
        q(node, json!({"n": "n2", "p": 8389})).await["data"]["registerOutlineNode"]["node"]["id"]
            .clone();
    assert!(n2.is_string());
    let v6 = "mutation($h:String!){registerOutlineNode(input:{region:\"eu\",name:\"n3\",host:$h,port:8388}){node{id}}}";
    assert!(
        q(v6, json!({"h": "[FD00::1]"})).await["data"]["registerOutlineNode"]["node"]["id"]
            .is_string()
    );
    let v6_again = q(v6, json!({"h": "fd00:0::1"})).await;
    conflict(&v6_again);
    let moved = q(
        "mutation($id:UUID!){updateOutlineNode(id:$id,input:{port:8388}){id}}",
        json!({"id": n2}),
    )
    .await;
    conflict(&moved);
    // Another region's 10.1.0.1 is another datacenter's.
    let r = q(
        "mutation{createRegion(code:\"ap\",name:\"AP\"){id} registerOutlineNode(input:{region:\"ap\",name:\"ap-1\",host:\"10.1.0.1\",port:8388}){node{id}}}",
        json!({}),
    )
    .await;
    assert!(
        r["data"]["registerOutlineNode"]["node"]["id"].is_string(),
        "{r}"
    );
    // Its own address, or a free one, is a change.
    let r = q(
        "mutation($id:UUID!){updateOutlineNode(id:$id,input:{host:\"10.1.0.2\",port:8388}){host port}}",
        json!({"id": n2}),
    )
    .await;
    assert_eq!(r["data"]["updateOutlineNode"]["port"], 8388, "{r}");

    let gw = "mutation($r:String!,$n:String!,$u:String!){registerGatewayNode(input:{region:$r,name:$n,publicUrl:$u}){node{id}}}";
    let first = q(
        gw,
        json!({"r": "eu", "n": "gw1", "u": "https://gw1.example.com"}),
    )
    .await["data"]["registerGatewayNode"]["node"]["id"]
        .clone();
    assert!(first.is_string());
    conflict(
        &q(
            gw,
            json!({"r": "eu", "n": "GW1", "u": "https://gw2.example.com"}),
        )
        .await,
    );
    conflict(
        &q(
            gw,
            json!({"r": "us", "n": "gw9", "u": "https://GW1.example.com"}),
        )
        .await,
    );
    let second = q(
        gw,
        json!({"r": "eu", "n": "gw2", "u": "https://gw2.example.com"}),
    )
    .await["data"]["registerGatewayNode"]["node"]["id"]
        .clone();
    conflict(
        &q(
            "mutation($id:UUID!){updateGatewayNode(id:$id,input:{publicUrl:\"https://gw1.example.com\"}){id}}",
            json!({"id": second}),
        )
        .await,
    );
    conflict(
        &q(
            "mutation($id:UUID!){updateGatewayNode(id:$id,input:{name:\"Gw1\"}){id}}",
            json!({"id": second}),
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn names_differing_only_in_case_are_taken_postgres() {
    names_differing_only_in_case_are_taken(World::on(TestDb::pg().await).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_differing_only_in_case_are_taken_sqlite() {
    names_differing_only_in_case_are_taken(World::on(TestDb::sqlite().await).await).await;
}
