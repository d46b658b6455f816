//! The GraphQL API against a real server on PostgreSQL (and SQLite where
//! the feature applies): flows, limits, authorization, hardening, live events.

mod common;

use common::{TestDb, TestServer, client, gql};
use httvps_control::accounts::{self, Role};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

async fn admin_token(server: &TestServer) -> String {
    let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    accounts::create_user(&server.state.db, &email, PASSWORD, Role::Admin)
        .await
        .expect("admin");
    login(&server.base, &email).await
}

async fn login(base: &str, email: &str) -> String {
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken refreshToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("login failed: {r}"))
        .to_owned()
}

/// Signs a user up and logs in; returns (user id, token).
async fn user(base: &str) -> (String, String) {
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    let id = r["data"]["signUp"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("signUp: {r}"))
        .to_owned();
    (id, login(base, &email).await)
}

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

async fn plan(base: &str, admin: &str, device_limit: i32) -> String {
    let r = gql(
        base,
        Some(admin),
        "mutation($n:String!,$d:Int!){createPlan(input:{name:$n,priceCents:\"500\",durationDays:30,trafficLimitBytes:\"1073741824\",deviceLimit:$d}){id trafficLimitBytes}}",
        json!({"n": format!("plan-{}", uuid::Uuid::new_v4().simple()), "d": device_limit}),
    )
    .await;
    assert_eq!(
        r["data"]["createPlan"]["trafficLimitBytes"], "1073741824",
        "{r}"
    );
    r["data"]["createPlan"]["id"]
        .as_str()
        .expect("plan id")
        .to_owned()
}

async fn grant(base: &str, admin: &str, user_id: &str, plan_id: &str) -> Value {
    gql(
        base,
        Some(admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id status trafficUsedBytes trafficLimitBytes plan{id} user{id}}}",
        json!({"u": user_id, "p": plan_id}),
    )
    .await
}

async fn newcomer_flow(server: &TestServer) {
    let base = &server.base;
    let admin = admin_token(server).await;
    let (uid, utok) = user(base).await;
    let r = gql(
        base,
        Some(&admin),
        "mutation{createRegion(code:\"EU-West\",name:\"Europe West\"){code poolMethod}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["createRegion"]["code"], "eu-west", "{r}");
    let plan_id = plan(base, &admin, 2).await;
    // Without a subscription a device can't be registered.
    let r = gql(
        base,
        Some(&utok),
        "mutation{registerDevice(name:\"phone\",platform:\"ios\"){accessToken}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
    let g = grant(base, &admin, &uid, &plan_id).await;
    assert_eq!(g["data"]["grantSubscription"]["status"], "ACTIVE", "{g}");
    assert_eq!(g["data"]["grantSubscription"]["trafficUsedBytes"], "0");
    // A second active subscription is a typed conflict.
    let again = grant(base, &admin, &uid, &plan_id).await;
    assert_eq!(code(&again), Some("CONFLICT"), "{again}");
    let r = gql(
        base,
        Some(&utok),
        "mutation{registerDevice(name:\"phone\",platform:\"iOS\"){accessToken device{id name platform status} links{ssconf sip002}}}",
        json!({}),
    )
    .await;
    let reg = &r["data"]["registerDevice"];
    let token = reg["accessToken"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(token.len(), 43, "256-bit URL-safe token");
    assert_eq!(reg["device"]["platform"], "ios");
    assert_eq!(
        reg["links"]["ssconf"],
        format!("ssconf://gw.test.example/c/{token}")
    );
    let sip = reg["links"]["sip002"].as_str().expect("sip002");
    assert!(sip.starts_with("ss://") && sip.contains("@gw.test.example:443/?plugin=v2ray-plugin%3Btls%3Bhost%3Dgw.test.example%3Bpath%3D%2Fws%2F"), "{sip}");
    assert!(sip.contains("%3Bmux%3D0"), "{sip}");
    let me = gql(base, Some(&utok), "{me{id email role} devices{edges{node{id name subscription{status} user{id}}}} subscriptions{edges{node{status plan{id}}}}}", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], uid.as_str(), "{me}");
    assert_eq!(
        me["data"]["devices"]["edges"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        me["data"]["devices"]["edges"][0]["node"]["subscription"]["status"],
        "ACTIVE"
    );
    assert_eq!(
        me["data"]["subscriptions"]["edges"][0]["node"]["plan"]["id"],
        plan_id.as_str()
    );
    // Every admin mutation above left an audit row.
    let audit = gql(
        base,
        Some(&admin),
        "{auditLog(first:100){edges{node{action}}}}",
        json!({}),
    )
    .await;
    let actions: Vec<&str> = audit["data"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    for a in ["create_region", "create_plan", "grant_subscription"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // A region's entry says what it was made with, as a plan's does.
    let audit = gql(
        base,
        Some(&admin),
        "{auditLog(filter:{action:\"create_region\"}){edges{node{details}}}}",
        json!({}),
    )
    .await;
    let details: serde_json::Value = audit["data"]["auditLog"]["edges"][0]["node"]["details"]
        .as_str()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(details["code"], "eu-west", "{audit}");
    assert_eq!(details["name"], "Europe West", "{audit}");
    assert!(details["method"].is_string(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn newcomer_flow_postgres() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    newcomer_flow(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn newcomer_flow_sqlite() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    newcomer_flow(&server).await;
    server.stop().await;
}

async fn device_limit_race(server: &TestServer) {
    let base = server.base.clone();
    let admin = admin_token(server).await;
    let (uid, utok) = user(&base).await;
    let plan_id = plan(&base, &admin, 3).await;
    grant(&base, &admin, &uid, &plan_id).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let base = base.clone();
            let utok = utok.clone();
            tokio::spawn(async move {
                gql(
                    &base,
                    Some(&utok),
                    "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){device{id}}}",
                    json!({"n": format!("d{i}")}),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r["data"]["registerDevice"]["device"]["id"].is_string() {
            ok += 1;
        } else {
            assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
            limited += 1;
        }
    }
    assert_eq!((ok, limited), (3, 17));
    let r = gql(
        &base,
        Some(&utok),
        "{devices(first:100){edges{node{id}}}}",
        json!({}),
    )
    .await;
    assert_eq!(
        r["data"]["devices"]["edges"].as_array().map(Vec::len),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_limit_is_race_free_postgres() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    device_limit_race(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_limit_is_race_free_sqlite() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    device_limit_race(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let email = "rot@example.com";
    gql(
        base,
        None,
        "mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){refreshToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    let first = r["data"]["login"]["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let refresh = |t: String| async move {
        gql(
            base,
            None,
            "mutation($t:String!){refreshToken(token:$t){accessToken refreshToken}}",
            json!({"t": t}),
        )
        .await
    };
    let r = refresh(first.clone()).await;
    let second = r["data"]["refreshToken"]["refreshToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    assert_ne!(first, second);
    // Reusing the first token fails and revokes the family: the second dies too.
    assert_eq!(code(&refresh(first).await), Some("UNAUTHENTICATED"));
    assert_eq!(code(&refresh(second).await), Some("UNAUTHENTICATED"));
    assert_eq!(
        code(&refresh("garbage".into()).await),
        Some("UNAUTHENTICATED")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn password_change_logout_and_disabling_invalidate_tokens() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let (uid, tok) = user(base).await;
    let me = |t: String| async move { gql(base, Some(&t), "{me{id}}", json!({})).await };
    assert!(me(tok.clone()).await["data"]["me"]["id"].is_string());
    let r = gql(base, Some(&tok), "mutation{changePassword(currentPassword:\"correct horse battery staple\",newPassword:\"another long password\")}", json!({})).await;
    assert_eq!(r["data"]["changePassword"], true, "{r}");
    assert_eq!(code(&me(tok).await), Some("UNAUTHENTICATED"));
    // Disabling the user kills a fresh token too, and login is refused.
    let email: String = accounts::find_user(&server.state.db, uid.parse().expect("user id"))
        .await
        .expect("q")
        .expect("user")
        .email;
    let r = gql(
        base,
        None,
        "mutation($e:String!){login(email:$e,password:\"another long password\"){accessToken}}",
        json!({"e": email}),
    )
    .await;
    let tok2 = r["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let r = gql(
        base,
        Some(&admin),
        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
        json!({"id": uid}),
    )
    .await;
    assert_eq!(r["data"]["setUserStatus"]["status"], "DISABLED", "{r}");
    assert_eq!(code(&me(tok2).await), Some("UNAUTHENTICATED"));
    let r = gql(
        base,
        None,
        "mutation($e:String!){login(email:$e,password:\"another long password\"){accessToken}}",
        json!({"e": email}),
    )
    .await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    assert_eq!(r["errors"][0]["message"], "the account is disabled", "{r}");
    // A wrong password answers as for any account, or for none: that the
    // account exists and is disabled is told only to its owner.
    let wrong =
        "mutation($e:String!){login(email:$e,password:\"not the password at all\"){accessToken}}";
    let r = gql(base, None, wrong, json!({"e": email})).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let none = gql(base, None, wrong, json!({"e": "nobody-at-all@example.com"})).await;
    assert_eq!(
        r["errors"][0]["message"], none["errors"][0]["message"],
        "{r} {none}"
    );
    // A role change invalidates older tokens too, refresh tokens included
    // (a demoted account's sign-ins end, as the docs say).
    let (other_id, other_tok) = user(base).await;
    let r = gql(
        base,
        Some(&admin),
        "query($id:UUID!){user(id:$id){email}}",
        json!({"id": other_id}),
    )
    .await;
    let other_email = r["data"]["user"]["email"]
        .as_str()
        .expect("email")
        .to_owned();
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){refreshToken}}",
        json!({"e": other_email, "p": PASSWORD}),
    )
    .await;
    let other_refresh = r["data"]["login"]["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let r = gql(
        base,
        Some(&admin),
        "mutation($id:UUID!){setUserRole(id:$id,role:ADMIN){role}}",
        json!({"id": other_id}),
    )
    .await;
    assert_eq!(r["data"]["setUserRole"]["role"], "ADMIN", "{r}");
    assert_eq!(code(&me(other_tok).await), Some("UNAUTHENTICATED"));
    let r = gql(
        base,
        None,
        "mutation($t:String!){refreshToken(token:$t){accessToken}}",
        json!({"t": other_refresh}),
    )
    .await;
    assert_eq!(code(&r), Some("UNAUTHENTICATED"), "{r}");
    // Logout signs out everywhere.
    let admin2 = admin_token(&server).await;
    assert_eq!(
        gql(base, Some(&admin2), "mutation{logout}", json!({})).await["data"]["logout"],
        true
    );
    assert_eq!(code(&me(admin2).await), Some("UNAUTHENTICATED"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_and_wrong_audience_tokens_are_refused() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let (uid, _) = user(base).await;
    let jwt = httvps_control::auth::jwt::JwtKeys::new(
        &httvps_control::config::SecretKey::new(common::TEST_SECRET.into()),
        jsonwebtoken::Algorithm::HS256,
        60,
    );
    let wrong_aud = jwt
        .issue(
            httvps_control::auth::jwt::Audience::Device,
            &uid,
            0,
            None,
            60,
        )
        .expect("jwt");
    let expired = jwt
        .issue(
            httvps_control::auth::jwt::Audience::Access,
            &uid,
            0,
            None,
            -60,
        )
        .expect("jwt");
    let other_key = httvps_control::auth::jwt::JwtKeys::new(
        &httvps_control::config::SecretKey::new("x".repeat(40)),
        jsonwebtoken::Algorithm::HS256,
        60,
    )
    .issue(
        httvps_control::auth::jwt::Audience::Access,
        &uid,
        0,
        None,
        60,
    )
    .expect("jwt");
    let alg_none = common::alg_none_jwt(&uid, "httvps:access");
    for (name, token) in [
        ("wrong audience", wrong_aud),
        ("expired", expired),
        ("other key", other_key),
        ("alg none", alg_none),
        ("junk", "x.y.z".into()),
    ] {
        let res = client()
            .post(server.url("/graphql"))
            .bearer_auth(&token)
            .json(&json!({"query": "{me{id}}"}))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 401, "{name}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(code(&body), Some("UNAUTHENTICATED"), "{name}: {body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_never_see_other_users_data_or_node_secrets() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let plan_id = plan(base, &admin, 3).await;
    let (a_id, a) = user(base).await;
    let (b_id, b) = user(base).await;
    grant(base, &admin, &a_id, &plan_id).await;
    grant(base, &admin, &b_id, &plan_id).await;
    let r = gql(
        base,
        Some(&a),
        "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){device{id}}}",
        json!({}),
    )
    .await;
    let a_dev = r["data"]["registerDevice"]["device"]["id"]
        .as_str()
        .expect("device")
        .to_owned();
    // B asks for A's devices and subscriptions through filters: refused,
    // and no row of A's comes with the refusal.
    let r = gql(base, Some(&b), "query($u:UUID!){devices(filter:{userId:$u}){edges{node{id}}} subscriptions(filter:{userId:$u}){edges{node{user{id}}}}}", json!({"u": a_id})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    assert!(!r.to_string().contains(&a_dev), "{r}");
    let r = gql(
        base,
        Some(&b),
        "mutation($id:UUID!){revokeDevice(id:$id){id}}",
        json!({"id": a_dev}),
    )
    .await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    let r = gql(base, Some(&b), "query($u:UUID!){usage(userId:$u,from:\"2020-01-01T00:00:00Z\",to:\"2030-01-01T00:00:00Z\"){bytesUp}}", json!({"u": a_id})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    gql(
        base,
        Some(&admin),
        "mutation{createRegion(code:\"r1\",name:\"R1\"){id}}",
        json!({}),
    )
    .await;
    let r = gql(base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"r1\",name:\"n1\",host:\"10.0.0.5\",port:8388}){token node{secret usesPoolKey region{code}}}}", json!({})).await;
    assert_eq!(
        r["data"]["registerOutlineNode"]["node"]["usesPoolKey"], true,
        "{r}"
    );
    assert_eq!(
        r["data"]["registerOutlineNode"]["node"]["region"]["code"],
        "r1"
    );
    let r = gql(
        base,
        Some(&b),
        "{outlineNodes{edges{node{secret host}}}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    assert!(r["data"].is_null() || r["data"]["outlineNodes"].is_null());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_50_devices_with_relations_costs_a_bounded_number_of_queries() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let plan_id = plan(base, &admin, 5).await;
    for _ in 0..10 {
        let (uid, tok) = user(base).await;
        grant(base, &admin, &uid, &plan_id).await;
        for i in 0..5 {
            gql(
                base,
                Some(&tok),
                "mutation($n:String!){registerDevice(name:$n,platform:\"android\"){device{id}}}",
                json!({"n": format!("d{i}")}),
            )
            .await;
        }
    }
    let server = &server;
    let page = |n: usize| {
        let admin = admin.clone();
        async move {
            let before = server.state.db.query_count();
            let q = format!(
                "{{devices(first:{n}){{edges{{node{{id user{{email}} subscription{{status plan{{name}}}}}}}} pageInfo{{hasNextPage}}}}}}"
            );
            let r = gql(base, Some(&admin), &q, json!({})).await;
            (r, server.state.db.query_count() - before)
        }
    };
    // The pool's counter also sees the server's background tasks (sweeper,
    // usage applier), which only ever add: the least of three runs is the
    // request's own count.
    let mut used_for_2 = u64::MAX;
    let mut used = u64::MAX;
    let mut r = json!(null);
    for _ in 0..3 {
        used_for_2 = used_for_2.min(page(2).await.1);
        let (got, n) = page(50).await;
        used = used.min(n);
        r = got;
    }
    assert_eq!(
        r["data"]["devices"]["edges"].as_array().map(Vec::len),
        Some(50),
        "{r}"
    );
    assert!(
        r["data"]["devices"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .all(|e| e["node"]["user"]["email"].is_string())
    );
    // viewer + page + one batch per relation (a batch may split in two when
    // rows resolve across ticks), never one query per row.
    assert!(
        used <= used_for_2 + 4 && used <= 10,
        "{used} queries for 50 rows, {used_for_2} for 2: N+1?"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_walks_every_row_once_and_caps_first() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    for _ in 0..7 {
        user(base).await;
    }
    let mut seen = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let r = gql(base, Some(&admin), "query($a:String){users(first:3,after:$a){edges{cursor node{id}} pageInfo{hasNextPage endCursor}}}", json!({"a": after})).await;
        for e in r["data"]["users"]["edges"].as_array().expect("edges") {
            assert!(
                seen.insert(e["node"]["id"].as_str().expect("id").to_owned()),
                "row seen twice"
            );
        }
        if r["data"]["users"]["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = r["data"]["users"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(seen.len(), 8, "7 users and the admin");
    let r = gql(
        base,
        Some(&admin),
        "{users(first:1000){edges{node{id}}}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "{users(after:\"not-a-cursor\"){edges{node{id}}}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sign_up_setting_opens_and_closes_sign_up_on_postgres() {
    sign_up_setting(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sign_up_setting_opens_and_closes_sign_up_on_sqlite() {
    sign_up_setting(TestDb::sqlite().await).await;
}

async fn sign_up_setting(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let (_, utok) = user(base).await;
    let read = "{settings{signUpEnabled}}";
    // Anyone may read the settings: the sign-in page needs them.
    assert_eq!(
        gql(base, None, read, json!({})).await["data"]["settings"]["signUpEnabled"],
        true
    );
    let close = "mutation{updateSettings(input:{signUpEnabled:false}){signUpEnabled}}";
    assert_eq!(
        code(&gql(base, Some(&utok), close, json!({})).await),
        Some("FORBIDDEN")
    );
    assert_eq!(
        code(&gql(base, None, close, json!({})).await),
        Some("UNAUTHENTICATED")
    );
    assert_eq!(
        gql(base, None, read, json!({})).await["data"]["settings"]["signUpEnabled"],
        true,
        "a refused change changed it"
    );
    let r = gql(base, Some(&admin), close, json!({})).await;
    assert_eq!(r["data"]["updateSettings"]["signUpEnabled"], false, "{r}");
    assert_eq!(
        gql(base, None, read, json!({})).await["data"]["settings"]["signUpEnabled"],
        false
    );
    let sign_up = |email: String| async move {
        gql(
            base,
            None,
            "mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}",
            json!({"e": email, "p": PASSWORD}),
        )
        .await
    };
    let closed_email = format!("closed-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = sign_up(closed_email.clone()).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    assert_eq!(
        r["errors"][0]["message"], "sign-up is closed on this service",
        "{r}"
    );
    // Nothing was written: the account does not exist once sign-up reopens.
    let r = gql(
        base,
        Some(&admin),
        "query($e:String!){users(first:5,filter:{email:$e}){edges{node{id}}}}",
        json!({"e": closed_email.to_uppercase()}),
    )
    .await;
    assert_eq!(r["data"]["users"]["edges"], json!([]), "{r}");
    // Changes that change nothing are answered and not audited.
    for same in [close, "mutation{updateSettings(input:{}){signUpEnabled}}"] {
        let r = gql(base, Some(&admin), same, json!({})).await;
        assert_eq!(r["data"]["updateSettings"]["signUpEnabled"], false, "{r}");
    }
    // Existing accounts still log in; admins still create accounts.
    let r = gql(base, Some(&utok), "{me{id}}", json!({})).await;
    assert!(r["data"]["me"]["id"].is_string(), "{r}");
    let r = gql(base, Some(&admin), "query{auditLog(first:50,filter:{action:\"update_settings\"}){edges{node{action targetType}}}}", json!({})).await;
    assert_eq!(
        r["data"]["auditLog"]["edges"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    let open = "mutation{updateSettings(input:{signUpEnabled:true}){signUpEnabled}}";
    assert_eq!(
        gql(base, Some(&admin), open, json!({})).await["data"]["updateSettings"]["signUpEnabled"],
        true
    );
    let r = sign_up(closed_email.clone()).await;
    let id = r["data"]["signUp"]["id"].clone();
    assert!(id.is_string(), "{r}");
    // Found by its exact address, in any case; not by a part of it.
    let find = "query($e:String!){users(first:5,filter:{email:$e}){totalCount edges{node{id}}}}";
    let r = gql(
        base,
        Some(&admin),
        find,
        json!({"e": closed_email.to_uppercase()}),
    )
    .await;
    assert_eq!(r["data"]["users"]["totalCount"], 1, "{r}");
    assert_eq!(r["data"]["users"]["edges"][0]["node"]["id"], id, "{r}");
    let part = &closed_email[1..];
    let r = gql(base, Some(&admin), find, json!({"e": part})).await;
    assert_eq!(r["data"]["users"]["totalCount"], 0, "{r}");
    let r = gql(base, Some(&admin), find, json!({"e": "not an address"})).await;
    assert_eq!(r["data"]["users"]["totalCount"], 0, "{r}");
    let r = gql(
        base,
        Some(&admin),
        find,
        json!({"e": "a\u{0}b@example.com"}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_sets_and_resets_one_subscriptions_traffic_on_postgres() {
    subscription_traffic(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_sets_and_resets_one_subscriptions_traffic_on_sqlite() {
    subscription_traffic(TestDb::sqlite().await).await;
}

/// `setSubscriptionTrafficLimit` and `resetSubscriptionTraffic`: what they
/// store, what they refuse (and that a refusal changes nothing), the plan
/// left as it was, the audit trail.
async fn subscription_traffic(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let (uid, utok) = user(base).await;
    let plan_id = plan(base, &admin, 2).await;
    let r = grant(base, &admin, &uid, &plan_id).await;
    let sub = r["data"]["grantSubscription"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let fields =
        "id trafficLimitBytes trafficUsedBytes quotaReached periodStart plan{trafficLimitBytes}";
    let set = format!(
        "mutation($id:UUID!,$b:BigInt){{setSubscriptionTrafficLimit(id:$id,trafficLimitBytes:$b){{{fields}}}}}"
    );
    let reset = format!("mutation($id:UUID!){{resetSubscriptionTraffic(id:$id){{{fields}}}}}");
    let limit_of = async |sub: &str| {
        let r = gql(
            base,
            Some(&admin),
            "{subscriptions(first:100){edges{node{id trafficLimitBytes}}}}",
            json!({}),
        )
        .await;
        r["data"]["subscriptions"]["edges"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["node"]["id"] == sub))
            .map(|e| e["node"]["trafficLimitBytes"].clone())
            .unwrap_or_else(|| panic!("{r}"))
    };

    // Raised, lowered to nothing, made unlimited: stored as given; the
    // plan keeps its allowance.
    let r = gql(
        base,
        Some(&admin),
        &set,
        json!({"id": sub, "b": "5368709120"}),
    )
    .await;
    let s = &r["data"]["setSubscriptionTrafficLimit"];
    assert_eq!(s["trafficLimitBytes"], "5368709120", "{r}");
    assert_eq!(s["plan"]["trafficLimitBytes"], "1073741824", "{r}");
    assert_eq!(s["quotaReached"], false, "{r}");
    let r = gql(base, Some(&admin), &set, json!({"id": sub, "b": "0"})).await;
    assert_eq!(
        r["data"]["setSubscriptionTrafficLimit"]["quotaReached"], true,
        "{r}"
    );
    let r = gql(base, Some(&admin), &set, json!({"id": sub, "b": null})).await;
    let s = &r["data"]["setSubscriptionTrafficLimit"];
    assert_eq!(s["trafficLimitBytes"], Value::Null, "{r}");
    assert_eq!(s["quotaReached"], false, "{r}");

    // Client mistakes: typed errors, nothing changed.
    let unknown = uuid::Uuid::new_v4().to_string();
    for (vars, want) in [
        (json!({"id": sub, "b": "-1"}), "BAD_REQUEST"),
        (json!({"id": sub, "b": "lots"}), "BAD_REQUEST"),
        (
            json!({"id": sub, "b": "99999999999999999999"}),
            "BAD_REQUEST",
        ),
        (json!({"id": unknown, "b": "1"}), "NOT_FOUND"),
        (json!({"id": "not-an-id", "b": "1"}), "BAD_REQUEST"),
    ] {
        let r = gql(base, Some(&admin), &set, vars.clone()).await;
        assert_eq!(code(&r), Some(want), "{vars}: {r}");
    }
    // Left out is not "unlimited": null says that.
    let r = gql(
        base,
        Some(&admin),
        "mutation($id:UUID!){setSubscriptionTrafficLimit(id:$id){id}}",
        json!({"id": sub}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(base, Some(&utok), &set, json!({"id": sub, "b": "1"})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    let r = gql(base, Some(&utok), &reset, json!({"id": sub})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    let r = gql(base, Some(&admin), &reset, json!({"id": unknown})).await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    assert_eq!(
        limit_of(&sub).await,
        Value::Null,
        "a refused change changed it"
    );

    // A reset starts the period now with nothing used.
    let before = gql(base, Some(&admin), &set, json!({"id": sub, "b": "1000"})).await;
    let before = before["data"]["setSubscriptionTrafficLimit"]["periodStart"].clone();
    // The allowance it has already: answered as it is, not audited.
    let again = gql(base, Some(&admin), &set, json!({"id": sub, "b": "1000"})).await;
    let again = &again["data"]["setSubscriptionTrafficLimit"];
    assert_eq!(again["trafficLimitBytes"], "1000", "{again}");
    assert_eq!(again["periodStart"], before, "{again}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = gql(base, Some(&admin), &reset, json!({"id": sub})).await;
    let s = &r["data"]["resetSubscriptionTraffic"];
    assert_eq!(s["trafficUsedBytes"], "0", "{r}");
    assert_eq!(s["trafficLimitBytes"], "1000", "{r}");
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    assert!(
        at(&s["periodStart"]) > at(&before),
        "the period starts now: {r} (was {before})"
    );

    // A cancelled subscription keeps its terms.
    let r = gql(
        base,
        Some(&admin),
        "mutation($id:UUID!){cancelSubscription(id:$id){status}}",
        json!({"id": sub}),
    )
    .await;
    assert_eq!(
        r["data"]["cancelSubscription"]["status"], "CANCELLED",
        "{r}"
    );
    let r = gql(base, Some(&admin), &set, json!({"id": sub, "b": "1"})).await;
    assert_eq!(code(&r), Some("CONFLICT"), "{r}");
    let r = gql(base, Some(&admin), &reset, json!({"id": sub})).await;
    assert_eq!(code(&r), Some("CONFLICT"), "{r}");
    assert_eq!(limit_of(&sub).await, "1000");

    // Every change is in the audit log, refusals are not.
    for (action, n) in [
        ("set_subscription_traffic_limit", 4),
        ("reset_subscription_traffic", 1),
    ] {
        let r = gql(
            base,
            Some(&admin),
            "query($a:String!){auditLog(first:50,filter:{action:$a}){edges{node{targetId}}}}",
            json!({"a": action}),
        )
        .await;
        assert_eq!(
            r["data"]["auditLog"]["edges"].as_array().map(Vec::len),
            Some(n),
            "{action}: {r}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_create_accounts_and_set_passwords_on_postgres() {
    admin_accounts(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_create_accounts_and_set_passwords_on_sqlite() {
    admin_accounts(TestDb::sqlite().await).await;
}

/// `createUser` works while sign-up is closed, with the sign-up's rules
/// for emails and passwords; `setUserPassword` ends the sign-ins made with
/// the old password. Both are admin-only and audited without the password;
/// a refused call creates or changes nothing.
async fn admin_accounts(t: TestDb) {
    const CREATE: &str = "mutation($e:String!,$p:String!,$r:Role){createUser(email:$e,password:$p,role:$r){id email role status}}";
    const SET: &str = "mutation($id:UUID!,$p:String!){setUserPassword(id:$id,password:$p){id}}";
    const NEW: &str = "a brand new long password";
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let r = gql(
        base,
        Some(&admin),
        "mutation{updateSettings(input:{signUpEnabled:false}){signUpEnabled}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["updateSettings"]["signUpEnabled"], false, "{r}");
    let users = || async {
        let r = gql(base, Some(&admin), "{users{totalCount}}", json!({})).await;
        r["data"]["users"]["totalCount"].as_i64().unwrap_or(-1)
    };
    let before = users().await;

    // Refused: bad email, short password, not an admin, a taken email.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("New-{tag}@Example.COM");
    let r = gql(
        base,
        Some(&admin),
        CREATE,
        json!({"e": "no at sign", "p": PASSWORD}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        CREATE,
        json!({"e": email, "p": "short"}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let (_, user_tok) = user_when_closed(&server).await;
    let r = gql(
        base,
        Some(&user_tok),
        CREATE,
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    assert_eq!(
        users().await,
        before + 1,
        "only the test's own user was added"
    );

    let r = gql(
        base,
        Some(&admin),
        CREATE,
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    let made = &r["data"]["createUser"];
    assert_eq!(made["email"], format!("new-{tag}@example.com"), "{r}");
    assert_eq!(made["role"], "USER", "{r}");
    assert_eq!(made["status"], "ACTIVE", "{r}");
    let id = made["id"].as_str().expect("id").to_owned();
    let r = gql(
        base,
        Some(&admin),
        CREATE,
        json!({"e": format!("new-{tag}@example.com"), "p": PASSWORD}),
    )
    .await;
    assert_eq!(code(&r), Some("CONFLICT"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        CREATE,
        json!({"e": format!("ops-{tag}@example.com"), "p": PASSWORD, "r": "ADMIN"}),
    )
    .await;
    assert_eq!(r["data"]["createUser"]["role"], "ADMIN", "{r}");
    assert_eq!(users().await, before + 3);

    // The new account signs in; then an admin sets its password.
    let normal = format!("new-{tag}@example.com");
    let sign_in = |p: &'static str| {
        let vars = json!({"e": normal, "p": p});
        async move {
            gql(
                base,
                None,
                "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken refreshToken}}",
                vars,
            )
            .await
        }
    };
    let r = sign_in(PASSWORD).await;
    let access = r["data"]["login"]["accessToken"]
        .as_str()
        .expect("access")
        .to_owned();
    let refresh = r["data"]["login"]["refreshToken"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let r = gql(base, Some(&admin), SET, json!({"id": id, "p": "short"})).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        SET,
        json!({"id": uuid::Uuid::new_v4(), "p": NEW}),
    )
    .await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    let r = gql(base, Some(&user_tok), SET, json!({"id": id, "p": NEW})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    let r = gql(base, Some(&access), "{me{id}}", json!({})).await;
    assert_eq!(
        r["data"]["me"]["id"],
        id.as_str(),
        "refused calls changed nothing: {r}"
    );

    let r = gql(base, Some(&admin), SET, json!({"id": id, "p": NEW})).await;
    assert_eq!(r["data"]["setUserPassword"]["id"], id.as_str(), "{r}");
    let r = gql(base, Some(&access), "{me{id}}", json!({})).await;
    assert_eq!(
        code(&r),
        Some("UNAUTHENTICATED"),
        "the old sign-in ended: {r}"
    );
    let r = gql(
        base,
        None,
        "mutation($t:String!){refreshToken(token:$t){accessToken}}",
        json!({"t": refresh}),
    )
    .await;
    assert_eq!(
        code(&r),
        Some("UNAUTHENTICATED"),
        "its refresh token too: {r}"
    );
    assert!(
        code(&sign_in(PASSWORD).await).is_some(),
        "the old password fails"
    );
    assert!(sign_in(NEW).await["data"]["login"]["accessToken"].is_string());

    // Audited, without the password.
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(first:100){nodes{action targetId details}}}",
        json!({}),
    )
    .await;
    let entries = r["data"]["auditLog"]["nodes"]
        .as_array()
        .expect("entries")
        .clone();
    let of = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(of("create_user"), 2, "{r}");
    assert_eq!(of("set_user_password"), 1, "{r}");
    assert!(
        !r.to_string().contains(NEW) && !r.to_string().contains(PASSWORD),
        "{r}"
    );
    server.stop().await;
}

/// A USER account made straight in the database (sign-up being closed),
/// signed in: its id and access token.
async fn user_when_closed(server: &TestServer) -> (String, String) {
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let u = accounts::create_user(&server.state.db, &email, PASSWORD, Role::User)
        .await
        .expect("user");
    (u.id.to_string(), login(&server.base, &email).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_renamed_by_their_owner_or_an_admin_on_postgres() {
    device_renames(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_renamed_by_their_owner_or_an_admin_on_sqlite() {
    device_renames(TestDb::sqlite().await).await;
}

/// `renameDevice`: the owner renames its device (unaudited, as its own
/// act), an admin anyone's (audited with both names); another user's
/// device is NOT_FOUND and a blank or long name BAD_REQUEST, changing
/// nothing; the token keeps working.
async fn device_renames(t: TestDb) {
    const RENAME: &str =
        "mutation($id:UUID!,$n:String!){renameDevice(id:$id,name:$n){id name status}}";
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let p = plan(base, &admin, 3).await;
    let (uid, tok) = user(base).await;
    grant(base, &admin, &uid, &p).await;
    let r = gql(
        base,
        Some(&tok),
        "mutation{registerDevice(name:\"phone\",platform:\"android\"){accessToken device{id}}}",
        json!({}),
    )
    .await;
    let id = r["data"]["registerDevice"]["device"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let token = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let name = || async {
        let r = gql(base, Some(&tok), "{devices{nodes{id name}}}", json!({})).await;
        r["data"]["devices"]["nodes"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    let r = gql(
        base,
        Some(&tok),
        RENAME,
        json!({"id": id, "n": "  Work phone "}),
    )
    .await;
    assert_eq!(r["data"]["renameDevice"]["name"], "Work phone", "{r}");
    for bad in ["   ", &"x".repeat(65)] {
        let r = gql(base, Some(&tok), RENAME, json!({"id": id, "n": bad})).await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    }
    let (_, other) = user(base).await;
    let r = gql(
        base,
        Some(&other),
        RENAME,
        json!({"id": id, "n": "mine now"}),
    )
    .await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    let r = gql(base, None, RENAME, json!({"id": id, "n": "anyone"})).await;
    assert_eq!(code(&r), Some("UNAUTHENTICATED"), "{r}");
    assert_eq!(
        name().await,
        "Work phone",
        "refused renames changed nothing"
    );

    let r = gql(
        base,
        Some(&admin),
        RENAME,
        json!({"id": id, "n": "Support renamed it"}),
    )
    .await;
    assert_eq!(r["data"]["renameDevice"]["status"], "ACTIVE", "{r}");
    assert_eq!(name().await, "Support renamed it");
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(filter:{action:\"rename_device\"}){nodes{targetId details}}}",
        json!({}),
    )
    .await;
    let entries = r["data"]["auditLog"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .clone();
    assert_eq!(entries.len(), 1, "only the admin's rename is audited: {r}");
    assert_eq!(entries[0]["targetId"], id.as_str());
    assert!(
        entries[0]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("Work phone"),
        "{r}"
    );
    assert_eq!(
        device_token_status(&server, &token).await,
        200,
        "the token still works"
    );
    server.stop().await;
}

/// `POST /api/v1/auth/device-token` with the device's access token: the
/// status (200 while the device may connect).
async fn device_token_status(server: &TestServer, token: &str) -> u16 {
    client()
        .post(server.url("/api/v1/auth/device-token"))
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_changes_that_change_nothing_or_go_too_far_on_postgres() {
    admin_bounds(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_changes_that_change_nothing_or_go_too_far_on_sqlite() {
    admin_bounds(TestDb::sqlite().await).await;
}

/// Setting a role or a status an account already has changes nothing: its
/// sign-ins keep working and nothing is audited. A search text no email
/// could hold, an email whose domain label ends in a hyphen and an
/// extension past 9999-12-31 are typed refusals (on SQLite too, where the
/// search would meet the bound on LIKE patterns).
async fn admin_bounds(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let (id, tok) = user(base).await;
    let me = || async { gql(base, Some(&tok), "{me{id}}", json!({})).await };
    assert_eq!(me().await["data"]["me"]["id"], json!(id));
    let admin_ref = admin.as_str();
    let audited = |action: &'static str| async move {
        let r = gql(
            base,
            Some(admin_ref),
            "query($a:String!){auditLog(filter:{action:$a}){totalCount}}",
            json!({"a": action}),
        )
        .await;
        r["data"]["auditLog"]["totalCount"].as_i64().unwrap_or(-1)
    };
    for (m, action) in [
        (
            "mutation($id:UUID!){setUserRole(id:$id,role:USER){role}}",
            "set_user_role",
        ),
        (
            "mutation($id:UUID!){setUserStatus(id:$id,status:ACTIVE){status}}",
            "set_user_status",
        ),
    ] {
        let r = gql(base, Some(&admin), m, json!({"id": id})).await;
        assert!(r["errors"].is_null(), "{r}");
        assert_eq!(me().await["data"]["me"]["id"], json!(id), "still signed in");
        assert_eq!(audited(action).await, 0, "nothing to audit");
    }
    // A real change still ends the sign-ins and is audited.
    let r = gql(
        base,
        Some(&admin),
        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
        json!({"id": id}),
    )
    .await;
    assert_eq!(r["data"]["setUserStatus"]["status"], "DISABLED", "{r}");
    assert_eq!(code(&me().await), Some("UNAUTHENTICATED"));
    assert_eq!(audited("set_user_status").await, 1);

    let long = "a".repeat(50_000);
    let r = gql(
        base,
        Some(&admin),
        "query($e:String!){users(filter:{emailContains:$e}){totalCount}}",
        json!({"e": long}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "query($e:String!){users(filter:{emailContains:$e}){totalCount}}",
        json!({"e": "example"}),
    )
    .await;
    assert!(r["data"]["users"]["totalCount"].as_i64() > Some(0), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "mutation($e:String!,$p:String!){createUser(email:$e,password:$p){id}}",
        json!({"e": "a@-example-.com", "p": PASSWORD}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");

    // 3,660 days at a time, 30 at once: the year 9999 is reached within
    // 27 requests, and the extension past it refused.
    let (holder, _) = user(base).await;
    let p = plan(base, &admin, 1).await;
    let g = grant(base, &admin, &holder, &p).await;
    let sub = g["data"]["grantSubscription"]["id"]
        .as_str()
        .expect("sub")
        .to_owned();
    let many: String = (0..30)
        .map(|i| format!("e{i}:extendSubscription(id:$s,days:3660){{expiresAt}} "))
        .collect();
    let extend = format!("mutation($s:UUID!){{{many}}}");
    let mut refused = None;
    for _ in 0..40 {
        let r = gql(base, Some(&admin), &extend, json!({"s": sub})).await;
        if !r["errors"].is_null() {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("an extension past 9999 is refused");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "query($u:UUID!){subscriptions(filter:{userId:$u}){nodes{id expiresAt status}}}",
        json!({"u": holder}),
    )
    .await;
    let held = &r["data"]["subscriptions"]["nodes"][0];
    assert_eq!(held["id"], json!(sub), "{r}");
    let until = held["expiresAt"].as_str().unwrap_or_default();
    assert!(until.starts_with("99"), "{r}");
    assert_eq!(held["status"], "ACTIVE", "{r}");

    // A plan changed with nothing to change, archived twice, a
    // subscription cancelled twice: the repeats answer the record as it
    // is and audit nothing.
    let p = plan(base, &admin, 1).await;
    let r = gql(
        base,
        Some(&admin),
        "mutation($p:UUID!){updatePlan(id:$p,input:{}){id archived}}",
        json!({"p": p}),
    )
    .await;
    assert_eq!(r["data"]["updatePlan"]["id"], json!(p), "{r}");
    assert_eq!(audited("update_plan").await, 0, "nothing to audit");
    // A change is audited with what changed, and what it was.
    let r = gql(
        base,
        Some(&admin),
        "mutation($p:UUID!){updatePlan(id:$p,input:{deviceLimit:2,trafficLimitBytes:null,durationDays:30}){deviceLimit}}",
        json!({"p": p}),
    )
    .await;
    assert_eq!(r["data"]["updatePlan"]["deviceLimit"], 2, "{r}");
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(first:1,filter:{action:\"update_plan\"}){nodes{targetId details}}}",
        json!({}),
    )
    .await;
    let entry = &r["data"]["auditLog"]["nodes"][0];
    assert_eq!(entry["targetId"], json!(p), "{r}");
    let details: Value = serde_json::from_str(entry["details"].as_str().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{r}"));
    assert_eq!(
        details,
        json!({"deviceLimit": 2, "trafficLimitBytes": null,
               "previous": {"deviceLimit": 1, "trafficLimitBytes": "1073741824"}}),
        "{r}"
    );
    // The same values again change nothing: not audited.
    let r = gql(
        base,
        Some(&admin),
        "mutation($p:UUID!){updatePlan(id:$p,input:{deviceLimit:2,trafficLimitBytes:null}){deviceLimit}}",
        json!({"p": p}),
    )
    .await;
    assert_eq!(r["data"]["updatePlan"]["deviceLimit"], 2, "{r}");
    assert_eq!(
        audited("update_plan").await,
        1,
        "a change of nothing audited"
    );
    let (lapsed, _) = user(base).await;
    let g = grant(base, &admin, &lapsed, &p).await;
    let lapsed_sub = g["data"]["grantSubscription"]["id"].clone();
    for _ in 0..2 {
        let r = gql(
            base,
            Some(&admin),
            "mutation($p:UUID!){archivePlan(id:$p){archived}}",
            json!({"p": p}),
        )
        .await;
        assert_eq!(r["data"]["archivePlan"]["archived"], true, "{r}");
        let r = gql(
            base,
            Some(&admin),
            "mutation($s:UUID!){cancelSubscription(id:$s){status}}",
            json!({"s": sub}),
        )
        .await;
        assert_eq!(
            r["data"]["cancelSubscription"]["status"], "CANCELLED",
            "{r}"
        );
    }
    assert_eq!(audited("archive_plan").await, 1, "archived once");
    assert_eq!(audited("cancel_subscription").await, 1, "cancelled once");
    // Their entries say what was archived and cancelled (they said `{}`).
    let details = |action: &'static str| async move {
        let r = gql(
            base,
            Some(admin_ref),
            "query($a:String!){auditLog(filter:{action:$a}){edges{node{details}}}}",
            json!({"a": action}),
        )
        .await;
        let text = r["data"]["auditLog"]["edges"][0]["node"]["details"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        serde_json::from_str::<serde_json::Value>(&text).expect("details are JSON")
    };
    assert!(details("archive_plan").await["name"].is_string());
    let cancelled = details("cancel_subscription").await;
    assert!(
        cancelled["userId"].is_string() && cancelled["planId"].is_string(),
        "{cancelled}"
    );
    // A subscription of the archived plan, in force: extended; lapsed:
    // bringing it back would be a new grant of the plan, refused.
    let extend_lapsed = "mutation($s:UUID!){extendSubscription(id:$s,days:30){status}}";
    let r = gql(base, Some(&admin), extend_lapsed, json!({"s": lapsed_sub})).await;
    assert_eq!(r["data"]["extendSubscription"]["status"], "ACTIVE", "{r}");
    let extended = audited("extend_subscription").await;
    common::execute(
        &server.state.db,
        &format!(
            "UPDATE subscriptions SET starts_at = '2019-12-01 00:00:00', expires_at = '2020-01-01 00:00:00' WHERE id = '{}'",
            lapsed_sub.as_str().expect("sub")
        ),
    )
    .await;
    let r = gql(base, Some(&admin), extend_lapsed, json!({"s": lapsed_sub})).await;
    assert_eq!(code(&r), Some("CONFLICT"), "{r}");
    assert_eq!(audited("extend_subscription").await, extended, "{r}");
}

/// An admin registers a device for a subscriber (`registerDevice(userId:)`)
/// and gets its access token, within the subscriber's plan's device
/// limit, audited as `register_device`; a subscriber naming another user
/// is `FORBIDDEN`, an unknown user `NOT_FOUND`. Before, an operator had to
/// set the subscriber's password and sign in as them to issue a key.
#[tokio::test(flavor = "multi_thread")]
async fn admins_register_devices_for_subscribers() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let (uid, tok) = user(base).await;
    let p = plan(base, &admin, 1).await;
    grant(base, &admin, &uid, &p).await;
    let register = "mutation($u:UUID){registerDevice(name:\"laptop\",platform:\"linux\",userId:$u){accessToken device{id}}}";
    let r = gql(base, Some(&admin), register, json!({"u": uid})).await;
    assert!(
        r["data"]["registerDevice"]["accessToken"].is_string(),
        "{r}"
    );
    let device = r["data"]["registerDevice"]["device"]["id"].clone();
    // The subscriber's device, counted against the subscriber's plan.
    let mine = gql(
        base,
        Some(&tok),
        "{devices(first:10){edges{node{id}}}}",
        json!({}),
    )
    .await;
    assert_eq!(
        mine["data"]["devices"]["edges"][0]["node"]["id"], device,
        "{mine}"
    );
    let r = gql(base, Some(&admin), register, json!({"u": uid})).await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{r}"
    );
    // Audited.
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(filter:{action:\"register_device\"}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["auditLog"]["totalCount"], 1, "{r}");
    // A subscriber may not, for someone else; nobody may, for nobody.
    let (other, _) = user(base).await;
    let r = gql(base, Some(&tok), register, json!({"u": other})).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "FORBIDDEN", "{r}");
    let r = gql(
        base,
        Some(&admin),
        register,
        json!({"u": uuid::Uuid::new_v4()}),
    )
    .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "NOT_FOUND", "{r}");
    server.stop().await;
}

/// A user's lists are their own: asking for another user's subscriptions,
/// devices or sessions is FORBIDDEN (it was answered with the caller's own
/// rows, as if they were the other's); asking for their own works.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_asking_for_another_users_lists_is_refused() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let p = plan(base, &admin, 2).await;
    let (me, tok) = user(base).await;
    let (other, _) = user(base).await;
    grant(base, &admin, &me, &p).await;
    grant(base, &admin, &other, &p).await;
    let lists = "query($u:UUID){subscriptions(filter:{userId:$u}){totalCount nodes{user{id}}} \
                 devices(filter:{userId:$u}){totalCount}}";
    let r = gql(base, Some(&tok), lists, json!({"u": other})).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    for asked in [json!(me), Value::Null] {
        let r = gql(base, Some(&tok), lists, json!({"u": asked})).await;
        assert_eq!(r["data"]["subscriptions"]["totalCount"], 1, "{r}");
        assert_eq!(
            r["data"]["subscriptions"]["nodes"][0]["user"]["id"],
            json!(me),
            "{r}"
        );
    }
    let r = gql(base, Some(&admin), lists, json!({"u": other})).await;
    assert_eq!(
        r["data"]["subscriptions"]["nodes"][0]["user"]["id"],
        json!(other),
        "{r}"
    );
    server.stop().await;
}

/// Two admins demoting (or disabling) each other at once: one change
/// goes through, the other is refused, and an admin remains (both went
/// through, and no account could administer the service any more). The
/// command line cannot demote or disable the last active admin either.
async fn an_admin_always_remains(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let (base, db) = (&server.base, &server.state.db);
    let role = "mutation($id:UUID!){setUserRole(id:$id,role:USER){role}}";
    let status = "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}";
    let mut admins: Vec<String> = Vec::new();
    for (round, change) in [role, status, role, status].into_iter().enumerate() {
        let mut pair = Vec::new();
        for _ in 0..2 {
            let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
            let u = accounts::create_user(db, &email, PASSWORD, Role::Admin)
                .await
                .expect("admin");
            pair.push((u.id.to_string(), login(base, &email).await));
        }
        let ((a, a_tok), (b, b_tok)) = (&pair[0], &pair[1]);
        admins.extend([a.clone(), b.clone()]);
        let (ra, rb) = tokio::join!(
            gql(base, Some(a_tok), change, json!({"id": b})),
            gql(base, Some(b_tok), change, json!({"id": a})),
        );
        let through = [&ra, &rb].iter().filter(|r| r["errors"].is_null()).count();
        assert_eq!(through, 1, "round {round}: {ra} {rb}");
        let mut left = 0;
        for id in [a, b] {
            let u = accounts::find_user(db, id.parse().expect("id"))
                .await
                .expect("read")
                .expect("user");
            left += usize::from(u.role == Role::Admin && u.status == accounts::UserStatus::Active);
        }
        assert_eq!(left, 1, "round {round}: {ra} {rb}");
    }
    // The last active admin, as the command line (no account) acts: each
    // admin demoted in turn, the last refused.
    let op = httvps_control::actor::Actor::Operator;
    let active_admins = || async {
        let f = accounts::UserFilter {
            role: Some(Role::Admin),
            status: Some(accounts::UserStatus::Active),
            ..Default::default()
        };
        accounts::count(db, &op, &f).await.expect("count")
    };
    let ours = i64::try_from(admins.len()).expect("few");
    let survivors = ours / 2;
    assert_eq!(
        active_admins().await,
        survivors,
        "every active admin is ours"
    );
    let mut refused = Vec::new();
    for id in &admins {
        let id = id.parse().expect("id");
        if let Err(e) = accounts::set_role(db, &op, id, Role::User).await {
            refused.push((id, e));
        }
    }
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (last, e) = refused.remove(0);
    let disabled = accounts::set_status(db, &op, last, accounts::UserStatus::Disabled).await;
    for e in [Some(e), disabled.err()] {
        assert!(
            matches!(e, Some(httvps_control::error::AppError::Conflict(_))),
            "{e:?}"
        );
    }
    assert_eq!(active_admins().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_always_remains_on_postgres() {
    an_admin_always_remains(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_always_remains_on_sqlite() {
    an_admin_always_remains(TestDb::sqlite().await).await;
}

/// API answers carry tokens and account data: no cache may keep them
/// (`Cache-Control: no-store`), on `/graphql` (POST and GET) and on
/// `/api/v1`, answered or refused (401, 404, 413); the console's pages
/// keep their own rule.
#[tokio::test(flavor = "multi_thread")]
async fn api_answers_are_not_stored_by_caches() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let (_, tok) = user(base).await;
    let http = client();
    let answers = [
        http.post(format!("{base}/graphql"))
            .json(&json!({"query": "{me{email}}"}))
            .bearer_auth(&tok)
            .send()
            .await,
        http.get(format!("{base}/graphql?query=%7B__typename%7D"))
            .send()
            .await,
        http.post(format!("{base}/api/v1/auth/device-token"))
            .send()
            .await,
        http.get(format!("{base}/api/v1/health")).send().await,
        http.get(format!("{base}/api/v1/no-such-route"))
            .send()
            .await,
        http.post(format!("{base}/graphql"))
            .header("content-type", "application/json")
            .body(vec![b' '; 70 * 1024])
            .send()
            .await,
    ];
    let page = http
        .get(format!("{base}/console/"))
        .send()
        .await
        .expect("console");
    assert_eq!(
        page.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    for r in answers {
        let r = r.expect("answer");
        assert_eq!(
            r.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{} {:?}",
            r.url(),
            r.status()
        );
    }
    server.stop().await;
}
