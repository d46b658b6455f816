//! httvps: a VPN service platform for Shadowsocks/Outline node pools behind
//! an HTTPS gateway. This package holds the two binaries and what only they
//! need; the planes are crates of their own:
//!
//! - `httvps-wire` (`crates/wire`): the `/api/v1` contract both planes share.
//! - `httvps-control` (`crates/control`): the control plane.
//! - `httvps-dataplane` (`crates/dataplane`): gateway, node and client; it
//!   depends on the wire crate and never on the control plane.
//!
//! Map of this crate:
//! - [`cli`]: logging flags and boolean parsing shared by the binaries.
//! - [`enroll`]: `httvps gateway|node add|rotate|remove`, printing
//!   enrollment strings.
//! - [`credentials`]: the relay's side: redeeming an enrollment string
//!   into stored credentials.
//! - [`logging`]: structured logs.
//! - [`relay`]: the data plane's command-line settings, validated
//!   (`gateway_certs`: the gateway's certificate files, made with
//!   `--self-signed`).
//! - [`shutdown`]: the shutdown signal.
//! - [`up`]: the zero-setup mode, the only place both planes run together
//!   (`up_machines`: its node and gateway in the registry, by the ids kept
//!   in its data directory).

pub mod cli;
pub mod credentials;
pub mod enroll;
mod gateway_certs;
pub mod logging;
pub mod ports;
pub mod relay;
pub mod shutdown;
pub mod up;
mod up_machines;

pub use shutdown::shutdown_signal;
