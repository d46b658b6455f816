//! Lanes: threads each running a single-threaded runtime, so that work
//! which hands data back and forth (a connection's task and the tasks of
//! the tunnels it carries) does it on one thread, with no cross-thread
//! wake-up between them. Our client runs each warm `--mux` connection and
//! its tunnels on a lane; the gateway moves each HTTP/2 connection, once
//! its TLS handshake is done, to the least loaded one, with the tunnels it
//! carries and their node sockets ([`MovableTcp`] moves the socket).
//!
//! On a shared multi-threaded runtime a tunnel's every write woke the
//! connection's task, which the scheduler often ran on the other worker:
//! one bulk upload through our client cost about 92,000 context switches
//! per GB against 14,000 for a WebSocket connection per tunnel, and half
//! again as much CPU per byte (BENCHMARKS.md). With a lane per connection
//! the connections still run on as many cores as there are lanes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::readahead::ReadReady;

/// One lane: the way onto it and what keeps its thread alive.
pub(crate) struct Lane {
    way: Way,
    /// Dropped with the lane: its thread then ends, and with it the
    /// runtime and whatever still runs there.
    _stop: oneshot::Sender<()>,
}

/// The way onto a lane: its runtime and its load (the tunnels or
/// connections it carries), without keeping its thread alive; cheap to
/// clone. Once the lane is gone, what is spawned on it is dropped unrun.
#[derive(Clone)]
pub(crate) struct Way {
    handle: Handle,
    load: Arc<AtomicUsize>,
}

impl Lane {
    /// Starts a lane on a thread named `name`.
    pub(crate) fn start(name: String) -> std::io::Result<Self> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let runtime = LaneRuntime(Some(rt));
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new().name(name).spawn(move || {
            if let Some(rt) = &runtime.0 {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            }
        })?;
        Ok(Lane {
            way: Way {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
            },
            _stop: stop,
        })
    }

    /// The way onto the lane.
    pub(crate) fn way(&self) -> Way {
        self.way.clone()
    }

    /// What the lane carries.
    pub(crate) fn load(&self) -> usize {
        self.way.load()
    }

    /// See [`Way::try_hold`].
    pub(crate) fn try_hold(&self, limit: usize) -> Option<Held> {
        self.way.try_hold(limit)
    }

    /// See [`Way::spawn`].
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.way.spawn(fut);
    }

    /// Runs `fut` on the lane and waits for its output (`None` if the
    /// lane ended before it did).
    pub(crate) async fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.way.handle.spawn(fut).await.ok()
    }
}

impl Way {
    /// What the lane carries.
    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// The lane's runtime.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Counts one more on the lane until the count is dropped, unless it
    /// carries `limit` already.
    pub(crate) fn try_hold(&self, limit: usize) -> Option<Held> {
        self.load
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Held(self.load.clone()))
    }

    /// Runs `fut` on the lane without waiting for it: nothing on the
    /// caller's runtime is woken when it ends. If the lane has ended, `fut`
    /// is dropped unrun.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }
}

/// A TCP socket that can move to another runtime (a lane) between uses:
/// [`MovableTcp::detach`] takes it off the runtime it is on, and
/// [`MovableTcp::attach`], called on the new one, registers it there.
/// What wraps it (TLS, read-ahead) moves along with its state. Detached,
/// it refuses reads and writes.
pub(crate) struct MovableTcp(Place);

enum Place {
    On(TcpStream),
    Moving(std::net::TcpStream),
    Gone,
}

impl MovableTcp {
    /// `tcp`, on the runtime it is registered with.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        MovableTcp(Place::On(tcp))
    }

    /// Takes the socket off its runtime.
    pub(crate) fn detach(&mut self) -> io::Result<()> {
        self.0 = match std::mem::replace(&mut self.0, Place::Gone) {
            Place::On(tcp) => Place::Moving(tcp.into_std()?),
            other => other,
        };
        Ok(())
    }

    /// Registers the socket with the runtime this is called on.
    pub(crate) fn attach(&mut self) -> io::Result<()> {
        self.0 = match std::mem::replace(&mut self.0, Place::Gone) {
            Place::Moving(std) => Place::On(TcpStream::from_std(std)?),
            other => other,
        };
        Ok(())
    }

    fn on(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.0 {
            Place::On(tcp) => Ok(Pin::new(tcp)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the socket is moving between runtimes",
            )),
        }
    }
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().on()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().on()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().on()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().on()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().on()?.poll_shutdown(cx)
    }
}

impl ReadReady for MovableTcp {
    fn poll_ready_to_read(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        match &self.0 {
            Place::On(tcp) => tcp.poll_ready_to_read(cx),
            _ => Some(Poll::Ready(Ok(()))),
        }
    }
}

/// A lane's runtime, shut down without waiting when dropped: a thread
/// that cannot be started drops it where it was built, on an async
/// caller's thread, where a plain drop would panic.
struct LaneRuntime(Option<tokio::runtime::Runtime>);

impl Drop for LaneRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One tunnel or connection in its lane's load, for as long as it lives.
pub(crate) struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tunnel_counts_while_it_lives_and_a_full_lane_takes_none() {
        let lane = Lane::start("lane-0".into()).expect("lane");
        let a = lane.try_hold(2).expect("room");
        let b = lane.try_hold(2).expect("room");
        assert_eq!(lane.load(), 2);
        assert!(lane.try_hold(2).is_none(), "full");
        assert_eq!(lane.load(), 2, "a refusal counts nothing");
        drop(a);
        assert_eq!(lane.load(), 1);
        let c = lane.try_hold(2).expect("room again");
        drop((b, c));
        assert_eq!(lane.load(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_socket_moved_to_a_lane_keeps_what_was_read_ahead_and_works_there() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut s = crate::readahead::ReadAhead::new(MovableTcp::new(server));
        client.write_all(b"abcdef").await.expect("write");
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.expect("read");
        assert_eq!(&two, b"ab");
        s.get_mut().detach().expect("detach");
        assert!(s.write_all(b"x").await.is_err(), "no writes while moving");
        let lane = Lane::start("lane-moved-to".into()).expect("lane");
        let moved = lane.run(async move {
            s.get_mut().attach().ok()?;
            let mut rest = [0u8; 4];
            s.read_exact(&mut rest).await.ok()?;
            s.write_all(b"back").await.ok()?;
            let mut more = [0u8; 4];
            s.read_exact(&mut more).await.ok()?;
            Some((rest, more, std::thread::current().name().map(str::to_owned)))
        });
        let talk = async {
            let mut back = [0u8; 4];
            client.read_exact(&mut back).await.expect("read back");
            client.write_all(b"more").await.expect("write more");
            back
        };
        let (moved, back) = tokio::join!(moved, talk);
        let (rest, more, thread) = moved.flatten().expect("served on the lane");
        assert_eq!(&rest, b"cdef", "what was read ahead before the move");
        assert_eq!(&more, b"more", "read on the lane's driver");
        assert_eq!(&back, b"back", "written from the lane");
        assert_eq!(thread.as_deref(), Some("lane-moved-to"));
    }

    #[tokio::test]
    async fn a_lane_runtime_dropped_on_an_async_thread_shuts_down_quietly() {
        // What a lane whose thread cannot be started does (a plain drop of
        // a runtime here panics).
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = rt.handle().clone();
        rt.spawn(std::future::pending::<()>());
        drop(LaneRuntime(Some(rt)));
        assert!(handle.spawn(async {}).await.is_err(), "shut down");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_on_the_lane_thread_and_a_dropped_lane_ends_it() {
        let lane = Lane::start("mux-lane-7".into()).expect("lane");
        let name = lane
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await
            .expect("ran");
        assert_eq!(name.as_deref(), Some("mux-lane-7"));
        // A socket made on the lane is served by the lane's own driver.
        let echoed = lane
            .run(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
                let addr = l.local_addr().ok()?;
                let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
                let (mut s, _) = l.accept().await.ok()?;
                c.write_all(b"ping").await.ok()?;
                let mut got = [0u8; 4];
                s.read_exact(&mut got).await.ok()?;
                Some(got)
            })
            .await
            .flatten();
        assert_eq!(echoed, Some(*b"ping"));
        let handle = lane.way().handle().clone();
        drop(lane);
        // The lane's runtime shuts down: what is spawned there is dropped.
        let mut gone = false;
        for _ in 0..200 {
            if handle.spawn(async {}).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(gone, "the lane's runtime ended");
    }
}
