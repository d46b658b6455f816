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
