//! Links of node connections to sessions: when a TCP tunnel opens, the
//! gateway tells the control plane which of its connections to the node
//! (by its local address and port, the peer the node sees) carries which
//! session, so the node's per-connection totals count for that session.
//! Links are sent off the tunnel's path, gathered for [`GATHER`] so that a
//! burst of tunnels costs the control plane a few requests, not one per
//! tunnel; a failed send is retried.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Oldest first: a full queue drops from the front in constant time
    /// (a `Vec` moved every waiting link per new tunnel while the control
    /// plane was away).
    waiting: Mutex<VecDeque<SessionLink>>,
    wake: Notify,
    /// Failed sends, said once per run.
    failing: crate::failing::SharedFailing,
}

impl Links {
    /// Notes that the node connection from `local` carries `session`.
    pub fn add(&self, session: &str, local: SocketAddr) {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if w.len() >= MAX_WAITING {
            w.pop_front();
        }
        w.push_back(SessionLink {
            session_id: session.to_owned(),
            local: local.to_string(),
        });
        drop(w);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<SessionLink> {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let n = w.len().min(WITNESS_CHUNK);
        w.drain(..n).collect()
    }

    /// Puts links that could not be sent back in front, dropping the
    /// oldest past [`MAX_WAITING`].
    fn put_back(&self, links: Vec<SessionLink>) {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for link in links.into_iter().rev() {
            w.push_front(link);
        }
        while w.len() > MAX_WAITING {
            w.pop_front();
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
                break;
            }
            match gw
                .backend
                .session_links(&SessionLinks {
                    links: batch.clone(),
                })
                .await
            {
                Ok(_) => {
                    if gw.links.failing.ended() {
                        tracing::info!("session links are taken again");
                    }
                }
                // A session the control plane no longer knows: its tunnels
                // are not worth a witness.
                Err(BackendError::Status { status, code, .. })
                    if matches!(status, 400 | 404 | 413) =>
                {
                    tracing::warn!(status, %code, links = batch.len(), "session links refused; dropped");
                }
                Err(e) => {
                    if gw.links.failing.began(false) {
                        tracing::warn!(error = %e, "session links failed; resent until they are taken (said again once they are)");
                    }
                    gw.links.put_back(batch);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
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
        assert_eq!(w.len(), MAX_WAITING);
        assert_eq!(
            w.back().map(|l| l.session_id.as_str()),
            Some(format!("new{}", n - 1).as_str())
        );
    }
}
