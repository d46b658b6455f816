//! The `httvps-netlab` binary as a benchmark script drives it: a `ready`
//! line with the addresses, a clean teardown on SIGTERM, and `cleanup`
//! for what a killed run leaves.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use common::netns_or_skip;
use httvps_netlab::netns;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_httvps-netlab");

fn start(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(BIN)
        .arg("up")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting httvps-netlab");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

fn next_json(out: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    out.read_line(&mut line).expect("reading a line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("kill");
}

#[test]
fn up_prints_the_lab_and_tears_it_down_on_sigterm() {
    if !netns_or_skip("up_prints_the_lab_and_tears_it_down_on_sigterm") {
        return;
    }
    let (mut child, mut out) = start(&[
        "--name",
        "cli",
        "--link",
        "public=client,gw@203.0.113.0/24",
        "--link",
        "pool=gw,n1,n2",
        "--line",
        "wan=client,gw,delay_ms=25,loss=0.01,seed=3",
        "--route",
        "client,n1,gw",
        "--host",
        "lonely",
        "--sysctl",
        "net.ipv4.tcp_wmem=4096 16384 16777216",
        "--relay",
        "n2,127.0.0.1:0,127.0.0.1:5432",
    ]);
    let ready = next_json(&mut out);
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(ready["lab"], "cli");
    let prefix = ready["prefix"].as_str().expect("prefix").to_owned();
    assert_eq!(
        netns::list(&prefix).expect("list").len(),
        6,
        "5 hosts and the fabric"
    );
    let client = &ready["hosts"]["client"];
    assert_eq!(client["addrs"]["public"], "203.0.113.1");
    assert_eq!(client["reach"]["gw"], "198.19.0.2", "the line wins");
    assert_eq!(client["reach"]["n1"], "198.18.1.2");
    assert!(client["reach"].get("n2").is_none());
    assert_eq!(ready["hosts"]["gw"]["router"], true);
    assert_eq!(ready["lines"]["wan"]["delay_ms"], 25.0);
    assert_eq!(ready["lines"]["wan"]["loss"], 0.01);
    assert_eq!(ready["links"]["pool"]["subnet"], "198.18.1.0/24");
    let relay = &ready["relays"][0];
    assert_eq!(relay["host"], "n2");
    assert_eq!(relay["target"], "127.0.0.1:5432");
    let listen = relay["listen"].as_str().expect("listen");
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{listen}"
    );
    let wmem = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}n2")])
        .args(["sysctl", "-n", "net.ipv4.tcp_wmem"])
        .output()
        .expect("sysctl");
    let wmem = String::from_utf8_lossy(&wmem.stdout);
    assert_eq!(wmem.split_whitespace().last(), Some("16777216"), "{wmem}");

    signal(&child, Signal::SIGUSR1);
    let stats = next_json(&mut out);
    assert_eq!(stats["event"], "stats", "{stats}");
    assert!(stats["lines"]["wan"]["a_to_b"]["delivered"].is_u64());

    signal(&child, Signal::SIGTERM);
    assert_eq!(next_json(&mut out)["event"], "stats");
    let down = next_json(&mut out);
    assert_eq!(down["event"], "down", "{down}");
    assert!(child.wait().expect("wait").success());
    assert!(netns::list(&prefix).expect("list").is_empty());
}

#[test]
fn cleanup_removes_what_a_killed_run_left() {
    if !netns_or_skip("cleanup_removes_what_a_killed_run_left") {
        return;
    }
    let (mut child, mut out) = start(&["--link", "l0=a,b", "--line", "d=a,b"]);
    let ready = next_json(&mut out);
    let prefix = ready["prefix"].as_str().expect("prefix").to_owned();
    signal(&child, Signal::SIGKILL);
    child.wait().expect("wait");
    assert_eq!(
        netns::list(&prefix).expect("list").len(),
        3,
        "a kill leaves them"
    );

    let swept = Command::new(BIN).arg("cleanup").output().expect("cleanup");
    assert!(swept.status.success());
    let report: Value = serde_json::from_slice(&swept.stdout).expect("json");
    assert_eq!(report["event"], "cleanup");
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(removed.iter().any(|n| n.starts_with(&prefix)), "{report}");
    assert!(netns::list(&prefix).expect("list").is_empty());
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    // Parsing happens before anything is created: no namespaces needed.
    for (args, expected) in [
        (&["--line", "wan=a"][..], "two hosts"),
        (&["--line", "wan=a,b,jitter=3"][..], "unknown setting"),
        (&["--link", "l0=a,b", "--route", "a,b"][..], "A,B,VIA"),
        (&["--link", "l0=a,b@10.0.0.1/24"][..], "host bits"),
        (&["--line", "wan=a,b,loss=2"][..], "loss"),
        (
            &["--link", "l0=a,b", "--relay", "a,1.2.3.4:5"][..],
            "HOST,LISTEN,TARGET",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("up")
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
