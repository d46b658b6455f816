//! The delay line on real namespaces: round trips cost twice the one-way
//! delay, the loss share is what was asked, the rate limit holds, a cut
//! line carries nothing, and data crosses intact in both modes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{connect, echo, netns_or_skip, serve};
use httvps_netlab::{Lab, LineParams, Topology};

/// These tests time things or push bulk data, so they run one at a time:
/// on two cores a bulk transfer beside a round-trip measurement would
/// measure the CPU queue, not the line.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Answers one small request (read until the blank line) with a tiny
/// HTTP response, as a web server would.
fn http_reply(stream: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi");
}

/// Connects from `host` and times the connect and the response's first
/// byte (both from the start of the connect).
fn time_request(lab: &Lab, host: &str, addr: Ipv4Addr, port: u16) -> (Duration, Duration) {
    let start = Instant::now();
    let mut s = connect(lab, host, addr, port, Duration::from_secs(2)).expect("connect");
    let connected = start.elapsed();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("first byte");
    (connected, start.elapsed())
}

#[test]
fn round_trips_take_twice_the_one_way_delay() {
    if !netns_or_skip("round_trips_take_twice_the_one_way_delay") {
        return;
    }
    let _serial = one_at_a_time();
    let topo = Topology::new()
        .delay_line("wan", "a", "b", LineParams::with_delay(ms(25)))
        .delay_line("fast", "c", "d", LineParams::default());
    let lab = Lab::build("rtt", &topo).expect("lab");
    let port = serve(&lab, "b", http_reply);
    let b = lab.reach("a", "b").expect("a reaches b");
    // Never faster than the line allows; at least one of the samples
    // close to it (on two shared cores, any one may wait for a CPU).
    let samples: Vec<_> = (0..6).map(|_| time_request(&lab, "a", b, port)).collect();
    for &(connected, first_byte) in &samples {
        // One round trip (SYN, SYN-ACK) is 50 ms; two (plus the request)
        // bring the first byte at 100 ms.
        assert!(connected >= ms(45), "connect took {connected:?}");
        assert!(first_byte >= ms(95), "first byte after {first_byte:?}");
    }
    let best_connect = samples.iter().map(|s| s.0).min().expect("samples");
    let best_first = samples.iter().map(|s| s.1).min().expect("samples");
    assert!(best_connect < ms(80), "connect took {samples:?}");
    assert!(best_first < ms(140), "first byte after {samples:?}");
    // The line itself wrote every packet close to its time.
    let c = lab.line_counts("wan").expect("line");
    for dir in [c.a_to_b, c.b_to_a] {
        assert!(dir.late_us_max < 25_000, "{dir:?}");
    }
    // The same through a line without delay: the 50 ms above are the
    // line's, not the machinery's.
    let port = serve(&lab, "d", http_reply);
    let d = lab.reach("c", "d").expect("c reaches d");
    let fast: Vec<_> = (0..3).map(|_| time_request(&lab, "c", d, port)).collect();
    let best_connect = fast.iter().map(|s| s.0).min().expect("samples");
    let best_first = fast.iter().map(|s| s.1).min().expect("samples");
    assert!(best_connect < ms(10), "connect took {fast:?}");
    assert!(best_first < ms(20), "first byte after {fast:?}");
}

#[test]
fn the_measured_loss_matches_the_configured_share() {
    if !netns_or_skip("the_measured_loss_matches_the_configured_share") {
        return;
    }
    let _serial = one_at_a_time();
    const SENT: u64 = 20_000;
    let params = LineParams {
        delay: ms(5),
        loss: 0.01,
        seed: 42,
        ..LineParams::default()
    };
    let lab =
        Lab::build("loss", &Topology::new().delay_line("wan", "a", "b", params)).expect("lab");
    let b = lab.reach("a", "b").expect("a reaches b");
    let rx = lab
        .run_in("b", || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("host")
        .expect("bind");
    let port = rx.local_addr().expect("addr").port();
    // Room for the bursts the line delivers when a batch comes due, so
    // that the receiving socket drops nothing.
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))
        .expect("SO_RCVBUF");
    rx.set_read_timeout(Some(ms(500))).expect("timeout");
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let tx = lab
        .run_in("a", || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("host")
        .expect("bind");
    for i in 0..SENT {
        tx.send_to(&i.to_be_bytes(), (b, port)).expect("send");
        // Paced so that no socket buffer on the way overflows: any drop
        // then is the line's.
        if i % 100 == 99 {
            std::thread::sleep(ms(1));
        }
    }
    let received = receiver.join().expect("receiver");
    let counts = lab.line_counts("wan").expect("line").a_to_b;
    assert_eq!(counts.received, SENT, "{counts:?}");
    // 200 expected, standard deviation 14: this range is ±4 deviations.
    assert!((140..=260).contains(&counts.lost), "{counts:?}");
    assert_eq!(counts.delivered, SENT - counts.lost, "{counts:?}");
    assert_eq!(
        received, counts.delivered,
        "only the line drops: {counts:?}"
    );
    assert_eq!(counts.queue_dropped + counts.overflow + counts.errors, 0);
}

#[test]
fn the_rate_limit_caps_throughput() {
    if !netns_or_skip("the_rate_limit_caps_throughput") {
        return;
    }
    let _serial = one_at_a_time();
    const BYTES: usize = 2_500_000;
    let params = LineParams {
        rate_bps: Some(20_000_000),
        ..LineParams::default()
    };
    let lab =
        Lab::build("rate", &Topology::new().delay_line("wan", "a", "b", params)).expect("lab");
    // The server drains everything, then answers one byte.
    let port = serve(&lab, "b", |s| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < BYTES {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
        let _ = s.write_all(b"k");
    });
    let b = lab.reach("a", "b").expect("a reaches b");
    let mut s = connect(&lab, "a", b, port, ms(500)).expect("connect");
    let start = Instant::now();
    s.write_all(&vec![7u8; BYTES]).expect("send");
    let mut done = [0u8; 1];
    s.read_exact(&mut done).expect("drained");
    let mbit = BYTES as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
    // Headers take ~3 % of the 20 Mbit/s, slow start a little more.
    assert!((14.0..=20.5).contains(&mbit), "{mbit:.1} Mbit/s");
}

#[test]
fn a_cut_line_carries_nothing_until_restored() {
    if !netns_or_skip("a_cut_line_carries_nothing_until_restored") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::build(
        "cutline",
        &Topology::new().delay_line("wan", "a", "b", LineParams::with_delay(ms(2))),
    )
    .expect("lab");
    let port = serve(&lab, "b", echo);
    let b = lab.reach("a", "b").expect("a reaches b");
    lab.cut("wan").expect("cut");
    let err = connect(&lab, "a", b, port, ms(300)).expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(lab.line_counts("wan").expect("line").a_to_b.cut >= 1);
    lab.restore("wan").expect("restore");
    connect(&lab, "a", b, port, ms(300)).expect("restored");
}

/// Bytes of a repeatable pseudo-random stream.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` pattern bytes from a to b over line "wan"; b checks them.
fn transfer_is_intact(lab: &Lab, len: usize) {
    let port = serve(lab, "b", |s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let ok = got == pattern(got.len()) && !got.is_empty();
        let _ = s.write_all(&[u8::from(ok)]);
    });
    let b = lab.reach("a", "b").expect("a reaches b");
    let mut s = connect(lab, "a", b, port, ms(500)).expect("connect");
    s.write_all(&pattern(len)).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).expect("verdict");
    assert_eq!(verdict[0], 1, "the data arrived altered");
}

#[test]
fn data_crosses_intact_packet_by_packet_and_with_offload() {
    if !netns_or_skip("data_crosses_intact_packet_by_packet_and_with_offload") {
        return;
    }
    let _serial = one_at_a_time();
    const LEN: usize = 16 << 20;
    for offload in [false, true] {
        let params = LineParams {
            delay: ms(2),
            offload,
            ..LineParams::default()
        };
        let lab = Lab::build(
            "intact",
            &Topology::new().delay_line("wan", "a", "b", params),
        )
        .expect("lab");
        transfer_is_intact(&lab, LEN);
        let c = lab.line_counts("wan").expect("line").a_to_b;
        // `queue_dropped` may be non-zero: a local sender bursts faster
        // than the line reads packet by packet, and TCP copes.
        assert_eq!(c.lost + c.overflow + c.errors, 0, "{c:?}");
        let per_packet = c.bytes / c.delivered.max(1);
        if offload {
            // Segments cross in GSO units of many segments each.
            assert!(per_packet > 4_000, "{per_packet} bytes per unit: {c:?}");
        } else {
            assert!(per_packet <= 1_500, "{per_packet} bytes per packet: {c:?}");
        }
    }
}
