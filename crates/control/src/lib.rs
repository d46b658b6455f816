//! The httvps control plane: users, devices, plans, subscriptions, regions,
//! nodes, sessions and usage, on PostgreSQL or SQLite, served over GraphQL
//! (dashboards, clients) and the `/api/v1` REST routes (gateways, nodes).
//!
//! Map of the crate:
//! - Foundations: [`config`] (typed settings), [`error`] (one error type for
//!   REST and GraphQL), [`db`] (pools, schema, rows, migrations), [`auth`]
//!   (passwords, opaque tokens, JWTs).
//! - Use cases, one module per capability, called by GraphQL and REST alike:
//!   [`accounts`], [`catalogue`], [`subscriptions`], [`devices`],
//!   [`device_validation`], [`nodes`], [`node_assignment`], [`heartbeats`],
//!   [`sessions`], [`usage_accounting`], [`audit`]; with [`events`] (live
//!   node and access events), [`pagination`] and [`validate`] (input checks).
//! - Edges: [`context`] (the app context and the caller), [`graphql`],
//!   [`rest`], [`state`] (what handlers get), [`http`] (the server),
//!   [`console`] (the embedded web console and GraphiQL), [`metrics`],
//!   [`app`] (start-up).

pub mod accounts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod catalogue;
pub mod config;
pub mod console;
pub mod context;
pub mod db;
pub mod device_validation;
pub mod devices;
pub mod error;
pub mod events;
pub mod graphql;
pub mod heartbeats;
pub mod http;
pub mod metrics;
pub mod node_assignment;
pub mod nodes;
pub mod pagination;
pub mod rest;
pub mod sessions;
pub mod state;
pub mod subscriptions;
pub mod usage_accounting;
pub mod validate;
