//! A pooled connection that tells when it was kept long. SQLite's pool has
//! one connection, so while one caller keeps it every other query of the
//! process waits, and after the pool's wait (5 s) fails as "database
//! unavailable": a heartbeat, a log-in, a new token's links. The warning
//! names the holder, which the waiters' errors cannot; at trace level
//! (`httvps_control::db::held=trace`) every checkout is logged: asked for,
//! taken, given back.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Held at least this long, a connection is reported when it goes back.
pub const SLOW_HOLD: Duration = Duration::from_secs(1);

/// A checked-out connection (`C`: the pool's object) and where and when it
/// was taken. Dereferences to the pool's object.
pub struct Held<C> {
    conn: C,
    since: Instant,
    site: &'static str,
}

impl<C> Held<C> {
    /// Wraps `conn`, taken just now at `site` (`file:line` of the caller).
    pub fn new(conn: C, site: &'static str) -> Self {
        tracing::trace!(site, "database connection taken");
        Held {
            conn,
            since: Instant::now(),
            site,
        }
    }
}

/// Awaits `get` (a pool's checkout) and wraps what it gives; `site` is
/// the caller's `file:line` (the macros pass their invocation's).
pub async fn checkout<C, E>(
    get: impl std::future::Future<Output = Result<C, E>>,
    site: &'static str,
) -> Result<Held<C>, E> {
    tracing::trace!(site, "database connection asked for");
    match get.await {
        Ok(conn) => Ok(Held::new(conn, site)),
        Err(e) => {
            tracing::trace!(site, "database connection not had");
            Err(e)
        }
    }
}

impl<C> Deref for Held<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> DerefMut for Held<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

impl<C> Drop for Held<C> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        tracing::trace!(
            site = self.site,
            held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX),
            "database connection back"
        );
        if held >= SLOW_HOLD {
            tracing::warn!(
                site = self.site,
                held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
                "a database connection was kept long; other queries waited for it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dereferences_to_the_connection_and_keeps_its_site() {
        let mut held = Held::new(vec![1u8], concat!(file!(), ":", line!()));
        held.push(2);
        assert_eq!(*held, vec![1, 2]);
        assert!(held.site.starts_with("crates/control/src/db/held.rs:"));
        assert!(held.since.elapsed() < SLOW_HOLD);
    }
}
