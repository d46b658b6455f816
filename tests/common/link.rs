//! A TCP forwarder between a gateway and its control plane that a test
//! controls: it counts the access-event streams asked for through it, can
//! sever every connection it carries (and refuse new ones), and can
//! withhold the access-event stream (such a request goes no further, as
//! when the control plane's events are lost on the way).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The request line of the access-event stream.
const EVENTS: &[u8] = b"GET /api/v1/gateway/access-events ";

/// See the module documentation.
pub struct ControlLink {
    /// `http://127.0.0.1:PORT`, for the gateway's backend.
    pub url: String,
    open: watch::Sender<bool>,
    withhold: Arc<AtomicBool>,
    streams: Arc<AtomicUsize>,
}

impl ControlLink {
    /// Forwards to the control plane at `base` (`http://host:port`).
    pub async fn start(base: &str) -> ControlLink {
        let upstream: SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("control plane address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, _) = watch::channel(true);
        let withhold = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(AtomicUsize::new(0));
        let (rx, held, counted) = (open.subscribe(), withhold.clone(), streams.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (rx, held, counted) = (rx.clone(), held.clone(), counted.clone());
                tokio::spawn(carry(inbound, upstream, rx, held, counted));
            }
        });
        ControlLink {
            url: format!("http://{addr}"),
            open,
            withhold,
            streams,
        }
    }

    /// Closes every connection carried, and every new one, until
    /// [`ControlLink::restore`].
    pub fn sever(&self) {
        self.open.send_replace(false);
    }

    /// Carries connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Whether access-event stream requests go no further.
    pub fn withhold_events(&self, withhold: bool) {
        self.withhold.store(withhold, Ordering::SeqCst);
    }

    /// Access-event streams asked for so far (requests, not connections:
    /// the gateway's client reuses pooled connections).
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

/// Counts a byte string's occurrences in a stream read in pieces (one
/// may straddle two reads).
pub struct Needles {
    needle: Vec<u8>,
    carry: Vec<u8>,
}

impl Needles {
    /// Counts `needle` (not empty).
    pub fn new(needle: &[u8]) -> Needles {
        Needles {
            needle: needle.to_vec(),
            carry: Vec::new(),
        }
    }

    /// The occurrences that end in `read`, the stream's next piece.
    pub fn count(&mut self, read: &[u8]) -> usize {
        self.carry.extend_from_slice(read);
        let found = self
            .carry
            .windows(self.needle.len())
            .filter(|w| *w == self.needle.as_slice())
            .count();
        let keep = self.carry.len().min(self.needle.len() - 1);
        self.carry.drain(..self.carry.len() - keep);
        found
    }
}

/// One connection, carried until either side ends or the link is severed.
async fn carry(
    inbound: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<bool>,
    withhold: Arc<AtomicBool>,
    streams: Arc<AtomicUsize>,
) {
    if !*rx.borrow_and_update() {
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let requests = async move {
        let (mut buf, mut events) = (vec![0u8; 16 * 1024], Needles::new(EVENTS));
        while let Ok(n) = in_r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let found = events.count(&buf[..n]);
            streams.fetch_add(found, Ordering::SeqCst);
            if found > 0 && withhold.load(Ordering::SeqCst) {
                // Held: nothing more goes either way on this connection.
                std::future::pending::<()>().await;
            }
            if out_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let answers = tokio::io::copy(&mut out_r, &mut in_w);
    tokio::select! {
        _ = async { tokio::join!(requests, answers) } => {}
        _ = rx.wait_for(|open| !*open) => {}
    }
}
