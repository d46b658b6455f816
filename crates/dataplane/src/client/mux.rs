//! The multiplexed transport (`--mux`): a few warm TLS connections to the
//! gateway speaking HTTP/2 (`--mux-connections`, 2 by default), every TCP
//! tunnel a WebSocket over an extended CONNECT stream of one of them (RFC
//! 8441). A new tunnel on a warm connection costs no TCP, TLS or
//! WebSocket handshake: its first Shadowsocks bytes leave right behind the
//! stream's HEADERS.
//!
//! A new tunnel goes to the warm connection that carries the fewest
//! tunnels ([`least_loaded`]), and to a WebSocket connection of its own
//! when every one carries [`TUNNELS_PER_CONNECTION`]. Streams of one connection share one TCP
//! byte stream: a loss holds back every stream behind it until the
//! retransmission lands (a round trip), and a small answer queues behind
//! the bulk data already in the socket. With two connections a bulk
//! download and the small requests opened beside it travel apart, and the
//! connections' work (TLS, HTTP/2 framing) runs on two cores: each
//! connection and the tunnels it carries run on a thread of their own
//! ([`crate::lane`]).
//!
//! Each connection is opened at start and kept: h2 pings every
//! [`PING_EVERY`] (a missed answer ends it), and a keeper opens a new one
//! when it fails, when the gateway sends GOAWAY (the next stream is
//! refused and opened again on a new connection) and when node events
//! change the parameters. A gateway that does not choose `h2` by ALPN or
//! does not enable extended CONNECT gets HTTP/1.1 WebSockets, as without
//! `--mux`, and is asked again after [`H1_RECHECK`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;

use super::h2io::H2Stream;
use super::params::Params;
pub(super) use super::warm::{MuxError, TUNNELS_PER_CONNECTION};
use super::warm::{PING_WAIT, Warm, dial, request};
use crate::lane::{Held, Lane};

/// Warm connections a client keeps unless told otherwise.
pub const DEFAULT_CONNECTIONS: usize = 2;

/// The most warm connections a client may be told to keep.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a gateway that speaks only HTTP/1.1 is not asked again.
const H1_RECHECK: Duration = Duration::from_secs(60);

/// Longest pause between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The slot a new tunnel goes to, from each slot's tunnels (`None`:
/// no warm connection there): the warm one with the fewest (the first of
/// equals), else the first slot, whose keeper is dialing.
pub(super) fn least_loaded(loads: &[Option<usize>]) -> usize {
    loads
        .iter()
        .enumerate()
        .filter_map(|(i, load)| load.map(|n| (n, i)))
        .min()
        .map_or(0, |(_, i)| i)
}

/// One warm connection's place and what keeps it.
struct Slot {
    warm: Mutex<Option<Warm>>,
    /// One connection attempt at a time.
    dialing: tokio::sync::Mutex<()>,
    /// Wakes the slot's keeper: the parameters changed.
    renew: Notify,
}

impl Slot {
    /// The slot's connection, locked.
    fn warm(&self) -> std::sync::MutexGuard<'_, Option<Warm>> {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The warm connections and what keeps them.
pub(super) struct Mux {
    tls: TlsConnector,
    slots: Vec<Slot>,
    /// Slot `i`'s connection and its tunnels run on `lanes[i]`.
    lanes: Vec<Lane>,
    /// Until when the gateway is known to take HTTP/1.1 only.
    h1_until: Mutex<Option<Instant>>,
    /// One tunnel is placed at a time: two placed at once would both read
    /// the same loads and go to the same connection.
    placing: Mutex<()>,
    /// The next connection's id.
    next_id: AtomicU64,
}

impl Mux {
    /// A transport keeping `connections` warm connections (at least one),
    /// trusting `ca_cert` besides the system's roots.
    pub(super) fn new(
        ca_cert: Option<&std::path::Path>,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let tls =
            crate::tls::connector_with_alpn(ca_cert, vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        let n = connections.clamp(1, MAX_CONNECTIONS);
        let slots = (0..n)
            .map(|_| Slot {
                warm: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
                renew: Notify::new(),
            })
            .collect();
        let lanes = (0..n)
            .map(|i| Lane::start(format!("mux-lane-{i}")))
            .collect::<std::io::Result<_>>()
            .context("starting the warm connections' threads")?;
        Ok(Mux {
            tls,
            slots,
            lanes,
            h1_until: Mutex::new(None),
            placing: Mutex::new(()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Whether tunnels should use HTTP/1.1 WebSockets for now.
    pub(super) fn h1_only(&self) -> bool {
        self.h1_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// The parameters changed: new streams go on new connections (open
    /// ones finish on the old).
    pub(super) fn renew(&self) {
        for slot in &self.slots {
            *slot.warm() = None;
            slot.renew.notify_one();
        }
    }

    /// The warm connection of slot `i` to the gateway of `p`, if there is
    /// one.
    fn current(&self, i: usize, p: &Params) -> Option<Warm> {
        let warm = self.slots[i].warm();
        warm.as_ref().filter(|w| w.serves(p)).cloned()
    }

    /// Takes no more streams on `gone` (not a newer connection) in slot
    /// `i`; its open streams finish on it (after a GOAWAY, say).
    fn forget(&self, i: usize, gone: &Warm) {
        let mut warm = self.slots[i].warm();
        if warm.as_ref().is_some_and(|w| w.id == gone.id) {
            *warm = None;
        }
    }

    /// The slot a new tunnel to the gateway of `p` goes to.
    fn pick(&self, p: &Params) -> usize {
        // Without cloning the connection's handle: a clone takes the
        // connection's lock, which its lane's tasks hold as they work.
        let loads: Vec<Option<usize>> = (0..self.slots.len())
            .map(|i| {
                let warm = self.slots[i].warm().as_ref().is_some_and(|w| w.serves(p));
                warm.then(|| self.lanes[i].load())
            })
            .collect();
        least_loaded(&loads)
    }

    /// The slot a new tunnel to the gateway of `p` goes to, counted in
    /// its lane's load from now on (before it opens: tunnels that start
    /// together spread over the connections): the one [`Mux::pick`] names,
    /// else the least loaded with room; `None` when every lane carries
    /// [`TUNNELS_PER_CONNECTION`] tunnels.
    pub(super) fn take(&self, p: &Params) -> Option<(usize, Held)> {
        let _placing = self.placing.lock().unwrap_or_else(PoisonError::into_inner);
        let first = self.pick(p);
        let mut order: Vec<usize> = (0..self.lanes.len()).collect();
        order.sort_by_key(|&i| (i != first, self.lanes[i].load()));
        order.into_iter().find_map(|i| {
            self.lanes[i]
                .try_hold(TUNNELS_PER_CONNECTION)
                .map(|count| (i, count))
        })
    }

    /// The warm connection of slot `i`, opened now if there is none.
    async fn ensure(&self, i: usize, p: &Params) -> Result<Warm, MuxError> {
        if let Some(w) = self.current(i, p) {
            return Ok(w);
        }
        let _dialing = self.slots[i].dialing.lock().await;
        if let Some(w) = self.current(i, p) {
            return Ok(w);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // On the slot's lane: the connection's socket and tasks live there.
        let dialed = self.lanes[i]
            .run(dial(self.tls.clone(), p.clone(), id))
            .await
            .unwrap_or_else(|| Err(MuxError::Other(anyhow::anyhow!("the client is ending"))));
        match dialed {
            Ok(w) => {
                *self.slots[i].warm() = Some(w.clone());
                Ok(w)
            }
            Err(MuxError::NoH2) => {
                tracing::warn!(
                    "the gateway takes HTTP/1.1 WebSockets only: --mux falls back to a connection per tunnel"
                );
                *self.h1_until.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now() + H1_RECHECK);
                Err(MuxError::NoH2)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the first warm connection (slot 0's, kept), so the client's
    /// start can say whether the gateway works: an error for a connection
    /// or TLS that failed, none for a gateway that takes HTTP/1.1 only
    /// (its TLS held).
    pub(super) async fn open_first(&self, p: &Params) -> anyhow::Result<()> {
        match self.ensure(0, p).await {
            Ok(_) | Err(MuxError::NoH2) => Ok(()),
            Err(MuxError::Other(e)) => Err(e),
        }
    }

    /// Runs `fut` (a tunnel to go on slot `i`'s connection) on that
    /// slot's lane, from there to its end: the task that handed it over
    /// ends at once, and nothing wakes it when the tunnel closes. If the
    /// lane has ended, `fut` is dropped (and its local socket closed).
    pub(super) fn spawn_on<F>(&self, i: usize, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.lanes[i].spawn(fut);
    }

    /// Opens a tunnel's stream to `/ws/{token}/tcp` on slot `slot`'s warm
    /// connection (the one with the fewest tunnels when `None`, and on a
    /// second try), on a new one if it is gone or the gateway sent GOAWAY.
    pub(super) async fn stream(
        &self,
        slot: Option<usize>,
        p: &Params,
        token: &str,
    ) -> Result<H2Stream, MuxError> {
        let mut last = None;
        for attempt in 0..2 {
            let i = match slot {
                Some(i) if attempt == 0 && i < self.slots.len() => i,
                _ => self.pick(p),
            };
            let warm = self.ensure(i, p).await?;
            let req = request(p, token)?;
            let sent = async {
                let mut send = warm.send.clone().ready().await?;
                send.send_request(req, false)
            };
            match tokio::time::timeout(PING_WAIT, sent).await {
                Ok(Ok((response, send))) => return Ok(H2Stream::new(response, send)),
                Ok(Err(e)) => last = Some(anyhow::Error::new(e)),
                Err(_) => last = Some(anyhow::anyhow!("no stream within {PING_WAIT:?}")),
            }
            self.forget(i, &warm);
        }
        Err(MuxError::Other(
            last.unwrap_or_else(|| anyhow::anyhow!("no stream")),
        ))
    }
}

/// Keeps every warm connection to the current gateway until the client
/// ends: opened at start, opened again when it ends or the parameters
/// change.
pub(super) async fn keep(shared: Arc<super::Shared>) {
    let Some(mux) = shared.mux.as_ref() else {
        return;
    };
    futures_util::future::join_all((0..mux.slots.len()).map(|i| keep_slot(&shared, mux, i))).await;
}

/// Keeps slot `i`'s connection (see [`keep`]).
async fn keep_slot(shared: &super::Shared, mux: &Mux, i: usize) {
    let renew = &mux.slots[i].renew;
    let mut backoff = Duration::from_millis(200);
    loop {
        let p = shared.params();
        let pause = match mux.ensure(i, &p).await {
            Ok(warm) => {
                backoff = Duration::from_millis(200);
                tokio::select! {
                    () = warm.over.cancelled() => {}
                    () = renew.notified() => {}
                }
                continue;
            }
            Err(MuxError::NoH2) => H1_RECHECK,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "warm connection to the gateway failed");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = renew.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stream_goes_to_the_warm_connection_with_the_fewest() {
        assert_eq!(least_loaded(&[Some(1), Some(0)]), 1, "beside a bulk stream");
        assert_eq!(
            least_loaded(&[Some(3), Some(2), Some(2)]),
            1,
            "first of equals"
        );
        assert_eq!(least_loaded(&[Some(0), Some(0)]), 0);
        assert_eq!(
            least_loaded(&[None, Some(7)]),
            1,
            "a warm one over a dialing one"
        );
        assert_eq!(least_loaded(&[Some(4), None]), 0);
        assert_eq!(least_loaded(&[None, None]), 0, "none warm: the first slot");
        assert_eq!(
            least_loaded(&[Some(9)]),
            0,
            "one connection takes everything"
        );
    }
}
