//! The control-plane follower: heartbeats (liveness, load, node
//! reachability; the answer closes sessions), woken early by access events
//! and at subscription ends, the dials of nodes not reached until they
//! answer, and the access-event stream that drops every cached verdict
//! when access changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use httvps_wire::events::Scope;
use httvps_wire::heartbeat::GatewayBeat;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Gateway;
use super::schedule::{Expiries, Wake};

/// Longest silence on the access-event stream before it is reopened
/// (the control plane sends a keepalive every 15 s).
const ACCESS_SILENCE: Duration = Duration::from_secs(40);

/// Longest access-event line kept while waiting for its end.
const ACCESS_LINE_MAX: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the next heartbeat carries and when it goes.
#[derive(Debug, Default)]
pub(crate) struct Beats {
    expiries: Mutex<Expiries>,
    /// Wakes the loop to recompute its sleep (a nearer end is known).
    reschedule: Notify,
    /// Wakes the loop to beat now (access changed).
    kick: Notify,
    unreachable: Mutex<HashSet<String>>,
    reachable: Mutex<HashSet<String>>,
    /// Nodes not reached, by id, dialled again by [`probe_loop`] until
    /// they answer.
    unreached: Mutex<HashMap<String, Unreached>>,
    /// Whether the last heartbeat was refused for the gateway's token.
    refused: AtomicBool,
    /// Failed heartbeats, said once per run.
    failing: crate::failing::SharedFailing,
    /// When a heartbeat was last taken (None: not yet).
    last_taken: Mutex<Option<Instant>>,
    /// The registered public URL last found to differ from this
    /// gateway's own (said once per URL).
    other_url: Mutex<Option<String>>,
}

/// A node not reached: where it was dialled, since when, and when it was
/// last reported unreachable.
#[derive(Debug)]
struct Unreached {
    addr: String,
    since: Instant,
    reported: Instant,
}

impl Beats {
    /// Whether the control plane refused this gateway's token at the last
    /// heartbeat (removed or rotated): nothing else is sent with it until
    /// a heartbeat is accepted again, since every refused credential
    /// counts against this address's allowance for unknown ones, which a
    /// retired gateway calling every second or two used up, and its
    /// operator's new enrollment string was then refused (429) too.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// How long ago the control plane last took a heartbeat (None: it has
    /// taken none since the gateway started).
    pub fn since_taken(&self) -> Option<Duration> {
        lock(&self.last_taken).map(|t| t.elapsed())
    }

    /// Notes a subscription's end seen in an answer.
    pub fn note_end(&self, until: chrono::DateTime<chrono::Utc>) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if lock(&self.expiries).note(until.timestamp_millis(), now_ms) {
            self.reschedule.notify_one();
        }
    }

    /// Notes that a node took a connection. The latest fact about a node
    /// is the one reported: an unreachable report still waiting for the
    /// next heartbeat (one repeated while the node was down) goes, and
    /// would otherwise have held the node down for a minute after it came
    /// back.
    pub fn reachable(&self, node_id: &str) {
        let mut unreachable = lock(&self.unreachable);
        unreachable.remove(node_id);
        lock(&self.reachable).insert(node_id.to_owned());
        drop(unreachable);
        lock(&self.unreached).remove(node_id);
    }

    /// Notes that the node at `addr` did not take a connection: it is
    /// reported, and dialled again (at this address, the one it was given
    /// last) until it answers.
    pub fn unreachable(&self, node_id: &str, addr: &str) {
        let mut unreachable = lock(&self.unreachable);
        unreachable.insert(node_id.to_owned());
        lock(&self.reachable).remove(node_id);
        drop(unreachable);
        let now = Instant::now();
        let mut unreached = lock(&self.unreached);
        match unreached.get_mut(node_id) {
            Some(u) if u.addr == addr => u.reported = now,
            // New, or moved (`node update`): dialling the old address
            // could find the node's process there and call it reached.
            _ => {
                unreached.insert(
                    node_id.to_owned(),
                    Unreached {
                        addr: addr.to_owned(),
                        since: now,
                        reported: now,
                    },
                );
            }
        }
    }
}

impl Beats {
    /// A dial of a node not reached failed again: it is reported again
    /// every [`REPORT_AGAIN`], so the control plane keeps it down (its
    /// hold of a report lasts 60 s) while its own heartbeats say it runs
    /// and no tunnel reaches it: a wrong registered port, a firewall.
    fn still_unreached(&self, node_id: &str, now: Instant) {
        let again = lock(&self.unreached).get_mut(node_id).is_some_and(|u| {
            let due = now.saturating_duration_since(u.reported) >= REPORT_AGAIN;
            if due {
                u.reported = now;
            }
            due
        });
        if again {
            let mut unreachable = lock(&self.unreachable);
            unreachable.insert(node_id.to_owned());
            lock(&self.reachable).remove(node_id);
        }
    }

    /// What the next heartbeat reports: the nodes found unreachable and
    /// those found reachable since the last one (a node is in one list at
    /// most: the latest fact).
    fn take_reports(&self) -> (Vec<String>, Vec<String>) {
        let mut unreachable = lock(&self.unreachable);
        let mut reachable = lock(&self.reachable);
        (unreachable.drain().collect(), reachable.drain().collect())
    }

    /// A heartbeat that carried `reports` failed: they go with the next
    /// one, unless a newer fact about the node came meanwhile.
    fn put_back(&self, (unreachable, reachable): (Vec<String>, Vec<String>)) {
        let mut now_unreachable = lock(&self.unreachable);
        let mut now_reachable = lock(&self.reachable);
        for n in unreachable {
            if !now_reachable.contains(&n) {
                now_unreachable.insert(n);
            }
        }
        for n in reachable {
            if !now_unreachable.contains(&n) {
                now_reachable.insert(n);
            }
        }
    }
}

impl Gateway {
    /// Sends one heartbeat and carries out its close orders.
    pub(crate) async fn heartbeat_once(&self) {
        let (unreachable, reachable) = self.beats.take_reports();
        let beat = GatewayBeat {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            open_tunnels: i32::try_from(self.open_tunnels()).unwrap_or(i32::MAX),
            open_sessions: self.sessions.open_ids(),
            unreachable_nodes: unreachable,
            reachable_nodes: reachable,
        };
        match self.backend.gateway_heartbeat(&beat).await {
            Ok(answer) => {
                *lock(&self.beats.last_taken) = Some(Instant::now());
                if self.beats.refused.swap(false, Ordering::Relaxed) {
                    tracing::info!("heartbeat accepted again");
                }
                if self.beats.failing.ended() {
                    tracing::info!("heartbeat works again");
                }
                self.close_sessions(&answer.close_sessions);
                self.compare_public_url(answer.public_url.as_deref());
            }
            // The control plane itself (its envelope, not a proxy's 401)
            // no longer knows this gateway's token: the gateway was removed
            // (its sessions ended with `node_down`) or its token rotated.
            // Its usage can no longer be reported, so its tunnels stop here
            // too, and at every beat while that lasts (ones opened on
            // answers cached before).
            Err(crate::backend::BackendError::Status {
                status: 401, code, ..
            }) if code == "UNAUTHENTICATED" => {
                self.validations.forget_all();
                let closed = self.sessions.close_all();
                if !self.beats.refused.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        tunnels.closed = closed,
                        "the control plane refuses this gateway's token (removed or rotated): its tunnels are closed; enroll it again"
                    );
                }
                self.beats
                    .put_back((beat.unreachable_nodes, beat.reachable_nodes));
            }
            Err(e) => {
                if self.beats.failing.began(false) {
                    tracing::warn!(error = %e, "heartbeat failed; said again once it works");
                }
                // Told next time.
                self.beats
                    .put_back((beat.unreachable_nodes, beat.reachable_nodes));
            }
        }
    }
}

impl Gateway {
    /// Warns, once per URL, when the control plane has this gateway
    /// registered under another public URL than its own `--public-url`:
    /// subscription links point clients at the one, the access documents
    /// it serves at the other.
    fn compare_public_url(&self, registered: Option<&str>) {
        let Some(registered) = registered else {
            return;
        };
        let mut said = lock(&self.beats.other_url);
        if same_url(registered, &self.opts.public_url) {
            *said = None;
            return;
        }
        if said.as_deref() != Some(registered) {
            tracing::warn!(
                registered,
                own = %self.opts.public_url,
                "GATEWAY_PUBLIC_URL (--public-url) differs from the URL this gateway is registered \
                 under: subscription links name the registered one, the access documents at /c/ \
                 this one; make them the same (updateGatewayNode, or --public-url)"
            );
            *said = Some(registered.to_owned());
        }
    }
}

/// Whether two https URLs name the same place (`:443` or not, the host's
/// case, a trailing slash).
fn same_url(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The longest the access-event stream waits, while the token is refused,
/// before it looks whether it is taken again.
const REFUSED_WAIT: Duration = Duration::from_secs(16);

/// How often a node not reached is dialled again.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How often a node that stays unreached is reported again (a third of
/// the control plane's hold of a report).
const REPORT_AGAIN: Duration = Duration::from_secs(20);

/// How long one such dial may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node not reached is dialled again (one gone for longer was
/// removed or moved: the control plane says where nodes are).
const PROBE_FOR: Duration = Duration::from_secs(15 * 60);

/// Dials the nodes this gateway could not reach every [`PROBE_EVERY`]; one
/// that answers is reported reachable at once. The control plane holds a
/// node a gateway could not reach down until a gateway reaches it, and no
/// tunnel goes to a node that is down: without this, a node restarted in
/// two seconds stayed out of rotation for a minute, a whole region's
/// outage when it was the region's only node. One that does not answer is
/// reported unreachable again every [`REPORT_AGAIN`] (for up to
/// [`PROBE_FOR`]): a node that heartbeats but that no gateway reaches came
/// up again a minute after the one report.
pub(crate) async fn probe_loop(gw: Arc<Gateway>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let due: Vec<(String, String)> = {
            let mut unreached = lock(&gw.beats.unreached);
            unreached.retain(|_, u| u.since.elapsed() < PROBE_FOR);
            unreached
                .iter()
                .map(|(id, u)| (id.clone(), u.addr.clone()))
                .collect()
        };
        let mut answered = false;
        for (id, addr) in due {
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&addr)).await
            {
                tracing::info!(node.id = %id, "node reachable again");
                gw.beats.reachable(&id);
                answered = true;
            } else {
                gw.beats.still_unreached(&id, Instant::now());
            }
        }
        if answered {
            gw.beats.kick.notify_one();
        }
    }
}

/// Beats at the interval, at once after an access event, and just after
/// each known subscription end.
pub(crate) async fn heartbeat_loop(gw: Arc<Gateway>) {
    loop {
        gw.heartbeat_once().await;
        let next_beat = tokio::time::Instant::now() + gw.opts.heartbeat_every;
        loop {
            let beat_in = next_beat.saturating_duration_since(tokio::time::Instant::now());
            let now_ms = chrono::Utc::now().timestamp_millis();
            let Wake::Sleep(sleep) = lock(&gw.beats.expiries).next(now_ms, beat_in) else {
                break;
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = gw.beats.kick.notified() => break,
                () = gw.beats.reschedule.notified() => {}
            }
        }
    }
}

/// Access changed: every cached verdict goes (new handshakes are checked
/// afresh at once) and a heartbeat goes now (open tunnels of the device
/// close).
fn access_changed(gw: &Gateway) {
    gw.validations.forget_all();
    gw.beats.kick.notify_one();
}

/// Follows the control plane's access events. Reconnects after failures;
/// every (re)connect counts as a change, since events may have been
/// missed meanwhile: cached verdicts go, and every session's grant is
/// asked for again at its next byte (a lowered allowance's event lists
/// sessions whose grants shrank).
pub(crate) async fn access_loop(gw: Arc<Gateway>) {
    loop {
        match gw.backend.access_events().await {
            Ok(mut res) => {
                access_changed(&gw);
                gw.sessions.grants_stale();
                let mut buf: Vec<u8> = Vec::new();
                while let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(ACCESS_SILENCE, res.chunk()).await
                {
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        match httvps_wire::events::scope(&line) {
                            Scope::Nothing => {}
                            // It closes nothing: the node's open tunnels
                            // run on (as when it is drained).
                            Scope::Node(node) => {
                                tracing::debug!(node.id = %node, "node withdrawn: its routes dropped");
                                gw.validations.forget_node(&node);
                            }
                            // Nothing cached changes: what is left to
                            // these sessions shrank, so their next grants
                            // are asked for now.
                            Scope::Regrant(ids) => {
                                tracing::debug!(
                                    sessions = ids.len(),
                                    "allowance lowered: grants asked again"
                                );
                                for id in ids {
                                    if let Some(s) = gw.sessions.get(&id) {
                                        gw.ask_again(&Arc::from(id), &s);
                                    }
                                }
                            }
                            Scope::Everything => {
                                tracing::debug!("access changed: validations dropped");
                                access_changed(&gw);
                            }
                            // As after a reconnect: what was missed may
                            // have shrunk an allowance.
                            Scope::Missed => {
                                tracing::info!(
                                    "access events were missed: validations dropped, grants asked again"
                                );
                                access_changed(&gw);
                                gw.sessions.grants_stale();
                            }
                        }
                    }
                    if buf.len() > ACCESS_LINE_MAX {
                        break;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "access events unavailable"),
        }
        // A refused token is not tried every second (see Beats::refused);
        // the heartbeat finds when it is taken again.
        let mut wait = Duration::from_secs(1);
        while gw.beats.refused() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REFUSED_WAIT);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
#[path = "follower_tests.rs"]
mod tests;
