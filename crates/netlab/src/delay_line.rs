//! The delay line: two namespaces joined through a TUN device in each, with
//! a thread per direction that reads every packet one side sends, asks the
//! [`Shaper`] what becomes of it, holds it until it is due and writes it
//! into the other side. Handshakes, ACKs and everything else go the same
//! way, so a TCP connect across a 25 ms line takes one 50 ms round trip.
//!
//! Why it is fast enough: each wake-up reads up to `BATCH` (64) packets before
//! it sleeps again, the held packets sit in one FIFO (constant delay keeps
//! it sorted, so there is no timer heap to maintain), the thread sleeps in
//! one `ppoll` until the oldest held packet is due or a packet arrives, and
//! one wake-up writes out everything that has come due. Packet buffers are
//! recycled, so the steady state allocates nothing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::time::TimeSpec;
use serde::Serialize;

use crate::cmd;
use crate::error::{Error, Result};
use crate::netns;
use crate::shaper::{LineParams, Shaper, Verdict};
use crate::sys;

/// Packets read per wake-up before held packets are looked at again: large
/// enough to amortise the wake-up, small enough that a burst does not delay
/// the packets that are due.
const BATCH: usize = 64;
/// A packet due within this much of now goes out with the current batch
/// rather than costing a wake-up of its own.
const EARLY: Duration = Duration::from_micros(50);
/// Bytes held per direction before new packets are dropped: a guard
/// against a runaway sender filling memory on a long delay.
const MAX_HELD_BYTES: usize = 256 << 20;
/// Largest read from a TUN device: a 64 KiB GSO unit plus its header.
const MAX_PACKET: usize = 65_536 + sys::VNET_HDR_LEN;
/// Packets up to this size are copied into a small buffer so that a line
/// full of ACKs does not pin 64 KiB per ACK.
const SMALL: usize = 2048;
/// Buffers kept for reuse per size class.
const POOL_MAX: usize = 4096;

/// One side of a delay line: which namespace, the TUN device's name there
/// and its address.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    /// The namespace the TUN device is created in.
    pub netns: &'a str,
    /// The device's name (at most 15 bytes).
    pub ifname: &'a str,
    /// The address this side gets; the other side's is its peer.
    pub addr: Ipv4Addr,
}

/// Counters of one direction. With offload, "packets" are GSO units of up
/// to 64 KiB, not wire segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionCounts {
    /// Packets read from the sending side.
    pub received: u64,
    /// Packets written into the receiving side.
    pub delivered: u64,
    /// IP bytes written into the receiving side.
    pub bytes: u64,
    /// Dropped by the random loss.
    pub lost: u64,
    /// Dropped because the rate limiter's buffer (or the memory guard) was
    /// full.
    pub overflow: u64,
    /// Dropped because the line was cut.
    pub cut: u64,
    /// Failed reads or writes.
    pub errors: u64,
    /// Sum over delivered packets of how late each was written (after its
    /// due time), in µs: divided by `delivered`, the mean error the line
    /// added to the delay. Grows when the line's thread gets the CPU late.
    pub late_us_total: u64,
    /// The latest any packet was written after its due time, in µs.
    pub late_us_max: u64,
    /// Dropped by the kernel before the line read them, because the
    /// sending side's TUN queue was full: the line's thread fell behind,
    /// so the line itself was the bottleneck. Read from the device's
    /// statistics when the counters are taken.
    pub queue_dropped: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    /// From the first end to the second.
    pub a_to_b: DirectionCounts,
    /// From the second end to the first.
    pub b_to_a: DirectionCounts,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
    cut: AtomicU64,
    errors: AtomicU64,
    late_us_total: AtomicU64,
    late_us_max: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectionCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionCounts {
            received: get(&self.received),
            delivered: get(&self.delivered),
            bytes: get(&self.bytes),
            lost: get(&self.lost),
            overflow: get(&self.overflow),
            cut: get(&self.cut),
            errors: get(&self.errors),
            late_us_total: get(&self.late_us_total),
            late_us_max: get(&self.late_us_max),
            queue_dropped: 0,
        }
    }
}

/// A running delay line. Dropping it stops the threads and closes the TUN
/// devices, which removes them.
#[derive(Debug)]
pub struct DelayLine {
    params: LineParams,
    /// Namespace and device name of each end, for the kernel's counters.
    ends: [(String, String); 2],
    counters: [Arc<Counters>; 2],
    cut: Arc<AtomicBool>,
    /// Cleared to stop the threads; a thread busy with a steady stream of
    /// packets sees it without sleeping first.
    running: Arc<AtomicBool>,
    /// Closing it wakes sleeping threads (POLLHUP on the read end).
    stop: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

impl DelayLine {
    /// Creates the TUN devices in both namespaces, gives them `a.addr` and
    /// `b.addr` as point-to-point peers (so each side reaches the other's
    /// address only through the line) and starts forwarding.
    pub fn start(name: &str, a: End<'_>, b: End<'_>, params: LineParams) -> Result<DelayLine> {
        params.validate().map_err(Error::Spec)?;
        let tun_a = Arc::new(open_end(a, b.addr, params.offload)?);
        let tun_b = Arc::new(open_end(b, a.addr, params.offload)?);
        let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("creating the delay line's stop pipe", e.into()))?;
        let stop_rx = Arc::new(stop_rx);
        let cut = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        // Built before the threads start, so that a failure to start the
        // second one stops the first (through Drop).
        let mut line = DelayLine {
            params,
            ends: [
                (a.netns.to_owned(), a.ifname.to_owned()),
                (b.netns.to_owned(), b.ifname.to_owned()),
            ],
            counters,
            cut,
            running,
            stop: Some(stop_tx),
            threads: Vec::new(),
        };
        for (dir, (rx, tx)) in [(&tun_a, &tun_b), (&tun_b, &tun_a)].into_iter().enumerate() {
            let mut fwd = Forwarder {
                rx: Arc::clone(rx),
                tx: Arc::clone(tx),
                stop: Arc::clone(&stop_rx),
                cut: Arc::clone(&line.cut),
                running: Arc::clone(&line.running),
                counters: Arc::clone(&line.counters[dir]),
                shaper: Shaper::new(params, dir as u64),
                realtime: params.realtime,
                header: if params.offload { sys::VNET_HDR_LEN } else { 0 },
                held: VecDeque::new(),
                held_bytes: 0,
                small: Vec::new(),
                large: Vec::new(),
                scratch: vec![0; MAX_PACKET].into_boxed_slice(),
            };
            let label = format!("{name}-{}", ["ab", "ba"][dir]);
            let handle = std::thread::Builder::new()
                .name(label.clone())
                .spawn(move || fwd.run(&label))
                .map_err(|e| Error::io("starting a delay line thread", e))?;
            line.threads.push(handle);
        }
        Ok(line)
    }

    /// The parameters it runs with.
    pub fn params(&self) -> LineParams {
        self.params
    }

    /// The counters so far. `queue_dropped` costs an `ip` process per
    /// end; it reads 0 if that fails (and the failure is logged).
    pub fn counts(&self) -> LineCounts {
        let mut counts = LineCounts {
            a_to_b: self.counters[0].snapshot(),
            b_to_a: self.counters[1].snapshot(),
        };
        for (dir, (ns, ifname)) in [&mut counts.a_to_b, &mut counts.b_to_a]
            .into_iter()
            .zip(&self.ends)
        {
            match tx_dropped(ns, ifname) {
                Ok(n) => dir.queue_dropped = n,
                Err(e) => tracing::warn!(netns = %ns, error = %e, "netlab.delay_line.stats_failed"),
            }
        }
        counts
    }

    /// Cuts the line (every packet is dropped, silently, as by a dead link)
    /// or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The kernel's count of packets dropped on their way out through TUN
/// device `ifname` in `ns` (its queue to our reader was full).
fn tx_dropped(ns: &str, ifname: &str) -> Result<u64> {
    let out = cmd::ip(&["-n", ns, "-j", "-s", "link", "show", "dev", ifname])?;
    let json: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| Error::io("parsing `ip -j -s link`", e.into()))?;
    Ok(json[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0))
}

/// Creates and configures one side's TUN device.
fn open_end(end: End<'_>, peer: Ipv4Addr, offload: bool) -> Result<File> {
    let file = netns::run_in(end.netns, || sys::create_tun(end.ifname, offload))?.map_err(|e| {
        Error::io(
            format!("creating TUN device {} in {}", end.ifname, end.netns),
            e,
        )
    })?;
    // The queue between the sender's stack and our reader. TUN devices
    // free a packet's socket memory as soon as it is queued, so a sender
    // is not held back by TCP small queues and hands over a whole window
    // at once: 4 MiB, ~2,900 packets, per stream with the default
    // tcp_wmem. 1,000 packets dropped such bursts (retransmits at
    // 400 Mbit/s that the line carries on average); 10,000 hold a few
    // streams' windows. A line that cannot keep up still shows, as
    // `queue_dropped`, once the queue is full.
    cmd::ip_batch(
        Some(end.netns),
        &[
            format!("addr add {}/32 peer {peer}/32 dev {}", end.addr, end.ifname),
            format!("link set dev {} mtu 1500 txqueuelen 10000 up", end.ifname),
        ],
    )?;
    Ok(file)
}

/// A packet held until it is due.
struct Held {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

/// One direction's state, owned by its thread.
struct Forwarder {
    rx: Arc<File>,
    tx: Arc<File>,
    stop: Arc<OwnedFd>,
    cut: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    counters: Arc<Counters>,
    shaper: Shaper,
    realtime: bool,
    /// Bytes of `virtio_net_hdr` in front of each packet (offload only).
    header: usize,
    held: VecDeque<Held>,
    held_bytes: usize,
    small: Vec<Box<[u8]>>,
    large: Vec<Box<[u8]>>,
    scratch: Box<[u8]>,
}

impl Forwarder {
    fn run(&mut self, label: &str) {
        // Timers fire up to the thread's slack (50 µs by default) late;
        // a tighter slack keeps the added delay's jitter down.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        // The kernel's netem works in softirq context, ahead of every
        // process. The user-space equivalent is the real-time class: with
        // the programs under test busy on the same two cores (and nice
        // values meaning little across the scheduler's autogroups), an
        // ordinary thread was measured waking up to 56 ms late. The
        // threads sleep between packets, and the kernel's RT throttling
        // (95 % of a core) bounds the worst case of a saturated line.
        // Needs root, like the rest of the lab; without it the line works
        // with ordinary timing.
        if self.realtime
            && let Err(e) = sys::set_thread_fifo(10)
        {
            tracing::warn!(line = label, error = %e, "netlab.delay_line.realtime_refused");
        }
        let mut drained = false;
        while self.running.load(Ordering::Relaxed) {
            self.flush(Instant::now());
            if !drained {
                match self.read_batch() {
                    Ok(d) => drained = d,
                    Err(e) => {
                        tracing::warn!(line = label, error = %e, "netlab.delay_line.read_failed");
                        return;
                    }
                }
                continue;
            }
            let timeout = self
                .held
                .front()
                .map(|h| TimeSpec::from_duration(h.due.saturating_duration_since(Instant::now())));
            let mut fds = [
                PollFd::new(self.rx.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match ppoll(&mut fds, timeout, None) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(line = label, error = %e, "netlab.delay_line.poll_failed");
                    return;
                }
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                drained = false;
            }
        }
    }

    /// Reads up to [`BATCH`] packets; `Ok(true)` once the device is empty.
    fn read_batch(&mut self) -> std::io::Result<bool> {
        for _ in 0..BATCH {
            let n = match (&*self.rx).read(&mut self.scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    Counters::add(&self.counters.errors, 1);
                    return Err(e);
                }
            };
            let now = Instant::now();
            Counters::add(&self.counters.received, 1);
            if self.cut.load(Ordering::Relaxed) {
                Counters::add(&self.counters.cut, 1);
                continue;
            }
            if self.held_bytes + n > MAX_HELD_BYTES {
                Counters::add(&self.counters.overflow, 1);
                continue;
            }
            let due = match self.shaper.offer(now, n.saturating_sub(self.header)) {
                Verdict::Deliver(due) => due,
                Verdict::Lost => {
                    Counters::add(&self.counters.lost, 1);
                    continue;
                }
                Verdict::Overflow => {
                    Counters::add(&self.counters.overflow, 1);
                    continue;
                }
            };
            let buf = self.take_buffer(n);
            self.held_bytes += n;
            self.held.push_back(Held { due, len: n, buf });
        }
        Ok(false)
    }

    /// Moves the packet in `scratch` into a buffer of its own: small ones
    /// are copied, large ones swap places with a spare 64 KiB buffer.
    fn take_buffer(&mut self, n: usize) -> Box<[u8]> {
        if n <= SMALL {
            let mut buf = self
                .small
                .pop()
                .unwrap_or_else(|| vec![0; SMALL].into_boxed_slice());
            buf[..n].copy_from_slice(&self.scratch[..n]);
            buf
        } else {
            let spare = self
                .large
                .pop()
                .unwrap_or_else(|| vec![0; MAX_PACKET].into_boxed_slice());
            std::mem::replace(&mut self.scratch, spare)
        }
    }

    /// Writes out every held packet due by `now` (or within [`EARLY`] of
    /// it), noting how late each one is.
    fn flush(&mut self, now: Instant) {
        let until = now + EARLY;
        let mut late_max = Duration::ZERO;
        let mut late_total = Duration::ZERO;
        while self.held.front().is_some_and(|h| h.due <= until) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= h.len;
            let late = now.saturating_duration_since(h.due);
            late_max = late_max.max(late);
            late_total += late;
            match (&*self.tx).write(&h.buf[..h.len]) {
                Ok(_) => {
                    Counters::add(&self.counters.delivered, 1);
                    Counters::add(
                        &self.counters.bytes,
                        h.len.saturating_sub(self.header) as u64,
                    );
                }
                Err(_) => Counters::add(&self.counters.errors, 1),
            }
            let pool = if h.buf.len() == SMALL {
                &mut self.small
            } else {
                &mut self.large
            };
            if pool.len() < POOL_MAX {
                pool.push(h.buf);
            }
        }
        if late_total > Duration::ZERO {
            Counters::add(&self.counters.late_us_total, late_total.as_micros() as u64);
            self.counters
                .late_us_max
                .fetch_max(late_max.as_micros() as u64, Ordering::Relaxed);
        }
    }
}
