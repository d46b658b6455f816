//! httvps: a VPN service platform for Shadowsocks/Outline node pools behind
//! an HTTPS gateway.
//!
//! Map of the crate:
//! - [`config`]: typed settings from flags, environment and `.env`.
//! - [`logging`]: structured logs.
//! - [`error`]: the one error type, rendered for REST and GraphQL.
//! - [`db`]: the connection pool over PostgreSQL or SQLite, schema, rows and
//!   embedded migrations.
//! - [`app`]: start-up of `serve` and the zero-setup `up`.
//! - [`auth`]: passwords, opaque tokens, JWTs.
//! - [`control`]: the control plane: use cases, GraphQL, REST, HTTP server.
//! - [`relay`]: the data plane: gateway, node and client.
//!
//! The binaries in `src/bin/` are thin: they parse flags and call in here.

pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod db;
pub mod error;
pub mod logging;
pub mod relay;
