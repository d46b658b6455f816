//! The data plane (`httvps-relay`): the gateway that terminates TLS and
//! WebSocket and pipes Shadowsocks bytes to a hidden node, the node itself
//! (a real Shadowsocks server), and a client giving a local SOCKS5 proxy.
//! It shares only the wire contract (`httvps-wire`) with the control plane
//! and cannot depend on it.
//!
//! Map of the crate:
//! - [`backend`]: the client of the control plane's `/api/v1` routes.
//! - [`gateway`]: TLS + WebSocket in front of the node pool.
//! - [`node`]: the Shadowsocks server of the pool and the one table of
//!   destinations it refuses.
//! - [`client`]: the local SOCKS5 proxy through a gateway.
//! - [`tls`]: certificates, acceptors and connectors.
//! - [`wsio`]: a WebSocket seen as a byte stream (the client's side).
//! - [`files`]: private files (keys, spools).

pub mod backend;
pub mod client;
pub mod files;
pub mod gateway;
pub mod node;
pub mod tls;
pub mod wsio;
