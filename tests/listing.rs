//! Lists as a console pages them, on PostgreSQL and SQLite: `totalCount`
//! counts with the list's own filter (and the caller's scope), `order:
//! NEWEST_FIRST` walks the audit log and sessions from the newest without
//! skipping or repeating a row, and the audit log filters by target.

mod common;

use common::{TestDb, TestServer, gql};
use httvps_control::accounts::{self, Role};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

async fn account(server: &TestServer, role: Role) -> (String, String) {
    let email = format!("list-{}@example.com", uuid::Uuid::new_v4().simple());
    let user = accounts::create_user(&server.state.db, &email, PASSWORD, role)
        .await
        .expect("account");
    let r = gql(
        &server.base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    let token = r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("login: {r}"))
        .to_owned();
    (user.id.to_string(), token)
}

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

/// Every `createdAt` of a page, in the order given.
fn times(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["createdAt"].as_str().expect("createdAt").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_order_and_targets_on_postgres() {
    totals_order_and_targets(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_order_and_targets_on_sqlite() {
    totals_order_and_targets(TestDb::sqlite().await).await;
}

async fn totals_order_and_targets(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let (aid, admin) = account(&server, Role::Admin).await;
    let (uid, _) = account(&server, Role::User).await;
    let (other, _) = account(&server, Role::User).await;

    // Seven audited changes about the user (role and status back and forth)
    // and one about the other account.
    for i in 0..7 {
        let role = if i % 2 == 0 { "ADMIN" } else { "USER" };
        let r = gql(
            base,
            Some(&admin),
            "mutation($u:UUID!,$r:Role!){setUserRole(id:$u,role:$r){id}}",
            json!({"u": uid, "r": role}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
    }
    let r = gql(
        base,
        Some(&admin),
        "mutation($u:UUID!){setUserStatus(id:$u,status:DISABLED){id}}",
        json!({"u": other}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");

    // totalCount: all users, then with a filter.
    let r = gql(
        base,
        Some(&admin),
        "{all:users(first:1){totalCount nodes{id}} admins:users(first:1,filter:{role:ADMIN}){totalCount} disabled:users(filter:{status:DISABLED}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["all"]["totalCount"], 3, "{r}");
    assert_eq!(r["data"]["all"]["nodes"].as_array().map(Vec::len), Some(1));
    // The user was made admin last (i = 6).
    assert_eq!(r["data"]["admins"]["totalCount"], 2, "{r}");
    assert_eq!(r["data"]["disabled"]["totalCount"], 1, "{r}");

    // The audit trail of one account: by target, newest first, counted.
    let trail = "query($t:UUID!,$a:String,$o:ListOrder!){auditLog(first:3,after:$a,order:$o,filter:{targetId:$t}){totalCount nodes{action targetType targetId createdAt} pageInfo{hasNextPage endCursor}}}";
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let r = gql(
            base,
            Some(&admin),
            trail,
            json!({"t": uid, "a": after, "o": "NEWEST_FIRST"}),
        )
        .await;
        let log = &r["data"]["auditLog"];
        assert_eq!(log["totalCount"], 7, "{r}");
        for n in log["nodes"].as_array().expect("nodes") {
            assert_eq!(n["targetId"], json!(uid), "{n}");
            assert_eq!(n["targetType"], "user");
            assert_eq!(n["action"], "set_user_role");
        }
        seen.extend(times(&log["nodes"]));
        if log["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = log["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 7, "every entry once: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    // Oldest first is still the default.
    let r = gql(
        base,
        Some(&admin),
        "query($t:UUID!){auditLog(first:10,filter:{targetId:$t}){nodes{createdAt}}}",
        json!({"t": uid}),
    )
    .await;
    let oldest = times(&r["data"]["auditLog"]["nodes"]);
    let mut reversed = seen.clone();
    reversed.reverse();
    assert_eq!(oldest, reversed, "{r}");
    // By target type and action.
    let r = gql(
        base,
        Some(&admin),
        "{a:auditLog(filter:{targetType:\"user\"}){totalCount} b:auditLog(filter:{action:\"set_user_status\"}){totalCount} c:auditLog(filter:{targetType:\"device\"}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["a"]["totalCount"], 8, "{r}");
    assert_eq!(r["data"]["b"]["totalCount"], 1, "{r}");
    assert_eq!(r["data"]["c"]["totalCount"], 0, "{r}");
    // Bad input is a typed error, not a 500.
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(filter:{targetType:\"\"}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("BAD_REQUEST"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "{auditLog(order:SIDEWAYS){totalCount}}",
        json!({}),
    )
    .await;
    assert!(r["errors"][0]["message"].is_string(), "{r}");

    // A user counts only its own devices; sessions stay admin-only.
    let r = gql(
        base,
        Some(&admin),
        "mutation{createPlan(input:{name:\"list\",priceCents:\"0\",durationDays:30,trafficLimitBytes:null,deviceLimit:3}){id}}",
        json!({}),
    )
    .await;
    let plan = r["data"]["createPlan"]["id"].clone();
    assert!(plan.is_string(), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": aid, "p": plan}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    for name in ["a", "b"] {
        let r = gql(
            base,
            Some(&admin),
            "mutation($n:String!){registerDevice(name:$n,platform:\"linux\"){device{id}}}",
            json!({"n": name}),
        )
        .await;
        assert!(r["errors"].is_null(), "{r}");
    }
    // (A role change ends the account's earlier tokens: a fresh account.)
    let (_, utok) = account(&server, Role::User).await;
    let r = gql(
        base,
        Some(&utok),
        "{devices{totalCount} subscriptions{totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["devices"]["totalCount"], 0, "{r}");
    assert_eq!(r["data"]["subscriptions"]["totalCount"], 0, "{r}");
    let r = gql(
        base,
        Some(&admin),
        "{devices{totalCount} subscriptions{totalCount} revoked:devices(filter:{status:REVOKED}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["devices"]["totalCount"], 2, "{r}");
    assert_eq!(r["data"]["subscriptions"]["totalCount"], 1, "{r}");
    assert_eq!(r["data"]["revoked"]["totalCount"], 0, "{r}");
    let r = gql(
        base,
        Some(&utok),
        "{sessions(order:NEWEST_FIRST){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "{sessions(order:NEWEST_FIRST,filter:{open:true}){totalCount nodes{id}}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["sessions"]["totalCount"], 0, "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_trail_names_its_kind_on_postgres() {
    a_nodes_trail_names_its_kind(TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_trail_names_its_kind_on_sqlite() {
    a_nodes_trail_names_its_kind(TestDb::sqlite().await).await;
}

/// Every audited change of a node (registration, status, token, deletion)
/// records the kind its registration recorded, so filtering by
/// `gateway_node` gives a gateway's whole trail and nothing of a node's.
async fn a_nodes_trail_names_its_kind(t: TestDb) {
    let server = TestServer::start(t.dsn.clone(), false).await;
    let base = &server.base;
    let (_, admin) = account(&server, Role::Admin).await;
    let ok = |r: &Value| assert!(r["errors"].is_null(), "{r}");
    ok(&gql(
        base,
        Some(&admin),
        "mutation{createRegion(code:\"lt\",name:\"Trail\"){code}}",
        json!({}),
    )
    .await);
    let r = gql(
        base,
        Some(&admin),
        "mutation{registerGatewayNode(input:{region:\"lt\",name:\"gw\",publicUrl:\"https://gw.example.com\"}){node{id}}}",
        json!({}),
    )
    .await;
    let gateway = r["data"]["registerGatewayNode"]["node"]["id"].clone();
    assert!(gateway.is_string(), "{r}");
    let r = gql(
        base,
        Some(&admin),
        "mutation{registerOutlineNode(input:{region:\"lt\",name:\"n\",host:\"10.1.0.1\",port:8388}){node{id}}}",
        json!({}),
    )
    .await;
    let node = r["data"]["registerOutlineNode"]["node"]["id"].clone();
    assert!(node.is_string(), "{r}");
    for id in [&gateway, &node] {
        for change in [
            "mutation($i:UUID!){setNodeStatus(id:$i,status:DISABLED){__typename}}",
            "mutation($i:UUID!){rotateNodeToken(id:$i)}",
            "mutation($i:UUID!){deleteNode(id:$i)}",
        ] {
            ok(&gql(base, Some(&admin), change, json!({"i": id})).await);
        }
    }
    let trail =
        "query($t:UUID!){auditLog(first:10,filter:{targetId:$t}){nodes{action targetType}}}";
    for (id, kind) in [(&gateway, "gateway_node"), (&node, "outline_node")] {
        let r = gql(base, Some(&admin), trail, json!({"t": id})).await;
        let entries = r["data"]["auditLog"]["nodes"].as_array().expect("entries");
        let actions: Vec<&str> = entries
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(
            actions.len(),
            4,
            "registration, status, token, deletion: {r}"
        );
        for e in entries {
            assert_eq!(e["targetType"], kind, "{r}");
        }
    }
    let r = gql(
        base,
        Some(&admin),
        "{g:auditLog(filter:{targetType:\"gateway_node\"}){totalCount} n:auditLog(filter:{targetType:\"outline_node\"}){totalCount} x:auditLog(filter:{targetType:\"node\"}){totalCount}}",
        json!({}),
    )
    .await;
    assert_eq!(r["data"]["g"]["totalCount"], 4, "{r}");
    assert_eq!(r["data"]["n"]["totalCount"], 4, "{r}");
    assert_eq!(r["data"]["x"]["totalCount"], 0, "{r}");
}
