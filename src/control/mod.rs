//! The control plane: use cases (one module per business capability, called
//! by both GraphQL and REST), the GraphQL API, and the HTTP server.

pub mod accounts;
pub mod graphql;
pub mod http;
pub mod metrics;
