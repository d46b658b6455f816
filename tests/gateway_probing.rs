//! Nothing to probe, nothing left running, end to end on 127.0.0.1: every
//! refusal on the gateway's routes is answered byte for byte as an unknown
//! path is; UDP tunnels close after the idle timeout set; the client's
//! accept loop pauses when it is out of descriptors instead of spinning.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plane::Plane;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A request line and headers for `path` (`{method} {path}`), with the
/// complete set of upgrade headers except those `skip` names, plus `extra`
/// lines; it asks to close after the answer.
fn request(method: &str, path: &str, version: &str, skip: &[&str], extra: &[&str]) -> String {
    let mut lines = vec![
        format!("{method} {path} {version}"),
        "Host: localhost".into(),
    ];
    for (name, line) in [
        ("connection", "Connection: Upgrade, close".to_owned()),
        ("upgrade", "Upgrade: websocket".to_owned()),
        ("version", "Sec-WebSocket-Version: 13".to_owned()),
        ("key", format!("Sec-WebSocket-Key: {KEY}")),
    ] {
        if !skip.contains(&name) {
            lines.push(line);
        }
    }
    if skip.contains(&"connection") {
        lines.push("Connection: close".into());
    }
    lines.extend(extra.iter().map(|l| (*l).to_owned()));
    if method != "GET" && method != "HEAD" {
        lines.push("Content-Length: 0".into());
    }
    lines.join("\r\n") + "\r\n\r\n"
}

/// The whole answer to `raw`, with the clock (the `date` header's value)
/// masked: everything else must be byte for byte the same.
async fn answer(plane: &Plane, raw: &str) -> String {
    let mut s = plane.tls().await;
    s.write_all(raw.as_bytes()).await.expect("write");
    // Until the gateway closes (with or without TLS close_notify).
    let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
            Ok(_) => break,
            Err(_) => panic!("no close after the answer to {raw:?}"),
        }
    }
    String::from_utf8_lossy(&all)
        .split("\r\n")
        .map(|l| match l.get(..6) {
            Some(h) if h.eq_ignore_ascii_case("date: ") => "date: <clock>",
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_on_the_routes_is_answered_as_an_unknown_path_is() {
    // Guesses are throttled: not here, where each refusal is compared.
    let plane = Plane::start_with(1, |o| o.guess_limit = 10_000).await;
    let good = plane.device_token.clone();
    // A device that is known but revoked: refused.
    let r = plane
        .gql(
            "mutation{registerDevice(name:\"old\",platform:\"linux\"){accessToken device{id}}}",
            json!({}),
        )
        .await;
    let refused = r["data"]["registerDevice"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    plane
        .gql(
            "mutation($id:UUID!){revokeDevice(id:$id){status}}",
            json!({"id": r["data"]["registerDevice"]["device"]["id"]}),
        )
        .await;
    let forged = format!(
        "{}x",
        &common::alg_none_jwt(&plane.device_id, "httvps:device")
    );
    let unknown = "A".repeat(43);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The control: a valid upgrade is taken.
    let valid = plane.ws_from(None, &format!("/ws/{good}/tcp"), None).await;
    assert!(valid.is_ok(), "a valid upgrade is accepted");
    let bearer = |jwt: &str| format!("Authorization: Bearer {jwt}");
    let mut cases: Vec<(String, String)> = Vec::new();
    for kind in ["tcp", "udp"] {
        let path = format!("/ws/{good}/{kind}");
        let mut add = |name: &str, raw: String| cases.push((format!("{kind}: {name}"), raw));
        for key in [
            "short",
            "AAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j-Q==",
            "",
        ] {
            let line = format!("Sec-WebSocket-Key: {key}");
            add(
                &format!("key {key:?}"),
                request("GET", &path, "HTTP/1.1", &["key"], &[&line]),
            );
        }
        let second_key = format!("Sec-WebSocket-Key: {KEY}");
        add(
            "two keys",
            request("GET", &path, "HTTP/1.1", &[], &[&second_key]),
        );
        add("no key", request("GET", &path, "HTTP/1.1", &["key"], &[]));
        // A declared body: which bytes are body and which are frames would
        // depend on who reads the head.
        add(
            "a body",
            request("GET", &path, "HTTP/1.1", &[], &["Content-Length: 5"]) + "hello",
        );
        add(
            "a chunked body",
            request(
                "GET",
                &path,
                "HTTP/1.1",
                &[],
                &["Transfer-Encoding: chunked"],
            ) + "0\r\n\r\n",
        );
        for v in ["8", "12", "13, 8", "14"] {
            let line = format!("Sec-WebSocket-Version: {v}");
            add(
                &format!("version {v}"),
                request("GET", &path, "HTTP/1.1", &["version"], &[&line]),
            );
        }
        add(
            "no version",
            request("GET", &path, "HTTP/1.1", &["version"], &[]),
        );
        for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"] {
            add(m, request(m, &path, "HTTP/1.1", &[], &[]));
        }
        add(
            "plain GET",
            request(
                "GET",
                &path,
                "HTTP/1.1",
                &["connection", "upgrade", "version", "key"],
                &[],
            ),
        );
        add(
            "no Upgrade",
            request("GET", &path, "HTTP/1.1", &["upgrade"], &[]),
        );
        add(
            "Upgrade: h2c",
            request("GET", &path, "HTTP/1.1", &["upgrade"], &["Upgrade: h2c"]),
        );
        add(
            "no Connection: Upgrade",
            request("GET", &path, "HTTP/1.1", &["connection"], &[]),
        );
        add("HTTP/1.0", request("GET", &path, "HTTP/1.0", &[], &[]));
        for (name, token) in [
            ("unknown", unknown.as_str()),
            ("refused", &refused),
            ("short", "abc"),
        ] {
            add(
                &format!("{name} token"),
                request("GET", &format!("/ws/{token}/{kind}"), "HTTP/1.1", &[], &[]),
            );
        }
        add(
            "forged JWT",
            request(
                "GET",
                &format!("/ws/-/{kind}"),
                "HTTP/1.1",
                &[],
                &[&bearer(&forged)],
            ),
        );
        add(
            "forged JWT in the path",
            request("GET", &format!("/ws/{forged}/{kind}"), "HTTP/1.1", &[], &[]),
        );
        add(
            "bad UTF-8",
            request("GET", &format!("/ws/%FF%FE/{kind}"), "HTTP/1.1", &[], &[]),
        );
    }
    let doc = |method: &str, token: &str| {
        request(
            method,
            &format!("/c/{token}"),
            "HTTP/1.1",
            &["connection", "upgrade", "version", "key"],
            &[],
        )
    };
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        cases.push((format!("/c/: {m}"), doc(m, &good)));
    }
    for (name, token) in [
        ("unknown", unknown.as_str()),
        ("refused", &refused),
        ("short", "abc"),
        ("forged JWT", &forged),
        ("bad UTF-8", "%FF"),
    ] {
        cases.push((format!("/c/: {name} token"), doc("GET", token)));
    }
    for (name, raw) in &cases {
        // The same request on a path that is no route.
        let elsewhere = raw
            .replacen(" /ws/", " /wz/", 1)
            .replacen(" /c/", " /d/", 1);
        assert_ne!(&elsewhere, raw);
        let (got, want) = (answer(&plane, raw).await, answer(&plane, &elsewhere).await);
        assert_eq!(got.split(' ').nth(1), Some("404"), "{name}: {got}");
        assert_eq!(got, want, "{name}: answered unlike an unknown path");
    }
    // A plain unknown path's answer is that one too.
    let nope = answer(
        &plane,
        &request(
            "GET",
            "/nope",
            "HTTP/1.1",
            &["connection", "upgrade", "version", "key"],
            &[],
        ),
    )
    .await;
    let c_unknown = answer(&plane, &doc("GET", &unknown)).await;
    assert_eq!(nope, c_unknown);
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_tunnels_close_after_the_idle_timeout_set() {
    let plane = Plane::start_with(1, |o| {
        o.idle_ping = Duration::from_millis(300);
        o.idle_timeout = Duration::from_millis(1500);
    })
    .await;
    let mut w = plane
        .ws_from(None, &format!("/ws/{}/udp", plane.device_token), None)
        .await
        .expect("upgrade");
    let started = Instant::now();
    let (mut pings, mut close) = (0, None);
    while started.elapsed() < Duration::from_secs(8) {
        match tokio::time::timeout(Duration::from_secs(8), w.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(f)))) => {
                close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let took = started.elapsed();
    assert!(pings >= 1, "no ping while idle");
    assert_eq!(close, Some((1000, "idle".to_owned())), "closed as idle");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "closed after {took:?}, the timeout is 1.5 s"
    );
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces), then
    // utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_pauses_instead_of_spinning_when_out_of_descriptors() {
    let plane = Plane::start(1).await;
    let port = common::stable_port();
    let limit = 64;
    let bin = env!("CARGO_BIN_EXE_httvps-relay");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(["connect", "--backend", &plane.server.base])
        .args(["--device-token", &plane.device_token])
        .args(["--socks", &format!("127.0.0.1:{port}")])
        .args([
            "--gateway",
            &format!("https://localhost:{}", plane.gateway_addr.port()),
        ])
        .arg("--ca-cert")
        .arg(&plane.cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the client");
    let pid = child.id().expect("pid");
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the client listens");
    // More local connections than it has descriptors: once they are all
    // taken, the rest wait in the backlog and every accept fails.
    let mut held = Vec::new();
    for _ in 0..(2 * limit) {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        fds + 4 >= limit,
        "the client is out of descriptors ({fds} of {limit})"
    );
    let (before, started) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid) - before;
    let elapsed = started.elapsed();
    // A spinning accept loop burns a whole core (about 100 ticks a second).
    assert!(
        used < 60,
        "{used} ticks of CPU in {elapsed:?} while out of descriptors"
    );
    assert!(
        child.try_wait().expect("status").is_none(),
        "the client is still running"
    );
    drop(held);
    let _ = child.start_kill();
    let _ = child.wait().await;
}
