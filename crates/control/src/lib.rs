//! The httvps control plane: users, devices, plans, subscriptions, regions,
//! nodes, sessions and usage, on PostgreSQL or SQLite, served over GraphQL
//! (dashboards, clients) and the `/api/v1` REST routes (gateways, nodes).
//!
//! Map of the crate (each layer uses only the ones above it):
//! - Vocabulary: [`ids`] (newtype ids, stored as text), [`status`] (stored
//!   enums: roles, statuses, health, end reasons), [`error`] (one error type
//!   for REST and GraphQL), [`actor`] (who acts, and the scoping rule).
//! - Foundations: [`config`] (typed settings), [`events`] (node and access
//!   events; the per-transaction outbox), [`db`] (pools, schema, rows,
//!   migrations, `db_run!`/`db_tx!`, per-dialect statements; `pg` opens
//!   its PostgreSQL connections with errors an operator can act on), [`auth`]
//!   (passwords, opaque tokens, JWTs), [`throttle`] (guessing and flooding
//!   allowances per account and source), [`validate`] (input checks),
//!   [`pagination`], [`audit`].
//! - Use cases, one module per capability, called by GraphQL, REST and the
//!   CLI alike; each owns its rules and publishes the events its changes
//!   imply: [`access`] (the access rule: may this device connect now),
//!   [`accounts`], [`catalogue`], [`subscriptions`], [`devices`], [`nodes`],
//!   [`node_assignment`], [`heartbeats`], [`sessions`], [`usage_accounting`].
//! - Edges: [`context`] (the app context and the signed-in viewer),
//!   [`graphql`], [`rest`], [`state`] (what handlers get), [`http`] (the
//!   routes), [`refusals`] (the framework's refusals and oversized heads
//!   in our error shape), [`listener`] (the accept loop: deadlines, connection
//!   budget), [`https`] (TLS in front of it, certificate reloaded on
//!   change or SIGHUP), [`console`] (the embedded web console and GraphiQL),
//!   [`metrics`], [`app`] (start-up).

pub mod access;
pub mod accounts;
pub mod actor;
pub mod app;
pub mod audit;
pub mod auth;
pub mod batching;
pub mod body;
pub mod catalogue;
pub mod config;
pub mod console;
pub mod context;
pub mod db;
pub mod devices;
pub mod error;
pub mod events;
pub mod feed;
pub mod graphql;
pub mod heartbeats;
pub mod http;
pub mod https;
pub mod ids;
pub mod listener;
pub mod metrics;
pub mod names;
pub mod node_assignment;
pub mod nodes;
pub mod pagination;
mod pg;
mod pg_tls;
pub mod proven;
pub mod refusals;
pub mod rest;
pub mod sessions;
pub mod site_settings;
pub mod state;
pub mod status;
pub mod subscriptions;
pub mod throttle;
pub mod usage_accounting;
pub mod validate;
pub mod write_deadline;
