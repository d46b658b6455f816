//! What both pipes share: the slot a tunnel holds in the caps, the guard
//! holding that slot, its connection's place in the budget and its
//! session, the upgrade with our WebSocket settings, and the one writer
//! task per socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Gateway;
use super::accept::Conn;
use super::caps::CapRefusal;
use super::frames::{self, MaskedOnly, Reader, Sequence};
use super::sessions::{Closing, Session};
use super::strangers::Carrying;
use super::upgrade::Opening;

/// A tunnel's place in the caps (in all and for its device), taken before
/// anything is opened for it and given back when dropped.
pub(crate) struct CapSlot {
    gw: Arc<Gateway>,
    device: Arc<str>,
}

impl CapSlot {
    /// Takes a place for a tunnel of `device`, unless a cap is reached.
    pub fn take(gw: &Arc<Gateway>, device: &Arc<str>) -> Result<Self, CapRefusal> {
        gw.admit(device)?;
        Ok(CapSlot {
            gw: gw.clone(),
            device: device.clone(),
        })
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.gw.release(&self.device);
    }
}

/// Holds a tunnel's places (caps, connection budget, session); gives them
/// back when the tunnel ends, its caps and session count as soon as it
/// moves no more bytes (see [`TunnelGuard::release_places`]).
pub(crate) struct TunnelGuard {
    /// Its place in the caps (`None` once given back).
    slot: Option<CapSlot>,
    gw: Arc<Gateway>,
    /// The session the tunnel counts for.
    pub(crate) session: Arc<Session>,
    /// Its id.
    pub(crate) session_id: Arc<str>,
    /// The connection it came on (its place in the budget, kept as long
    /// as its socket), counting the tunnel among those it carries.
    conn: Option<(Conn, Carrying)>,
}

impl TunnelGuard {
    /// A guard for a tunnel holding `slot` in the caps, counted in session
    /// `session_id`, on connection `conn`.
    pub fn new(slot: CapSlot, session_id: &str, conn: Option<Conn>) -> Self {
        let session = slot.gw.sessions.attach(session_id);
        TunnelGuard {
            gw: slot.gw.clone(),
            slot: Some(slot),
            session,
            session_id: Arc::from(session_id),
            conn: conn.map(|c| {
                let carrying = c.stranger.carry();
                (c, carrying)
            }),
        }
    }

    /// The tunnel is open (admitted and granted): its connection is no
    /// longer a stranger to its source's bound.
    pub fn opened(&self) {
        if let Some((c, _)) = &self.conn {
            c.stranger.known();
        }
    }

    /// The gateway.
    pub fn gw(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Whether the session may move bytes now (see [`Gateway::room`]).
    pub async fn room(&self) -> bool {
        self.gw.room(&self.session_id, &self.session).await
    }

    /// Gives back the tunnel's places in the caps and its count in the
    /// session (and the session's grant with its last tunnel) once it
    /// moves no more bytes, while what was queued for its client still
    /// goes out: a cut tunnel whose client reads slowly, or not at all,
    /// held them until its socket went (a minute after a revocation).
    /// The connection's place in the budget stays with the socket.
    pub fn release_places(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.session.detach();
            if self.session.tunnel_count() == 0 {
                self.gw.release_grant(&self.session_id, &self.session);
            }
            drop(slot);
        }
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.release_places();
    }
}

/// Completes when the session's tunnels must close, with the WebSocket
/// close code and reason to send (never if the session is gone: then
/// nothing closes it).
pub(crate) async fn closed_signal(mut rx: watch::Receiver<Closing>) -> (u16, &'static [u8]) {
    match rx.wait_for(|c| *c != Closing::Open).await.map(|c| *c) {
        Ok(Closing::GoingAway) => (1001, b"gateway going away"),
        Ok(Closing::Spent(why)) => (1008, why.as_str().as_bytes()),
        Ok(_) => (1008, b"session closed"),
        Err(_) => std::future::pending().await,
    }
}

/// The upgraded connection.
pub(crate) type WsIo = TokioIo<hyper::upgrade::Upgraded>;

/// The reading half of a tunnel's WebSocket: the client's frames, held to
/// the protocol (see `frames`).
pub(crate) struct ClientFrames {
    rx: Reader<MaskedOnly<tokio::io::ReadHalf<WsIo>>>,
    sequence: Sequence,
}

/// Completes the upgrade (over HTTP/1.1 or HTTP/2: the same upgraded byte
/// stream either way) with our settings (no automatic Close or Pong, a
/// frame limit) and starts the only task that writes to the socket: frames
/// queued on the returned sender (at most `queue` in flight: backpressure),
/// until a Close is written.
pub(crate) async fn open(
    fut: Opening,
    max_frame: usize,
    queue: usize,
) -> Option<(ClientFrames, mpsc::Sender<Frame<'static>>, Writer)> {
    let (io, h2) = match fut {
        // Nothing is read into the WebSocket's own buffer by the upgrade:
        // its stream is all there is.
        Opening::H1(fut) => (fut.await.ok()?.into_inner(), false),
        Opening::H2(on) => (
            WebSocket::after_handshake(TokioIo::new(on.await.ok()?), Role::Server).into_inner(),
            true,
        ),
    };
    let (r, w) = tokio::io::split(io);
    // Frames are read by our reader (see `frames`), written by
    // fastwebsockets' writer (no automatic Close or Pong on this side).
    let rx = Reader::new(MaskedOnly::new(r), max_frame);
    let (_, mut tx) = fastwebsockets::after_handshake_split(tokio::io::empty(), w, Role::Server);
    if h2 {
        // hyper's HTTP/2 stream takes one buffer per write: a vectored
        // frame would leave as two DATA frames (the frame header on its
        // own). One buffer keeps a frame one DATA frame.
        tx.set_writev(false);
    }
    let (out, mut out_rx) = mpsc::channel::<Frame<'static>>(queue);
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    let handle = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let last = frame.opcode == OpCode::Close;
            if tx.write_frame(frame).await.is_err() || tx.flush().await.is_err() || last {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let frames = ClientFrames {
        rx,
        sequence: Sequence::default(),
    };
    Some((frames, out, Writer { handle, written }))
}

impl ClientFrames {
    /// The client's next frame: `None` once the tunnel must end, with the
    /// Close that a broken rule calls for queued on `out`.
    pub(crate) async fn next(
        &mut self,
        out: &mpsc::Sender<Frame<'static>>,
        progress: &Progress,
    ) -> Option<Frame<'_>> {
        let refusal = match self.rx.read().await {
            Ok(f) => match self.sequence.check(&f) {
                Ok(()) => return Some(f),
                Err(r) => Some(r),
            },
            Err(e) => frames::failure(&e),
        };
        if let Some((code, reason)) = refusal {
            queue_last(out, progress, Frame::close(code, reason)).await;
        }
        None
    }
}

/// The task that writes a tunnel's frames, and how many it has written.
pub(crate) struct Writer {
    handle: JoinHandle<()>,
    written: Arc<AtomicU64>,
}

/// How long a frame that ends a tunnel (a Close, the drain's Ping) may wait
/// for room in the writer's queue: a client that stops reading holds its
/// tunnel no longer.
const LAST_FRAMES_WAIT: Duration = Duration::from_secs(3);

/// How many frames a tunnel's writer has written.
#[derive(Clone)]
pub(crate) struct Progress(Arc<AtomicU64>);

impl Progress {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Writer {
    /// Its progress, for [`queue_last`].
    pub fn progress(&self) -> Progress {
        Progress(self.written.clone())
    }
}

/// Queues `frame` for the writer, unless its queue stays full for
/// [`LAST_FRAMES_WAIT`] while the writer writes nothing (the client has
/// stopped reading; a slow one still gets it), or the writer is gone.
pub(crate) async fn queue_last(
    out: &mpsc::Sender<Frame<'static>>,
    progress: &Progress,
    frame: Frame<'static>,
) {
    let mut seen = progress.now();
    loop {
        match tokio::time::timeout(LAST_FRAMES_WAIT, out.reserve()).await {
            Ok(Ok(permit)) => return permit.send(frame),
            Ok(Err(_)) => return,
            Err(_) => {
                let now = progress.now();
                if now == seen {
                    return;
                }
                seen = now;
            }
        }
    }
}

/// Lets the writer (whose senders are all dropped) write what is queued, a
/// Close last, for as long as it makes progress, and ends it once `stall`
/// passes without a frame written: a slow client still gets every byte
/// queued for it, one that has stopped reading does not hold its socket
/// and its place. Whether everything queued was written.
pub(crate) async fn finish_writer(mut writer: Writer, stall: Duration) -> bool {
    let mut seen = writer.written.load(Ordering::Relaxed);
    while tokio::time::timeout(stall, &mut writer.handle)
        .await
        .is_err()
    {
        let now = writer.written.load(Ordering::Relaxed);
        if now == seen {
            writer.handle.abort();
            return false;
        }
        seen = now;
    }
    true
}
