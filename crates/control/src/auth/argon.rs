//! argon2id over working memory that is kept and reused. Each hash needs
//! about 19 MiB of blocks; allocated per hash, as `Argon2::hash_password`
//! does, the allocator kept what every blocking thread's arena had once
//! held (about 420 MB after bursts of log-ins, where at most four hashes
//! run at once). Here a hash takes a buffer from a small pool and gives it
//! back, so the memory is as many buffers as ran at once, written once,
//! and a hash no longer pays for fresh pages either. The stored form is
//! the usual PHC string, so hashes from before verify, and these verify
//! with any argon2 implementation.

use std::sync::{Mutex, PoisonError};

use argon2::password_hash::{Output, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Buffers kept for reuse; one per hash that ran at once (the callers
/// bound how many that is), and never more than [`MAX_KEPT`].
static POOL: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// The most buffers kept (about 19 MiB each), whatever ran at once.
const MAX_KEPT: usize = 16;

/// The largest buffer kept: the default parameters' (a stored hash with
/// more memory gets a buffer of its own, dropped after use).
fn kept_blocks() -> usize {
    Params::default().block_count()
}

/// Runs `f` with at least `n` blocks of working memory from the pool.
fn with_blocks<T>(n: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let taken = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut blocks = taken.unwrap_or_default();
    if blocks.len() < n {
        blocks.resize(n, Block::default());
    }
    let out = f(&mut blocks[..n]);
    if blocks.len() <= kept_blocks() {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < MAX_KEPT {
            pool.push(blocks);
        }
    }
    out
}

/// Hashes `password` with `argon` and `salt` into a PHC record.
fn record<'a>(
    argon: &Argon2<'_>,
    params: &Params,
    algorithm: Algorithm,
    version: Version,
    password: &[u8],
    salt: Salt<'a>,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let mut raw = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut raw)?;
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| {
        with_blocks(params.block_count(), |blocks| {
            argon.hash_password_into_with_memory(password, salt_bytes, out, blocks)
        })
        .map_err(Into::into)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: params.try_into()?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Hashes `password` with argon2id and the default parameters under a
/// fresh `salt`: the PHC string to store.
pub fn hash(password: &[u8], salt: &SaltString) -> Result<String, String> {
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    record(
        &argon,
        &params,
        Algorithm::Argon2id,
        Version::V0x13,
        password,
        salt.as_salt(),
    )
    .map(|h| h.to_string())
    .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored PHC string `stored` (argon2 of
/// any variant, version and parameters it names; the outputs compared in
/// constant time).
pub fn verify(password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    record(&argon, &params, algorithm, version, password, salt)
        .ok()
        .and_then(|h| h.hash)
        .is_some_and(|got| got == expected)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    fn salt() -> SaltString {
        SaltString::encode_b64(b"sixteen byte salt").expect("salt")
    }

    #[test]
    fn hashes_verify_here_and_with_the_crates_own_verifier() {
        let stored = hash(b"correct horse", &salt()).expect("hash");
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(b"correct horse", &stored));
        assert!(!verify(b"correct horsf", &stored));
        let parsed = PasswordHash::new(&stored).expect("phc");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // The same as the crate's own hasher, byte for byte.
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt())
            .expect("hash")
            .to_string();
        assert_eq!(stored, theirs);
    }

    #[test]
    fn hashes_of_other_parameters_and_variants_verify() {
        let params = Params::new(8 * 1024, 1, 2, Some(24)).expect("params");
        for alg in [Algorithm::Argon2i, Algorithm::Argon2d, Algorithm::Argon2id] {
            let stored = Argon2::new(alg, Version::V0x13, params.clone())
                .hash_password(b"pw", &salt())
                .expect("hash")
                .to_string();
            assert!(verify(b"pw", &stored), "{stored}");
            assert!(!verify(b"pW", &stored), "{stored}");
        }
        // Larger than the pool keeps: verified, and not kept.
        let big = Params::new(40 * 1024, 1, 1, None).expect("params");
        let stored = Argon2::new(Algorithm::Argon2id, Version::V0x13, big)
            .hash_password(b"pw", &salt())
            .expect("hash")
            .to_string();
        assert!(verify(b"pw", &stored));
        assert!(
            POOL.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .all(|b| b.len() <= kept_blocks())
        );
    }

    #[test]
    fn garbage_never_verifies() {
        for stored in [
            "",
            "plain",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$v=99$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!verify(b"pw", stored), "{stored}");
        }
    }
}
