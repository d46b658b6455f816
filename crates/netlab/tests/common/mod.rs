//! Helpers shared by the lab tests: the skip rule, and TCP endpoints that
//! live on a host of a lab.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use httvps_netlab::{Lab, netns};

/// Whether the test can run here. Where namespaces cannot be created (not
/// root, no `ip`) it prints why and the test returns early; with
/// `HTTVPS_NETLAB_REQUIRED` set, as CI does on machines that can, a skip
/// fails instead.
pub fn netns_or_skip(test: &str) -> bool {
    let why = match netns::available().and_then(|()| netns::tun_available()) {
        Ok(()) => return true,
        Err(why) => why,
    };
    assert!(
        std::env::var_os("HTTVPS_NETLAB_REQUIRED").is_none(),
        "{test}: namespaces are required here but unavailable: {why}"
    );
    // Straight to stderr: the test harness does not capture it, so the
    // skip shows in the run's output.
    let _ = writeln!(io::stderr(), "SKIPPED {test}: {why}");
    false
}

/// A listener on `host`, port chosen by the kernel, answering each
/// connection with `reply(request bytes)` on its own thread.
pub fn serve(lab: &Lab, host: &str, reply: fn(&mut TcpStream)) -> u16 {
    let listener = lab
        .run_in(host, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("entering the host")
        .expect("binding");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || reply(&mut stream));
        }
    });
    port
}

/// Echoes whatever arrives until the peer closes.
pub fn echo(stream: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Connects from `host` to `addr:port` with a deadline.
pub fn connect(
    lab: &Lab,
    host: &str,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> io::Result<TcpStream> {
    lab.run_in(host, || {
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), timeout)
    })
    .expect("entering the host")
}
