//! The control plane: use cases (one module per business capability, called
//! by both GraphQL and REST), the GraphQL API, and the HTTP server.

pub mod accounts;
pub mod audit;
pub mod catalogue;
pub mod device_validation;
pub mod devices;
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
pub mod subscriptions;
pub mod usage_accounting;
pub mod validate;
