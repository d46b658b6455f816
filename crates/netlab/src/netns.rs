//! Named network namespaces (`/run/netns/NAME`, as `ip netns` keeps them):
//! create, enter from a thread, sweep the processes inside, delete, and
//! find the leftovers of runs that were killed.
//!
//! Every namespace this crate makes is called `hv-<pid>-...`, `<pid>` being
//! the process that made it, so a sweep can tell a dead run's namespaces
//! from those of a run still going.

use std::fs::File;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd;
use crate::error::{Error, Result};

/// What every namespace of this crate's name starts with.
pub const PREFIX: &str = "hv-";

const NETNS_DIR: &str = "/run/netns";

/// Creates namespace `name` with its loopback up.
pub(crate) fn add(name: &str) -> Result<()> {
    cmd::ip(&["netns", "add", name])?;
    cmd::ip(&["-n", name, "link", "set", "lo", "up"]).map(drop)
}

/// Kills every process inside namespace `name`, then deletes it. A process
/// left inside would keep the namespace (and its interfaces) alive after
/// `ip netns del` removed its name.
pub(crate) fn delete(name: &str) -> Result<()> {
    kill_all_in(name)?;
    cmd::ip(&["netns", "del", name]).map(drop)
}

/// The processes whose network namespace is `name`.
pub fn pids(name: &str) -> Result<Vec<i32>> {
    let out = cmd::ip(&["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs the processes inside `name` and waits (briefly) until they are
/// gone. Only processes inside one of our own namespaces are touched.
fn kill_all_in(name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids(name)?;
        if pids.is_empty() || Instant::now() > deadline {
            return Ok(());
        }
        for pid in pids {
            // Already gone is fine: it may have exited meanwhile.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Names of the namespaces under `/run/netns` that start with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes every namespace whose name starts with `prefix` (killing the
/// processes inside) and returns their names. The prefix must start with
/// [`PREFIX`], so that nothing but this crate's namespaces can be hit.
pub fn cleanup(prefix: &str) -> Result<Vec<String>> {
    if !prefix.starts_with(PREFIX) {
        return Err(Error::Spec(format!(
            "cleanup prefix {prefix:?} must start with {PREFIX:?}"
        )));
    }
    let names = list(prefix)?;
    for name in &names {
        delete(name)?;
    }
    Ok(names)
}

/// Deletes the namespaces of runs whose process is gone (`hv-<pid>-...`
/// with no process `<pid>`): what a killed test or benchmark left behind.
/// Namespaces of live runs are left alone.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list(PREFIX)? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// The pid in `hv-<pid>-...`, if the name has that shape.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Moves the calling thread into namespace `name`. Only the thread moves;
/// sockets and TUN devices it opens afterwards belong to that namespace
/// for good, whichever thread uses them later.
pub(crate) fn enter(name: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{name}");
    let file = File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("entering namespace {name}"), e.into()))
}

/// Runs `f` on a fresh thread inside namespace `name` and returns its
/// result. Use it to open sockets "on" a host: a listener bound here keeps
/// accepting in that namespace after the thread is gone, and a tokio
/// socket made from it works on any runtime. A panic in `f` is passed on.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T> {
            enter(name)?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts a thread that lives inside namespace `name` and runs `f`; every
/// thread it starts in turn (a tokio runtime's workers, say) is inside too.
/// Returns once the thread is in, so a bad namespace is an error here.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>> {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let ns = name.to_owned();
    let handle = thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            let entered = enter(&ns);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            if !ok {
                // The caller already has the error; this value is never
                // seen, because the caller drops the handle.
                std::panic::resume_unwind(Box::new("namespace not entered"));
            }
            f()
        })
        .map_err(|e| Error::io("starting a thread", e))?;
    match entered_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::io(
            "starting a thread",
            std::io::Error::other("the thread ended before entering the namespace"),
        )),
    }
}

/// Whether this machine lets us create namespaces (root, `ip` present,
/// `/run/netns` writable), found by creating and deleting one; `Err` says
/// why not, for a test to print when it skips. The answer is cached.
pub fn available() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

/// Whether TUN devices can be opened here (the delay line needs them).
pub fn tun_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))
}

fn probe() -> Result<(), String> {
    let name = format!("{PREFIX}{}-probe", std::process::id());
    add(&name).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    delete(&name).map_err(|e| format!("cannot delete a network namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_the_creator_from_the_name() {
        assert_eq!(owner_pid("hv-1234-0-gw"), Some(1234));
        assert_eq!(owner_pid("hv-1234-probe"), Some(1234));
        assert_eq!(owner_pid("hv-x-0-gw"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }

    #[test]
    fn cleanup_refuses_a_prefix_that_is_not_ours() {
        assert!(cleanup("").is_err());
        assert!(cleanup("blue").is_err());
    }
}
