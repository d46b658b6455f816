//! Credentials proven recently: digests of the bearer tokens (machine
//! tokens, device tokens, device JWTs) that `/api/v1` authenticated, or
//! itself issued (a device JWT, a machine token at enrollment), in the
//! last [`PROVEN_FOR`]. A source shut out for presenting too many unknown
//! credentials is still served when it presents one of these, so a gateway
//! or node that shares its address with a guesser (behind one NAT, or every
//! part of `httvps up` on one host) is not cut off by someone else's
//! guesses. Only the throttle is skipped: the credential is checked as
//! always, and one refused since (401) is no longer proven. A guesser gains
//! nothing: only a credential the control plane accepted gets through. The
//! set is this replica's and lives in memory: behind a load balancer, a
//! credential passes a shut-out source on the replicas that saw it.
//!
//! Memory is bounded: at most a fixed number of digests, the least useful
//! dropped first.

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

/// How long an authenticated credential passes a shut-out source's throttle.
pub const PROVEN_FOR: Duration = Duration::from_secs(3600);

/// The credentials proven recently.
pub struct Proven {
    seen: Cache<[u8; 16], Instant>,
}

impl Default for Proven {
    fn default() -> Self {
        Proven::new(100_000)
    }
}

impl std::fmt::Debug for Proven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proven")
            .field("len", &self.seen.len())
            .finish()
    }
}

/// The key of `credential`: its digest (the credential is not kept).
fn key(credential: &str) -> [u8; 16] {
    let digest = Sha256::digest(credential.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest[..16]);
    k
}

impl Proven {
    /// An empty set of at most `capacity` credentials.
    pub fn new(capacity: usize) -> Self {
        Proven {
            seen: Cache::new(capacity.max(1)),
        }
    }

    /// `credential` was authenticated at `now`.
    pub fn prove(&self, credential: &str, now: Instant) {
        self.seen.insert(key(credential), now);
    }

    /// Whether `credential` was authenticated within [`PROVEN_FOR`] of `now`.
    pub fn is_proven(&self, credential: &str, now: Instant) -> bool {
        self.seen
            .get(&key(credential))
            .is_some_and(|at| now.saturating_duration_since(at) < PROVEN_FOR)
    }

    /// `credential` was refused: it is proven no more.
    pub fn forget(&self, credential: &str) {
        self.seen.remove(&key(credential));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_proven_for_a_while_after_it_was_accepted_until_refused() {
        let (p, t0) = (Proven::new(16), Instant::now());
        assert!(!p.is_proven("gw-token", t0));
        p.prove("gw-token", t0);
        assert!(p.is_proven("gw-token", t0 + PROVEN_FOR / 2));
        assert!(!p.is_proven("gw-token", t0 + PROVEN_FOR), "expired");
        assert!(!p.is_proven("another", t0));
        p.prove("gw-token", t0);
        p.forget("gw-token");
        assert!(!p.is_proven("gw-token", t0), "refused since");
    }

    #[test]
    fn the_set_is_bounded() {
        let (p, t0) = (Proven::new(100), Instant::now());
        for i in 0..10_000 {
            p.prove(&format!("t{i}"), t0);
        }
        assert!(p.seen.len() <= 100, "{}", p.seen.len());
    }
}
