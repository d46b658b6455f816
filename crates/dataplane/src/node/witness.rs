//! The node as a second witness of usage: the node's own Shadowsocks accept
//! loop (`tcp`) reads and writes every client connection through
//! [`Counted`], so every byte of every client connection is counted. The
//! node asks the control plane which session each new connection carries
//! (the gateway linked its local address, the node's peer, to the session);
//! once told, it counts the connection in the session's totals, and every
//! [`TOTALS_EVERY`] it reports the totals of the sessions that moved,
//! cumulative per session and epoch (`outline/witness`); a session whose
//! connections have all closed, at the next ask. A session the node starts
//! counting (again, after a restart or after it forgot the session) gets a
//! new, larger epoch, and the control plane adds epochs up. Totals are
//! cumulative: a report resent counts nothing twice. Connections no gateway
//! linked (a stock client, a probe) are asked about for a while, then left
//! uncounted. UDP is not witnessed (the gateway counts it alone).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::readahead::ReadAhead;
use httvps_wire::witness::{
    ConnTie, ConnTotals, SessionWitness, WITNESS_CHUNK, WitnessReport, WitnessResponse,
};
use shadowsocks_service::net::FlowStat;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::backend::{Backend, BackendError};

/// How often `httvps-relay node` asks for the sessions of its new
/// connections (a link must be found while it is fresh).
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// How often `httvps-relay node` reports the totals of sessions still
/// open. The ledger takes the larger of the gateway's totals (every 2 s)
/// and the node's, so while the gateway lives the node's report changes
/// nothing; when the gateway dies, its connections to the node close, and
/// a session whose connections have all closed is reported at the next ask
/// (within [`ASK_EVERY`]). Nothing is lost by reporting open sessions less
/// often than the gateway (a loss needs both witnesses to die, and then
/// what the gateway had not reported is lost whatever the node's
/// interval), and the control plane takes 5 gateway reports for every node
/// report of the same open sessions.
pub const TOTALS_EVERY: Duration = Duration::from_secs(10);

/// Answers after which a connection no gateway linked is no longer asked
/// about (and not counted): about half a minute at one ask a second.
pub const MAX_ASKS: u32 = 30;

/// The same for a connection already closed. While its gateway lives a
/// link comes within a second of the connection, but a gateway SIGKILLed
/// right after the connection opened sends its link only once it is back
/// (from the file it keeps them in), seconds later, often after the
/// connection closed with the gateway: so as long as an open one (it was
/// 3, and the bytes such connections carried after the gateway's last
/// spool write were counted for no one).
pub const MAX_ASKS_CLOSED: u32 = MAX_ASKS;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One client connection's counters.
#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    accepted: Instant,
    /// Bytes received from the peer.
    up: AtomicU64,
    /// Bytes sent to the peer.
    down: AtomicU64,
    open: AtomicBool,
}

impl Conn {
    fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

/// A connection whose session the node is still asking for.
#[derive(Debug)]
struct Untied {
    conn: Arc<Conn>,
    /// Answers that did not name its session.
    asked: u32,
}

/// A session the node counts: its epoch, its open connections and the
/// totals of its closed ones.
#[derive(Debug)]
struct Counting {
    epoch: i64,
    conns: Vec<Arc<Conn>>,
    closed: (u64, u64),
    reported: (u64, u64),
}

impl Counting {
    /// Folds closed connections into `closed` and returns the totals.
    fn totals(&mut self) -> (u64, u64) {
        let mut closed = self.closed;
        self.conns.retain(|c| {
            // Closed first, then read: the counts of a closed connection
            // are final.
            if c.is_open() {
                return true;
            }
            let (u, d) = c.totals();
            closed = (closed.0.saturating_add(u), closed.1.saturating_add(d));
            false
        });
        self.closed = closed;
        self.conns.iter().fold(closed, |(u, d), c| {
            let (cu, cd) = c.totals();
            (u.saturating_add(cu), d.saturating_add(cd))
        })
    }
}

#[derive(Debug, Default)]
struct Book {
    untied: HashMap<i64, Untied>,
    sessions: HashMap<String, Counting>,
}

/// Every connection and session the node counts, until their last totals
/// are reported.
#[derive(Debug)]
pub struct Witness {
    book: Mutex<Book>,
    next: AtomicI64,
}

impl Default for Witness {
    fn default() -> Self {
        Self::new()
    }
}

impl Witness {
    /// Connection ids and epochs start at the wall clock in milliseconds
    /// times 1,000, so a restarted node's never meet its earlier ones (unless
    /// it opened over a thousand connections per millisecond of its life),
    /// and a restarted node's epochs are larger than the last one's.
    pub fn new() -> Self {
        Witness {
            book: Mutex::default(),
            next: AtomicI64::new(chrono::Utc::now().timestamp_millis().saturating_mul(1_000)),
        }
    }

    fn open(&self, peer: SocketAddr) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn {
            peer,
            accepted: Instant::now(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            open: AtomicBool::new(true),
        });
        lock(&self.book).untied.insert(
            id,
            Untied {
                conn: c.clone(),
                asked: 0,
            },
        );
        c
    }

    /// What to report now: the sessions whose totals changed since last
    /// acknowledged (with `totals`, all of them; without, those whose
    /// connections have all closed); and every connection whose session is
    /// not known yet.
    pub fn pending(&self, totals: bool) -> WitnessReport {
        let mut book = lock(&self.book);
        let sessions = book
            .sessions
            .iter_mut()
            .filter_map(|(id, s)| {
                let (up, down) = s.totals();
                let due = totals || s.conns.is_empty();
                (due && s.reported != (up, down)).then(|| SessionWitness {
                    session_id: id.clone(),
                    epoch: s.epoch,
                    bytes_up: signed(up),
                    bytes_down: signed(down),
                })
            })
            .collect();
        let conns = book
            .untied
            .iter()
            .map(|(id, u)| {
                let (up, down) = u.conn.totals();
                ConnTotals {
                    conn: *id,
                    peer: u.conn.peer.to_string(),
                    age_ms: i64::try_from(u.conn.accepted.elapsed().as_millis())
                        .unwrap_or(i64::MAX),
                    bytes_up: signed(up),
                    bytes_down: signed(down),
                }
            })
            .collect();
        WitnessReport { sessions, conns }
    }

    /// Notes a part of a report as answered: its session totals as
    /// acknowledged, its connections tied to the sessions `ties` name (the
    /// rest asked about once more). Sessions with no open connection whose
    /// totals are acknowledged are forgotten, and so are connections asked
    /// about too often.
    pub fn mark_reported(&self, part: &WitnessReport, ties: &[ConnTie]) {
        let mut book = lock(&self.book);
        for s in &part.sessions {
            if let Some(c) = book.sessions.get_mut(&s.session_id)
                && c.epoch == s.epoch
            {
                c.reported = (
                    u64::try_from(s.bytes_up).unwrap_or(0),
                    u64::try_from(s.bytes_down).unwrap_or(0),
                );
            }
        }
        for t in ties {
            let Some(u) = book.untied.remove(&t.conn) else {
                continue;
            };
            let epoch = &self.next;
            book.sessions
                .entry(t.session_id.clone())
                .or_insert_with(|| Counting {
                    epoch: epoch.fetch_add(1, Ordering::Relaxed),
                    conns: Vec::new(),
                    closed: (0, 0),
                    reported: (0, 0),
                })
                .conns
                .push(u.conn);
        }
        for c in &part.conns {
            if let Some(u) = book.untied.get_mut(&c.conn) {
                u.asked += 1;
            }
        }
        book.untied.retain(|_, u| {
            u.asked
                < if u.conn.is_open() {
                    MAX_ASKS
                } else {
                    MAX_ASKS_CLOSED
                }
        });
        book.sessions.retain(|_, s| {
            let totals = s.totals();
            !s.conns.is_empty() || s.reported != totals
        });
    }

    /// Connections counted or asked about now (open, or closed with totals
    /// not yet acknowledged).
    pub fn len(&self) -> usize {
        let book = lock(&self.book);
        book.untied.len() + book.sessions.values().map(|s| s.conns.len()).sum::<usize>()
    }

    /// Connections open now.
    pub fn open_count(&self) -> usize {
        let book = lock(&self.book);
        book.untied.values().filter(|u| u.conn.is_open()).count()
            + book
                .sessions
                .values()
                .flat_map(|s| &s.conns)
                .filter(|c| c.is_open())
                .count()
    }

    /// Sessions counted now.
    pub fn sessions(&self) -> usize {
        lock(&self.book).sessions.len()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        let book = lock(&self.book);
        book.untied.is_empty() && book.sessions.is_empty()
    }
}

/// A client connection counting what is read from it (up) and written to
/// it (down), into its own totals and the node's traffic counters; dropping
/// it (the connection closing) marks the connection closed.
pub(super) struct Counted {
    inner: ReadAhead,
    conn: Arc<Conn>,
    flow: Arc<FlowStat>,
}

impl Counted {
    /// Counts `inner`, accepted from `peer`, in `witness` and `flow`.
    pub(super) fn new(
        inner: ReadAhead,
        peer: SocketAddr,
        witness: &Witness,
        flow: Arc<FlowStat>,
    ) -> Self {
        Counted {
            inner,
            conn: witness.open(peer),
            flow,
        }
    }
}

impl Counted {
    /// The connection.
    pub(super) fn get_ref(&self) -> &ReadAhead {
        &self.inner
    }

    /// A view of what the connection has moved both ways, readable while
    /// the connection runs elsewhere.
    pub(super) fn moved(&self) -> Moved {
        Moved(self.conn.clone())
    }
}

/// What one client connection has moved, both ways (see [`Counted::moved`]).
pub(super) struct Moved(Arc<Conn>);

impl Moved {
    /// Bytes read from the client and written to it so far.
    pub(super) fn bytes(&self) -> u64 {
        let (up, down) = self.0.totals();
        up.wrapping_add(down)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.conn.open.store(false, Ordering::Release);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.conn.up.fetch_add(n, Ordering::Relaxed);
            self.flow.incr_rx(n);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.conn.down.fetch_add(*n as u64, Ordering::Relaxed);
            self.flow.incr_tx(*n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Splits a report into parts of at most [`WITNESS_CHUNK`] entries.
fn parts(report: WitnessReport) -> Vec<WitnessReport> {
    let mut out = Vec::new();
    for s in report.sessions.chunks(WITNESS_CHUNK) {
        out.push(WitnessReport {
            sessions: s.to_vec(),
            conns: Vec::new(),
        });
    }
    for c in report.conns.chunks(WITNESS_CHUNK) {
        out.push(WitnessReport {
            sessions: Vec::new(),
            conns: c.to_vec(),
        });
    }
    out
}

/// Asks for the sessions of new connections every `ask_every` and reports
/// the witness's changed totals every `totals_every` (rounded up to a
/// multiple of `ask_every`), until dropped.
pub fn spawn_reports(
    backend: Backend,
    witness: Arc<Witness>,
    ask_every: Duration,
    totals_every: Duration,
) -> tokio::task::JoinHandle<()> {
    let ask_every = ask_every.max(Duration::from_millis(1));
    let per_totals = totals_every
        .as_nanos()
        .div_ceil(ask_every.as_nanos())
        .max(1);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ask_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u128 = 0;
        let mut failing = super::Failing::default();
        loop {
            tick.tick().await;
            ticks += 1;
            let pending = witness.pending(ticks.is_multiple_of(per_totals));
            if pending.sessions.is_empty() && pending.conns.is_empty() {
                continue;
            }
            for part in parts(pending) {
                match backend.witness_report(&part).await {
                    Ok(WitnessResponse { ties, .. }) => {
                        if failing.ended() {
                            tracing::info!("witness reports accepted again");
                        }
                        witness.mark_reported(&part, &ties);
                    }
                    // Refused as it is (a session deleted under it, a
                    // body the control plane cannot take): resending it
                    // would be refused again.
                    Err(BackendError::Status { status, code, .. })
                        if matches!(status, 400 | 403 | 413) =>
                    {
                        tracing::warn!(status, %code, "witness report refused; dropped");
                        witness.mark_reported(&part, &[]);
                    }
                    Err(e) => {
                        let refused = matches!(e, BackendError::Status { status: 401, .. });
                        if failing.began(refused) {
                            tracing::warn!(error = %e, "witness report failed; resent until it is taken (said again once it is)");
                        }
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
#[path = "witness_tests.rs"]
mod tests;
