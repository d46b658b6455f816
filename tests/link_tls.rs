//! TLS on the links between the planes: the control plane serves HTTPS
//! with a certificate from a private CA; a gateway (in process) and a node
//! (the real `httvps-relay node`) reach it with the CA pinned and carry a
//! tunnel end to end; a wrong pin is refused, and so is a plain http://
//! URL to a host that is not loopback; the control plane picks up a new
//! certificate when its files change and on SIGHUP.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use httvps_control::http;
use httvps_control::https::{TlsFiles, TlsFront};
use httvps_dataplane::backend::{Backend, BackendError};
use httvps_dataplane::link::{Link, Pin};
use plane::Plane;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;

/// A private CA: its PEM and pin, and what signs leaves.
struct Ca {
    pem: String,
    pin: Pin,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA");
    Ca {
        pem: cert.pem(),
        pin: Pin::of(cert.der()),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a leaf for 127.0.0.1 and localhost signed by `ca` to `dir`: the
/// chain (leaf, then the CA) and the key. Written to temporary names and
/// renamed, as a certificate tool replaces files.
fn write_leaf(ca: &Ca, dir: &Path) -> TlsFiles {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let leaf = params.signed_by(&key, &ca.issuer).expect("leaf");
    let files = TlsFiles {
        cert: dir.join("cp.crt"),
        key: dir.join("cp.key"),
    };
    std::fs::write(dir.join("cp.crt.new"), format!("{}{}", leaf.pem(), ca.pem)).expect("cert");
    std::fs::write(dir.join("cp.key.new"), key.serialize_pem()).expect("key");
    std::fs::rename(dir.join("cp.key.new"), &files.key).expect("rename");
    std::fs::rename(dir.join("cp.crt.new"), &files.cert).expect("rename");
    files
}

/// Serves the plane's control plane (same state) over HTTPS too; returns
/// its https:// base URL and the front (to reload).
async fn serve_https(plane: &Plane, files: TlsFiles) -> (String, TlsFront) {
    let front = TlsFront::load(files).expect("certificate");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let state = plane.server.state.clone();
    let tls = Some(front.clone());
    tokio::spawn(async move {
        let limits = httvps_control::config::HttpLimits::default();
        let _ = http::serve_with(tcp, state, limits, tls, std::future::pending::<()>()).await;
    });
    (format!("https://127.0.0.1:{port}"), front)
}

fn pinned(pin: Pin) -> Link {
    Link {
        pin: Some(pin),
        ..Link::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_node_use_a_pinned_private_ca() {
    let (mut plane, gw_listener) = Plane::prepare(0).await;
    let dir = common::tempdir::TempDir::new();
    let authority = ca("httvps test CA");
    let (base, _front) = serve_https(&plane, write_leaf(&authority, dir.path())).await;

    // The node: the real binary, over HTTPS with the CA pinned.
    let port = common::stable_port();
    let r = plane
        .gql(
            "mutation($p:Int!){registerOutlineNode(input:{region:\"eu\",name:\"tls-node\",host:\"127.0.0.1\",port:$p}){token node{id}}}",
            json!({"p": port}),
        )
        .await;
    let node_token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let log = dir.path().join("node.log");
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args(["node", "--backend", &base, "--token", &node_token])
        .args(["--backend-pin", &authority.pin.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--allow-private"])
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map(Stdio::from).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("httvps-relay node");
    // Up once its first heartbeat (over HTTPS) arrived.
    let mut up = false;
    for _ in 0..100 {
        let r = plane
            .gql("{outlineNodes{edges{node{name health}}}}", json!({}))
            .await;
        up = r["data"]["outlineNodes"]["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|n| n["node"]["health"] == "up"));
        if up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "the node did not heartbeat over HTTPS: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The gateway, in process, with the same pin; a tunnel goes through.
    let backend =
        Backend::connect(&base, &plane.gateway_token, &pinned(authority.pin)).expect("backend");
    plane.spawn_gateway_with(gw_listener, backend, &|_| {});
    let echo = plane::echo_server().await;
    let cipher = plane.cipher().await;
    let token = plane.device_token.clone();
    let ws = plane
        .ws_from(None, &format!("/ws/{token}/tcp"), None)
        .await
        .expect("tunnel admitted through a control plane reached over HTTPS");
    let mut ss = plane::ss_over(ws, &cipher, echo);
    assert!(plane::round_trip(&mut ss, b"over a pinned link").await);

    // The CA as a file (no pin) is trusted too; without it, the system's
    // roots do not know the private CA.
    std::fs::write(dir.path().join("ca.pem"), &authority.pem).expect("ca");
    let with_ca = Link {
        ca_file: Some(dir.path().join("ca.pem")),
        ..Link::default()
    };
    let b = Backend::connect(&base, &node_token, &with_ca).expect("backend");
    assert!(b.outline_config().await.is_ok());
    let b = Backend::connect(&base, &node_token, &Link::default()).expect("backend");
    assert!(matches!(
        b.outline_config().await,
        Err(BackendError::Unreachable(_))
    ));
    let _ = node.start_kill();
    let _ = node.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_pin_is_refused() {
    let (plane, _gw) = Plane::prepare(0).await;
    let dir = common::tempdir::TempDir::new();
    let authority = ca("httvps test CA");
    let (base, _front) = serve_https(&plane, write_leaf(&authority, dir.path())).await;
    let other = ca("another CA");
    let b = Backend::connect(&base, &plane.gateway_token, &pinned(other.pin)).expect("backend");
    let err = b
        .gateway_heartbeat(&Default::default())
        .await
        .expect_err("a wrong pin must not connect");
    assert!(err.to_string().contains("pin"), "{err}");
    // The binary says so at start and exits.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
        .args(["node", "--backend", &base, "--token", "t0k3n"])
        .args(["--backend-pin", &other.pin.to_string()])
        .env_clear()
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("matches the pin"),
        "the refusal should say why: {stderr}"
    );
}

#[test]
fn plain_http_to_a_host_that_is_not_loopback_is_refused_at_start() {
    let dir = common::tempdir::TempDir::new();
    let run = |cmd: &str, extra: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"));
        c.args([cmd, "--check"]).env_clear().current_dir(dir.path());
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    let cert = dir.path().join("gw.crt");
    let key = dir.path().join("gw.key");
    let gateway = [
        ("GATEWAY_TOKEN", "t0k3n"),
        ("GATEWAY_BACKEND_URL", "http://10.1.2.3:8000"),
        ("GATEWAY_SELF_SIGNED", "true"),
        ("GATEWAY_TLS_CERT", cert.to_str().expect("path")),
        ("GATEWAY_TLS_KEY", key.to_str().expect("path")),
        ("GATEWAY_PUBLIC_URL", "https://gw1.example.com"),
    ];
    for (cmd, vars, var) in [
        ("gateway", gateway.to_vec(), "GATEWAY_BACKEND_URL"),
        (
            "node",
            vec![
                ("NODE_TOKEN", "t0k3n"),
                ("NODE_BACKEND_URL", "http://cp.example.com:8000"),
            ],
            "NODE_BACKEND_URL",
        ),
        (
            "connect",
            vec![
                ("CLIENT_DEVICE_TOKEN", "t0k3n"),
                ("CLIENT_BACKEND_URL", "http://[2001:db8::5]:8000"),
            ],
            "CLIENT_BACKEND_URL",
        ),
    ] {
        let out = run(cmd, &vars);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted plain HTTP");
        assert!(
            stderr.contains(var) && stderr.contains("not loopback"),
            "{cmd}: {stderr}"
        );
        // Declared private, the same URL is accepted.
        let mut vars = vars.clone();
        let flag = format!("{}_PRIVATE_LINK", var.split('_').next().unwrap_or_default());
        vars.push((&flag, "true"));
        let out = run(cmd, &vars);
        assert!(
            out.status.success(),
            "{cmd} with {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_reloads_its_certificate_on_change_and_on_sighup() {
    httvps_dataplane::tls::install_provider();
    let db = common::TestDb::pg().await;
    let dir = common::tempdir::TempDir::new();
    let first = ca("first CA");
    let files = write_leaf(&first, dir.path());
    let port = common::stable_port();
    let mut cmd = common::httvps_cmd();
    cmd.arg("serve")
        .env("BACKEND_DB_DSN", db.url())
        .env("BACKEND_SECRET_KEY", common::TEST_SECRET)
        .env("BACKEND_PORT", port.to_string())
        .env("BACKEND_TLS_CERT", &files.cert)
        .env("BACKEND_TLS_KEY", &files.key)
        .current_dir(dir.path());
    let proc = common::spawn_listening(cmd);
    assert!(proc.addr.is_some(), "serve did not start");
    let base = format!("https://127.0.0.1:{port}");
    let answers = |pin: Pin| {
        let base = base.clone();
        async move {
            let b = Backend::connect(&base, "none", &pinned(pin)).expect("backend");
            // Any answer of the control plane (401 here) means TLS passed.
            !matches!(b.outline_config().await, Err(BackendError::Unreachable(_)))
        }
    };
    assert!(answers(first.pin).await);
    // The compose file's health check passes against it (on this port).
    let probe = compose_healthcheck().replace(":8000", &format!(":{port}"));
    let checked = std::process::Command::new("sh")
        .args(["-c", &probe])
        .output()
        .expect("sh");
    assert!(checked.status.success(), "{probe}: {checked:?}");
    // A new chain from another CA, the files replaced: picked up within a
    // few seconds (the files are looked at every 5 s).
    let second = ca("second CA");
    write_leaf(&second, dir.path());
    let mut switched = false;
    for _ in 0..100 {
        if answers(second.pin).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the new certificate was not picked up");
    assert!(!answers(first.pin).await);
    // Written with the old modification time kept, only SIGHUP tells.
    let third = ca("third CA");
    let stamp = std::fs::metadata(&files.cert)
        .and_then(|m| m.modified())
        .expect("mtime");
    write_leaf(&third, dir.path());
    for f in [&files.cert, &files.key] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .and_then(|h| h.set_modified(stamp))
            .expect("set mtime");
    }
    let pid = proc.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let mut switched = false;
    for _ in 0..30 {
        if answers(third.pin).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "SIGHUP did not reload the certificate");
}

/// The command of the control plane's health check in `docker-compose.yml`.
fn compose_healthcheck() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("parses");
    let test = &compose["services"]["backend"]["healthcheck"]["test"];
    assert_eq!(test[0].as_str(), Some("CMD-SHELL"), "{test:?}");
    test[1].as_str().expect("a shell command").to_owned()
}

/// Whether the connection PostgreSQL knows by `app` (its
/// application_name) runs over TLS; `None` when there is none.
async fn pg_ssl_of(app: &str) -> Option<bool> {
    use diesel::sql_types::{Bool, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bool)]
        ssl: bool,
    }
    let mut admin = AsyncPgConnection::establish(&common::pg_admin_url())
        .await
        .expect("admin connection");
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE a.application_name = $1",
    )
    .bind::<Text, _>(app)
    .load(&mut admin)
    .await
    .expect("pg_stat_ssl");
    rows.into_iter().next().map(|r| r.ssl)
}

/// A setting of the test server (`SHOW`).
async fn pg_setting(name: &str) -> String {
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        value: String,
    }
    let mut admin = AsyncPgConnection::establish(&common::pg_admin_url())
        .await
        .expect("admin connection");
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT setting AS value FROM pg_settings WHERE name = '{name}'"
    ))
    .load(&mut admin)
    .await
    .expect("pg_settings");
    rows.into_iter().next().expect("setting").value
}

/// The link to PostgreSQL takes TLS as `sslmode` asks, with libpq's
/// meanings: `prefer` (the default) and `require` encrypt, `verify-ca`
/// checks the chain against `sslrootcert`, `verify-full` the host name
/// too; `disable` does not encrypt. A certificate that does not hold is
/// refused with the mode named. (The test server has `ssl = on` with
/// Debian's snakeoil certificate, self-signed for `localhost`;
/// `scripts/ensure-postgres.sh` turns it on where it is off.)
#[tokio::test(flavor = "multi_thread")]
async fn the_database_link_takes_tls_as_sslmode_asks() {
    use httvps_control::db::Dsn;
    assert_eq!(
        pg_setting("ssl").await,
        "on",
        "the test PostgreSQL has ssl = off (scripts/ensure-postgres.sh turns it on)"
    );
    let mut server_cert = std::path::PathBuf::from(pg_setting("ssl_cert_file").await);
    if server_cert.is_relative() {
        server_cert =
            std::path::PathBuf::from(pg_setting("data_directory").await).join(server_cert);
    }
    let db = common::TestDb::pg().await;
    let base = url::Url::parse(&db.url()).expect("url");
    let with = |host: &str, query: &str| {
        let mut u = base.clone();
        u.set_host(Some(host)).expect("host");
        u.set_query(Some(query));
        u.to_string()
    };
    let root = url::form_urlencoded::byte_serialize(server_cert.to_string_lossy().as_bytes())
        .collect::<String>();
    for (i, (host, query, tls)) in [
        ("127.0.0.1", "sslmode=disable".to_owned(), false),
        ("127.0.0.1", String::new(), true),
        ("127.0.0.1", "sslmode=require".to_owned(), true),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={root}"),
            true,
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={root}"),
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let app = format!("httvps_tls_{}_{i}", std::process::id());
        let sep = if query.is_empty() { "" } else { "&" };
        let url = with(host, &format!("{query}{sep}application_name={app}"));
        let dsn = Dsn::parse(&url).expect("a valid DSN");
        httvps_control::db::migrate(&dsn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let pool = httvps_control::db::Db::connect(&dsn, 1).expect("pool");
        assert!(
            pool.ping(Duration::from_secs(10)).await,
            "{query}: no connection"
        );
        assert_eq!(pg_ssl_of(&app).await, Some(tls), "{query}");
    }
    // The snakeoil certificate names localhost, not 127.0.0.1.
    let by_address = with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    let e = httvps_control::db::migrate(&Dsn::parse(&by_address).expect("dsn"))
        .await
        .expect_err("a certificate for another name was accepted");
    let said = e.to_string();
    assert!(
        said.contains("TLS with PostgreSQL at 127.0.0.1") && said.contains("verify-full"),
        "{said}"
    );
    // Another CA's root: the chain does not hold.
    let dir = common::tempdir::TempDir::new();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, ca("another CA").pem).expect("write");
    let other = url::form_urlencoded::byte_serialize(other.to_string_lossy().as_bytes())
        .collect::<String>();
    // With verify-ca, and, as libpq reads a root file given, with require.
    for mode in ["verify-ca", "require"] {
        let e = httvps_control::db::migrate(
            &Dsn::parse(&with(
                "localhost",
                &format!("sslmode={mode}&sslrootcert={other}"),
            ))
            .expect("dsn"),
        )
        .await
        .expect_err("a certificate of another CA was accepted");
        let said = e.to_string();
        assert!(
            said.contains("verify-ca") && said.contains("UnknownIssuer"),
            "{mode}: {said}"
        );
    }
    // The DSN's other parameters reach the server as written, encoded
    // spaces included, beside the TLS ones.
    let dsn = with(
        "127.0.0.1",
        "options=-c%20statement_timeout%3D4321&sslmode=require&application_name=tls%20options",
    );
    httvps_control::db::migrate(&Dsn::parse(&dsn).expect("dsn"))
        .await
        .expect("parameters with encoded spaces");
    // A mode mistyped is named before anything connects.
    let why = Dsn::parse(&with("127.0.0.1", "sslmode=verify_full")).expect_err("parsed");
    assert!(why.contains("sslmode=verify_full"), "{why}");
}
