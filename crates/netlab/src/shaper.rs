//! What a link does to each packet, decided without any I/O: the delay
//! line's forwarding threads ask [`Shaper::offer`] with the time of
//! arrival and get back when to deliver the packet, or that it is lost.
//! Time is an argument, so the rules are tested here without sleeping.
//!
//! The model is a FIFO wire: an optional rate limiter with a drop-tail
//! buffer, then random loss, then a constant one-way delay. Delivery times
//! never decrease, so packets are never reordered and a plain queue in
//! arrival order is already sorted by due time.

use std::time::{Duration, Instant};

/// How one direction of a delay line treats packets (both directions use
/// the same parameters; each has its own random stream).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineParams {
    /// One-way delay every packet is held for.
    pub delay: Duration,
    /// Share of packets dropped at random, in `0.0..=1.0`.
    pub loss: f64,
    /// Rate limit in bits per second; `None` for as fast as it goes.
    pub rate_bps: Option<u64>,
    /// With a rate limit: the longest a packet may wait for its turn on the
    /// wire before it is dropped instead (a router's buffer, in time).
    pub buffer: Duration,
    /// Seed of the loss decisions, so a run can be repeated exactly.
    pub seed: u64,
    /// Carry TCP segments of up to 64 KiB through the line as one unit
    /// (GSO on the TUN devices). Much faster; refused with loss, because
    /// one lost unit would be a burst of up to 44 lost segments.
    pub offload: bool,
    /// Run the line's threads in the real-time class (see the crate's
    /// README): accurate delays beside busy programs. Turn it off if a
    /// saturated line must not hold a core ahead of everything else.
    pub realtime: bool,
}

impl Default for LineParams {
    fn default() -> Self {
        LineParams {
            delay: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            buffer: Duration::from_millis(100),
            seed: 1,
            offload: false,
            realtime: true,
        }
    }
}

impl LineParams {
    /// A line with this one-way delay and nothing else.
    pub fn with_delay(delay: Duration) -> Self {
        LineParams {
            delay,
            ..LineParams::default()
        }
    }

    /// Checks the values; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} is not within 0..=1", self.loss));
        }
        if self.delay > Duration::from_secs(10) {
            return Err(format!("delay {:?} is over 10 s", self.delay));
        }
        if self.rate_bps == Some(0) {
            return Err("rate 0 would carry nothing".to_owned());
        }
        if self.offload && self.loss > 0.0 {
            return Err(
                "offload cannot be combined with loss: one lost 64 KiB unit \
                        would be a burst of lost segments"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it at this time.
    Deliver(Instant),
    /// Dropped by the random loss.
    Lost,
    /// Dropped because the rate limiter's buffer is full.
    Overflow,
}

/// One direction of a link: turns arrivals into delivery times or drops.
#[derive(Debug)]
pub struct Shaper {
    params: LineParams,
    rng: SplitMix64,
    /// When the (rate-limited) wire is free for the next packet.
    wire_free_at: Option<Instant>,
}

impl Shaper {
    /// A shaper with `params`; `stream` tells the two directions' random
    /// sequences apart under one seed.
    pub fn new(params: LineParams, stream: u64) -> Self {
        Shaper {
            params,
            rng: SplitMix64::new(params.seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)),
            wire_free_at: None,
        }
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`.
    /// Calls must come with non-decreasing `now`.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        let mut sent_at = now;
        if let Some(rate) = self.params.rate_bps {
            let start = self.wire_free_at.map_or(now, |free| free.max(now));
            if start - now > self.params.buffer {
                return Verdict::Overflow;
            }
            let nanos = (len as u128 * 8 * 1_000_000_000) / u128::from(rate);
            sent_at = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            self.wire_free_at = Some(sent_at);
        }
        // Lost on the wire, after it took its time slot, as on a real link.
        if self.params.loss > 0.0 && self.rng.next_f64() < self.params.loss {
            return Verdict::Lost;
        }
        Verdict::Deliver(sent_at + self.params.delay)
    }
}

/// SplitMix64: tiny, fast, and good enough to decide packet loss; seeded,
/// so a benchmark's losses repeat from run to run.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_packet_is_held_for_the_delay() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LineParams::with_delay(ms(25)), 0);
        assert_eq!(s.offer(t0, 1500), Verdict::Deliver(t0 + ms(25)));
        assert_eq!(s.offer(t0 + ms(3), 60), Verdict::Deliver(t0 + ms(28)));
    }

    #[test]
    fn loss_matches_the_share_and_repeats_with_the_seed() {
        let params = LineParams {
            loss: 0.01,
            seed: 7,
            ..LineParams::default()
        };
        let run = || {
            let t0 = Instant::now();
            let mut s = Shaper::new(params, 1);
            (0..100_000)
                .map(|_| s.offer(t0, 100) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        let a = run();
        let lost = a.iter().filter(|l| **l).count();
        // 1000 expected, standard deviation ~31.
        assert!((850..=1150).contains(&lost), "lost {lost} of 100000");
        assert_eq!(a, run(), "same seed, same losses");
        let other = Shaper::new(params, 2).rng.next_u64();
        assert_ne!(other, Shaper::new(params, 1).rng.next_u64());
    }

    #[test]
    fn no_loss_loses_nothing_and_full_loss_everything() {
        let t0 = Instant::now();
        let mut none = Shaper::new(LineParams::default(), 0);
        let mut all = Shaper::new(
            LineParams {
                loss: 1.0,
                ..LineParams::default()
            },
            0,
        );
        for _ in 0..10_000 {
            assert!(matches!(none.offer(t0, 1), Verdict::Deliver(_)));
            assert_eq!(all.offer(t0, 1), Verdict::Lost);
        }
    }

    #[test]
    fn the_rate_limit_spaces_packets_and_drops_past_the_buffer() {
        let t0 = Instant::now();
        // 12 Mbit/s: a 1500-byte packet takes exactly 1 ms on the wire.
        let mut s = Shaper::new(
            LineParams {
                delay: ms(10),
                rate_bps: Some(12_000_000),
                buffer: ms(5),
                ..LineParams::default()
            },
            0,
        );
        let mut due = Vec::new();
        let mut overflow = 0;
        for _ in 0..10 {
            match s.offer(t0, 1500) {
                Verdict::Deliver(at) => due.push(at - t0),
                Verdict::Overflow => overflow += 1,
                Verdict::Lost => unreachable!("no loss configured"),
            }
        }
        // Six fit: they start at 0..=5 ms of queueing; the rest overflow.
        assert_eq!(due, (11..=16).map(ms).collect::<Vec<_>>());
        assert_eq!(overflow, 4);
        // Once the wire is idle again the queue is empty.
        assert_eq!(s.offer(t0 + ms(100), 1500), Verdict::Deliver(t0 + ms(111)));
    }

    #[test]
    fn delivery_times_never_go_backwards() {
        let t0 = Instant::now();
        let mut s = Shaper::new(
            LineParams {
                delay: ms(5),
                rate_bps: Some(1_000_000),
                buffer: ms(50),
                loss: 0.1,
                ..LineParams::default()
            },
            3,
        );
        let mut last = t0;
        for i in 0..5_000u64 {
            let now = t0 + Duration::from_micros(i * 37);
            if let Verdict::Deliver(at) = s.offer(now, (i % 1500) as usize + 40) {
                assert!(at >= last);
                last = at;
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad_loss = LineParams {
            loss: 1.5,
            ..LineParams::default()
        };
        assert!(bad_loss.validate().is_err());
        let lossy_offload = LineParams {
            loss: 0.01,
            offload: true,
            ..LineParams::default()
        };
        assert!(lossy_offload.validate().is_err());
        assert!(LineParams::with_delay(ms(25)).validate().is_ok());
    }
}
