//! The data plane (`httvps-relay`): the gateway that terminates TLS and
//! WebSocket and pipes Shadowsocks bytes to a hidden node, the node itself
//! (a real Shadowsocks server), and a client giving a local SOCKS5 proxy.
//! It shares only the wire contract (the `/api/v1` types) with the control
//! plane.

pub mod backend;
pub mod client;
pub mod gateway;
pub mod node;
pub mod tls;
pub mod wsio;
