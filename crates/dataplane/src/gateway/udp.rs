//! The UDP pipe: exactly one Shadowsocks UDP packet per binary message
//! each way, over one UDP socket to the node per WebSocket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::net::UdpSocket;

use super::tunnel::{self, TunnelGuard, closed_signal};

/// A UDP tunnel with nothing from the node for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(120);

/// Largest datagram.
const DATAGRAM_MAX: usize = 65_536;

/// Pipes one UDP tunnel until either side ends it.
pub(crate) async fn pipe(fut: UpgradeFut, socket: UdpSocket, guard: TunnelGuard) {
    let gw = guard.gw.clone();
    let Some((mut rx, out, writer)) = tunnel::open(fut, gw.opts.max_frame, 32).await else {
        return;
    };
    let socket = Arc::new(socket);
    let session = guard.session.clone();
    let (up_sock, up_out, up_session) = (socket.clone(), out.clone(), session.clone());
    let mut upstream = tokio::spawn(async move {
        loop {
            let Ok(frame) = rx
                .read_frame::<_, WebSocketError>(&mut |_| async { Ok(()) })
                .await
            else {
                return;
            };
            match frame.opcode {
                OpCode::Binary => {
                    if up_sock.send(&frame.payload).await.is_ok() {
                        up_session
                            .up
                            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
                    }
                }
                OpCode::Ping => {
                    let _ = up_out
                        .send(Frame::pong(Payload::Owned(frame.payload.to_vec())))
                        .await;
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let _ = up_out.send(Frame::close(1000, b"")).await;
                    return;
                }
                OpCode::Text | OpCode::Continuation => {
                    let _ = up_out
                        .send(Frame::close(1003, b"one binary message per packet"))
                        .await;
                    return;
                }
            }
        }
    });
    let closed = closed_signal(session.closed());
    let downstream = async {
        tokio::pin!(closed);
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            tokio::select! {
                r = tokio::time::timeout(UDP_IDLE, socket.recv(&mut buf)) => match r {
                    Ok(Ok(n)) => {
                        if out.send(Frame::binary(Payload::Owned(buf[..n].to_vec()))).await.is_err() {
                            return;
                        }
                        session.down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        let _ = out.send(Frame::close(1000, b"idle")).await;
                        return;
                    }
                },
                (code, reason) = &mut closed => {
                    let _ = out.send(Frame::close(code, reason)).await;
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
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(guard);
}
