//! The REST routes keep the contract their OpenAPI document states: the
//! credential is checked before the body, 405 and 413 answers use the error
//! envelope, and the document declares its security schemes per route.

mod common;

use common::{TestDb, TestServer, client};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn credentials_before_bodies_and_one_envelope_for_every_refusal() {
    let db = TestDb::sqlite().await;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let posts = [
        "/api/v1/auth/validate-device",
        "/api/v1/nodes/assign-outline",
        "/api/v1/usage/report",
        "/api/v1/gateway/heartbeat",
        "/api/v1/outline/heartbeat",
        "/api/v1/usage/links",
        "/api/v1/outline/witness",
    ];
    for path in posts {
        for (token, body) in [
            (None, "[null,null]"),
            (None, "{not json"),
            (Some("unknown-machine-token"), "[null,null]"),
        ] {
            let mut req = client()
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.expect("send");
            let status = res.status().as_u16();
            let v: Value = res.json().await.expect("json");
            assert_eq!(status, 401, "{path} {body} token={token:?}: {v}");
            assert_eq!(v["error"]["code"], "UNAUTHENTICATED", "{v}");
        }
        // Wrong method: 405 in the envelope, with Allow.
        let res = client().put(server.url(path)).send().await.expect("send");
        assert_eq!(res.status().as_u16(), 405, "{path}");
        assert!(res.headers().contains_key("allow"), "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .expect("ct")
                .starts_with("application/json")
        );
        let v: Value = res.json().await.expect("json");
        assert_eq!(v["error"]["code"], "METHOD_NOT_ALLOWED", "{v}");
        // Too large: 413 in the envelope, and the connection is closed.
        let res = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(vec![b' '; 70 * 1024])
            .send()
            .await
            .expect("send");
        assert_eq!(res.status().as_u16(), 413, "{path}");
        let v: Value = res.json().await.expect("json");
        assert_eq!(v["error"]["code"], "PAYLOAD_TOO_LARGE", "{v}");
    }
    // The document states who may call what and how each route refuses.
    let doc: Value = client()
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    let schemes = &doc["components"]["securitySchemes"];
    for s in [
        "machine_token",
        "device_jwt",
        "device_access_token",
        "enrollment_token",
    ] {
        assert_eq!(schemes[s]["scheme"], "bearer", "{s}: {schemes}");
    }
    assert_eq!(
        doc["paths"]["/api/v1/enroll"]["post"]["security"][0]["enrollment_token"],
        serde_json::json!([])
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let responses = op["responses"].as_object().expect("responses");
            let mut needed = vec!["405", "503"];
            if path != "/api/v1/health" {
                needed.extend(["401", "403", "429"]);
                assert!(op["security"].is_array(), "{method} {path} has no security");
            }
            if method == "post" {
                needed.extend(["400", "413"]);
            }
            for status in needed {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
            if let Some(throttled) = responses.get("429") {
                assert_eq!(
                    throttled["headers"]["Retry-After"]["schema"]["type"], "integer",
                    "{method} {path}: 429 without Retry-After"
                );
            }
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["OutlineBeat"]["properties"]["load"]["minimum"],
        0
    );
    server.stop().await;
}

async fn admin(server: &TestServer) -> String {
    let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple";
    httvps_control::accounts::create_user(
        &server.state.db,
        &email,
        password,
        httvps_control::accounts::Role::Admin,
    )
    .await
    .expect("admin");
    let r = common::gql(
        &server.base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        serde_json::json!({"e": email, "p": password}),
    )
    .await;
    r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

async fn cross_region_heartbeat(db: TestDb) {
    let server = TestServer::start(db.dsn.clone(), false).await;
    let token = admin(&server).await;
    let q = |query: &'static str| {
        let (base, token) = (server.base.clone(), token.clone());
        async move {
            let r = common::gql(&base, Some(&token), query, serde_json::json!({})).await;
            assert!(r["errors"].is_null(), "{query}: {r}");
            r["data"].clone()
        }
    };
    q("mutation{createRegion(code:\"eu\",name:\"Europe\"){id}}").await;
    q("mutation{createRegion(code:\"us\",name:\"America\"){id}}").await;
    let gw = q("mutation{registerGatewayNode(input:{region:\"eu\",name:\"g\",publicUrl:\"https://g.example\"}){token}}").await;
    let gw = gw["registerGatewayNode"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let own = q("mutation{registerOutlineNode(input:{region:\"eu\",name:\"a\",host:\"10.0.0.1\",port:8388}){node{id}}}").await;
    let own = own["registerOutlineNode"]["node"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let foreign = q("mutation{registerOutlineNode(input:{region:\"us\",name:\"b\",host:\"10.0.0.2\",port:8388}){node{id}}}").await;
    let foreign = foreign["registerOutlineNode"]["node"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let health = |id: String| {
        let (base, token) = (server.base.clone(), token.clone());
        async move {
            let r = common::gql(
                &base,
                Some(&token),
                "query{outlineNodes{edges{node{id health}}}}",
                serde_json::json!({}),
            )
            .await;
            r["data"]["outlineNodes"]["edges"]
                .as_array()
                .expect("edges")
                .iter()
                .find(|e| e["node"]["id"] == id.as_str())
                .map(|e| e["node"]["health"].clone())
                .unwrap_or_else(|| panic!("{r}"))
        }
    };
    let beat = |body: Value| {
        let (url, gw) = (server.url("/api/v1/gateway/heartbeat"), gw.clone());
        async move {
            let res = client()
                .post(url)
                .bearer_auth(gw)
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    // Its own region's node: applied.
    let (status, v) = beat(serde_json::json!({"reachable_nodes": [own]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(health(own.clone()).await, "up");
    let before = (health(own.clone()).await, health(foreign.clone()).await);
    // A node of another region, alone or beside its own: refused, nothing applied.
    for body in [
        serde_json::json!({"unreachable_nodes": [foreign]}),
        serde_json::json!({"unreachable_nodes": [own], "reachable_nodes": [foreign]}),
    ] {
        let (status, v) = beat(body.clone()).await;
        assert_eq!(status, 403, "{body}: {v}");
        assert_eq!(v["error"]["code"], "FORBIDDEN");
        assert_eq!(
            (health(own.clone()).await, health(foreign.clone()).await),
            before,
            "a refused heartbeat changed node health"
        );
    }
    let (status, v) = beat(serde_json::json!({"unreachable_nodes": [own]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(health(own.clone()).await, "down");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_region_heartbeat_is_refused_on_postgres() {
    cross_region_heartbeat(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_region_heartbeat_is_refused_on_sqlite() {
    cross_region_heartbeat(TestDb::sqlite().await).await;
}

/// Methods and paths a client makes up cannot grow the metrics: 2,000
/// requests with random method names and paths leave `/metrics` small.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_stay_bounded_under_random_methods_and_paths() {
    use rand::Rng;
    let db = TestDb::sqlite().await;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let mut rng = rand::rng();
    let mut sent = 0;
    for _ in 0..2_000 {
        let name: String = (0..rng.random_range(3..12))
            .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
            .collect();
        let method = reqwest::Method::from_bytes(name.as_bytes()).expect("method");
        let path = format!("/x{}", rng.random::<u64>());
        if client()
            .request(method, server.url(&path))
            .send()
            .await
            .is_ok()
        {
            sent += 1;
        }
    }
    assert!(sent > 1_900, "only {sent} requests answered");
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.len() < 64 * 1024,
        "/metrics grew to {} bytes",
        text.len()
    );
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("httvps_http_requests_total{method=\"OTHER\",route=\"unmatched\"")),
        "{text}"
    );
    server.stop().await;
}

/// What the HTTP framework refuses on `/graphql` (a body too large, one
/// cut short, a WebSocket route asked without an upgrade) is answered in
/// GraphQL's error shape with a code, like every other GraphQL refusal.
#[tokio::test(flavor = "multi_thread")]
async fn framework_refusals_on_graphql_are_graphql_errors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite().await;
    let server = TestServer::start(db.dsn.clone(), false).await;
    let shape = |v: &Value| {
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .map(str::to_owned)
    };
    let res = client()
        .post(server.url("/graphql"))
        .header("content-type", "application/json")
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 413);
    let v: Value = res.json().await.expect("json");
    assert_eq!(shape(&v).as_deref(), Some("PAYLOAD_TOO_LARGE"), "{v}");
    let res = client()
        .get(server.url("/graphql/ws"))
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    let v: Value = res.json().await.expect("json");
    assert!((400..500).contains(&status), "{status} {v}");
    assert_eq!(shape(&v).as_deref(), Some("BAD_REQUEST"), "{v}");
    // A body shorter than its Content-Length, the writing side then closed.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":")
        .await
        .expect("write");
    s.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(shape(&v).as_deref(), Some("BAD_REQUEST"), "{v}");
    server.stop().await;
}
