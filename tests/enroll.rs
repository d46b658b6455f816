//! Enrollment end to end with the real binaries: `httvps node add` /
//! `httvps gateway add` print a one-time string; `httvps-relay node|gateway
//! --enroll` redeem it on first start into an owner-only credentials file
//! and run; the same string is refused a second time, and any string after
//! 24 h unless redeemed or used before; rotation gives a new
//! string and retires the stored token; removal retires it too.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use httvps_dataplane::backend::{Backend, BackendError};
use httvps_wire::enroll::Enrollment;
use plane::Plane;
use serde_json::json;

/// Runs `httvps ARGS` against the plane's database.
fn run_httvps(plane: &Plane, args: &[&str]) -> std::process::Output {
    common::httvps_cmd()
        .args(args)
        .env("BACKEND_DB_DSN", plane._db.url())
        .env("BACKEND_PUBLIC_URL", &plane.server.base)
        .stdin(Stdio::null())
        .output()
        .expect("httvps")
}

/// Runs `httvps ARGS` against the plane's database, which must succeed;
/// returns its stdout's last line (the enrollment string or the
/// confirmation).
fn httvps(plane: &Plane, args: &[&str]) -> String {
    let out = run_httvps(plane, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "httvps {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().last().unwrap_or_default().trim().to_owned()
}

fn relay(args: &[&str], log: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"));
    c.args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map(Stdio::from).expect("log"))
        .kill_on_drop(true);
    c
}

/// `httvps-relay node --enroll STRING` on 127.0.0.1:`port`, keeping its
/// credentials in `creds`.
fn enrolled_node(string: &str, creds: &Path, port: u16, log: &Path) -> tokio::process::Child {
    relay(
        &[
            "node",
            "--enroll",
            string,
            "--credentials",
            creds.to_str().expect("path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-private",
        ],
        log,
    )
    .spawn()
    .expect("node")
}

/// Waits until `query`'s nodes include one named `name` with health up.
async fn wait_up(plane: &Plane, list: &str, name: &str, log: &Path) {
    for _ in 0..150 {
        let r = plane
            .gql(
                &format!("{{{list}{{edges{{node{{name health}}}}}}}}"),
                json!({}),
            )
            .await;
        if r["data"][list]["edges"].as_array().is_some_and(|e| {
            e.iter()
                .any(|n| n["node"]["name"] == name && n["node"]["health"] == "up")
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} never came up: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The token stored in a credentials file.
fn stored_token(file: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).expect("credentials")).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

async fn config_with(base: &str, token: &str) -> Result<(), BackendError> {
    Backend::new(base, token)
        .expect("backend")
        .outline_config()
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_gateways_enroll_once_with_the_printed_string() {
    let (plane, _listener) = Plane::prepare(0).await;
    let dir = common::tempdir::TempDir::new();
    let d = dir.path();
    let port = common::stable_port();

    // The node.
    let s = httvps(
        &plane,
        &[
            "node",
            "add",
            "--region",
            "eu",
            "--name",
            "n1",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ],
    );
    let e = Enrollment::decode(&s).expect("an enrollment string");
    assert_eq!(
        (e.kind.as_str(), e.url.as_str()),
        ("node", plane.server.base.as_str())
    );
    let creds = d.join("state/node.json");
    let log = d.join("node.log");
    let mut node = enrolled_node(&s, &creds, port, &log);
    wait_up(&plane, "outlineNodes", "n1", &log).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&creds)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "credentials readable by others");
    }
    let token = stored_token(&creds);
    assert_ne!(token, e.token.expose(), "the one-time token was kept");
    // The one-time token is spent: the same string is refused.
    let again = relay(
        &[
            "node",
            "--enroll",
            &s,
            "--credentials",
            d.join("other.json").to_str().expect("path"),
        ],
        &d.join("again.log"),
    )
    .status()
    .await
    .expect("run");
    assert!(!again.success());
    let said = std::fs::read_to_string(d.join("again.log")).unwrap_or_default();
    assert!(
        said.contains("NODE_ENROLL") && said.contains("refused"),
        "{said}"
    );
    assert!(!d.join("other.json").exists());
    assert!(matches!(
        config_with(&plane.server.base, e.token.expose()).await,
        Err(BackendError::Status { status: 401, .. })
    ));
    // Later starts need only the file.
    let out = relay(
        &[
            "node",
            "--check",
            "--credentials",
            creds.to_str().expect("path"),
        ],
        &d.join("check.log"),
    )
    .status()
    .await
    .expect("run");
    assert!(out.success());
    config_with(&plane.server.base, &token)
        .await
        .expect("stored token works");
    // A control plane URL given beside the file is not taken over the
    // one the file was enrolled with, but it is said.
    let out = relay(
        &[
            "node",
            "--check",
            "--backend",
            "http://127.0.0.1:1",
            "--credentials",
            creds.to_str().expect("path"),
        ],
        &d.join("check-other-url.log"),
    )
    .status()
    .await
    .expect("run");
    let said = std::fs::read_to_string(d.join("check-other-url.log")).unwrap_or_default();
    assert!(out.success(), "{said}");
    assert!(
        said.contains("NODE_BACKEND_URL differs") && said.contains("http://127.0.0.1:1"),
        "{said}"
    );
    // As does a first start from the string: its URL is taken, another
    // given beside it is said.
    let out = relay(
        &[
            "node",
            "--check",
            "--enroll",
            &s,
            "--backend",
            "http://127.0.0.1:1",
            "--credentials",
            d.join("never-written.json").to_str().expect("path"),
        ],
        &d.join("check-first-other-url.log"),
    )
    .status()
    .await
    .expect("run");
    let said = std::fs::read_to_string(d.join("check-first-other-url.log")).unwrap_or_default();
    assert!(out.success(), "{said}");
    assert!(
        said.contains(
            "NODE_BACKEND_URL differs from the control plane the enrollment string names"
        ),
        "{said}"
    );
    // So do restarts with the settings unchanged: the file remembers the
    // string it came from, and the spent string is not tried again.
    let out = relay(
        &[
            "node",
            "--check",
            "--enroll",
            &s,
            "--credentials",
            creds.to_str().expect("path"),
        ],
        &d.join("check-same.log"),
    )
    .status()
    .await
    .expect("run");
    assert!(
        out.success(),
        "{}",
        std::fs::read_to_string(d.join("check-same.log")).unwrap_or_default()
    );
    let _ = node.start_kill();
    let _ = node.wait().await;

    // Rotation: a new string; the stored token stops working.
    let r = plane
        .gql("{outlineNodes{edges{node{id name}}}}", json!({}))
        .await;
    let id = r["data"]["outlineNodes"]["edges"]
        .as_array()
        .and_then(|e| e.iter().find(|n| n["node"]["name"] == "n1"))
        .and_then(|n| n["node"]["id"].as_str())
        .expect("node id")
        .to_owned();
    // A lifetime out of range is refused before anything changes.
    let refused = run_httvps(&plane, &["node", "rotate", &id, "--ttl-hours", "0"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--ttl-hours"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    config_with(&plane.server.base, &token)
        .await
        .expect("a refused rotation leaves the token");
    let rotated = httvps(&plane, &["node", "rotate", &id, "--ttl-hours", "3"]);
    assert_ne!(rotated, s);
    assert_left(
        &expiry(&plane.server.base, &plane.admin, "outlineNodes", "n1").await,
        chrono::TimeDelta::hours(3),
    );
    assert!(matches!(
        config_with(&plane.server.base, &token).await,
        Err(BackendError::Status { status: 401, .. })
    ));
    // Started with the new string beside the old file, the node redeems
    // it and replaces the file.
    let log = d.join("node-rotated.log");
    let mut node = enrolled_node(&rotated, &creds, port, &log);
    let mut renewed = token.clone();
    for _ in 0..150 {
        renewed = stored_token(&creds);
        if renewed != token {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        renewed,
        token,
        "the rotated string was not redeemed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    config_with(&plane.server.base, &renewed)
        .await
        .expect("the renewed token works");
    let fresh = Enrollment::decode(&rotated).expect("string");
    assert!(
        Backend::new(&plane.server.base, fresh.token.expose())
            .expect("backend")
            .enroll()
            .await
            .is_err(),
        "the rotated string is spent"
    );
    let _ = node.start_kill();
    let _ = node.wait().await;
    // A file written before files remembered their string, started with
    // that (spent) string: the stored token stands, and the string is
    // remembered so the next start does not try it again.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds).expect("credentials")).expect("json");
    v.as_object_mut().expect("object").remove("enrollment");
    std::fs::write(&creds, serde_json::to_vec(&v).expect("json")).expect("write");
    let log = d.join("node-old-file.log");
    let mut node = enrolled_node(&rotated, &creds, port, &log);
    let mut remembered = serde_json::Value::Null;
    for _ in 0..150 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&creds).expect("credentials")).expect("json");
        if v["enrollment"].is_string() {
            remembered = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        remembered["enrollment"].is_string(),
        "the spent string was not remembered: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(remembered["token"].as_str(), Some(renewed.as_str()));
    assert!(node.try_wait().expect("wait").is_none(), "the node runs on");
    let _ = node.start_kill();
    let _ = node.wait().await;

    // The gateway.
    let gw_port = common::stable_port();
    let public = format!("https://localhost:{gw_port}");
    let s = httvps(
        &plane,
        &[
            "gateway",
            "add",
            "--region",
            "eu",
            "--name",
            "gw-enrolled",
            "--public-url",
            &public,
        ],
    );
    let gw_creds = d.join("gw.json");
    let log = d.join("gateway.log");
    // A start that its own settings end (no public URL, a port in use, a
    // spool in a directory it may not write in: /proc/sys, which not even
    // root may create files in) leaves the string unspent: it is redeemed
    // after they are checked.
    let mistaken = d.join("gw-mistaken.json");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_at = taken.local_addr().expect("addr").to_string();
    let (cert, key) = (d.join("gw.crt"), d.join("gw.key"));
    let at = format!("127.0.0.1:{gw_port}");
    for (listen, admin, public, named) in [
        (at.as_str(), "127.0.0.1:0", None, "GATEWAY_PUBLIC_URL"),
        (
            at.as_str(),
            "127.0.0.1:0",
            Some(public.as_str()),
            "GATEWAY_SPOOL (--spool): /proc/sys is not writable",
        ),
        (
            taken_at.as_str(),
            "127.0.0.1:0",
            Some(public.as_str()),
            "GATEWAY_LISTEN",
        ),
        // Both ports set alike: each alone is free.
        (
            at.as_str(),
            at.as_str(),
            Some(public.as_str()),
            "GATEWAY_ADMIN_LISTEN",
        ),
    ] {
        let mut args = vec![
            "gateway",
            "--enroll",
            &s,
            "--credentials",
            mistaken.to_str().expect("path"),
            "--listen",
            listen,
            "--admin-listen",
            admin,
            "--self-signed",
            "--cert",
            cert.to_str().expect("path"),
            "--key",
            key.to_str().expect("path"),
        ];
        args.extend(public.map(|p| ["--public-url", p]).into_iter().flatten());
        if named.starts_with("GATEWAY_SPOOL") {
            args.extend(["--spool", "/proc/sys/httvps-spool.json"]);
        }
        let out = relay(&args, &log).status().await.expect("gateway");
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!out.success() && said.contains(named), "{said}");
        assert!(!mistaken.exists(), "nothing redeemed: {said}");
    }
    drop(taken);
    let mut gateway = relay(
        &[
            "gateway",
            "--enroll",
            &s,
            "--credentials",
            gw_creds.to_str().expect("path"),
            "--listen",
            &format!("127.0.0.1:{gw_port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--self-signed",
            "--cert",
            d.join("gw.crt").to_str().expect("path"),
            "--key",
            d.join("gw.key").to_str().expect("path"),
            "--public-url",
            &public,
        ],
        &log,
    )
    .spawn()
    .expect("gateway");
    wait_up(&plane, "gatewayNodes", "gw-enrolled", &log).await;
    let _ = gateway.start_kill();
    let _ = gateway.wait().await;
    // Removal retires its token.
    let r = plane
        .gql("{gatewayNodes{edges{node{id name}}}}", json!({}))
        .await;
    let gw_id = r["data"]["gatewayNodes"]["edges"]
        .as_array()
        .and_then(|e| e.iter().find(|n| n["node"]["name"] == "gw-enrolled"))
        .and_then(|n| n["node"]["id"].as_str())
        .expect("gateway id")
        .to_owned();
    // An update changes the URL handed out from now on; a bad URL is
    // refused with its flag named, and changes nothing.
    let updated = httvps(
        &plane,
        &[
            "gateway",
            "update",
            &gw_id,
            "--public-url",
            "https://gw9.example.com",
        ],
    );
    assert!(updated.contains("https://gw9.example.com"), "{updated}");
    let refused = run_httvps(
        &plane,
        &["gateway", "update", &gw_id, "--public-url", "gw9"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--public-url must"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let r = plane
        .gql("{gatewayNodes{edges{node{id publicUrl}}}}", json!({}))
        .await;
    assert!(
        r["data"]["gatewayNodes"]["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|n| n["node"]["id"] == gw_id.as_str()
                && n["node"]["publicUrl"] == "https://gw9.example.com")),
        "{r}"
    );
    let wrong = run_httvps(&plane, &["node", "update", &gw_id, "--capacity", "5"]);
    assert!(
        !wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("not found"),
        "a gateway's id is no Outline node's: {}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(httvps(&plane, &["gateway", "remove", &gw_id]).starts_with("removed"));
    let beat = Backend::new(&plane.server.base, &stored_token(&gw_creds))
        .expect("backend")
        .gateway_heartbeat(&Default::default())
        .await;
    assert!(
        matches!(beat, Err(BackendError::Status { status: 401, .. })),
        "{beat:?}"
    );
}

/// `node update` refuses what it cannot apply, naming it, and changes
/// nothing: no change at all, a port out of range (`-1` read as a value,
/// not as a flag); `rotate` and `remove` refuse the other kind's ids; and
/// every machine or device command refuses an SQLite DSN with no database
/// there instead of creating an empty one.
#[tokio::test(flavor = "multi_thread")]
async fn cli_updates_refuse_what_they_cannot_apply() {
    let (plane, _listener) = Plane::prepare(1).await;
    let (id, port) = (plane.nodes[0].0.clone(), plane.nodes[0].1.addr.port());
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    for (args, says) in [
        (vec!["node", "update", &id], "required arguments"),
        (
            vec!["node", "update", &id, "--port", "-1"],
            "between 1 and 65535",
        ),
        (
            vec!["node", "update", &id, "--port", "70000"],
            "between 1 and 65535",
        ),
        (
            vec!["node", "update", &id, "--port", "0"],
            "between 1 and 65535",
        ),
    ] {
        let out = run_httvps(&plane, &args);
        assert!(
            !out.status.success() && stderr(&out).contains(says),
            "httvps {args:?}: {}",
            stderr(&out)
        );
    }
    let r = plane
        .gql("{outlineNodes{edges{node{id port}}}}", json!({}))
        .await;
    assert!(
        r["data"]["outlineNodes"]["edges"]
            .as_array()
            .is_some_and(|e| e
                .iter()
                .any(|n| n["node"]["id"] == id.as_str() && n["node"]["port"] == i64::from(port))),
        "the refused updates changed the node: {r}"
    );

    // Rotation and removal act on the kind the command names only: a
    // node's id is no gateway's, and the other way round.
    let r = plane
        .gql("{gatewayNodes{edges{node{id}}}}", json!({}))
        .await;
    let gw = r["data"]["gatewayNodes"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for (args, says) in [
        (vec!["gateway", "rotate", &id], "gateway not found"),
        (vec!["gateway", "remove", &id], "gateway not found"),
        (vec!["node", "rotate", &gw], "outline node not found"),
        (vec!["node", "remove", &gw], "outline node not found"),
    ] {
        let out = run_httvps(&plane, &args);
        assert!(
            !out.status.success() && stderr(&out).contains(says),
            "httvps {args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        plane
            .scalar("SELECT count(*) AS n FROM outline_nodes")
            .await,
        1
    );
    assert_eq!(
        plane
            .scalar("SELECT count(*) AS n FROM gateway_nodes")
            .await,
        1
    );
    let audited = plane
        .scalar("SELECT count(*) AS n FROM audit_log WHERE action = 'rotate_node_token'")
        .await;
    assert_eq!(audited, 0, "a refused rotation replaced a token");

    let dir = common::tempdir::TempDir::new();
    // A gateway started with a token the control plane refuses, or with a
    // node's, ends at once, saying so, as a node does (it could never
    // serve a tunnel).
    let r = plane
        .gql(
            "mutation{registerOutlineNode(input:{region:\"eu\",name:\"not-a-gateway\",host:\"127.0.0.1\",port:9}){token}}",
            json!({}),
        )
        .await;
    let node_token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    for (token, says) in [
        (
            "bogus-token-abcdefghijklmnopqrstuvwxyz",
            "removed, rotated or mistyped",
        ),
        (node_token.as_str(), "it is not a gateway's"),
    ] {
        let log = dir.path().join("refused-gateway.log");
        let run = relay(
            &[
                "gateway",
                "--backend",
                &plane.server.base,
                "--token",
                token,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--self-signed",
                "--cert",
                dir.path().join("gw.crt").to_str().expect("path"),
                "--key",
                dir.path().join("gw.key").to_str().expect("path"),
                "--data-dir",
                dir.path().to_str().expect("path"),
                "--public-url",
                "https://localhost:1",
            ],
            &log,
        )
        .status();
        let status = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the gateway ended within 30 s")
            .expect("status");
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !status.success() && said.contains(says),
            "{status:?}: {said}"
        );
    }
    let absent = dir.path().join("absent.db");
    let dsn = format!("sqlite://{}", absent.display());
    for args in [
        vec!["node", "update", &id, "--port", "5"],
        vec!["gateway", "remove", &id],
        vec!["device", "revoke", &id],
    ] {
        let out = common::httvps_cmd()
            .args(&args)
            .env("BACKEND_DB_DSN", &dsn)
            .stdin(Stdio::null())
            .output()
            .expect("httvps");
        assert!(
            !out.status.success() && stderr(&out).contains("no database at"),
            "httvps {args:?} on a missing SQLite file: {}",
            stderr(&out)
        );
        assert!(
            !absent.exists(),
            "httvps {args:?} created {}",
            absent.display()
        );
    }
}

/// A control plane on `db` (enrollment strings naming `enroll`, when
/// given) serving on 127.0.0.1: its base URL, an admin's access token and
/// its state.
async fn control_plane(
    db: &common::TestDb,
    enroll: Option<httvps_control::nodes::enrollment::EnrollTarget>,
) -> (String, String, httvps_control::state::AppState) {
    use httvps_control::accounts::{self, Role};
    let mut settings = common::settings(db.dsn.clone(), false);
    settings.enroll = enroll;
    let state = httvps_control::app::prepare(&settings)
        .await
        .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let st = state.clone();
    tokio::spawn(async move {
        let _ = httvps_control::http::serve(listener, st, std::future::pending::<()>()).await;
    });
    accounts::create_user(&state.db, "root@example.com", plane::PASSWORD, Role::Admin)
        .await
        .expect("admin");
    let admin = plane::login(&base, "root@example.com").await;
    (base, admin, state)
}

#[tokio::test(flavor = "multi_thread")]
async fn graphql_registrations_return_the_same_string_for_dashboards() {
    use httvps_control::nodes::enrollment::EnrollTarget;
    let db = common::TestDb::pg().await;
    let pin = format!("sha256:{}", "5a".repeat(32));
    let (base, admin, _state) = control_plane(
        &db,
        Some(EnrollTarget {
            url: "https://cp.example.com".into(),
            pin: Some(pin.clone()),
        }),
    )
    .await;
    let gql = |q: &'static str| {
        let (base, admin) = (base.clone(), admin.clone());
        async move { common::gql(&base, Some(&admin), q, json!({})).await }
    };
    gql("mutation{createRegion(code:\"eu\",name:\"EU\"){id}}").await;
    let r = gql("mutation{registerGatewayNode(input:{region:\"eu\",name:\"gw\",publicUrl:\"https://gw.example.com\"}){token enrollment}}").await;
    let g = &r["data"]["registerGatewayNode"];
    let e = Enrollment::decode(g["enrollment"].as_str().unwrap_or_else(|| panic!("{r}")))
        .expect("string");
    assert_eq!(e.kind, "gateway");
    assert_eq!(e.url, "https://cp.example.com");
    assert_eq!(e.pin.as_deref(), Some(pin.as_str()));
    assert_eq!(Some(e.token.expose()), g["token"].as_str());
    let r = gql("mutation{registerOutlineNode(input:{region:\"eu\",name:\"n\",host:\"10.0.0.5\",port:8388}){enrollment}}").await;
    let e = Enrollment::decode(
        r["data"]["registerOutlineNode"]["enrollment"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}")),
    )
    .expect("string");
    assert_eq!(e.kind, "node");
    // The string's token redeems once (here, at the address the test
    // reaches), for its own kind of machine: a gateway presenting a node's
    // string is refused (403), and the string stays unspent; a kind that
    // is neither is a client mistake.
    let b = Backend::new(&base, e.token.expose()).expect("backend");
    match b.enroll_as("gateway").await {
        Err(BackendError::Status {
            status: 403,
            message,
            ..
        }) => assert!(message.contains("a node's, not a gateway's"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.enroll_as("router").await,
        Err(BackendError::Status { status: 400, .. })
    ));
    let enrolled = b.enroll_as("node").await.expect("redeems");
    assert_eq!(enrolled.kind, "node");
    assert!(matches!(
        b.enroll().await,
        Err(BackendError::Status { status: 401, .. })
    ));
    // The machine's own token is not a string: it does not redeem (which
    // would let whoever holds it re-key the machine), and keeps working.
    let own = Backend::new(&base, enrolled.token.expose()).expect("backend");
    assert!(matches!(
        own.enroll().await,
        Err(BackendError::Status { status: 401, .. })
    ));
    config_with(&base, enrolled.token.expose())
        .await
        .expect("the machine's token still works");
    // A rotation gives a new token with its string, of the machine's own
    // kind: the old token stops working, the string redeems once.
    const ROTATE: &str = "mutation($id:UUID!){rotateNodeEnrollment(id:$id,enrollmentTtlHours:2){token enrollment kind}}";
    let nodes = common::gql(
        &base,
        Some(&admin),
        "{outlineNodes{edges{node{id}}} gatewayNodes{edges{node{id}}}}",
        json!({}),
    )
    .await;
    for (list, kind, of) in [
        ("outlineNodes", "OUTLINE", "node"),
        ("gatewayNodes", "GATEWAY", "gateway"),
    ] {
        let id = nodes["data"][list]["edges"][0]["node"]["id"].clone();
        let r = common::gql(&base, Some(&admin), ROTATE, json!({ "id": id })).await;
        let rotated = &r["data"]["rotateNodeEnrollment"];
        assert_eq!(rotated["kind"], kind, "{r}");
        let e = Enrollment::decode(
            rotated["enrollment"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}")),
        )
        .expect("string");
        assert_eq!(
            (e.kind.as_str(), e.url.as_str()),
            (of, "https://cp.example.com")
        );
        assert_eq!(e.pin.as_deref(), Some(pin.as_str()));
        assert_eq!(Some(e.token.expose()), rotated["token"].as_str());
        let again = Backend::new(&base, e.token.expose()).expect("backend");
        assert_eq!(again.enroll_as(of).await.expect("redeems").kind, of);
    }
    assert!(
        config_with(&base, enrolled.token.expose()).await.is_err(),
        "the node's token before the rotation still works"
    );
    // Unknown ids and subscribers are refused as for rotateNodeToken.
    let r = common::gql(
        &base,
        Some(&admin),
        ROTATE,
        json!({ "id": uuid::Uuid::new_v4() }),
    )
    .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "NOT_FOUND", "{r}");
    let r = common::gql(&base, None, ROTATE, json!({ "id": uuid::Uuid::new_v4() })).await;
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{r}"
    );
}

/// `enrollmentExpiresAt` of the machine `name` in `list`
/// (`gatewayNodes` or `outlineNodes`), null when it has none.
async fn expiry(base: &str, admin: &str, list: &str, name: &str) -> serde_json::Value {
    let q = format!("{{{list}{{edges{{node{{name enrollmentExpiresAt}}}}}}}}");
    let r = common::gql(base, Some(admin), &q, json!({})).await;
    r["data"][list]["edges"]
        .as_array()
        .and_then(|e| e.iter().find(|n| n["node"]["name"] == name))
        .map(|n| n["node"]["enrollmentExpiresAt"].clone())
        .unwrap_or_else(|| panic!("{name} in {r}"))
}

/// `until` (an RFC 3339 time) is `want` from now, give or take the
/// test's own time.
fn assert_left(until: &serde_json::Value, want: chrono::TimeDelta) {
    let until = chrono::DateTime::parse_from_rfc3339(until.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc);
    let left = until - chrono::Utc::now();
    assert!(
        left > want - chrono::TimeDelta::minutes(2) && left <= want,
        "{left:?} left, {want:?} wanted"
    );
}

/// Moves every pending enrollment of both machine tables into the past.
async fn expire_pending(db: &httvps_control::db::Db) -> httvps_control::error::AppResult<()> {
    use diesel_async::RunQueryDsl;
    for table in ["gateway_nodes", "outline_nodes"] {
        let q = format!(
            "UPDATE {table} SET enroll_expires_at = '2000-01-01 00:00:00' WHERE enroll_expires_at IS NOT NULL"
        );
        httvps_control::db_run!(db, |conn| diesel::sql_query(&q).execute(conn).await?);
    }
    Ok(())
}

/// An enrollment string is good for 24 h unless redeemed or used as the
/// machine's own token before; an expired one is refused (401) as a
/// spent one is and changes nothing; `rotate` gives a fresh one.
async fn strings_expire_on(db: common::TestDb) {
    let (base, admin, state) = control_plane(&db, None).await;
    let gql = |q: String| {
        let (base, admin) = (base.clone(), admin.clone());
        async move { common::gql(&base, Some(&admin), &q, json!({})).await }
    };
    gql("mutation{createRegion(code:\"eu\",name:\"EU\"){id}}".into()).await;
    let mut tokens = Vec::new();
    for name in ["used", "forgotten"] {
        let r = gql(format!("mutation{{registerGatewayNode(input:{{region:\"eu\",name:\"{name}\",publicUrl:\"https://{name}.example.com\"}}){{token}}}}")).await;
        tokens.push(
            r["data"]["registerGatewayNode"]["token"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
        );
    }
    let r = gql("mutation{registerOutlineNode(input:{region:\"eu\",name:\"n\",host:\"10.0.0.5\",port:8388}){token node{id}}}".into()).await;
    let node_token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let node_id = r["data"]["registerOutlineNode"]["node"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Printed now, good for 24 h.
    assert_left(
        &expiry(&base, &admin, "gatewayNodes", "used").await,
        chrono::TimeDelta::hours(24),
    );

    // Or for the hours the operator chose, 1 to 720: beyond that the
    // mutation is refused and nothing is made or changed.
    let r = gql("mutation{registerGatewayNode(input:{region:\"eu\",name:\"brief\",publicUrl:\"https://brief.example.com\",enrollmentTtlHours:2}){token}}".into()).await;
    assert!(r["data"]["registerGatewayNode"]["token"].is_string(), "{r}");
    assert_left(
        &expiry(&base, &admin, "gatewayNodes", "brief").await,
        chrono::TimeDelta::hours(2),
    );
    for hours in [0, 721, -5] {
        let r = gql(format!("mutation{{registerOutlineNode(input:{{region:\"eu\",name:\"n{hours}\",host:\"10.0.0.6\",port:8388,enrollmentTtlHours:{hours}}}){{token}}}}")).await;
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_REQUEST",
            "{hours}: {r}"
        );
        let r = gql(format!(
            "mutation{{rotateNodeToken(id:\"{node_id}\",enrollmentTtlHours:{hours})}}"
        ))
        .await;
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "BAD_REQUEST",
            "{hours}: {r}"
        );
    }
    let r = gql("{outlineNodes{edges{node{name}}}}".into()).await;
    assert_eq!(
        r["data"]["outlineNodes"]["edges"].as_array().map(Vec::len),
        Some(1),
        "a refused registration made a node: {r}"
    );
    config_with(&base, &node_token)
        .await
        .expect("a refused rotation leaves the token");
    // That first use enrolled the node: rotate for a string to expire.
    let r = gql(format!(
        "mutation{{rotateNodeToken(id:\"{node_id}\",enrollmentTtlHours:1)}}"
    ))
    .await;
    let node_token = r["data"]["rotateNodeToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    assert_left(
        &expiry(&base, &admin, "outlineNodes", "n").await,
        chrono::TimeDelta::hours(1),
    );

    // A token used as the machine's own (`--token`) is enrolled by its
    // first use and no longer expires.
    let used = Backend::new(&base, &tokens[0]).expect("backend");
    used.gateway_heartbeat(&Default::default())
        .await
        .expect("the fresh token works");
    assert!(
        expiry(&base, &admin, "gatewayNodes", "used")
            .await
            .is_null()
    );

    // A day later, the strings nobody redeemed or used are refused,
    // whether redeemed or used directly, and stay as they were.
    expire_pending(&state.db).await.expect("backdating");
    let forgotten = Backend::new(&base, &tokens[1]).expect("backend");
    assert!(matches!(
        forgotten.enroll().await,
        Err(BackendError::Status { status: 401, .. })
    ));
    assert!(matches!(
        forgotten.gateway_heartbeat(&Default::default()).await,
        Err(BackendError::Status { status: 401, .. })
    ));
    assert!(
        expiry(&base, &admin, "gatewayNodes", "forgotten")
            .await
            .is_string(),
        "a refused string changed its machine"
    );
    let node = Backend::new(&base, &node_token).expect("backend");
    assert!(matches!(
        node.enroll().await,
        Err(BackendError::Status { status: 401, .. })
    ));
    used.gateway_heartbeat(&Default::default())
        .await
        .expect("an enrolled token does not expire");

    // Rotation prints a fresh string, which redeems.
    let r = gql(format!("mutation{{rotateNodeToken(id:\"{node_id}\")}}")).await;
    let rotated = r["data"]["rotateNodeToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(expiry(&base, &admin, "outlineNodes", "n").await.is_string());
    let enrolled = Backend::new(&base, rotated)
        .expect("backend")
        .enroll()
        .await
        .expect("the rotated string redeems");
    assert!(expiry(&base, &admin, "outlineNodes", "n").await.is_null());
    config_with(&base, enrolled.token.expose())
        .await
        .expect("the redeemed token works");
    // A token used as the machine's own (here, the first string's,
    // enrolled by its use) is not redeemed either.
    assert!(matches!(
        used.enroll().await,
        Err(BackendError::Status { status: 401, .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_strings_expire_unless_redeemed_or_used_first_on_postgres() {
    strings_expire_on(common::TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_strings_expire_unless_redeemed_or_used_first_on_sqlite() {
    strings_expire_on(common::TestDb::sqlite().await).await;
}

/// Rows a migration test inserts before the expiry migration: a region
/// and two gateways, one heard from and one never heard from.
const BEFORE_EXPIRY: [&str; 3] = [
    "INSERT INTO regions (id, code, name, pool_method, pool_secret, created_at) VALUES \
     ('7d0e3f0a-0000-4000-8000-000000000001', 'eu', 'EU', 'aes-256-gcm', 'a pool secret of 24 b', '2026-11-01 09:00:00')",
    "INSERT INTO gateway_nodes (id, region_id, name, public_url, token_hash, status, health, last_heartbeat_at, created_at, updated_at) VALUES \
     ('7d0e3f0a-0000-4000-8000-000000000002', '7d0e3f0a-0000-4000-8000-000000000001', 'running', 'https://a.example.com', 'h1', 'active', 'up', '2026-11-01 09:00:00', '2026-11-01 09:00:00', '2026-11-01 09:00:00')",
    "INSERT INTO gateway_nodes (id, region_id, name, public_url, token_hash, status, health, created_at, updated_at) VALUES \
     ('7d0e3f0a-0000-4000-8000-000000000003', '7d0e3f0a-0000-4000-8000-000000000001', 'never-started', 'https://b.example.com', 'h2', 'active', 'unknown', '2026-11-01 09:00:00', '2026-11-01 09:00:00')",
];

/// The expiry migration on `t` (fully migrated): reverted (with any
/// later ones), the rows of
/// [`BEFORE_EXPIRY`] written, applied again; the gateways as the code
/// reads them, by name.
async fn gateways_across_the_expiry_migration(
    t: &common::TestDb,
) -> Vec<(String, Option<chrono::NaiveDateTime>)> {
    use diesel_async::RunQueryDsl;
    use diesel_migrations::MigrationHarness;
    use httvps_control::db::{self, Dsn};
    const VERSION: &str = "20261203100001";
    let mut reverted;
    match &t.dsn {
        Dsn::Postgres(url) => {
            let conn =
                <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url)
                    .await
                    .expect("connect");
            let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
            reverted = 0;
            loop {
                reverted += 1;
                let v = harness
                    .revert_last_migration(db::PG_MIGRATIONS)
                    .expect("revert")
                    .to_string();
                if v == VERSION {
                    break;
                }
                assert!(v.as_str() > VERSION && reverted < 50, "reverted {v}");
            }
            let mut conn: diesel_async::AsyncPgConnection = harness.into_inner();
            for q in BEFORE_EXPIRY {
                diesel::sql_query(q).execute(&mut conn).await.expect(q);
            }
        }
        Dsn::Sqlite(path) => {
            use diesel::Connection;
            let mut conn = diesel::SqliteConnection::establish(path).expect("connect");
            reverted = 0;
            loop {
                reverted += 1;
                let v = conn
                    .revert_last_migration(db::SQLITE_MIGRATIONS)
                    .expect("revert")
                    .to_string();
                if v == VERSION {
                    break;
                }
                assert!(v.as_str() > VERSION && reverted < 50, "reverted {v}");
            }
            for q in BEFORE_EXPIRY {
                diesel::RunQueryDsl::execute(diesel::sql_query(q), &mut conn).expect(q);
            }
        }
    }
    assert_eq!(db::migrate(&t.dsn).await.expect("up again"), reverted);
    let pool = db::Db::connect(&t.dsn, 1).expect("pool");
    read_gateways(&pool).await.expect("gateways")
}

/// Every gateway's name and enrollment expiry, through the model.
async fn read_gateways(
    pool: &httvps_control::db::Db,
) -> httvps_control::error::AppResult<Vec<(String, Option<chrono::NaiveDateTime>)>> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use httvps_control::db::models::GatewayNode;
    use httvps_control::db::schema::gateway_nodes;
    let rows: Vec<GatewayNode> = httvps_control::db_run!(pool, |conn| gateway_nodes::table
        .select(GatewayNode::as_select())
        .order(gateway_nodes::name)
        .load(conn)
        .await?);
    Ok(rows
        .into_iter()
        .map(|g| (g.name, g.enroll_expires_at))
        .collect())
}

/// Machines never heard from before the upgrade get a day to enroll;
/// running ones keep their tokens as they are.
async fn expiry_migration_on(t: common::TestDb) {
    let rows = gateways_across_the_expiry_migration(&t).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1], ("running".to_owned(), None));
    assert_eq!(rows[0].0, "never-started");
    let until = rows[0]
        .1
        .expect("a deadline for the gateway never heard from");
    let left = until - chrono::Utc::now().naive_utc();
    assert!(
        left > chrono::TimeDelta::hours(23) && left <= chrono::TimeDelta::hours(24),
        "{left:?} left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_never_heard_from_get_a_day_to_enroll_after_the_upgrade_on_postgres() {
    expiry_migration_on(common::TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_never_heard_from_get_a_day_to_enroll_after_the_upgrade_on_sqlite() {
    expiry_migration_on(common::TestDb::sqlite().await).await;
}
