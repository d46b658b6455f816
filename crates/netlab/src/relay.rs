//! A TCP relay from inside a host to a service outside the lab: the one
//! deliberate hole in a lab's isolation, for services a test does not want
//! to start inside a namespace (the machine's PostgreSQL, say, reachable
//! from a control-plane host as if it ran there).

use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;

/// A relay as [`crate::Lab::describe`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayInfo {
    /// The host it listens on.
    pub host: String,
    /// The address it listens on, inside that host.
    pub listen: SocketAddr,
    /// Where it relays to, outside the lab.
    pub target: SocketAddr,
}

/// A running relay; dropping it stops accepting (open connections run
/// until either side closes).
#[derive(Debug)]
pub(crate) struct Relay {
    /// Where it listens, and where it relays to (for the lab's description).
    pub(crate) info: RelayInfo,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays every connection accepted on `listener` (already bound where
    /// clients are) to `target`, dialled from the namespace of the calling
    /// thread.
    pub(crate) fn start(
        host: &str,
        listener: TcpListener,
        target: SocketAddr,
    ) -> io::Result<Relay> {
        let info = RelayInfo {
            host: host.to_owned(),
            listen: listener.local_addr()?,
            target,
        };
        // Non-blocking accept, polled: the loop must notice `stop`, and a
        // listener in another namespace cannot be woken by connecting to
        // it from here.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let accept = thread::Builder::new()
            .name("netlab-relay".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((inbound, _)) => {
                            let _ = thread::Builder::new()
                                .name("netlab-relay-conn".to_owned())
                                .spawn(move || pipe(inbound, target));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "netlab.relay.accept_failed");
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(Relay {
            info,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways until each side has finished sending, passing each
/// half-close on.
fn pipe(inbound: TcpStream, target: SocketAddr) {
    let Ok(()) = inbound.set_nonblocking(false) else {
        return;
    };
    let Ok(outbound) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(mut in_r), Ok(mut out_w)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    let upstream = thread::spawn(move || {
        let _ = io::copy(&mut in_r, &mut out_w);
        let _ = out_w.shutdown(Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outbound, inbound);
    let _ = io::copy(&mut out_r, &mut in_w);
    let _ = in_w.shutdown(Shutdown::Write);
    let _ = upstream.join();
}
