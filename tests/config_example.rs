//! Every binary and subcommand run as an operator would after
//! `cp .env.example .env`: each either starts or refuses with a message
//! naming the variable to set, never with clap's "invalid value ''" for an
//! empty example line. Commands that would write to the example's database
//! are run with `--check`; the ports of `up` are moved off the example's so
//! parallel runs do not collide.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command run in `dir` (holding the example as `.env`) with nothing of
/// the caller's environment but `PATH`, plus `extra`.
fn cmd(bin: &str, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    for (k, v) in extra {
        c.env(k, v);
    }
    c
}

struct Ran {
    ok: bool,
    out: String,
}

/// Runs a command that ends by itself (bounded).
fn run(bin: &str, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Ran {
    let mut child = cmd(bin, dir, args, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drained while it runs: a printer's output is larger than a pipe holds.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout.join().expect("stdout")),
        String::from_utf8_lossy(&stderr.join().expect("stderr"))
    );
    assert!(
        !text.contains("invalid value ''") && !text.contains("a value is required"),
        "{bin} {args:?}: an empty example line was taken as a value:\n{text}"
    );
    Ran {
        ok: status.is_some_and(|s| s.success()),
        out: text,
    }
}

/// The command refuses to start and names `var`.
fn refuses(bin: &str, dir: &Path, args: &[&str], extra: &[(&str, &str)], var: &str) {
    let r = run(bin, dir, args, extra);
    assert!(!r.ok, "{bin} {args:?} started:\n{}", r.out);
    assert!(
        r.out
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains(var)),
        "{bin} {args:?}: the error should name {var}:\n{}",
        r.out
    );
}

/// The command's settings are valid (`--check` passes).
fn checks(bin: &str, dir: &Path, args: &[&str], extra: &[(&str, &str)]) {
    let r = run(bin, dir, args, extra);
    assert!(
        r.ok && r.out.contains("configuration ok"),
        "{bin} {args:?}:\n{}",
        r.out
    );
}

const HTTVPS: &str = env!("CARGO_BIN_EXE_httvps");
const RELAY: &str = env!("CARGO_BIN_EXE_httvps-relay");
const SECRET: (&str, &str) = ("BACKEND_SECRET_KEY", common::TEST_SECRET);
/// The control plane's URL for a relay started with a token (the example
/// leaves it empty for enrollment strings, which carry it).
const NODE_URL: (&str, &str) = ("NODE_BACKEND_URL", "http://127.0.0.1:8000");
const GATEWAY_URL: (&str, &str) = ("GATEWAY_BACKEND_URL", "http://127.0.0.1:8000");

fn example_dir() -> common::tempdir::TempDir {
    let dir = common::tempdir::TempDir::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example");
    std::fs::copy(example, dir.path().join(".env")).expect("copy .env.example");
    dir
}

#[test]
fn the_control_plane_commands_start_or_name_the_variable() {
    let dir = example_dir();
    let d = dir.path();
    // As shipped: the example secret is refused, by name.
    refuses(HTTVPS, d, &["serve"], &[], "BACKEND_SECRET_KEY");
    refuses(HTTVPS, d, &["serve", "--check"], &[], "BACKEND_SECRET_KEY");
    // With the one secret set, the rest of the example is valid.
    checks(HTTVPS, d, &["serve", "--check"], &[SECRET]);
    checks(HTTVPS, d, &["migrate", "--check"], &[]);
    // A negative allowance gets the allowance's own range, not a parser's
    // "from 0" that 0 then fails.
    for (var, value) in [
        ("BACKEND_LOGIN_PER_SOURCE", "-1"),
        ("BACKEND_LOGIN_PER_SOURCE", "0"),
        ("BACKEND_THROTTLE_WINDOW_SECS", "-1"),
    ] {
        let r = run(HTTVPS, d, &["serve", "--check"], &[SECRET, (var, value)]);
        assert!(
            !r.ok && r.out.contains(var) && r.out.contains("must be from 1 to"),
            "{var}={value}:\n{}",
            r.out
        );
    }
    // The documents need no settings: a check says so, not the document.
    for doc in ["schema", "openapi"] {
        let r = run(HTTVPS, d, &[doc, "--check"], &[]);
        assert!(
            r.ok && r.out.contains("configuration ok")
                && !r.out.contains("type Query")
                && !r.out.contains("\"openapi\""),
            "{doc} --check:\n{}",
            r.out
        );
    }
    checks(
        HTTVPS,
        d,
        &[
            "admin",
            "create",
            "--email",
            "ops@example.com",
            "--password-stdin",
            "--check",
        ],
        &[],
    );
    checks(
        HTTVPS,
        d,
        &[
            "device",
            "revoke",
            "0b4c6a43-8f60-4d5e-9a51-6c1f7e2f8d10",
            "--check",
        ],
        &[],
    );
    checks(HTTVPS, d, &["up", "--check"], &[]);
    // A data directory that cannot be one is named by the check.
    let file = d.join("a-file");
    std::fs::write(&file, b"").expect("file");
    let under_file = file.join("data");
    refuses(
        HTTVPS,
        d,
        &["up", "--check"],
        &[("HTTVPS_DATA_DIR", under_file.to_str().expect("path"))],
        "HTTVPS_DATA_DIR",
    );
    checks(
        HTTVPS,
        d,
        &["region", "--code", "eu", "--name", "EU", "--check"],
        &[],
    );
    // Enrollment strings need the URL machines reach the control plane at.
    let gw_add = [
        "gateway",
        "add",
        "--region",
        "eu",
        "--name",
        "gw1",
        "--public-url",
        "https://gw1.example.com",
        "--check",
    ];
    let node_add = [
        "node", "add", "--region", "eu", "--name", "n1", "--host", "10.0.0.5", "--port", "8388",
        "--check",
    ];
    refuses(HTTVPS, d, &gw_add, &[], "BACKEND_PUBLIC_URL");
    refuses(HTTVPS, d, &node_add, &[], "BACKEND_PUBLIC_URL");
    let public = ("BACKEND_PUBLIC_URL", "https://cp.example.com");
    checks(HTTVPS, d, &gw_add, &[public]);
    checks(HTTVPS, d, &node_add, &[public]);
    for cmd in ["gateway", "node"] {
        let id = "0b4c6a43-8f60-4d5e-9a51-6c1f7e2f8d10";
        checks(HTTVPS, d, &[cmd, "rotate", id, "--check"], &[public]);
        // Only what prints an enrollment string needs its URL.
        checks(HTTVPS, d, &[cmd, "remove", id, "--check"], &[]);
        checks(
            HTTVPS,
            d,
            &[cmd, "update", id, "--name", "x", "--check"],
            &[],
        );
    }
    for printer in ["schema", "openapi"] {
        let r = run(HTTVPS, d, &[printer], &[]);
        assert!(r.ok && r.out.len() > 1000, "{printer}:\n{}", r.out);
    }
    // A reader that has gone (`httvps openapi | head`, once head is done):
    // no panic, whatever the document's size. The read end is closed before
    // the child writes a byte.
    for printer in ["schema", "openapi"] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = cmd(HTTVPS, d, &[printer], &[])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !said.contains("panicked"),
            "{printer}: {said}"
        );
    }
    // The settings flags also come after the subcommand.
    checks(
        HTTVPS,
        d,
        &[
            "node",
            "add",
            "--region",
            "eu",
            "--name",
            "n1",
            "--host",
            "10.0.0.5",
            "--port",
            "8388",
            "--control-url",
            "https://cp.example.com",
            "--db-dsn",
            "sqlite://flags.db",
            "--check",
        ],
        &[],
    );
    // A wrong value from a variable is reported with the variable's name.
    refuses(
        HTTVPS,
        d,
        &["serve", "--check"],
        &[SECRET, ("BACKEND_PORT", "http")],
        "BACKEND_PORT",
    );
    refuses(
        HTTVPS,
        d,
        &["serve", "--check"],
        &[SECRET, ("BACKEND_LOG_FORMAT", "xml")],
        "BACKEND_LOG_FORMAT",
    );
    refuses(
        HTTVPS,
        d,
        &["serve", "--check"],
        &[SECRET, ("BACKEND_DEBUG", "maybe")],
        "BACKEND_DEBUG",
    );
    for url in ["http://gw.example.com", "https://gw.example.com/path"] {
        refuses(
            HTTVPS,
            d,
            &["serve", "--check"],
            &[SECRET, ("BACKEND_GATEWAY_URL", url)],
            "BACKEND_GATEWAY_URL",
        );
    }
    // The pin in the form `openssl x509 -fingerprint -sha256` prints it is
    // taken by `serve` as by `gateway add`; a damaged one names itself.
    let colons = vec!["5F"; 32].join(":");
    for pin in [colons.clone(), format!("sha256:{}", "5f".repeat(32))] {
        let pinned = ("BACKEND_ENROLL_PIN", pin.as_str());
        checks(HTTVPS, d, &["serve", "--check"], &[SECRET, public, pinned]);
        checks(HTTVPS, d, &gw_add, &[public, pinned]);
    }
    refuses(
        HTTVPS,
        d,
        &["serve", "--check"],
        &[SECRET, public, ("BACKEND_ENROLL_PIN", &colons[3..])],
        "BACKEND_ENROLL_PIN",
    );
}

/// `up --check` refuses ports that clash (one port for two listeners
/// cannot start; it said "configuration ok").
#[test]
fn up_refuses_ports_that_clash() {
    let dir = example_dir();
    refuses(
        HTTVPS,
        dir.path(),
        &[
            "up",
            "--check",
            "--gateway-port",
            "17453",
            "--node-port",
            "17453",
        ],
        &[],
        "--node-port (17453) must differ",
    );
    refuses(
        HTTVPS,
        dir.path(),
        &[
            "up",
            "--check",
            "--port",
            "17090",
            "--gateway-port",
            "17090",
        ],
        &[],
        "must differ",
    );
    checks(
        HTTVPS,
        dir.path(),
        &[
            "up",
            "--check",
            "--port",
            "17090",
            "--gateway-port",
            "17091",
        ],
        &[],
    );
}

/// `up` names the setting of a port in use before it makes anything: it
/// printed the first admin's password (never shown again) and then
/// stopped on "binding 127.0.0.1:…: Address already in use".
#[test]
fn up_names_a_port_in_use_before_it_makes_the_first_admin() {
    let dir = example_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let gw = common::stable_port().to_string();
    for (args, var) in [
        (
            vec!["up", "--port", &port, "--gateway-port", &gw],
            "HTTVPS_UP_PORT",
        ),
        (
            vec!["up", "--port", &gw, "--gateway-port", &port],
            "HTTVPS_UP_GATEWAY_PORT",
        ),
        (
            vec!["up", "--port", &gw, "--node-port", &port],
            "HTTVPS_UP_NODE_PORT",
        ),
    ] {
        let r = run(HTTVPS, dir.path(), &args, &[]);
        assert!(!r.ok, "{args:?} started:\n{}", r.out);
        assert!(
            r.out.contains(var) && r.out.contains("cannot be listened on"),
            "{args:?}: {var} not named:\n{}",
            r.out
        );
        assert!(
            !r.out.contains("password"),
            "{args:?}: a password printed:\n{}",
            r.out
        );
    }
    // A node port taken for UDP only: the node's UDP relay needs it too.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_port = udp.local_addr().expect("addr").port().to_string();
    let args = ["up", "--port", &gw, "--node-port", &udp_port];
    let r = run(HTTVPS, dir.path(), &args, &[]);
    assert!(
        !r.ok && r.out.contains("HTTVPS_UP_NODE_PORT") && r.out.contains("UDP"),
        "{args:?}:\n{}",
        r.out
    );
    assert!(
        !r.out.contains("password"),
        "a password printed:\n{}",
        r.out
    );
    drop(udp);
    // Nothing was made: the first start that can listen makes the admin.
    assert!(
        !dir.path().join("data").exists(),
        "a data directory was made"
    );
    // `--check` beside a running `up` passes: its ports are in use.
    checks(
        HTTVPS,
        dir.path(),
        &["up", "--check", "--port", &port, "--gateway-port", &gw],
        &[],
    );
    drop(taken);
}

#[test]
fn up_starts_from_the_example() {
    let dir = example_dir();
    let (port, gw, node) = (
        common::stable_port(),
        common::stable_port(),
        common::stable_port(),
    );
    let mut child = cmd(
        HTTVPS,
        dir.path(),
        &["up"],
        &[
            ("HTTVPS_UP_PORT", &port.to_string()),
            ("HTTVPS_UP_GATEWAY_PORT", &gw.to_string()),
            ("HTTVPS_UP_NODE_PORT", &node.to_string()),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn up");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let mut listening = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("control plane listening") {
            listening = true;
            // The embedded node on the port asked for.
            assert!(line.contains(&format!("127.0.0.1:{node}")), "{line}");
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "up did not start:\n{seen}");
}

#[test]
fn the_data_plane_commands_start_or_name_the_variable() {
    let dir = example_dir();
    let d = dir.path();
    // As shipped, each names what it needs first: the gateway its own
    // settings (checked before an enrollment string is redeemed, so a
    // mistake in them leaves the string unspent), the others their
    // credential.
    refuses(RELAY, d, &["gateway"], &[], "GATEWAY_TLS_CERT");
    refuses(
        RELAY,
        d,
        &["gateway", "--check"],
        &[("GATEWAY_SELF_SIGNED", "true")],
        "GATEWAY_TOKEN",
    );
    refuses(RELAY, d, &["node"], &[], "NODE_TOKEN");
    refuses(RELAY, d, &["connect"], &[], "CLIENT_DEVICE_TOKEN");
    // With a token, the control plane's URL is named next: the example
    // leaves it empty (an enrollment string carries it).
    refuses(
        RELAY,
        d,
        &["node", "--check"],
        &[("NODE_TOKEN", "t0k3n")],
        "NODE_BACKEND_URL",
    );
    // With both, the empty example lines are defaults, not values.
    checks(
        RELAY,
        d,
        &["node", "--check"],
        &[("NODE_TOKEN", "t0k3n"), NODE_URL],
    );
    // A timeout of 0 seconds is refused by name, not taken as 1.
    refuses(
        RELAY,
        d,
        &["node", "--check"],
        &[
            ("NODE_TOKEN", "t0k3n"),
            NODE_URL,
            ("NODE_IDLE_TIMEOUT_SECS", "0"),
        ],
        "NODE_IDLE_TIMEOUT_SECS",
    );
    checks(
        RELAY,
        d,
        &["connect", "--check"],
        &[("CLIENT_DEVICE_TOKEN", "t0k3n")],
    );
    // The example's certificate paths do not exist here: named.
    refuses(
        RELAY,
        d,
        &["gateway", "--check"],
        &[("GATEWAY_TOKEN", "t0k3n"), GATEWAY_URL],
        "GATEWAY_TLS_CERT",
    );
    // With certificate files it could write, the gateway's settings are valid.
    let (cert, key) = (d.join("gw.crt"), d.join("gw.key"));
    checks(
        RELAY,
        d,
        &["gateway", "--check"],
        &[
            ("GATEWAY_TOKEN", "t0k3n"),
            GATEWAY_URL,
            GATEWAY_URL,
            ("GATEWAY_SELF_SIGNED", "true"),
            ("GATEWAY_TLS_CERT", cert.to_str().expect("path")),
            ("GATEWAY_TLS_KEY", key.to_str().expect("path")),
        ],
    );
    // A check writes nothing: the certificate is made where it is checked.
    assert!(
        !cert.exists() && !key.exists(),
        "gateway --check wrote the certificate files"
    );
    // Or by ACME, with no certificate files; a wrong ACME setting is named.
    let acme = [
        ("GATEWAY_TOKEN", "t0k3n"),
        GATEWAY_URL,
        ("GATEWAY_ACME_DOMAIN", "gw1.example.com,gw2.example.com"),
        ("GATEWAY_ACME_CONTACT", "mailto:ops@example.com"),
        ("GATEWAY_DATA_DIR", d.to_str().expect("path")),
    ];
    checks(RELAY, d, &["gateway", "--check"], &acme);
    let warned = |r: &Ran| r.out.contains("does not name GATEWAY_PUBLIC_URL's host");
    assert!(!warned(&run(RELAY, d, &["gateway", "--check"], &acme)));
    // Domains that leave out the public URL's host pass (a front may
    // answer for it) with a warning: without one, no client would trust
    // the certificate.
    let mut elsewhere = acme.to_vec();
    elsewhere.retain(|(k, _)| *k != "GATEWAY_ACME_DOMAIN");
    elsewhere.push(("GATEWAY_ACME_DOMAIN", "gw2.example.com"));
    let r = run(RELAY, d, &["gateway", "--check"], &elsewhere);
    assert!(r.ok && warned(&r), "{}", r.out);
    for (var, wrong) in [
        ("GATEWAY_ACME_DOMAIN", "*.example.com"),
        ("GATEWAY_ACME_CONTACT", "ops@example.com"),
        ("GATEWAY_ACME_DIRECTORY", "http://acme.example/directory"),
        ("GATEWAY_ACME_DIRECTORY_CA", "/nonexistent/ca.pem"),
    ] {
        let mut env = acme.to_vec();
        env.retain(|(k, _)| *k != var);
        env.push((var, wrong));
        refuses(RELAY, d, &["gateway", "--check"], &env, var);
    }
    // A wrong value is reported with its variable's name.
    refuses(
        RELAY,
        d,
        &["node", "--check"],
        &[
            ("NODE_TOKEN", "t0k3n"),
            NODE_URL,
            ("NODE_LISTEN", "everywhere"),
        ],
        "NODE_LISTEN",
    );
    // A bound of 0 is refused by name: it refused every tunnel, or bound
    // nothing, as each took it.
    let gateway_ok = [
        ("GATEWAY_TOKEN", "t0k3n"),
        GATEWAY_URL,
        ("GATEWAY_SELF_SIGNED", "true"),
        ("GATEWAY_TLS_CERT", cert.to_str().expect("path")),
        ("GATEWAY_TLS_KEY", key.to_str().expect("path")),
    ];
    for var in [
        "GATEWAY_MAX_TUNNELS",
        "GATEWAY_MAX_TUNNELS_PER_DEVICE",
        "GATEWAY_CACHE_CAPACITY",
        "GATEWAY_MAX_CONNECTIONS",
        "GATEWAY_MAX_CONNECTIONS_PER_SOURCE",
        "GATEWAY_GUESS_LIMIT",
        "GATEWAY_GUESS_SOURCES",
        "GATEWAY_MAX_PENDING_CHECKS",
        "GATEWAY_MAX_PENDING_CHECKS_PER_SOURCE",
    ] {
        let mut env = gateway_ok.to_vec();
        env.push((var, "0"));
        refuses(RELAY, d, &["gateway", "--check"], &env, var);
    }
    // A control-plane CA file that is not one is named as itself, not as
    // the control plane's URL.
    let not_a_ca = d.join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "not a certificate\n").expect("write");
    let not_a_ca = not_a_ca.to_str().expect("path");
    let mut env = gateway_ok.to_vec();
    env.push(("GATEWAY_BACKEND_CA", not_a_ca));
    refuses(
        RELAY,
        d,
        &["gateway", "--check"],
        &env,
        "GATEWAY_BACKEND_CA",
    );
    refuses(
        RELAY,
        d,
        &["node", "--check"],
        &[
            ("NODE_TOKEN", "t0k3n"),
            NODE_URL,
            ("NODE_BACKEND_CA", not_a_ca),
        ],
        "NODE_BACKEND_CA",
    );
    refuses(
        RELAY,
        d,
        &["connect", "--check"],
        &[
            ("CLIENT_DEVICE_TOKEN", "t0k3n"),
            ("CLIENT_BACKEND_CA", not_a_ca),
        ],
        "CLIENT_BACKEND_CA",
    );
    refuses(
        RELAY,
        d,
        &["connect", "--check"],
        &[
            ("CLIENT_DEVICE_TOKEN", "t0k3n"),
            ("CLIENT_FORWARD", "nowhere"),
        ],
        "CLIENT_FORWARD",
    );
    // A gateway URL with a path would lose it without a word.
    refuses(
        RELAY,
        d,
        &["connect", "--check"],
        &[
            ("CLIENT_DEVICE_TOKEN", "t0k3n"),
            ("CLIENT_GATEWAY_URL", "https://gw.example/prefix"),
        ],
        "CLIENT_GATEWAY_URL",
    );
    // An enrollment string beside a token is still read: a damaged one
    // is named, not passed over.
    refuses(
        RELAY,
        d,
        &["node", "--check"],
        &[
            ("NODE_TOKEN", "t0k3n"),
            NODE_URL,
            ("NODE_ENROLL", "not-an-enrollment"),
        ],
        "NODE_ENROLL",
    );
    // The node really starts past its settings: it goes on to ask the
    // control plane (none at this address) for its own, and waits for it.
    let mut child = cmd(
        RELAY,
        d,
        &["node"],
        &[
            ("NODE_TOKEN", "t0k3n"),
            ("NODE_BACKEND_URL", "http://127.0.0.1:1"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let waiting = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("fetching this node's settings: trying again"))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !waiting.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let still_running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let line = waiting.join().expect("reader");
    assert!(
        still_running && line.as_deref().is_some_and(|l| l.contains("unreachable")),
        "the node did not wait for its control plane: {line:?}"
    );
}
