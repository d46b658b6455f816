//! Typed configuration, read once at start-up from flags, the environment and
//! `.env` (clap with `env =` fallbacks), validated with the variable's name in
//! every error. Every variable read here is documented in `.env.example`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
pub use httvps_wire::Secret;
pub use jsonwebtoken::Algorithm;

pub use crate::auth::SecretKey;
use crate::auth::jwt::{ALLOWED_ALGORITHMS, parse_algorithm};
use crate::db::Dsn;
use crate::https::TlsFiles;
use crate::nodes::enrollment::{EnrollTarget, pin_of_chain_end};
pub use crate::throttle::ThrottleSettings;
pub use http::{HttpArgs, HttpLimits};

mod http;

/// The example secret in `.env.example`; refused at start.
pub const EXAMPLE_SECRET: &str = "replace-me-with-at-least-32-random-bytes-0000";
/// Shortest accepted secret key, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The database flags shared by the commands that need one.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: postgres://user@host:5432/db or sqlite://path/to/file.db.
    // Global: it may come after a subcommand, as in `node add --db-dsn …`.
    #[arg(
        long = "db-dsn",
        env = "BACKEND_DB_DSN",
        hide_env_values = true,
        global = true
    )]
    pub db_dsn: Option<Secret>,
    /// Most connections the pool opens to PostgreSQL.
    #[arg(
        long,
        env = "BACKEND_DB_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub db_pool_size: usize,
}

impl DbArgs {
    /// The parsed DSN, or an error naming `BACKEND_DB_DSN`.
    pub fn dsn(&self) -> Result<Dsn, ConfigError> {
        let raw = self
            .db_dsn
            .as_ref()
            .map(Secret::expose)
            .ok_or(ConfigError::new("BACKEND_DB_DSN", "is missing"))?;
        Dsn::parse(raw).map_err(|why| ConfigError::new("BACKEND_DB_DSN", why))
    }

    /// The pool size, checked.
    pub fn pool_size(&self) -> Result<usize, ConfigError> {
        if (1..=1000).contains(&self.db_pool_size) {
            Ok(self.db_pool_size)
        } else {
            Err(ConfigError::new(
                "BACKEND_DB_POOL_SIZE",
                "must be between 1 and 1000",
            ))
        }
    }
}

/// Flags of `httvps serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database settings.
    #[command(flatten)]
    pub db: DbArgs,
    /// Secret for signing tokens: at least 32 bytes, not the example value.
    #[arg(long, env = "BACKEND_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,
    /// Address to listen on.
    #[arg(long, env = "BACKEND_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "BACKEND_PORT", default_value = "8000")]
    pub port: String,
    /// JWT signing algorithm: HS256, HS384 or HS512.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// Lifetime of access tokens, in minutes (1 to 1440).
    #[arg(long, env = "JWT_EXPIRE_MINUTES", default_value = "15")]
    pub jwt_expire_minutes: String,
    /// Public URL of the gateway devices connect through (used in access
    /// links); defaults to the first active registered gateway.
    #[arg(long, env = "BACKEND_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; reloaded when it
    /// changes or on SIGHUP). Unset: plain HTTP, for loopback or behind a
    /// TLS-terminating proxy.
    #[arg(long, env = "BACKEND_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "BACKEND_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The control plane's URL as gateways and nodes reach it; when set,
    /// registerGatewayNode and registerOutlineNode also return an
    /// enrollment string.
    #[arg(long, env = "BACKEND_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The pin put in enrollment strings; default: the last certificate of
    /// --tls-cert for an https:// --public-url.
    #[arg(long, env = "BACKEND_ENROLL_PIN")]
    pub enroll_pin: Option<String>,
    /// Throttles on guessing and flooding.
    #[command(flatten)]
    pub throttle: ThrottleArgs,
    /// HTTP server limits.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Flags of the throttles on guessing and flooding.
#[derive(Debug, Clone, Args)]
pub struct ThrottleArgs {
    /// Window every allowance refills over, in seconds (1 to 86400).
    #[arg(long, env = "BACKEND_THROTTLE_WINDOW_SECS", default_value_t = 60)]
    pub throttle_window_secs: i64,
    /// Log-in attempts per account and window, from anywhere.
    #[arg(long, env = "BACKEND_LOGIN_PER_ACCOUNT", default_value_t = 10)]
    pub login_per_account: i64,
    /// Log-in attempts per source address and window, for any account.
    #[arg(long, env = "BACKEND_LOGIN_PER_SOURCE", default_value_t = 30)]
    pub login_per_source: i64,
    /// Sign-ups per source address and window.
    #[arg(long, env = "BACKEND_SIGNUP_PER_SOURCE", default_value_t = 10)]
    pub signup_per_source: i64,
    /// Refresh-token exchanges per source address and window.
    #[arg(long, env = "BACKEND_REFRESH_PER_SOURCE", default_value_t = 60)]
    pub refresh_per_source: i64,
    /// Refresh-token exchanges per account and window, from any source.
    #[arg(long, env = "BACKEND_REFRESH_PER_ACCOUNT", default_value_t = 30)]
    pub refresh_per_account: i64,
    /// Unknown or invalid credentials at /api/v1 (machine tokens, device
    /// tokens and JWTs) per source address and window.
    #[arg(long, env = "BACKEND_UNKNOWN_TOKENS_PER_SOURCE", default_value_t = 30)]
    pub unknown_tokens_per_source: i64,
    /// Device JWTs minted per device and window (auth/device-token), from
    /// any source.
    #[arg(long, env = "BACKEND_DEVICE_JWTS_PER_DEVICE", default_value_t = 60)]
    pub device_jwts_per_device: i64,
    /// Header a trusted reverse proxy sets to the client's address (such as
    /// X-Forwarded-For; its last address counts). Empty: the socket's
    /// address. Set it only when every request comes through that proxy.
    #[arg(long, env = "BACKEND_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
}

impl ThrottleArgs {
    /// The validated settings.
    pub fn settings(&self) -> Result<ThrottleSettings, ConfigError> {
        // Read as i64 so that a negative value gets this message, not
        // the parser's (which named a range from 0).
        fn positive(var: &'static str, n: i64) -> Result<u32, ConfigError> {
            match u32::try_from(n) {
                Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
                _ => Err(ConfigError::new(var, "must be from 1 to 1000000")),
            }
        }
        if !(1..=86_400).contains(&self.throttle_window_secs) {
            return Err(ConfigError::new(
                "BACKEND_THROTTLE_WINDOW_SECS",
                "must be from 1 to 86400 seconds",
            ));
        }
        let client_ip_header = match self
            .client_ip_header
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            None => None,
            Some(h) => Some(axum::http::HeaderName::try_from(h).map_err(|_| {
                ConfigError::new("BACKEND_CLIENT_IP_HEADER", "must be a header name")
            })?),
        };
        Ok(ThrottleSettings {
            window: std::time::Duration::from_secs(self.throttle_window_secs.unsigned_abs()),
            login_per_account: positive("BACKEND_LOGIN_PER_ACCOUNT", self.login_per_account)?,
            login_per_source: positive("BACKEND_LOGIN_PER_SOURCE", self.login_per_source)?,
            signup_per_source: positive("BACKEND_SIGNUP_PER_SOURCE", self.signup_per_source)?,
            refresh_per_source: positive("BACKEND_REFRESH_PER_SOURCE", self.refresh_per_source)?,
            refresh_per_account: positive("BACKEND_REFRESH_PER_ACCOUNT", self.refresh_per_account)?,
            unknown_tokens_per_source: positive(
                "BACKEND_UNKNOWN_TOKENS_PER_SOURCE",
                self.unknown_tokens_per_source,
            )?,
            device_jwts_per_device: positive(
                "BACKEND_DEVICE_JWTS_PER_DEVICE",
                self.device_jwts_per_device,
            )?,
            client_ip_header,
            ..ThrottleSettings::default()
        })
    }
}

/// A configuration error that names the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("{var} {why}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub why: String,
}

impl ConfigError {
    /// A new error about `var`.
    pub fn new(var: &'static str, why: impl Into<String>) -> Self {
        ConfigError {
            var,
            why: why.into(),
        }
    }
}

/// Validated settings of the control-plane server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the data lives.
    pub dsn: Dsn,
    /// PostgreSQL pool size.
    pub pool_size: usize,
    /// Token-signing secret.
    pub secret: SecretKey,
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0 picks a free one).
    pub port: u16,
    /// JWT algorithm.
    pub jwt_algorithm: Algorithm,
    /// Access-token lifetime in minutes.
    pub jwt_expire_minutes: i64,
    /// Development mode: introspection, suggestions and GraphiQL on.
    pub debug: bool,
    /// Public gateway URL for access links.
    pub gateway_url: Option<String>,
    /// HTTPS certificate and key; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where enrollment strings send machines; `None`: no strings.
    pub enroll: Option<EnrollTarget>,
    /// Throttles on guessing and flooding.
    pub throttle: ThrottleSettings,
    /// HTTP deadlines and the connection budget.
    pub http: HttpLimits,
}

/// Checks a secret key: present, long enough, not the example.
pub fn validate_secret(raw: Option<&str>) -> Result<SecretKey, ConfigError> {
    const VAR: &str = "BACKEND_SECRET_KEY";
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::new(VAR, "is missing"))?;
    if raw == EXAMPLE_SECRET {
        return Err(ConfigError::new(
            VAR,
            "is the example value from .env.example: generate your own",
        ));
    }
    if raw.len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            VAR,
            format!("must be at least {MIN_SECRET_LEN} bytes"),
        ));
    }
    Ok(SecretKey::new(raw.to_owned()))
}

impl Settings {
    /// Validates the raw flags.
    pub fn from_args(args: &ServeArgs, debug: bool) -> Result<Self, ConfigError> {
        let dsn = args.db.dsn()?;
        let pool_size = args.db.pool_size()?;
        let secret = validate_secret(args.secret_key.as_ref().map(Secret::expose))?;
        let host: IpAddr = args.host.trim().parse().map_err(|_| {
            ConfigError::new(
                "BACKEND_HOST",
                "must be an IP address such as 127.0.0.1 or 0.0.0.0",
            )
        })?;
        let port: u16 = args.port.trim().parse().map_err(|_| {
            ConfigError::new("BACKEND_PORT", "must be a port number from 0 to 65535")
        })?;
        let jwt_algorithm = parse_algorithm(args.jwt_algorithm.trim()).ok_or_else(|| {
            ConfigError::new(
                "JWT_ALGORITHM",
                format!("must be one of {}", ALLOWED_ALGORITHMS.join(", ")),
            )
        })?;
        let jwt_expire_minutes: i64 = args
            .jwt_expire_minutes
            .trim()
            .parse()
            .ok()
            .filter(|m| (1..=1440).contains(m))
            .ok_or(ConfigError::new(
                "JWT_EXPIRE_MINUTES",
                "must be a whole number of minutes from 1 to 1440",
            ))?;
        let gateway_url = match args
            .gateway_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            // As registerGatewayNode checks a gateway's public URL: the
            // gateway speaks TLS only, and links append their own paths.
            Some(u) => Some(
                crate::validate::https_url("BACKEND_GATEWAY_URL", u).map_err(|_| {
                    ConfigError::new(
                        "BACKEND_GATEWAY_URL",
                        "must be an https:// URL with a host and no path, query or credentials",
                    )
                })?,
            ),
        };
        let tls = match (args.tls_cert.clone(), args.tls_key.clone()) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "BACKEND_TLS_KEY",
                    "is missing: BACKEND_TLS_CERT needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "BACKEND_TLS_CERT",
                    "is missing: BACKEND_TLS_KEY needs its certificate",
                ));
            }
        };
        if let Some(f) = &tls {
            crate::https::TlsFront::load(f.clone()).map_err(|e| {
                ConfigError::new(
                    "BACKEND_TLS_CERT / BACKEND_TLS_KEY",
                    format!("do not load: {e:#}"),
                )
            })?;
        }
        let enroll = match args
            .public_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(given)
                if ["https://", "http://"].iter().any(|s| {
                    given
                        .get(..s.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(s))
                }) =>
            {
                // Kept as the URL parser writes it (scheme and host in
                // lower case), which machines compare with.
                let parsed = public_base(given)?;
                let u = parsed.as_str().trim_end_matches('/');
                let pin = match (
                    args.enroll_pin
                        .as_deref()
                        .map(str::trim)
                        .filter(|s| !s.is_empty()),
                    &tls,
                ) {
                    (Some(p), _) => Some(
                        httvps_wire::enroll::canonical_pin(p)
                            .map_err(|e| ConfigError::new("BACKEND_ENROLL_PIN", e))?,
                    ),
                    (None, Some(f)) if u.starts_with("https://") => Some(
                        pin_of_chain_end(&f.cert)
                            .map_err(|e| ConfigError::new("BACKEND_TLS_CERT", e))?,
                    ),
                    _ => None,
                };
                Some(EnrollTarget {
                    url: u.trim_end_matches('/').to_owned(),
                    pin,
                })
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "BACKEND_PUBLIC_URL",
                    "must be an https:// (or http://) URL",
                ));
            }
        };
        Ok(Settings {
            dsn,
            pool_size,
            secret,
            host,
            port,
            jwt_algorithm,
            jwt_expire_minutes,
            debug,
            gateway_url,
            tls,
            enroll,
            throttle: args.throttle.settings()?,
            http: args.http.limits()?,
        })
    }
}

/// Checks that `BACKEND_PUBLIC_URL` is a base URL machines can be sent to:
/// a host, and no credentials, query or fragment (an enrollment string
/// carrying one was refused by the control plane with 401 or 405, which
/// read as a spent string).
fn public_base(u: &str) -> Result<url::Url, ConfigError> {
    let wrong = |why: &str| {
        ConfigError::new(
            "BACKEND_PUBLIC_URL",
            format!(
                "{why}: it must be the control plane's base URL as gateways and nodes reach it, https://HOST[:PORT]"
            ),
        )
    };
    let parsed = url::Url::parse(u).map_err(|e| wrong(&format!("is not a URL ({e})")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(wrong("has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(wrong("holds credentials"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(wrong("holds a query or a fragment"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_is_a_base_url_and_nothing_more() {
        for ok in [
            "https://cp.example.net:8443",
            "https://127.0.0.1",
            "http://localhost:8000/",
        ] {
            assert!(public_base(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://cp.example.net:8443?x=1",
            "https://cp.example.net#frag",
            "https://ops:pw@cp.example.net",
            "https://ops@cp.example.net",
            "https://",
        ] {
            assert!(public_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dsn_that_cannot_be_read_is_refused_at_once() {
        for ok in [
            "postgres://httvps:a%2Fb%2Bc@127.0.0.1:5432/httvps",
            "postgresql://postgres@127.0.0.1/postgres",
            "postgres:///httvps?host=/var/run/postgresql",
            "sqlite://data/httvps.db",
        ] {
            assert!(Dsn::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "postgres://h2:a/b+c=d@e#f@127.0.0.1:5432/h2",
            "postgres://h2:ab@127.0.0.1:notaport/h2",
            "postgres://h2:Tr0ub@dor/3x@127.0.0.1:5432/h2",
            "postgres://h2:Tr0ub@dor?3x@127.0.0.1:5432/h2",
            "postgres://h2:Tr0ub@dor#3x@127.0.0.1:5432/h2",
            "postgres://h2:p@ss@127.0.0.1:5432/h2",
            "postgres://",
            "postgres:///h2",
        ] {
            let why = Dsn::parse(bad).err().unwrap_or_default();
            assert!(why.contains("percent-encoded"), "{bad}: {why}");
            assert!(
                !why.contains("a/b") && !why.contains("Tr0ub"),
                "the password is not repeated: {why}"
            );
        }
    }
}
