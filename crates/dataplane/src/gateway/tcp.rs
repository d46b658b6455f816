//! The TCP pipe: one WebSocket to one node connection, payload counted
//! per session. A client Close is a half-close: the node's side is shut
//! for writing and whatever the node still sends is forwarded first. Idle
//! tunnels hold no read buffer; the buffer read into is the frame sent.
//!
//! When the node finishes first, a client that reads a Close in order
//! behind the data (ours says so with [`ORDERED_CLOSE_HEADER`]) gets the
//! Close right behind the last data frame. Every other client gets it once
//! it has read past the last data frame, proven by the Pong to a Ping
//! queued behind it, and has had a moment to hand on what it read.
//! v2ray-plugin needs that: v2ray-core's WebSocket transport
//! (gorilla/websocket) reports any end of a WebSocket, a Close or the
//! connection's EOF alike, as an error, and v2ray-core then interrupts the
//! pipe between its outbound and its inbound, dropping what that pipe
//! holds (up to its 512 KiB buffer) but has not yet written to the local
//! connection. The Pong leaves when the reader has passed the data into
//! that pipe; the pipe drains into the local connection at the pace the
//! client has been reading at, so the wait after the Pong scales with the
//! Ping's round trip ([`drain_grace`]). A client that closes first ends
//! the wait at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

use httvps_wire::Reason;

use super::grant::clock_ms;
use super::tunnel::{self, TunnelGuard, closed_signal};
use super::upgrade::Opening;

/// The payload of the Ping queued behind a tunnel's last data frame; its
/// Pong says the client has read everything before it.
const DRAINED_PING: &[u8] = b"end";

/// How long the gateway waits for that Pong (a client that does not answer
/// Pings gets its Close after this).
const DRAINED_WAIT: Duration = Duration::from_secs(3);

/// The request header by which a client says it reads a Close in order
/// behind the data frames before it (value `1`): it gets the Close right
/// behind the last one.
pub const ORDERED_CLOSE_HEADER: &str = "x-httvps-ordered-close";

/// The least and the most a client that is not known to read a Close in
/// order is given, after its Pong, to hand on what it has read.
const DRAIN_GRACE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The wait after the Pong, from the Ping's round trip (which covers
/// reading the last data frames): eight of them, within [`DRAIN_GRACE`].
fn drain_grace(round_trip: Duration) -> Duration {
    (round_trip * 8).clamp(DRAIN_GRACE.0, DRAIN_GRACE.1)
}

/// Largest read from a node, and so largest frame to a client: with its
/// 4-byte header (and HTTP/2's 9) a frame is exactly 64 KiB, four whole
/// TLS records. At 64 KiB of payload every frame left a record of a few
/// bytes behind (and on HTTP/2 a second DATA frame): two writes per frame.
/// (This size once seemed to lose the end of long downloads; the node
/// lost those bytes, see `sswrites.rs`, and at this size it only lost
/// them more often.)
const READ_CHUNK: usize = 64 * 1024 - 13;
const _: () = assert!(READ_CHUNK < 1 << 16, "a 4-byte frame header");

/// The close code of a tunnel whose node connection failed: 1011, "an
/// unexpected condition". (IANA's 1014, "bad gateway", says it better, but
/// common WebSocket libraries, tungstenite and gorilla among them, take
/// 1014 for a protocol violation, so their applications were told the
/// gateway broke the protocol and answered with a Close of their own.)
const NODE_FAILED: u16 = 1011;

/// Makes a tunnel's node connection end with a reset once its halves are
/// dropped, as its tunnel is cut (revoked, closed by an admin, past its
/// allowance, the gateway going away): the node drops its connection to
/// the destination at once. Its writing half is shut too, so an upload
/// waiting for the node to take it fails at once and lets its half go
/// (it held the tunnel until the client's answer's deadline). The cut
/// used to wait, node connection open, for the frames queued ahead of the
/// Close and for the client's answer (3 s each): a client that read
/// slowly kept the destination's connection, and the node reading from
/// it, up to 6 s after a revocation.
fn cut_node(node: &tokio::net::tcp::OwnedReadHalf) {
    let socket = socket2::SockRef::from(node.as_ref());
    let _ = socket.set_linger(Some(Duration::ZERO));
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

/// How the node-to-client half of a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The node closed.
    NodeDone,
    /// The node's connection failed (reset: the node died, or passed on
    /// its destination's reset): the client hears an abnormal close, so
    /// what it got is not taken for the whole stream.
    NodeFailed,
    /// The idle timer closed it.
    Cancelled,
    /// The control plane, the allowance or the drain cut it: the node
    /// connection is dropped at once (see [`cut_node`]), and this Close
    /// follows what is queued.
    Cut(u16, &'static [u8]),
    /// The client side went away.
    ClientGone,
}

/// Pipes one TCP tunnel until both sides are done.
///
/// `ordered_close`: the client reads a Close in order behind the data (see
/// the module's note).
pub(crate) async fn pipe(
    fut: Opening,
    node: TcpStream,
    mut guard: TunnelGuard,
    ordered_close: bool,
) {
    let gw = guard.gw().clone();
    let Some((mut rx, out, writer)) = tunnel::open(fut, gw.opts.max_frame, 8).await else {
        return;
    };
    let progress = writer.progress();
    let (up_progress, down_progress) = (progress.clone(), progress.clone());
    let (idle_ping, idle_timeout) = (gw.opts.idle_ping, gw.opts.idle_timeout);
    let born = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let up_activity = activity.clone();
    let (node_r, mut node_w) = node.into_split();
    let session = guard.session.clone();
    let up_out = out.clone();
    let up_session = session.clone();
    let drained = Arc::new(Notify::new());
    let up_drained = drained.clone();
    let (up_gw, up_id) = (gw.clone(), guard.session_id.clone());
    // A cut (see `End::Cut`) stops the upstream half.
    let cut_signal = Arc::new(Notify::new());
    let up_cut = cut_signal.clone();
    let mut upstream = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                () = up_cut.notified() => None,
                next = rx.next(&up_out, &up_progress) => Some(next),
            };
            let Some(next) = next else {
                // Cut: the node writer goes (the node connection resets
                // with it), and the client's frames are read and dropped
                // until its Close while what was queued for it, and our
                // Close, go out (the reader starts each frame afresh if a
                // read was dropped part way). Left unread, a client's
                // Ping turned the socket's close into a reset, which cost
                // a slow reader the end of its queue and the Close.
                drop(node_w);
                while let Some(frame) = rx.next(&up_out, &up_progress).await {
                    if frame.opcode == OpCode::Close {
                        break;
                    }
                }
                return false;
            };
            let Some(frame) = next else {
                return false;
            };
            match frame.opcode {
                OpCode::Binary | OpCode::Continuation => {
                    // Nothing past the grant: the session's close signal
                    // ends the tunnel; frames until then are dropped.
                    if !up_gw.room(&up_id, &up_session).await {
                        continue;
                    }
                    // Counted before it is written, as far as the grant
                    // goes (see Gateway::take): at the allowance's end only
                    // what fits is written, and the tunnel closes.
                    let len = frame.payload.len() as u64;
                    let fits = up_gw.take(&up_id, &up_session, &up_session.up, len).await;
                    let fits = usize::try_from(fits).unwrap_or(0).min(frame.payload.len());
                    if fits == 0 {
                        continue;
                    }
                    if node_w.write_all(&frame.payload[..fits]).await.is_err() {
                        return false;
                    }
                    up_activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                OpCode::Text => {
                    tunnel::queue_last(
                        &up_out,
                        &up_progress,
                        Frame::close(1003, b"binary frames only"),
                    )
                    .await;
                    return false;
                }
                OpCode::Ping => {
                    let _ = up_out
                        .send(Frame::pong(Payload::Owned(frame.payload.to_vec())))
                        .await;
                }
                OpCode::Pong => {
                    if &frame.payload[..] == DRAINED_PING {
                        up_drained.notify_one();
                    }
                }
                OpCode::Close => {
                    let _ = node_w.shutdown().await;
                    return true;
                }
            }
        }
    });
    // Made once and polled by every turn of the loop below: one
    // registration per tunnel, not one per frame.
    let closed = closed_signal(session.closed());
    let down_session = session.clone();
    let down_id = guard.session_id.clone();
    let closer = out.clone();
    let downstream = async move {
        tokio::pin!(closed);
        let mut tick = tokio::time::interval(idle_ping.min(idle_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A frame read from the node that the writer's queue had no room
        // for (the client reads slower than the node sends; its bytes are
        // counted already). Nothing more is read from the node until it is queued,
        // and the loop keeps watching the close signal and the idle timer
        // meanwhile: a client that stops reading is closed at the idle
        // limit, and by a revocation or a spent grant at once, where
        // waiting on the queue held its tunnel for ever.
        let mut pending: Option<Frame<'static>> = None;
        loop {
            tokio::select! {
                permit = out.reserve(), if pending.is_some() => {
                    let Ok(permit) = permit else {
                        return End::ClientGone;
                    };
                    if let Some(frame) = pending.take() {
                        permit.send(frame);
                        activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                },
                // A buffer only once there is something to read: idle
                // tunnels hold none, and the buffer read into is the frame
                // sent (no copy).
                r = node_r.readable(), if pending.is_none() => {
                    if r.is_err() {
                        return End::NodeFailed;
                    }
                    // Nothing read past the grant.
                    if !gw.room(&down_id, &down_session).await {
                        let why = down_session.grant.denied().unwrap_or(Reason::QuotaExceeded);
                        cut_node(&node_r);
                        cut_signal.notify_one();
                        return End::Cut(1008, why.as_str().as_bytes());
                    }
                    let room = down_session.grant.room(down_session.used(), clock_ms());
                    let chunk = usize::try_from(room).unwrap_or(READ_CHUNK).clamp(1, READ_CHUNK);
                    let mut buf = Vec::with_capacity(chunk);
                    let read = if chunk < READ_CHUNK {
                        buf.resize(chunk, 0);
                        node_r.try_read(&mut buf).inspect(|n| buf.truncate(*n))
                    } else {
                        node_r.try_read_buf(&mut buf)
                    };
                    match read {
                        Ok(0) => return End::NodeDone,
                        Ok(n) => {
                            if n < READ_CHUNK / 4 {
                                buf.shrink_to_fit();
                            }
                            // Counted before it is queued, as far as the
                            // grant goes: the session's other tunnels read
                            // within what is left, and at the allowance's
                            // end only what fits goes (the close follows).
                            let fits = gw.take(&down_id, &down_session, &down_session.down, n as u64).await;
                            let fits = usize::try_from(fits).unwrap_or(0).min(n);
                            if fits == 0 {
                                let why = down_session.grant.denied().unwrap_or(Reason::QuotaExceeded);
                                cut_node(&node_r);
                                cut_signal.notify_one();
                                return End::Cut(1008, why.as_str().as_bytes());
                            }
                            buf.truncate(fits);
                            match out.try_send(Frame::binary(Payload::Owned(buf))) {
                                Ok(()) => {
                                    activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                                }
                                Err(mpsc::error::TrySendError::Full(frame)) => pending = Some(frame),
                                Err(mpsc::error::TrySendError::Closed(_)) => return End::ClientGone,
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::NodeFailed,
                    }
                },
                _ = tick.tick() => {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    let silent = born.elapsed().saturating_sub(last);
                    if silent >= idle_timeout {
                        tunnel::queue_last(&out, &down_progress, Frame::close(1000, b"idle")).await;
                        return End::Cancelled;
                    }
                    // A full queue already waits on the client: no Ping.
                    if silent >= idle_ping {
                        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new()));
                        if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(ping) {
                            return End::ClientGone;
                        }
                    }
                }
                (code, reason) = &mut closed => {
                    cut_node(&node_r);
                    cut_signal.notify_one();
                    return End::Cut(code, reason);
                }
            }
        }
    };
    // The futures holding the frame senders end with this block, so the
    // writer below sees the channel close as soon as the tunnel is over.
    let mut cut = false;
    {
        tokio::pin!(downstream);
        tokio::select! {
            end = &mut downstream => {
                if end == End::NodeDone && ordered_close {
                    tunnel::queue_last(&closer, &progress, Frame::close(1000, b"")).await;
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                } else if end == End::NodeDone {
                    // The node is done: close once the client has read
                    // past the last data frame and handed it on (see the
                    // module's note).
                    let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(DRAINED_PING));
                    let pinged = Instant::now();
                    tunnel::queue_last(&closer, &progress, ping).await;
                    let mut client_done = tokio::select! {
                        _ = drained.notified() => false,
                        _ = &mut upstream => true,
                        _ = tokio::time::sleep(DRAINED_WAIT) => false,
                    };
                    if !client_done {
                        let grace = drain_grace(pinged.elapsed());
                        client_done = tokio::time::timeout(grace, &mut upstream).await.is_ok();
                    }
                    tunnel::queue_last(&closer, &progress, Frame::close(1000, b"")).await;
                    if !client_done {
                        // Let the client answer our Close before the socket
                        // goes: unread bytes would turn the close into a reset.
                        let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                    }
                } else if end == End::NodeFailed {
                    // Behind what was read before the failure.
                    tunnel::queue_last(&closer, &progress, Frame::close(NODE_FAILED, b"node connection failed")).await;
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                } else if let End::Cut(code, reason) = end {
                    // The node connection went with the downstream half,
                    // the upstream half only reads the client to its end:
                    // the client gets what was queued, then the Close.
                    tunnel::queue_last(&closer, &progress, Frame::close(code, reason)).await;
                    cut = true;
                } else if end == End::Cancelled {
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                }
                if !cut {
                    upstream.abort();
                }
            }
            half = &mut upstream => {
                if matches!(half, Ok(true)) {
                    // Half-close: forward what the node still sends, then close.
                    match downstream.await {
                        End::NodeDone => {
                            tunnel::queue_last(&closer, &progress, Frame::close(1000, b"")).await;
                        }
                        End::NodeFailed => {
                            tunnel::queue_last(&closer, &progress, Frame::close(NODE_FAILED, b"node connection failed")).await;
                        }
                        End::Cut(code, reason) => {
                            tunnel::queue_last(&closer, &progress, Frame::close(code, reason)).await;
                        }
                        End::Cancelled | End::ClientGone => {}
                    }
                }
            }
        }
    }
    drop(closer);
    if !cut {
        upstream.abort();
    }
    // No byte moves any more: the tunnel's places go back now, while
    // what was queued goes out to the client, as long as the client goes
    // without a frame before it is pinged (30 s by default: a 64 KiB
    // frame at 2 KB/s).
    guard.release_places();
    let written = tunnel::finish_writer(writer, idle_ping).await;
    if cut {
        // Its answer to the Close, read before the socket goes, while the
        // client reads through what the socket still holds for it; none
        // comes to a Close never written.
        if written {
            let _ = tokio::time::timeout(idle_ping, &mut upstream).await;
        }
        upstream.abort();
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_grace_scales_with_the_round_trip_within_its_bounds() {
        assert_eq!(drain_grace(Duration::ZERO), DRAIN_GRACE.0);
        assert_eq!(
            drain_grace(Duration::from_millis(40)),
            Duration::from_millis(320)
        );
        assert_eq!(drain_grace(Duration::from_secs(2)), DRAIN_GRACE.1);
    }
}
