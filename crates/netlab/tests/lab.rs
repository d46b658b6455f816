//! Labs on real namespaces: hosts reach exactly what the topology says,
//! links cut and come back, and nothing outlives the lab.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{connect, echo, netns_or_skip, serve};
use httvps_netlab::{Lab, Topology, netns};

const SHORT: Duration = Duration::from_millis(300);

/// Runs `ip ARGS` inside `host`, asserting it succeeds.
fn ip_in(lab: &Lab, host: &str, args: &[&str]) {
    let status = lab
        .command(host, "ip")
        .expect("host")
        .args(args)
        .status()
        .expect("running ip");
    assert!(status.success(), "ip {args:?} in {host}");
}

/// Sends `msg` and expects it echoed within `within`.
fn round_trip(stream: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<()> {
    stream.set_read_timeout(Some(within))?;
    stream.write_all(msg)?;
    let mut buf = vec![0; msg.len()];
    stream.read_exact(&mut buf)?;
    assert_eq!(buf, msg);
    Ok(())
}

#[test]
fn hosts_reach_exactly_what_they_are_linked_to() {
    if !netns_or_skip("hosts_reach_exactly_what_they_are_linked_to") {
        return;
    }
    // Link names that are also prefixes of `ip` keywords, on purpose.
    let topo = Topology::new()
        .link("l", &["a", "b"])
        .link("up", &["b", "c"])
        .host("d");
    let lab = Lab::build("reach", &topo).expect("lab");
    let port_b = serve(&lab, "b", echo);
    let port_c = serve(&lab, "c", echo);
    let b = lab.reach("a", "b").expect("a reaches b");
    let c = lab.addr("c", "up").expect("c on up");

    let mut s = connect(&lab, "a", b, port_b, SHORT).expect("a connects to b");
    round_trip(&mut s, b"hello", SHORT).expect("echo from b");
    let mut s = connect(&lab, "b", c, port_c, SHORT).expect("b connects to c");
    round_trip(&mut s, b"hello", SHORT).expect("echo from c");
    assert_eq!(lab.reach("a", "c"), None);
    assert_eq!(lab.reach("d", "b"), None);

    // No route at all: refused at once.
    let err = connect(&lab, "a", c, port_c, SHORT).expect_err("a has no route to c");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
    let err = connect(&lab, "d", b, port_b, SHORT).expect_err("d is on no link");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");

    // Routes through b, but b is no router: the packets die at b.
    let b_on_l0 = b.to_string();
    let b_on_l1 = lab.addr("b", "up").expect("b on up").to_string();
    let a_addr = lab.addr("a", "l").expect("a on l").to_string();
    ip_in(
        &lab,
        "a",
        &["route", "add", &format!("{c}/32"), "via", &b_on_l0],
    );
    ip_in(
        &lab,
        "c",
        &["route", "add", &format!("{a_addr}/32"), "via", &b_on_l1],
    );
    let err = connect(&lab, "a", c, port_c, SHORT).expect_err("b must not forward");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
}

#[test]
fn a_declared_router_forwards_between_its_links() {
    if !netns_or_skip("a_declared_router_forwards_between_its_links") {
        return;
    }
    let topo = Topology::new()
        .link("l0", &["a", "b"])
        .link("l1", &["b", "c"])
        .link("l2", &["b", "e"])
        .route("a", "c", "b");
    let lab = Lab::build("router", &topo).expect("lab");
    let port_c = serve(&lab, "c", echo);
    let port_e = serve(&lab, "e", echo);
    let c = lab.reach("a", "c").expect("a reaches c through b");
    assert_eq!(Some(c), lab.addr("c", "l1"));
    let mut s = connect(&lab, "a", c, port_c, SHORT).expect("a connects to c via b");
    round_trip(&mut s, b"routed", SHORT).expect("echo from c");
    // b forwards, but only the declared pair has routes: e stays out of
    // a's reach.
    let e = lab.addr("e", "l2").expect("e on l2");
    let err = connect(&lab, "a", e, port_e, SHORT).expect_err("no route from a to e");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
}

#[test]
fn a_cut_link_drops_everything_and_open_connections_resume_when_restored() {
    if !netns_or_skip("a_cut_link_drops_everything_and_open_connections_resume_when_restored") {
        return;
    }
    let topo = Topology::new()
        .link("l0", &["a", "b"])
        .link("seg", &["x", "y", "z"]);
    let lab = Lab::build("cut", &topo).expect("lab");
    let port = serve(&lab, "b", echo);
    let b = lab.reach("a", "b").expect("a reaches b");
    let mut open = connect(&lab, "a", b, port, SHORT).expect("connect");
    round_trip(&mut open, b"before", SHORT).expect("echo before the cut");

    lab.cut("l0").expect("cut");
    let err = connect(&lab, "a", b, port, SHORT).expect_err("no new connection over a cut link");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let err = round_trip(&mut open, b"during", SHORT).expect_err("nothing crosses a cut link");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );

    lab.restore("l0").expect("restore");
    // The bytes sent during the cut arrive by retransmission; the echo
    // reader still expects them.
    open.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).expect("the held bytes arrive");
    assert_eq!(&buf, b"during");
    round_trip(&mut open, b"after", SHORT).expect("echo after the restore");
    connect(&lab, "a", b, port, SHORT).expect("new connections again");

    // One host cut off a shared segment; the others carry on.
    let port_y = serve(&lab, "y", echo);
    let port_z = serve(&lab, "z", echo);
    let y = lab.reach("x", "y").expect("x reaches y");
    let z = lab.reach("x", "z").expect("x reaches z");
    lab.cut_host("seg", "z").expect("cut z");
    connect(&lab, "x", y, port_y, SHORT).expect("x still reaches y");
    let err = connect(&lab, "x", z, port_z, SHORT).expect_err("z is cut off");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    lab.restore_host("seg", "z").expect("restore z");
    connect(&lab, "x", z, port_z, SHORT).expect("z is back");

    assert!(lab.cut("nope").is_err());
    assert!(lab.cut_host("seg", "a").is_err());
}

#[test]
fn nothing_outlives_the_lab() {
    if !netns_or_skip("nothing_outlives_the_lab") {
        return;
    }
    let topo = Topology::new().link("l0", &["a", "b"]).delay_line(
        "wan",
        "a",
        "b",
        httvps_netlab::LineParams::default(),
    );
    let lab = Lab::build("leak", &topo).expect("lab");
    let prefix = lab.prefix().to_owned();
    assert_eq!(
        netns::list(&prefix).expect("list").len(),
        3,
        "a, b and the fabric"
    );
    // One process the lab tracks, one it does not know about.
    let tracked = lab
        .spawn(lab.command("a", "sleep").expect("host").arg("600"))
        .expect("spawn");
    let tracked_pid = tracked.pid();
    let mut untracked = lab
        .command("b", "sleep")
        .expect("host")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until the untracked one has entered its namespace.
    let ns_b = lab.netns("b").expect("b");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !netns::pids(&ns_b)
        .expect("pids")
        .contains(&(untracked.id() as i32))
    {
        assert!(Instant::now() < deadline, "sleep never showed up in b");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(tracked);
    drop(lab);

    assert!(
        netns::list(&prefix).expect("list").is_empty(),
        "namespaces left"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{tracked_pid}")).exists(),
        "the tracked process survived"
    );
    let status = untracked.wait().expect("wait");
    assert!(
        !status.success(),
        "the untracked process was killed: {status}"
    );
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(
        !root_links.contains(": p0m0") && !root_links.contains(": wan"),
        "an interface leaked into the root namespace"
    );
}

#[test]
fn leftovers_of_a_dead_run_are_swept_and_live_ones_kept() {
    if !netns_or_skip("leftovers_of_a_dead_run_are_swept_and_live_ones_kept") {
        return;
    }
    // A pid that existed and is gone: a process we ran to completion.
    let mut done = std::process::Command::new("true").spawn().expect("true");
    let dead = done.id();
    done.wait().expect("wait");
    let stale = format!("{}{dead}-0-ghost", netns::PREFIX);
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip");
    assert!(status.success());
    let lab = Lab::build("alive", &Topology::new().host("a")).expect("lab");

    let removed = netns::cleanup_stale().expect("sweep");
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(netns::list(&stale).expect("list").is_empty());
    assert_eq!(
        netns::list(lab.prefix()).expect("list").len(),
        1,
        "live lab kept"
    );
}

#[test]
fn threads_started_on_a_host_and_their_own_threads_live_there() {
    if !netns_or_skip("threads_started_on_a_host_and_their_own_threads_live_there") {
        return;
    }
    let lab = Lab::build("threads", &Topology::new().link("l0", &["a", "b"])).expect("lab");
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = lab
        .spawn_thread("b", move || {
            // A thread of the thread, as a runtime's worker would be.
            std::thread::spawn(move || {
                let listener = std::net::TcpListener::bind(("0.0.0.0", 0))?;
                let _ = port_tx.send(listener.local_addr()?.port());
                listener.accept().map(|(_, peer)| peer.ip())
            })
            .join()
        })
        .expect("thread in b");
    let port = port_rx.recv_timeout(SHORT).expect("listening");
    let b = lab.reach("a", "b").expect("a reaches b");
    let _s = connect(&lab, "a", b, port, SHORT).expect("a connects to b's thread");
    let peer = server
        .join()
        .expect("server thread")
        .expect("inner thread")
        .expect("accept");
    assert_eq!(Some(peer), lab.addr("a", "l0").map(std::net::IpAddr::V4));
    assert!(lab.spawn_thread("nobody", || ()).is_err());
}

#[test]
fn a_relay_brings_a_service_outside_the_lab_to_one_host() {
    if !netns_or_skip("a_relay_brings_a_service_outside_the_lab_to_one_host") {
        return;
    }
    // An echo service in the test's own (root) namespace, as the
    // machine's PostgreSQL would be.
    let outside = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let target = outside.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in outside.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || echo(&mut stream));
        }
    });
    let lab = Lab::build("relay", &Topology::new().link("l0", &["cp", "gw"])).expect("lab");
    // Unreachable from inside until relayed: the host's 127.0.0.1 is its own.
    let err = connect(
        &lab,
        "cp",
        std::net::Ipv4Addr::LOCALHOST,
        target.port(),
        SHORT,
    )
    .expect_err("the root namespace's loopback leaked in");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let local = lab
        .relay("cp", "127.0.0.1:0".parse().expect("addr"), target)
        .expect("relay");
    let std::net::IpAddr::V4(ip) = local.ip() else {
        panic!("IPv4 expected");
    };
    let mut s = connect(&lab, "cp", ip, local.port(), SHORT).expect("relayed connect");
    round_trip(&mut s, b"through the relay", SHORT).expect("echo through the relay");
    // Only the host it was made for.
    let err = connect(&lab, "gw", ip, local.port(), SHORT).expect_err("gw has no relay");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}
