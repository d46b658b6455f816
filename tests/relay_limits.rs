//! `httvps-relay` raises its soft open-file limit to the hard one at start:
//! a service manager's default soft limit (1,024) would otherwise cap a
//! gateway or a node at a few hundred tunnels.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::time::Duration;

use plane::Plane;
use serde_json::json;

/// The soft and hard "Max open files" of process `pid`.
fn nofile(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line.split_whitespace().skip(3);
    Some((f.next()?.to_owned(), f.next()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_with_a_low_soft_limit_raises_it_to_the_hard_one() {
    let (_, hard) = nofile(std::process::id()).expect("our own limits");
    if hard.parse::<u64>().is_ok_and(|h| h <= 256) {
        // Nothing to raise to.
        return;
    }
    let (plane, listener) = Plane::prepare(0).await;
    drop(listener);
    let port = common::stable_port();
    let r = plane
        .gql(
            "mutation($p:Int!){registerOutlineNode(input:{region:\"eu\",name:\"limits\",host:\"127.0.0.1\",port:$p}){token}}",
            json!({"p": port}),
        )
        .await;
    let token = r["data"]["registerOutlineNode"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let dir = common::tempdir::TempDir::new();
    let script = format!(
        "ulimit -Sn 256 && exec {} node --backend {} --token {token} --listen 127.0.0.1:{port} --allow-private --credentials {}",
        env!("CARGO_BIN_EXE_httvps-relay"),
        plane.server.base,
        dir.path().join("node-credentials.json").display(),
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("httvps-relay node");
    let pid = child.id().expect("pid");
    let mut seen = None;
    for _ in 0..300 {
        // Once the node listens it has long passed the raise.
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            seen = nofile(pid);
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let (soft, hard) = seen.expect("the node listened");
    assert_ne!(soft, "256", "the soft limit was left as started");
    assert_eq!(soft, hard, "soft raised to hard");
}

/// Descriptors `pid` holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// `httvps up` holds the control plane, the gateway and the node in one
/// descriptor table: their connection budgets are fitted to it together.
/// Sockets that send nothing, held open against the gateway from several
/// sources (each under its per-source cap) and against the control plane,
/// are shed at the budgets, and the process never comes near its limit
/// (the defaults, 8,192 + 12,000 connections, ran a limit of 20,000 out
/// of descriptors: the node was marked unreachable and the spool went
/// unwritten), and one address holds no more than a quarter of the
/// control plane's budget, so others are answered meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn up_fits_its_budgets_to_its_open_file_limit() {
    const LIMIT: usize = 1024;
    let dir = common::tempdir::TempDir::new();
    let (port, gw, node) = (
        common::stable_port(),
        common::stable_port(),
        common::stable_port(),
    );
    let script = format!(
        "ulimit -n {LIMIT} && exec {} up",
        env!("CARGO_BIN_EXE_httvps")
    );
    let log = dir.path().join("up.log");
    let mut child = common::spawn_logged(
        tokio::process::Command::new("sh")
            .args(["-c", &script])
            .env("HTTVPS_DATA_DIR", dir.path().join("data"))
            .env("HTTVPS_UP_PORT", port.to_string())
            .env("HTTVPS_UP_GATEWAY_PORT", gw.to_string())
            .env("HTTVPS_UP_NODE_PORT", node.to_string())
            .env("RUST_LOG", "info"),
        &log,
    );
    let pid = child.id().expect("pid");
    let health = format!("http://127.0.0.1:{port}/api/v1/health");
    let answers = || async {
        common::client()
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    let mut up = false;
    for _ in 0..300 {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("control plane listening"))
            && answers().await
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "up did not start:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // 8 sources x 200 against the gateway, 600 against the control plane.
    let mut held = Vec::new();
    for (to, sources, each) in [(gw, 2..10u8, 200), (port, 10..11, 600)] {
        for s in sources {
            let from = std::net::IpAddr::from([127, 0, 0, s]);
            for _ in 0..each {
                held.push(plane::connect_from(Some(from), ([127, 0, 0, 1], to).into()).await);
            }
        }
    }
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One address holds at most a quarter of the control plane's budget:
    // others are still answered meanwhile.
    assert!(
        answers().await,
        "the control plane shut out others while one address held its connections"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        most < LIMIT - 128,
        "{most} descriptors open of {LIMIT}:\n{text}"
    );
    assert!(
        !text.contains("os error 24") && !text.contains("Too many open files"),
        "out of descriptors:\n{text}"
    );
    drop(held);
    let mut back = false;
    for _ in 0..100 {
        if answers().await {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    assert!(back, "the control plane did not answer after the flood");
}
