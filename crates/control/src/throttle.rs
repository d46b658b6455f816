//! Throttles on guessing and flooding (GCRA, `governor`): log-ins per
//! account and per source, sign-ups per source, refreshes per source and
//! per account, unknown
//! credentials (device and machine tokens at `/api/v1`) per source, and
//! device JWTs minted per device (`auth/device-token`).
//!
//! A source is the client's address (an IPv6 /64, the block one subscriber
//! usually holds), taken from the socket, or from a proxy header only when
//! the operator names one. Allowances are bursts that refill steadily: `n`
//! attempts per window, one back every `window / n`, so someone else's
//! guesses never lock a legitimate user out for longer than the window
//! after they stop, and the per-source limits stop a flood from one place.
//!
//! Memory is bounded: each table holds at most `max_keys` keys; when full,
//! keys back at a full allowance are dropped, and if none is, a new key is
//! refused until some are (a flood of distinct keys gains nothing).

use std::hash::Hash;
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
use sha2::{Digest, Sha256};

use crate::error::{AppError, AppResult};

/// Shortest window honoured.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// How often, at most, a full table is searched for keys to drop.
const PRUNE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The throttles' settings (`BACKEND_THROTTLE_*`, `BACKEND_*_PER_*`).
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// The window every allowance refills over.
    pub window: Duration,
    /// Log-in attempts per account and window (any source).
    pub login_per_account: u32,
    /// Log-in attempts per source and window (any account).
    pub login_per_source: u32,
    /// Sign-ups per source and window.
    pub signup_per_source: u32,
    /// Refresh-token exchanges per source and window.
    pub refresh_per_source: u32,
    /// Refresh-token exchanges per account and window (any source).
    pub refresh_per_account: u32,
    /// Unknown or invalid credentials at `/api/v1` per source and window.
    pub unknown_tokens_per_source: u32,
    /// Device JWTs minted per device and window (`auth/device-token`).
    pub device_jwts_per_device: u32,
    /// Most keys (accounts or sources) each table tracks.
    pub max_keys: usize,
    /// A header set by a trusted reverse proxy that carries the client's
    /// address (the last address in it counts); `None`: the socket's.
    pub client_ip_header: Option<axum::http::HeaderName>,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            window: Duration::from_secs(60),
            login_per_account: 10,
            login_per_source: 30,
            signup_per_source: 10,
            refresh_per_source: 60,
            refresh_per_account: 30,
            unknown_tokens_per_source: 30,
            device_jwts_per_device: 60,
            max_keys: 100_000,
            client_ip_header: None,
        }
    }
}

/// The address a request comes from, as the throttles count it (`None`
/// when unknown, e.g. calls made in process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// The client of a request: the last address in the trusted header when
    /// one is configured and present, else the socket's.
    pub fn of(
        settings: &ThrottleSettings,
        headers: &axum::http::HeaderMap,
        socket: Option<IpAddr>,
    ) -> Self {
        let from_header = settings.client_ip_header.as_ref().and_then(|name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .next_back()
        });
        ClientAddr(from_header.or(socket))
    }
}

/// An account's key: a digest of its email in the form log-in looks it up
/// by (every spelling that reaches one account counts against one
/// allowance: full-width letters, decomposed accents, a domain in
/// punycode), so the table's memory does not depend on what callers send.
/// An address that form refuses counts as trimmed and in lower case, the
/// form log-in also tries.
fn account_key(email: &str) -> [u8; 16] {
    let key =
        crate::accounts::normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
    digest_key(key.as_bytes())
}

fn digest_key(bytes: &[u8]) -> [u8; 16] {
    let digest = Sha256::digest(bytes);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// One keyed allowance, with the keys that ran out and until when.
struct Keyed<K: Hash + Eq + Clone, C: Clock> {
    limiter: RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    blocked: Cache<K, C::Instant>,
    last_prune: Mutex<C::Instant>,
    clock: C,
    window: Duration,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Keyed<K, C> {
    fn new(per_window: u32, window: Duration, max_keys: usize, clock: C) -> Self {
        let burst = NonZeroU32::new(per_window).unwrap_or(NonZeroU32::MIN);
        let window = window.max(MIN_WINDOW);
        let quota = Quota::with_period(window / burst.get())
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let max_keys = max_keys.max(1);
        Keyed {
            limiter: RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
            blocked: Cache::new(max_keys),
            last_prune: Mutex::new(clock.now()),
            clock,
            window,
            max_keys,
        }
    }

    /// Takes one attempt from `key`'s allowance; when there is none left,
    /// how long until there is.
    fn hit(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() >= self.max_keys {
            self.prune_when_due();
            if self.limiter.len() >= self.max_keys {
                return Err(self.window);
            }
        }
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let now = self.clock.now();
                let wait = not_until.wait_time_from(now).max(Duration::from_millis(1));
                self.blocked.insert(key.clone(), now + Nanos::from(wait));
                Err(wait)
            }
        }
    }

    /// How much longer `key` is refused, if its allowance ran out (without
    /// taking an attempt).
    fn blocked(&self, key: &K) -> Option<Duration> {
        let until = self.blocked.get(key)?;
        let left = Duration::from(until.duration_since(self.clock.now()));
        if left.is_zero() {
            self.blocked.remove(key);
            return None;
        }
        Some(left)
    }

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
}

/// The refusal for an allowance that ran out.
fn refused(wait: Duration) -> AppError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    AppError::Throttled {
        retry_after_secs: secs.max(1),
    }
}

/// Every throttle of the control plane (one per process; each replica
/// counts what it serves).
pub struct Throttles<C: Clock + Clone = DefaultClock> {
    login_account: Keyed<[u8; 16], C>,
    login_source: Keyed<IpAddr, C>,
    signup_source: Keyed<IpAddr, C>,
    refresh_source: Keyed<IpAddr, C>,
    refresh_account: Keyed<[u8; 16], C>,
    unknown_source: Keyed<IpAddr, C>,
    device_jwt: Keyed<[u8; 16], C>,
    /// The settings (for reading client addresses).
    pub settings: ThrottleSettings,
}

impl std::fmt::Debug for Throttles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttles")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Throttles {
    /// Throttles with `settings` on the real clock.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttles<C> {
    /// [`Throttles::new`] on `clock`.
    pub fn with_clock(settings: ThrottleSettings, clock: C) -> Self {
        let (w, max) = (settings.window, settings.max_keys);
        Throttles {
            login_account: Keyed::new(settings.login_per_account, w, max, clock.clone()),
            login_source: Keyed::new(settings.login_per_source, w, max, clock.clone()),
            signup_source: Keyed::new(settings.signup_per_source, w, max, clock.clone()),
            refresh_source: Keyed::new(settings.refresh_per_source, w, max, clock.clone()),
            refresh_account: Keyed::new(settings.refresh_per_account, w, max, clock.clone()),
            unknown_source: Keyed::new(settings.unknown_tokens_per_source, w, max, clock.clone()),
            device_jwt: Keyed::new(settings.device_jwts_per_device, w, max, clock),
            settings,
        }
    }

    fn per_source(keyed: &Keyed<IpAddr, C>, from: ClientAddr) -> AppResult<()> {
        match from.0 {
            Some(ip) => keyed.hit(&source_of(ip)).map_err(refused),
            None => Ok(()),
        }
    }

    /// Counts a log-in attempt for `email` from `from`, before the password
    /// is checked: refused when either allowance is spent.
    pub fn login(&self, from: ClientAddr, email: &str) -> AppResult<()> {
        Self::per_source(&self.login_source, from)?;
        self.login_account.hit(&account_key(email)).map_err(refused)
    }

    /// Counts a sign-up from `from`.
    pub fn sign_up(&self, from: ClientAddr) -> AppResult<()> {
        Self::per_source(&self.signup_source, from)
    }

    /// Counts a refresh-token exchange from `from`.
    pub fn refresh(&self, from: ClientAddr) -> AppResult<()> {
        Self::per_source(&self.refresh_source, from)
    }

    /// Counts a refresh-token exchange for the account `user` (its id),
    /// from anywhere, before the token is spent.
    pub fn refresh_account(&self, user: &str) -> AppResult<()> {
        self.refresh_account
            .hit(&digest_key(user.as_bytes()))
            .map_err(refused)
    }

    /// Counts a device JWT minted for `device` (its id), from anywhere: a
    /// device needs one per JWT lifetime, so a flood of valid exchanges
    /// (each a query and a signature) is refused.
    pub fn device_jwt(&self, device: &str) -> AppResult<()> {
        self.device_jwt
            .hit(&digest_key(device.as_bytes()))
            .map_err(refused)
    }

    /// Whether `from` is shut out for presenting too many unknown
    /// credentials (asked before any credential is looked up).
    pub fn guesser(&self, from: ClientAddr) -> AppResult<()> {
        match from
            .0
            .and_then(|ip| self.unknown_source.blocked(&source_of(ip)))
        {
            Some(wait) => Err(refused(wait)),
            None => Ok(()),
        }
    }

    /// Counts an unknown or invalid credential from `from`.
    pub fn unknown_credential(&self, from: ClientAddr) {
        if let Some(ip) = from.0 {
            let _ = self.unknown_source.hit(&source_of(ip));
        }
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
