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
//! preface), skipping payloads unread, and charges each such frame (PING
//! acknowledgements and frames of unknown types included: neither was
//! asked for) to a bucket of [`BURST`] that refills at [`PER_SEC`] a
//! second: far more than any client needs (ours sends one SETTINGS frame
//! and a ping every few seconds; browsers a handful at the start), far
//! less than a flood. WINDOW_UPDATE and RST_STREAM frames, which honest
//! clients send with every tunnel, have a budget a hundred times larger
//! ([`CONTROL_BURST`], [`CONTROL_PER_SEC`]): floods of them on closed
//! streams slowed every tunnel of the gateway too; so do DATA frames of
//! fewer than 256 bytes ([`SMALL_BURST`], [`SMALL_PER_SEC`]). A
//! connection past any is ended.

use std::time::Instant;

/// Frames that carry nothing a client may send at once.
pub(super) const BURST: f64 = 1_000.0;

/// And then a second, on average.
pub(super) const PER_SEC: f64 = 100.0;

/// Flow-control and reset frames (WINDOW_UPDATE, RST_STREAM) a client may
/// send at once: honest ones come with what moves (a window given back
/// for what was read, a tunnel ended), a few per tunnel, so their budget
/// is a hundredfold.
pub(super) const CONTROL_BURST: f64 = 20_000.0;

/// And then a second, on average: several times what thousands of new
/// tunnels a second over one connection send.
pub(super) const CONTROL_PER_SEC: f64 = 10_000.0;

/// DATA frames of fewer than [`SMALL`] bytes a client may send at once:
/// each costs the HTTP/2 library a frame's work for next to no data (a
/// flood of 1-byte frames on a stream kept open slowed every tunnel of the
/// gateway 250-fold until the library's own bound, over a million frames).
pub(super) const SMALL_BURST: f64 = 20_000.0;

/// And then a second, on average: keystrokes, small requests and the
/// first bytes of thousands of tunnels a second fit many times over.
pub(super) const SMALL_PER_SEC: f64 = 10_000.0;

/// A DATA frame whose payload is shorter than this is small.
const SMALL: usize = 256;

/// Length of a frame header (RFC 9113, 4.1).
const HEADER: usize = 9;

/// A token bucket: `burst` at once, then `per_sec` a second.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
    burst: f64,
    per_sec: f64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub(super) fn new(burst: f64, per_sec: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
            burst,
            per_sec,
        }
    }

    /// Takes one token; `false` when none is left.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What a frame costs.
#[derive(Debug, PartialEq, Eq)]
enum Cost {
    /// Nothing of a stream's: the strict budget.
    Nothing,
    /// Flow control or a reset: the control budget.
    Control,
    /// A small DATA frame: the small budget.
    Small,
    /// Data, headers: free here (streams and header blocks are bounded by
    /// the HTTP/2 library, requests that fail by [`super::h2`]).
    Free,
}

/// A connection's frame reader and buckets.
pub(super) struct Budget {
    header: [u8; HEADER],
    /// How much of the next header has arrived.
    have: usize,
    /// What is left of the current frame's payload.
    skip: usize,
    nothing: Bucket,
    control: Bucket,
    small: Bucket,
}

impl Budget {
    /// Full buckets at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Budget {
            header: [0; HEADER],
            have: 0,
            skip: 0,
            nothing: Bucket::new(BURST, PER_SEC, now),
            control: Bucket::new(CONTROL_BURST, CONTROL_PER_SEC, now),
            small: Bucket::new(SMALL_BURST, SMALL_PER_SEC, now),
        }
    }

    /// Reads `bytes`, the next of the client's frames (the preface left
    /// out); `false` once a budget is spent. `now` is asked only for a
    /// frame that is charged.
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
            let paid = match cost(h[3], h[4], len) {
                Cost::Nothing => self.nothing.take(now()),
                Cost::Control => self.control.take(now()),
                Cost::Small => self.small.take(now()),
                Cost::Free => true,
            };
            if !paid {
                return false;
            }
        }
        true
    }
}

/// What a frame of `kind` with `flags` and a payload of `len` bytes costs:
/// a PING (asked or answered: the gateway's own pings are one per 20 s,
/// so answers beyond that were never asked for), a SETTINGS frame that is
/// not an acknowledgement (each is answered), a PRIORITY frame, an empty
/// DATA frame that does not end its stream, a frame of a type this
/// server does not know (each read and dropped) carry nothing; a
/// WINDOW_UPDATE or RST_STREAM frame is control; any other DATA frame of
/// fewer than [`SMALL`] bytes is small.
fn cost(kind: u8, flags: u8, len: usize) -> Cost {
    const DATA: u8 = 0x0;
    const PRIORITY: u8 = 0x2;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    /// The last type RFC 9113 defines (CONTINUATION).
    const KNOWN: u8 = 0x9;
    // ACK for SETTINGS, END_STREAM for DATA: the same bit.
    let first_flag = flags & 0x1 != 0;
    match kind {
        PING | PRIORITY => Cost::Nothing,
        SETTINGS if !first_flag => Cost::Nothing,
        DATA if len == 0 && !first_flag => Cost::Nothing,
        RST_STREAM | WINDOW_UPDATE => Cost::Control,
        DATA if len < SMALL => Cost::Small,
        k if k > KNOWN => Cost::Nothing,
        _ => Cost::Free,
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
        let mut inside = frame(0x6, 0, &[0; 8]);
        inside.resize(SMALL, 0);
        let data = frame(0x0, 0, &inside);
        for _ in 0..10_000 {
            assert!(b.feed(&data, || t0));
            assert!(b.feed(&frame(0x4, 0x1, &[]), || t0));
            assert!(b.feed(&frame(0x1, 0x4, &[0; 20]), || t0), "headers");
            assert!(
                b.feed(&frame(0x0, 0x1, &[]), || t0),
                "an empty end of stream"
            );
        }
        // Answers to pings never sent, and frames of unknown types, are
        // charged alike.
        for (kind, flags) in [(0x6, 0x1), (0x20, 0x0)] {
            let mut b = Budget::new(t0);
            let f = frame(kind, flags, &[0; 8]);
            assert!((0..BURST as usize).all(|_| b.feed(&f, || t0)));
            assert!(!b.feed(&f, || t0), "{kind:#x} past the burst");
        }
        // Small DATA frames have theirs.
        let mut b = Budget::new(t0);
        let tiny = frame(0x0, 0, &[7]);
        assert!((0..SMALL_BURST as usize).all(|_| b.feed(&tiny, || t0)));
        assert!(!b.feed(&tiny, || t0), "small data frames past their burst");
        // Window updates and resets have a budget of their own, larger.
        let mut b = Budget::new(t0);
        let w = frame(0x8, 0, &[0, 0, 0, 1]);
        assert!((0..CONTROL_BURST as usize).all(|_| b.feed(&w, || t0)));
        assert!(!b.feed(&w, || t0), "window updates past their burst");
        let mut b = Budget::new(t0);
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
