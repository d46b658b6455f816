//! Every input is checked at the edge: strings no column holds, cursors,
//! times outside what the databases hold, numbers out of range and JSON
//! bodies that are not objects are the client's mistake (`BAD_REQUEST`,
//! HTTP 400), on both backends. Then a schema-driven property test: every
//! root query and mutation called with arbitrary arguments, as an admin and
//! anonymously, never answers `INTERNAL` nor a server error.

mod common;

use std::collections::BTreeMap;

use common::{TestDb, TestServer, client, gql};
use httvps_control::accounts::{self, Role};
use httvps_control::db::Dsn;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

async fn admin_token(server: &TestServer) -> String {
    let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    accounts::create_user(&server.state.db, &email, PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let r = gql(
        &server.base,
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

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

async fn reproducers(dsn: Dsn) {
    let server = TestServer::start(dsn, false).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let t = Some(admin.as_str());
    let bad = [
        (
            "{users(filter:{emailContains:\"a\\u0000\"}){edges{node{id}}}}",
            json!({}),
        ),
        (
            "query($a:String){auditLog(filter:{action:$a}){edges{node{id}}}}",
            json!({"a": "x\u{0}"}),
        ),
        (
            "{outlineNodes(region:\"\\u0000\"){edges{node{id}}}}",
            json!({}),
        ),
        (
            "{plans(after:\"LTYzNzMwMDAwMDAwMDAwMDAwMDB8eA\"){edges{node{id}}}}",
            json!({}),
        ),
        // A well-formed cursor whose id is not one of ours.
        ("{plans(after:\"MHx4\"){edges{node{id}}}}", json!({})),
        (
            "{usage(from:\"-200000-01-01T00:00:00Z\",to:\"2020-01-01T00:00:00Z\"){bytesUp}}",
            json!({}),
        ),
        (
            "{usage(from:\"2020-01-01T00:00:00Z\",to:\"+200000-01-01T00:00:00Z\"){bytesUp}}",
            json!({}),
        ),
        (
            "mutation($n:String!){createRegion(code:\"ok\",name:$n){id}}",
            json!({"n": "a\u{0}b"}),
        ),
        ("{plans(first:2147483647){edges{node{id}}}}", json!({})),
        ("{plans(first:99999999999){edges{node{id}}}}", json!({})),
        (
            "mutation{createPlan(input:{name:\"p\",priceCents:\"99999999999999999999\",durationDays:30,deviceLimit:1}){id}}",
            json!({}),
        ),
    ];
    for (query, vars) in bad {
        let r = gql(base, t, query, vars).await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{query}: {r}");
    }
    // A platform of 32 characters whose lower case has 64 (`İ` is `i`
    // and a combining dot): the field named, before anything else.
    let r = gql(
        base,
        t,
        "mutation($p:String!){registerDevice(name:\"d\",platform:$p){accessToken}}",
        json!({"p": "İ".repeat(32)}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("platform")),
        "{r}"
    );
    // REST: a region naming no column value, and bodies that are not objects.
    let region = gql(
        base,
        t,
        "mutation{createRegion(code:\"eu\",name:\"Europe\"){id}}",
        json!({}),
    )
    .await;
    assert!(region["errors"].is_null(), "{region}");
    let gw = gql(
        base,
        t,
        "mutation{registerGatewayNode(input:{region:\"eu\",name:\"g\",publicUrl:\"https://g.example\"}){token}}",
        json!({}),
    )
    .await;
    let gw_token = gw["data"]["registerGatewayNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{gw}"))
        .to_owned();
    // Gateway URLs client links are built on, and addresses that would
    // pass for another account's: refused, nothing stored.
    for (i, url) in [
        "http://example.com",
        "https://",
        "https://a b.com",
        "https://x.com:65536",
        "https://%zz",
        "https://user:pw@x.com",
    ]
    .into_iter()
    .enumerate()
    {
        let r = gql(
            base,
            t,
            "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token}}",
            json!({"n": format!("bad{i}"), "u": url}),
        )
        .await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{url}: {r}");
    }
    for email in [
        "a@b.co\u{200b}",
        "admin@localhost.",
        &format!("{}@b.co", "x".repeat(65)),
    ] {
        let r = gql(
            base,
            None,
            "mutation($e:String!){signUp(email:$e,password:\"correct horse battery staple\"){id}}",
            json!({"e": email}),
        )
        .await;
        assert_eq!(code(&r), Some("BAD_REQUEST"), "{email:?}: {r}");
    }
    let nodes = gql(base, t, "{gatewayNodes{edges{node{id}}}}", json!({})).await;
    assert_eq!(
        nodes["data"]["gatewayNodes"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{nodes}"
    );
    for (path, body) in [
        (
            "/api/v1/nodes/assign-outline",
            r#"{"access_token":"x","region":"\u0000"}"#,
        ),
        ("/api/v1/nodes/assign-outline", "[null,null]"),
        ("/api/v1/auth/validate-device", "[null,null]"),
        ("/api/v1/usage/report", "[]"),
        ("/api/v1/gateway/heartbeat", "[null,null,null]"),
        ("/api/v1/gateway/heartbeat", "\"x\""),
    ] {
        let res = client()
            .post(format!("{base}{path}"))
            .bearer_auth(&gw_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let v: Value = res.json().await.expect("json body");
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "{path} {body}: {v}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_inputs_are_bad_requests_on_postgres() {
    let db = TestDb::pg().await;
    reproducers(db.dsn.clone()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_inputs_are_bad_requests_on_sqlite() {
    let db = TestDb::sqlite().await;
    reproducers(db.dsn.clone()).await;
}

// ---- schema-driven property test ------------------------------------------

const INTROSPECTION: &str = "{__schema{queryType{name} mutationType{name} types{name kind \
    enumValues{name} inputFields{name type{...T}} fields{name args{name type{...T}} type{...T}}}}} \
    fragment T on __Type{kind name ofType{kind name ofType{kind name ofType{kind name}}}}";

/// A type reference from introspection, unwrapped.
#[derive(Clone, Debug)]
enum Ty {
    NonNull(Box<Ty>),
    List(Box<Ty>),
    Named(String),
}

fn ty(v: &Value) -> Ty {
    match v["kind"].as_str() {
        Some("NON_NULL") => Ty::NonNull(Box::new(ty(&v["ofType"]))),
        Some("LIST") => Ty::List(Box::new(ty(&v["ofType"]))),
        _ => Ty::Named(v["name"].as_str().unwrap_or_default().to_owned()),
    }
}

fn sdl(t: &Ty) -> String {
    match t {
        Ty::NonNull(i) => format!("{}!", sdl(i)),
        Ty::List(i) => format!("[{}]", sdl(i)),
        Ty::Named(n) => n.clone(),
    }
}

fn named(t: &Ty) -> &str {
    match t {
        Ty::NonNull(i) | Ty::List(i) => named(i),
        Ty::Named(n) => n,
    }
}

struct Field {
    root: &'static str,
    name: String,
    args: Vec<(String, Ty)>,
    composite: bool,
}

struct Schema {
    fields: Vec<Field>,
    types: BTreeMap<String, Value>,
}

async fn introspect(base: &str) -> Schema {
    let r = gql(base, None, INTROSPECTION, json!({})).await;
    let types: BTreeMap<String, Value> = r["data"]["__schema"]["types"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or_default().to_owned(), t.clone()))
        .collect();
    let mut fields = Vec::new();
    for (root, key) in [("query", "queryType"), ("mutation", "mutationType")] {
        let name = r["data"]["__schema"][key]["name"].as_str().expect("root");
        for f in types[name]["fields"].as_array().expect("fields") {
            let out = ty(&f["type"]);
            let kind = types[named(&out)]["kind"].as_str().unwrap_or_default();
            fields.push(Field {
                root,
                name: f["name"].as_str().expect("name").to_owned(),
                args: f["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .map(|a| (a["name"].as_str().expect("arg").to_owned(), ty(&a["type"])))
                    .collect(),
                composite: matches!(kind, "OBJECT" | "INTERFACE" | "UNION"),
            });
        }
    }
    Schema { fields, types }
}

/// Strings a client could send, hostile ones weighted up.
fn any_string() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,40}",
        ".{0,20}\u{0}.{0,5}",
        "[a-z0-9-]{1,12}",
        "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,3}",
        Just(String::new()),
        "x{300,600}",
        // Cursors: base64 of "<number>|<anything>".
        ("-?[0-9]{1,22}", "\\PC{0,40}").prop_map(|(n, id)| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{n}|{id}"))
        }),
    ]
    .boxed()
}

fn scalar(name: &str, schema: &Schema) -> BoxedStrategy<Value> {
    match name {
        "String" => any_string().prop_map(Value::from).boxed(),
        "Int" => prop_oneof![
            (-5i64..200).prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
        ]
        .boxed(),
        "Float" => any::<f64>().prop_map(|f| json!(f)).boxed(),
        "Boolean" => any::<bool>().prop_map(Value::from).boxed(),
        "BigInt" => prop_oneof![
            any::<i64>().prop_map(|n| Value::from(n.to_string())),
            "-?[0-9]{1,30}".prop_map(Value::from),
            any_string().prop_map(Value::from),
        ]
        .boxed(),
        "UUID" => prop_oneof![
            Just(Value::from("00000000-0000-4000-8000-000000000000")),
            any::<u128>().prop_map(|n| Value::from(uuid::Uuid::from_u128(n).to_string())),
            any_string().prop_map(Value::from),
        ]
        .boxed(),
        "DateTime" => prop_oneof![
            (-300_000i64..300_000, 1u32..13, 1u32..29).prop_map(|(y, m, d)| {
                let year = if (0..10_000).contains(&y) {
                    format!("{y:04}")
                } else {
                    format!("{y:+07}")
                };
                Value::from(format!("{year}-{m:02}-{d:02}T00:00:00Z"))
            }),
            (2019i64..2031).prop_map(|y| Value::from(format!("{y}-06-01T12:00:00Z"))),
            any_string().prop_map(Value::from),
        ]
        .boxed(),
        other => {
            let t = &schema.types[other];
            match t["kind"].as_str() {
                Some("ENUM") => {
                    let mut names: Vec<Value> = t["enumValues"]
                        .as_array()
                        .expect("enum")
                        .iter()
                        .map(|e| e["name"].clone())
                        .collect();
                    names.push(Value::from("NOT_A_VALUE"));
                    proptest::sample::select(names).boxed()
                }
                Some("INPUT_OBJECT") => {
                    let fields: Vec<(String, Ty)> = t["inputFields"]
                        .as_array()
                        .expect("input fields")
                        .iter()
                        .map(|f| (f["name"].as_str().expect("name").to_owned(), ty(&f["type"])))
                        .collect();
                    object(&fields, schema)
                }
                _ => any_string().prop_map(Value::from).boxed(),
            }
        }
    }
}

fn value(t: &Ty, schema: &Schema) -> BoxedStrategy<Value> {
    match t {
        Ty::NonNull(i) => value(i, schema),
        Ty::List(i) => proptest::collection::vec(value(i, schema), 0..4)
            .prop_map(Value::from)
            .boxed(),
        Ty::Named(n) => prop_oneof![
            1 => Just(Value::Null),
            9 => scalar(n, schema),
        ]
        .boxed(),
    }
}

/// Arguments (or input fields): each one absent, or some value.
fn object(fields: &[(String, Ty)], schema: &Schema) -> BoxedStrategy<Value> {
    let parts: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .iter()
        .map(|(name, t)| {
            let name = name.clone();
            proptest::option::weighted(0.8, value(t, schema))
                .prop_map(move |v| v.map(|v| (name.clone(), v)))
                .boxed()
        })
        .collect();
    parts
        .prop_map(|kv| Value::Object(kv.into_iter().flatten().collect()))
        .boxed()
}

fn operation(f: &Field) -> String {
    let decls: Vec<String> = f
        .args
        .iter()
        .map(|(n, t)| format!("${n}:{}", sdl(t)))
        .collect();
    let uses: Vec<String> = f.args.iter().map(|(n, _)| format!("{n}:${n}")).collect();
    let decls = if decls.is_empty() {
        String::new()
    } else {
        format!("({})", decls.join(","))
    };
    let uses = if uses.is_empty() {
        String::new()
    } else {
        format!("({})", uses.join(","))
    };
    let selection = if f.composite { "{__typename}" } else { "" };
    format!("{} Fuzz{decls}{{{}{uses}{selection}}}", f.root, f.name)
}

async fn arbitrary_arguments(dsn: Dsn, cases: u32) {
    let server = TestServer::start(dsn, true).await;
    let base = &server.base;
    let admin = admin_token(&server).await;
    let schema = introspect(base).await;
    assert!(schema.fields.len() > 30, "introspection found too little");
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut calls = 0;
    for f in &schema.fields {
        let strategy = object(&f.args, &schema);
        let query = operation(f);
        for case in 0..cases {
            let vars = strategy.new_tree(&mut runner).expect("generate").current();
            // Logging the admin out would end the test's session early.
            let as_admin = case % 2 == 0 && f.name != "logout";
            let token = as_admin.then_some(admin.as_str());
            let res = client()
                .post(format!("{base}/graphql"))
                .bearer_auth_opt(token)
                .json(&json!({"query": query, "variables": vars}))
                .send()
                .await
                .expect("the server answers");
            let status = res.status();
            let r: Value = res.json().await.expect("json");
            assert!(
                !status.is_server_error(),
                "{query} {vars} as admin={as_admin}: HTTP {status}: {r}"
            );
            for e in r["errors"].as_array().into_iter().flatten() {
                let c = e["extensions"]["code"].as_str();
                assert!(
                    c.is_some() && c != Some("INTERNAL"),
                    "{query} {vars} as admin={as_admin}: {r}"
                );
            }
            calls += 1;
        }
    }
    // Still healthy after all that.
    let health = client()
        .get(format!("{base}/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert!(calls > 0);
    server.stop().await;
}

trait BearerOpt {
    fn bearer_auth_opt(self, token: Option<&str>) -> Self;
}

impl BearerOpt for reqwest::RequestBuilder {
    fn bearer_auth_opt(self, token: Option<&str>) -> Self {
        match token {
            Some(t) => self.bearer_auth(t),
            None => self,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_root_field_takes_arbitrary_arguments_on_postgres() {
    let db = TestDb::pg().await;
    arbitrary_arguments(db.dsn.clone(), 24).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_root_field_takes_arbitrary_arguments_on_sqlite() {
    let db = TestDb::sqlite().await;
    arbitrary_arguments(db.dsn.clone(), 24).await;
}
