//! The TCP pipe: one WebSocket to one node connection, payload counted
//! per session. A client Close is a half-close: the node's side is shut
//! for writing and whatever the node still sends is forwarded first. Idle
//! tunnels hold no read buffer; the buffer read into is the frame sent.
//!
//! When the node finishes first, the Close goes out as soon as the client
//! has read past the last data frame, proven by the Pong to a Ping queued
//! behind it. v2ray-plugin needs that: v2ray-core's WebSocket transport
//! (gorilla/websocket) reports any end of a WebSocket, a Close or the
//! connection's EOF alike, as an error, and v2ray-core then interrupts the
//! pipe between its outbound and its inbound, dropping what it has read
//! from the socket but not yet written to the local connection. A Close
//! right behind the data is read in the same turn and drops the tail; once
//! the Pong left, the reader has handed everything on and the Close arrives
//! a round trip later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::tunnel::{self, TunnelGuard, closed_signal};

/// The payload of the Ping queued behind a tunnel's last data frame; its
/// Pong says the client has read everything before it.
const DRAINED_PING: &[u8] = b"end";

/// How long the gateway waits for that Pong (a client that does not answer
/// Pings gets its Close after this).
const DRAINED_WAIT: Duration = Duration::from_secs(3);

/// Largest read from a node, and so largest frame to a client.
const READ_CHUNK: usize = 64 * 1024;

/// How the node-to-client half of a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The node closed (or failed).
    NodeDone,
    /// The control plane, the idle timer or the drain closed it.
    Cancelled,
    /// The client side went away.
    ClientGone,
}

/// Pipes one TCP tunnel until both sides are done.
pub(crate) async fn pipe(fut: UpgradeFut, node: TcpStream, guard: TunnelGuard) {
    let gw = guard.gw().clone();
    let Some((mut rx, out, writer)) = tunnel::open(fut, gw.opts.max_frame, 8).await else {
        return;
    };
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
    let mut upstream = tokio::spawn(async move {
        loop {
            let frame = match rx
                .read_frame::<_, WebSocketError>(&mut |_| async { Ok(()) })
                .await
            {
                Ok(f) => f,
                Err(WebSocketError::FrameTooLarge) => {
                    let _ = up_out.send(Frame::close(1009, b"frame too large")).await;
                    return false;
                }
                Err(_) => return false,
            };
            match frame.opcode {
                OpCode::Binary | OpCode::Continuation => {
                    if node_w.write_all(&frame.payload).await.is_err() {
                        return false;
                    }
                    up_session
                        .up
                        .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                    up_activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                OpCode::Text => {
                    let _ = up_out.send(Frame::close(1003, b"binary frames only")).await;
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
    let closer = out.clone();
    let downstream = async move {
        tokio::pin!(closed);
        let mut tick = tokio::time::interval(idle_ping.min(idle_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A buffer only once there is something to read: idle
                // tunnels hold none, and the buffer read into is the frame
                // sent (no copy).
                r = node_r.readable() => {
                    if r.is_err() {
                        return End::NodeDone;
                    }
                    let mut buf = Vec::with_capacity(READ_CHUNK);
                    match node_r.try_read_buf(&mut buf) {
                        Ok(0) => return End::NodeDone,
                        Ok(n) => {
                            if n < READ_CHUNK / 4 {
                                buf.shrink_to_fit();
                            }
                            if out.send(Frame::binary(Payload::Owned(buf))).await.is_err() {
                                return End::ClientGone;
                            }
                            down_session.down.fetch_add(n as u64, Ordering::Relaxed);
                            activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::NodeDone,
                    }
                },
                _ = tick.tick() => {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    let silent = born.elapsed().saturating_sub(last);
                    if silent >= idle_timeout {
                        let _ = out.send(Frame::close(1000, b"idle")).await;
                        return End::Cancelled;
                    }
                    if silent >= idle_ping {
                        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new()));
                        if out.send(ping).await.is_err() {
                            return End::ClientGone;
                        }
                    }
                }
                (code, reason) = &mut closed => {
                    let _ = out.send(Frame::close(code, reason)).await;
                    return End::Cancelled;
                }
            }
        }
    };
    // The futures holding the frame senders end with this block, so the
    // writer below sees the channel close as soon as the tunnel is over.
    {
        tokio::pin!(downstream);
        tokio::select! {
            end = &mut downstream => {
                if end == End::NodeDone {
                    // The node is done: close once the client has read
                    // past the last data frame (see the module's note).
                    let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(DRAINED_PING));
                    let _ = closer.send(ping).await;
                    let client_done = tokio::select! {
                        _ = drained.notified() => false,
                        _ = &mut upstream => true,
                        _ = tokio::time::sleep(DRAINED_WAIT) => false,
                    };
                    let _ = closer.send(Frame::close(1000, b"")).await;
                    if !client_done {
                        // Let the client answer our Close before the socket
                        // goes: unread bytes would turn the close into a reset.
                        let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                    }
                } else if end == End::Cancelled {
                    let _ = tokio::time::timeout(Duration::from_secs(3), &mut upstream).await;
                }
                upstream.abort();
            }
            half = &mut upstream => {
                if matches!(half, Ok(true)) {
                    // Half-close: forward what the node still sends, then close.
                    if downstream.await == End::NodeDone {
                        let _ = closer.send(Frame::close(1000, b"")).await;
                    }
                }
            }
        }
    }
    drop(closer);
    upstream.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(guard);
}
