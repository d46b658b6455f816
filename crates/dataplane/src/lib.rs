//! The data plane (`httvps-relay`): the gateway that terminates TLS and
//! WebSocket and pipes Shadowsocks bytes to a hidden node, the node itself
//! (a real Shadowsocks server), and a client giving a local SOCKS5 proxy.
//! It shares only the wire contract (`httvps-wire`) with the control plane
//! and cannot depend on it.
//!
//! Map of the crate (decisions are pure functions or state machines with
//! unit tests beside them; the modules around them do the I/O):
//! - [`backend`]: the client of the control plane's `/api/v1` routes.
//! - [`link`]: how the control plane is reached and trusted (https or a
//!   loopback/private http URL; system roots, a CA file, a SHA-256 pin).
//! - [`gateway`]: TLS + WebSocket in front of the node pool: accept loop,
//!   routes, admission (validation cache lifetimes, outage rule, caps), TCP
//!   and UDP pipes, access document, sessions and usage reports with their
//!   spool, the control-plane follower (heartbeats, access events, expiry
//!   schedule), and the admin listener (health, metrics).
//! - [`node`]: the Shadowsocks server of the pool, and the one table of
//!   destinations it refuses.
//! - [`client`]: the local SOCKS5 proxy (or port forward) through a
//!   gateway: parameters and node events, SOCKS5, UDP associate, forward.
//! - [`certs`]: the gateway's certificate files, reloaded on change and
//!   SIGHUP without dropping tunnels; ACME TLS-ALPN-01 answers.
//! - [`acme`]: certificates ordered and renewed by ACME (TLS-ALPN-01 on
//!   the gateway's own port), cached, swapped in through [`certs`].
//! - [`tls`]: certificates, acceptors and connectors (system roots).
//! - [`readahead`]: sockets read in blocks of up to 64 KiB beneath TLS
//!   and Shadowsocks (rustls reads 4 KiB at a time), and the node's
//!   destination connections.
//! - [`writeblocks`]: writes gathered into blocks until a flush
//!   (Shadowsocks chunks, at the node and our client's local socket).
//! - [`sswrites`]: writes into a Shadowsocks stream retried as first
//!   offered (tokio's copy offers more; the stream would count it sent).
//! - [`wsio`]: a WebSocket seen as a byte stream (the client's side).
//! - [`files`]: private files (keys, spools).
//! - [`nofile`]: the open-file limit, raised to the hard one at start.

pub mod acme;
pub mod backend;
pub mod certs;
pub mod client;
mod failing;
pub mod files;
pub mod gateway;
mod lane;
pub mod link;
pub mod node;
pub mod nofile;
pub mod readahead;
pub mod sswrites;
#[cfg(test)]
mod test_sockets;
pub mod tls;
pub mod writeblocks;
pub mod wsio;
