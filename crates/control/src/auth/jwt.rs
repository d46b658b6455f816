//! JWTs for access, refresh and device credentials: the algorithm pinned to
//! the configured one, `exp`/`iat`/`aud`/`iss`/`sub` required, small leeway,
//! and a separate audience per kind so one can never stand for another.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::SecretKey;
use crate::error::{AppError, AppResult};

/// The issuer of every token.
pub const ISSUER: &str = "httvps";
/// Leeway for clock skew, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Which kind of token; each has its own audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A user's API access token.
    Access,
    /// A device's short-lived credential (exchanged for its access token).
    Device,
}

impl Audience {
    /// The `aud` claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Access => "httvps:access",
            Audience::Device => "httvps:device",
        }
    }
}

/// The claims we issue and require.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: a user id (access) or a device id (device).
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// The user's token version when issued: bumping it invalidates older tokens.
    #[serde(default)]
    pub ver: i64,
    /// Role at issue time (access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The refresh-token family an access token was issued in: revoking the
    /// family invalidates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// The key and algorithm used to sign and check tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    algorithm: Algorithm,
    /// Lifetime of access tokens, in seconds.
    pub access_ttl_secs: i64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Algorithms allowed for `JWT_ALGORITHM`: the HMAC family, keyed by the secret.
pub const ALLOWED_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];

/// Parses an allowed algorithm name.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        _ => None,
    }
}

impl JwtKeys {
    /// Builds keys from the server secret.
    pub fn new(secret: &SecretKey, algorithm: Algorithm, access_ttl_secs: i64) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            algorithm,
            access_ttl_secs,
        }
    }

    /// Signs a token for `sub` with the given audience and lifetime.
    pub fn issue(
        &self,
        aud: Audience,
        sub: &str,
        ver: i64,
        role: Option<&str>,
        ttl_secs: i64,
    ) -> AppResult<String> {
        self.issue_in_family(aud, sub, ver, role, ttl_secs, None)
    }

    /// Like [`JwtKeys::issue`], naming the refresh-token family the token
    /// belongs to.
    pub fn issue_in_family(
        &self,
        aud: Audience,
        sub: &str,
        ver: i64,
        role: Option<&str>,
        ttl_secs: i64,
        fam: Option<&str>,
    ) -> AppResult<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            aud: aud.as_str().to_owned(),
            iss: ISSUER.to_owned(),
            exp: now + ttl_secs,
            iat: now,
            ver,
            role: role.map(str::to_owned),
            fam: fam.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|e| AppError::Internal(format!("jwt encode: {e}")))
    }

    /// Checks a token's signature, algorithm, expiry, issuer and audience.
    pub fn verify(&self, aud: Audience, token: &str) -> AppResult<Claims> {
        if token.len() > 4096 {
            return Err(AppError::Unauthenticated);
        }
        let mut v = Validation::new(self.algorithm);
        v.algorithms = vec![self.algorithm];
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(&[aud.as_str()]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|_| AppError::Unauthenticated)
    }
}
