//! The control plane under hostile traffic: revocation that reaches access
//! tokens, and throttled guessing and flooding, on PostgreSQL and SQLite.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestDb, TestServer, client, gql};
use httvps_control::config::ThrottleSettings;
use httvps_control::db::Dsn;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

async fn sign_up(base: &str) -> String {
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    assert!(r["data"]["signUp"]["id"].is_string(), "signUp: {r}");
    email
}

/// Logs in; returns (access token, refresh token).
async fn login(base: &str, email: &str, password: &str) -> (String, String) {
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken refreshToken}}",
        json!({"e": email, "p": password}),
    )
    .await;
    let get = |k: &str| {
        r["data"]["login"][k]
            .as_str()
            .unwrap_or_else(|| panic!("login: {r}"))
            .to_owned()
    };
    (get("accessToken"), get("refreshToken"))
}

async fn refresh(base: &str, token: &str) -> Value {
    gql(
        base,
        None,
        "mutation($t:String!){refreshToken(token:$t){accessToken refreshToken}}",
        json!({"t": token}),
    )
    .await
}

async fn me_works(base: &str, access: &str) -> bool {
    let r = gql(base, Some(access), "{me{id}}", json!({})).await;
    match code(&r) {
        None if r["data"]["me"]["id"].is_string() => true,
        Some("UNAUTHENTICATED") => false,
        _ => panic!("unexpected answer to me: {r}"),
    }
}

/// Revoking a refresh family (reuse), changing the password and logging out
/// each end the access tokens issued before; other families live on until
/// the account-wide changes.
async fn revocation_reaches_access_tokens(server: &TestServer) {
    let base = &server.base;
    let email = sign_up(base).await;
    let (access_a, refresh_a) = login(base, &email, PASSWORD).await;
    let (access_b, _refresh_b) = login(base, &email, PASSWORD).await;
    let r = refresh(base, &refresh_a).await;
    let access_a2 = r["data"]["refreshToken"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("refresh: {r}"))
        .to_owned();
    assert!(me_works(base, &access_a).await);
    assert!(me_works(base, &access_a2).await);
    // Replaying the used refresh token revokes family A: both of its access
    // tokens stop working at once, family B is untouched.
    assert_eq!(
        code(&refresh(base, &refresh_a).await),
        Some("UNAUTHENTICATED")
    );
    assert!(
        !me_works(base, &access_a).await,
        "family revoked, old token"
    );
    assert!(
        !me_works(base, &access_a2).await,
        "family revoked, refreshed token"
    );
    assert!(
        me_works(base, &access_b).await,
        "another family stays valid"
    );

    // A password change ends every family.
    let r = gql(
        base,
        Some(&access_b),
        "mutation($c:String!,$n:String!){changePassword(currentPassword:$c,newPassword:$n)}",
        json!({"c": PASSWORD, "n": "another long password"}),
    )
    .await;
    assert_eq!(r["data"]["changePassword"], true, "{r}");
    assert!(!me_works(base, &access_b).await, "password changed");

    // Signing out this log-in only ends its tokens; the other one goes on.
    let (access_e, refresh_e) = login(base, &email, "another long password").await;
    let (access_f, refresh_f) = login(base, &email, "another long password").await;
    let r = gql(
        base,
        Some(&access_e),
        "mutation{logout(everywhere:false)}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["logout"], true, "{r}");
    assert!(!me_works(base, &access_e).await, "this log-in ended");
    assert_eq!(
        code(&refresh(base, &refresh_e).await),
        Some("UNAUTHENTICATED")
    );
    assert!(me_works(base, &access_f).await, "the other log-in goes on");
    let r = refresh(base, &refresh_f).await;
    assert!(r["errors"].is_null(), "the other log-in refreshes: {r}");

    // Logging out ends the tokens of this log-in and of every other one.
    let (access_c, refresh_c) = login(base, &email, "another long password").await;
    let (access_d, _) = login(base, &email, "another long password").await;
    assert!(me_works(base, &access_c).await);
    let r = gql(base, Some(&access_c), "mutation{logout}", json!({})).await;
    assert_eq!(r["data"]["logout"], true, "{r}");
    assert!(!me_works(base, &access_c).await, "logged out");
    assert!(!me_works(base, &access_d).await, "logged out everywhere");
    assert_eq!(
        code(&refresh(base, &refresh_c).await),
        Some("UNAUTHENTICATED")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_access_tokens_postgres() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    revocation_reaches_access_tokens(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_access_tokens_sqlite() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    revocation_reaches_access_tokens(&server).await;
    server.stop().await;
}

/// A server whose throttles are `throttle` (defaults with a short window
/// unless changed).
async fn throttled_server(dsn: Dsn, f: impl FnOnce(&mut ThrottleSettings)) -> TestServer {
    let mut settings = common::settings(dsn, false);
    f(&mut settings.throttle);
    TestServer::start_with(settings, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// A GraphQL operation sent as if through a proxy from `client_ip`.
async fn gql_from(base: &str, client_ip: &str, query: &str, variables: Value) -> Value {
    client()
        .post(format!("{base}/graphql"))
        .header("x-forwarded-for", format!("10.9.9.9, {client_ip}"))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("graphql request")
        .json()
        .await
        .expect("graphql json")
}

const LOGIN: &str = "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}";

/// 200 wrong passwords in a row: after the account's small burst every
/// guess is refused with LIMIT_EXCEEDED (and a retry-after) without being
/// checked, so the right password is refused too; once the window has
/// passed it works again.
async fn wrong_passwords_are_refused_before_the_right_one(dsn: Dsn) {
    const BURST: u32 = 3;
    const WINDOW: Duration = Duration::from_secs(6);
    let server = throttled_server(dsn, |t| {
        t.window = WINDOW;
        t.login_per_account = BURST;
        t.login_per_source = 1000;
    })
    .await;
    let base = &server.base;
    let email = sign_up(base).await;
    let started = Instant::now();
    let (mut checked, mut refused) = (0u32, 0u32);
    for i in 0..200 {
        let r = gql(
            base,
            None,
            LOGIN,
            json!({"e": email, "p": format!("wrong password {i}")}),
        )
        .await;
        match code(&r) {
            Some("BAD_REQUEST") => checked += 1,
            Some("LIMIT_EXCEEDED") => {
                refused += 1;
                let retry = r["errors"][0]["extensions"]["retryAfter"].as_u64();
                assert!(retry.is_some_and(|s| (1..=6).contains(&s)), "{r}");
            }
            _ => panic!("unexpected answer: {r}"),
        }
    }
    // One attempt comes back every WINDOW / BURST.
    let refills = started.elapsed().as_secs_f64() / (WINDOW.as_secs_f64() / f64::from(BURST));
    assert!(
        f64::from(checked) <= f64::from(BURST) + refills.ceil(),
        "{checked} guesses were checked in {:?}",
        started.elapsed()
    );
    assert!(refused >= 190, "only {refused} refused");
    let r = gql(base, None, LOGIN, json!({"e": email, "p": PASSWORD})).await;
    assert_eq!(
        code(&r),
        Some("LIMIT_EXCEEDED"),
        "right password during the flood: {r}"
    );
    // The legitimate user is not locked out for longer than the window.
    tokio::time::sleep(WINDOW).await;
    let r = gql(base, None, LOGIN, json!({"e": email, "p": PASSWORD})).await;
    assert!(
        r["data"]["login"]["accessToken"].is_string(),
        "after the window: {r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_are_refused_before_the_right_one_postgres() {
    let t = TestDb::pg().await;
    wrong_passwords_are_refused_before_the_right_one(t.dsn.clone()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_are_refused_before_the_right_one_sqlite() {
    let t = TestDb::sqlite().await;
    wrong_passwords_are_refused_before_the_right_one(t.dsn.clone()).await;
}

/// Each aliased `login` in one document is one attempt.
#[tokio::test(flavor = "multi_thread")]
async fn aliased_logins_count_one_attempt_each() {
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.login_per_account = 5;
        t.login_per_source = 1000;
        t.window = Duration::from_secs(600);
    })
    .await;
    let base = &server.base;
    let email = sign_up(base).await;
    let fields: Vec<String> = (0..20)
        .map(|i| format!("a{i}: login(email:$e,password:$p){{accessToken}}"))
        .collect();
    let doc = format!("mutation($e:String!,$p:String!){{{}}}", fields.join(" "));
    let r = gql(base, None, &doc, json!({"e": email, "p": PASSWORD})).await;
    let signed_in = (0..20)
        .filter(|i| r["data"][format!("a{i}")]["accessToken"].is_string())
        .count();
    let errors = r["errors"].as_array().expect("errors");
    let refused = errors
        .iter()
        .filter(|e| e["extensions"]["code"] == "LIMIT_EXCEEDED")
        .count();
    assert_eq!((signed_in, refused, errors.len()), (5, 15, 15), "{r}");
    server.stop().await;
}

/// `changePassword` checks the current password like a log-in, and counts
/// like one: with a signed-in token, 20 aliased guesses check 5 (the
/// account's allowance) and refuse the rest; the right password is then
/// refused too, and so is a log-in to the account, until the allowance
/// refills.
#[tokio::test(flavor = "multi_thread")]
async fn password_changes_spend_the_accounts_log_in_allowance() {
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.login_per_account = 6;
        t.login_per_source = 1000;
        t.window = Duration::from_secs(600);
    })
    .await;
    let base = &server.base;
    let email = sign_up(base).await;
    let (access, _) = login(base, &email, PASSWORD).await;
    let fields: Vec<String> = (0..20)
        .map(|i| format!("a{i}: changePassword(currentPassword:\"guess {i}\",newPassword:$n)"))
        .collect();
    let doc = format!("mutation($n:String!){{{}}}", fields.join(" "));
    let r = gql(
        base,
        Some(&access),
        &doc,
        json!({"n": "a new password 123"}),
    )
    .await;
    let errors = r["errors"].as_array().expect("errors");
    let count = |c: &str| {
        errors
            .iter()
            .filter(|e| e["extensions"]["code"] == c)
            .count()
    };
    assert_eq!(
        (count("BAD_REQUEST"), count("LIMIT_EXCEEDED"), errors.len()),
        (5, 15, 20),
        "{r}"
    );
    let right = gql(
        base,
        Some(&access),
        "mutation($c:String!,$n:String!){changePassword(currentPassword:$c,newPassword:$n)}",
        json!({"c": PASSWORD, "n": "a new password 123"}),
    )
    .await;
    assert_eq!(code(&right), Some("LIMIT_EXCEEDED"), "{right}");
    let log_in = gql(base, None, LOGIN, json!({"e": email, "p": PASSWORD})).await;
    assert_eq!(code(&log_in), Some("LIMIT_EXCEEDED"), "{log_in}");
    server.stop().await;
}

/// Spellings of one address that log-in takes as the same account (upper
/// case, full-width letters) share the account's allowance.
#[tokio::test(flavor = "multi_thread")]
async fn another_spelling_of_the_email_does_not_buy_more_guesses() {
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.login_per_account = 3;
        t.login_per_source = 1000;
        t.window = Duration::from_secs(600);
    })
    .await;
    let base = &server.base;
    let email = sign_up(base).await;
    let full_width: String = email
        .chars()
        .map(|c| match c {
            'a'..='z' => char::from_u32(u32::from(c) - u32::from('a') + 0xFF41).unwrap_or(c),
            _ => c,
        })
        .collect();
    let spellings = [email.to_uppercase(), full_width.clone(), email.clone()];
    for e in &spellings {
        let r = gql(base, None, LOGIN, json!({"e": e, "p": "wrong password"})).await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{e}: {r}");
    }
    let r = gql(base, None, LOGIN, json!({"e": full_width, "p": PASSWORD})).await;
    assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
    server.stop().await;
}

/// One source flooding log-ins for many accounts is stopped; a user at
/// another address is served, and the source's own limit counts aliases too.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_source_is_stopped_and_others_are_served() {
    let t = TestDb::pg().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.login_per_source = 5;
        t.client_ip_header = Some(reqwest::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let base = &server.base;
    let victim = sign_up(base).await;
    let mut answers = Vec::new();
    for i in 0..12 {
        let r = gql_from(
            base,
            "203.0.113.66",
            LOGIN,
            json!({"e": format!("guess{i}@example.com"), "p": "wrong password"}),
        )
        .await;
        answers.push(code(&r).unwrap_or("none").to_owned());
    }
    assert_eq!(
        answers.iter().filter(|c| *c == "LIMIT_EXCEEDED").count(),
        7,
        "{answers:?}"
    );
    let r = gql_from(
        base,
        "203.0.113.66",
        LOGIN,
        json!({"e": victim, "p": PASSWORD}),
    )
    .await;
    assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
    let r = gql_from(
        base,
        "198.51.100.20",
        LOGIN,
        json!({"e": victim, "p": PASSWORD}),
    )
    .await;
    assert!(
        r["data"]["login"]["accessToken"].is_string(),
        "another source: {r}"
    );
    server.stop().await;
}

/// Sign-ups and refreshes are limited per source.
#[tokio::test(flavor = "multi_thread")]
async fn sign_up_and_refresh_floods_are_refused() {
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.signup_per_source = 4;
        t.refresh_per_source = 3;
        t.window = Duration::from_secs(600);
    })
    .await;
    let base = &server.base;
    let mut codes = Vec::new();
    for i in 0..10 {
        let r = gql(
            base,
            None,
            "mutation($e:String!,$p:String!){signUp(email:$e,password:$p){id}}",
            json!({"e": format!("flood{i}@example.com"), "p": PASSWORD}),
        )
        .await;
        codes.push(code(&r).map(str::to_owned));
        if code(&r) == Some("LIMIT_EXCEEDED") {
            assert!(
                r["errors"][0]["extensions"]["retryAfter"]
                    .as_u64()
                    .is_some(),
                "{r}"
            );
        }
    }
    let created = codes.iter().filter(|c| c.is_none()).count();
    let refused = codes
        .iter()
        .filter(|c| c.as_deref() == Some("LIMIT_EXCEEDED"))
        .count();
    assert_eq!((created, refused), (4, 6), "{codes:?}");
    let mut refresh_codes = Vec::new();
    for _ in 0..6 {
        let r = refresh(base, "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYg").await;
        refresh_codes.push(code(&r).unwrap_or("none").to_owned());
    }
    assert_eq!(
        refresh_codes,
        ["UNAUTHENTICATED"; 3]
            .into_iter()
            .chain(["LIMIT_EXCEEDED"; 3])
            .collect::<Vec<_>>()
    );
    server.stop().await;
}

/// An admin account `email` created on `server`, signed in: its access token.
async fn signed_in_admin(server: &TestServer, email: &str) -> String {
    httvps_control::accounts::create_user(
        &server.state.db,
        email,
        PASSWORD,
        httvps_control::accounts::Role::Admin,
    )
    .await
    .expect("admin");
    login(&server.base, email, PASSWORD).await.0
}

/// A gateway's heartbeat with `token`: its status.
async fn gateway_beat(server: &TestServer, token: &str) -> u16 {
    client()
        .post(server.url("/api/v1/gateway/heartbeat"))
        .bearer_auth(token)
        .json(&json!({"open_tunnels": 0}))
        .send()
        .await
        .expect("heartbeat")
        .status()
        .as_u16()
}

/// Unknown machine and device tokens at `/api/v1`: past the allowance the
/// source gets 429 with `Retry-After` and the JSON envelope on every route,
/// before any token is looked up; a machine token authenticated before
/// from that source (a gateway behind the guesser's address) is still
/// served.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_token_flood_gets_429() {
    let t = TestDb::pg().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.unknown_tokens_per_source = 5;
        t.window = Duration::from_secs(600);
    })
    .await;
    let base = &server.base;
    let admin = signed_in_admin(&server, "ops@example.com").await;
    let r = gql(base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} a:registerGatewayNode(input:{region:\"eu\",name:\"gw1\",publicUrl:\"https://gw1.example.com\"}){token} b:registerGatewayNode(input:{region:\"eu\",name:\"gw2\",publicUrl:\"https://gw2.example.com\"}){token}}", json!({})).await;
    let (working, unseen) = (
        r["data"]["a"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
        r["data"]["b"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned(),
    );
    assert_eq!(gateway_beat(&server, &working).await, 200);
    // Device JWTs a gateway forwards that are not ours name no device: the
    // gateway's request is answered as for an unknown device, not 401, so
    // strangers sending junk to a gateway do not count against its address.
    for i in 0..8 {
        let res = client()
            .post(server.url("/api/v1/auth/validate-device"))
            .bearer_auth(&working)
            .json(&json!({"device_jwt": format!("junk.{i}.jwt")}))
            .send()
            .await
            .expect("validate");
        let status = res.status().as_u16();
        let v: Value = res.json().await.expect("json");
        assert_eq!((status, &v["valid"]), (200, &json!(false)), "{v}");
        assert_eq!(v["reason"], "device_unknown", "{v}");
    }
    let mut statuses = Vec::new();
    for i in 0..30 {
        let token = format!("{i:0>43}");
        let req = if i % 2 == 0 {
            client().get(server.url("/api/v1/outline/config"))
        } else {
            client().post(server.url("/api/v1/auth/device-token"))
        };
        let res = req.bearer_auth(token).send().await.expect("request");
        let status = res.status().as_u16();
        if status == 429 {
            let retry: u64 = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            assert!((1..=120).contains(&retry), "{retry}");
            let body: Value = res.json().await.expect("json");
            assert_eq!(body["error"]["code"], "LIMIT_EXCEEDED", "{body}");
        }
        statuses.push(status);
    }
    // Five within the allowance, the one that goes past it, then 429 only.
    assert_eq!(&statuses[..6], &[401; 6], "{statuses:?}");
    assert!(statuses[6..].iter().all(|s| *s == 429), "{statuses:?}");
    // The gateway that beat before the flood still beats from the same
    // address; one whose token was never used from it waits like a guess.
    for _ in 0..3 {
        assert_eq!(gateway_beat(&server, &working).await, 200);
    }
    assert_eq!(gateway_beat(&server, &unseen).await, 429);
    // Health is not a credential route: it keeps answering.
    let res = client()
        .get(server.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status().as_u16(), 200);
    server.stop().await;
}

/// A device's valid access token minting device JWTs in a loop, from many
/// sources: past the device's allowance every exchange is 429 with a
/// Retry-After, whoever asks; another device is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn device_jwts_are_limited_per_device_from_any_source() {
    const BURST: u32 = 4;
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.device_jwts_per_device = BURST;
        t.window = Duration::from_secs(600);
        t.client_ip_header = Some(reqwest::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let base = &server.base;
    let admin = signed_in_admin(&server, "owner@example.com").await;
    let r = gql(
        base,
        Some(&admin),
        "mutation{createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,deviceLimit:5}){id}} ",
        json!({}),
    )
    .await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let me = gql(base, Some(&admin), "{me{id}}", json!({})).await;
    let uid = me["data"]["me"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{me}"))
        .to_owned();
    let r = gql(
        base,
        Some(&admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": uid, "p": plan}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let mut devices = Vec::new();
    for name in ["a", "b"] {
        let r = gql(
            base,
            Some(&admin),
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){accessToken}}",
            json!({"n": name}),
        )
        .await;
        devices.push(
            r["data"]["registerDevice"]["accessToken"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
        );
    }
    let mint = |token: String, source: u32| {
        let url = server.url("/api/v1/auth/device-token");
        async move {
            client()
                .post(url)
                .header("x-forwarded-for", format!("198.51.100.{source}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("device-token")
        }
    };
    let mut statuses = Vec::new();
    for i in 0..10 {
        let res = mint(devices[0].clone(), i).await;
        let status = res.status().as_u16();
        if status == 429 {
            assert!(res.headers().contains_key("retry-after"));
            let body: Value = res.json().await.expect("json");
            assert_eq!(body["error"]["code"], "LIMIT_EXCEEDED", "{body}");
        }
        statuses.push(status);
    }
    let burst = BURST as usize;
    assert_eq!(&statuses[..burst], &vec![200; burst][..], "{statuses:?}");
    assert!(statuses[burst..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(mint(devices[1].clone(), 1).await.status().as_u16(), 200);
    server.stop().await;
}

/// One account's refresh tokens exchanged from many sources: past the
/// account's allowance the exchange is LIMIT_EXCEEDED, and the refused
/// token is not spent (it works once the allowance has room again);
/// another account is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn refreshes_are_limited_per_account_and_a_refused_token_is_kept() {
    const BURST: u32 = 3;
    const WINDOW: Duration = Duration::from_secs(3);
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.refresh_per_account = BURST;
        t.window = WINDOW;
        t.client_ip_header = Some(reqwest::header::HeaderName::from_static("x-forwarded-for"));
    })
    .await;
    let base = &server.base;
    let (email, other) = (sign_up(base).await, sign_up(base).await);
    let (_, mut token) = login(base, &email, PASSWORD).await;
    const REFRESH: &str = "mutation($t:String!){refreshToken(token:$t){refreshToken}}";
    for i in 0..BURST {
        let r = gql_from(
            base,
            &format!("198.51.100.{i}"),
            REFRESH,
            json!({"t": token}),
        )
        .await;
        token = r["data"]["refreshToken"]["refreshToken"]
            .as_str()
            .unwrap_or_else(|| panic!("refresh {i}: {r}"))
            .to_owned();
    }
    let r = gql_from(base, "203.0.113.9", REFRESH, json!({"t": token})).await;
    assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
    // Another account is served.
    let (_, theirs) = login(base, &other, PASSWORD).await;
    let r = gql_from(base, "203.0.113.9", REFRESH, json!({"t": theirs})).await;
    assert!(r["data"]["refreshToken"]["refreshToken"].is_string(), "{r}");
    // The refused token was not spent: it works once there is room.
    let started = Instant::now();
    loop {
        let r = gql_from(base, "203.0.113.10", REFRESH, json!({"t": token})).await;
        if r["data"]["refreshToken"]["refreshToken"].is_string() {
            break;
        }
        assert_eq!(code(&r), Some("LIMIT_EXCEEDED"), "{r}");
        assert!(started.elapsed() < WINDOW * 3, "still refused: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// An account stored before addresses were put in NFC and checked for
/// invisible characters still signs in with the address as it was stored;
/// the same address in NFC is another one (it was never stored).
#[tokio::test(flavor = "multi_thread")]
async fn accounts_stored_under_the_former_email_rules_still_sign_in() {
    use diesel_async::RunQueryDsl;
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let db = &server.state.db;
    for (stored, other_form) in [
        ("u\u{308}ser@example.com", Some("\u{fc}ser@example.com")),
        ("admin@localhost.", None),
        ("a@b.co\u{200b}", None),
    ] {
        let placeholder = format!("p{}@example.com", stored.len());
        httvps_control::accounts::create_user(
            db,
            &placeholder,
            PASSWORD,
            httvps_control::accounts::Role::User,
        )
        .await
        .expect("user");
        let httvps_control::db::DbPool::Pg(pool) = &db.pool else {
            panic!("pg")
        };
        let mut conn = pool.get().await.expect("conn");
        diesel::sql_query("UPDATE users SET email = $1 WHERE email = $2")
            .bind::<diesel::sql_types::Text, _>(stored)
            .bind::<diesel::sql_types::Text, _>(&placeholder)
            .execute(&mut *conn)
            .await
            .expect("update");
        let user = httvps_control::accounts::authenticate(db, stored, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("{stored:?}: {e:?}"));
        assert_eq!(user.email, stored);
        assert!(
            httvps_control::accounts::authenticate(db, stored, "wrong password, long enough")
                .await
                .is_err()
        );
        if let Some(other) = other_form {
            assert!(
                httvps_control::accounts::authenticate(db, other, PASSWORD)
                    .await
                    .is_err()
            );
        }
    }
    server.stop().await;
}

/// How a GraphQL socket that signs in with device token `token` ends: the
/// close code it gets, or 0 when it is accepted (or nothing comes within
/// 10 s).
async fn device_socket_close(base: &str, token: &str) -> u16 {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let req = common::live_request(base);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    let init = json!({"type": "connection_init", "payload": {"deviceToken": token}});
    ws.send(Message::Text(init.to_string().into()))
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
        match msg {
            Message::Close(frame) => return frame.map_or(0, |f| u16::from(f.code)),
            Message::Text(t) if t.contains("connection_ack") => return 0,
            _ => {}
        }
    }
    0
}

/// Device tokens guessed at the GraphQL socket's `connection_init` count
/// against the source's allowance of unknown credentials, as at /api/v1:
/// past it, /api/v1 refuses the source (429) before looking, and the
/// socket closes 4429 (it closed 4403, as for a revoked token).
#[tokio::test(flavor = "multi_thread")]
async fn device_tokens_guessed_at_the_live_socket_are_throttled() {
    let t = TestDb::sqlite().await;
    let server = throttled_server(t.dsn.clone(), |t| {
        t.unknown_tokens_per_source = 5;
        t.window = Duration::from_secs(600);
    })
    .await;
    let device = registered_device(&server).await;
    assert_eq!(device_socket_close(&server.base, &device).await, 0);
    // Unknown: 4403. Once the source is shut out: 4429, which tells a
    // device behind the same address to come back later, where 4403 said
    // its credential was gone.
    let mut closes = Vec::new();
    for i in 0..8 {
        let guess = format!("{i:0>43}");
        closes.push(device_socket_close(&server.base, &guess).await);
    }
    assert_eq!(
        closes,
        [4403, 4403, 4403, 4403, 4403, 4403, 4429, 4429],
        "unknown, then shut out"
    );
    let res = client()
        .post(format!("{}/api/v1/auth/validate-device", server.base))
        .bearer_auth(format!("{:0>43}", 99))
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 429, "the source's guesses were counted");
    // A device accepted before still signs in from the shut-out source.
    assert_eq!(
        device_socket_close(&server.base, &device).await,
        0,
        "a proven device was shut out with the guesser"
    );
    server.stop().await;
}

/// A device of a new account on a new plan: its access token.
async fn registered_device(server: &TestServer) -> String {
    let admin = signed_in_admin(server, "socket-owner@example.com").await;
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation{createPlan(input:{name:\"s\",priceCents:\"0\",durationDays:30,deviceLimit:5}){id}} ",
        json!({}),
    )
    .await;
    let plan = r["data"]["createPlan"]["id"].clone();
    let me = gql(&server.base, Some(&admin), "{me{id}}", json!({})).await;
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": me["data"]["me"]["id"], "p": plan}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation{registerDevice(name:\"d\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await;
    r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}
