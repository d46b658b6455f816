//! The node as a second witness of usage: the node's own Shadowsocks accept
//! loop (`tcp`) reads and writes every client connection through
//! [`Counted`], so every byte of every client connection is counted per peer
//! connection, and the cumulative totals of connections that moved bytes
//! are reported to the control plane (`outline/witness`) every interval.
//! Totals are cumulative: a report resent, or a connection reported again,
//! counts nothing twice. UDP is not witnessed (the gateway counts it alone).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use httvps_wire::witness::{ConnTotals, WITNESS_CHUNK, WitnessReport};
use shadowsocks_service::net::FlowStat;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::backend::Backend;

/// How often `httvps-relay node` reports its connections' totals.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client connection's counters.
#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    /// Bytes received from the peer.
    up: AtomicU64,
    /// Bytes sent to the peer.
    down: AtomicU64,
    open: AtomicBool,
    reported: Mutex<(u64, u64)>,
}

impl Conn {
    fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// Every connection the node counts, until its last totals are reported.
#[derive(Debug)]
pub struct Witness {
    conns: Mutex<HashMap<i64, Arc<Conn>>>,
    next: AtomicI64,
}

impl Default for Witness {
    fn default() -> Self {
        Self::new()
    }
}

impl Witness {
    /// Connection ids start at the wall clock in milliseconds times 1,000,
    /// so a restarted node's ids never meet its earlier ones (unless it
    /// opened over a thousand connections per millisecond of its life).
    pub fn new() -> Self {
        Witness {
            conns: Mutex::default(),
            next: AtomicI64::new(chrono::Utc::now().timestamp_millis().saturating_mul(1_000)),
        }
    }

    fn open(&self, peer: SocketAddr) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn {
            peer,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            open: AtomicBool::new(true),
            reported: Mutex::new((0, 0)),
        });
        lock(&self.conns).insert(id, c.clone());
        c
    }

    /// Connections whose totals changed since last acknowledged.
    pub fn pending(&self) -> Vec<ConnTotals> {
        lock(&self.conns)
            .iter()
            .filter_map(|(id, c)| {
                let (up, down) = c.totals();
                (*lock(&c.reported) != (up, down)).then(|| ConnTotals {
                    conn: *id,
                    peer: c.peer.to_string(),
                    bytes_up: i64::try_from(up).unwrap_or(i64::MAX),
                    bytes_down: i64::try_from(down).unwrap_or(i64::MAX),
                })
            })
            .collect()
    }

    /// Notes totals as acknowledged; closed connections fully reported are
    /// forgotten.
    pub fn mark_reported(&self, part: &[ConnTotals]) {
        let mut conns = lock(&self.conns);
        for t in part {
            if let Some(c) = conns.get(&t.conn) {
                let at = (
                    u64::try_from(t.bytes_up).unwrap_or(0),
                    u64::try_from(t.bytes_down).unwrap_or(0),
                );
                *lock(&c.reported) = at;
            }
        }
        conns.retain(|_, c| c.open.load(Ordering::Relaxed) || *lock(&c.reported) != c.totals());
    }

    /// Connections counted now (open, or closed with totals not yet
    /// acknowledged).
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Connections open now.
    pub fn open_count(&self) -> usize {
        lock(&self.conns)
            .values()
            .filter(|c| c.open.load(Ordering::Relaxed))
            .count()
    }

    /// Whether no connection is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client connection counting what is read from it (up) and written to
/// it (down), into its own totals and the node's traffic counters; dropping
/// it (the connection closing) marks the connection closed.
pub(super) struct Counted {
    inner: TcpStream,
    conn: Arc<Conn>,
    flow: Arc<FlowStat>,
}

impl Counted {
    /// Counts `inner`, accepted from `peer`, in `witness` and `flow`.
    pub(super) fn new(
        inner: TcpStream,
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

impl Drop for Counted {
    fn drop(&mut self) {
        self.conn.open.store(false, Ordering::Relaxed);
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

/// Reports the witness's changed totals every `every` until dropped.
pub fn spawn_reports(
    backend: Backend,
    witness: Arc<Witness>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let pending = witness.pending();
            for part in pending.chunks(WITNESS_CHUNK) {
                let report = WitnessReport {
                    conns: part.to_vec(),
                };
                match backend.witness_report(&report).await {
                    Ok(_) => witness.mark_reported(part),
                    Err(e) => {
                        tracing::warn!(error = %e, "witness report failed; will resend");
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_totals_are_pending_and_closed_connections_go_once_reported() {
        let w = Witness::new();
        let a = w.open("127.0.0.1:4000".parse().expect("addr"));
        let b = w.open("127.0.0.1:4001".parse().expect("addr"));
        assert!(w.pending().is_empty());
        a.up.fetch_add(10, Ordering::Relaxed);
        b.down.fetch_add(7, Ordering::Relaxed);
        let p = w.pending();
        assert_eq!(p.len(), 2);
        w.mark_reported(&p);
        assert!(w.pending().is_empty());
        assert_eq!(w.len(), 2, "open connections stay");
        b.down.fetch_add(1, Ordering::Relaxed);
        b.open.store(false, Ordering::Relaxed);
        let p = w.pending();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].peer.as_str(), p[0].bytes_down), ("127.0.0.1:4001", 8));
        w.mark_reported(&p);
        assert_eq!(w.len(), 1, "the closed one, fully reported, is forgotten");
    }
}
