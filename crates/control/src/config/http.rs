//! The HTTP server's limits: deadlines, the connection budget, the
//! metrics token.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret, SecretKey};

/// HTTP server limits, as flags and environment variables.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Seconds a connection has to send a request's complete headers, from
    /// the moment the server waits for it (so also the longest an idle
    /// keep-alive connection stays open).
    #[arg(long, env = "BACKEND_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a request has to send its whole body once its headers are
    /// in; also the longest a response may wait for the client to take a
    /// byte of it before the connection is closed.
    #[arg(long, env = "BACKEND_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Most open connections; beyond it new ones are closed at once.
    #[arg(long, env = "BACKEND_MAX_CONNECTIONS", default_value_t = 8192)]
    pub max_connections: usize,
    /// Most open connections from one source (an IPv4 address or an IPv6
    /// /64); beyond it its new ones are closed at once, so one source
    /// cannot hold the whole budget. The default, a quarter of the default
    /// budget, leaves room for two gateways behind one address: each
    /// keeps at most 768 calls (connections) in flight (512 credential
    /// checks, 256 other calls), plus its heartbeat and access-event stream. 0: no bound
    /// (behind a reverse proxy, where every connection comes from the
    /// proxy).
    #[arg(
        long,
        env = "BACKEND_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 2048
    )]
    pub max_connections_per_source: usize,
    /// Seconds a GraphQL WebSocket may run no operation (after its
    /// `connection_init` is acknowledged) before it is closed (1000).
    #[arg(long, env = "BACKEND_WS_IDLE_SECS", default_value_t = 60)]
    pub ws_idle_secs: u64,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`.
    #[arg(long, env = "BACKEND_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,
}

/// Validated HTTP server limits.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// See [`HttpArgs::header_timeout_secs`].
    pub header_timeout: Duration,
    /// See [`HttpArgs::body_timeout_secs`].
    pub body_timeout: Duration,
    /// See [`HttpArgs::max_connections`].
    pub max_connections: usize,
    /// See [`HttpArgs::max_connections_per_source`] (0: no bound).
    pub max_connections_per_source: usize,
    /// See [`HttpArgs::ws_idle_secs`].
    pub ws_idle: Duration,
    /// See [`HttpArgs::metrics_token`].
    pub metrics_token: Option<SecretKey>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 8192,
            max_connections_per_source: 2048,
            ws_idle: Duration::from_secs(60),
            metrics_token: None,
        }
    }
}

impl HttpArgs {
    /// Checks the limits, naming the variable at fault.
    pub fn limits(&self) -> Result<HttpLimits, ConfigError> {
        let secs = |var: &'static str, v: u64| {
            if (1..=3600).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(ConfigError::new(var, "must be from 1 to 3600 seconds"))
            }
        };
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::new(
                "BACKEND_MAX_CONNECTIONS",
                "must be from 1 to 1000000",
            ));
        }
        if self.max_connections_per_source > 1_000_000 {
            return Err(ConfigError::new(
                "BACKEND_MAX_CONNECTIONS_PER_SOURCE",
                "must be from 0 (no bound) to 1000000",
            ));
        }
        Ok(HttpLimits {
            header_timeout: secs("BACKEND_HEADER_TIMEOUT_SECS", self.header_timeout_secs)?,
            body_timeout: secs("BACKEND_BODY_TIMEOUT_SECS", self.body_timeout_secs)?,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            ws_idle: secs("BACKEND_WS_IDLE_SECS", self.ws_idle_secs)?,
            metrics_token: match self.metrics_token.as_ref().map(|t| t.expose().trim()) {
                None | Some("") => None,
                Some(t) if t.len() < 16 => {
                    return Err(ConfigError::new(
                        "BACKEND_METRICS_TOKEN",
                        "must be at least 16 bytes",
                    ));
                }
                Some(t) => Some(SecretKey::new(t.to_owned())),
            },
        })
    }
}
