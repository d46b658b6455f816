//! Secrets cannot leak by accident: every type that holds one formats
//! without it, with `{:?}`, `{:#?}` and, where the type has one, `{}`: in
//! the data plane (node keys, machine and device tokens, device JWTs) and
//! in the control plane (the signing secret, the database URL's password,
//! password hashes, token hashes, pool and node keys, access and refresh
//! tokens, the first admin's password), in its rows and in the GraphQL
//! payloads that hand a token out once or show a node's key. (The
//! gateway's cached route is checked beside it, in the crate; the relay's
//! arguments in the binary.)

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
        idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
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
        mux: false,
        mux_connections: client::DEFAULT_MUX_CONNECTIONS,
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

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
const DB_PASSWORD: &str = "db-password-Kp3xQ9vL";
const SIGNING_SECRET: &str = "signing-secret-0123456789-abcdefghijklmnop";
const TOKEN_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn assert_control_hidden(what: &str, shown: &[String]) {
    assert_hidden(what, shown);
    for s in shown {
        for secret in [PASSWORD_HASH, DB_PASSWORD, SIGNING_SECRET, TOKEN_HASH] {
            assert!(!s.contains(secret), "{what} shows a secret: {s}");
        }
    }
}

#[test]
fn no_control_plane_type_holding_a_secret_formats_it() {
    use httvps_control::config::{DbArgs, SecretKey, ServeArgs, Settings, ThrottleArgs};
    use httvps_control::db::Dsn;
    use httvps_control::db::models::{
        Device, GatewayNode, OutlineNode, RefreshToken, Region, SecretText, User,
    };
    use httvps_control::ids::{DeviceId, GatewayNodeId, OutlineNodeId, RegionId, UserId};
    use httvps_control::status::{DeviceStatus, Health, NodeStatus, Role, UserStatus};

    let ts = chrono::Utc::now().naive_utc();
    let dsn = format!("postgres://httvps:{DB_PASSWORD}@db.internal:5432/httvps");
    let db = DbArgs {
        db_dsn: Some(dsn.as_str().into()),
        db_pool_size: 16,
    };
    assert_control_hidden("DbArgs", &debug(&db));
    let serve = ServeArgs {
        db: db.clone(),
        secret_key: Some(SIGNING_SECRET.into()),
        host: "127.0.0.1".into(),
        port: "8000".into(),
        jwt_algorithm: "HS256".into(),
        jwt_expire_minutes: "15".into(),
        gateway_url: None,
        throttle: ThrottleArgs {
            throttle_window_secs: 60,
            login_per_account: 10,
            login_per_source: 30,
            signup_per_source: 10,
            refresh_per_source: 60,
            refresh_per_account: 30,
            unknown_tokens_per_source: 30,
            device_jwts_per_device: 60,
            client_ip_header: None,
        },
        http: httvps_control::config::HttpArgs {
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 8192,
            max_connections_per_source: 2048,
            ws_idle_secs: 60,
            metrics_token: Some(SIGNING_SECRET.into()),
        },
        tls_cert: None,
        tls_key: None,
        public_url: None,
        enroll_pin: None,
    };
    assert_control_hidden("ServeArgs", &debug(&serve));
    let settings = Settings::from_args(&serve, false).expect("settings");
    assert_control_hidden("Settings", &debug(&settings));
    let report = httvps::up::UpReport {
        settings: settings.clone(),
        new_admin: Some(("admin@localhost".into(), DB_PASSWORD.into())),
        data_dir: "data".into(),
    };
    assert_control_hidden("UpReport", &debug(&report));
    assert_control_hidden("Dsn", &debug(&Dsn::parse(&dsn).expect("dsn")));
    let key = SecretKey::new(SIGNING_SECRET.into());
    assert_control_hidden("SecretKey", &debug(&key));
    let jwt = httvps_control::auth::jwt::JwtKeys::new(&key, jsonwebtoken::Algorithm::HS256, 60);
    assert_control_hidden("JwtKeys", &debug(&jwt));

    let user = User {
        id: UserId::random(),
        email: "someone@example.com".into(),
        password_hash: PASSWORD_HASH.into(),
        role: Role::User,
        status: UserStatus::Active,
        token_version: 0,
        created_at: ts,
        updated_at: ts,
    };
    assert_control_hidden("User", &debug(&user));
    let tokens = httvps_control::accounts::Tokens {
        access_token: JWT.into(),
        refresh_token: TOKEN.into(),
        user: user.clone(),
    };
    assert_control_hidden("Tokens", &debug(&tokens));
    let region = Region {
        id: RegionId::random(),
        code: "eu".into(),
        name: "Europe".into(),
        pool_method: "aes-256-gcm".into(),
        pool_secret: NODE_KEY.into(),
        created_at: ts,
    };
    assert_control_hidden("Region", &debug(&region));
    let device = Device {
        id: DeviceId::random(),
        user_id: user.id,
        name: "phone".into(),
        platform: "android".into(),
        status: DeviceStatus::Active,
        token_hash: TOKEN_HASH.into(),
        last_seen_at: None,
        created_at: ts,
        revoked_at: None,
        over_limit: false,
    };
    assert_control_hidden("Device", &debug(&device));
    let node = OutlineNode {
        id: OutlineNodeId::random(),
        region_id: region.id,
        name: "n1".into(),
        host: "10.0.0.1".into(),
        port: 8388,
        method: "aes-256-gcm".into(),
        secret: NODE_KEY.into(),
        uses_pool_key: true,
        status: NodeStatus::Active,
        health: Health::Up,
        capacity: 100,
        token_hash: TOKEN_HASH.into(),
        last_heartbeat_at: None,
        load: 0,
        bytes_in: 0,
        bytes_out: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
        enroll_expires_at: None,
    };
    assert_control_hidden("OutlineNode", &debug(&node));
    let gateway = GatewayNode {
        id: GatewayNodeId::random(),
        region_id: region.id,
        name: "gw1".into(),
        public_url: "https://gw1.example.com".into(),
        token_hash: TOKEN_HASH.into(),
        status: NodeStatus::Active,
        health: Health::Up,
        last_heartbeat_at: None,
        open_tunnels: 0,
        version: None,
        created_at: ts,
        updated_at: ts,
        enroll_expires_at: None,
    };
    assert_control_hidden("GatewayNode", &debug(&gateway));
    let refresh = RefreshToken {
        id: "r1".into(),
        user_id: user.id,
        family_id: "f1".into(),
        token_hash: TOKEN_HASH.into(),
        expires_at: ts,
        used_at: None,
        revoked_at: None,
        created_at: ts,
    };
    assert_control_hidden("RefreshToken", &debug(&refresh));
    let new_node = httvps_control::nodes::NewOutlineNode {
        region: "eu".into(),
        name: "own".into(),
        host: "10.0.0.2".into(),
        port: 8388,
        method: Some("aes-256-gcm".into()),
        secret: Some(NODE_KEY.into()),
        capacity: 10,
    };
    assert_control_hidden("NewOutlineNode", &debug(&new_node));
    // What is not secret still shows, so the output stays useful.
    assert!(format!("{user:?}").contains("someone@example.com"));
    assert!(format!("{node:?}").contains("10.0.0.1"));

    // The column type itself, with `{}` too.
    for value in [PASSWORD_HASH, TOKEN_HASH, NODE_KEY] {
        let column = SecretText::from(value);
        let mut shown = debug(&column);
        shown.push(format!("{column}"));
        shown.push(column.to_string());
        assert_control_hidden("SecretText", &shown);
        assert_eq!(column.expose(), value);
    }

    // GraphQL payloads that hand a secret out once, or show a node's key.
    use httvps_control::graphql::{accounts, devices, nodes};
    let auth = accounts::AuthPayload::from(httvps_control::accounts::Tokens {
        access_token: JWT.into(),
        refresh_token: TOKEN.into(),
        user: user.clone(),
    });
    assert_control_hidden("AuthPayload", &debug(&auth));
    assert_eq!(auth.access_token.expose(), JWT);
    assert_eq!(auth.refresh_token.expose(), TOKEN);
    let links = httvps_control::devices::links::links("https://gw.example.com", &region, TOKEN)
        .expect("links");
    assert_control_hidden("AccessLinks", &debug(&links));
    assert!(links.ssconf.expose().ends_with(TOKEN));
    let credentials = devices::DeviceCredentials {
        device: device.clone().into(),
        access_token: TOKEN.into(),
        links: Some(links),
    };
    assert_control_hidden("DeviceCredentials", &debug(&credentials));
    let shown_node = nodes::OutlineNode::from(node.clone());
    assert_control_hidden("graphql OutlineNode", &debug(&shown_node));
    assert_eq!(shown_node.secret.expose(), NODE_KEY);
    let enrollment = format!("httvps-enroll:{TOKEN}");
    let registered = nodes::RegisteredOutlineNode {
        enrollment: Some(enrollment.as_str().into()),
        node: shown_node,
        token: TOKEN.into(),
    };
    assert_control_hidden("RegisteredOutlineNode", &debug(&registered));
    let registered = nodes::RegisteredGatewayNode {
        enrollment: Some(enrollment.as_str().into()),
        node: gateway.clone().into(),
        token: TOKEN.into(),
    };
    assert_control_hidden("RegisteredGatewayNode", &debug(&registered));
    assert!(format!("{registered:?}").contains("gw1.example.com"));
}
