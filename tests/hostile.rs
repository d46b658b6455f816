//! The control plane under hostile traffic: revocation that reaches access
//! tokens, on PostgreSQL and SQLite.

mod common;

use common::{TestDb, TestServer, gql};
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

