//! Links of node connections to sessions: when a TCP tunnel opens, the
//! gateway tells the control plane which of its connections to the node
//! (by its local address and port, the peer the node sees) carries which
//! session, so the node's per-connection totals count for that session.
//! Links are sent off the tunnel's path, gathered for [`GATHER`] so that a
//! burst of tunnels costs the control plane a few requests, not one per
//! tunnel; a failed send is retried.
//!
//! With a spool, links not yet taken are also kept in a file beside it
//! (`<spool>.links`, one `session local` line each, appended with a plain
//! write: it survives a SIGKILL, not a power cut), emptied once every link
//! in it is taken, and sent again by the next start. A gateway SIGKILLed
//! right after tunnels opened lost their links with its memory; the node,
//! unable to tie those connections to a session, counted them for no one,
//! and what they carried after the spool's last write was lost (6-18 MB
//! per crash at 100 MB/s of short tunnels).

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use httvps_wire::witness::{SessionLink, SessionLinks, WITNESS_CHUNK};
use tokio::sync::Notify;

use super::Gateway;
use crate::backend::BackendError;

/// How long new links gather before they are sent together. The node asks
/// for the sessions of its new connections once a second
/// (`node::witness::ASK_EVERY`), so a link is in time if it arrives
/// within about a second; gathering for 200 ms keeps a gateway at about
/// five link requests a second however many tunnels open (at 2,000 new
/// tunnels a second, 10 ms meant 100 requests a second, which cost the
/// control plane about as much CPU per tunnel as the node).
const GATHER: Duration = Duration::from_millis(200);

/// Wait before resending after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// Most links kept waiting while the control plane is away (the oldest go
/// first: their tunnels are counted by the gateway all the same).
const MAX_WAITING: usize = 100_000;

/// Links not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Links {
    waiting: Mutex<Queue>,
    wake: Notify,
    /// Failed sends, said once per run.
    failing: crate::failing::SharedFailing,
}

/// The links not yet taken, and their file.
#[derive(Debug, Default)]
struct Queue {
    /// Oldest first: a full queue drops from the front in constant time
    /// (a `Vec` moved every waiting link per new tunnel while the control
    /// plane was away).
    links: VecDeque<SessionLink>,
    log: Option<Log>,
    /// Where the file is: one that failed (a full disk) is opened again
    /// at a compaction, [`REOPEN_AFTER`] after it failed.
    log_path: Option<PathBuf>,
    /// When the file failed last.
    failed_at: Option<std::time::Instant>,
}

/// How long a links' file that failed is left before it is tried again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// The file of links not yet taken (see the module's note).
#[derive(Debug)]
struct Log {
    file: std::fs::File,
    path: PathBuf,
    /// Lines in it (links taken since it was last emptied included).
    lines: usize,
}

impl Queue {
    /// Appends `link` to the file; a failed write ends the file until it
    /// is tried again (said).
    fn append(&mut self, link: &SessionLink) {
        if let Some(l) = &mut self.log {
            let line = format!("{} {}\n", link.session_id, link.local);
            match l.file.write_all(line.as_bytes()) {
                Ok(()) => l.lines += 1,
                Err(e) => {
                    tracing::warn!(error = %e, file = %l.path.display(), "writing the session links' file; links are kept in memory only until it can be written again");
                    self.log = None;
                    self.failed_at = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// Opens (makes) the links' file for appending, its owner's only, as the
/// spool is.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The file of links kept beside the spool at `spool`.
pub(crate) fn log_path(spool: &Path) -> PathBuf {
    let mut name = spool.file_name().unwrap_or_default().to_os_string();
    name.push(".links");
    spool.with_file_name(name)
}

impl Links {
    /// Links kept in the file at `path` too, with those a previous run
    /// left in it queued to be sent first. A file that cannot be opened
    /// leaves links in memory only (said).
    pub(crate) fn with_log(path: &Path) -> Self {
        let links = Links::default();
        // Line by line, whatever a damaged line holds; the newest
        // [`MAX_WAITING`], as the queue keeps.
        let text = std::fs::read(path).unwrap_or_default();
        let mut restored: VecDeque<SessionLink> = text
            .split(|b| *b == b'\n')
            .filter_map(|l| {
                let l = std::str::from_utf8(l).ok()?;
                let (session, local) = l.split_once(' ')?;
                local.parse::<SocketAddr>().ok()?;
                Some(SessionLink {
                    session_id: session.to_owned(),
                    local: local.to_owned(),
                })
            })
            .collect();
        while restored.len() > MAX_WAITING {
            restored.pop_front();
        }
        let opened = open_log(path);
        let mut q = links.queue();
        q.log_path = Some(path.to_owned());
        match opened {
            Ok(file) => {
                q.log = Some(Log {
                    file,
                    path: path.to_owned(),
                    lines: restored.len(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %path.display(), "opening the session links' file; links are kept in memory only");
            }
        }
        if !restored.is_empty() {
            tracing::info!(links = restored.len(), "session links restored");
            q.links = restored;
            links.wake.notify_one();
        }
        drop(q);
        links
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that the node connection from `local` carries `session`.
    pub fn add(&self, session: &str, local: SocketAddr) {
        let link = SessionLink {
            session_id: session.to_owned(),
            local: local.to_string(),
        };
        let mut q = self.queue();
        if q.links.len() >= MAX_WAITING {
            q.links.pop_front();
        }
        q.append(&link);
        q.links.push_back(link);
        drop(q);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<SessionLink> {
        let mut q = self.queue();
        let n = q.links.len().min(WITNESS_CHUNK);
        q.links.drain(..n).collect()
    }

    /// Puts links that could not be sent back in front, dropping the
    /// oldest past [`MAX_WAITING`].
    fn put_back(&self, links: Vec<SessionLink>) {
        let mut q = self.queue();
        for link in links.into_iter().rev() {
            q.links.push_front(link);
        }
        while q.links.len() > MAX_WAITING {
            q.links.pop_front();
        }
    }

    /// With no batch in flight: the file holds what is queued and no
    /// more once most of its lines are links already taken (emptied when
    /// nothing waits, the usual case after a send).
    fn compact(&self) {
        let mut guard = self.queue();
        let q = &mut *guard;
        let mut reopened = false;
        if q.log.is_none()
            && q.failed_at.is_none_or(|at| at.elapsed() >= REOPEN_AFTER)
            && let Some(path) = &q.log_path
            && let Ok(file) = open_log(path)
        {
            // Tried again (the disk may have room again): rewritten whole
            // below.
            q.log = Some(Log {
                file,
                path: path.clone(),
                lines: usize::MAX,
            });
            reopened = true;
        }
        let Some(log) = &mut q.log else {
            return;
        };
        if log.lines == 0 || (!q.links.is_empty() && log.lines < 2 * q.links.len() + 1024) {
            return;
        }
        let rewritten = log.file.set_len(0).and_then(|()| {
            let mut text = String::new();
            for l in &q.links {
                text.push_str(&l.session_id);
                text.push(' ');
                text.push_str(&l.local);
                text.push('\n');
            }
            log.file.write_all(text.as_bytes())
        });
        match rewritten {
            Ok(()) => {
                log.lines = q.links.len();
                if reopened {
                    tracing::info!(file = %log.path.display(), "the session links' file is written again");
                }
            }
            Err(e) => {
                if !reopened {
                    tracing::warn!(error = %e, file = %log.path.display(), "rewriting the session links' file; links are kept in memory only until it can be written again");
                }
                q.log = None;
                q.failed_at = Some(std::time::Instant::now());
            }
        }
    }
}

/// Sends links as they come.
pub(crate) async fn links_loop(gw: Arc<Gateway>) {
    loop {
        gw.links.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        loop {
            let batch = gw.links.take();
            if batch.is_empty() {
                gw.links.compact();
                break;
            }
            if let Err(unsent) = send(&gw, batch).await {
                gw.links.put_back(unsent);
                gw.links.compact();
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Sends `batch`. A batch the control plane refuses whole for a link
/// that is not this gateway's to make (400, 403, 404, 413: a session it
/// no longer knows, or another gateway's, as from a data directory kept
/// from another registration) is split in halves until only the refused
/// links are dropped: resent, one such link held every later link behind
/// it (for good, with the links' file), and dropped with its batch it
/// took the good ones along. On any other failure, the links not taken,
/// to be put back.
async fn send(gw: &Gateway, batch: Vec<SessionLink>) -> Result<(), Vec<SessionLink>> {
    let mut parts = vec![batch];
    while let Some(part) = parts.pop() {
        let sent = gw
            .backend
            .session_links(&SessionLinks {
                links: part.clone(),
            })
            .await;
        match sent {
            Ok(_) => {
                if gw.links.failing.ended() {
                    tracing::info!("session links are taken again");
                }
            }
            Err(BackendError::Status { status, .. })
                if matches!(status, 400 | 403 | 404 | 413) && part.len() > 1 =>
            {
                let mut first = part;
                let second = first.split_off(first.len() / 2);
                parts.push(second);
                parts.push(first);
            }
            Err(BackendError::Status { status, code, .. })
                if matches!(status, 400 | 403 | 404 | 413) =>
            {
                tracing::warn!(status, %code, session = %part[0].session_id, "session link refused; dropped");
            }
            Err(e) => {
                if gw.links.failing.began(false) {
                    tracing::warn!(error = %e, "session links failed; resent until they are taken (said again once they are)");
                }
                // The part that failed first, in order.
                let mut unsent = part;
                for p in parts.into_iter().rev() {
                    unsent.extend(p);
                }
                return Err(unsent);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_leave_in_order_and_failed_ones_go_first_again() {
        let links = Links::default();
        links.add("a", "10.0.0.1:1000".parse().expect("addr"));
        links.add("b", "10.0.0.1:1001".parse().expect("addr"));
        let sent = links.take();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].local, "10.0.0.1:1000");
        links.add("c", "10.0.0.1:1002".parse().expect("addr"));
        links.put_back(sent);
        let again: Vec<String> = links.take().into_iter().map(|l| l.session_id).collect();
        assert_eq!(again, ["a", "b", "c"]);
        assert!(links.take().is_empty());
    }

    #[test]
    fn links_not_taken_outlive_the_process_in_their_file() {
        let dir = std::env::temp_dir().join(format!("httvps-links-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = log_path(&dir.join("gateway-spool.json"));
        assert_eq!(path, dir.join("gateway-spool.json.links"));
        let _ = std::fs::remove_file(&path);
        let links = Links::with_log(&path);
        links.add("a", "10.0.0.1:1000".parse().expect("addr"));
        links.add("b", "10.0.0.1:1001".parse().expect("addr"));
        // Taken and acknowledged: the file is emptied.
        assert_eq!(links.take().len(), 2);
        links.compact();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
        // Added, then the process ends before they are taken (a SIGKILL
        // runs no destructor: the writes are the file's already).
        links.add("c", "10.0.0.1:1002".parse().expect("addr"));
        links.add("d", "[2001:db8::1]:1003".parse().expect("addr"));
        drop(links);
        let next = Links::with_log(&path);
        let again: Vec<(String, String)> = next
            .take()
            .into_iter()
            .map(|l| (l.session_id, l.local))
            .collect();
        assert_eq!(
            again,
            [
                ("c".to_owned(), "10.0.0.1:1002".to_owned()),
                ("d".to_owned(), "[2001:db8::1]:1003".to_owned())
            ]
        );
        // A failed send keeps them in the file with what came meanwhile.
        next.add("e", "10.0.0.1:1004".parse().expect("addr"));
        let batch = next.take();
        next.put_back(batch);
        next.compact();
        let kept = std::fs::read_to_string(&path).expect("read");
        assert!(
            kept.contains("c 10.0.0.1:1002") && kept.contains("e 10.0.0.1:1004"),
            "{kept}"
        );
        // The file is its owner's only, as the spool is.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A damaged line costs only itself.
        drop(next);
        std::fs::write(&path, b"f 10.0.0.1:1005\n\xff\xfe 1\ng 10.0.0.1:1006\n").expect("write");
        let again = Links::with_log(&path);
        let ids: Vec<String> = again.take().into_iter().map(|l| l.session_id).collect();
        assert_eq!(ids, ["f", "g"]);
        // A file that failed (a full disk) is written again at a
        // compaction, with what waits.
        again.add("h", "10.0.0.1:1007".parse().expect("addr"));
        again.queue().log = None;
        again.add("i", "10.0.0.1:1008".parse().expect("addr"));
        again.compact();
        let kept = std::fs::read_to_string(&path).expect("read");
        assert_eq!(kept, "h 10.0.0.1:1007\ni 10.0.0.1:1008\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_links() {
        let links = Links::default();
        let addr: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        for i in 0..MAX_WAITING + 2 {
            links.add(&i.to_string(), addr);
        }
        let first = links.take();
        assert_eq!(first[0].session_id, "2", "the two oldest were dropped");
        // Put back into a queue that filled up meanwhile: still bounded,
        // still the oldest dropped.
        let n = first.len();
        for i in 0..n {
            links.add(&format!("new{i}"), addr);
        }
        links.put_back(first);
        let w = links.waiting.lock().expect("lock");
        assert_eq!(w.links.len(), MAX_WAITING);
        assert_eq!(
            w.links.back().map(|l| l.session_id.as_str()),
            Some(format!("new{}", n - 1).as_str())
        );
    }
}
