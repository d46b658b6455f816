//! Secrets cannot leak by accident: every data-plane type that holds one
//! (node keys, machine and device tokens, device JWTs) formats without it,
//! with `{:?}`, `{:#?}` and, where the type has one, `{}`. (The gateway's
//! cached route is checked beside it, in the crate; the relay's arguments
//! in the binary.)

use httvps_dataplane::backend::Backend;
use httvps_dataplane::{client, node};
use httvps_wire::Secret;
use httvps_wire::device::{AssignResponse, DeviceRequest, DeviceTokenResponse};
use httvps_wire::heartbeat::OutlineConfig;

const NODE_KEY: &str = "node-key-Zq8vX2mR7pL4wN8sT1yZ";
const TOKEN: &str = "tokenAAAAbbbbCCCCddddEEEEffffGGGGhhhhIIIIjj";
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXZpY2UifQ.c2lnbmF0dXJlLXNlY3JldA";

fn assert_hidden(what: &str, shown: &[String]) {
    for s in shown {
        for secret in [NODE_KEY, TOKEN, JWT] {
            assert!(!s.contains(secret), "{what} shows a secret: {s}");
        }
    }
}

fn debug(v: &impl std::fmt::Debug) -> Vec<String> {
    vec![format!("{v:?}"), format!("{v:#?}")]
}

#[test]
fn no_type_holding_a_secret_formats_it() {
    let secret = Secret::from(NODE_KEY);
    let mut shown = debug(&secret);
    shown.push(format!("{secret}"));
    shown.push(secret.to_string());
    assert_hidden("Secret", &shown);

    let assignment = AssignResponse {
        session_id: "s1".into(),
        host: Some("10.0.0.1".into()),
        port: Some(8388),
        node_id: Some("n1".into()),
        device_id: Some("d1".into()),
        gateway_url: None,
        method: "chacha20-ietf-poly1305".into(),
        password: NODE_KEY.into(),
        region: "eu".into(),
        pool_key: true,
        valid_until: None,
    };
    assert_hidden("AssignResponse", &debug(&assignment));
    let config = OutlineConfig {
        node_id: "n1".into(),
        host: "10.0.0.1".into(),
        port: 8388,
        method: "aes-256-gcm".into(),
        secret: NODE_KEY.into(),
        region: "eu".into(),
    };
    assert_hidden("OutlineConfig", &debug(&config));
    let minted = DeviceTokenResponse {
        token: JWT.into(),
        expires_in: 900,
    };
    assert_hidden("DeviceTokenResponse", &debug(&minted));
    let asked = DeviceRequest {
        device_token: Some(TOKEN.into()),
        device_jwt: Some(JWT.into()),
        region: None,
    };
    assert_hidden("DeviceRequest", &debug(&asked));

    let node_options = node::NodeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        method: node::parse_method("aes-128-gcm").expect("cipher"),
        password: NODE_KEY.into(),
        allow_private: false,
    };
    assert_hidden("NodeOptions", &debug(&node_options));
    let client_options = client::ClientOptions {
        backend: "http://127.0.0.1:8080".into(),
        device_token: TOKEN.into(),
        gateway: None,
        ca_cert: None,
        region: None,
        forward: None,
        link: Default::default(),
    };
    assert_hidden("ClientOptions", &debug(&client_options));
    for token in [TOKEN, JWT] {
        let backend = Backend::new("http://127.0.0.1:8080", token).expect("backend");
        assert_hidden("Backend", &debug(&backend));
    }
}

#[test]
fn the_wire_still_carries_them() {
    let config = OutlineConfig {
        node_id: "n1".into(),
        host: "10.0.0.1".into(),
        port: 8388,
        method: "aes-256-gcm".into(),
        secret: NODE_KEY.into(),
        region: "eu".into(),
    };
    let v = serde_json::to_value(&config).expect("json");
    assert_eq!(v["secret"], NODE_KEY, "the JSON is unchanged: {v}");
}
