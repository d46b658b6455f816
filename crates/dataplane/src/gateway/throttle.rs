//! The throttle on guessing: per source (an IPv4 address, or an IPv6 /64,
//! the block one subscriber usually holds), device credentials the control
//! plane called unknown are counted against an allowance (GCRA,
//! `governor`). A source that goes past it is shut out for the window:
//! every request it makes, on any path, is answered 429 with
//! `Retry-After`, so even a valid token tells it nothing, and it costs no
//! control-plane call; only a credential the gateway admitted before
//! passes (`routes::shut_out`). Other sources are not affected.
//!
//! Memory is bounded: at most `max_sources` sources are tracked. When that
//! many are, sources back at a full allowance are dropped; if none is, a new
//! guesser is shut out at once (one with more addresses than that gains no
//! guesses from them). The shut-out list is a bounded cache too.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use httvps_wire::source::source_of;
use quick_cache::sync::Cache;

/// Shortest window honoured.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// How often, at most, a full table is searched for sources to drop.
const PRUNE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Guesses per source, and who is shut out until when.
pub(crate) struct Throttle<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    shut_out: Cache<IpAddr, C::Instant>,
    last_prune: Mutex<C::Instant>,
    clock: C,
    window: Duration,
    max_sources: usize,
}

impl Throttle {
    /// At most `per_window` unknown credentials per source and `window`
    /// (one more back every `window / per_window`), `max_sources` tracked.
    pub fn new(per_window: u32, window: Duration, max_sources: usize) -> Self {
        Self::with_clock(per_window, window, max_sources, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    /// [`Throttle::new`] on `clock`.
    pub fn with_clock(per_window: u32, window: Duration, max_sources: usize, clock: C) -> Self {
        let burst = NonZeroU32::new(per_window).unwrap_or(NonZeroU32::MIN);
        let window = window.max(MIN_WINDOW);
        let quota = Quota::with_period(window / burst.get())
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let max_sources = max_sources.max(1);
        Throttle {
            limiter: RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
            shut_out: Cache::new(max_sources),
            last_prune: Mutex::new(clock.now()),
            clock,
            window,
            max_sources,
        }
    }

    /// How much longer `ip`'s source is shut out, if it is.
    pub fn shut_out(&self, ip: IpAddr) -> Option<Duration> {
        let key = source_of(ip);
        let until = self.shut_out.get(&key)?;
        let left = Duration::from(until.duration_since(self.clock.now()));
        if left.is_zero() {
            self.shut_out.remove(&key);
            return None;
        }
        Some(left)
    }

    /// Counts an unknown credential from `ip`. When it is one too many, the
    /// source is shut out for the window, which is returned.
    pub fn guessed(&self, ip: IpAddr) -> Option<Duration> {
        let key = source_of(ip);
        if self.limiter.len() >= self.max_sources {
            self.prune_when_due();
            if self.limiter.len() >= self.max_sources {
                return Some(self.shut(key));
            }
        }
        match self.limiter.check_key(&key) {
            Ok(()) => None,
            Err(_) => Some(self.shut(key)),
        }
    }

    fn shut(&self, key: IpAddr) -> Duration {
        self.shut_out
            .insert(key, self.clock.now() + Nanos::from(self.window));
        self.window
    }

    /// Drops sources back at a full allowance (they are as good as new).
    pub fn prune(&self) {
        *self
            .last_prune
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.clock.now();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// [`Throttle::prune`], unless it ran less than a second ago (a full
    /// table is searched at most that often, however fast guesses come).
    fn prune_when_due(&self) {
        let now = self.clock.now();
        {
            let mut last = self
                .last_prune
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if Duration::from(now.duration_since(*last)) < PRUNE_AT_MOST_EVERY {
                return;
            }
            *last = now;
        }
        self.limiter.retain_recent();
    }

    /// Sources tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const S: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn throttle(
        per_window: u32,
        window: Duration,
        max: usize,
    ) -> (Throttle<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Throttle::with_clock(per_window, window, max, clock.clone()),
            clock,
        )
    }

    #[test]
    fn past_the_allowance_a_source_is_shut_out_for_the_window() {
        let (t, clock) = throttle(3, 60 * S, 100);
        let guesser = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(t.guessed(guesser), None);
            assert_eq!(t.shut_out(guesser), None, "within the allowance");
        }
        assert_eq!(t.guessed(guesser), Some(60 * S), "one too many");
        assert_eq!(t.shut_out(guesser), Some(60 * S));
        clock.advance(59 * S);
        assert_eq!(t.shut_out(guesser), Some(S), "every request in the window");
        clock.advance(S);
        assert_eq!(t.shut_out(guesser), None, "the window is over");
        // By then the allowance is whole again.
        for _ in 0..3 {
            assert_eq!(t.guessed(guesser), None);
        }
        assert!(t.guessed(guesser).is_some());
    }

    #[test]
    fn other_sources_are_never_affected() {
        let (t, _) = throttle(1, 10 * S, 100);
        let guesser = ip("198.51.100.1");
        assert_eq!(t.guessed(guesser), None);
        assert!(t.guessed(guesser).is_some());
        for other in ["198.51.100.2", "2001:db8:1::1", "::ffff:198.51.100.3"] {
            assert_eq!(t.shut_out(ip(other)), None, "{other}");
            assert_eq!(t.guessed(ip(other)), None, "{other}");
        }
    }

    #[test]
    fn allowance_comes_back_one_guess_at_a_time() {
        let (t, clock) = throttle(2, 10 * S, 100);
        let a = ip("192.0.2.1");
        assert_eq!(t.guessed(a), None);
        assert_eq!(t.guessed(a), None);
        clock.advance(5 * S);
        assert_eq!(t.guessed(a), None, "one back after window / limit");
        assert!(t.guessed(a).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let (t, _) = throttle(1, 10 * S, 100);
        assert_eq!(t.guessed(ip("2001:db8:1:2::1")), None);
        assert!(t.guessed(ip("2001:db8:1:2::ffff")).is_some(), "same /64");
        assert!(t.shut_out(ip("2001:db8:1:2::42")).is_some());
        assert_eq!(t.shut_out(ip("2001:db8:1:3::1")), None, "next /64");
    }

    #[test]
    fn memory_is_bounded_and_full_tables_shut_new_guessers_out() {
        let (t, clock) = throttle(5, 10 * S, 2);
        assert_eq!(t.guessed(ip("192.0.2.1")), None);
        assert_eq!(t.guessed(ip("192.0.2.2")), None);
        assert!(t.guessed(ip("192.0.2.3")).is_some(), "no room: shut out");
        assert_eq!(t.tracked(), 2);
        // Once the tracked sources are back at a full allowance they go.
        clock.advance(10 * S);
        assert_eq!(t.guessed(ip("192.0.2.4")), None);
        assert!(t.tracked() <= 2);
        t.prune();
        assert!(t.tracked() <= 1);
        for i in 0..1000 {
            let _ = t.guessed(IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]));
        }
        assert!(t.tracked() <= 2, "{}", t.tracked());
    }

    #[test]
    fn odd_settings_still_throttle() {
        let (t, _) = throttle(0, Duration::ZERO, 0);
        assert_eq!(t.guessed(ip("192.0.2.1")), None, "at least one guess");
        assert!(t.guessed(ip("192.0.2.1")).is_some());
        assert_eq!(t.shut_out(ip("192.0.2.1")), Some(MIN_WINDOW));
    }
}
