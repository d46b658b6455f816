//! The production topology on separate hosts (Linux network namespaces,
//! joined by veth pairs), following the README's "Production" steps:
//!
//! - `cp`, the control-plane host: `httvps serve` over HTTPS with a
//!   certificate of a private CA. PostgreSQL runs outside the lab (the
//!   machine's, at 127.0.0.1:5432); a TCP relay makes it reachable inside
//!   `cp` at the same address, as a database on the host itself.
//! - `gw`, the gateway host: on the control plane's network (`cpnet`), on
//!   the public network (`public`, 203.0.113.0/24) and on the pool's
//!   network (`pool`). It is the pool's router (the nodes' default route,
//!   the control plane's way to them), but forwards nothing that arrives
//!   from the public side. The control
//!   plane's API (sign-in, the device's parameters) is published on its
//!   public address by a TCP relay, as an edge load balancer would.
//! - `n1`, `n2`: Shadowsocks nodes on the pool network only, reaching the
//!   control plane through `gw`; `web`, a destination on that network.
//! - `client`: on the public network only, its default route through
//!   `gw`; it reaches the gateway and nothing behind it. The gateway's
//!   name resolves there to its public address (the host's `/etc/hosts`).
//! - `acme`: on the public network, Pebble (a real ACME server) and its
//!   DNS, which resolves the gateway's name to its public address. The
//!   gateway obtains its certificate there itself (TLS-ALPN-01 on its port
//!   443); clients trust Pebble's root.
//!
//! Gateways and nodes enroll from the strings `httvps gateway add` / `node
//! add` print (control-plane URL, CA pin, one-time token). A stock client
//! (ss-local with v2ray-plugin, from the access document the gateway
//! serves) and ours (`httvps-relay connect`) move data byte for byte; the
//! client cannot open a connection to a node; a node host whose link goes
//! down loses new tunnels to the other node without the clients asking
//! anything; the control plane cut off for 30 s leaves open tunnels
//! running.
//!
//! Skips (saying why) only where namespaces cannot be created; where `ip
//! netns add` works, every failure fails.

#[path = "topology/certs.rs"]
mod certs;
mod common;
#[path = "topology/hosts.rs"]
mod hosts;
#[path = "common/pebble.rs"]
mod pebble;

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hosts::{Echo, Logs, arg, command, exchange, on_host, run, socks5, wait_listening};
use httvps_dataplane::link::{Link, Pin};
use httvps_netlab::{Lab, Topology, netns};
use serde_json::{Value, json};

const EMAIL: &str = "ops@example.com";
const PASSWORD: &str = "a long operator passphrase 42";
/// The control plane's HTTPS port (on `cp`, and published on `gw`).
const CP_PORT: u16 = 8443;
const NODE_PORT: u16 = 8388;
/// The gateway's and the client's logs say why each tunnel was refused or
/// not opened (the logs are printed when the test fails).
const DATAPLANE_DEBUG: (&str, &str) = ("RUST_LOG", "info,httvps_dataplane=debug");
/// How long the control plane's link stays cut.
const CP_CUT: Duration = Duration::from_secs(30);

#[test]
fn the_production_topology_on_separate_hosts() {
    // The probe creates (and deletes) a namespace: where that works, the
    // test runs and every failure fails.
    if let Err(why) = netns::available() {
        assert!(
            std::env::var_os("HTTVPS_NETLAB_REQUIRED").is_none(),
            "namespaces are required here (HTTVPS_NETLAB_REQUIRED) but unavailable: {why}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_production_topology_on_separate_hosts: {why}"
        );
        return;
    }
    // Namespaces a killed run left behind (their creator is gone).
    netns::cleanup_stale().expect("sweeping stale namespaces");
    ensure_stock_client();
    httvps_dataplane::tls::install_provider();
    let tmp = common::tempdir::TempDir::new();
    let logs = Logs {
        dir: tmp.path().to_owned(),
    };
    let db = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(common::TestDb::pg());
    let lab = Lab::build(
        "topology",
        &Topology::new()
            .link("cpnet", &["cp", "gw"])
            .link_in(
                "public",
                &["gw", "client", "acme"],
                Some("203.0.113.0/24".parse().expect("subnet")),
            )
            .link("pool", &["gw", "n1", "n2", "web"]),
    )
    .expect("building the lab");
    let addr = |host: &str, link: &str| lab.addr(host, link).expect("address");
    let (cp, gw_public) = (addr("cp", "cpnet"), addr("gw", "public"));
    let (n1, n2) = (addr("n1", "pool"), addr("n2", "pool"));
    // The gateway host is the router of the pool (the nodes' default
    // route, the control plane's way to them) and the client's way out,
    // but forwards nothing that comes from the public side: without that,
    // the client would reach the nodes through it.
    let gw_pool = addr("gw", "pool").to_string();
    for node in ["n1", "n2"] {
        ip(&lab, node, &["route", "add", "default", "via", &gw_pool]);
    }
    let gw_cpnet = addr("gw", "cpnet").to_string();
    for node in [n1, n2] {
        ip(
            &lab,
            "cp",
            &["route", "add", &node.to_string(), "via", &gw_cpnet],
        );
    }
    let gw_out = gw_public.to_string();
    ip(&lab, "client", &["route", "add", "default", "via", &gw_out]);
    sysctl(&lab, "gw", "net.ipv4.ip_forward=1");
    sysctl(&lab, "gw", "net.ipv4.conf.public.forwarding=0");
    let pg = pg_addr(&db.url());
    assert_eq!(
        lab.relay("cp", pg, pg).expect("relay to PostgreSQL"),
        pg,
        "PostgreSQL at the same address on the control-plane host"
    );

    // Certificates: a private CA signs the control plane's (for its own
    // address and the published one); the gateway obtains its own by ACME
    // from Pebble on the `acme` host, for a name that resolves to its
    // public address (Pebble's DNS, the client host's /etc/hosts).
    let ca = certs::ca("httvps topology CA", tmp.path());
    let cp_cert = certs::leaf(&ca, &[cp, gw_public], tmp.path(), "control-plane");
    let acme = certs::AcmeServer::start(&lab, "acme", addr("acme", "public"), gw_public);
    let gw_tls = certs::gateway_tls(&acme, tmp.path());
    let _names = hosts::HostsFile::write(&lab, "client", gw_public, certs::GATEWAY_DOMAIN);

    // The control-plane host: the server, then the operator's commands.
    let cp_url = format!("https://{cp}:{CP_PORT}");
    let (dsn, cert, key) = (db.url(), arg(&cp_cert.cert), arg(&cp_cert.key));
    let cp_env = [
        ("BACKEND_DB_DSN", dsn.as_str()),
        ("BACKEND_PUBLIC_URL", cp_url.as_str()),
        ("BACKEND_TLS_CERT", cert.as_str()),
        ("BACKEND_TLS_KEY", key.as_str()),
        (
            "BACKEND_SECRET_KEY",
            "topology-test-secret-0123456789abcdef",
        ),
        ("BACKEND_HOST", "0.0.0.0"),
        ("BACKEND_PORT", "8443"),
    ];
    let httvps = env!("CARGO_BIN_EXE_httvps");
    let _server = lab
        .spawn(command(&lab, &logs, "cp", httvps, &cp_env, "control-plane").arg("serve"))
        .expect("httvps serve");
    let published = SocketAddr::from((gw_public, CP_PORT));
    lab.run_in("gw", || {
        lab.relay("gw", published, SocketAddr::from((cp, CP_PORT)))
    })
    .expect("host")
    .expect("publishing the API");
    wait_listening(
        &lab,
        &logs,
        "cp",
        SocketAddr::from((cp, CP_PORT)),
        Duration::from_secs(60),
    );
    let cli = |args: &[&str], stdin: Option<&str>| run(&lab, &logs, "cp", args, &cp_env, stdin);
    cli(&["region", "--code", "eu", "--name", "Europe"], None);
    cli(
        &["admin", "create", "--email", EMAIL, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    let gw_url = format!("https://{}", certs::GATEWAY_DOMAIN);
    let gw_enroll = cli(
        &[
            "gateway",
            "add",
            "--region",
            "eu",
            "--name",
            "gw1",
            "--public-url",
            &gw_url,
        ],
        None,
    );
    let node_enroll = |name: &str, host: Ipv4Addr| {
        let (host, port) = (host.to_string(), NODE_PORT.to_string());
        cli(
            &[
                "node", "add", "--region", "eu", "--name", name, "--host", &host, "--port", &port,
            ],
            None,
        )
    };
    let (n1_enroll, n2_enroll) = (node_enroll("n1", n1), node_enroll("n2", n2));
    let pin = ca.pin.to_string();
    let printed = httvps_wire::enroll::Enrollment::decode(&gw_enroll).expect("a string");
    assert_eq!(printed.url, cp_url);
    assert_eq!(
        printed.pin.as_deref(),
        Some(pin.as_str()),
        "the CA is pinned"
    );

    // Nodes and the gateway enroll from the printed strings alone.
    let relay_bin = env!("CARGO_BIN_EXE_httvps-relay");
    let mut running = Vec::new();
    for (host, enroll) in [("n1", &n1_enroll), ("n2", &n2_enroll)] {
        let creds = arg(&tmp.path().join(format!("{host}.json")));
        let mut cmd = command(&lab, &logs, host, relay_bin, &[], host);
        // Destinations on the lab's own (private) network are allowed.
        cmd.args([
            "node",
            "--enroll",
            enroll,
            "--credentials",
            &creds,
            "--allow-private",
        ]);
        running.push(lab.spawn(&mut cmd).expect("node"));
    }
    let mut cmd = command(&lab, &logs, "gw", relay_bin, &[DATAPLANE_DEBUG], "gateway");
    cmd.args(["gateway", "--enroll", &gw_enroll])
        .args(["--credentials", &arg(&tmp.path().join("gw.json"))])
        .args(["--listen", "0.0.0.0:443", "--public-url", &gw_url])
        .args(["--data-dir", &arg(&tmp.path().join("gw-data"))])
        .args(&gw_tls.args);
    running.push(lab.spawn(&mut cmd).expect("gateway"));

    // The operator signs in from outside (through the published API) and
    // a device is registered with a subscription.
    let api = format!("https://{published}");
    let device_token = on_host(&lab, "client", || {
        let (api, pin) = (api.clone(), ca.pin);
        async move { set_up_device(&api, pin).await }
    });
    on_host(&lab, "client", || {
        let api = api.clone();
        let pin = ca.pin;
        async move { wait_all_up(&api, pin, &["gw1", "n1", "n2"]).await }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs.dump()));
    // The gateway has its certificate before any client starts.
    let gw_tls_addr = SocketAddr::from((gw_public, 443));
    on_host(&lab, "client", || {
        certs::wait_certificate(gw_tls_addr, &gw_tls.trust, Duration::from_secs(90))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", acme.pebble.logs(), logs.dump()));

    // The stock client: its key from the access document the gateway
    // serves; ss-local with v2ray-plugin, trusting Pebble's root.
    let (method, secret) = on_host(&lab, "client", || {
        let doc = format!("{gw_url}/c/{device_token}");
        let trust = gw_tls.trust.clone();
        async move { access_key(&doc, gw_tls_addr, trust).await }
    });
    let stock = SocketAddr::from(([127, 0, 0, 1], 1080));
    let opts = format!(
        "tls;host={};cert={};path=/ws/{device_token}/tcp;mux=0",
        certs::GATEWAY_DOMAIN,
        arg(&gw_tls.trust)
    );
    let mut cmd = command(&lab, &logs, "client", "ss-local", &[], "ss-local");
    cmd.args([
        "-s",
        &gw_public.to_string(),
        "-p",
        "443",
        "-b",
        "127.0.0.1",
        "-l",
        "1080",
    ])
    .args(["-k", &secret, "-m", &method, "--plugin", "ss-v2ray-plugin"])
    .args(["--plugin-opts", &opts]);
    running.push(lab.spawn(&mut cmd).expect("ss-local"));
    // Ours: a port forward to the destination through the gateway.
    let web = Echo::start(&lab, "web", addr("web", "pool"));
    let SocketAddr::V4(web_v4) = web.addr else {
        unreachable!("an IPv4 lab")
    };
    let ours = SocketAddr::from(([127, 0, 0, 1], 1081));
    let mut cmd = command(
        &lab,
        &logs,
        "client",
        relay_bin,
        &[DATAPLANE_DEBUG],
        "connect",
    );
    cmd.args(["connect", "--backend", &api, "--backend-pin", &pin])
        .args([
            "--device-token",
            &device_token,
            "--ca-cert",
            &arg(&gw_tls.trust),
        ])
        .args([
            "--socks",
            &ours.to_string(),
            "--forward",
            &web.addr.to_string(),
        ]);
    running.push(lab.spawn(&mut cmd).expect("httvps-relay connect"));
    let within = Duration::from_secs(20);
    wait_listening(&lab, &logs, "client", stock, within);
    wait_listening(&lab, &logs, "client", ours, within);
    let ready = Instant::now();
    let tunnel = |which: SocketAddr| -> std::io::Result<std::net::TcpStream> {
        if which == stock {
            socks5(&lab, "client", stock, web_v4)
        } else {
            let s = hosts::connect(&lab, "client", ours, Duration::from_secs(5))?;
            s.set_read_timeout(Some(hosts::STALL))?;
            s.set_write_timeout(Some(hosts::STALL))?;
            Ok(s)
        }
    };
    // Both carry a MiB each way, byte for byte (ss-local listens before
    // its plugin is up: the first tries may close at once). A try that
    // stalls is given up after a few seconds, so one stuck tunnel does not
    // use up the whole wait.
    let mut carried = Vec::new();
    for (which, name) in [(stock, "the stock client"), (ours, "our client")] {
        let deadline = Instant::now() + 2 * within;
        let mut tries = Vec::new();
        loop {
            let at = Instant::now();
            let tried = tunnel(which)
                .map_err(|e| format!("connecting: {e}"))
                .and_then(|mut s| exchange(&mut s, 1 << 20));
            let Err(why) = tried else { break };
            tries.push(format!(
                "{:?} after the client was ready: {why}",
                at - ready
            ));
            assert!(
                Instant::now() < deadline,
                "{name} moved no data:\n{}\n{}",
                tries.join("\n"),
                logs.dump()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        carried.push(
            *web.peers()
                .last()
                .expect("a tunnel reached the destination"),
        );
    }

    // The client host cannot open a connection to a node (nor to the
    // control-plane host); the gateway host can.
    for to in [
        SocketAddr::from((n1, NODE_PORT)),
        SocketAddr::from((n2, NODE_PORT)),
        SocketAddr::from((cp, CP_PORT)),
    ] {
        let from_client = hosts::connect(&lab, "client", to, Duration::from_secs(3));
        assert!(from_client.is_err(), "the client host reached {to}");
        if to.port() == NODE_PORT {
            hosts::connect(&lab, "gw", to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("the gateway host cannot reach {to}: {e}"));
        }
    }

    // The node that carried the stock client's tunnel loses its link: new
    // tunnels go to the other one. The stock client has a fixed
    // configuration and no way to the control plane: it fetches nothing.
    let used = carried[0];
    let (cut, other) = if used == n1 { ("n1", n2) } else { ("n2", n1) };
    assert!(used == n1 || used == n2, "the destination saw {used}");
    ip(&lab, cut, &["link", "set", "dev", "pool", "down"]);
    for (which, name) in [(stock, "the stock client"), (ours, "our client")] {
        let seen = web.peers().len();
        let mut s = tunnel(which).unwrap_or_else(|e| panic!("{name}: {e}: {}", logs.dump()));
        if let Err(why) = exchange(&mut s, 256 << 10) {
            panic!(
                "{name}: no tunnel after {cut} went down: {why}: {}",
                logs.dump()
            );
        }
        assert_eq!(web.peers()[seen..], [other], "{name}'s new tunnel");
    }

    // Open tunnels keep running while the control plane is cut off for
    // 30 s: data goes both ways on each, every two seconds.
    let mut open = [
        (tunnel(stock).expect("stock"), "stock"),
        (tunnel(ours).expect("ours"), "ours"),
    ];
    for (s, name) in &mut open {
        if let Err(why) = exchange(s, 64 << 10) {
            panic!("{name} before the cut: {why}");
        }
    }
    lab.cut("cpnet").expect("cutting the control plane's link");
    let cut_at = Instant::now();
    let mut rounds = 0;
    while cut_at.elapsed() < CP_CUT {
        for (s, name) in &mut open {
            if let Err(why) = exchange(s, 64 << 10) {
                panic!(
                    "{name}: an open tunnel stopped {:?} into the cut: {why}: {}",
                    cut_at.elapsed(),
                    logs.dump()
                );
            }
        }
        rounds += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    lab.restore("cpnet").expect("restoring the link");
    assert!(rounds >= 10, "only {rounds} rounds during the cut");
    for (s, name) in &mut open {
        if let Err(why) = exchange(s, 64 << 10) {
            panic!("{name} after the cut: {why}: {}", logs.dump());
        }
    }
    drop(open);
    drop(running);
    drop(_server);
    acme.stop();
}

/// Installs ss-local and v2ray-plugin (Debian packages) when missing.
fn ensure_stock_client() {
    common::apt_install(
        &["shadowsocks-libev", "shadowsocks-v2ray-plugin"],
        &[("ss-local", "-h"), ("ss-v2ray-plugin", "-version")],
    );
}

/// Runs `ip -n <host's namespace> ARGS`.
fn ip(lab: &Lab, host: &str, args: &[&str]) {
    let ns = lab.netns(host).expect("host");
    let out = std::process::Command::new("ip")
        .args(["-n", &ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets one sysctl on `host`.
fn sysctl(lab: &Lab, host: &str, setting: &str) {
    let ns = lab.netns(host).expect("host");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sysctl", "-q", "-w", setting])
        .output()
        .expect("sysctl");
    assert!(
        out.status.success(),
        "sysctl {setting} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The address of the PostgreSQL server in `dsn`.
fn pg_addr(dsn: &str) -> SocketAddr {
    let url = reqwest::Url::parse(dsn).expect("DSN");
    let host: Ipv4Addr = url
        .host_str()
        .unwrap_or("127.0.0.1")
        .parse()
        .expect("an IPv4 PostgreSQL host");
    SocketAddr::from((host, url.port().unwrap_or(5432)))
}

/// An HTTPS client trusting as `link` says.
fn https(link: &Link) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(link.client_config().expect("TLS"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn gql(api: &str, pin: Pin, jwt: Option<&str>, query: &str, vars: Value) -> Value {
    let link = Link {
        pin: Some(pin),
        ..Link::default()
    };
    let mut req = https(&link)
        .post(format!("{api}/graphql"))
        .json(&json!({"query": query, "variables": vars}));
    if let Some(jwt) = jwt {
        req = req.bearer_auth(jwt);
    }
    req.send()
        .await
        .expect("GraphQL")
        .json()
        .await
        .expect("JSON")
}

/// Signs in as the operator, gives the account a subscription and
/// registers a device; returns its access token.
async fn set_up_device(api: &str, pin: Pin) -> String {
    let r = gql(
        api,
        pin,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": EMAIL, "p": PASSWORD}),
    )
    .await;
    let jwt = r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(api, pin, Some(&jwt), "mutation{createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"1000000000\",deviceLimit:3}){id}}", json!({})).await;
    let plan = r["data"]["createPlan"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(api, pin, Some(&jwt), "{me{id}}", json!({})).await;
    let me = r["data"]["me"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = gql(
        api,
        pin,
        Some(&jwt),
        "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
        json!({"u": me, "p": plan}),
    )
    .await;
    assert!(r["errors"].is_null(), "{r}");
    let r = gql(
        api,
        pin,
        Some(&jwt),
        "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){accessToken}}",
        json!({}),
    )
    .await;
    r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

/// Waits until the gateway and nodes named in `names` report up.
async fn wait_all_up(api: &str, pin: Pin, names: &[&str]) -> Result<(), String> {
    let r = gql(
        api,
        pin,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": EMAIL, "p": PASSWORD}),
    )
    .await;
    let jwt = r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let mut last = Value::Null;
    for _ in 0..300 {
        last = gql(
            api,
            pin,
            Some(&jwt),
            "{gatewayNodes{edges{node{name health}}} outlineNodes{edges{node{name health}}}}",
            json!({}),
        )
        .await;
        let up: Vec<&str> = ["gatewayNodes", "outlineNodes"]
            .iter()
            .filter_map(|l| last["data"][l]["edges"].as_array())
            .flatten()
            .filter(|e| e["node"]["health"] == "up")
            .filter_map(|e| e["node"]["name"].as_str())
            .collect();
        if names.iter().all(|n| up.contains(n)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not all of {names:?} came up: {last}"))
}

/// The cipher and secret of the access document at `url` (the gateway's
/// `/c/{token}`, as Outline apps fetch it), trusting `trust`; the
/// gateway's name resolves to `gateway`.
async fn access_key(url: &str, gateway: SocketAddr, trust: std::path::PathBuf) -> (String, String) {
    let link = Link {
        ca_file: Some(trust),
        ..Link::default()
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(link.client_config().expect("TLS"))
        .resolve(certs::GATEWAY_DOMAIN, gateway)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let text = client
        .get(url)
        .send()
        .await
        .expect("access document")
        .text()
        .await
        .expect("body");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let tcp = &doc["transport"]["tcp"];
    let field = |k: &str| {
        tcp[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_owned()
    };
    (field("cipher"), field("secret"))
}
