//! The UDP pipe: exactly one Shadowsocks UDP packet per binary message
//! each way (a message may come fragmented, up to 64 KiB), over one UDP
//! socket to the node per WebSocket. Like a TCP tunnel, it gets a Ping
//! after `idle_ping` and is closed after `idle_timeout` without a packet
//! either way, and an idle tunnel holds no receive buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;

use super::tunnel::{self, TunnelGuard, closed_signal};
use super::upgrade::Opening;

/// Largest datagram: the most one UDP datagram carries over IPv4
/// (65,535 less the IP and UDP headers); a larger one could not be sent
/// to the node.
const DATAGRAM_MAX: usize = 65_507;

/// Room for any datagram the node sends (over IPv6 up to 65,527 bytes).
const RECV_MAX: usize = 65_536;

/// Pipes one UDP tunnel until either side ends it, or it is idle.
pub(crate) async fn pipe(fut: Opening, socket: UdpSocket, mut guard: TunnelGuard) {
    let gw = guard.gw().clone();
    let Some((mut rx, out, writer)) = tunnel::open(fut, gw.opts.max_frame, 32).await else {
        return;
    };
    let progress = writer.progress();
    let up_progress = progress.clone();
    let (idle_ping, idle_timeout) = (gw.opts.idle_ping, gw.opts.idle_timeout);
    let born = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let socket = Arc::new(socket);
    let session = guard.session.clone();
    let (up_sock, up_out, up_session, up_activity) = (
        socket.clone(),
        out.clone(),
        session.clone(),
        activity.clone(),
    );
    let (up_gw, up_id) = (gw.clone(), guard.session_id.clone());
    let mut upstream = tokio::spawn(async move {
        // A datagram that came as a fragmented message (clients whose write
        // buffer is smaller than the datagram send it so), gathered until
        // its last frame.
        let mut gathered: Vec<u8> = Vec::new();
        loop {
            let Some(frame) = rx.next(&up_out, &up_progress).await else {
                return;
            };
            match frame.opcode {
                OpCode::Binary | OpCode::Continuation => {
                    let whole = frame.fin && gathered.is_empty();
                    // Whole or in fragments, a message past a datagram's
                    // size ends the tunnel (it could not be sent, and is
                    // not counted).
                    if gathered.len() + frame.payload.len() > DATAGRAM_MAX {
                        let too_large = Frame::close(1009, b"datagram too large");
                        tunnel::queue_last(&up_out, &up_progress, too_large).await;
                        return;
                    }
                    if !whole {
                        gathered.extend_from_slice(&frame.payload);
                        if !frame.fin {
                            continue;
                        }
                    }
                    let datagram: &[u8] = if whole { &frame.payload } else { &gathered };
                    // Nothing past the grant (the close signal follows).
                    // Counted before it is sent (see Gateway::take); a
                    // datagram cannot be cut: one that does not fit whole
                    // is dropped (what it counted given back).
                    if up_gw.room(&up_id, &up_session).await
                        && up_gw
                            .take_whole(&up_id, &up_session, &up_session.up, datagram.len() as u64)
                            .await
                    {
                        if up_sock.send(datagram).await.is_ok() {
                            up_activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                        } else {
                            // Not sent: not the client's to pay.
                            up_session.give_back(&up_session.up, datagram.len() as u64);
                        }
                    }
                    if !whole {
                        gathered = Vec::new();
                    }
                }
                OpCode::Ping => {
                    let _ = up_out
                        .send(Frame::pong(Payload::Owned(frame.payload.to_vec())))
                        .await;
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    tunnel::queue_last(&up_out, &up_progress, Frame::close(1000, b"")).await;
                    return;
                }
                OpCode::Text => {
                    tunnel::queue_last(
                        &up_out,
                        &up_progress,
                        Frame::close(1003, b"binary messages only"),
                    )
                    .await;
                    return;
                }
            }
        }
    });
    let closed = closed_signal(session.closed());
    let downstream = async {
        tokio::pin!(closed);
        let mut tick = tokio::time::interval(idle_ping.min(idle_timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A datagram the writer's queue had no room for (counted already):
        // until it is queued nothing more is received (the socket's own
        // buffer holds what comes, and drops past it, as before), while
        // the close signal and the idle timer are still watched. Waiting
        // on the queue instead stopped both for as long as the client did
        // not read.
        let mut pending: Option<Frame<'static>> = None;
        loop {
            tokio::select! {
                permit = out.reserve(), if pending.is_some() => {
                    let Ok(permit) = permit else {
                        return;
                    };
                    if let Some(frame) = pending.take() {
                        permit.send(frame);
                        activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                },
                // A buffer only once a datagram waits: idle tunnels hold
                // none, and the buffer received into is the frame sent.
                r = socket.readable(), if pending.is_none() => {
                    if r.is_err() {
                        return;
                    }
                    let mut buf = Vec::with_capacity(RECV_MAX);
                    // An error is a spurious wake-up, or an ICMP error from
                    // the node (its next datagram may still come).
                    if let Ok(n) = socket.try_recv_buf(&mut buf) {
                        // Nothing past the grant: the datagram is dropped.
                        if !gw.room(&guard.session_id, &session).await
                            || !gw.take_whole(&guard.session_id, &session, &session.down, n as u64).await
                        {
                            continue;
                        }
                        // Shrinking in place keeps what was received.
                        buf.shrink_to_fit();
                        match out.try_send(Frame::binary(Payload::Owned(buf))) {
                            Ok(()) => {
                                activity.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                            }
                            Err(TrySendError::Full(frame)) => pending = Some(frame),
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
                },
                _ = tick.tick() => {
                    let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                    let silent = born.elapsed().saturating_sub(last);
                    if silent >= idle_timeout {
                        tunnel::queue_last(&out, &progress, Frame::close(1000, b"idle")).await;
                        return;
                    }
                    if silent >= idle_ping {
                        let ping = Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new()));
                        if let Err(TrySendError::Closed(_)) = out.try_send(ping) {
                            return;
                        }
                    }
                }
                (code, reason) = &mut closed => {
                    tunnel::queue_last(&out, &progress, Frame::close(code, reason)).await;
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = downstream => upstream.abort(),
        _ = &mut upstream => {}
    }
    drop(out);
    // No datagram moves any more: the tunnel's places go back now, while
    // what was queued goes out to the client, as long as the client goes
    // without a frame before it is pinged (30 s by default: a 64 KiB
    // frame at 2 KB/s).
    guard.release_places();
    let _ = tunnel::finish_writer(writer, idle_ping).await;
    drop(guard);
}
