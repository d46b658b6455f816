//! GraphQL hardening and authorization: limits, transport rules, error
//! masking, the authorization walker, and live events over WebSocket
//! (across two server processes on one PostgreSQL).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestDb, TestServer, client, gql, httvps_cmd, spawn_listening};
use futures_util::{SinkExt, StreamExt};
use httvps_control::accounts::{self, Role};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PASSWORD: &str = "correct horse battery staple";

async fn token_for(server_base: &str, db: &httvps_control::db::Db, role: Role) -> String {
    let email = format!(
        "{}-{}@example.com",
        role.as_str(),
        uuid::Uuid::new_v4().simple()
    );
    accounts::create_user(db, &email, PASSWORD, role)
        .await
        .expect("user");
    let r = gql(
        server_base,
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

/// `GET /graphql?query=…`, the answer as JSON.
async fn gql_get(base: &str, query: &str) -> Value {
    client()
        .get(format!("{base}/graphql"))
        .query(&[("query", query)])
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    Public,
    SignedIn,
    Admin,
    /// Streaming root: checked over WebSocket in its own test.
    Live,
}

const ID: &str = "00000000-0000-4000-8000-000000000000";

/// Every root field, who may call it, and a call with harmless arguments.
fn table() -> BTreeMap<&'static str, (Access, String)> {
    use Access::*;
    let range = "from:\"2020-01-01T00:00:00Z\",to:\"2020-01-02T00:00:00Z\"";
    BTreeMap::from([
        ("Query.me", (SignedIn, "{me{id}}".into())),
        ("Query.users", (Admin, "{users{edges{node{id}}}}".into())),
        ("Query.user", (Admin, format!("{{user(id:\"{ID}\"){{id}}}}"))),
        ("Query.plans", (SignedIn, "{plans{edges{node{id}}}}".into())),
        ("Query.regions", (SignedIn, "{regions{edges{node{id}}}}".into())),
        ("Query.subscriptions", (SignedIn, "{subscriptions{edges{node{id}}}}".into())),
        ("Query.devices", (SignedIn, "{devices{edges{node{id}}}}".into())),
        ("Query.outlineNodes", (Admin, "{outlineNodes{edges{node{id}}}}".into())),
        ("Query.gatewayNodes", (Admin, "{gatewayNodes{edges{node{id}}}}".into())),
        ("Query.sessions", (Admin, "{sessions{edges{node{id}}}}".into())),
        ("Query.usage", (SignedIn, format!("{{usage({range}){{bytesUp}}}}"))),
        ("Query.auditLog", (Admin, "{auditLog{edges{node{id}}}}".into())),
        ("Mutation.signUp", (Public, "mutation{signUp(email:\"bad\",password:\"x\"){id}}".into())),
        ("Mutation.login", (Public, "mutation{login(email:\"nobody@example.com\",password:\"wrong password!\"){accessToken}}".into())),
        ("Mutation.refreshToken", (Public, "mutation{refreshToken(token:\"nope\"){accessToken}}".into())),
        ("Mutation.logout", (SignedIn, "mutation{logout}".into())),
        ("Mutation.changePassword", (SignedIn, "mutation{changePassword(currentPassword:\"wrong password\",newPassword:\"x\")}".into())),
        ("Mutation.createUser", (Admin, "mutation{createUser(email:\"bad\",password:\"x\"){id}}".into())),
        ("Mutation.setUserPassword", (Admin, format!("mutation{{setUserPassword(id:\"{ID}\",password:\"x\"){{id}}}}"))),
        ("Mutation.setUserRole", (Admin, format!("mutation{{setUserRole(id:\"{ID}\",role:USER){{id}}}}"))),
        ("Mutation.setUserStatus", (Admin, format!("mutation{{setUserStatus(id:\"{ID}\",status:ACTIVE){{id}}}}"))),
        ("Mutation.createPlan", (Admin, "mutation{createPlan(input:{name:\"\",priceCents:\"-1\",durationDays:0,deviceLimit:0}){id}}".into())),
        ("Mutation.updatePlan", (Admin, format!("mutation{{updatePlan(id:\"{ID}\",input:{{}}){{id}}}}"))),
        ("Mutation.archivePlan", (Admin, format!("mutation{{archivePlan(id:\"{ID}\"){{id}}}}"))),
        ("Mutation.createRegion", (Admin, "mutation{createRegion(code:\"!!\",name:\"\"){id}}".into())),
        ("Mutation.grantSubscription", (Admin, format!("mutation{{grantSubscription(userId:\"{ID}\",planId:\"{ID}\"){{id}}}}"))),
        ("Mutation.extendSubscription", (Admin, format!("mutation{{extendSubscription(id:\"{ID}\",days:1){{id}}}}"))),
        ("Mutation.setSubscriptionTrafficLimit", (Admin, format!("mutation{{setSubscriptionTrafficLimit(id:\"{ID}\",trafficLimitBytes:\"1\"){{id}}}}"))),
        ("Mutation.resetSubscriptionTraffic", (Admin, format!("mutation{{resetSubscriptionTraffic(id:\"{ID}\"){{id}}}}"))),
        ("Mutation.changeSubscriptionPlan", (Admin, format!("mutation{{changeSubscriptionPlan(id:\"{ID}\",planId:\"{ID}\"){{id}}}}"))),
        ("Mutation.cancelSubscription", (Admin, format!("mutation{{cancelSubscription(id:\"{ID}\"){{id}}}}"))),
        ("Mutation.registerDevice", (SignedIn, "mutation{registerDevice(name:\"\",platform:\"\"){accessToken}}".into())),
        ("Mutation.revokeDevice", (SignedIn, format!("mutation{{revokeDevice(id:\"{ID}\"){{id}}}}"))),
        ("Mutation.renameDevice", (SignedIn, format!("mutation{{renameDevice(id:\"{ID}\",name:\"n\"){{id}}}}"))),
        ("Mutation.rotateDeviceToken", (SignedIn, format!("mutation{{rotateDeviceToken(id:\"{ID}\"){{accessToken}}}}"))),
        ("Mutation.registerOutlineNode", (Admin, "mutation{registerOutlineNode(input:{region:\"none\",name:\"n\",host:\"h\",port:1}){token}}".into())),
        ("Mutation.registerGatewayNode", (Admin, "mutation{registerGatewayNode(input:{region:\"none\",name:\"g\",publicUrl:\"https://g\"}){token}}".into())),
        ("Mutation.setNodeStatus", (Admin, format!("mutation{{setNodeStatus(id:\"{ID}\",status:DRAINING){{__typename}}}}"))),
        ("Mutation.deleteNode", (Admin, format!("mutation{{deleteNode(id:\"{ID}\")}}"))),
        ("Mutation.rotateNodeToken", (Admin, format!("mutation{{rotateNodeToken(id:\"{ID}\")}}"))),
        ("Mutation.rotateNodeEnrollment", (Admin, format!("mutation{{rotateNodeEnrollment(id:\"{ID}\"){{token}}}}"))),
        ("Mutation.updateOutlineNode", (Admin, format!("mutation{{updateOutlineNode(id:\"{ID}\",input:{{port:1}}){{id}}}}"))),
        ("Mutation.updateGatewayNode", (Admin, format!("mutation{{updateGatewayNode(id:\"{ID}\",input:{{name:\"x\"}}){{id}}}}"))),
        ("Mutation.renameRegion", (Admin, format!("mutation{{renameRegion(id:\"{ID}\",name:\"x\"){{id}}}}"))),
        ("Mutation.deleteRegion", (Admin, format!("mutation{{deleteRegion(id:\"{ID}\")}}"))),
        ("Mutation.closeSession", (Admin, format!("mutation{{closeSession(id:\"{ID}\"){{id}}}}"))),
        ("Query.settings", (Public, "{settings{signUpEnabled}}".into())),
        ("Mutation.updateSettings", (Admin, "mutation{updateSettings(input:{}){signUpEnabled}}".into())),
        ("Live.nodeEvents", (Live, String::new())),
        ("Live.sessionEvents", (Live, String::new())),
        ("Live.quotaEvents", (Live, String::new())),
        ("Live.myDeviceEvents", (Live, String::new())),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_walker_covers_every_root_field() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), true).await;
    let base = &server.base;
    let schema = gql(base, None, "{__schema{queryType{fields{name}} mutationType{fields{name}} subscriptionType{name fields{name}}}}", json!({})).await;
    let mut fields = Vec::new();
    for (root, key) in [
        ("Query", "queryType"),
        ("Mutation", "mutationType"),
        ("Live", "subscriptionType"),
    ] {
        for f in schema["data"]["__schema"][key]["fields"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}"))
        {
            fields.push(format!("{root}.{}", f["name"].as_str().expect("name")));
        }
    }
    let table = table();
    for f in &fields {
        assert!(
            table.contains_key(f.as_str()),
            "{f} has no entry in the authorization table"
        );
    }
    assert_eq!(
        fields.len(),
        table.len(),
        "the table names fields the schema no longer has"
    );
    // Logout last: it ends the session of the token that calls it.
    let mut order: Vec<_> = table
        .iter()
        .filter(|(_, (a, _))| *a != Access::Live)
        .collect();
    order.sort_by_key(|(name, _)| **name == "Mutation.logout");
    for (name, (access, query)) in order {
        let user = token_for(base, &server.state.db, Role::User).await;
        let admin = token_for(base, &server.state.db, Role::Admin).await;
        let mut public_codes = Vec::new();
        for (who, token) in [
            ("anonymous", None),
            ("user", Some(user.as_str())),
            ("admin", Some(admin.as_str())),
        ] {
            let r = gql(base, token, query, json!({})).await;
            let got = code(&r);
            if *access == Access::Public {
                // Public fields answer the same whoever calls.
                public_codes.push(got.map(str::to_owned));
                continue;
            }
            let expected = match (access, who) {
                (Access::SignedIn, "user" | "admin") | (Access::Admin, "admin") => None,
                (_, "anonymous") => Some("UNAUTHENTICATED"),
                _ => Some("FORBIDDEN"),
            };
            match expected {
                Some(c) => assert_eq!(got, Some(c), "{name} as {who}: {r}"),
                None => assert!(
                    !matches!(got, Some("UNAUTHENTICATED" | "FORBIDDEN")),
                    "{name} as {who} was refused: {r}"
                ),
            }
            assert!(
                r["errors"]
                    .as_array()
                    .is_none_or(|e| e.iter().all(|e| e["extensions"]["code"].is_string())),
                "{name}: untyped error {r}"
            );
        }
        assert!(
            public_codes.windows(2).all(|w| w[0] == w[1]),
            "{name}: public field depends on the caller: {public_codes:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_transport_rules_and_masking() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let url = server.url("/graphql");
    let post = |body: String, ctype: &'static str| {
        let url = url.clone();
        async move {
            client()
                .post(url)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .expect("send")
        }
    };
    // Aliases.
    let aliased: String = (0..31).map(|i| format!("a{i}: __typename ")).collect();
    let r: Value = post(
        json!({"query": format!("{{{aliased}}}")}).to_string(),
        "application/json",
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .expect("msg")
            .contains("aliases")
    );
    // Complexity.
    let wide = "plans{edges{node{id name priceCents currency durationDays}}} ".repeat(200);
    let r: Value = post(
        json!({"query": format!("{{{wide}}}")}).to_string(),
        "application/json",
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    // Batching.
    let res = post(
        json!([{"query": "{__typename}"}, {"query": "{__typename}"}]).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(res.status(), 400);
    let r: Value = res.json().await.expect("json");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(
        r["errors"][0].get("locations").is_none(),
        "a refusal of the request is at no place in a document: {r}"
    );
    // No query at all: refused like any request that is not one.
    for body in ["{}", r#"{"query":"  "}"#, r#"{"variables":{}}"#] {
        let res = post(body.to_owned(), "application/json").await;
        assert_eq!(res.status(), 400, "{body}");
        let r: Value = res.json().await.expect("json");
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    }
    // Body over 64 KiB: 413 before parsing.
    let res = post(
        format!(
            "{{\"query\":\"{{__typename}}\",\"x\":\"{}\"}}",
            "a".repeat(70_000)
        ),
        "application/json",
    )
    .await;
    assert_eq!(res.status(), 413);
    // The unread body ends the connection, and the answer says so.
    assert_eq!(
        res.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // Mutations only by POST JSON: text/plain and GET refused, nothing created.
    let signup =
        "mutation{signUp(email:\"sneaky@example.com\",password:\"long enough password\"){id}}";
    let res = post(json!({"query": signup}).to_string(), "text/plain").await;
    assert_eq!(res.status(), 400);
    let res = client()
        .get(server.url("/graphql"))
        .query(&[("query", signup)])
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 400);
    assert!(
        accounts::authenticate(
            &server.state.db,
            "sneaky@example.com",
            "long enough password"
        )
        .await
        .is_err(),
        "nothing was created"
    );
    // GET queries still work.
    let res = client()
        .get(server.url("/graphql"))
        .query(&[("query", "{__typename}")])
        .send()
        .await
        .expect("get");
    assert_eq!(
        res.json::<Value>().await.expect("json")["data"]["__typename"],
        "Query"
    );
    // Introspection and suggestions are off outside debug mode, and a
    // query that asks for it is told so (FORBIDDEN), through fragments
    // too: it was answered `null` for a non-null field, with no error.
    for query in [
        "{__schema{types{name}}}",
        "{__type(name:\"Device\"){name}}",
        "query{...on Query{__schema{queryType{name}}}}",
        "query{...f} fragment f on Query{__type(name:\"Query\"){name}}",
    ] {
        let r = gql(&server.base, None, query, json!({})).await;
        assert_eq!(code(&r), Some("FORBIDDEN"), "{query}: {r}");
        assert_eq!(
            r["errors"][0]["message"], "introspection is disabled on this server",
            "{r}"
        );
        assert!(
            !r.to_string().contains("\"Device\""),
            "introspection must be off: {r}"
        );
    }
    let r = gql(&server.base, None, "{mee{id}}", json!({})).await;
    assert!(
        !r.to_string().contains("Did you mean"),
        "suggestions must be off: {r}"
    );
    // Database errors never reach clients.
    let admin = token_for(&server.base, &server.state.db, Role::Admin).await;
    // Ids are UUIDs: anything else is a typed input error.
    let r = gql(
        &server.base,
        Some(&admin),
        "{user(id:\"1 OR 1=1\"){id}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        &server.base,
        None,
        "mutation{signUp(email:\"dup@example.com\",password:\"long enough password\"){id}}",
        json!({}),
    )
    .await;
    assert!(r["data"]["signUp"]["id"].is_string());
    let r = gql(
        &server.base,
        None,
        "mutation{signUp(email:\"DUP@example.com\",password:\"long enough password\"){id}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("CONFLICT"));
    assert!(
        !r.to_string().to_lowercase().contains("duplicate key"),
        "{r}"
    );
    {
        use diesel_async::RunQueryDsl;
        let httvps_control::db::DbPool::Pg(pool) = &server.state.db.pool else {
            panic!("pg")
        };
        let mut conn = pool.get().await.expect("conn");
        diesel::sql_query("DROP TABLE audit_log")
            .execute(&mut *conn)
            .await
            .expect("drop");
    }
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation{createRegion(code:\"x1\",name:\"X\"){id}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("INTERNAL"), "{r}");
    assert_eq!(r["errors"][0]["message"], "internal error");
    assert!(r["errors"][0]["extensions"]["requestId"].is_string());
    assert!(
        !r.to_string().contains("audit_log"),
        "database text leaked: {r}"
    );
    // The failed transaction left nothing behind.
    let r = gql(
        &server.base,
        Some(&admin),
        "{regions{edges{node{code}}}}",
        json!({}),
    )
    .await;
    assert_eq!(
        r["data"]["regions"]["edges"].as_array().map(Vec::len),
        Some(0),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn depth_limit_applies() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), true).await;
    let deep = "{__schema{types{fields{type{ofType{ofType{ofType{ofType{ofType{ofType{ofType{ofType{ofType{name}}}}}}}}}}}}}}";
    let r = gql(&server.base, None, deep, json!({})).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(r.to_string().to_lowercase().contains("nested"), "{r}");
    server.stop().await;
}

/// `n` fragments, each spreading the next twice: under 1 KB, about 2^n
/// selections once spread.
fn fragment_bomb(n: usize) -> String {
    let mut q = String::from("query{...F0} ");
    for i in 0..n {
        q.push_str(&format!(
            "fragment F{i} on Query{{...F{} ...F{}}} ",
            i + 1,
            i + 1
        ));
    }
    q.push_str(&format!("fragment F{n} on Query{{__typename}}"));
    q
}

/// A document whose fragments double at every level is refused at once
/// (BAD_REQUEST) over POST, GET and the WebSocket, anonymously; the
/// engine's validation walked every spread (2^23 visits for 23 levels),
/// holding a worker, and the health route with it, for 24 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_document_whose_fragments_multiply_is_refused_at_once() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let bomb = fragment_bomb(30);
    assert!(bomb.len() < 2048);
    let started = std::time::Instant::now();
    let r = gql(&server.base, None, &bomb, json!({})).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(r.to_string().contains("selections"), "{r}");
    let r = gql_get(&server.base, bomb.as_str()).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
    ws.send(ws_op("graphql-transport-ws", "bomb", &bomb, json!({})))
        .await
        .expect("send");
    let r = ws_next(&mut ws).await;
    assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A document with a few fragments spread a few times still runs.
    let r = gql(&server.base, None, &fragment_bomb(4), json!({})).await;
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
    server.stop().await;
}

/// Values nested thousands deep (4 KB, no credentials) overflowed a
/// worker's stack and aborted the whole process, over POST, GET and the
/// WebSocket alike. They are refused on the document's text, and the
/// server answers on.
#[tokio::test(flavor = "multi_thread")]
async fn values_nested_thousands_deep_are_refused_and_the_server_lives() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let n = 3_000;
    let (open, close) = ("[".repeat(n), "]".repeat(n));
    let documents = [
        format!("{{settings(x:{open}1{close}){{signUpEnabled}}}}"),
        format!(
            "{{settings(x:{}1{}){{signUpEnabled}}}}",
            "{a:".repeat(n),
            "}".repeat(n)
        ),
        format!("query($v:Int={open}1{close}){{settings{{signUpEnabled}}}}"),
    ];
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
    for (i, doc) in documents.iter().enumerate() {
        let r = gql(&server.base, None, doc, json!({})).await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
        assert!(r.to_string().contains("deep"), "{r}");
        ws.send(ws_op(
            "graphql-transport-ws",
            &format!("deep{i}"),
            doc,
            json!({}),
        ))
        .await
        .expect("send");
        let r = ws_next(&mut ws).await;
        assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{r}");
    }
    // GET reads a document to tell a query from a mutation: measured
    // before that (1,000 levels, as long as a request target may be).
    let n = 1_000;
    let doc = format!(
        "query($v:Int={}1{}){{settings{{signUpEnabled}}}}",
        "[".repeat(n),
        "]".repeat(n)
    );
    let r = gql_get(&server.base, doc.as_str()).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(r.to_string().contains("deep"), "{r}");
    let r = gql(&server.base, None, "{settings{signUpEnabled}}", json!({})).await;
    assert!(r["data"]["settings"]["signUpEnabled"].is_boolean(), "{r}");
    server.stop().await;
}

/// Answers keep the order their fields were asked in. The engine keeps
/// an object's fields in the order they finish: on PostgreSQL the root
/// fields of one query came back in three orders in six requests. Over
/// the WebSocket every answer was rewritten through a sorted map.
#[tokio::test(flavor = "multi_thread")]
async fn answers_keep_the_order_fields_were_asked_in() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let query = "{z: settings {signUpEnabled} a: settings {signUpEnabled} \
                 m: settings {y: signUpEnabled b: signUpEnabled}}";
    for _ in 0..12 {
        let text = client()
            .post(format!("{}/graphql", server.base))
            .json(&json!({"query": query}))
            .send()
            .await
            .expect("POST")
            .text()
            .await
            .expect("body");
        assert!(
            text.starts_with(r#"{"data":{"z":{"signUpEnabled":true},"a":{"#)
                && text.contains(r#""m":{"y":true,"b":true}"#),
            "{text}"
        );
    }
    // Over the WebSocket too, on both protocols.
    let query = "{z: settings {z: signUpEnabled a: signUpEnabled} a: settings {signUpEnabled}}";
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&server.base, protocol).await;
        assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
        for i in 0..5 {
            ws.send(ws_op(protocol, &format!("q{i}"), query, json!({})))
                .await
                .expect("send");
            let text = loop {
                let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
                    .await
                    .expect("in time")
                    .expect("open")
                    .expect("frame");
                if let Message::Text(t) = msg
                    && (t.contains(r#""next""#) || t.contains(r#""data""#))
                {
                    break t.to_string();
                }
            };
            assert!(
                text.contains(r#"{"z":{"z":true,"a":true},"a":{"signUpEnabled":true}}"#),
                "{protocol}: {text}"
            );
        }
    }
    server.stop().await;
}

/// A document made of mistakes gets an answer about its own size: too
/// many argument values or variables are refused whole, and the errors
/// listed stop at 50 (then one saying how many more), so an anonymous 64 KB
/// question cannot come back as megabytes.
#[tokio::test(flavor = "multi_thread")]
async fn many_mistakes_get_a_short_answer() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let post = |q: String| {
        let url = format!("{}/graphql", server.base);
        async move {
            let res = common::client()
                .post(url)
                .json(&json!({ "query": q }))
                .send()
                .await
                .expect("POST");
            let body = res.bytes().await.expect("body");
            (
                body.len(),
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };
    let args = vec!["a:1"; 12_000].join(",");
    let (len, r) = post(format!("{{settings({args}){{signUpEnabled}}}}")).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(len < 1_000, "{len} bytes");
    let vars = vec!["$a:Int"; 8_000].join(",");
    let (len, r) = post(format!("query({vars}){{__typename}}")).await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(len < 1_000, "{len} bytes");
    // Within the bounds, 900 unknown (and repeated) arguments: 50 errors
    // and a count of the rest.
    let args = vec!["a:1"; 900].join(",");
    let (len, r) = post(format!("{{settings({args}){{signUpEnabled}}}}")).await;
    let errors = r["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 51, "{len} bytes");
    assert!(
        errors[50]["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("more errors left out"),
        "{}",
        errors[50]
    );
    assert!(len < 30_000, "{len} bytes");
    // The same over the WebSocket.
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
    ws.send(ws_op(
        "graphql-transport-ws",
        "many",
        &format!("{{settings({args}){{signUpEnabled}}}}"),
        json!({}),
    ))
    .await
    .expect("send");
    let r = ws_next(&mut ws).await;
    let errors = r["payload"]
        .as_array()
        .or_else(|| r["payload"]["errors"].as_array())
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(errors.len(), 51, "{r}");
    // A compressed body is not read as if it were plain.
    let res = common::client()
        .post(format!("{}/graphql", server.base))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(json!({"query": "{__typename}"}).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 400);
    let r: Value = res.json().await.expect("json");
    assert!(r.to_string().contains("Content-Encoding"), "{r}");
    server.stop().await;
}

/// GET `/graphql` reads its parameters as POST reads its body: variables
/// that are JSON but not an object (an array, a number, a string) are
/// refused (they were ignored: the query ran without them), `null` or an
/// empty value means none, and a parameter given twice is named as such
/// (it was "needs a query parameter"). A console file's path that is not
/// UTF-8 once decoded is a 404 in the JSON envelope (it was plain text
/// 400); a route's gets the page.
#[tokio::test(flavor = "multi_thread")]
async fn get_parameters_are_read_as_post_reads_its_body() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let get = |query: &str| {
        let url = format!("{}{query}", server.base);
        async move {
            let res = common::client().get(url).send().await.expect("GET");
            let status = res.status().as_u16();
            let content_type = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, content_type, body)
        }
    };
    let q = "/graphql?query=%7Bsettings%7BsignUpEnabled%7D%7D";
    for vars in ["%5B1%5D", "5", "%22x%22", "%7B", "true"] {
        let (status, _, r) = get(&format!("{q}&variables={vars}")).await;
        assert_eq!(status, 400, "variables={vars}: {r}");
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
        let said = r["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(said.starts_with("variables must be a JSON object"), "{r}");
    }
    // Nested past what is read, they say so (as POST does).
    let deep = format!("{}{}", "%5B".repeat(200), "%5D".repeat(200));
    let (status, _, r) = get(&format!("{q}&variables={deep}")).await;
    assert_eq!(status, 400, "{r}");
    assert!(r.to_string().contains("recursion limit"), "{r}");
    for vars in ["null", "", "%7B%7D"] {
        let (status, _, r) = get(&format!("{q}&variables={vars}")).await;
        assert_eq!(status, 200, "variables={vars}: {r}");
        assert!(r["data"]["settings"].is_object(), "{r}");
    }
    let (status, _, r) = get(&format!("{q}&query=x")).await;
    assert_eq!(status, 400, "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than once"),
        "{r}"
    );
    let (status, _, r) = get("/graphql?operationName=x").await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(
        r["errors"][0]["message"],
        "GET /graphql needs a query parameter"
    );
    // One of the page's routes gets the page, as any other does (its
    // router says what is not found).
    for path in [
        "/console/%ff",
        "/console/users/%FF",
        "/console/users/%E0%A4%A",
    ] {
        let (status, content_type, _) = get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
    }
    for path in [
        "/console/assets/%ff.js",
        "/console/assets/missing.js",
        "/console/x/%ff.png",
    ] {
        let (status, content_type, r) = get(path).await;
        assert_eq!(status, 404, "{path}: {r}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        assert_eq!(r["error"]["code"], "NOT_FOUND", "{path}: {r}");
    }
    server.stop().await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(base: &str, protocol: &str) -> Ws {
    let mut req = format!("{}/graphql/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect")
        .0
}

async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("message in time")
            .expect("open")
            .expect("frame");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "ka" || v["type"] == "ping" {
                    continue;
                }
                return v;
            }
            Message::Close(c) => {
                return json!({"type": "close", "code": c.map(|c| u16::from(c.code))});
            }
            _ => continue,
        }
    }
}

async fn ws_init(ws: &mut Ws, payload: Value) -> Value {
    ws.send(Message::Text(
        json!({"type": "connection_init", "payload": payload})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    ws_next(ws).await
}

#[tokio::test(flavor = "multi_thread")]
async fn node_events_reach_subscribers_on_another_replica() {
    let t = TestDb::pg().await;
    let start = || {
        let mut cmd = httvps_cmd();
        cmd.args(["serve", "--port", "0"])
            .env("BACKEND_DB_DSN", t.url())
            .env("BACKEND_SECRET_KEY", common::TEST_SECRET);
        spawn_listening(cmd)
    };
    let a = start();
    let b = start();
    let (a_base, b_base) = (
        format!("http://{}", a.addr.expect("a up")),
        format!("http://{}", b.addr.expect("b up")),
    );
    let db = t.pool();
    let admin = token_for(&b_base, &db, Role::Admin).await;
    let user = token_for(&a_base, &db, Role::User).await;
    // A user on replica A follows region r1.
    let mut ws = ws_connect(&a_base, "graphql-transport-ws").await;
    assert_eq!(
        ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await["type"],
        "connection_ack"
    );
    // A region filter is checked as a region's code: one that cannot be
    // is refused with its reason (a well-formed one no region has yet
    // matches nothing until one does).
    let long = "x".repeat(5000);
    ws.send(Message::Text(json!({"id": "0", "type": "subscribe", "payload": {"query": format!("subscription{{nodeEvents(region:\"{long}\"){{nodeId}}}}")}}).to_string().into())).await.expect("send");
    let refused = ws_next(&mut ws).await;
    let errors = match refused["type"].as_str() {
        Some("error") => refused["payload"].clone(),
        _ => refused["payload"]["errors"].clone(),
    };
    assert_eq!(errors[0]["extensions"]["code"], "BAD_REQUEST", "{refused}");
    if refused["type"] == "next" {
        let done = ws_next(&mut ws).await;
        assert_eq!(
            (&done["id"], &done["type"]),
            (&json!("0"), &json!("complete")),
            "{done}"
        );
    }
    ws.send(Message::Text(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription{nodeEvents(region:\"r1\"){nodeId kind region status health}}"}}).to_string().into())).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The admin works on replica B.
    gql(&b_base, Some(&admin), "mutation{createRegion(code:\"r1\",name:\"R1\"){id} r2:createRegion(code:\"r2\",name:\"R2\"){id}}", json!({})).await;
    gql(&b_base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"r2\",name:\"other\",host:\"10.0.0.9\",port:8388}){token}}", json!({})).await;
    let r = gql(&b_base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"r1\",name:\"n1\",host:\"10.0.0.5\",port:8388}){node{id}}}", json!({})).await;
    let node_id = r["data"]["registerOutlineNode"]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    gql(
        &b_base,
        Some(&admin),
        "mutation($id:UUID!){setNodeStatus(id:$id,status:DRAINING){__typename}}",
        json!({"id": node_id}),
    )
    .await;
    let first = ws_next(&mut ws).await;
    assert_eq!(first["type"], "next", "{first}");
    assert_eq!(
        first["payload"]["data"]["nodeEvents"]["nodeId"],
        node_id.as_str(),
        "region r2's node is filtered out: {first}"
    );
    assert_eq!(first["payload"]["data"]["nodeEvents"]["kind"], "REGISTERED");
    let second = ws_next(&mut ws).await;
    assert_eq!(
        second["payload"]["data"]["nodeEvents"]["kind"], "DRAINING",
        "{second}"
    );
    assert_eq!(
        second["payload"]["data"]["nodeEvents"]["status"],
        "draining"
    );
    // The status it has already: answered, not audited, no event (the
    // next event is the next real change's).
    let status = "mutation($id:UUID!,$s:NodeStatus!){setNodeStatus(id:$id,status:$s){... on OutlineNode{status}}}";
    let r = gql(
        &b_base,
        Some(&admin),
        status,
        json!({"id": node_id, "s": "DRAINING"}),
    )
    .await;
    assert_eq!(r["data"]["setNodeStatus"]["status"], "DRAINING", "{r}");
    let r = gql(
        &b_base,
        Some(&admin),
        status,
        json!({"id": node_id, "s": "ACTIVE"}),
    )
    .await;
    assert_eq!(r["data"]["setNodeStatus"]["status"], "ACTIVE", "{r}");
    let third = ws_next(&mut ws).await;
    assert_eq!(
        third["payload"]["data"]["nodeEvents"]["kind"], "ACTIVE",
        "{third}"
    );
    let r = gql(
        &b_base,
        Some(&admin),
        "{auditLog(first:10,filter:{action:\"set_node_status\"}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["auditLog"]["totalCount"], 2, "{r}");
    drop(a);
    drop(b);
}

/// A burst of messages larger than the engine's input queue, sent without
/// waiting, is all taken: the socket neither wedges nor drops any (a full
/// queue once stopped the engine that drains it, and the socket with it).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_takes_a_burst_longer_than_its_queue() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(
        ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await["type"],
        "connection_ack"
    );
    let mut burst = Vec::new();
    for i in 0..150 {
        let id = format!("b{i}");
        burst.push(json!({"id": id, "type": "subscribe", "payload": {"query": "subscription{nodeEvents{nodeId}}"}}));
        burst.push(json!({"id": id, "type": "complete"}));
    }
    burst.push(json!({"id": "last", "type": "subscribe", "payload": {"query": "{__typename}"}}));
    for m in burst {
        ws.feed(Message::Text(m.to_string().into()))
            .await
            .expect("feed");
    }
    ws.flush().await.expect("send");
    loop {
        let r = ws_next(&mut ws).await;
        if r["id"] == "last" {
            assert_eq!(r["type"], "next", "{r}");
            assert_eq!(r["payload"]["data"]["__typename"], "Query", "{r}");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_auth_init_deadline_and_subscription_cap() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    // Bad credentials in connection_init: refused.
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    let r = ws_init(&mut ws, json!({"Authorization": "Bearer forged"})).await;
    assert_eq!(r["type"], "close", "{r}");
    assert_eq!(r["code"], 4403, "graphql-transport-ws says 4403: {r}");
    // Anonymous sockets may connect but not subscribe.
    let mut ws = ws_connect(&server.base, "graphql-ws").await;
    assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
    ws.send(Message::Text(json!({"id": "1", "type": "start", "payload": {"query": "subscription{nodeEvents{nodeId}}"}}).to_string().into())).await.expect("send");
    let r = ws_next(&mut ws).await;
    assert!(r.to_string().contains("UNAUTHENTICATED"), "{r}");
    // At most 20 subscriptions per socket.
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(
        ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await["type"],
        "connection_ack"
    );
    for i in 0..21 {
        ws.send(Message::Text(json!({"id": format!("s{i}"), "type": "subscribe", "payload": {"query": "subscription{nodeEvents{nodeId}}"}}).to_string().into())).await.expect("send");
    }
    let r = ws_next(&mut ws).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["id"], "s20");
    assert!(r.to_string().contains("LIMIT_EXCEEDED"));
    // No connection_init within 10 s: closed.
    let mut idle = ws_connect(&server.base, "graphql-transport-ws").await;
    let started = std::time::Instant::now();
    let r = ws_next(&mut idle).await;
    assert_eq!(r["type"], "close", "{r}");
    assert_eq!(r["code"], 4408);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "{waited:?}"
    );
    server.stop().await;
}

fn ws_op(protocol: &str, id: &str, query: &str, variables: Value) -> Message {
    let kind = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    Message::Text(
        json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}})
            .to_string()
            .into(),
    )
}

/// The first error code of a WebSocket answer, whichever protocol framed it.
fn ws_code(r: &Value) -> Option<&str> {
    let p = &r["payload"];
    p[0]["extensions"]["code"]
        .as_str()
        .or_else(|| p["extensions"]["code"].as_str())
        .or_else(|| p["errors"][0]["extensions"]["code"].as_str())
}

/// The limits of HTTP hold on both WebSocket protocols: aliases, depth, and
/// a 500-alias login mutation is refused without running (the account's
/// log-in allowance is untouched afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_applies_the_http_limits_on_both_protocols() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let email = format!("ws-{}@example.com", uuid::Uuid::new_v4().simple());
    accounts::create_user(&server.state.db, &email, PASSWORD, Role::User)
        .await
        .expect("user");
    let aliases: Vec<String> = (0..300).map(|i| format!("a{i}: __typename")).collect();
    let wide = format!("{{{}}}", aliases.join(" "));
    let deep =
        "{me{devices{edges{node{user{devices{edges{node{user{devices{edges{node{id}}}}}}}}}}}}}";
    let logins: Vec<String> = (0..500)
        .map(|i| format!("l{i}: login(email:$e,password:$p){{accessToken}}"))
        .collect();
    let mass_login = format!("mutation($e:String!,$p:String!){{{}}}", logins.join(" "));
    assert!(mass_login.len() > 20_000 && mass_login.len() < 64 * 1024);
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&server.base, protocol).await;
        assert_eq!(ws_init(&mut ws, json!({})).await["type"], "connection_ack");
        ws.send(ws_op(protocol, "wide", &wide, json!({})))
            .await
            .expect("send");
        let r = ws_next(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str()),
            (Some("error"), Some("wide")),
            "{protocol}: {r}"
        );
        assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{protocol}: {r}");
        assert!(r.to_string().contains("aliases"), "{r}");
        ws.send(ws_op(protocol, "deep", deep, json!({})))
            .await
            .expect("send");
        let r = ws_next(&mut ws).await;
        assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{protocol}: {r}");
        assert!(
            r.to_string().to_lowercase().contains("nested"),
            "{protocol}: {r}"
        );
        let r = ws_next(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str()),
            (Some("complete"), Some("deep")),
            "{r}"
        );
        let started = std::time::Instant::now();
        ws.send(ws_op(
            protocol,
            "logins",
            &mass_login,
            json!({"e": email, "p": "wrong password"}),
        ))
        .await
        .expect("send");
        let r = ws_next(&mut ws).await;
        assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{protocol}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Still a working socket: a plain query runs.
        ws.send(ws_op(protocol, "ok", "{__typename}", json!({})))
            .await
            .expect("send");
        let r = ws_next(&mut ws).await;
        assert_eq!(
            r["payload"]["data"]["__typename"], "Query",
            "{protocol}: {r}"
        );
    }
    // None of the 1,000 logins ran: the account's allowance is whole.
    let r = gql(
        &server.base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    assert!(r["data"]["login"]["accessToken"].is_string(), "{r}");
    server.stop().await;
}

/// graphql-transport-ws: a subscribe reusing an id in use closes 4409.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_reused_subscription_id_closes_4409() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    let r = ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await;
    assert_eq!(r["type"], "connection_ack", "{r}");
    for _ in 0..2 {
        ws.send(ws_op(
            "graphql-transport-ws",
            "same",
            "subscription{nodeEvents{nodeId}}",
            json!({}),
        ))
        .await
        .expect("send");
    }
    closes_with(&mut ws, 4409).await;
    server.stop().await;
}

/// Operation ids are bounded: one past 64 bytes closes a
/// graphql-transport-ws socket 4400 and is refused with BAD_REQUEST on the
/// legacy protocol (whose socket stays open); an id of 64 bytes, of
/// multi-byte characters, runs, and reused it closes 4409 with a reason a
/// close frame can hold (a longer one made the close unreadable).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_operation_ids_are_bounded() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let auth = json!({"Authorization": format!("Bearer {user}")});
    let long = "i".repeat(65);
    let query = "subscription{nodeEvents{nodeId}}";

    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(
        ws_init(&mut ws, auth.clone()).await["type"],
        "connection_ack"
    );
    ws.send(ws_op("graphql-transport-ws", &long, query, json!({})))
        .await
        .expect("send");
    closes_with(&mut ws, 4400).await;

    let mut ws = ws_connect(&server.base, "graphql-ws").await;
    assert_eq!(
        ws_init(&mut ws, auth.clone()).await["type"],
        "connection_ack"
    );
    ws.send(ws_op("graphql-ws", &long, query, json!({})))
        .await
        .expect("send");
    let r = ws_next(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), ws_code(&r)),
        (Some("error"), Some("BAD_REQUEST")),
        "{r}"
    );
    ws.send(ws_op("graphql-ws", "1", "{me{email}}", json!({})))
        .await
        .expect("send");
    let r = ws_next(&mut ws).await;
    assert!(r["payload"]["data"]["me"]["email"].is_string(), "{r}");

    // 32 two-byte characters: 64 bytes.
    let widest = "é".repeat(32);
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    assert_eq!(ws_init(&mut ws, auth).await["type"], "connection_ack");
    for _ in 0..2 {
        ws.send(ws_op("graphql-transport-ws", &widest, query, json!({})))
            .await
            .expect("send");
    }
    closes_with(&mut ws, 4409).await;
    server.stop().await;
}

/// Asserts the socket's next message is its close with `code`.
async fn closes_with(ws: &mut Ws, code: u64) {
    let r = ws_next(ws).await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_u64()),
        (Some("close"), Some(code)),
        "{r}"
    );
}

/// graphql-transport-ws: a `subscribe` before `connection_init` closes
/// 4401, and a message that is not one of the protocol's, or cannot be
/// read as its type, 4400 (before or after the handshake).
#[tokio::test(flavor = "multi_thread")]
async fn websocket_protocol_breaches_close_with_the_protocols_codes() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    ws.send(ws_op(
        "graphql-transport-ws",
        "early",
        "subscription{nodeEvents{nodeId}}",
        json!({}),
    ))
    .await
    .expect("send");
    closes_with(&mut ws, 4401).await;
    // The last two are of the protocol's types but cannot be read as them:
    // before the ack too they close 4400, not 4403 (a refused init).
    for breach in [
        "not json",
        r#"{"type":"whatever"}"#,
        r#"{"id":"1"}"#,
        r#"{"type":"complete"}"#,
        r#"{"type":"complete","id":7}"#,
    ] {
        for init in [false, true] {
            let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
            if init {
                let r = ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await;
                assert_eq!(r["type"], "connection_ack", "{r}");
            }
            ws.send(Message::Text(breach.into())).await.expect("send");
            closes_with(&mut ws, 4400).await;
        }
    }
    // A connection_init whose payload is not an object cannot be read as
    // one (4400); one whose credential is not a string is refused (4403),
    // not taken as anonymous.
    for (payload, code) in [
        (json!("Bearer x"), 4400),
        (json!([1, 2]), 4400),
        (json!(5), 4400),
        (json!({"Authorization": 5}), 4403),
        (json!({"token": {"a": 1}}), 4403),
        (json!({"deviceToken": ["x"]}), 4403),
        // Two credentials: which would the socket act as?
        (
            json!({"Authorization": format!("Bearer {user}"), "deviceToken": "x"}),
            4403,
        ),
    ] {
        let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
        ws.send(Message::Text(
            json!({"type": "connection_init", "payload": payload})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
        closes_with(&mut ws, code).await;
    }
    // A subscription of two root fields is refused for its id; the socket
    // goes on.
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    let r = ws_init(&mut ws, json!({"Authorization": format!("Bearer {user}")})).await;
    assert_eq!(r["type"], "connection_ack", "{r}");
    ws.send(ws_op(
        "graphql-transport-ws",
        "two",
        "subscription{nodeEvents{kind} quotaEvents{kind}}",
        json!({}),
    ))
    .await
    .expect("send");
    let r = ws_next(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_str(), ws_code(&r)),
        (Some("error"), Some("two"), Some("BAD_REQUEST")),
        "{r}"
    );
    ws.send(ws_op(
        "graphql-transport-ws",
        "ok",
        "{__typename}",
        json!({}),
    ))
    .await
    .expect("send");
    let r = ws_next(&mut ws).await;
    assert_eq!(r["payload"]["data"]["__typename"], "Query", "{r}");
    // The legacy protocol: a start before connection_init is a protocol
    // error (1002), not an internal one (1011).
    let mut ws = ws_connect(&server.base, "graphql-ws").await;
    ws.send(ws_op(
        "graphql-ws",
        "early",
        "subscription{nodeEvents{kind}}",
        json!({}),
    ))
    .await
    .expect("send");
    closes_with(&mut ws, 1002).await;
    // The legacy protocol: a message of no type it knows closes 1002, with
    // the engine's reason cut to a Close frame's 123 bytes (its 161 made
    // clients fail the connection instead of reading the code).
    let mut ws = ws_connect(&server.base, "graphql-ws").await;
    for m in [json!({"type": "connection_init"}), json!({"type": "nope"})] {
        ws.send(Message::Text(m.to_string().into()))
            .await
            .expect("send");
    }
    assert_eq!(ws_next(&mut ws).await["type"], "connection_ack");
    closes_with(&mut ws, 1002).await;
    // The legacy protocol: a payload that is no object is refused with
    // connection_error, not acknowledged as anonymous.
    let mut ws = ws_connect(&server.base, "graphql-ws").await;
    ws.send(Message::Text(
        json!({"type": "connection_init", "payload": "x"})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    let r = ws_next(&mut ws).await;
    assert_ne!(r["type"], "connection_ack", "{r}");
    // A text frame that is not UTF-8 closes 1007 (RFC 6455), on both.
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let mut ws = ws_connect(&server.base, protocol).await;
        let bad = Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true);
        ws.send(Message::Frame(bad)).await.expect("send");
        closes_with(&mut ws, 1007).await;
    }
    // A message over 64 KiB (HTTP's body limit) closes 1009 (RFC 6455's
    // "message too big"), on both.
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&server.base, protocol).await;
        let r = ws_init(&mut ws, json!({})).await;
        assert_eq!(r["type"], "connection_ack", "{r}");
        let big = format!("{{__typename{}}}", " ".repeat(65 * 1024));
        ws.send(ws_op(protocol, "big", &big, json!({})))
            .await
            .expect("send");
        closes_with(&mut ws, 1009).await;
    }
    // An operation refused before the ack (sent right behind the init,
    // without waiting) is answered after it: the ack comes first, on both.
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&server.base, protocol).await;
        let init = json!({"type": "connection_init", "payload": {}});
        ws.send(Message::Text(init.to_string().into()))
            .await
            .expect("send");
        let aliases: String = (0..31).map(|i| format!("a{i}:__typename ")).collect();
        ws.send(ws_op(
            protocol,
            "early",
            &format!("{{{aliases}}}"),
            json!({}),
        ))
        .await
        .expect("send");
        let first = ws_next(&mut ws).await;
        assert_eq!(first["type"], "connection_ack", "{protocol}: {first}");
        let r = ws_next(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str(), ws_code(&r)),
            (Some("error"), Some("early"), Some("BAD_REQUEST")),
            "{protocol}: {r}"
        );
    }
    // Over HTTP an empty array is a batch too.
    let res = common::client()
        .post(format!("{}/graphql", server.base))
        .header("content-type", "application/json")
        .body("  []")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 400);
    let r: Value = res.json().await.expect("json");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    // JSON is UTF-8, in a member the request does not read too.
    let res = common::client()
        .post(format!("{}/graphql", server.base))
        .header("content-type", "application/json")
        .body(&b"{\"query\":\"{settings{signUpEnabled}}\",\"x\":\"\xff\xfe\"}"[..])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 400);
    let r: Value = res.json().await.expect("json");
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(r.to_string().contains("not UTF-8"), "{r}");
    server.stop().await;
}

/// A signed-in socket following `nodeEvents`, and the user's token.
async fn live_socket(server: &TestServer, token: &str) -> Ws {
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    let r = ws_init(&mut ws, json!({"Authorization": format!("Bearer {token}")})).await;
    assert_eq!(r["type"], "connection_ack", "{r}");
    ws.send(ws_op(
        "graphql-transport-ws",
        "live",
        "subscription{nodeEvents{nodeId}}",
        json!({}),
    ))
    .await
    .expect("send");
    ws
}

/// Waits (at most 5 s) for the socket to close; returns the close code.
async fn closes_within_5s(ws: &mut Ws) -> Value {
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), ws_next(ws))
        .await
        .expect("the socket ends within 5 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    r
}

/// Logging out, changing the password and being disabled each end the
/// account's live sockets within 5 s (close 4403); other accounts' stay.
async fn live_sockets_end_with_their_credential(server: &TestServer) {
    let db = &server.state.db;
    let admin = token_for(&server.base, db, Role::Admin).await;
    let bystander = token_for(&server.base, db, Role::User).await;
    let mut other = live_socket(server, &bystander).await;

    let user = token_for(&server.base, db, Role::User).await;
    let mut ws = live_socket(server, &user).await;
    let r = gql(&server.base, Some(&user), "mutation{logout}", json!({})).await;
    assert_eq!(r["data"]["logout"], true, "{r}");
    let r = closes_within_5s(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_u64()),
        (Some("close"), Some(4403)),
        "logout: {r}"
    );

    let user = token_for(&server.base, db, Role::User).await;
    let mut ws = live_socket(server, &user).await;
    let r = gql(
        &server.base,
        Some(&user),
        "mutation($c:String!,$n:String!){changePassword(currentPassword:$c,newPassword:$n)}",
        json!({"c": PASSWORD, "n": "another long password"}),
    )
    .await;
    assert_eq!(r["data"]["changePassword"], true, "{r}");
    let r = closes_within_5s(&mut ws).await;
    assert_eq!(r["code"], 4403, "password change: {r}");

    let user = token_for(&server.base, db, Role::User).await;
    let me = gql(&server.base, Some(&user), "{me{id}}", json!({})).await;
    let id = me["data"]["me"]["id"].as_str().expect("id").to_owned();
    let mut ws = live_socket(server, &user).await;
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation($id:UUID!){setUserStatus(id:$id,status:DISABLED){status}}",
        json!({"id": id}),
    )
    .await;
    assert_eq!(r["data"]["setUserStatus"]["status"], "DISABLED", "{r}");
    let r = closes_within_5s(&mut ws).await;
    assert_eq!(r["code"], 4403, "disabled: {r}");

    // The bystander's socket still works.
    other
        .send(ws_op(
            "graphql-transport-ws",
            "q",
            "{__typename}",
            json!({}),
        ))
        .await
        .expect("send");
    let r = ws_next(&mut other).await;
    assert_eq!(r["payload"]["data"]["__typename"], "Query", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_sockets_end_with_their_credential_postgres() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    live_sockets_end_with_their_credential(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_sockets_end_with_their_credential_sqlite() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    live_sockets_end_with_their_credential(&server).await;
    server.stop().await;
}

/// A socket signed in with an access token closes 4403 when it expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_socket_ends_when_its_token_expires() {
    use base64::Engine;
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let payload = user.split('.').nth(1).expect("claims");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("json");
    // The same account and log-in, with a 3-second lifetime.
    let short = httvps_control::auth::jwt::JwtKeys::new(
        &httvps_control::config::SecretKey::new(common::TEST_SECRET.into()),
        jsonwebtoken::Algorithm::HS256,
        3,
    )
    .issue_in_family(
        httvps_control::auth::jwt::Audience::Access,
        claims["sub"].as_str().expect("sub"),
        claims["ver"].as_i64().expect("ver"),
        claims["role"].as_str(),
        3,
        claims["fam"].as_str(),
    )
    .expect("jwt");
    let started = std::time::Instant::now();
    let mut ws = live_socket(&server, &short).await;
    let r = tokio::time::timeout(Duration::from_secs(9), ws_next(&mut ws))
        .await
        .expect("closed in time");
    assert_eq!(r["code"], 4403, "{r}");
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(8),
        "{lived:?}"
    );
    server.stop().await;
}

/// Waits (at most 5 s) for the socket to end, skipping what it sends
/// before: the close code, `None` when it ended without one (the
/// connection dropped).
async fn ends_within_5s(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the socket ends within 5 s")
        {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
        }
    }
}

/// The answer to operation `id`: the first message for it other than
/// `complete` (other operations' messages are skipped).
async fn ws_answer(ws: &mut Ws, id: &str) -> Value {
    loop {
        let r = ws_next(ws).await;
        if r["type"] == "close" || (r["id"] == id && r["type"] != "complete") {
            return r;
        }
    }
}

/// A device's socket (signed in with `deviceToken`) following `nodeEvents`.
async fn device_socket(server: &TestServer, device_token: &str) -> Ws {
    let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
    let r = ws_init(&mut ws, json!({"deviceToken": device_token})).await;
    assert_eq!(r["type"], "connection_ack", "{r}");
    ws.send(ws_op(
        "graphql-transport-ws",
        "live",
        "subscription{nodeEvents{nodeId kind}}",
        json!({}),
    ))
    .await
    .expect("send");
    ws
}

/// Changes `node`'s status until `ws` delivers the event (its subscription
/// may start after the first change): at most 20 rounds of 500 ms.
async fn delivers_node_events(server: &TestServer, admin: &str, node: &str, ws: &mut Ws) {
    for round in 0..20 {
        let status = if round % 2 == 0 { "DRAINING" } else { "ACTIVE" };
        let r = gql(
            &server.base,
            Some(admin),
            "mutation($id:UUID!,$s:NodeStatus!){setNodeStatus(id:$id,status:$s){__typename}}",
            json!({"id": node, "s": status}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), ws_answer(ws, "live")).await
        {
            assert_eq!(r["type"], "next", "{r}");
            assert_eq!(r["payload"]["data"]["nodeEvents"]["nodeId"], node, "{r}");
            return;
        }
    }
    panic!("the device's subscription delivered no node event");
}

/// A device's live socket lives no longer than the device's credential:
/// revoking the device, or rotating its token, closes it within 5 s (4403),
/// while the owner's other device keeps its socket; the old tokens are then
/// refused in `connection_init` and the new one is taken.
async fn device_sockets_end_with_their_device(server: &TestServer) {
    let db = &server.state.db;
    let admin = token_for(&server.base, db, Role::Admin).await;
    let user = token_for(&server.base, db, Role::User).await;
    let me = gql(&server.base, Some(&user), "{me{id}}", json!({})).await;
    let user_id = me["data"]["me"]["id"].as_str().expect("id").to_owned();
    let r = gql(&server.base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,deviceLimit:3}){id}}", json!({})).await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(
        &server.base,
        Some(&admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": user_id, "p": plan}),
    )
    .await;
    assert!(r["data"]["grantSubscription"]["id"].is_string(), "{r}");
    let r = gql(&server.base, Some(&admin), "mutation{registerOutlineNode(input:{region:\"eu\",name:\"n1\",host:\"10.0.0.5\",port:8388}){node{id}}}", json!({})).await;
    let node = r["data"]["registerOutlineNode"]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let mut devices = Vec::new();
    for name in ["laptop", "phone"] {
        let r = gql(
            &server.base,
            Some(&user),
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){accessToken device{id}}}",
            json!({"n": name}),
        )
        .await;
        let creds = &r["data"]["registerDevice"];
        devices.push((
            creds["device"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
            creds["accessToken"].as_str().expect("token").to_owned(),
        ));
    }
    let [(laptop, laptop_token), (phone, phone_token)] =
        <[(String, String); 2]>::try_from(devices).expect("two devices");
    let mut laptop_ws = device_socket(server, &laptop_token).await;
    let mut phone_ws = device_socket(server, &phone_token).await;
    // Both follow the nodes as devices.
    delivers_node_events(server, &admin, &node, &mut laptop_ws).await;
    delivers_node_events(server, &admin, &node, &mut phone_ws).await;

    // Revoked: the laptop's socket closes, the phone's stays.
    let r = gql(
        &server.base,
        Some(&user),
        "mutation($id:UUID!){revokeDevice(id:$id){id}}",
        json!({"id": laptop}),
    )
    .await;
    assert_eq!(r["data"]["revokeDevice"]["id"], laptop.as_str(), "{r}");
    assert_eq!(ends_within_5s(&mut laptop_ws).await, Some(4403), "revoked");
    phone_ws
        .send(ws_op(
            "graphql-transport-ws",
            "q",
            "{__typename}",
            json!({}),
        ))
        .await
        .expect("send");
    let r = ws_answer(&mut phone_ws, "q").await;
    assert_eq!(r["payload"]["data"]["__typename"], "Query", "{r}");

    // Rotated: the phone's socket closes.
    let r = gql(
        &server.base,
        Some(&user),
        "mutation($id:UUID!){rotateDeviceToken(id:$id){accessToken}}",
        json!({"id": phone}),
    )
    .await;
    let rotated = r["data"]["rotateDeviceToken"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    assert_eq!(ends_within_5s(&mut phone_ws).await, Some(4403), "rotated");

    // The revoked and the replaced tokens no longer sign in; the new one does.
    for (what, token) in [("revoked", &laptop_token), ("replaced", &phone_token)] {
        let mut ws = ws_connect(&server.base, "graphql-transport-ws").await;
        let r = ws_init(&mut ws, json!({"deviceToken": token})).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_u64()),
            (Some("close"), Some(4403)),
            "{what}: {r}"
        );
    }
    let mut ws = device_socket(server, &rotated).await;
    delivers_node_events(server, &admin, &node, &mut ws).await;
    // The admin's feeds and a user's: a device's credential is one, just
    // not an admin's or a user's. A subscribe with no query says so, as
    // over HTTP.
    for (id, query) in [
        ("s", "subscription{sessionEvents{kind}}"),
        ("q", "subscription{quotaEvents{kind}}"),
        ("m", "subscription{myDeviceEvents{kind}}"),
        ("e", ""),
    ] {
        ws.send(ws_op("graphql-transport-ws", id, query, json!({})))
            .await
            .expect("send");
        let r = loop {
            let r = ws_next(&mut ws).await;
            if r["id"] == id {
                break r;
            }
        };
        let want = if query.is_empty() {
            "BAD_REQUEST"
        } else {
            "FORBIDDEN"
        };
        assert_eq!(ws_code(&r), Some(want), "{r}");
        if query.is_empty() {
            let p = &r["payload"];
            let message = [&p[0]["message"], &p["message"], &p["errors"][0]["message"]]
                .into_iter()
                .find_map(|m| m.as_str());
            assert_eq!(message, Some("the request has no query"), "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_sockets_end_with_their_device_postgres() {
    let t = TestDb::pg().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    device_sockets_end_with_their_device(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_sockets_end_with_their_device_sqlite() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    device_sockets_end_with_their_device(&server).await;
    server.stop().await;
}

/// The other limits of HTTP on both WebSocket protocols, the legacy
/// graphql-ws (`start`/`stop`/`data`/`error`) included: an operation over the
/// complexity limit is refused before it runs; a message over 64 KiB ends
/// the socket while one just under it is answered; a socket holds at most
/// 20 subscriptions, and a stopped one frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_complexity_size_and_subscription_cap_on_both_protocols() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let user = token_for(&server.base, &server.state.db, Role::User).await;
    let auth = json!({"Authorization": format!("Bearer {user}")});
    let complex = format!(
        "{{{}}}",
        "plans{edges{node{id name priceCents currency durationDays}}} ".repeat(200)
    );
    assert!(complex.len() < 32 * 1024);
    let padded = |n: usize| format!("{{__typename}} #{}", "x".repeat(n));
    let live = "subscription{nodeEvents{nodeId}}";
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = ws_connect(&server.base, protocol).await;
        assert_eq!(
            ws_init(&mut ws, auth.clone()).await["type"],
            "connection_ack"
        );
        // Too complex: refused, not run (a signed-in user may list plans).
        ws.send(ws_op(protocol, "complex", &complex, json!({})))
            .await
            .expect("send");
        let r = ws_answer(&mut ws, "complex").await;
        assert_eq!(ws_code(&r), Some("BAD_REQUEST"), "{protocol}: {r}");
        assert!(
            r.to_string().to_lowercase().contains("complex"),
            "{protocol}: {r}"
        );
        assert!(r["payload"]["data"].is_null(), "{protocol}: {r}");
        // Just under 64 KiB: answered.
        ws.send(ws_op(protocol, "near", &padded(60_000), json!({})))
            .await
            .expect("send");
        let r = ws_answer(&mut ws, "near").await;
        assert_eq!(
            r["payload"]["data"]["__typename"], "Query",
            "{protocol}: {r}"
        );
        // Over 64 KiB: the socket ends, nothing is answered.
        ws.send(ws_op(protocol, "huge", &padded(70_000), json!({})))
            .await
            .expect("send");
        ends_within_5s(&mut ws).await;

        // At most 20 subscriptions.
        let mut ws = ws_connect(&server.base, protocol).await;
        assert_eq!(
            ws_init(&mut ws, auth.clone()).await["type"],
            "connection_ack"
        );
        for i in 0..21 {
            ws.send(ws_op(protocol, &format!("s{i}"), live, json!({})))
                .await
                .expect("send");
        }
        let r = ws_next(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str()),
            (Some("error"), Some("s20")),
            "{protocol}: {r}"
        );
        assert_eq!(ws_code(&r), Some("LIMIT_EXCEEDED"), "{protocol}: {r}");
        // One stopped: one more fits, and only one.
        let stop = if protocol == "graphql-ws" {
            "stop"
        } else {
            "complete"
        };
        ws.send(Message::Text(
            json!({"id": "s0", "type": stop}).to_string().into(),
        ))
        .await
        .expect("send");
        for id in ["s21", "s22"] {
            ws.send(ws_op(protocol, id, live, json!({})))
                .await
                .expect("send");
        }
        let r = loop {
            let r = ws_next(&mut ws).await;
            if r["type"] != "complete" {
                break r;
            }
        };
        assert_eq!(
            (r["type"].as_str(), r["id"].as_str()),
            (Some("error"), Some("s22")),
            "{protocol}: {r}"
        );
        assert_eq!(ws_code(&r), Some("LIMIT_EXCEEDED"), "{protocol}: {r}");
    }
    // The server took none of it badly.
    let r = gql(&server.base, None, "{__typename}", json!({})).await;
    assert_eq!(r["data"]["__typename"], "Query", "{r}");
    server.stop().await;
}

/// An explicit `null` on an update's field that cannot be cleared is
/// refused with `BAD_REQUEST` naming the field, and changes nothing; it
/// answered success and was taken for a field left out (beside
/// `trafficLimitBytes`, whose null means unlimited, as it still does).
#[tokio::test(flavor = "multi_thread")]
async fn a_null_an_update_cannot_take_is_refused() {
    let t = TestDb::sqlite().await;
    let server = TestServer::start(t.dsn.clone(), false).await;
    let admin = token_for(&server.base, &server.state.db, Role::Admin).await;
    let q = |query: &'static str| {
        let (base, admin) = (server.base.clone(), admin.clone());
        async move { gql(&base, Some(&admin), query, json!({})).await }
    };
    let r = q("mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"100\",durationDays:30,trafficLimitBytes:\"1000000\",deviceLimit:3}){id} registerOutlineNode(input:{region:\"eu\",name:\"n1\",host:\"10.0.0.5\",port:8388}){node{id}} registerGatewayNode(input:{region:\"eu\",name:\"g1\",publicUrl:\"https://g1.example.com\"}){node{id}}}").await;
    assert!(r["errors"].is_null(), "{r}");
    let (plan, node, gw) = (
        r["data"]["createPlan"]["id"]
            .as_str()
            .expect("plan")
            .to_owned(),
        r["data"]["registerOutlineNode"]["node"]["id"]
            .as_str()
            .expect("node")
            .to_owned(),
        r["data"]["registerGatewayNode"]["node"]["id"]
            .as_str()
            .expect("gateway")
            .to_owned(),
    );
    let cases = [
        (
            format!("updatePlan(id:\"{plan}\",input:{{name:null}}){{id}}"),
            "name",
        ),
        (
            format!("updatePlan(id:\"{plan}\",input:{{priceCents:null}}){{id}}"),
            "priceCents",
        ),
        (
            format!("updatePlan(id:\"{plan}\",input:{{name:\"q\",deviceLimit:null}}){{id}}"),
            "deviceLimit",
        ),
        (
            format!("updateOutlineNode(id:\"{node}\",input:{{host:null}}){{id}}"),
            "host",
        ),
        (
            format!("updateOutlineNode(id:\"{node}\",input:{{capacity:null}}){{id}}"),
            "capacity",
        ),
        (
            format!("updateGatewayNode(id:\"{gw}\",input:{{publicUrl:null}}){{id}}"),
            "publicUrl",
        ),
        (
            "updateSettings(input:{signUpEnabled:null}){signUpEnabled}".to_owned(),
            "signUpEnabled",
        ),
    ];
    for (mutation, field) in cases {
        let r = gql(
            &server.base,
            Some(&admin),
            &format!("mutation{{{mutation}}}"),
            json!({}),
        )
        .await;
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_REQUEST",
            "{mutation}: {r}"
        );
        let message = r["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{field} cannot be null")),
            "{mutation}: {r}"
        );
    }
    // Nothing changed (the plan's name was not changed by the refused
    // update that also named it).
    let r = q("{plans{edges{node{name priceCents deviceLimit}}} outlineNodes{edges{node{host capacity}}} gatewayNodes{edges{node{publicUrl}}}}").await;
    assert_eq!(r["data"]["plans"]["edges"][0]["node"]["name"], "p", "{r}");
    assert_eq!(
        r["data"]["plans"]["edges"][0]["node"]["deviceLimit"], 3,
        "{r}"
    );
    assert_eq!(
        r["data"]["outlineNodes"]["edges"][0]["node"]["host"], "10.0.0.5",
        "{r}"
    );
    assert_eq!(
        r["data"]["gatewayNodes"]["edges"][0]["node"]["publicUrl"], "https://g1.example.com",
        "{r}"
    );
    // A null allowance still means unlimited.
    let r = gql(
        &server.base,
        Some(&admin),
        &format!("mutation{{updatePlan(id:\"{plan}\",input:{{trafficLimitBytes:null}}){{trafficLimitBytes}}}}"),
        json!({}),
    )
    .await;
    assert!(
        r["data"]["updatePlan"]["trafficLimitBytes"].is_null(),
        "{r}"
    );
    assert!(r["errors"].is_null(), "{r}");
}
