//! Working on the hosts of a lab: processes with logs, async code on a
//! host's own runtime, a destination server that notes who connected,
//! SOCKS5, and byte-exact exchanges through tunnels.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use httvps_netlab::Lab;

/// The directory every process of the test logs to and runs in (so no
/// `.env` of the developer's is read).
pub struct Logs {
    /// The directory.
    pub dir: PathBuf,
}

impl Logs {
    /// The path of log `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last lines of every log, for a failure's message.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {}\n{}\n", p.display(), tail.join("\n")));
        }
        out
    }
}

/// A command running `program` on `host` with only `env` (and PATH) in
/// its environment, in the logs directory, logging to `<log>.log`.
pub fn command(
    lab: &Lab,
    logs: &Logs,
    host: &str,
    program: &str,
    env: &[(&str, &str)],
    log: &str,
) -> Command {
    let mut cmd = lab.command(host, program).expect("host");
    let out = std::fs::File::create(logs.file(log)).expect("log file");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .current_dir(&logs.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map(Stdio::from).expect("log"))
        .stderr(Stdio::from(out));
    cmd
}

/// Runs a short command to completion; returns the last line of its
/// stdout (the enrollment string of `httvps gateway|node add`). `stdin`
/// is written to its standard input.
pub fn run(
    lab: &Lab,
    logs: &Logs,
    host: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> String {
    let mut cmd = command(lab, logs, host, env!("CARGO_BIN_EXE_httvps"), env, "cli");
    cmd.args(args)
        .stdout(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("httvps");
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("httvps");
    assert!(
        out.status.success(),
        "httvps {args:?} failed: {}",
        logs.dump()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Runs the future `make()` returns on a runtime of its own inside `host`:
/// every socket it opens is on that host.
pub fn on_host<T: Send, F: Future<Output = T>>(
    lab: &Lab,
    host: &str,
    make: impl FnOnce() -> F + Send,
) -> T {
    lab.run_in(host, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(make())
    })
    .expect("host")
}

/// A TCP connection from `host` to `to`, within `timeout`.
pub fn connect(
    lab: &Lab,
    host: &str,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    lab.run_in(host, || TcpStream::connect_timeout(&to, timeout))
        .expect("host")
}

/// Waits (up to `within`) until something listens at `to` as `host` sees
/// it.
pub fn wait_listening(lab: &Lab, logs: &Logs, host: &str, to: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while connect(lab, host, to, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens at {to} on {host}: {}",
            logs.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The destination server: echoes every connection back and notes the
/// address each came from (which node carried it).
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Echo {
    /// Starts it on `host` at `addr`:7.
    pub fn start(lab: &Lab, host: &str, addr: Ipv4Addr) -> Echo {
        let addr = SocketAddr::from((addr, 7));
        let listener = lab
            .run_in(host, || TcpListener::bind(addr))
            .expect("host")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, flag) = (peers.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, SocketAddr::V4(from))) => {
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(*from.ip());
                        std::thread::spawn(move || echo(s));
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Echo {
            addr,
            peers,
            stop,
            accept: Some(accept),
        }
    }

    /// The addresses connections came from, in order.
    pub fn peers(&self) -> Vec<Ipv4Addr> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn echo(s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = s;
    let _ = std::io::copy(&mut r, &mut w);
    let _ = w.shutdown(Shutdown::Write);
}

/// How long a tunnel of the lab may stay silent (reading or writing)
/// before a try through it is given up: more than a gateway takes to give
/// up a node that does not answer (5 s) and route to another.
pub const STALL: Duration = Duration::from_secs(15);

/// Opens a SOCKS5 CONNECT to `to` through the proxy at `proxy` on `host`.
pub fn socks5(
    lab: &Lab,
    host: &str,
    proxy: SocketAddr,
    to: SocketAddrV4,
) -> std::io::Result<TcpStream> {
    let mut s = connect(lab, host, proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&to.ip().octets());
    req.extend_from_slice(&to.port().to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if hello != [5, 0] || reply[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS5 refused: {hello:?} {reply:?}"
        )));
    }
    Ok(s)
}

/// Sends `len` random bytes on `s` (from a thread of its own, so that an
/// echo never stalls on full buffers) and reads them back: `Ok` when every
/// byte came back, in order, within the stream's read timeout, else what
/// went wrong (for the failure's message).
pub fn exchange(s: &mut TcpStream, len: usize) -> Result<(), String> {
    let mut sent = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut sent);
    let mut w = s
        .try_clone()
        .map_err(|e| format!("cloning the socket: {e}"))?;
    let data = sent.clone();
    let started = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let mut got = vec![0u8; len];
    let mut read = 0;
    let mut why = None;
    while read < len {
        match s.read(&mut got[read..]) {
            Ok(0) => {
                why = Some("end of stream".to_owned());
                break;
            }
            Ok(n) => read += n,
            Err(e) => {
                why = Some(e.to_string());
                break;
            }
        }
    }
    let wrote = writer
        .join()
        .map_err(|_| "the writer panicked".to_owned())?;
    let took = started.elapsed();
    if let Some(why) = why {
        return Err(format!(
            "{why} after {read} of {len} bytes back in {took:?} (send: {wrote:?})"
        ));
    }
    wrote.map_err(|e| format!("sending: {e} after {took:?}"))?;
    if got != sent {
        return Err("the bytes came back changed".to_owned());
    }
    Ok(())
}

/// A log file's path as an argument.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Where `ip netns exec <ns>` finds files it mounts over `/etc` for the
/// programs it runs in `<ns>`.
const NETNS_ETC: &str = "/etc/netns";

/// A host's own `/etc/hosts` (`/etc/netns/<namespace>/hosts`, which `ip
/// netns exec` mounts over the machine's for the programs it runs there),
/// as a resolver on that host would answer; removed on drop.
pub struct HostsFile {
    dir: PathBuf,
}

impl HostsFile {
    /// Makes `name` resolve to `addr` for the programs run on `host`.
    /// Files left by runs whose process is gone are removed first.
    pub fn write(lab: &Lab, host: &str, addr: Ipv4Addr, name: &str) -> HostsFile {
        sweep_stale_hosts_files();
        let dir = Path::new(NETNS_ETC).join(lab.netns(host).expect("host"));
        std::fs::create_dir_all(&dir).expect("creating the host's /etc");
        let text = format!("127.0.0.1 localhost\n{addr} {name}\n");
        std::fs::write(dir.join("hosts"), text).expect("writing the host's /etc/hosts");
        HostsFile { dir }
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes `/etc/netns/hv-<pid>-...` of runs whose process `<pid>` is gone
/// (the namespace naming of `httvps_netlab`).
fn sweep_stale_hosts_files() {
    let Ok(entries) = std::fs::read_dir(NETNS_ETC) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(httvps_netlab::netns::PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
