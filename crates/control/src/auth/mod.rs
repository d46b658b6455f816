//! Credentials: password hashing, opaque tokens hashed at rest, and JWTs.

mod argon;
pub mod jwt;

use argon2::password_hash::SaltString;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{AppError, AppResult};
pub use httvps_wire::token::looks_like_token;

/// A secret whose `Debug` never prints it.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a validated secret.
    pub fn new(raw: String) -> Self {
        SecretKey(raw)
    }
    /// The secret itself, for key derivation only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted (argon2 input is bounded to keep hashing cheap).
pub const MAX_PASSWORD_LEN: usize = 256;

/// Checks a new password's length, with a clear error.
pub fn check_password_policy(password: &str) -> AppResult<()> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(AppError::bad(format!(
            "password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AppError::bad(format!(
            "password must have at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    // What a careless client sends (a pasted newline, a blank field) is
    // refused here, not stored as the password nobody can type again.
    if password.chars().any(char::is_control) {
        return Err(AppError::bad(
            "password must not contain control characters (newlines, tabs)",
        ));
    }
    if password.trim().is_empty() {
        return Err(AppError::bad("password must not be only spaces"));
    }
    Ok(())
}

/// Argon2 runs at once at most: two per core. Each holds about 19 MiB
/// (kept for the next, see `argon`) for a few tens of milliseconds of a
/// core's time; more at once only
/// queue for the cores, and a burst of log-ins (or of aliased
/// `changePassword` calls) would otherwise take a blocking thread and its
/// memory each (up to 512 threads, about 10 GB). Callers past the bound
/// wait their turn.
static HASHING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    tokio::sync::Semaphore::new(cores.max(1) * 2)
});

/// Runs one argon2 job off the async threads, within [`HASHING`]. The
/// turn goes with the job: a caller that gives up (its client gone) does
/// not free it while the job still runs.
async fn hashing<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
    let turn = HASHING
        .acquire()
        .await
        .map_err(|e| AppError::Internal(format!("hashing: {e}")))?;
    #[cfg(test)]
    tests::HASHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        let out = job();
        drop(turn);
        out
    })
    .await
    .map_err(|e| AppError::Internal(format!("join: {e}")))
}

/// Hashes a password with argon2id, off the async threads.
pub async fn hash_password(password: String) -> AppResult<String> {
    hashing(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| AppError::Internal(format!("salt: {e}")))?;
        argon::hash(password.as_bytes(), &salt)
            .map_err(|e| AppError::Internal(format!("argon2: {e}")))
    })
    .await?
}

/// Verifies a password against a stored argon2 hash, off the async threads.
/// One longer than [`MAX_PASSWORD_LEN`] never matches, and takes the time
/// of a check all the same (its first bytes are checked): answering it at
/// once would tell that the account exists, since an unknown email spends
/// a hash's time.
pub async fn verify_password(mut password: String, hash: String) -> bool {
    let too_long = password.len() > MAX_PASSWORD_LEN;
    if too_long {
        let mut end = MAX_PASSWORD_LEN;
        while !password.is_char_boundary(end) {
            end -= 1;
        }
        password.truncate(end);
    }
    let verified = hashing(move || argon::verify(password.as_bytes(), &hash))
        .await
        .unwrap_or(false);
    verified && !too_long
}

/// A new opaque token: 256 random bits, URL-safe base64 without padding.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random printable secret of `bytes` random bytes (node keys, passwords).
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The at-rest form of an opaque token: hex SHA-256. Tokens carry 256 random
/// bits, so a fast hash is enough and keeps lookups on the hot path cheap.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The generation of a device's access token, from its stored hash: device
/// JWTs carry it (as `ver`), so rotating the access token also retires the
/// device JWTs exchanged for the old one.
pub fn token_generation(token_hash: &str) -> i64 {
    // 60 bits of the hash: positive, and a collision is as unlikely as
    // guessing the new token's hash prefix.
    token_hash
        .get(..15)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    #[test]
    fn each_token_has_its_own_generation() {
        let (a, b) = (new_token(), new_token());
        let (ga, gb) = (
            token_generation(&hash_token(&a)),
            token_generation(&hash_token(&b)),
        );
        assert_ne!(ga, gb);
        assert!(ga > 0 && gb > 0);
        assert_eq!(ga, token_generation(&hash_token(&a)));
        assert_eq!(token_generation("short"), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes and checks run (by every test of the crate).
    pub(super) static HASHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[tokio::test]
    async fn a_password_too_long_never_matches_and_is_checked_all_the_same() {
        let password = "p".repeat(MAX_PASSWORD_LEN);
        let hash = hash_password(password.clone()).await.expect("hash");
        assert!(verify_password(password.clone(), hash.clone()).await);
        let before = HASHED.load(std::sync::atomic::Ordering::Relaxed);
        // Its first MAX_PASSWORD_LEN bytes are the password.
        assert!(!verify_password(format!("{password}p"), hash.clone()).await);
        assert!(!verify_password(format!("{password}\u{e9}"), hash).await);
        assert!(
            HASHED.load(std::sync::atomic::Ordering::Relaxed) >= before + 2,
            "a check's time is spent on a password too long, as on an unknown email"
        );
    }

    #[test]
    fn the_password_policy_refuses_short_long_blank_and_control_characters() {
        assert!(check_password_policy("pass word 12").is_ok());
        assert!(check_password_policy("short").is_err());
        assert!(check_password_policy(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert!(check_password_policy(&"\n".repeat(12)).is_err());
        assert!(check_password_policy("good password\n").is_err());
        assert!(check_password_policy("tab\tseparated").is_err());
        assert!(check_password_policy(&" ".repeat(12)).is_err());
    }
}
