//! What a client's HTTP/2 frames cost without carrying anything of a
//! tunnel's, bounded per connection. The HTTP/2 library answers every PING
//! and SETTINGS frame and files every PRIORITY frame, however many come: a
//! client that sends them as fast as it can (and reads the answers) kept
//! a gateway thread busy and slowed every other tunnel of the gateway's
//! HTTP/2 connections twentyfold, with no token and no stream (the
//! "ping flood" and "settings flood" of CVE-2019-9512 and CVE-2019-9515;
//! empty DATA frames, CVE-2019-9518, are the same kind). The library
//! bounds resets and header blocks itself, not these.
//!
//! [`Budget`] reads the frame headers of what the client sends (after its
//! preface), skipping payloads unread, and charges each such frame to a
//! bucket of [`BURST`] that refills at [`PER_SEC`] a second: far more
//! than any client needs (ours sends one SETTINGS frame and a ping every
//! few seconds; browsers a handful at the start), far less than a flood.
//! A connection past it is ended.

use std::time::Instant;

/// Frames that carry nothing a client may send at once.
pub(super) const BURST: f64 = 1_000.0;

/// And then a second, on average.
pub(super) const PER_SEC: f64 = 100.0;

/// Length of a frame header (RFC 9113, 4.1).
const HEADER: usize = 9;

/// A connection's frame reader and bucket.
pub(super) struct Budget {
    header: [u8; HEADER],
    /// How much of the next header has arrived.
    have: usize,
    /// What is left of the current frame's payload.
    skip: usize,
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full bucket at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Budget {
            header: [0; HEADER],
            have: 0,
            skip: 0,
            tokens: BURST,
            at: now,
        }
    }

    /// Reads `bytes`, the next of the client's frames (the preface left
    /// out); `false` once the frames that carry nothing are over budget.
    /// `now` is asked only for a frame that is charged.
    pub(super) fn feed(&mut self, mut bytes: &[u8], now: impl Fn() -> Instant) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER {
                break;
            }
            self.have = 0;
            let h = self.header;
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            self.skip = len;
            if carries_nothing(h[3], h[4], len) && !self.charge(now()) {
                return false;
            }
        }
        true
    }

    /// Takes one frame's token; `false` when none is left.
    fn charge(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * PER_SEC;
        self.tokens = (self.tokens + earned).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Whether a frame of `kind` with `flags` and a payload of `len` bytes
/// carries nothing of a stream's: a PING or SETTINGS frame that is not an
/// acknowledgement (each is answered), a PRIORITY frame, an empty DATA
/// frame that does not end its stream.
fn carries_nothing(kind: u8, flags: u8, len: usize) -> bool {
    const DATA: u8 = 0x0;
    const PRIORITY: u8 = 0x2;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    // ACK for PING and SETTINGS, END_STREAM for DATA: the same bit.
    let first_flag = flags & 0x1 != 0;
    match kind {
        PING | SETTINGS => !first_flag,
        PRIORITY => true,
        DATA => len == 0 && !first_flag,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_ping_flood_is_cut_and_data_never_is() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        // Data frames, whatever they hold (a ping's bytes inside included),
        // and acknowledgements cost nothing, however many.
        let inside = frame(0x6, 0, &[0; 8]);
        let data = frame(0x0, 0, &inside);
        for _ in 0..10_000 {
            assert!(b.feed(&data, || t0));
            assert!(b.feed(&frame(0x6, 0x1, &[0; 8]), || t0));
            assert!(b.feed(&frame(0x4, 0x1, &[]), || t0));
            assert!(
                b.feed(&frame(0x0, 0x1, &[]), || t0),
                "an empty end of stream"
            );
        }
        // A burst of pings passes, the next one is refused.
        let ping = frame(0x6, 0, &[0; 8]);
        let burst = BURST as usize;
        let flood: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * burst)
            .collect();
        assert!(b.feed(&flood, || t0));
        assert!(!b.feed(&ping, || t0), "past the burst");
        // A second later the bucket has PER_SEC more.
        let mut b = Budget::new(t0);
        assert!(b.feed(&flood, || t0));
        let later = t0 + Duration::from_secs(1);
        for _ in 0..PER_SEC as usize {
            assert!(b.feed(&ping, || later));
        }
        assert!(!b.feed(&ping, || later));
    }

    #[test]
    fn frames_split_anywhere_are_read_alike() {
        let t0 = Instant::now();
        // DATA frames of 0 to 299 bytes (the empty ones charged) and
        // PRIORITY frames (each charged); `cut`: where the last frame the
        // bucket holds ends.
        let (mut whole, mut charged, mut cut) = (Vec::new(), 0, 0);
        for i in 0..(BURST as usize + 5) {
            for (f, costs) in [
                (frame(0x0, 0, &vec![7; i % 300]), i % 300 == 0),
                (frame(0x2, 0, &[0; 5]), true),
            ] {
                whole.extend(f);
                charged += usize::from(costs);
                if charged <= BURST as usize {
                    cut = whole.len();
                }
            }
        }
        for piece in [1, 2, 9, 10, 4096] {
            let mut b = Budget::new(t0);
            assert!(
                whole[..cut].chunks(piece).all(|c| b.feed(c, || t0)),
                "piece {piece}: refused within the burst"
            );
            assert!(
                !whole[cut..].chunks(piece).all(|c| b.feed(c, || t0)),
                "piece {piece}: not refused past the burst"
            );
        }
        // A settings frame with parameters, then its acknowledgement.
        let mut b = Budget::new(t0);
        let mut two = frame(0x4, 0, &[0, 3, 0, 0, 1, 0]);
        two.extend(frame(0x4, 1, &[]));
        for _ in 0..BURST as usize {
            assert!(b.feed(&two, || t0));
        }
        assert!(!b.feed(&two, || t0));
    }
}
