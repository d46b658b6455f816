//! With `--mux`, each warm connection runs on a thread of its own (a
//! lane: a single-threaded runtime), and so does every tunnel carried by
//! it: the tunnel's copy, its stream and the connection's task hand work
//! to each other on one thread, with no cross-thread wake-up between them.
//!
//! On the shared multi-threaded runtime a tunnel's every write woke the
//! connection's task, which the scheduler often ran on the other worker:
//! one bulk upload through our client cost about 92,000 context switches
//! per GB against 14,000 for a WebSocket connection per tunnel, and half
//! again as much CPU per byte (BENCHMARKS.md). With a lane per connection
//! the connections still run on as many cores as there are lanes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// One lane: the handle of its runtime, what keeps its thread alive, and
/// how many tunnels it carries.
pub(super) struct Lane {
    handle: Handle,
    tunnels: Arc<AtomicUsize>,
    /// Dropped with the lane: its thread then ends, and with it the
    /// runtime and whatever still runs there.
    _stop: oneshot::Sender<()>,
}

impl Lane {
    /// Starts lane `i`'s thread.
    pub(super) fn start(i: usize) -> std::io::Result<Self> {
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let runtime = LaneRuntime(Some(rt));
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("mux-lane-{i}"))
            .spawn(move || {
                if let Some(rt) = &runtime.0 {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
            })?;
        Ok(Lane {
            handle,
            tunnels: Arc::new(AtomicUsize::new(0)),
            _stop: stop,
        })
    }

    /// The tunnels the lane carries.
    pub(super) fn load(&self) -> usize {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Counts one more tunnel on the lane until the count is dropped,
    /// unless it carries `limit` already.
    pub(super) fn try_hold(&self, limit: usize) -> Option<TunnelCount> {
        self.tunnels
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(TunnelCount(self.tunnels.clone()))
    }

    /// Runs `fut` on the lane and waits for its output (`None` if the
    /// lane ended before it did).
    pub(super) async fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.ok()
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

/// One tunnel in its lane's count, for as long as it lives.
pub(super) struct TunnelCount(Arc<AtomicUsize>);

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tunnel_counts_while_it_lives_and_a_full_lane_takes_none() {
        let lane = Lane::start(0).expect("lane");
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
        let lane = Lane::start(7).expect("lane");
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
        let handle = lane.handle.clone();
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
