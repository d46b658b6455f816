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
    for s in ["machine_token", "device_jwt", "device_access_token"] {
        assert_eq!(schemes[s]["scheme"], "bearer", "{s}: {schemes}");
    }
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
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["OutlineBeat"]["properties"]["load"]["minimum"],
        0
    );
    server.stop().await;
}
